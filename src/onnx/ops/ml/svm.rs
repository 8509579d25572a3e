//! SVMClassifier (ai.onnx.ml): libsvm one-vs-one classifiers with linear, polynomial, RBF or
//! sigmoid kernels, optionally with Platt-scaled probabilities, and liblinear's linear mode
//! (no support vectors).
//!
//! Scores, votes, labels and the pairwise-coupling probabilities follow onnxruntime's CPU
//! kernel, including its binary conventions (a positive pairwise score votes for the first
//! class of the pair; a single score is written as `[-score, score]`).

use super::{PostTransform, SecondClass, input_rows, write_scores};
use tract_hir::internal::*;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir;

/// The kernel `k(x, sv)`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kernel {
    Linear,
    Poly { gamma: f32, coef0: f32, degree: f32 },
    Rbf { gamma: f32 },
    Sigmoid { gamma: f32, coef0: f32 },
}

impl Kernel {
    fn eval(&self, x: &[f32], sv: &[f32]) -> f32 {
        let dot = || x.iter().zip(sv).map(|(a, b)| a * b).sum::<f32>();
        match *self {
            Kernel::Linear => dot(),
            Kernel::Poly {
                gamma,
                coef0,
                degree,
            } => {
                let v = gamma * dot() + coef0;
                if degree == 2.0 {
                    v * v
                } else if degree == 3.0 {
                    v * v * v
                } else {
                    v.powf(degree)
                }
            }
            Kernel::Rbf { gamma } => {
                let d2: f32 = x.iter().zip(sv).map(|(a, b)| (a - b) * (a - b)).sum();
                (-gamma * d2).exp()
            }
            Kernel::Sigmoid { gamma, coef0 } => (gamma * dot() + coef0).tanh(),
        }
    }
}

/// How the classifier is stored.
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    /// libsvm: support vectors grouped by class, one-vs-one coefficients
    /// `[classes - 1, vectors]`.
    Svc {
        kernel: Kernel,
        vectors_per_class: Vec<usize>,
        /// `[vectors, features]`, row-major.
        support_vectors: Vec<f32>,
        prob_a: Vec<f32>,
        prob_b: Vec<f32>,
    },
    /// liblinear: coefficients `[classes, features]`, one shared `rho`.
    Linear,
}

/// SVMClassifier as a typed tract op.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SvmClassifier {
    mode: Mode,
    labels: Vec<i64>,
    features: usize,
    coefficients: Vec<f32>,
    rho: Vec<f32>,
    weights_all_positive: bool,
    post_transform: PostTransform,
}

impl Eq for SvmClassifier {}

