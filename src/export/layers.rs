//! Each native layer written as ONNX nodes and initializers.

use super::ExportError;
use super::proto::*;
use crate::graph::{
    DType, Graph, Layer, QuantInput, QuantOutput, QuantParams, SplitMode, Tensor, TensorData,
    TreeAggregate, TreePostTransform, ValueId,
};
use std::borrow::Cow;
use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto, tensor_proto::DataType};

/// Names values and collects nodes and initializers.
pub(super) struct Writer {
    /// ONNX name of every native value.
    pub names: Vec<String>,
    /// The nodes written, in graph order.
    pub nodes: Vec<NodeProto>,
    /// Weights and other constants.
    pub initializers: Vec<TensorProto>,
    /// Whether a node is in the ai.onnx.ml domain (its opset is then imported).
    pub uses_ml: bool,
    /// Native values already produced by a fused node (a tree classifier's label).
    fused: Vec<Option<String>>,
}

impl Writer {
    pub(super) fn new(g: &Graph) -> Writer {
        let n_values = g.inputs.len() + g.nodes.len();
        let mut names: Vec<String> = Vec::with_capacity(n_values);
        let mut taken = std::collections::HashSet::new();
        // Graph outputs keep their names (the first output naming a value wins), inputs keep
        // theirs; other values are named after their node.
        let output_name = |id: usize| {
            g.outputs
                .iter()
                .find(|o| o.value as usize == id)
                .map(|o| o.name.clone())
        };
        for id in 0..n_values {
            let base = if id < g.inputs.len() {
                g.inputs[id].name.clone()
            } else {
                output_name(id).unwrap_or_else(|| {
                    let node = &g.nodes[id - g.inputs.len()];
                    if node.name.is_empty() {
                        format!("v{id}")
                    } else {
                        node.name.clone()
                    }
                })
            };
            let mut name = base.clone();
            let mut k = 1;
            while !taken.insert(name.clone()) {
                name = format!("{base}_{k}");
                k += 1;
            }
            names.push(name);
        }
        Writer {
            names,
            nodes: Vec::new(),
            initializers: Vec::new(),
            uses_ml: false,
            fused: vec![None; n_values],
        }
    }

