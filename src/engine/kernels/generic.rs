//! Portable reference kernels: plain Rust the compiler can vectorize, and the baseline the
//! architecture-specific kernels are tested against.

use super::{Activation, Conv2dParams, Pool2dParams};

/// Portable [`super::dense`].
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
    }
}

fn sigmoid(v: f32) -> f32 {
    if v >= 0.0 {
        1.0 / (1.0 + exp(-v))
    } else {
        let e = exp(v);
        e / (1.0 + e)
    }
}

/// `1 / k!` for `k = 0..=12`, evaluated by the compiler (IEEE, the same on every target).
const INV_FACTORIAL: [f64; 13] = {
    let mut t = [1.0f64; 13];
    let mut k = 1;
    while k < 13 {
        t[k] = t[k - 1] / k as f64;
        k += 1;
    }
    t
};

/// `e^x` from IEEE basic operations only, so every platform gives the same bits (the C
/// library's `expf` differs between glibc versions, architectures and musl in the last
/// bit). Computed in f64 — `x = n·ln 2 + r`, `|r| <= ln 2 / 2`, a degree-12 Taylor
/// polynomial of `e^r` (truncation < 1e-16 relative), times `2^n` — then rounded once to
/// f32: the result is the correctly rounded `e^x` except when `e^x` lies within ~1e-15
/// (relative) of a halfway point between two floats, where it may be the other neighbour
/// (error < 0.5 ulp + 1e-15 relative). Overflows to +∞ above 88.73, underflows to 0
/// below -104; NaN stays NaN.
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > 88.73 {
        return f32::INFINITY;
    }
    if x < -104.0 {
        return 0.0;
    }
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    // ln 2 split as fdlibm does: the high part has 32 significant bits.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    let xd = x as f64;
    let n = (xd * std::f64::consts::LOG2_E + MAGIC) - MAGIC;
    // n·LN2_HI is exact (LN2_HI has 32 significant bits, |n| <= 150).
    let r = (xd - n * LN2_HI) - n * LN2_LO;
    let mut p = INV_FACTORIAL[12];
    for c in INV_FACTORIAL[..12].iter().rev() {
        p = p * r + c;
    }
    let scale = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (p * scale) as f32
}

/// Numerically stable softmax over rows of `axis_len`.
pub fn softmax(x: &[f32], axis_len: usize, y: &mut [f32]) {
    for (xr, yr) in x.chunks_exact(axis_len).zip(y.chunks_exact_mut(axis_len)) {
        let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = exp(v - max);
            sum += *o;
        }
        let inv = 1.0 / sum;
        yr.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Index of the first maximum of each row, mapped through `labels`.
pub fn argmax(x: &[f32], axis_len: usize, labels: Option<&[i64]>, y: &mut [i64]) {
    for (xr, yo) in x.chunks_exact(axis_len).zip(y.iter_mut()) {
        let mut best = 0;
        for (i, &v) in xr.iter().enumerate() {
            if v > xr[best] {
                best = i;
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
