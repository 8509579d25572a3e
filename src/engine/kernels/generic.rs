//! Portable reference kernels: plain Rust the compiler can vectorize, and the baseline the
//! architecture-specific kernels are tested against.

use super::{Activation, Conv2dParams, Pool2dParams};

/// Portable version of the dispatching `kernels::dense`.
pub fn dense(x: &[f32], w: &[f32], b: &[f32], inputs: usize, outputs: usize, y: &mut [f32]) {
    for (xr, yr) in x.chunks_exact(inputs).zip(y.chunks_exact_mut(outputs)) {
        for ((yo, wo), bo) in yr.iter_mut().zip(w.chunks_exact(inputs)).zip(b) {
            *yo = bo + dot(xr, wo);
        }
    }
}

/// Dot product with eight independent partial sums (vectorizes without reassociation).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (pa, pb) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += pa[i] * pb[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (p, q) in ra.iter().zip(rb) {
        s += p * q;
    }
    s
}

/// `y = (x - offset) * scale` along the last axis (`offset.len()` wide).
pub fn standardize(x: &[f32], offset: &[f32], scale: &[f32], y: &mut [f32]) {
    let n = offset.len().max(1);
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        for i in 0..n.min(xr.len()) {
            yr[i] = (xr[i] - offset[i]) * scale[i];
        }
    }
}

/// Applies `act` in place.
pub fn activate(act: Activation, y: &mut [f32]) {
    match act {
        Activation::Identity => {}
        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::LeakyRelu(a) => y.iter_mut().for_each(|v| {
            if *v < 0.0 {
                *v *= a
            }
        }),
        Activation::Sigmoid => y.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Activation::Tanh => y.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Clip { .. } | Activation::HardSwish => {
            y.iter_mut().for_each(|v| *v = act.apply(*v))
        }
    }
}

/// The logistic function with perch's own [`exp`] (the same bits everywhere).
pub fn sigmoid(v: f32) -> f32 {
    if v >= 0.0 {
        1.0 / (1.0 + exp(-v))
    } else {
        let e = exp(v);
        e / (1.0 + e)
    }
}

/// `2^(j/32)` for `j = 0..32`, as f64 bit patterns (correctly rounded; computed with 60-digit
/// decimal arithmetic).
pub(super) const EXP2_32THS: [u64; 32] = [
    0x3ff0_0000_0000_0000,
    0x3ff0_59b0_d315_8574,
    0x3ff0_b558_6cf9_890f,
    0x3ff1_1301_d012_5b51,
    0x3ff1_72b8_3c7d_517b,
    0x3ff1_d487_3168_b9aa,
    0x3ff2_387a_6e75_6238,
    0x3ff2_9e9d_f51f_dee1,
    0x3ff3_06fe_0a31_b715,
    0x3ff3_71a7_373a_a9cb,
    0x3ff3_dea6_4c12_3422,
    0x3ff4_4e08_6061_892d,
    0x3ff4_bfda_d536_2a27,
    0x3ff5_342b_569d_4f82,
    0x3ff5_ab07_dd48_5429,
    0x3ff6_247e_b03a_5585,
    0x3ff6_a09e_667f_3bcd,
    0x3ff7_1f75_e8ec_5f74,
    0x3ff7_a114_73eb_0187,
    0x3ff8_2589_994c_ce13,
    0x3ff8_ace5_422a_a0db,
    0x3ff9_3737_b0cd_c5e5,
    0x3ff9_c491_82a3_f090,
    0x3ffa_5503_b23e_255d,
    0x3ffa_e89f_995a_d3ad,
    0x3ffb_7f76_f2fb_5e47,
    0x3ffc_199b_dd85_529c,
    0x3ffc_b720_dcef_9069,
    0x3ffd_5818_dcfb_a487,
    0x3ffd_fc97_337b_9b5f,
    0x3ffe_a4af_a2a4_90da,
    0x3fff_5076_5b6e_4540,
];