    fn konst_f32(&mut self, name: String, dims: &[usize], data: &[f32]) -> String {
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            float_data: data.to_vec(),
            ..TensorProto::default()
        });
        name
    }

    fn konst_i64(&mut self, name: String, dims: &[usize], data: &[i64]) -> String {
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Int64 as i32,
            int64_data: data.to_vec(),
            ..TensorProto::default()
        });
        name
    }

    fn tensor(&mut self, node: &str, name: String, t: &Tensor) -> Result<String, ExportError> {
        let data = f32_data(node, t)?;
        let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        Ok(self.konst_f32(name, &dims, &data))
    }

    /// Scalar scale and u8 zero-point initializers for `q`.
    fn quant_params(&mut self, out: &str, q: &QuantParams) -> (String, String) {
        let sc = self.konst_f32(format!("{out}/scale_q"), &[], &[q.scale]);
        let zp = format!("{out}/zero_point");
        self.initializers.push(TensorProto {
            name: zp.clone(),
            data_type: DataType::Uint8 as i32,
            int32_data: vec![i32::from(q.zero_point)],
            ..TensorProto::default()
        });
        (sc, zp)
    }

    /// The float input of a quantized layer in QDQ form: a static u8 input dequantized with
    /// its parameters, or a float input through DynamicQuantizeLinear (per tensor: the
    /// whole batch shares one range, where perch's engine takes each sample's own; equal at
    /// batch 1).
    fn qdq_input(&mut self, nm: &str, out: &str, x: String, input: &QuantInput) -> String {
        let xf = format!("{out}/input_dq");
        match input {
            QuantInput::Static(q) => {
                let (sc, zp) = self.quant_params(&format!("{out}/input"), q);
                self.nodes.push(op(
                    "DequantizeLinear",
                    &format!("{nm}/input_dq"),
                    vec![x, sc, zp],
                    vec![xf.clone()],
                ));
            }
            QuantInput::Dynamic => {
                let names = [
                    format!("{out}/input_q"),
                    format!("{out}/input_scale"),
                    format!("{out}/input_zero_point"),
                ];
                self.nodes.push(op(
                    "DynamicQuantizeLinear",
                    &format!("{nm}/input_q"),
                    vec![x],
                    names.to_vec(),
                ));
                self.nodes.push(op(
                    "DequantizeLinear",
                    &format!("{nm}/input_dq"),
                    names.to_vec(),
                    vec![xf.clone()],
                ));
            }
        }
        xf
    }

    /// The int8 weight as an initializer, dequantized per output channel (axis 0).
    fn qdq_weight(&mut self, nm: &str, out: &str, w: &Tensor) -> Result<String, ExportError> {
        let TensorData::I8 { values, scales } = &w.data else {
            return Err(ExportError::Unsupported {
                node: nm.to_string(),
                reason: "a quantized layer's weight is not int8".into(),
            });
        };
        let wq = format!("{out}/weight_q");
        self.initializers.push(TensorProto {
            name: wq.clone(),
            dims: w.shape.iter().map(|&d| i64::from(d)).collect(),
            data_type: DataType::Int8 as i32,
            int32_data: values.iter().map(|&v| i32::from(v)).collect(),
            ..TensorProto::default()
        });
        let sc = self.konst_f32(format!("{out}/weight_scale"), &[scales.len()], scales);
        let zp = format!("{out}/weight_zero_point");
        self.initializers.push(TensorProto {
            name: zp.clone(),
            dims: vec![scales.len() as i64],
            data_type: DataType::Int8 as i32,
            int32_data: vec![0; scales.len()],
            ..TensorProto::default()
        });
        let wf = format!("{out}/weight_dq");
        let mut n = op(
            "DequantizeLinear",
            &format!("{nm}/weight_dq"),
            vec![wq, sc, zp],
            vec![wf.clone()],
        );
        n.attribute.push(attr_i("axis", 0));
        self.nodes.push(n);
        Ok(wf)
    }

    /// Name of a quantized layer's float result before its activation and requantization.
    fn qdq_output_name(&self, out: &str, output: &QuantOutput, relu: bool) -> String {
        if relu || matches!(output, QuantOutput::U8(_)) {
            format!("{out}/float")
        } else {
            out.to_string()
        }
    }

    /// The fused ReLU and, for a u8 output, the QuantizeLinear that makes `out`.
    fn qdq_output(&mut self, nm: &str, out: &str, y: String, output: &QuantOutput, relu: bool) {
        let (y, last) = if relu {
            let r = match output {
                QuantOutput::U8(_) => format!("{out}/relu"),
                QuantOutput::F32 => out.to_string(),
            };
            self.nodes
                .push(op("Relu", &format!("{nm}/relu"), vec![y], vec![r.clone()]));
            (r, matches!(output, QuantOutput::F32))
        } else {
            (y, matches!(output, QuantOutput::F32))
        };
        if last {
            return;
        }
        if let QuantOutput::U8(q) = output {
            let (sc, zp) = self.quant_params(out, q);
            self.nodes.push(op(
                "QuantizeLinear",
                &format!("{nm}/output_q"),
                vec![y, sc, zp],
                vec![out.to_string()],
            ));
        }
    }

    pub(super) fn node(
        &mut self,
        g: &Graph,
        shapes: &[(DType, Vec<usize>)],
        index: usize,
        node: &crate::graph::Node,
    ) -> Result<(), ExportError> {
        let id = g.inputs.len() + index;
        let out = self.names[id].clone();
        if let Some(src) = self.fused[id].take() {
            // Produced by an earlier fused node under another name.
            if src != out {
                self.nodes
                    .push(op("Identity", &out, vec![src], vec![out.clone()]));
            }
            return Ok(());
        }
        let x = node
            .inputs
            .first()
            .map(|&v| self.names[v as usize].clone())
            .unwrap_or_default();
        let in_rank = node
            .inputs
            .first()
            .map_or(0, |&v| shapes[v as usize].1.len());
        let nm = &node.name;
        let unary = |kind: &str| op(kind, nm, vec![x.clone()], vec![out.clone()]);
        match &node.layer {
            Layer::Quantize(q) => {
                let (sc, zp) = self.quant_params(&out, q);
                self.nodes
                    .push(op("QuantizeLinear", nm, vec![x, sc, zp], vec![out]));
            }
            Layer::Dequantize(q) => {
                let (sc, zp) = self.quant_params(&out, q);
                self.nodes
                    .push(op("DequantizeLinear", nm, vec![x, sc, zp], vec![out]));
            }
            Layer::QDense {
                weight,
                bias,
                input,
                output,
                relu,
            } => {
                let xf = self.qdq_input(nm, &out, x, input);
                let w = self.qdq_weight(nm, &out, weight)?;
                let b = bias
                    .as_ref()
                    .map(|b| self.tensor(nm, format!("{out}/bias"), b))
                    .transpose()?;
                let y = self.qdq_output_name(&out, output, *relu);
                if in_rank == 1 {
                    let mut inputs = vec![xf, w];
                    inputs.extend(b);
                    let mut n = op("Gemm", nm, inputs, vec![y.clone()]);
                    n.attribute.push(attr_i("transB", 1));
                    self.nodes.push(n);
                } else {
                    let wt = format!("{out}/weight_t");
                    let mut t = op(
                        "Transpose",
                        &format!("{nm}/transpose"),
                        vec![w],
                        vec![wt.clone()],
                    );
                    t.attribute.push(attr_i64s("perm", &[1, 0]));
                    self.nodes.push(t);
                    match b {
                        Some(b) => {
                            let mm = format!("{out}/matmul");
                            self.nodes
                                .push(op("MatMul", nm, vec![xf, wt], vec![mm.clone()]));
                            self.nodes.push(op(
                                "Add",
                                &format!("{nm}/bias"),
                                vec![mm, b],
                                vec![y.clone()],
                            ));
                        }
                        None => self
                            .nodes
                            .push(op("MatMul", nm, vec![xf, wt], vec![y.clone()])),
                    }
                }
                self.qdq_output(nm, &out, y, output, *relu);
            }
            Layer::QConv2d {
                weight,
                bias,
                stride,
                padding,
                dilation,
                groups,
                input,
                output,
                relu,
            } => {
                let xf = self.qdq_input(nm, &out, x, input);
                let w = self.qdq_weight(nm, &out, weight)?;
                let mut inputs = vec![xf, w];
                if let Some(b) = bias {
                    inputs.push(self.tensor(nm, format!("{out}/bias"), b)?);
                }
                let y = self.qdq_output_name(&out, output, *relu);
                let mut n = op("Conv", nm, inputs, vec![y.clone()]);
                n.attribute.extend([
                    attr_ints("kernel_shape", &[weight.shape[2], weight.shape[3]]),
                    attr_ints("strides", stride),
                    attr_ints("pads", padding),
                    attr_ints("dilations", dilation),
                    attr_i("group", i64::from(*groups)),
                ]);
                self.nodes.push(n);
                self.qdq_output(nm, &out, y, output, *relu);
            }
            Layer::Standardize { offset, scale } => {
                let o = self.konst_f32(format!("{out}/offset"), &[offset.len()], offset);
                let s = self.konst_f32(format!("{out}/scale"), &[scale.len()], scale);
                let centered = format!("{out}/centered");
                self.nodes
                    .push(op("Sub", nm, vec![x, o], vec![centered.clone()]));
                self.nodes.push(op(
                    "Mul",
                    &format!("{nm}/scale"),
                    vec![centered, s],
                    vec![out],
                ));
            }
            Layer::Dense { weight, bias } => {
                let data = f32_data(nm, weight)?;
                let b = bias
                    .as_ref()
                    .map(|b| self.tensor(nm, format!("{out}/bias"), b))
                    .transpose()?;
                let (o, i) = (weight.shape[0] as usize, weight.shape[1] as usize);
                if in_rank == 1 {
                    let w = self.konst_f32(format!("{out}/weight"), &[o, i], &data);
                    let mut inputs = vec![x, w];
                    inputs.extend(b);
                    let mut n = op("Gemm", nm, inputs, vec![out]);
                    n.attribute.push(attr_i("transB", 1));
                    self.nodes.push(n);
                } else {
                    // MatMul takes `[in, out]`: transpose the stored `[out, in]`.
                    let mut wt = vec![0f32; o * i];
                    for r in 0..o {
                        for c in 0..i {
                            wt[c * o + r] = data[r * i + c];
                        }
                    }
                    let w = self.konst_f32(format!("{out}/weight_t"), &[i, o], &wt);
                    match b {
                        Some(b) => {
                            let mm = format!("{out}/matmul");
                            self.nodes
                                .push(op("MatMul", nm, vec![x, w], vec![mm.clone()]));
                            self.nodes.push(op(
                                "Add",
                                &format!("{nm}/bias"),
                                vec![mm, b],
                                vec![out],
                            ));
                        }
                        None => self.nodes.push(op("MatMul", nm, vec![x, w], vec![out])),
                    }
                }
            }
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
                dilation,
                groups,
            } => {
                let w = self.tensor(nm, format!("{out}/weight"), weight)?;
                let mut inputs = vec![x, w];
                if let Some(b) = bias {
                    inputs.push(self.tensor(nm, format!("{out}/bias"), b)?);
                }
                let mut n = op("Conv", nm, inputs, vec![out]);
                n.attribute.extend([
                    attr_ints("kernel_shape", &[weight.shape[2], weight.shape[3]]),
                    attr_ints("strides", stride),
                    attr_ints("pads", padding),
                    attr_ints("dilations", dilation),
                    attr_i("group", i64::from(*groups)),
                ]);
                self.nodes.push(n);
            }
            Layer::MaxPool2d {
                kernel,
                stride,
                padding,
            } => {
                let mut n = unary("MaxPool");
                n.attribute.extend([
                    attr_ints("kernel_shape", kernel),
                    attr_ints("strides", stride),
                    attr_ints("pads", padding),
                ]);
                self.nodes.push(n);
            }
            Layer::AvgPool2d {
                kernel,
                stride,
                padding,
                count_include_pad,
            } => {
                let mut n = unary("AveragePool");
                n.attribute.extend([
                    attr_ints("kernel_shape", kernel),
                    attr_ints("strides", stride),
                    attr_ints("pads", padding),
                    attr_i("count_include_pad", i64::from(*count_include_pad)),
                ]);
                self.nodes.push(n);
            }
            Layer::GlobalAvgPool => self.nodes.push(unary("GlobalAveragePool")),
            Layer::Flatten => {
                let mut n = unary("Flatten");
                n.attribute.push(attr_i("axis", 1));
                self.nodes.push(n);
            }
            Layer::Reshape { shape } => {
                // 0 keeps the batch axis.
                let dims: Vec<i64> = std::iter::once(0)
                    .chain(shape.iter().map(|&d| i64::from(d)))
                    .collect();
                let s = self.konst_i64(format!("{out}/shape"), &[dims.len()], &dims);
                self.nodes.push(op("Reshape", nm, vec![x, s], vec![out]));
            }
            Layer::Relu => self.nodes.push(unary("Relu")),
            Layer::LeakyRelu { alpha } => {
                let mut n = unary("LeakyRelu");
                n.attribute.push(attr_f("alpha", *alpha));
                self.nodes.push(n);
            }
            Layer::Sigmoid => self.nodes.push(unary("Sigmoid")),
            Layer::Tanh => self.nodes.push(unary("Tanh")),
            Layer::Softmax => {
                let mut n = unary("Softmax");
                n.attribute.push(attr_i("axis", -1));
                self.nodes.push(n);
            }
            Layer::ArgMax { labels } => {
                let idx = if labels.is_some() {
                    format!("{out}/index")
                } else {
                    out.clone()
                };
                let mut n = op("ArgMax", nm, vec![x], vec![idx.clone()]);
                n.attribute
                    .extend([attr_i("axis", -1), attr_i("keepdims", 0)]);
                self.nodes.push(n);
                if let Some(labels) = labels {
                    let l = self.konst_i64(format!("{out}/labels"), &[labels.len()], labels);
                    let mut n = op("Gather", &format!("{nm}/labels"), vec![l, idx], vec![out]);
                    n.attribute.push(attr_i("axis", 0));
                    self.nodes.push(n);
                }
            }
            Layer::TreeEnsemble {
                trees,
                n_outputs,
                aggregate,
                base_values,
                post_transform,
            } => {
                self.uses_ml = true;
                let n_out = *n_outputs as usize;
                // A classifier when the scores feed exactly one argmax (with 3+ classes).
                let argmax = g
                    .nodes
                    .iter()
                    .enumerate()
                    .find_map(|(j, n)| match &n.layer {
                        Layer::ArgMax { labels } if n.inputs == [id as ValueId] => {
                            Some((g.inputs.len() + j, labels.clone()))
                        }
                        _ => None,
                    });
                let classifier = argmax.filter(|_| n_out >= 3);
                let mut n = NodeProto {
                    name: nm.clone(),
                    domain: "ai.onnx.ml".into(),
                    ..NodeProto::default()
                };
                n.input.push(x);
                let mut attrs = tree_nodes(trees);
                let post = match post_transform {
                    TreePostTransform::None => "NONE",
                    TreePostTransform::Softmax => "SOFTMAX",
                    TreePostTransform::Logistic => "LOGISTIC",
                };
                attrs.push(attr_s("post_transform", post));
                if !base_values.is_empty() {
                    attrs.push(attr_floats("base_values", base_values));
                }
                let (ids, weights) = tree_targets(trees, n_out);
                match classifier {
                    Some((label_id, labels)) => {
                        // The classifier only sums: an average divides every weight instead.
                        let k = match aggregate {
                            TreeAggregate::Sum => 1.0,
                            TreeAggregate::Average => 1.0 / trees.len().max(1) as f32,
                        };
                        // onnxruntime's argmax skips classes no leaf votes for, so zero votes
                        // may only be dropped when no score can be negative.
                        let nonneg = weights.iter().all(|&w| w >= 0.0)
                            && base_values.iter().all(|&b| b >= 0.0);
                        let keep: Vec<usize> = (0..weights.len())
                            .filter(|&i| !nonneg || weights[i] != 0.0)
                            .collect();
                        let pick = |v: &[i64]| keep.iter().map(|&i| v[i]).collect::<Vec<_>>();
                        attrs.push(attr_i64s("class_treeids", &pick(&ids.0)));
                        attrs.push(attr_i64s("class_nodeids", &pick(&ids.1)));
                        attrs.push(attr_i64s("class_ids", &pick(&ids.2)));
                        attrs.push(attr_floats(
                            "class_weights",
                            &keep.iter().map(|&i| weights[i] * k).collect::<Vec<_>>(),
                        ));
                        let labels: Vec<i64> =
                            labels.unwrap_or_else(|| (0..n_out as i64).collect());
                        attrs.push(attr_i64s("classlabels_int64s", &labels));
                        n.op_type = "TreeEnsembleClassifier".into();
                        let label_name = self.names[label_id].clone();
                        n.output = vec![label_name.clone(), out];
                        self.fused[label_id] = Some(label_name);
                    }
                    None => {
                        attrs.push(attr_i64s("target_treeids", &ids.0));
                        attrs.push(attr_i64s("target_nodeids", &ids.1));
                        attrs.push(attr_i64s("target_ids", &ids.2));
                        attrs.push(attr_floats("target_weights", &weights));
                        attrs.push(attr_i("n_targets", n_out as i64));
                        let agg = match aggregate {
                            TreeAggregate::Sum => "SUM",
                            TreeAggregate::Average => "AVERAGE",
                        };
                        attrs.push(attr_s("aggregate_function", agg));
                        n.op_type = "TreeEnsembleRegressor".into();
                        n.output = vec![out];
                    }
                }
                n.attribute = attrs;
                self.nodes.push(n);
            }
            // Int8 pools, adds and clamps in QDQ form: dequantize, the float op, quantize.
            Layer::QAvgPool2d { .. }
            | Layer::QGlobalAvgPool { .. }
            | Layer::QAdd { .. }
            | Layer::QClamp { .. } => {
                let (pin, pout) = match &node.layer {
                    Layer::QAvgPool2d { input, output, .. }
                    | Layer::QGlobalAvgPool { input, output }
                    | Layer::QAdd {
                        a: input, output, ..
                    } => (*input, *output),
                    _ => {
                        // A clamp of codes: the codes' own parameters do not matter, any
                        // exact ones will do.
                        let unit = QuantParams {
                            scale: 1.0,
                            zero_point: 0,
                        };
                        (unit, unit)
                    }
                };
                let mut floats = Vec::new();
                for (i, &v) in node.inputs.iter().enumerate() {
                    let p = match (&node.layer, i) {
                        (Layer::QAdd { b, .. }, 1) => *b,
                        _ => pin,
                    };
                    let xf = format!("{out}/in{i}_dq");
                    let (sc, zp) = self.quant_params(&format!("{out}/in{i}"), &p);
                    self.nodes.push(op(
                        "DequantizeLinear",
                        &format!("{nm}/in{i}_dq"),
                        vec![self.names[v as usize].clone(), sc, zp],
                        vec![xf.clone()],
                    ));
                    floats.push(xf);
                }
                let yf = format!("{out}/float");
                let mut n = match &node.layer {
                    Layer::QAvgPool2d {
                        kernel,
                        stride,
                        padding,
                        count_include_pad,
                        ..
                    } => {
                        let mut n = op("AveragePool", nm, floats, vec![yf.clone()]);
                        n.attribute.extend([
                            attr_ints("kernel_shape", kernel),
                            attr_ints("strides", stride),
                            attr_ints("pads", padding),
                            attr_i("count_include_pad", i64::from(*count_include_pad)),
                        ]);
                        n
                    }
                    Layer::QGlobalAvgPool { .. } => {
                        op("GlobalAveragePool", nm, floats, vec![yf.clone()])
                    }
                    Layer::QAdd { .. } => op("Add", nm, floats, vec![yf.clone()]),
                    _ => {
                        let Layer::QClamp { min, max } = node.layer else {
                            unreachable!("matched above")
                        };
                        let lo = self.konst_f32(format!("{out}/min"), &[], &[f32::from(min)]);
                        let hi = self.konst_f32(format!("{out}/max"), &[], &[f32::from(max)]);
                        let mut inputs = floats;
                        inputs.extend([lo, hi]);
                        op("Clip", nm, inputs, vec![yf.clone()])
                    }
                };
                n.name = nm.to_string();
                self.nodes.push(n);
                let (sc, zp) = self.quant_params(&out, &pout);
                self.nodes.push(op(
                    "QuantizeLinear",
                    &format!("{nm}/quantize"),
                    vec![yf, sc, zp],
                    vec![out],
                ));
            }
            other => {
                return Err(ExportError::Unsupported {
                    node: nm.to_string(),
                    reason: format!("{} layers have no ONNX export yet", other.kind()),
                });
            }
        }
        Ok(())
    }
}

