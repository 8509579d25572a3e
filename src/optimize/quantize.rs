//! Post-training int8 quantization of native models.
//!
//! Weights of every float [`Layer::Dense`] and [`Layer::Conv2d`] become symmetric int8 per
//! output channel (`scale = max|w| / 127`). Activations are asymmetric u8:
//! - [`QuantizeMode::Static`]: the float model runs on calibration rows, and each value a
//!   quantized layer reads or writes gets parameters from the observed range (min–max, or
//!   a percentile of the values). Consecutive quantized layers, with at most a ReLU between
//!   them (fused into the first), pass u8 values without leaving the integer domain;
//!   [`Layer::Quantize`] / [`Layer::Dequantize`] mark the boundaries with float layers.
//! - [`QuantizeMode::Dynamic`]: no calibration; each quantized layer reads float32 and
//!   quantizes every sample on the fly from that sample's range.
//!
//! Everything else (standardize, softmax, argmax, trees…) stays float32. The method is
//! recorded in the metadata properties `quantize.mode`, `quantize.calibration` and
//! `quantize.calibration_rows`.

use crate::engine::{Engine, EngineError};
use crate::graph::{
    DType, Graph, GraphError, Layer, Model, Node, Output, QuantInput, QuantOutput, QuantParams,
    Tensor, TensorData, ValueId,
};

/// How activation ranges are taken from the calibration run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Calibration {
    /// The smallest and largest value seen.
    MinMax,
    /// The `p`-th and `(100 - p)`-th percentiles of the values seen (`50 < p <= 100`), so
    /// that rare outliers do not stretch the scale; e.g. `Percentile(99.99)`.
    Percentile(f32),
}

/// How activations are quantized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QuantizeMode {
    /// Fixed parameters calibrated on data (needs calibration rows).
    Static {
        /// How ranges are measured.
        calibration: Calibration,
    },
    /// Parameters computed per sample at run time; no calibration data.
    Dynamic,
}

/// Options of [`quantize`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantizeOptions {
    /// Static or dynamic activations.
    pub mode: QuantizeMode,
}

/// Why a model could not be quantized.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum QuantizeError {
    /// Static quantization without calibration rows.
    #[error("static quantization needs calibration rows (or use dynamic quantization)")]
    MissingCalibration,
    /// The calibration data is not a whole number of rows.
    #[error(
        "calibration data holds {len} values, not a positive multiple of the input's {sample_len} values per row"
    )]
    CalibrationRows {
        /// Values given.
        len: usize,
        /// Values per row.
        sample_len: usize,
    },
    /// Calibration feeds a single input; this graph has several.
    #[error("static quantization calibrates graphs with one input; this one has {0}")]
    Inputs(usize),
    /// A percentile outside `(50, 100]`.
    #[error("calibration percentile {0} must be in (50, 100]")]
    Percentile(f32),
    /// No float dense or conv2d layer.
    #[error("the model has no float dense or conv2d layer to quantize")]
    NothingToQuantize,
    /// The input model (or the result) does not validate.
    #[error("invalid graph: {0}")]
    Graph(GraphError),
    /// The calibration run failed.
    #[error("calibration run: {0}")]
    Engine(EngineError),
}

// Not `#[from]`: that would also make the inner error the `source()`, and `{:#}` would print
// it twice (the message already holds it).
impl From<EngineError> for QuantizeError {
    fn from(e: EngineError) -> Self {
        QuantizeError::Engine(e)
    }
}

impl From<GraphError> for QuantizeError {
    fn from(e: GraphError) -> Self {
        QuantizeError::Graph(e)
    }
}

/// Rows the calibration run feeds the engine at a time.
const CALIBRATION_BATCH: usize = 256;

