//! Dense (fully connected) layers with packed weights: a GEMV at batch 1, a GEMM above,
//! through the same micro-kernels as convolution.

use super::gemm::{self, PanelsF32, PanelsI8, QDst};
use super::qconv::{OutputQuant, QEpilogue, U8Quant, check_depth};
use super::{Activation, F32Path, I8Path, KernelError};

fn check_sizes(
    op: &'static str,
    inputs: usize,
    outputs: usize,
    weights: usize,
    bias: usize,
) -> Result<(), KernelError> {
    if inputs == 0 || outputs == 0 {
        return Err(KernelError::Geometry {
            op,
            reason: format!("{inputs} inputs, {outputs} outputs: both must be positive"),
        });
    }
    let want = inputs
        .checked_mul(outputs)
        .ok_or_else(|| KernelError::Geometry {
            op,
            reason: "sizes overflow usize".into(),
        })?;
    if weights != want {
        return Err(KernelError::Length {
            op,
            what: "weights",
            got: weights,
            want,
        });
    }
    if bias != outputs {
        return Err(KernelError::Length {
            op,
            what: "bias",
            got: bias,
            want: outputs,
        });
    }
    Ok(())
}

/// An f32 dense layer `y = act(W · x + b)` with `W` (`[outputs, inputs]`) packed for this
/// CPU. Build once at load; [`DenseF32::run`] allocates nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseF32 {
    inputs: usize,
    outputs: usize,
    act: Activation,
    path: F32Path,
    panels: PanelsF32,
}

impl DenseF32 {
    /// Packs the row-major `weights` (`[outputs, inputs]`) and `bias` (`[outputs]`).
    ///
    /// # Errors
    /// [`KernelError`] if a size is zero or a length does not match.
    pub fn new(
        inputs: usize,
        outputs: usize,
        weights: &[f32],
        bias: &[f32],
        act: Activation,
    ) -> Result<DenseF32, KernelError> {
        DenseF32::with_path(inputs, outputs, weights, bias, act, F32Path::detect())
    }

    /// [`DenseF32::new`] for a given implementation family (one of [`F32Path::available`]).
    ///
    /// # Errors
    /// As [`DenseF32::new`], and [`KernelError::Geometry`] if this CPU cannot run `path`.
    pub fn with_path(
        inputs: usize,
        outputs: usize,
        weights: &[f32],
        bias: &[f32],
        act: Activation,
        path: F32Path,
    ) -> Result<DenseF32, KernelError> {
        check_sizes("dense", inputs, outputs, weights.len(), bias.len())?;
        if !F32Path::available().contains(&path) {
            return Err(KernelError::Geometry {
                op: "dense",
                reason: format!("this CPU cannot run the {} kernels", path.name()),
            });
        }
        let nr = gemm::f32_nr(path, outputs, true);
        let panels = PanelsF32::pack(inputs, outputs, nr, bias, |kk, j| weights[j * inputs + kk]);
        Ok(DenseF32 {
            inputs,
            outputs,
            act,
            path,
            panels,
        })
    }

    /// Inputs per row.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Outputs per row.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// The implementation family the weights were packed for.
    pub fn path(&self) -> F32Path {
        self.path
    }

    /// `y[r] = act(W · x[r] + b)` for every row `r` of `x` (`x.len() / inputs` rows).
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of the inputs or `y` does not hold one output row
    /// per input row.
    pub fn run(&self, x: &[f32], y: &mut [f32]) {
        let rows = x.len() / self.inputs;
        assert_eq!(x.len(), rows * self.inputs, "dense input length");
        assert_eq!(y.len(), rows * self.outputs, "dense output length");
        gemm::gemm_f32(
            self.path,
            x,
            self.inputs,
            rows,
            &self.panels,
            self.act,
            y,
            self.outputs,
        );
    }
}

/// Rows an int8 dense layer copies at a time when its depth is not a multiple of 4.
const PAD_ROWS: usize = 8;

/// An int8 dense layer: u8 input with a zero point, i8 weights (`[outputs, inputs]`) with
/// per-output scales, i32 sums, u8 or f32 output. Every implementation family gives the
/// same bits.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseU8 {
    inputs: usize,
    outputs: usize,
    path: I8Path,
    zero_point: u8,
    epi: QEpilogue,
    panels: PanelsI8,
}

impl DenseU8 {
    /// Packs the row-major `weights`; `weight_scales` holds one scale per output (or one
    /// for all), `bias` one i32 per output on the scale `input.scale · weight_scale[o]`.
    ///
    /// # Errors
    /// [`KernelError`] if a size is zero, a length does not match, or the quantization
    /// parameters cannot be represented.
    pub fn new(
        inputs: usize,
        outputs: usize,
        weights: &[i8],
        weight_scales: &[f32],
        bias: &[i32],
        input: U8Quant,
        output: OutputQuant,
    ) -> Result<DenseU8, KernelError> {
        DenseU8::with_path(
            inputs,
            outputs,
            weights,
            weight_scales,
            bias,
            input,
            output,
            I8Path::detect(),
        )
    }