/// The `nodes_*` attributes of a tree ensemble.
fn tree_nodes(trees: &[crate::graph::Tree]) -> Vec<AttributeProto> {
    let total: usize = trees.iter().map(|t| t.len()).sum();
    let mut tree_ids = Vec::with_capacity(total);
    let mut node_ids = Vec::with_capacity(total);
    let mut features = Vec::with_capacity(total);
    let mut values = Vec::with_capacity(total);
    let mut modes: Vec<&str> = Vec::with_capacity(total);
    let mut trues = Vec::with_capacity(total);
    let mut falses = Vec::with_capacity(total);
    for (t, tree) in trees.iter().enumerate() {
        let branch = match tree.mode {
            SplitMode::Leq => "BRANCH_LEQ",
            SplitMode::Lt => "BRANCH_LT",
        };
        for i in 0..tree.len() {
            tree_ids.push(t as i64);
            node_ids.push(i as i64);
            let leaf = tree.left[i] == 0;
            features.push(if leaf { 0 } else { i64::from(tree.feature[i]) });
            values.push(if leaf { 0.0 } else { tree.threshold[i] });
            modes.push(if leaf { "LEAF" } else { branch });
            trues.push(i64::from(tree.left[i]));
            falses.push(if leaf { 0 } else { i64::from(tree.right[i]) });
        }
    }
    vec![
        attr_i64s("nodes_treeids", &tree_ids),
        attr_i64s("nodes_nodeids", &node_ids),
        attr_i64s("nodes_featureids", &features),
        attr_floats("nodes_values", &values),
        attr_strings("nodes_modes", &modes),
        attr_i64s("nodes_truenodeids", &trues),
        attr_i64s("nodes_falsenodeids", &falses),
    ]
}