/// Quantizes `model`'s dense and conv2d layers to int8 (see the module docs).
/// `calibration_rows` holds row-major samples of the graph's single input (`sample_len`
/// values each); static mode needs them, dynamic mode ignores them.
///
/// # Errors
/// [`QuantizeError`]: missing or malformed calibration data, a bad percentile, a model
/// with nothing to quantize, an invalid graph, non-finite calibration values.
pub fn quantize(
    model: &Model,
    options: &QuantizeOptions,
    calibration_rows: Option<&[f32]>,
) -> Result<Model, QuantizeError> {
    // Pruned (CSR) weights are quantized like dense ones: their zeros stay exact zeros.
    let densified;
    let model = if model.graph.nodes.iter().any(|n| match &n.layer {
        Layer::Dense { weight, .. } | Layer::Conv2d { weight, .. } => weight.is_sparse(),
        _ => false,
    }) {
        let mut m = model.clone();
        for node in &mut m.graph.nodes {
            if let Layer::Dense { weight, .. } | Layer::Conv2d { weight, .. } = &mut node.layer
                && weight.is_sparse()
                && let Some(values) = weight.to_f32_vec()
            {
                *weight = crate::graph::Tensor::f32(weight.shape.clone(), values);
            }
        }
        densified = m;
        &densified
    } else {
        model
    };
    let graph = &model.graph;
    let shapes = graph.infer_shapes()?;
    let n_in = graph.inputs.len();
    let n_values = shapes.values.len();
    let is_compute = |l: &Layer| match l {
        Layer::Dense { weight, .. } | Layer::Conv2d { weight, .. } => weight.as_f32().is_some(),
        _ => false,
    };
    if !graph.nodes.iter().any(|n| is_compute(&n.layer)) {
        return Err(QuantizeError::NothingToQuantize);
    }
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n_values];
    for (k, node) in graph.nodes.iter().enumerate() {
        for &i in &node.inputs {
            consumers[i as usize].push(k);
        }
    }
    let mut is_output = vec![false; n_values];
    for o in &graph.outputs {
        is_output[o.value as usize] = true;
    }
    let static_cal = match options.mode {
        QuantizeMode::Static { calibration } => Some(calibration),
        QuantizeMode::Dynamic => None,
    };
    let role = |l: &Layer| -> Role {
        match l {
            _ if is_compute(l) => Role::Compute,
            _ if static_cal.is_none() => Role::Float,
            Layer::Add => Role::Add,
            Layer::AvgPool2d { .. } | Layer::GlobalAvgPool => Role::Pool,
            Layer::MaxPool2d { .. }
            | Layer::Flatten
            | Layer::Reshape { .. }
            | Layer::Transpose { .. } => Role::Transparent,
            Layer::Pad { value, .. } if *value == 0.0 => Role::Transparent,
            _ => Role::Float,
        }
    };
    let roles: Vec<Role> = graph.nodes.iter().map(|n| role(&n.layer)).collect();

    // A Relu (or, when the result stays u8, a Clip) that alone reads a quantized layer's
    // result is absorbed: the layer's result then stands for the activation's output.
    let mut result = vec![0usize; graph.nodes.len()];
    let mut absorbed: Vec<Option<usize>> = vec![None; graph.nodes.len()];
    let mut skip = vec![false; graph.nodes.len()];
    for k in 0..graph.nodes.len() {
        let v = n_in + k;
        result[k] = v;
        if roles[k] == Role::Float || roles[k] == Role::Transparent {
            continue;
        }
        let absorbable = |l: &Layer| match l {
            Layer::Relu => true,
            Layer::Clip { min, .. } => *min == 0.0 && static_cal.is_some(),
            _ => false,
        };
        if let [c] = consumers[v][..]
            && !is_output[v]
            && absorbable(&graph.nodes[c].layer)
        {
            absorbed[k] = Some(c);
            skip[c] = true;
            result[k] = n_in + c;
        }
    }
    // Which results stay u8: every reader takes u8 (quantized layers, and transparent ones
    // whose own results stay u8), none is a graph output. Readers come later in node
    // order, so one backward pass decides.
    let mut u8_value = vec![false; n_values];
    let mut takes_u8 = vec![false; graph.nodes.len()];
    for k in (0..graph.nodes.len()).rev() {
        if skip[k] {
            continue;
        }
        let v = result[k];
        let readers_take =
            !is_output[v] && !consumers[v].is_empty() && consumers[v].iter().all(|&c| takes_u8[c]);
        u8_value[v] = static_cal.is_some()
            && match roles[k] {
                // Int8 adds and pools always write u8 (dequantized where read as float).
                Role::Add | Role::Pool => true,
                Role::Compute | Role::Transparent => readers_take,
                Role::Float => false,
            };
        takes_u8[k] = static_cal.is_some()
            && match roles[k] {
                Role::Compute | Role::Add | Role::Pool => true,
                Role::Transparent => u8_value[v],
                Role::Float => false,
            };
    }

    // Calibration: ranges of every value a quantized layer reads and of every u8 result
    // (a transparent layer's result shares its input's parameters).
    let mut params: Vec<Option<QuantParams>> = vec![None; n_values];
    let mut rows_used = 0usize;
    if let Some(calibration) = static_cal {
        let rows = calibration_rows.ok_or(QuantizeError::MissingCalibration)?;
        if n_in != 1 {
            return Err(QuantizeError::Inputs(n_in));
        }
        if let Calibration::Percentile(p) = calibration
            && !(p > 50.0 && p <= 100.0)
        {
            return Err(QuantizeError::Percentile(p));
        }
        let sample_len = graph.inputs[0].sample_len();
        if rows.is_empty() || sample_len == 0 || rows.len() % sample_len != 0 {
            return Err(QuantizeError::CalibrationRows {
                len: rows.len(),
                sample_len,
            });
        }
        rows_used = rows.len() / sample_len;
        let mut tracked: Vec<usize> = Vec::new();
        for (k, node) in graph.nodes.iter().enumerate() {
            if skip[k] || !takes_u8[k] {
                continue;
            }
            if roles[k] != Role::Transparent {
                tracked.extend(node.inputs.iter().map(|&i| i as usize));
            }
            if u8_value[result[k]] && roles[k] != Role::Transparent {
                tracked.push(result[k]);
            }
        }
        tracked.sort_unstable();
        tracked.dedup();
        let ranges = calibrate(graph, &tracked, rows, sample_len, calibration)?;
        for (&v, (lo, hi)) in tracked.iter().zip(ranges) {
            params[v] = Some(QuantParams::from_range(lo, hi));
        }
    }

    // Rewrite, node by node, keeping for each old value its float and/or u8 form.
    let mut out = Rewriter {
        nodes: Vec::new(),
        n_in,
        f32_of: vec![None; n_values],
        u8_of: vec![None; n_values],
    };
    for v in 0..n_in {
        out.f32_of[v] = Some(v as ValueId);
    }
    for (k, node) in graph.nodes.iter().enumerate() {
        if skip[k] {
            continue;
        }
        let v_out = result[k];
        // The u8 form of input `i`: its own, or quantized with its calibrated parameters.
        let u8_input = |out: &mut Rewriter, i: ValueId| -> Option<(ValueId, QuantParams)> {
            let i = i as usize;
            if let Some(have) = out.u8_of[i] {
                return Some(have);
            }
            let p = params[i]?;
            Some((out.u8(i, p, &graph.nodes), p))
        };
        match roles[k] {
            Role::Float => {
                let inputs = node
                    .inputs
                    .iter()
                    .map(|&i| out.f32(i as usize, &graph.nodes))
                    .collect();
                let id = out.push(node.name.clone(), node.layer.clone(), inputs);
                out.f32_of[v_out] = Some(id);
            }
            Role::Transparent => match out.u8_of[node.inputs[0] as usize] {
                Some((x, p)) if u8_value[v_out] => {
                    let layer = match &node.layer {
                        Layer::Pad { begin, end, .. } => Layer::Pad {
                            begin: begin.clone(),
                            end: end.clone(),
                            value: f32::from(p.zero_point),
                        },
                        other => other.clone(),
                    };
                    let id = out.push(node.name.clone(), layer, vec![x]);
                    out.u8_of[v_out] = Some((id, p));
                }
                _ => {
                    let x = out.f32(node.inputs[0] as usize, &graph.nodes);
                    let id = out.push(node.name.clone(), node.layer.clone(), vec![x]);
                    out.f32_of[v_out] = Some(id);
                }
            },
            Role::Add | Role::Pool => {
                let ins: Option<Vec<(ValueId, QuantParams)>> =
                    node.inputs.iter().map(|&i| u8_input(&mut out, i)).collect();
                let (Some(ins), Some(po)) = (ins, params[v_out]) else {
                    let inputs = node
                        .inputs
                        .iter()
                        .map(|&i| out.f32(i as usize, &graph.nodes))
                        .collect();
                    let id = out.push(node.name.clone(), node.layer.clone(), inputs);
                    out.f32_of[n_in + k] = Some(id);
                    if let Some(c) = absorbed[k] {
                        let layer = graph.nodes[c].layer.clone();
                        let id = out.push(graph.nodes[c].name.clone(), layer, vec![id]);
                        out.f32_of[v_out] = Some(id);
                    }
                    continue;
                };
                let layer = match &node.layer {
                    Layer::Add => Layer::QAdd {
                        a: ins[0].1,
                        b: ins[1].1,
                        output: po,
                    },
                    Layer::AvgPool2d {
                        kernel,
                        stride,
                        padding,
                        count_include_pad,
                    } => Layer::QAvgPool2d {
                        kernel: *kernel,
                        stride: *stride,
                        padding: *padding,
                        count_include_pad: *count_include_pad,
                        input: ins[0].1,
                        output: po,
                    },
                    _ => Layer::QGlobalAvgPool {
                        input: ins[0].1,
                        output: po,
                    },
                };
                let inputs = ins.iter().map(|(id, _)| *id).collect();
                let mut id = out.push(node.name.clone(), layer, inputs);
                // The calibrated range of an absorbed Relu/Clip output starts at 0 or
                // above, so saturation is the activation; a clamp keeps it exact.
                if let Some(c) = absorbed[k] {
                    id = out.push(
                        graph.nodes[c].name.clone(),
                        clamp_for(&graph.nodes[c].layer, po),
                        vec![id],
                    );
                }
                out.u8_of[v_out] = Some((id, po));
            }
            Role::Compute => {
                let u = node.inputs[0];
                let (input, x) = match static_cal.and_then(|_| u8_input(&mut out, u)) {
                    Some((x, p)) => (QuantInput::Static(p), x),
                    None => (QuantInput::Dynamic, out.f32(u as usize, &graph.nodes)),
                };
                let u8_out = u8_value[v_out] && matches!(input, QuantInput::Static(_));
                let output = match params[v_out] {
                    Some(p) if u8_out => QuantOutput::U8(p),
                    _ => QuantOutput::F32,
                };
                let act = absorbed[k].map(|c| &graph.nodes[c].layer);
                let relu = matches!(act, Some(Layer::Relu));
                let layer = match &node.layer {
                    Layer::Dense { weight, bias } => Layer::QDense {
                        weight: quantize_weight(weight),
                        bias: bias.clone(),
                        input,
                        output,
                        relu,
                    },
                    Layer::Conv2d {
                        weight,
                        bias,
                        stride,
                        padding,
                        dilation,
                        groups,
                    } => Layer::QConv2d {
                        weight: quantize_weight(weight),
                        bias: bias.clone(),
                        stride: *stride,
                        padding: *padding,
                        dilation: *dilation,
                        groups: *groups,
                        input,
                        output,
                        relu,
                    },
                    other => other.clone(),
                };
                let mut id = out.push(node.name.clone(), layer, vec![x]);
                match (output, act) {
                    (QuantOutput::U8(p), Some(a @ Layer::Clip { .. })) => {
                        id = out.push(format!("{}/clamp", node.name), clamp_for(a, p), vec![id]);
                        out.u8_of[v_out] = Some((id, p));
                    }
                    (QuantOutput::U8(p), _) => out.u8_of[v_out] = Some((id, p)),
                    (QuantOutput::F32, Some(a @ Layer::Clip { .. })) => {
                        let id = out.push(format!("{}/clip", node.name), a.clone(), vec![id]);
                        out.f32_of[v_out] = Some(id);
                    }
                    (QuantOutput::F32, _) => out.f32_of[v_out] = Some(id),
                }
            }
        }
    }
    let outputs = graph
        .outputs
        .iter()
        .map(|o| Output {
            name: o.name.clone(),
            value: out.f32(o.value as usize, &graph.nodes),
        })
        .collect();
    let quantized = Graph {
        inputs: graph.inputs.clone(),
        nodes: out.nodes,
        outputs,
    };
    quantized.infer_shapes()?;

    let mut metadata = model.metadata.clone();
    let props = &mut metadata.properties;
    let (mode, calibration) = match options.mode {
        QuantizeMode::Static {
            calibration: Calibration::MinMax,
        } => ("static", "minmax".to_string()),
        QuantizeMode::Static {
            calibration: Calibration::Percentile(p),
        } => ("static", format!("percentile:{p}")),
        QuantizeMode::Dynamic => ("dynamic", "none".to_string()),
    };
    props.insert("quantize.mode".into(), mode.into());
    props.insert("quantize.calibration".into(), calibration);
    props.insert("quantize.calibration_rows".into(), rows_used.to_string());
    props.insert(
        "quantize.weights".into(),
        "int8 symmetric per output channel".into(),
    );
    Ok(Model {
        metadata,
        graph: quantized,
    })
}

