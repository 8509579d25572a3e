//! Compute kernels. One dispatch function per op: it picks the fastest implementation the
//! CPU supports at run time and falls back to the portable one in [`generic`].
//! `unsafe` lives only in the architecture files, each block with a `SAFETY:` line.

pub mod generic;
#[cfg(target_arch = "aarch64")]
mod neon;
mod tree;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Element-wise activation applied in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// No-op.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `x` or `alpha * x` below 0.
    LeakyRelu(f32),
    /// Logistic function.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
}

/// Geometry of a 2-D convolution over one NCHW sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv2dParams {
    /// Input channels.
    pub in_c: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output channels.
    pub out_c: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Kernel height.
    pub k_h: usize,
    /// Kernel width.
    pub k_w: usize,
    /// Vertical, horizontal stride.
    pub stride: [usize; 2],
    /// Top, left padding (bottom and right follow from the output size).
    pub pad: [usize; 2],
    /// Vertical, horizontal dilation.
    pub dilation: [usize; 2],
    /// Channel groups.
    pub groups: usize,
}

/// Geometry of a 2-D pooling window over one NCHW sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pool2dParams {
    /// Channels.
    pub c: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Window height, width.
    pub k: [usize; 2],
    /// Vertical, horizontal stride.
    pub stride: [usize; 2],
    /// Top, left padding.
    pub pad: [usize; 2],
}

/// `y[r] = W · x[r] + b` for every row `r`; `W` is `[outputs, inputs]` row-major.
pub fn dense(x: &[f32], w: &[f32], b: &[f32], inputs: usize, outputs: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2_fma() {
        return x86::dense(x, w, b, inputs, outputs, y);
    }
    #[cfg(target_arch = "aarch64")]
    {
        return neon::dense(x, w, b, inputs, outputs, y);
    }
    #[allow(unreachable_code)]
    generic::dense(x, w, b, inputs, outputs, y)
}

pub use tree::{TreeEnsemble, TreeNode};

pub use generic::{
    activate, argmax, avg_pool2d, conv2d, global_avg_pool, max_pool2d, softmax, standardize,
};

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// The dispatched (SIMD) dense kernel agrees with the portable one.
        #[test]
        fn dense_dispatch_matches_generic(inputs in 1usize..70, outputs in 1usize..20, rows in 1usize..4, seed in 0u32..1000) {
            let values = |n: usize, k: u32| -> Vec<f32> { (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(k * 97)) % 2001) as f32 / 1000.0 - 1.0).collect() };
            let x = values(inputs * rows, seed);
            let w = values(inputs * outputs, seed + 1);
            let b = values(outputs, seed + 2);
            let mut fast = vec![0.0; rows * outputs];
            let mut slow = vec![0.0; rows * outputs];
            super::dense(&x, &w, &b, inputs, outputs, &mut fast);
            super::generic::dense(&x, &w, &b, inputs, outputs, &mut slow);
            for (f, s) in fast.iter().zip(&slow) {
                prop_assert!((f - s).abs() <= 1e-5 * (1.0 + s.abs()) * inputs as f32, "{} vs {}", f, s);
            }
        }
    }
}
