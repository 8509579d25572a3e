//! GEMM: `y[i, j] = epilogue(Σₖ a[i, k] · w[k, j])` for the rows `i` of a left operand
//! read in place (a feature map's pixels, an im2col tile, a batch of dense inputs) and a
//! right operand packed once at load into panels of `nr` columns, the layout the
//! micro-kernels stream: for each `k`, the panel's `nr` weights side by side (for int8,
//! each channel's four consecutive `k` side by side, as `vpdpbusd` and `sdot` read them).
//! Convolution (1×1 and im2col) and dense layers all run through here.

use super::qconv::QEpilogue;
use super::{Activation, F32Path, I8Path};

/// The right operand `[k, n]` of an f32 GEMM with its bias, in panels of `nr` columns
/// (zero beyond `n`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PanelsF32 {
    /// Depth.
    pub(super) k: usize,
    /// Columns (output channels).
    pub(super) n: usize,
    /// Columns per panel.
    pub(super) nr: usize,
    /// `panels · k · nr` values: panel `p`, depth `kk`, column `j` at `(p · k + kk) · nr + j`.
    pub(super) data: Vec<f32>,
    /// `panels · nr` values, zero beyond `n`.
    pub(super) bias: Vec<f32>,
}

impl PanelsF32 {
    /// Packs `w(kk, j)` for `kk < k`, `j < n`.
    pub(super) fn pack(
        k: usize,
        n: usize,
        nr: usize,
        bias: &[f32],
        w: impl Fn(usize, usize) -> f32,
    ) -> PanelsF32 {
        let panels = n.div_ceil(nr);
        let mut data = vec![0.0; panels * k * nr];
        for p in 0..panels {
            for kk in 0..k {
                for j in 0..nr.min(n - p * nr) {
                    data[(p * k + kk) * nr + j] = w(kk, p * nr + j);
                }
            }
        }
        let mut b = vec![0.0; panels * nr];
        b[..n].copy_from_slice(&bias[..n]);
        PanelsF32 {
            k,
            n,
            nr,
            data,
            bias: b,
        }
    }

    pub(super) fn panels(&self) -> usize {
        self.n.div_ceil(self.nr)
    }
}

/// The right operand `[k, n]` of a u8 × i8 GEMM in panels of `nr` columns, depth padded to
/// `k4` (a multiple of 4) with zeros: panel `p`, quad `q`, column `j`, lane `t` at
/// `((p · k4 / 4 + q) · nr + j) · 4 + t`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PanelsI8 {
    pub(super) k: usize,
    pub(super) k4: usize,
    pub(super) n: usize,
    pub(super) nr: usize,
    pub(super) data: Vec<i8>,
    /// `panels · nr` values `128 · Σₖ w[kk, j]` (zero beyond `n`): the NEON kernels
    /// multiply activations shifted by −128 and add these back.
    pub(super) shift_sums: Vec<i32>,
}

impl PanelsI8 {
    /// Packs `w(kk, j)` for `kk < k`, `j < n`.
    pub(super) fn pack(k: usize, n: usize, nr: usize, w: impl Fn(usize, usize) -> i8) -> PanelsI8 {
        let k4 = k.div_ceil(4) * 4;
        let panels = n.div_ceil(nr);
        let mut data = vec![0; panels * k4 * nr];
        let mut shift_sums = vec![0i32; panels * nr];
        for p in 0..panels {
            for kk in 0..k {
                let q = kk / 4;
                for j in 0..nr.min(n - p * nr) {
                    let v = w(kk, p * nr + j);
                    data[((p * k4 / 4 + q) * nr + j) * 4 + kk % 4] = v;
                    shift_sums[p * nr + j] += 128 * i32::from(v);
                }
            }
        }
        PanelsI8 {
            k,
            k4,
            n,
            nr,
            data,
            shift_sums,
        }
    }

    pub(super) fn panels(&self) -> usize {
        self.n.div_ceil(self.nr)
    }
}