/// Per leaf value: (tree ids, node ids, output ids), and the values.
type TargetIds = (Vec<i64>, Vec<i64>, Vec<i64>);

fn tree_targets(trees: &[crate::graph::Tree], n_out: usize) -> (TargetIds, Vec<f32>) {
    let mut ids: TargetIds = (Vec::new(), Vec::new(), Vec::new());
    let mut weights = Vec::new();
    for (t, tree) in trees.iter().enumerate() {
        let mut leaf = 0usize;
        for i in 0..tree.len() {
            if tree.left[i] != 0 {
                continue;
            }
            for j in 0..n_out {
                ids.0.push(t as i64);
                ids.1.push(i as i64);
                ids.2.push(j as i64);
                weights.push(
                    tree.leaf_values
                        .get(leaf * n_out + j)
                        .copied()
                        .unwrap_or(0.0),
                );
            }
            leaf += 1;
        }
    }
    (ids, weights)
}

/// The tensor's elements as dense f32 (sparse weights are written out densely: ONNX
/// initializers here are dense).
fn f32_data<'a>(node: &str, t: &'a Tensor) -> Result<Cow<'a, [f32]>, ExportError> {
    match t.as_f32() {
        Some(v) => Ok(Cow::Borrowed(v)),
        None => t
            .to_f32_vec()
            .map(Cow::Owned)
            .ok_or_else(|| ExportError::Unsupported {
                node: node.to_string(),
                reason: "only f32 tensors (dense or CSR) export to ONNX".into(),
            }),
    }
}