/// Builds an SVMClassifier (integer class labels).
///
/// # Errors
/// For attribute lengths that do not fit together (named in the message with the node),
/// unknown kernels and string labels.
pub(crate) fn svm_classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let name = &node.name;
    let op = "SVMClassifier";
    let labels: Vec<i64> = match node.get_attr_opt_vec("classlabels_ints")? {
        Some(l) => l,
        None if node
            .get_attr_opt_vec::<&str>("classlabels_strings")?
            .is_some() =>
        {
            bail!(
                "{op} node {name:?}: string class labels are not supported; export with integer labels"
            )
        }
        None => bail!("{op} node {name:?}: classlabels_ints is missing"),
    };
    let classes = labels.len();
    ensure!(
        classes >= 2,
        "{op} node {name:?}: needs at least two class labels"
    );
    let floats = |attr: &str| -> TractResult<Vec<f32>> {
        Ok(node.get_attr_opt_vec(attr)?.unwrap_or_default())
    };
    let coefficients = floats("coefficients")?;
    let rho = floats("rho")?;
    let support_vectors = floats("support_vectors")?;
    let prob_a = floats("prob_a")?;
    let prob_b = floats("prob_b")?;
    let params = floats("kernel_params")?;
    ensure!(
        !coefficients.is_empty(),
        "{op} node {name:?}: coefficients is empty"
    );
    ensure!(
        prob_a.len() == prob_b.len(),
        "{op} node {name:?}: prob_a has {} values and prob_b {}",
        prob_a.len(),
        prob_b.len()
    );
    ensure!(
        params.is_empty() || params.len() == 3,
        "{op} node {name:?}: kernel_params has {} values; expected [gamma, coef0, degree]",
        params.len()
    );
    let (gamma, coef0, degree) = match params[..] {
        [g, c, d] => (g, c, d),
        _ => (0.0, 0.0, 0.0),
    };
    let vectors_per_class: Vec<i64> = node
        .get_attr_opt_vec("vectors_per_class")?
        .unwrap_or_default();
    let vectors_per_class = vectors_per_class
        .iter()
        .map(|&v| usize::try_from(v))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| format_err!("{op} node {name:?}: negative count in vectors_per_class"))?;
    let vectors: usize = vectors_per_class.iter().sum();
    let pairs = classes * (classes - 1) / 2;
    let (mode, features) = if vectors > 0 {
        let kernel = match node
            .get_attr_opt::<&str>("kernel_type")?
            .unwrap_or("LINEAR")
        {
            "LINEAR" => Kernel::Linear,
            "POLY" => Kernel::Poly {
                gamma,
                coef0,
                degree,
            },
            "RBF" => Kernel::Rbf { gamma },
            "SIGMOID" => Kernel::Sigmoid { gamma, coef0 },
            other => bail!("{op} node {name:?}: unknown kernel_type {other:?}"),
        };
        ensure!(
            vectors_per_class.len() == classes,
            "{op} node {name:?}: vectors_per_class has {} entries for {classes} classes",
            vectors_per_class.len()
        );
        ensure!(
            support_vectors.len() % vectors == 0 && !support_vectors.is_empty(),
            "{op} node {name:?}: {} support vector values do not split into {vectors} vectors",
            support_vectors.len()
        );
        ensure!(
            coefficients.len() == (classes - 1) * vectors,
            "{op} node {name:?}: coefficients has {} values; expected (classes - 1) x vectors = {}",
            coefficients.len(),
            (classes - 1) * vectors
        );
        ensure!(
            rho.len() >= pairs,
            "{op} node {name:?}: rho has {} values for {pairs} class pairs",
            rho.len()
        );
        ensure!(
            prob_a.is_empty() || prob_a.len() >= pairs,
            "{op} node {name:?}: prob_a has {} values for {pairs} class pairs",
            prob_a.len()
        );
        let features = support_vectors.len() / vectors;
        let mode = Mode::Svc {
            kernel,
            vectors_per_class,
            support_vectors,
            prob_a,
            prob_b,
        };
        (mode, features)
    } else {
        ensure!(
            coefficients.len() % classes == 0,
            "{op} node {name:?}: {} coefficients do not split into {classes} classes",
            coefficients.len()
        );
        ensure!(!rho.is_empty(), "{op} node {name:?}: rho is empty");
        (Mode::Linear, coefficients.len() / classes)
    };
    let op = SvmClassifier {
        mode,
        labels,
        features,
        weights_all_positive: coefficients.iter().all(|&c| c >= 0.0),
        coefficients,
        rho,
        post_transform: PostTransform::from_node(node)?,
    };
    Ok((expand(op), vec![]))
}

/// libsvm's pairwise coupling: class probabilities from the pairwise ones `r[i * k + j]`.
fn multiclass_probability(k: usize, r: &[f32]) -> Vec<f32> {
    let mut q = vec![0f32; k * k];
    let mut qp = vec![0f32; k];
    let mut p = vec![1.0 / k as f32; k];
    let eps = 0.005 / k as f32;
    for i in 0..k {
        for j in 0..i {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = q[j * k + i];
        }
        for j in i + 1..k {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = -r[j * k + i] * r[i * k + j];
        }
    }
    for _ in 0..100 {
        let mut pqp = 0.0;
        for i in 0..k {
            qp[i] = (0..k).map(|j| q[i * k + j] * p[j]).sum();
            pqp += p[i] * qp[i];
        }
        let max_error = qp.iter().map(|v| (v - pqp).abs()).fold(0f32, f32::max);
        if max_error < eps {
            break;
        }
        for i in 0..k {
            let diff = (-qp[i] + pqp) / q[i * k + i];
            p[i] += diff;
            pqp = (pqp + diff * (diff * q[i * k + i] + 2.0 * qp[i])) / (1.0 + diff) / (1.0 + diff);
            for j in 0..k {
                qp[j] = (qp[j] + diff * q[i * k + j]) / (1.0 + diff);
                p[j] /= 1.0 + diff;
            }
        }
    }
    p
}

impl SvmClassifier {
    fn n_scores(&self) -> usize {
        let classes = self.labels.len();
        match &self.mode {
            Mode::Svc { prob_a, .. } if prob_a.is_empty() => {
                if classes > 2 {
                    classes * (classes - 1) / 2
                } else {
                    2
                }
            }
            _ => classes,
        }
    }