/// [`exp`] is +∞ above this.
pub(super) const EXP_MAX: f32 = 88.73;
/// [`exp`] is 0 below this.
pub(super) const EXP_MIN: f32 = -104.0;
/// 1.5 · 2⁵²: adding and subtracting it rounds an f64 to an integer.
pub(super) const EXP_MAGIC: f64 = 6_755_399_441_055_744.0;
/// 32 / ln 2.
pub(super) const EXP_K: f64 = 32.0 * std::f64::consts::LOG2_E;
// ln 2 / 32 split as fdlibm splits ln 2: the high part has 32 significant bits, so
// n · LN2_32_HI is exact for |n| <= 2^21.
pub(super) const LN2_32_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000) / 32.0;
pub(super) const LN2_32_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76) / 32.0;
/// Taylor coefficients of `e^r`, degree 0 to 6.
pub(super) const EXP_C: [f64; 7] = [
    1.0,
    1.0,
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
];

/// `e^x` from IEEE basic operations only, so every platform gives the same bits (the C
/// library's `expf` differs between glibc versions, architectures and musl in the last
/// bit). Computed in f64 — `x = (32m + j)·ln2/32 + r`, `|r| <= ln2/64`, `e^x = 2^m ·
/// 2^(j/32) · e^r` with a table for `2^(j/32)` and a degree-6 Taylor polynomial for `e^r`
/// (evaluated by Estrin's scheme)
/// (truncation < 4e-18) — then rounded once to f32. The f64 value is within ~5e-16
/// (relative) of `e^x`, so the result is the correctly rounded `e^x` except when `e^x`
/// lies that close to a halfway point between two floats, where it may be the other
/// neighbour. Overflows to +∞ above 88.73, underflows to 0 below -104; NaN stays NaN.
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > EXP_MAX {
        return f32::INFINITY;
    }
    if x < EXP_MIN {
        return 0.0;
    }
    let xd = x as f64;
    let nf = (xd * EXP_K + EXP_MAGIC) - EXP_MAGIC;
    let n = nf as i64;
    let r = (xd - nf * LN2_32_HI) - nf * LN2_32_LO;
    let c = EXP_C;
    // Estrin's scheme (a shorter dependency chain than Horner's; the x86 lanes evaluate the
    // same tree, operation for operation).
    let r2 = r * r;
    let r4 = r2 * r2;
    let lo = (c[0] + r * c[1]) + r2 * (c[2] + r * c[3]);
    let hi = (c[4] + r * c[5]) + r2 * c[6];
    let p = lo + r4 * hi;
    let t = f64::from_bits(EXP2_32THS[(n & 31) as usize]);
    let scale = f64::from_bits((((n >> 5) + 1023) as u64) << 52);
    (p * t * scale) as f32
}

/// Numerically stable softmax over rows of `axis_len`.
pub fn softmax(x: &[f32], axis_len: usize, y: &mut [f32]) {
    softmax_with(x, axis_len, y, exp_in_place)
}

/// [`exp`] of every element, in place.
pub fn exp_in_place(y: &mut [f32]) {
    y.iter_mut().for_each(|v| *v = exp(*v));
}

