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
    /// NEON, 128-bit (every aarch64 CPU).
    #[cfg(target_arch = "aarch64")]
    Neon,
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
    /// NEON: activations shifted to i8 (`x - 128`, made up for by the weights' column
    /// sums), `smull` into i16 and `sadalp` into i32 (exact).
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// NEON with the dot-product extension (Cortex-A55/A76 and later, e.g. the Pi 5):
    /// `sdot`, on the same shifted activations.
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

/// The `PERCH_KERNELS` override, read once: the name of a family to run (`portable`,
/// `avx2`, `avx512`, `vnni512`, `neon`… as [`F32Path::name`] and [`I8Path::name`] give
/// them). A family whose kinds have no family of that name on this CPU takes its fastest.
fn forced() -> Option<&'static str> {
    static FORCED: OnceLock<Option<String>> = OnceLock::new();
    FORCED
        .get_or_init(|| std::env::var("PERCH_KERNELS").ok())
        .as_deref()
}

impl F32Path {
    /// The fastest family this CPU runs (cached); `PERCH_KERNELS=NAME` in the environment
    /// picks the family of that name where the CPU runs it (`portable`, `avx2`…).
    pub fn detect() -> F32Path {
        static PATH: OnceLock<F32Path> = OnceLock::new();
        *PATH.get_or_init(|| {
            let all = F32Path::available();
            let named = forced().and_then(|v| all.iter().find(|p| p.name() == v));
            *named.or(all.last()).unwrap_or(&F32Path::Portable)
        })
    }

    /// The family a convolution runs: [`F32Path::detect`]'s, except that where that is
    /// AVX-512 (and `PERCH_KERNELS` names no family), narrow layers run the AVX2 kernels:
    /// depthwise layers of at most 16 channels (one 512-bit vector, half idle at 8) and
    /// the other convolutions with fewer than 64 output channels. Measured on a Zen 4
    /// EPYC, which issues each 512-bit operation as two 256-bit halves (p10 of `perch
    /// bench`, 3,000 runs): float MobileNet 210 → 167 µs (its 8- and 16-channel depthwise
    /// layers), ResNet-8 248 → 234 µs (its 16- and 32-channel layers); keyword spotting's
    /// 64-channel layers were faster on AVX-512 (53.6 against 60 µs) and keep it.
    pub fn for_conv(depthwise: bool, channels: usize) -> F32Path {
        let path = F32Path::detect();
        #[cfg(target_arch = "x86_64")]
        if path == F32Path::Avx512 && forced().is_none() {
            let narrow = if depthwise {
                channels <= 16
            } else {
                channels < 64
            };
            if narrow {
                return F32Path::Avx2;
            }
        }
        let _ = (depthwise, channels);
        path
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
        #[cfg(target_arch = "aarch64")]
        v.push(F32Path::Neon);
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
            #[cfg(target_arch = "aarch64")]
            F32Path::Neon => "neon",
        }
    }
}

impl I8Path {
    /// Channels per vector of the family's epilogue, and whether its widening multiply
    /// pairs even and odd lanes (x86) rather than halves (NEON).
    pub(super) fn epilogue_lanes(self) -> Option<(usize, bool)> {
        match self {
            I8Path::Portable => None,
            #[cfg(target_arch = "aarch64")]
            I8Path::Neon | I8Path::NeonDot => None,
            #[cfg(target_arch = "x86_64")]
            I8Path::Vnni512 => Some((16, true)),
            #[cfg(target_arch = "x86_64")]
            I8Path::Vnni256 | I8Path::Avx2 => Some((8, true)),
        }
    }

    /// Whether the family's GEMM hands its i32 sums to the portable epilogue, row by row
    /// (so it needs no lane constants and runs wherever its sums fit in i32).
    pub(super) fn portable_epilogue(self) -> bool {
        match self {
            #[cfg(target_arch = "aarch64")]
            I8Path::Neon | I8Path::NeonDot => true,
            _ => false,
        }
    }

    /// The fastest family this CPU runs (cached); `PERCH_KERNELS=NAME` in the environment
    /// picks the family of that name where the CPU runs it (`portable`, `avx2`…).
    pub fn detect() -> I8Path {
        static PATH: OnceLock<I8Path> = OnceLock::new();
        *PATH.get_or_init(|| {
            let all = I8Path::available();
            let named = forced().and_then(|v| all.iter().find(|p| p.name() == v));
            *named.or(all.last()).unwrap_or(&I8Path::Portable)
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
        #[cfg(target_arch = "aarch64")]
        {
            v.push(I8Path::Neon);
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                v.push(I8Path::NeonDot);
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
            #[cfg(target_arch = "aarch64")]
            I8Path::Neon => "neon",
            #[cfg(target_arch = "aarch64")]
            I8Path::NeonDot => "neon-dot",
        }
    }
}
