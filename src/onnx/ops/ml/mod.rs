//! `ai.onnx.ml` ops: Scaler, ZipMap, SVMClassifier, TreeEnsembleRegressor and
//! TreeEnsembleClassifier, and an ArrayFeatureExtractor that replaces tract's.
//!
//! Scaler and ZipMap are expansions into tract core ops. The SVM and the tree ensembles are
//! custom ops evaluated row by row; their score post-processing ([`PostTransform`],
//! [`write_scores`]) follows onnxruntime's CPU kernels, which the models' reference outputs
//! come from. TreeEnsembleClassifier replaces tract's own builder, which rejects gradient
//! boosting models (one `base_values` entry for two classes).

use tract_hir::internal::*;
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir;

pub(crate) mod svm;
pub(crate) mod tree;

/// Registers the `ai.onnx.ml` ops of this module.
pub(crate) fn register_all_ops(reg: &mut OnnxOpRegister) {
    reg.insert("Scaler", scaler);
    reg.insert("ZipMap", zip_map);
    reg.insert("ArrayFeatureExtractor", array_feature_extractor);
    reg.insert("SVMClassifier", svm::svm_classifier);
    reg.insert("TreeEnsembleRegressor", tree::tree_ensemble_regressor);
    reg.insert("TreeEnsembleClassifier", tree::tree_ensemble_classifier);
}

/// `Scaler`: `y = (x - offset) * scale`, per column or with one value for all columns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

/// Builds a [`Scaler`] from its node.
///
/// # Errors
/// When `offset` or `scale` is missing, empty, or their lengths differ (other than one of
/// them having a single value).
pub(crate) fn scaler(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let offset: Vec<f32> = node.get_attr_opt_vec("offset")?.unwrap_or_default();
    let scale: Vec<f32> = node.get_attr_opt_vec("scale")?.unwrap_or_default();
    if offset.is_empty() || scale.is_empty() {
        bail!(
            "Scaler node {:?}: attributes offset ({} values) and scale ({} values) must both be given",
            node.name,
            offset.len(),
            scale.len()
        );
    }
    if offset.len() != scale.len() && offset.len() != 1 && scale.len() != 1 {
        bail!(
            "Scaler node {:?}: offset has {} values and scale {}; each needs one value per column or a single value",
            node.name,
            offset.len(),
            scale.len()
        );
    }
    Ok((expand(Scaler { offset, scale }), vec![]))
}

impl Expansion for Scaler {
    fn name(&self) -> StaticName {
        "Scaler".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        use tract_hir::tract_core::ops::change_axes::wire_with_rank_broadcast;
        use tract_hir::tract_core::ops::math::{mul, sub};
        let fact = model.outlet_fact(inputs[0])?.clone();
        let columns = fact.shape.last().and_then(|d| d.to_usize().ok());
        for (what, len) in [("offset", self.offset.len()), ("scale", self.scale.len())] {
            if let Some(columns) = columns {
                ensure!(
                    len == 1 || len == columns,
                    "Scaler {prefix:?}: {what} has {len} values for an input of {columns} columns"
                );
            }
        }
        let mut x = inputs[0];
        if fact.datum_type != f32::datum_type() {
            x = model.wire_node(
                format!("{prefix}.to_f32"),
                tract_hir::tract_core::ops::cast::cast(f32::datum_type()),
                &[x],
            )?[0];
        }
        let offset = model.add_const(format!("{prefix}.offset"), tensor1(&self.offset))?;
        let scale = model.add_const(format!("{prefix}.scale"), tensor1(&self.scale))?;
        let centered =
            wire_with_rank_broadcast(format!("{prefix}.sub"), model, sub(), &[x, offset])?[0];
        wire_with_rank_broadcast(prefix, model, mul(), &[centered, scale])
    }
}

impl Eq for Scaler {}

/// `ZipMap`: perch hands back its tensor input (one column per class) instead of a
/// sequence of maps, which tract has no type for. The loader notes this for the user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ZipMap;

/// Builds a [`ZipMap`].
///
/// # Errors
/// Never; the signature is tract's op builder's.
pub(crate) fn zip_map(
    _ctx: &ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(ZipMap), vec![]))
}

impl Expansion for ZipMap {
    fn name(&self) -> StaticName {
        "ZipMap".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(
            prefix,
            tract_hir::tract_core::ops::identity::Identity,
            &[inputs[0]],
        )
    }
}

/// `ArrayFeatureExtractor` with onnxruntime's shapes: `x[..., indices]` with the indices
/// flattened, so a scalar index keeps the last axis (`[N, C]` → `[N, 1]`; tract's own
/// builder drops it, which breaks skl2onnx's one-vs-rest SVM graphs) and a rank 1 input
/// gives `[1, k]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ArrayFeatureExtractor;

/// Builds an [`ArrayFeatureExtractor`].
///
/// # Errors
/// Never; the signature is tract's op builder's.
pub(crate) fn array_feature_extractor(
    _ctx: &ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(ArrayFeatureExtractor), vec![]))
}