/// Where an int8 GEMM writes.
pub(super) enum QDst<'a> {
    U8(&'a mut [u8]),
    F32(&'a mut [f32]),
}

impl QDst<'_> {
    /// Values the destination holds.
    pub(super) fn len(&self) -> usize {
        match self {
            QDst::U8(y) => y.len(),
            QDst::F32(y) => y.len(),
        }
    }
}

/// Columns per panel of the portable kernels.
pub(super) const PORTABLE_NR: usize = 8;
/// Rows per tile of the portable kernels.
pub(super) const PORTABLE_MR: usize = 4;

/// The smallest of `widths` (ascending) that holds `n` columns, else the largest one that
/// divides `n`, else the largest.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn pick_width(widths: &[usize], n: usize) -> usize {
    let last = widths[widths.len() - 1];
    if let Some(&w) = widths.iter().find(|&&w| w >= n) {
        return w;
    }
    widths
        .iter()
        .rev()
        .find(|&&w| n.is_multiple_of(w))
        .copied()
        .unwrap_or(last)
}

/// The panel width `path` packs f32 weights with, for `n` columns; `gemv` for a dense
/// layer (few rows: wide panels, many independent sums) rather than a convolution.
pub(super) fn f32_nr(path: F32Path, n: usize, gemv: bool) -> usize {
    let _ = (n, gemv);
    match path {
        F32Path::Portable => PORTABLE_NR,
        #[cfg(target_arch = "x86_64")]
        F32Path::Avx512 if gemv => pick_width(&super::x86::gemm::AVX512_NR, n),
        #[cfg(target_arch = "x86_64")]
        F32Path::Avx512 => pick_width(&super::x86::gemm::AVX512_NR[..4], n),
        #[cfg(target_arch = "x86_64")]
        F32Path::Avx2 if gemv => pick_width(&super::x86::gemm::AVX2_NR, n),
        #[cfg(target_arch = "x86_64")]
        F32Path::Avx2 => pick_width(&super::x86::gemm::AVX2_NR[..3], n),
        #[cfg(target_arch = "aarch64")]
        F32Path::Neon => pick_width(&super::neon::gemm::NEON_F32_NR, n),
    }
}

/// The panel width of a convolution whose pixels are read in place ([`f32_nr`] for the
/// rest): at most 16 columns on AVX2, whose 6 × 2 tile keeps 12 sums in flight where the
/// 32-column 2 × 4 tile keeps 8, too few to cover the FMA latency. Those tiles run on
/// across output rows, so the 6-row tile fills (criterion: ResNet-8's stride-2 3×3 conv to
/// 64 channels 33.7 → 27.1 µs).
pub(super) fn f32_in_place_nr(path: F32Path, n: usize) -> usize {
    match path {
        #[cfg(target_arch = "x86_64")]
        F32Path::Avx2 => pick_width(&super::x86::gemm::AVX2_NR[..2], n),
        _ => f32_nr(path, n, false),
    }
}

/// The rows per tile of `path`'s f32 kernel (the im2col tiles are a multiple of it).
pub(super) fn f32_mr(path: F32Path) -> usize {
    match path {
        F32Path::Portable => PORTABLE_MR,
        #[cfg(target_arch = "x86_64")]
        _ => 24,
        #[cfg(target_arch = "aarch64")]
        F32Path::Neon => 8,
    }
}