/// Softmax with `exp_all` computing [`exp`] of a slice in place: `y = exp(x - max)`, then
/// the sum in index order, then `y · (1 / sum)`. The maximum is exact in any order, so it
/// is taken four lanes at a time.
pub(super) fn softmax_with(x: &[f32], axis_len: usize, y: &mut [f32], exp_all: fn(&mut [f32])) {
    for (xr, yr) in x.chunks_exact(axis_len).zip(y.chunks_exact_mut(axis_len)) {
        let mut m = [f32::NEG_INFINITY; 4];
        let quads = xr.chunks_exact(4);
        for &v in quads.remainder() {
            m[0] = m[0].max(v);
        }
        for q in quads {
            for (mi, &v) in m.iter_mut().zip(q) {
                *mi = mi.max(v);
            }
        }
        let max = m[0].max(m[1]).max(m[2].max(m[3]));
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = v - max;
        }
        exp_all(yr);
        let mut sum = 0.0f32;
        for &v in yr.iter() {
            sum += v;
        }
        let inv = 1.0 / sum;
        yr.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Index of the first maximum of each row, mapped through `labels`.
pub fn argmax(x: &[f32], axis_len: usize, labels: Option<&[i64]>, y: &mut [i64]) {
    for (xr, yo) in x.chunks_exact(axis_len).zip(y.iter_mut()) {
        let (mut best, mut best_v) = (0, xr.first().copied().unwrap_or(0.0));
        for (i, &v) in xr.iter().enumerate() {
            if v > best_v {
                (best, best_v) = (i, v);
            }
        }
        *yo = labels
            .and_then(|l| l.get(best).copied())
            .unwrap_or(best as i64);
    }
}

/// Direct convolution, NCHW, weights `[out_c, in_c / groups, k_h, k_w]`.
pub fn conv2d(p: &Conv2dParams, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], batch: usize) {
    let in_sample = p.in_c * p.in_h * p.in_w;
    let out_sample = p.out_c * p.out_h * p.out_w;
    let icg = p.in_c / p.groups;
    let ocg = p.out_c / p.groups;
    for n in 0..batch {
        let xs = &x[n * in_sample..(n + 1) * in_sample];
        let ys = &mut y[n * out_sample..(n + 1) * out_sample];
        for oc in 0..p.out_c {
            let g = oc / ocg;
            let wk = &w[oc * icg * p.k_h * p.k_w..(oc + 1) * icg * p.k_h * p.k_w];
            let yplane = &mut ys[oc * p.out_h * p.out_w..(oc + 1) * p.out_h * p.out_w];
            yplane.fill(b[oc]);
            for ic in 0..icg {
                let xplane =
                    &xs[(g * icg + ic) * p.in_h * p.in_w..(g * icg + ic + 1) * p.in_h * p.in_w];
                for ky in 0..p.k_h {
                    for kx in 0..p.k_w {
                        let wv = wk[(ic * p.k_h + ky) * p.k_w + kx];
                        for oy in 0..p.out_h {
                            let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                                - p.pad[0] as isize;
                            if iy < 0 || iy >= p.in_h as isize {
                                continue;
                            }
                            let xrow = &xplane[iy as usize * p.in_w..(iy as usize + 1) * p.in_w];
                            let yrow = &mut yplane[oy * p.out_w..(oy + 1) * p.out_w];
                            for (ox, yv) in yrow.iter_mut().enumerate() {
                                let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                                    - p.pad[1] as isize;
                                if ix >= 0 && (ix as usize) < p.in_w {
                                    *yv += wv * xrow[ix as usize];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn pool2d(
    p: &Pool2dParams,
    x: &[f32],
    y: &mut [f32],
    batch: usize,
    mut f: impl FnMut(&mut dyn Iterator<Item = f32>, usize) -> f32,
) {
    let plane_in = p.in_h * p.in_w;
    let plane_out = p.out_h * p.out_w;
    for plane in 0..batch * p.c {
        let xp = &x[plane * plane_in..(plane + 1) * plane_in];
        let yp = &mut y[plane * plane_out..(plane + 1) * plane_out];
        for oy in 0..p.out_h {
            for ox in 0..p.out_w {
                let y0 = (oy * p.stride[0]) as isize - p.pad[0] as isize;
                let x0 = (ox * p.stride[1]) as isize - p.pad[1] as isize;
                let ys = y0.max(0) as usize
                    ..((y0 + p.k[0] as isize).min(p.in_h as isize)).max(0) as usize;
                let xs = x0.max(0) as usize
                    ..((x0 + p.k[1] as isize).min(p.in_w as isize)).max(0) as usize;
                let mut it = ys.flat_map(|iy| xs.clone().map(move |ix| xp[iy * p.in_w + ix]));
                yp[oy * p.out_w + ox] = f(&mut it, p.k[0] * p.k[1]);
            }
        }
    }
}

/// Max pooling; padding never wins.
pub fn max_pool2d(p: &Pool2dParams, x: &[f32], y: &mut [f32], batch: usize) {
    pool2d(p, x, y, batch, |it, _| it.fold(f32::NEG_INFINITY, f32::max));
}

/// Average pooling; the divisor counts padded cells when `include_pad`.
pub fn avg_pool2d(p: &Pool2dParams, include_pad: bool, x: &[f32], y: &mut [f32], batch: usize) {
    pool2d(p, x, y, batch, |it, window| {
        let (sum, count) = it.fold((0.0f32, 0usize), |(s, c), v| (s + v, c + 1));
        let div = if include_pad { window } else { count.max(1) };
        sum / div as f32
    });
}

/// Mean of each `spatial`-long plane.
pub fn global_avg_pool(x: &[f32], channels: usize, spatial: usize, y: &mut [f32], batch: usize) {
    for (i, yv) in y.iter_mut().enumerate().take(batch * channels) {
        let s: f32 = x[i * spatial..(i + 1) * spatial].iter().sum();
        *yv = s / spatial as f32;
    }
}

/// Portable [`super::csr_dense`]: one sparse dot product per output, four partial sums.
pub fn csr_dense(x: &[f32], w: &super::CsrMatrix, b: &[f32], y: &mut [f32]) {
    let (inputs, outputs) = (w.cols, w.rows);
    for (xr, yr) in x.chunks_exact(inputs).zip(y.chunks_exact_mut(outputs)) {
        for ((yo, span), bo) in yr.iter_mut().zip(w.row_ptr.windows(2)).zip(b) {
            let range = span[0] as usize..span[1] as usize;
            *yo = bo + sparse_dot(&w.col_idx[range.clone()], &w.values[range], xr);
        }
    }
}

/// `Σ values[k] · x[cols[k]]` with four independent partial sums.
fn sparse_dot(cols: &[u32], values: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 4];
    let cc = cols.chunks_exact(4);
    let cv = values.chunks_exact(4);
    let (rc, rv) = (cc.remainder(), cv.remainder());
    for (c, v) in cc.zip(cv) {
        for i in 0..4 {
            acc[i] += v[i] * x[c[i] as usize];
        }
    }
    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for (&c, &v) in rc.iter().zip(rv) {
        s += v * x[c as usize];
    }
    s
}

/// Samples the batched sparse kernel handles at once.
pub const CSR_TILE: usize = 16;

/// Portable [`super::csr_dense_batched`]: [`CSR_TILE`] samples at a time, their inputs
/// transposed into `scratch` (`cols × CSR_TILE`) so each stored weight multiplies a
/// contiguous run of samples.
pub fn csr_dense_batched(
    x: &[f32],
    w: &super::CsrMatrix,
    b: &[f32],
    y: &mut [f32],
    scratch: &mut [f32],
) {
    let (inputs, outputs) = (w.cols, w.rows);
    let xt = &mut scratch[..inputs * CSR_TILE];
    for (xs, ys) in x
        .chunks(inputs * CSR_TILE)
        .zip(y.chunks_mut(outputs * CSR_TILE))
    {
        let n = xs.len() / inputs.max(1);
        xt.fill(0.0);
        for (t, xr) in xs.chunks_exact(inputs).enumerate() {
            for (c, &v) in xr.iter().enumerate() {
                xt[c * CSR_TILE + t] = v;
            }
        }
        for ((o, span), &bo) in w.row_ptr.windows(2).enumerate().zip(b) {
            let mut acc = [bo; CSR_TILE];
            let range = span[0] as usize..span[1] as usize;
            for (&c, &v) in w.col_idx[range.clone()].iter().zip(&w.values[range]) {
                let col = &xt[c as usize * CSR_TILE..(c as usize + 1) * CSR_TILE];
                for t in 0..CSR_TILE {
                    acc[t] += v * col[t];
                }
            }
            for (t, &a) in acc.iter().enumerate().take(n) {
                ys[t * outputs + o] = a;
            }
        }
    }
}

/// Portable [`super::whole_numbers_to_bytes`].
pub(super) fn whole_numbers_to_bytes(x: &[f32], signed: bool, y: &mut [u8]) -> bool {
    let (lo, hi) = if signed {
        (-128.0, 127.0)
    } else {
        (0.0, 255.0)
    };
    let mut ok = true;
    for (b, &v) in y.iter_mut().zip(x) {
        // Saturating casts: a value out of range or NaN fails the comparisons.
        let i = v as i32;
        ok &= v >= lo && v <= hi && i as f32 == v;
        *b = i as u8;
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_correctly_rounded_against_f64() {
        let mut worst = 0.0f64;
        let mut x = -103.9f32;
        while x < 88.7 {
            for v in [x, x * 0.999_97, -x.abs() * 0.013] {
                let got = exp(v) as f64;
                let want = (v as f64).exp();
                // One f32 ulp at `want`, from its exponent.
                let ulp = 2f64.powi((want.log2().floor() as i32 - 23).max(-149));
                worst = worst.max((got - want).abs() / ulp);
            }
            x += 0.0123;
        }
        assert!(worst <= 0.5 + 1e-6, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(1.0), std::f32::consts::E);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(-200.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }
}
