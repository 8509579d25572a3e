//! Which implementation family the kernels take on this CPU, detected once.

use std::sync::OnceLock;

/// An implementation family of the f32 kernels (convolution, dense, add, pooling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum F32Path {
    /// Plain Rust, on every CPU.
    Portable,
    /// AVX2 and FMA, 256-bit.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 F, 512-bit.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// An implementation family of the u8 × i8 kernels. Every family gives the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum I8Path {
    /// Plain Rust, on every CPU.
    Portable,
    /// AVX2: u8 and i8 widened to i16, `vpmaddwd` (exact; `vpmaddubsw` would saturate).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-VNNI or AVX-512 VNNI at 256 bits: `vpdpbusd ymm`.
    #[cfg(target_arch = "x86_64")]
    Vnni256,
    /// AVX-512 VNNI: `vpdpbusd zmm`.
    #[cfg(target_arch = "x86_64")]
    Vnni512,
}

/// The `PERCH_KERNELS` override (`portable` forces the portable kernels), read once.
fn forced_portable() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("PERCH_KERNELS").is_ok_and(|v| v == "portable"))
}

impl F32Path {
    /// The fastest family this CPU runs (cached); `PERCH_KERNELS=portable` in the
    /// environment forces [`F32Path::Portable`].
    pub fn detect() -> F32Path {
        static PATH: OnceLock<F32Path> = OnceLock::new();
        *PATH.get_or_init(|| {
            if forced_portable() {
                return F32Path::Portable;
            }
            *F32Path::available().last().unwrap_or(&F32Path::Portable)
        })
    }

    /// Every family this CPU runs, slowest first (the portable one first).
    pub fn available() -> Vec<F32Path> {
        #[allow(unused_mut)]
        let mut v = vec![F32Path::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::has_avx2_fma() {
                v.push(F32Path::Avx2);
            }
            if super::x86::has_avx512f() {
                v.push(F32Path::Avx512);
            }
        }
        v
    }

    /// A short name for reports, e.g. `"avx512"`.
    pub fn name(self) -> &'static str {
        match self {
            F32Path::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            F32Path::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            F32Path::Avx512 => "avx512",
        }
    }
}

impl I8Path {
    /// Channels per vector of the family's epilogue, and whether its widening multiply
    /// pairs even and odd lanes (x86) rather than halves (NEON).
    pub(super) fn epilogue_lanes(self) -> Option<(usize, bool)> {
        match self {
            I8Path::Portable => None,
            #[cfg(target_arch = "x86_64")]
            I8Path::Vnni512 => Some((16, true)),
            #[cfg(target_arch = "x86_64")]
            I8Path::Vnni256 | I8Path::Avx2 => Some((8, true)),
        }
    }

    /// The fastest family this CPU runs (cached); `PERCH_KERNELS=portable` in the
    /// environment forces [`I8Path::Portable`].
    pub fn detect() -> I8Path {
        static PATH: OnceLock<I8Path> = OnceLock::new();
        *PATH.get_or_init(|| {
            if forced_portable() {
                return I8Path::Portable;
            }
            *I8Path::available().last().unwrap_or(&I8Path::Portable)
        })
    }

    /// Every family this CPU runs, slowest first (the portable one first).
    pub fn available() -> Vec<I8Path> {
        #[allow(unused_mut)]
        let mut v = vec![I8Path::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::has_avx2_fma() {
                v.push(I8Path::Avx2);
            }
            if super::x86::has_avx_vnni() && super::x86::has_avx2_fma() {
                v.push(I8Path::Vnni256);
            }
            if super::x86::has_avx512_vnni() {
                v.push(I8Path::Vnni512);
            }
        }
        v
    }

    /// A short name for reports, e.g. `"vnni512"`.
    pub fn name(self) -> &'static str {
        match self {
            I8Path::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            I8Path::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            I8Path::Vnni256 => "vnni256",
            #[cfg(target_arch = "x86_64")]
            I8Path::Vnni512 => "vnni512",
        }
    }
}