/// What the quantizer makes of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Dense or conv2d: int8 weights, u8 (static) or float (dynamic) input.
    Compute,
    /// A residual add of two u8 values (static only).
    Add,
    /// Average pooling of u8 codes (static only).
    Pool,
    /// Moves codes without changing them (max pooling, reshapes, transposes, zero padding).
    Transparent,
    /// Stays float32.
    Float,
}

/// The code clamp of a Relu / Clip on a value quantized with `p`.
fn clamp_for(act: &Layer, p: QuantParams) -> Layer {
    let code = |v: f32| crate::engine::kernels::int8::quantize_one(v, p.scale, p.zero_point);
    match *act {
        Layer::Clip { min, max } => Layer::QClamp {
            min: code(min),
            max: code(max).max(code(min)),
        },
        _ => Layer::QClamp {
            min: p.zero_point,
            max: 255,
        },
    }
}

/// Builds the new node list; old value ids map to new ones lazily, adding a quantize or
/// dequantize node the first time a value is needed in the form it does not have yet.
struct Rewriter {
    nodes: Vec<Node>,
    n_in: usize,
    f32_of: Vec<Option<ValueId>>,
    u8_of: Vec<Option<(ValueId, QuantParams)>>,
}

impl Rewriter {
    fn push(&mut self, name: String, layer: Layer, inputs: Vec<ValueId>) -> ValueId {
        self.nodes.push(Node {
            name,
            layer,
            inputs,
        });
        (self.n_in + self.nodes.len() - 1) as ValueId
    }

