//! The ai.onnx.ml models and the ops around them: Scaler, LinearRegressor,
//! LinearClassifier, tree ensembles (`trees.rs`), Normalizer after a softmax, ArgMax and the
//! class-label lookups (ArrayFeatureExtractor, Gather) on it, Cast.

use super::{ConvertError, Converter, attr_floats, attr_i, attr_ints, attr_s};
use crate::graph::{Layer, Node, Tensor, ValueId};
use tract_onnx::pb::{self, NodeProto};

impl Converter {
    pub(super) fn convert_classic(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        match node.op_type.as_str() {
            "Cast" => {
                let (id, int) = self.value(node, 0)?;
                let to = attr_i(node, "to", 0);
                let float = to == pb::tensor_proto::DataType::Float as i32 as i64;
                let i64_ = to == pb::tensor_proto::DataType::Int64 as i32 as i64;
                if (float && !int) || (i64_ && int) {
                    self.bind(node, 0, id, int);
                } else {
                    return Err(Self::unsupported(
                        node,
                        format!(
                            "cast to type {to} of a {} value",
                            if int { "int64" } else { "float" }
                        ),
                    ));
                }
            }
            "ArgMax" => {
                let (x, _) = self.value(node, 0)?;
                let rank = self.shapes[x as usize].1.len() + 1;
                let axis = attr_i(node, "axis", 0);
                if !(axis == -1 || axis == rank as i64 - 1)
                    || attr_i(node, "select_last_index", 0) != 0
                {
                    return Err(Self::unsupported(
                        node,
                        format!(
                            "argmax over axis {axis}; only the last axis (first index on ties) is native"
                        ),
                    ));
                }
                let id = self.push(node, Layer::ArgMax { labels: None }, x)?;
                self.bind(node, 0, id, true);
            }
            // skl2onnx looks class labels up with ArrayFeatureExtractor, perch's exporter
            // with Gather (axis 0): both index a constant label list by the argmax.
            "ArrayFeatureExtractor" | "Gather" => {
                if node.op_type == "Gather" && attr_i(node, "axis", 0) != 0 {
                    return Err(Self::unsupported(
                        node,
                        "only a gather on axis 0 (a class-label lookup) is native",
                    ));
                }
                let t = self.konst(node, 0)?;
                if node.op_type == "Gather" && t.shape.len() != 1 {
                    return Err(Self::unsupported(
                        node,
                        "only a gather from a 1-D label list is native",
                    ));
                }
                let classes: Vec<i64> = t
                    .ints()
                    .filter(|_| t.kind != super::consts::ElemKind::Float)
                    .ok_or_else(|| {
                        Self::unsupported(node, "only integer class labels are native")
                    })?;
                let (id, int) = self.value(node, 1)?;
                let name = node.input[1].clone();
                let single = self.single_use(&name);
                match self.producer(id) {
                    Some(Node {
                        layer:
                            Layer::ArgMax {
                                labels: labels @ None,
                            },
                        ..
                    }) if int && single => {
                        *labels = Some(classes.clone());
                    }
                    _ => {
                        return Err(Self::unsupported(
                            node,
                            "only a class-label lookup on an argmax is native",
                        ));
                    }
                }
                self.labels = Some(classes);
                self.bind(node, 0, id, true);
            }
            "Scaler" => {
                let (x, _) = self.value(node, 0)?;
                let n = self.last_axis(x);
                let widen = |v: Option<Vec<f32>>, d: f32| -> Result<Vec<f32>, ConvertError> {
                    match v {
                        None => Ok(vec![d; n]),
                        Some(v) if v.len() == 1 => Ok(vec![v[0]; n]),
                        Some(v) if v.len() == n => Ok(v),
                        Some(v) => Err(Self::unsupported(
                            node,
                            format!("{} values for {n} features", v.len()),
                        )),
                    }
                };
                let offset = widen(attr_floats(node, "offset"), 0.0)?;
                let scale = widen(attr_floats(node, "scale"), 1.0)?;
                let id = self.push(node, Layer::Standardize { offset, scale }, x)?;
                self.bind(node, 0, id, false);
            }
            "LinearRegressor" => {
                let (x, _) = self.value(node, 0)?;
                if attr_s(node, "post_transform").is_some_and(|p| p != "NONE") {
                    return Err(Self::unsupported(node, "post_transform other than NONE"));
                }
                let targets = attr_i(node, "targets", 1).max(1) as usize;
                let id = self.linear_dense(node, x, targets, "targets")?;
                self.bind(node, 0, id, false);
            }
            "LinearClassifier" => self.linear_classifier(node)?,
            "TreeEnsembleClassifier" | "TreeEnsembleRegressor" => self.tree_ensemble(node)?,
            "Normalizer" => {
                let (x, _) = self.value(node, 0)?;
                let norm = attr_s(node, "norm").unwrap_or_else(|| "MAX".into());
                let is_prob = matches!(
                    self.producer(x),
                    Some(Node {
                        layer: Layer::Softmax,
                        ..
                    })
                );
                if norm == "L1" && is_prob {
                    // L1-normalizing a softmax output is the identity.
                    self.bind(node, 0, x, false);
                } else {
                    return Err(Self::unsupported(
                        node,
                        format!("{norm} normalization is only native after a softmax (L1)"),
                    ));
                }
            }
            _ => return Err(Self::unsupported(node, "no native equivalent")),
        }
        Ok(())
    }

    /// A dense layer from an ai.onnx.ml linear model's `coefficients` (`rows × features`)
    /// and `intercepts` (`rows`).
    fn linear_dense(
        &mut self,
        node: &NodeProto,
        x: ValueId,
        rows: usize,
        what: &str,
    ) -> Result<ValueId, ConvertError> {
        let n = self.last_axis(x);
        let coef = attr_floats(node, "coefficients").unwrap_or_default();
        if coef.len() != rows * n {
            return Err(Self::unsupported(
                node,
                format!(
                    "{} coefficients for {rows} {what} × {n} features",
                    coef.len()
                ),
            ));
        }
        let bias = attr_floats(node, "intercepts").unwrap_or_else(|| vec![0.0; rows]);
        if bias.len() != rows {
            return Err(Self::unsupported(
                node,
                format!("{} intercepts for {rows} {what}", bias.len()),
            ));
        }
        let layer = Layer::Dense {
            weight: Tensor::f32(vec![rows as u32, n as u32], coef),
            bias: Some(Tensor::f32(vec![rows as u32], bias)),
        };
        self.push(node, layer, x)
    }

    fn linear_classifier(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (x, _) = self.value(node, 0)?;
        let labels = attr_ints(node, "classlabels_ints")
            .filter(|l| !l.is_empty())
            .ok_or_else(|| {
                Self::unsupported(
                    node,
                    "only integer class labels (classlabels_ints) are native",
                )
            })?;
        let classes = labels.len();
        let scores = self.linear_dense(node, x, classes, "classes")?;
        let post = attr_s(node, "post_transform").unwrap_or_else(|| "NONE".into());
        let out = match post.as_str() {
            "NONE" => scores,
            "SOFTMAX" => self.push(node, Layer::Softmax, scores)?,
            "LOGISTIC" => self.push(node, Layer::Sigmoid, scores)?,
            other => return Err(Self::unsupported(node, format!("post_transform {other}"))),
        };
        let label = self.push(
            node,
            Layer::ArgMax {
                labels: Some(labels.clone()),
            },
            out,
        )?;
        self.labels = Some(labels);
        self.bind(node, 0, label, true);
        self.bind(node, 1, out, false);
        Ok(())
    }
}
