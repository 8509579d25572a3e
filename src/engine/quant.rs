//! Quantized layers prepared for execution: constants derived once from the graph (weight
//! row sums, fixed-point multipliers, biases on the accumulator's scale) and scratch space
//! sized at load, so a run allocates nothing.

use super::kernels::int8::{self, Epilogue, FixedMultiplier, NarrowRequant, QChannels};
use super::kernels::{self, Conv2dParams, PackedI8};
use crate::graph::{GraphError, QuantInput, QuantOutput, QuantParams, Tensor};
use std::cell::RefCell;

/// Where a quantized layer reads from.
pub(super) enum QIn<'a> {
    U8(&'a [u8]),
    F32(&'a [f32]),
}

/// Where it writes.
pub(super) enum QOut<'a> {
    U8(&'a mut [u8]),
    F32(&'a mut [f32]),
}

/// The parts of a quantized layer the dense and conv steps share.
pub(super) struct QCore {
    weight: Vec<i8>,
    /// Products per output (`in` for dense, `in/groups · kh · kw` for conv).
    depth: usize,
    channels: QChannels,
    /// Static input parameters, or none for dynamic.
    input: Option<QuantParams>,
    /// The u8 epilogue in 32-bit lanes, when its constants allow (same results).
    narrow: Option<NarrowRequant>,
    /// One accumulator per output channel.
    acc: RefCell<Vec<i32>>,
}

impl QCore {
    pub(super) fn new(
        node: &str,
        layer: &'static str,
        weight: &Tensor,
        bias: Option<&Tensor>,
        input: QuantInput,
        output: QuantOutput,
        relu: bool,
    ) -> Result<QCore, GraphError> {
        let err = |reason: String| GraphError::Shape {
            node: node.to_string(),
            layer,
            reason,
        };
        // Validation has checked the encodings and lengths.
        let (values, w_scales) = weight
            .as_i8()
            .ok_or_else(|| err("weight must be int8".into()))?;
        let channels = w_scales.len();
        let depth = values.len() / channels.max(1);
        let bias = bias
            .and_then(Tensor::as_f32)
            .map_or_else(|| vec![0.0; channels], <[f32]>::to_vec);
        let input = match input {
            QuantInput::Static(p) => Some(p),
            QuantInput::Dynamic => None,
        };
        let wsum = int8::row_sums(values, depth);
        let mut narrow = None;
        let epilogue = match (output, input) {
            (QuantOutput::F32, _) => Epilogue::F32 {
                w_scales: w_scales.to_vec(),
                bias,
            },
            (QuantOutput::U8(out), Some(inp)) => {
                let mut multipliers = Vec::with_capacity(channels);
                let mut bias_q = Vec::with_capacity(channels);
                for (c, &s_w) in w_scales.iter().enumerate() {
                    let real = inp.scale as f64 * s_w as f64 / out.scale as f64;
                    multipliers.push(FixedMultiplier::new(real).ok_or_else(|| {
                        err(format!(
                            "channel {c}: requantization multiplier {real:e} (input scale × weight scale / output scale) is outside [2^-32, 2^30)"
                        ))
                    })?);
                    bias_q.push(
                        int8::bias_to_i32(bias[c], inp.scale, s_w)
                            - inp.zero_point as i64 * wsum[c] as i64,
                    );
                }
                let ranges = int8::acc_ranges(values, depth);
                narrow = NarrowRequant::new(&multipliers, &bias_q, &ranges, out.zero_point, relu);
                Epilogue::U8 {
                    multipliers,
                    bias: bias_q,
                    zero_point: out.zero_point,
                }
            }
            (QuantOutput::U8(_), None) => {
                return Err(err("a dynamic input needs a float32 output".into()));
            }
        };
        Ok(QCore {
            channels: QChannels {
                wsum,
                epilogue,
                relu,
            },
            weight: values.to_vec(),
            depth,
            input,
            narrow,
            acc: RefCell::new(vec![0; channels]),
        })
    }
}

/// A prepared [`crate::graph::Layer::QDense`].
pub(super) struct QDense {
    core: QCore,
    /// The weights in the layout this CPU's product kernel reads (the core's row-major
    /// copy is dropped).
    weight: PackedI8,
    /// The quantized row under a dynamic input.
    row: RefCell<Vec<u8>>,
}

impl QDense {
    pub(super) fn new(node: &str, mut core: QCore) -> Result<QDense, GraphError> {
        let row = RefCell::new(vec![0; if core.input.is_none() { core.depth } else { 0 }]);
        let rows = core.channels.wsum.len();
        let weight =
            PackedI8::new(&core.weight, rows, core.depth).ok_or_else(|| GraphError::Shape {
                node: node.to_string(),
                layer: "qdense",
                reason: format!(
                    "weight holds {} values, not {rows} × {}",
                    core.weight.len(),
                    core.depth
                ),
            })?;
        core.weight = Vec::new();
        Ok(QDense { core, weight, row })
    }

    /// Runs every row of `x` (a sample of rank above 1 holds several rows of `depth`
    /// values; each is one product, as the float dense layer does on the last axis).
    pub(super) fn run(&self, x: QIn<'_>, mut y: QOut<'_>) {
        let c = &self.core;
        let k = c.depth;
        let outputs = c.channels.wsum.len();
        let mut acc = c.acc.borrow_mut();
        let mut row = self.row.borrow_mut();
        let rows = match &x {
            QIn::U8(x) => x.len(),
            QIn::F32(x) => x.len(),
        } / k.max(1);
        for r in 0..rows {
            let (xq, s_in, zp): (&[u8], f32, u8) = match (&x, c.input) {
                (QIn::U8(x), Some(p)) => (&x[r * k..(r + 1) * k], p.scale, p.zero_point),
                (QIn::F32(x), None) => {
                    let xr = &x[r * k..(r + 1) * k];
                    let (s, zp) = int8::dynamic_params(xr);
                    kernels::quantize_u8(xr, s, zp, &mut row);
                    (&row[..], s, zp)
                }
                _ => return,
            };
            kernels::gemv_u8i8_packed(xq, &self.weight, &mut acc);
            match &mut y {
                QOut::F32(y) => {
                    c.channels
                        .f32_all(&acc, zp, s_in, &mut y[r * outputs..(r + 1) * outputs]);
                }
                QOut::U8(y) => {
                    let y = &mut y[r * outputs..(r + 1) * outputs];
                    match &c.narrow {
                        Some(plan) => kernels::requant_u8_narrow(plan, &acc, y),
                        None => c.channels.u8_all(&acc, y),
                    }
                }
            }
        }
    }
}

/// A prepared [`crate::graph::Layer::QConv2d`]: for each output position the input patch
/// is gathered into one row (padding = the input's zero point, which stands for 0.0) and
/// multiplied by every output channel's weights of its group.
pub(super) struct QConv2d {
    core: QCore,
    p: Conv2dParams,
    /// One quantized input sample under a dynamic input.
    sample: RefCell<Vec<u8>>,
    /// One gathered patch.
    patch: RefCell<Vec<u8>>,
}

impl QConv2d {
    pub(super) fn new(core: QCore, p: Conv2dParams) -> QConv2d {
        let in_sample = p.in_c * p.in_h * p.in_w;
        QConv2d {
            sample: RefCell::new(vec![0; if core.input.is_none() { in_sample } else { 0 }]),
            patch: RefCell::new(vec![0; core.depth]),
            core,
            p,
        }
    }

    pub(super) fn run(&self, x: QIn<'_>, mut y: QOut<'_>, batch: usize) {
        let (c, p) = (&self.core, &self.p);
        let in_sample = p.in_c * p.in_h * p.in_w;
        let plane = p.out_h * p.out_w;
        let out_sample = p.out_c * plane;
        let icg = p.in_c / p.groups;
        let ocg = p.out_c / p.groups;
        let k = c.depth;
        let mut acc = c.acc.borrow_mut();
        let mut sample = self.sample.borrow_mut();
        let mut patch = self.patch.borrow_mut();
        for n in 0..batch {
            let (xs, s_in, zp): (&[u8], f32, u8) = match (&x, c.input) {
                (QIn::U8(x), Some(q)) => (
                    &x[n * in_sample..(n + 1) * in_sample],
                    q.scale,
                    q.zero_point,
                ),
                (QIn::F32(x), None) => {
                    let xr = &x[n * in_sample..(n + 1) * in_sample];
                    let (s, zp) = int8::dynamic_params(xr);
                    kernels::quantize_u8(xr, s, zp, &mut sample);
                    (&sample[..], s, zp)
                }
                _ => return,
            };
            for g in 0..p.groups {
                let w = &c.weight[g * ocg * k..(g + 1) * ocg * k];
                for oy in 0..p.out_h {
                    for ox in 0..p.out_w {
                        let mut i = 0;
                        for ic in 0..icg {
                            let xplane = &xs[(g * icg + ic) * p.in_h * p.in_w..][..p.in_h * p.in_w];
                            for ky in 0..p.k_h {
                                let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                                    - p.pad[0] as isize;
                                for kx in 0..p.k_w {
                                    let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                                        - p.pad[1] as isize;
                                    patch[i] = if iy >= 0
                                        && ix >= 0
                                        && (iy as usize) < p.in_h
                                        && (ix as usize) < p.in_w
                                    {
                                        xplane[iy as usize * p.in_w + ix as usize]
                                    } else {
                                        zp
                                    };
                                    i += 1;
                                }
                            }
                        }
                        let acc = &mut acc[g * ocg..(g + 1) * ocg];
                        kernels::gemv_u8i8(&patch, w, acc);
                        let pos = oy * p.out_w + ox;
                        for (j, &a) in acc.iter().enumerate() {
                            let oc = g * ocg + j;
                            let at = n * out_sample + oc * plane + pos;
                            match &mut y {
                                QOut::F32(y) => y[at] = c.channels.f32_out(oc, a, zp, s_in),
                                QOut::U8(y) => y[at] = c.channels.u8_out(oc, a),
                            }
                        }
                    }
                }
            }
        }
    }
}