    fn name(&self, v: usize, old: &[Node], suffix: &str) -> String {
        let base = if v < self.n_in {
            format!("input{v}")
        } else {
            old[v - self.n_in].name.clone()
        };
        format!("{base}/{suffix}")
    }

    fn f32(&mut self, v: usize, old: &[Node]) -> ValueId {
        if let Some(id) = self.f32_of[v] {
            return id;
        }
        // Every value exists in one form or the other once its producer is rewritten.
        let (src, p) = self.u8_of[v].unwrap_or((
            0,
            QuantParams {
                scale: 1.0,
                zero_point: 0,
            },
        ));
        let name = self.name(v, old, "dequantize");
        let id = self.push(name, Layer::Dequantize(p), vec![src]);
        self.f32_of[v] = Some(id);
        id
    }

    fn u8(&mut self, v: usize, p: QuantParams, old: &[Node]) -> ValueId {
        if let Some((id, _)) = self.u8_of[v] {
            return id;
        }
        let src = self.f32(v, old);
        let name = self.name(v, old, "quantize");
        let id = self.push(name, Layer::Quantize(p), vec![src]);
        self.u8_of[v] = Some((id, p));
        id
    }
}

/// Symmetric int8 per output channel (axis 0): `scale = max|w| / 127`.
fn quantize_weight(w: &Tensor) -> Tensor {
    let values = w.as_f32().unwrap_or(&[]);
    let channels = w.shape.first().copied().unwrap_or(1).max(1) as usize;
    let per = values.len() / channels;
    let mut q = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(channels);
    for row in values.chunks(per.max(1)).take(channels) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if (max / 127.0).is_normal() {
            max / 127.0
        } else {
            1.0
        };
        scales.push(scale);
        q.extend(
            row.iter()
                .map(|v| (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8),
        );
    }
    scales.resize(channels, 1.0);
    Tensor {
        shape: w.shape.clone(),
        data: TensorData::I8 { values: q, scales },
    }
}