/// The panel width `path` packs int8 weights with, for `n` columns (`gemv` as for
/// [`f32_nr`]).
pub(super) fn i8_nr(path: I8Path, n: usize, gemv: bool) -> usize {
    let _ = (n, gemv);
    #[cfg(target_arch = "x86_64")]
    use super::x86::qgemm::{AVX2_I8_NR, VNNI256_NR, VNNI512_NR};
    match path {
        I8Path::Portable => PORTABLE_NR,
        #[cfg(target_arch = "x86_64")]
        I8Path::Vnni512 if gemv => pick_width(&VNNI512_NR, n),
        #[cfg(target_arch = "x86_64")]
        I8Path::Vnni512 => pick_width(&VNNI512_NR[..4], n),
        #[cfg(target_arch = "x86_64")]
        I8Path::Vnni256 if gemv => pick_width(&VNNI256_NR, n),
        #[cfg(target_arch = "x86_64")]
        I8Path::Vnni256 => pick_width(&VNNI256_NR[..3], n),
        #[cfg(target_arch = "x86_64")]
        I8Path::Avx2 if gemv => pick_width(&AVX2_I8_NR, n),
        #[cfg(target_arch = "x86_64")]
        I8Path::Avx2 => pick_width(&AVX2_I8_NR[..2], n),
        #[cfg(target_arch = "aarch64")]
        I8Path::Neon | I8Path::NeonDot => pick_width(&super::neon::qgemm::NEON_I8_NR, n),
    }
}

/// The rows per tile of `path`'s int8 kernel (the im2col tiles are a multiple of it).
pub(super) fn i8_mr(path: I8Path) -> usize {
    match path {
        I8Path::Portable => PORTABLE_MR,
        #[cfg(target_arch = "x86_64")]
        _ => 24,
        #[cfg(target_arch = "aarch64")]
        I8Path::Neon | I8Path::NeonDot => 8,
    }
}

/// `y[i · ldy + j] = act(bias[j] + Σₖ a[i · lda + kk] · w[kk, j])` for `i < m`, `j < w.n`.
///
/// # Panics
/// If `a` or `y` is too short for `m` rows, or `w` was packed for another path.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_f32(
    path: F32Path,
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PanelsF32,
    act: Activation,
    y: &mut [f32],
    ldy: usize,
) {
    if m == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * lda + w.k && y.len() >= (m - 1) * ldy + w.n);
    match path {
        F32Path::Portable => gemm_f32_portable(a, lda, m, w, act, y, ldy),
        #[cfg(target_arch = "x86_64")]
        F32Path::Avx512 => super::x86::gemm::gemm_f32_avx512(a, lda, m, w, act, y, ldy),
        #[cfg(target_arch = "x86_64")]
        F32Path::Avx2 => super::x86::gemm::gemm_f32_avx2(a, lda, m, w, act, y, ldy),
        #[cfg(target_arch = "aarch64")]
        F32Path::Neon => super::neon::gemm::gemm_f32(a, lda, m, w, act, y, ldy),
    }
}