impl Expansion for ArrayFeatureExtractor {
    fn name(&self) -> StaticName {
        "ArrayFeatureExtractor".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.given(&inputs[0].rank, move |s, rank| {
            s.equals(&outputs[0].rank, rank.max(2))?;
            Ok(())
        })?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        use tract_hir::tract_core::ops::array::Gather;
        use tract_hir::tract_core::ops::change_axes::AxisOp;
        let mut x = inputs[0];
        if model.outlet_fact(x)?.rank() == 1 {
            x = model.wire_node(format!("{prefix}.add_row_axis"), AxisOp::Add(0), &[x])?[0];
        }
        let rank = model.outlet_fact(x)?.rank();
        let mut indices = inputs[1];
        let fact = model.outlet_fact(indices)?.clone();
        match fact.rank() {
            0 => {
                indices =
                    model.wire_node(format!("{prefix}.indices"), AxisOp::Add(0), &[indices])?[0]
            }
            1 => {}
            _ => {
                let len = fact.shape.volume();
                let from = fact.shape.to_tvec();
                indices = model.wire_node(
                    format!("{prefix}.indices"),
                    AxisOp::Reshape(0, from, tvec![len]),
                    &[indices],
                )?[0];
            }
        }
        model.wire_node(prefix, Gather::new(rank - 1), &[x, indices])
    }
}

/// The score post-processing of the ML classifiers and regressors (`post_transform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PostTransform {
    /// Scores as computed.
    None,
    /// Softmax over the scores of a row.
    Softmax,
    /// Logistic function on each score.
    Logistic,
    /// Softmax that leaves zero scores out of the sum.
    SoftmaxZero,
    /// The probit (inverse normal CDF) of each score.
    Probit,
}

impl PostTransform {
    /// Parses the `post_transform` attribute of `node` (default `NONE`).
    ///
    /// # Errors
    /// For values outside the ONNX-ML spec.
    pub(crate) fn from_node(node: &NodeProto) -> TractResult<PostTransform> {
        let s: Option<&str> = node.get_attr_opt("post_transform")?;
        Ok(match s.unwrap_or("NONE") {
            "NONE" => PostTransform::None,
            "SOFTMAX" => PostTransform::Softmax,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            other => bail!(
                "{} node {:?}: unknown post_transform {other:?} (expected NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO or PROBIT)",
                node.op_type,
                node.name
            ),
        })
    }
}

/// How a single binary score becomes two columns (onnxruntime's `add_second_class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecondClass {
    /// Keep the single score.
    None,
    /// Positive weights: the score is a probability, the other column is `1 - score`.
    Complement,
    /// Mixed-sign weights: the score is a margin, the other column its negation (or both go
    /// through the logistic function under `LOGISTIC`).
    Negation,
}

/// `1 / (1 + exp(-x))`, computed as onnxruntime does for either sign.
pub(crate) fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sgn * v3.sqrt()
}

fn probit(x: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * x - 1.0)
}

/// Applies `transform` to one row of scores in place, as onnxruntime's `write_scores`:
/// two or more scores are transformed together; a single score is expanded to two columns as
/// `second` says (only PROBIT transforms a single score).
pub(crate) fn write_scores(scores: &mut Vec<f32>, transform: PostTransform, second: SecondClass) {
    if scores.len() >= 2 {
        match transform {
            PostTransform::None => {}
            PostTransform::Logistic => scores.iter_mut().for_each(|s| *s = logistic(*s)),
            PostTransform::Probit => scores.iter_mut().for_each(|s| *s = probit(*s)),
            PostTransform::Softmax => {
                let max = scores.iter().copied().fold(f32::MIN, f32::max);
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                scores.iter_mut().for_each(|s| *s /= sum);
            }
            PostTransform::SoftmaxZero => {
                let max = scores.iter().copied().fold(f32::MIN, f32::max);
                let exp_neg_max = (-max).exp();
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    if s.abs() > 1e-7 {
                        *s = (*s - max).exp();
                        sum += *s;
                    } else {
                        *s *= exp_neg_max;
                    }
                }
                scores.iter_mut().for_each(|s| *s /= sum);
            }
        }
    } else if let [s] = scores[..] {
        if transform == PostTransform::Probit {
            scores[0] = probit(s);
            return;
        }
        match second {
            SecondClass::None => {}
            SecondClass::Complement => *scores = vec![1.0 - s, s],
            SecondClass::Negation if transform == PostTransform::Logistic => {
                *scores = vec![logistic(-s), logistic(s)]
            }
            SecondClass::Negation => *scores = vec![-s, s],
        }
    }
}

/// The rows of a rank 1 or 2 float input as `(rows, columns, values)`.
///
/// # Errors
/// For inputs of rank other than 1 or 2 or with fewer than `min_columns` columns.
pub(crate) fn input_rows(
    op: &str,
    input: &TValue,
    min_columns: usize,
) -> TractResult<(usize, usize, Tensor)> {
    let x = input.cast_to::<f32>()?.into_owned();
    let (rows, columns) = match *x.shape() {
        [c] => (1, c),
        [n, c] => (n, c),
        ref other => bail!("{op}: input of shape {other:?}; expected [rows, features]"),
    };
    ensure!(
        columns >= min_columns,
        "{op}: input has {columns} features, the model reads feature {}",
        min_columns.saturating_sub(1)
    );
    Ok((rows, columns, x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_symmetric() {
        assert!((logistic(0.0) - 0.5).abs() < 1e-7);
        assert!((logistic(3.0) + logistic(-3.0) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn single_margin_expands_to_two_columns() {
        let mut s = vec![2.0];
        write_scores(&mut s, PostTransform::None, SecondClass::Negation);
        assert_eq!(s, vec![-2.0, 2.0]);
        let mut s = vec![0.25];
        write_scores(&mut s, PostTransform::None, SecondClass::Complement);
        assert_eq!(s, vec![0.75, 0.25]);
    }
}