/// Runs the float graph on `rows` and returns each tracked value's range.
fn calibrate(
    graph: &Graph,
    tracked: &[usize],
    rows: &[f32],
    sample_len: usize,
    calibration: Calibration,
) -> Result<Vec<(f32, f32)>, QuantizeError> {
    let mut g = graph.clone();
    g.outputs = tracked
        .iter()
        .map(|&v| Output {
            name: format!("v{v}"),
            value: v as ValueId,
        })
        .collect();
    // Inputs are tracked too: an identity output would not do, so read them from `rows`.
    let mut engine = Engine::new(&g, CALIBRATION_BATCH)?;
    let shapes = g.infer_shapes()?;
    let mut minmax = vec![(f32::INFINITY, f32::NEG_INFINITY); tracked.len()];
    let mut seen: Vec<Vec<f32>> = vec![Vec::new(); tracked.len()];
    for chunk in rows.chunks(CALIBRATION_BATCH * sample_len) {
        let batch = chunk.len() / sample_len;
        engine.run(&[chunk], batch)?;
        for (i, &v) in tracked.iter().enumerate() {
            let values = if v < graph.inputs.len() {
                chunk
            } else {
                match (shapes.values[v].0, engine.output_f32(i)) {
                    (DType::F32, Some(values)) => values,
                    _ => &[],
                }
            };
            match calibration {
                Calibration::MinMax => {
                    let (lo, hi) = &mut minmax[i];
                    for &x in values {
                        *lo = lo.min(x);
                        *hi = hi.max(x);
                    }
                }
                Calibration::Percentile(_) => seen[i].extend_from_slice(values),
            }
        }
    }
    Ok(match calibration {
        Calibration::MinMax => minmax
            .into_iter()
            .map(|(lo, hi)| if lo <= hi { (lo, hi) } else { (0.0, 0.0) })
            .collect(),
        Calibration::Percentile(p) => seen
            .into_iter()
            .map(|mut v| {
                if v.is_empty() {
                    return (0.0, 0.0);
                }
                v.sort_unstable_by(f32::total_cmp);
                let at = |q: f32| {
                    let i = ((q / 100.0) as f64 * (v.len() - 1) as f64).round() as usize;
                    v[i.min(v.len() - 1)]
                };
                (at(100.0 - p), at(p))
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> Model {
        let w1: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
        let w2: Vec<f32> = (0..12).map(|i| ((i * 5 % 7) as f32 - 3.0) / 3.0).collect();
        let d1 = Layer::Dense {
            weight: Tensor::f32(vec![6, 4], w1),
            bias: Some(Tensor::f32(vec![6], vec![0.1; 6])),
        };
        let d2 = Layer::Dense {
            weight: Tensor::f32(vec![2, 6], w2),
            bias: None,
        };
        let layers = [
            ("d1", d1),
            ("r1", Layer::Relu),
            ("d2", d2),
            ("s", Layer::Softmax),
        ];
        crate::test_fixtures::chain(4, layers, &[("p", 4)])
    }

    fn rows(n: usize) -> Vec<f32> {
        (0..n * 4)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0)
            .collect()
    }

    fn run(model: &Model, x: &[f32]) -> Vec<f32> {
        let mut e = Engine::new(&model.graph, 1).expect("plans");
        e.run(&[x], x.len() / 4).expect("runs");
        e.output_f32(0).expect("output").to_vec()
    }

    #[test]
    fn static_mlp_chains_u8_and_stays_close_to_float() {
        let model = mlp();
        let opts = QuantizeOptions {
            mode: QuantizeMode::Static {
                calibration: Calibration::MinMax,
            },
        };
        let data = rows(50);
        let q = quantize(&model, &opts, Some(&data)).expect("quantizes");
        let kinds: Vec<_> = q.graph.nodes.iter().map(|n| n.layer.kind()).collect();
        assert_eq!(kinds, ["quantize", "qdense", "qdense", "softmax"]);
        assert!(matches!(
            q.graph.nodes[1].layer,
            Layer::QDense {
                output: QuantOutput::U8(_),
                relu: true,
                ..
            }
        ));
        assert_eq!(q.metadata.properties["quantize.calibration_rows"], "50");
        assert_eq!(q.metadata.properties["quantize.calibration"], "minmax");
        let (f, i) = (run(&model, &data), run(&q, &data));
        for (a, b) in f.iter().zip(&i) {
            assert!((a - b).abs() < 0.03, "{a} vs {b}");
        }
        let bytes = crate::artifact::encode(&q).expect("encodes");
        assert_eq!(crate::artifact::decode(&bytes).expect("decodes").model, q);
    }

    #[test]
    fn percentile_and_dynamic_modes() {
        let model = mlp();
        let data = rows(50);
        let opts = QuantizeOptions {
            mode: QuantizeMode::Static {
                calibration: Calibration::Percentile(99.0),
            },
        };
        let q = quantize(&model, &opts, Some(&data)).expect("quantizes");
        assert_eq!(
            q.metadata.properties["quantize.calibration"],
            "percentile:99"
        );
        let d = quantize(
            &model,
            &QuantizeOptions {
                mode: QuantizeMode::Dynamic,
            },
            None,
        )
        .expect("quantizes");
        let kinds: Vec<_> = d.graph.nodes.iter().map(|n| n.layer.kind()).collect();
        assert_eq!(kinds, ["qdense", "qdense", "softmax"]);
        assert_eq!(d.metadata.properties["quantize.mode"], "dynamic");
        let (f, i) = (run(&model, &data), run(&d, &data));
        for (a, b) in f.iter().zip(&i) {
            assert!((a - b).abs() < 0.03, "{a} vs {b}");
        }
    }

    #[test]
    fn bad_calibration_is_an_error() {
        let model = mlp();
        let stat = |c| QuantizeOptions {
            mode: QuantizeMode::Static { calibration: c },
        };
        assert_eq!(
            quantize(&model, &stat(Calibration::MinMax), None),
            Err(QuantizeError::MissingCalibration)
        );
        assert_eq!(
            quantize(&model, &stat(Calibration::MinMax), Some(&[1.0; 5])),
            Err(QuantizeError::CalibrationRows {
                len: 5,
                sample_len: 4
            })
        );
        assert_eq!(
            quantize(&model, &stat(Calibration::Percentile(20.0)), Some(&rows(2))),
            Err(QuantizeError::Percentile(20.0))
        );
        assert!(matches!(
            quantize(&model, &stat(Calibration::MinMax), Some(&[f32::NAN; 4])),
            Err(QuantizeError::Engine(_))
        ));
    }
}