/// [`gemm_f32`] in plain Rust, tiles of [`PORTABLE_MR`] × [`PORTABLE_NR`].
fn gemm_f32_portable(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PanelsF32,
    act: Activation,
    y: &mut [f32],
    ldy: usize,
) {
    const MR: usize = PORTABLE_MR;
    const NR: usize = PORTABLE_NR;
    assert_eq!(w.nr, NR, "panels packed for another kernel");
    let (k, n) = (w.k, w.n);
    for p in 0..w.panels() {
        let wp = &w.data[p * k * NR..(p + 1) * k * NR];
        let bias = &w.bias[p * NR..(p + 1) * NR];
        let n0 = p * NR;
        let nn = NR.min(n - n0);
        let mut i = 0;
        while i < m {
            let rows: [&[f32]; MR] = std::array::from_fn(|r| {
                let ri = (i + r).min(m - 1);
                &a[ri * lda..ri * lda + k]
            });
            let mut acc = [[0.0f32; NR]; MR];
            for r in acc.iter_mut() {
                r.copy_from_slice(bias);
            }
            for (kk, wv) in wp.chunks_exact(NR).enumerate() {
                for (r, row) in rows.iter().enumerate() {
                    let av = row[kk];
                    for (acc, &wj) in acc[r].iter_mut().zip(wv) {
                        *acc += av * wj;
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().take(m - i) {
                let out = &mut y[(i + r) * ldy + n0..(i + r) * ldy + n0 + nn];
                for (o, &v) in out.iter_mut().zip(acc) {
                    *o = act.apply(v);
                }
            }
            i += MR;
        }
    }
}

/// `y[i · ldy + j] = epi(c0 + j, Σₖ a[i · lda + kk] · w[kk, j])` for `i < m`, `j < w.n`:
/// u8 activations times i8 weights in exact i32 sums; rows of `a` hold `w.k4` readable
/// values (those past `w.k` meet zero weights).
///
/// # Panics
/// If `a` or `y` is too short for `m` rows, or `w` was packed for another path.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_u8i8(
    path: I8Path,
    a: &[u8],
    lda: usize,
    m: usize,
    w: &PanelsI8,
    epi: &QEpilogue,
    c0: usize,
    y: QDst<'_>,
    ldy: usize,
) {
    if m == 0 {
        return;
    }
    let y_len = y.len();
    assert!(a.len() >= (m - 1) * lda + w.k4 && y_len >= (m - 1) * ldy + w.n);
    #[cfg(target_arch = "x86_64")]
    use super::x86::qgemm;
    match path {
        I8Path::Portable => {
            assert!(epi.channels() >= c0 + w.n);
            gemm_u8i8_portable(a, lda, m, w, epi, c0, y, ldy)
        }
        #[cfg(target_arch = "x86_64")]
        I8Path::Vnni512 => qgemm::gemm_vnni512(a, lda, m, w, epi, c0, y, ldy),
        #[cfg(target_arch = "x86_64")]
        I8Path::Vnni256 => qgemm::gemm_vnni256(a, lda, m, w, epi, c0, y, ldy),
        #[cfg(target_arch = "x86_64")]
        I8Path::Avx2 => qgemm::gemm_avx2_i8(a, lda, m, w, epi, c0, y, ldy),
        #[cfg(target_arch = "aarch64")]
        I8Path::Neon => super::neon::qgemm::gemm_u8i8(false, a, lda, m, w, epi, c0, y, ldy),
        #[cfg(target_arch = "aarch64")]
        I8Path::NeonDot => super::neon::qgemm::gemm_u8i8(true, a, lda, m, w, epi, c0, y, ldy),
    }
}

/// [`gemm_u8i8`] in plain Rust.
#[allow(clippy::too_many_arguments)]
fn gemm_u8i8_portable(
    a: &[u8],
    lda: usize,
    m: usize,
    w: &PanelsI8,
    epi: &QEpilogue,
    c0: usize,
    mut y: QDst<'_>,
    ldy: usize,
) {
    const MR: usize = PORTABLE_MR;
    const NR: usize = PORTABLE_NR;
    assert_eq!(w.nr, NR, "panels packed for another kernel");
    let (k4, n) = (w.k4, w.n);
    for p in 0..w.panels() {
        let wp = &w.data[p * k4 * NR..(p + 1) * k4 * NR];
        let n0 = p * NR;
        let nn = NR.min(n - n0);
        let mut i = 0;
        while i < m {
            let rows: [&[u8]; MR] = std::array::from_fn(|r| {
                let ri = (i + r).min(m - 1);
                &a[ri * lda..ri * lda + k4]
            });
            let mut acc = [[0i32; NR]; MR];
            for (q, wq) in wp.chunks_exact(4 * NR).enumerate() {
                for (r, row) in rows.iter().enumerate() {
                    let x = &row[4 * q..4 * q + 4];
                    for (j, acc) in acc[r].iter_mut().enumerate() {
                        let wj = &wq[4 * j..4 * j + 4];
                        *acc += x[0] as i32 * wj[0] as i32
                            + x[1] as i32 * wj[1] as i32
                            + x[2] as i32 * wj[2] as i32
                            + x[3] as i32 * wj[3] as i32;
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().take(m - i) {
                let at = (i + r) * ldy + n0;
                match &mut y {
                    QDst::U8(y) => epi.u8_row(c0 + n0, &acc[..nn], &mut y[at..at + nn]),
                    QDst::F32(y) => epi.f32_row(c0 + n0, &acc[..nn], &mut y[at..at + nn]),
                }
            }
            i += MR;
        }
    }
}