    /// `(label, scores)` for one row.
    fn row(&self, x: &[f32]) -> (i64, Vec<f32>) {
        let classes = self.labels.len();
        let have_proba;
        let mut scores;
        let mut second = SecondClass::None;
        let (maxclass, max_weight) = match &self.mode {
            Mode::Linear => {
                have_proba = false;
                scores = self
                    .coefficients
                    .chunks(self.features)
                    .map(|c| c.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() + self.rho[0])
                    .collect::<Vec<f32>>();
                let mut best = (0, f32::MIN);
                for (k, &s) in scores.iter().enumerate() {
                    if s > best.1 {
                        best = (k, s);
                    }
                }
                best
            }
            Mode::Svc {
                kernel,
                vectors_per_class,
                support_vectors,
                prob_a,
                prob_b,
            } => {
                have_proba = !prob_a.is_empty();
                let vectors = self.coefficients.len() / (classes - 1);
                let kernels: Vec<f32> = support_vectors
                    .chunks(self.features)
                    .map(|sv| kernel.eval(x, sv))
                    .collect();
                let starts: Vec<usize> = vectors_per_class
                    .iter()
                    .scan(0, |acc, &v| {
                        let s = *acc;
                        *acc += v;
                        Some(s)
                    })
                    .collect();
                let mut votes = vec![0usize; classes];
                let mut pair_scores = Vec::with_capacity(classes * (classes - 1) / 2);
                for i in 0..classes - 1 {
                    for j in i + 1..classes {
                        let mut sum = 0f64;
                        let (si, ni) = (starts[i], vectors_per_class[i]);
                        let (sj, nj) = (starts[j], vectors_per_class[j]);
                        let row_j = (j - 1) * vectors;
                        let row_i = i * vectors;
                        let terms = self.coefficients[row_j + si..row_j + si + ni]
                            .iter()
                            .zip(&kernels[si..si + ni])
                            .chain(
                                self.coefficients[row_i + sj..row_i + sj + nj]
                                    .iter()
                                    .zip(&kernels[sj..sj + nj]),
                            );
                        for (c, k) in terms {
                            sum += (c * k) as f64;
                        }
                        sum += self.rho[pair_scores.len()] as f64;
                        pair_scores.push(sum as f32);
                        votes[if sum > 0.0 { i } else { j }] += 1;
                    }
                }
                if have_proba {
                    let mut r = vec![0f32; classes * classes];
                    let mut index = 0;
                    for i in 0..classes - 1 {
                        for j in i + 1..classes {
                            let v = 1.0
                                - super::logistic(
                                    pair_scores[index] * prob_a[index] + prob_b[index],
                                );
                            let v = v.clamp(1e-7, 1.0 - 1e-7);
                            r[i * classes + j] = v;
                            r[j * classes + i] = 1.0 - v;
                            index += 1;
                        }
                    }
                    scores = multiclass_probability(classes, &r);
                } else {
                    scores = pair_scores;
                    if classes == 2 {
                        second = if self.post_transform == PostTransform::None {
                            SecondClass::Negation
                        } else {
                            SecondClass::Complement
                        };
                    }
                }
                let mut best = 0;
                for (k, &v) in votes.iter().enumerate() {
                    if v > votes[best] {
                        best = k;
                    }
                }
                (best, 0.0)
            }
        };
        let label = if classes == 2 {
            let l = &self.labels;
            if have_proba {
                l[maxclass]
            } else if (self.weights_all_positive && max_weight >= 0.5)
                || (max_weight > 0.0 && !self.weights_all_positive)
            {
                l[1]
            } else {
                l[maxclass]
            }
        } else {
            self.labels[maxclass]
        };
        write_scores(&mut scores, self.post_transform, second);
        scores.resize(self.n_scores(), 0.0);
        (label, scores)
    }
}

impl Expansion for SvmClassifier {
    fn name(&self) -> StaticName {
        "SVMClassifier".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(2)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 2)?;
        s.equals(&outputs[0].datum_type, i64::datum_type())?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].datum_type, f32::datum_type())?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[1].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[1], self.n_scores().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), &[inputs[0]])
    }
}

impl Op for SvmClassifier {
    fn name(&self) -> StaticName {
        "SVMClassifier".into()
    }

    op_as_typed_op!();
}

impl EvalOp for SvmClassifier {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let (rows, columns, x) = input_rows("SVMClassifier", &input, self.features)?;
        ensure!(
            columns == self.features,
            "SVMClassifier: input has {columns} features, the model {}",
            self.features
        );
        let x = x.try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        let n = self.n_scores();
        let mut labels = Vec::with_capacity(rows);
        let mut scores = Vec::with_capacity(rows * n);
        for r in 0..rows {
            let (label, s) = self.row(&x[r * columns..(r + 1) * columns]);
            labels.push(label);
            scores.extend(s);
        }
        let scores = tract_ndarray::Array2::from_shape_vec((rows, n), scores)?;
        Ok(tvec!(
            tract_ndarray::Array1::from(labels).into_tvalue(),
            scores.into_tvalue()
        ))
    }
}

impl TypedOp for SvmClassifier {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = inputs[0]
            .shape
            .first()
            .cloned()
            .unwrap_or_else(|| 1.to_dim());
        Ok(tvec!(
            i64::fact([rows.clone()]),
            f32::fact([rows, self.n_scores().to_dim()])
        ))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coupling_of_certain_pairs_is_certain() {
        // r[i][j]: probability of i against j; class 0 beats both others.
        let r = [0.0, 0.999, 0.999, 0.001, 0.0, 0.5, 0.001, 0.5, 0.0];
        let p = multiclass_probability(3, &r);
        assert!(p[0] > 0.99, "{p:?}");
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
}