    /// [`DenseU8::new`] for a given implementation family (one of [`I8Path::available`]).
    ///
    /// # Errors
    /// As [`DenseU8::new`], and [`KernelError::Geometry`] if this CPU cannot run `path`.
    #[allow(clippy::too_many_arguments)]
    pub fn with_path(
        inputs: usize,
        outputs: usize,
        weights: &[i8],
        weight_scales: &[f32],
        bias: &[i32],
        input: U8Quant,
        output: OutputQuant,
        path: I8Path,
    ) -> Result<DenseU8, KernelError> {
        const OP: &str = "qdense";
        check_sizes(OP, inputs, outputs, weights.len(), bias.len())?;
        check_depth(OP, inputs)?;
        if !I8Path::available().contains(&path) {
            return Err(KernelError::Geometry {
                op: OP,
                reason: format!("this CPU cannot run the {} kernels", path.name()),
            });
        }
        let w_at = |o: usize, i: usize| weights[o * inputs + i];
        let mut epi = QEpilogue::new(
            OP,
            outputs,
            inputs,
            w_at,
            weight_scales,
            bias,
            input,
            output,
        )?;
        let path = epi.simd_path(path, outputs);
        let nr = gemm::i8_nr(path, outputs, true);
        let panels = PanelsI8::pack(inputs, outputs, nr, |kk, j| w_at(j, kk));
        Ok(DenseU8 {
            inputs,
            outputs,
            path,
            zero_point: input.zero_point,
            epi,
            panels,
        })
    }

    /// Inputs per row.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Outputs per row.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// The implementation family the weights were packed for.
    pub fn path(&self) -> I8Path {
        self.path
    }

    /// Whether the output is u8 ([`DenseU8::run_u8`]) rather than f32.
    pub fn output_is_u8(&self) -> bool {
        self.epi.is_u8()
    }

    /// Scratch bytes a run needs: 0 when the inputs are a multiple of 4, else room for a
    /// few rows padded to one.
    pub fn scratch_len(&self) -> usize {
        if self.inputs.is_multiple_of(4) {
            0
        } else {
            PAD_ROWS * self.panels.k4
        }
    }

    /// u8 outputs for every row of `x` (`x.len() / inputs` rows).
    ///
    /// # Panics
    /// If the output is f32, `x.len()` is not a multiple of the inputs, `y` does not hold
    /// one output row per input row, or `scratch` is shorter than
    /// [`DenseU8::scratch_len`].
    pub fn run_u8(&self, x: &[u8], y: &mut [u8], scratch: &mut [u8]) {
        assert!(self.epi.is_u8(), "qdense: this layer writes f32");
        let rows = x.len() / self.inputs;
        assert_eq!(y.len(), rows * self.outputs, "qdense output length");
        self.run(x, QDst::U8(y), scratch)
    }

    /// f32 outputs for every row of `x`.
    ///
    /// # Panics
    /// If the output is u8, or a length is wrong as for [`DenseU8::run_u8`].
    pub fn run_f32(&self, x: &[u8], y: &mut [f32], scratch: &mut [u8]) {
        assert!(!self.epi.is_u8(), "qdense: this layer writes u8");
        let rows = x.len() / self.inputs;
        assert_eq!(y.len(), rows * self.outputs, "qdense output length");
        self.run(x, QDst::F32(y), scratch)
    }

    fn run(&self, x: &[u8], mut y: QDst<'_>, scratch: &mut [u8]) {
        let (k, k4, n) = (self.inputs, self.panels.k4, self.outputs);
        let rows = x.len() / k;
        assert_eq!(x.len(), rows * k, "qdense input length");
        assert!(scratch.len() >= self.scratch_len(), "qdense scratch length");
        if k == k4 {
            gemm::gemm_u8i8(self.path, x, k, rows, &self.panels, &self.epi, 0, y, n);
            return;
        }
        let mut r0 = 0;
        while r0 < rows {
            let m = PAD_ROWS.min(rows - r0);
            let tile = &mut scratch[..m * k4];
            for (dst, src) in tile.chunks_exact_mut(k4).zip(x[r0 * k..].chunks_exact(k)) {
                dst[..k].copy_from_slice(src);
                dst[k..].fill(self.zero_point);
            }
            let dst = super::qconv::sub_dst(&mut y, r0 * n);
            gemm::gemm_u8i8(self.path, tile, k4, m, &self.panels, &self.epi, 0, dst, n);
            r0 += m;
        }
    }
}
