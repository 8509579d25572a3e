//! A stack of dense layers in f64 — the shape every linear model and the MLP share — with
//! its losses, gradients (parameters packed in one flat vector for the optimizers) and its
//! translation into a native [`graph::Model`](crate::graph::Model).

use super::optim::Objective;
use super::scale::Scaler;
use crate::graph::{DType, Graph, Layer, Node, Output, Tensor, TensorSpec};
use ndarray::{Array2, ArrayView2, Axis};
use rand::RngExt;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Activation of an MLP's hidden layers; each becomes the native layer of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    /// `max(x, 0)`, the default.
    #[default]
    Relu,
    /// `tanh(x)`, in `(-1, 1)`.
    Tanh,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
}

impl Activation {
    /// Parses `relu`, `tanh` or `sigmoid` (`logistic`).
    pub fn from_name(name: &str) -> Option<Activation> {
        match name.to_ascii_lowercase().as_str() {
            "relu" => Some(Activation::Relu),
            "tanh" => Some(Activation::Tanh),
            "sigmoid" | "logistic" => Some(Activation::Sigmoid),
            _ => None,
        }
    }

    fn apply(self, v: f64) -> f64 {
        match self {
            Activation::Relu => v.max(0.0),
            Activation::Tanh => v.tanh(),
            Activation::Sigmoid => sigmoid(v),
        }
    }

    /// Derivative expressed through the activation's output `a`.
    fn derivative(self, a: f64) -> f64 {
        match self {
            Activation::Relu => f64::from(u8::from(a > 0.0)),
            Activation::Tanh => 1.0 - a * a,
            Activation::Sigmoid => a * (1.0 - a),
        }
    }

    fn layer(self) -> Layer {
        match self {
            Activation::Relu => Layer::Relu,
            Activation::Tanh => Layer::Tanh,
            Activation::Sigmoid => Layer::Sigmoid,
        }
    }
}

pub(crate) fn sigmoid(v: f64) -> f64 {
    if v >= 0.0 {
        1.0 / (1.0 + (-v).exp())
    } else {
        let e = v.exp();
        e / (1.0 + e)
    }
}

/// What the last layer's outputs mean and which loss trains them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// One output, squared error (`½·mean (ŷ - y)²`).
    Regression,
    /// One logit, binary cross-entropy; class 1's probability is its sigmoid.
    Binary,
    /// `k` logits, softmax cross-entropy.
    Softmax,
    /// Margins (one for two classes, else one per class, one-vs-rest), hinge loss.
    Hinge,
}

/// Targets in the form the loss wants.
pub(crate) enum Labels<'a> {
    Values(&'a [f64]),
    Classes(&'a [usize]),
}

/// Dense layers with a hidden activation between them and a head after the last.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Network {
    /// Layer widths, input first: `[d, h1, …, out]`.
    pub sizes: Vec<usize>,
    pub activation: Activation,
    pub head: Head,
    /// Per layer `W` (`[out, in]`, row-major) then `b`, concatenated.
    pub params: Vec<f64>,
}

impl Network {
    pub fn new(sizes: Vec<usize>, activation: Activation, head: Head) -> Network {
        let n = sizes.windows(2).map(|w| w[1] * (w[0] + 1)).sum();
        Network {
            sizes,
            activation,
            head,
            params: vec![0.0; n],
        }
    }

    /// Glorot-uniform initialization as scikit-learn's MLP does it (weights and biases).
    pub fn init_glorot(&mut self, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let factor = if self.activation == Activation::Sigmoid {
            2.0
        } else {
            6.0
        };
        let mut off = 0;
        for w in self.sizes.windows(2) {
            let bound = (factor / (w[0] + w[1]) as f64).sqrt();
            for p in &mut self.params[off..off + w[1] * (w[0] + 1)] {
                *p = rng.random_range(-bound..bound);
            }
            off += w[1] * (w[0] + 1);
        }
    }

    fn layer_ranges(&self) -> Vec<(usize, usize, usize, usize)> {
        let mut off = 0;
        self.sizes
            .windows(2)
            .map(|w| {
                let r = (off, w[0], w[1], off + w[0] * w[1]);
                off += w[1] * (w[0] + 1);
                r
            })
            .collect()
    }

    /// Activations of every layer for rows `x` with parameters `p`; the last is the raw
    /// output (logits, margins or values) before the head.
    fn forward_all(&self, p: &[f64], x: ArrayView2<'_, f64>) -> Vec<Array2<f64>> {
        let ranges = self.layer_ranges();
        let mut acts: Vec<Array2<f64>> = Vec::with_capacity(ranges.len());
        for (l, &(w_off, din, dout, b_off)) in ranges.iter().enumerate() {
            let input = if l == 0 { x } else { acts[l - 1].view() };
            let w = ArrayView2::from_shape((dout, din), &p[w_off..w_off + din * dout])
                .unwrap_or_else(|_| unreachable!("layer sizes match the parameter vector"));
            let mut z = input.dot(&w.t());
            for mut row in z.rows_mut() {
                for (v, b) in row.iter_mut().zip(&p[b_off..b_off + dout]) {
                    *v += b;
                }
            }
            if l + 1 < ranges.len() {
                z.mapv_inplace(|v| self.activation.apply(v));
            }
            acts.push(z);
        }
        acts
    }

    /// Raw outputs of the last layer.
    pub fn decision(&self, x: ArrayView2<'_, f64>) -> Array2<f64> {
        self.forward_all(&self.params, x).pop().unwrap_or_default()
    }

    /// Class probabilities (softmax of margins for the hinge head), `[n, k]`.
    pub fn probabilities(&self, x: ArrayView2<'_, f64>) -> Array2<f64> {
        let z = self.decision(x);
        match self.head {
            Head::Binary | Head::Hinge if z.ncols() == 1 => {
                let mut out = Array2::zeros((z.nrows(), 2));
                for (i, &v) in z.column(0).iter().enumerate() {
                    let p = if self.head == Head::Binary {
                        sigmoid(v)
                    } else {
                        sigmoid(2.0 * v)
                    };
                    out[[i, 0]] = 1.0 - p;
                    out[[i, 1]] = p;
                }
                out
            }
            _ => softmax_rows(z),
        }
    }

    /// Loss (mean over rows, plus `½·l2·Σw²` over weights) and its gradient.
    fn loss_grad(
        &self,
        p: &[f64],
        x: ArrayView2<'_, f64>,
        y: &Labels<'_>,
        l2: f64,
        grad: Option<&mut [f64]>,
    ) -> f64 {
        let n = x.nrows().max(1) as f64;
        let mut acts = self.forward_all(p, x);
        let Some(mut delta) = acts.pop() else {
            return 0.0;
        };
        let mut loss = 0.0;
        match (self.head, y) {
            (Head::Regression, Labels::Values(y)) => {
                for (d, &t) in delta.column_mut(0).iter_mut().zip(*y) {
                    let e = *d - t;
                    loss += 0.5 * e * e;
                    *d = e / n;
                }
            }
            (Head::Binary, Labels::Classes(y)) => {
                for (d, &t) in delta.column_mut(0).iter_mut().zip(*y) {
                    let z = *d;
                    let t = t as f64;
                    // log(1 + e^z) - t z, computed stably.
                    loss += z.max(0.0) + (-z.abs()).exp().ln_1p() - t * z;
                    *d = (sigmoid(z) - t) / n;
                }
            }
            (Head::Softmax, Labels::Classes(y)) => {
                for (mut row, &t) in delta.rows_mut().into_iter().zip(*y) {
                    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
                    let log_z = max + sum.ln();
                    loss += log_z - row[t];
                    for (c, v) in row.iter_mut().enumerate() {
                        *v = ((*v - log_z).exp() - f64::from(u8::from(c == t))) / n;
                    }
                }
            }
            (Head::Hinge, Labels::Classes(y)) => {
                let binary = delta.ncols() == 1;
                for (mut row, &t) in delta.rows_mut().into_iter().zip(*y) {
                    for (c, v) in row.iter_mut().enumerate() {
                        let sign = if (binary && t == 1) || (!binary && c == t) {
                            1.0
                        } else {
                            -1.0
                        };
                        let margin = 1.0 - sign * *v;
                        if margin > 0.0 {
                            loss += margin;
                            *v = -sign / n;
                        } else {
                            *v = 0.0;
                        }
                    }
                }
            }
            _ => unreachable!("head and label kinds are paired by the model builders"),
        }
        loss /= n;
        let ranges = self.layer_ranges();
        for &(w_off, din, dout, _) in &ranges {
            loss += 0.5
                * l2
                * p[w_off..w_off + din * dout]
                    .iter()
                    .map(|w| w * w)
                    .sum::<f64>();
        }
        let Some(grad) = grad else {
            return loss;
        };
        for l in (0..ranges.len()).rev() {
            let (w_off, din, dout, b_off) = ranges[l];
            let input = if l == 0 { x } else { acts[l - 1].view() };
            let gw = delta.t().dot(&input);
            for ((g, gw), w) in grad[w_off..w_off + din * dout]
                .iter_mut()
                .zip(gw.iter())
                .zip(&p[w_off..w_off + din * dout])
            {
                *g = gw + l2 * w;
            }
            for (g, gb) in grad[b_off..b_off + dout]
                .iter_mut()
                .zip(delta.sum_axis(Axis(0)).iter())
            {
                *g = *gb;
            }
            if l > 0 {
                let w = ArrayView2::from_shape((dout, din), &p[w_off..w_off + din * dout])
                    .unwrap_or_else(|_| unreachable!("layer sizes match the parameter vector"));
                let mut back = delta.dot(&w);
                for (b, a) in back.iter_mut().zip(acts[l - 1].iter()) {
                    *b *= self.activation.derivative(*a);
                }
                delta = back;
            }
        }
        loss
    }

    /// The graph: optional scaler, the dense layers with their activations, then the head's
    /// outputs (`probabilities` and `label` for classifiers, `variable` for regressors).
    pub fn graph(&self, scaler: Option<&Scaler>, labels: Option<Vec<i64>>) -> Graph {
        let d = self.sizes[0];
        let mut nodes = Vec::new();
        let mut last: u32 = 0;
        let push = |nodes: &mut Vec<Node>, name: String, layer: Layer, last: &mut u32| {
            nodes.push(Node {
                name,
                layer,
                inputs: vec![*last],
            });
            *last = nodes.len() as u32;
        };
        if let Some(s) = scaler {
            push(&mut nodes, "scale".into(), s.layer(), &mut last);
        }
        let ranges = self.layer_ranges();
        for (l, &(w_off, din, dout, b_off)) in ranges.iter().enumerate() {
            let mut w: Vec<f32> = self.params[w_off..w_off + din * dout]
                .iter()
                .map(|&v| v as f32)
                .collect();
            let mut b: Vec<f32> = self.params[b_off..b_off + dout]
                .iter()
                .map(|&v| v as f32)
                .collect();
            let mut out = dout;
            let is_last = l + 1 == ranges.len();
            if is_last && dout == 1 && matches!(self.head, Head::Binary | Head::Hinge) {
                // softmax([-z/2, z/2]) = [1 - σ(z), σ(z)]: a two-class softmax layer gives
                // the sigmoid's probabilities exactly (σ(2z) for the margins).
                let k = if self.head == Head::Binary { 0.5 } else { 1.0 };
                w = w
                    .iter()
                    .map(|v| -v * k)
                    .chain(w.iter().map(|v| v * k))
                    .collect();
                b = vec![-b[0] * k, b[0] * k];
                out = 2;
            }
            push(
                &mut nodes,
                format!("dense{l}"),
                Layer::Dense {
                    weight: Tensor::f32(vec![out as u32, din as u32], w),
                    bias: Some(Tensor::f32(vec![out as u32], b)),
                },
                &mut last,
            );
            if !is_last {
                push(
                    &mut nodes,
                    format!("act{l}"),
                    self.activation.layer(),
                    &mut last,
                );
            }
        }
        let outputs = if self.head == Head::Regression {
            vec![Output {
                name: "variable".into(),
                value: last,
            }]
        } else {
            push(&mut nodes, "softmax".into(), Layer::Softmax, &mut last);
            let probabilities = last;
            push(
                &mut nodes,
                "argmax".into(),
                Layer::ArgMax { labels },
                &mut last,
            );
            vec![
                Output {
                    name: "probabilities".into(),
                    value: probabilities,
                },
                Output {
                    name: "label".into(),
                    value: last,
                },
            ]
        };
        Graph {
            inputs: vec![TensorSpec {
                name: "input".into(),
                dtype: DType::F32,
                shape: vec![d as u32],
            }],
            nodes,
            outputs,
        }
    }
}

pub(crate) fn softmax_rows(mut z: Array2<f64>) -> Array2<f64> {
    for mut row in z.rows_mut() {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    z
}

/// The network's training objective over fixed (already scaled) data.
pub(crate) struct NetObjective<'a> {
    pub net: &'a Network,
    pub x: ArrayView2<'a, f64>,
    pub y: Labels<'a>,
    pub l2: f64,
}

impl NetObjective<'_> {
    fn batch(&self, rows: &[usize]) -> (Array2<f64>, Labels<'static>, Vec<f64>, Vec<usize>) {
        let x = self.x.select(Axis(0), rows);
        match &self.y {
            Labels::Values(y) => (
                x,
                Labels::Values(&[]),
                rows.iter().map(|&i| y[i]).collect(),
                Vec::new(),
            ),
            Labels::Classes(y) => (
                x,
                Labels::Classes(&[]),
                Vec::new(),
                rows.iter().map(|&i| y[i]).collect(),
            ),
        }
    }

    /// Loss and gradient over every row (for L-BFGS).
    pub fn full(&self, p: &[f64], grad: &mut [f64]) -> f64 {
        self.net.loss_grad(p, self.x, &self.y, self.l2, Some(grad))
    }

    fn eval(&self, p: &[f64], rows: &[usize], l2: f64, grad: Option<&mut [f64]>) -> f64 {
        if rows.len() == self.x.nrows() && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return self.net.loss_grad(p, self.x, &self.y, l2, grad);
        }
        let (x, kind, values, classes) = self.batch(rows);
        let y = match kind {
            Labels::Values(_) => Labels::Values(&values),
            Labels::Classes(_) => Labels::Classes(&classes),
        };
        self.net.loss_grad(p, x.view(), &y, l2, grad)
    }
}

impl Objective for NetObjective<'_> {
    fn n_params(&self) -> usize {
        self.net.params.len()
    }

    fn loss_grad(&self, params: &[f64], rows: &[usize], grad: &mut [f64]) -> f64 {
        self.eval(params, rows, self.l2, Some(grad))
    }

    fn loss(&self, params: &[f64], rows: &[usize]) -> f64 {
        self.eval(params, rows, 0.0, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// Finite-difference check of every head's gradient on a small two-layer net.
    #[test]
    fn gradients_match_finite_differences() {
        let x = array![
            [0.5, -1.0, 2.0],
            [1.5, 0.3, -0.7],
            [-0.2, 0.8, 0.1],
            [1.0, 1.0, 1.0]
        ];
        let classes = [0usize, 2, 1, 2];
        let binary = [0usize, 1, 1, 0];
        let values = [1.0, -2.0, 0.5, 3.0];
        for (head, out, y) in [
            (Head::Regression, 1, Labels::Values(&values)),
            (Head::Binary, 1, Labels::Classes(&binary)),
            (Head::Softmax, 3, Labels::Classes(&classes)),
            (Head::Hinge, 3, Labels::Classes(&classes)),
        ] {
            for act in [Activation::Tanh, Activation::Sigmoid] {
                let mut net = Network::new(vec![3, 4, out], act, head);
                net.init_glorot(3);
                let obj = NetObjective {
                    net: &net,
                    x: x.view(),
                    y: match &y {
                        Labels::Values(v) => Labels::Values(v),
                        Labels::Classes(c) => Labels::Classes(c),
                    },
                    l2: 0.1,
                };
                let mut g = vec![0.0; net.params.len()];
                obj.full(&net.params, &mut g);
                let mut scratch = vec![0.0; g.len()];
                for i in 0..g.len() {
                    let mut p = net.params.clone();
                    p[i] += 1e-6;
                    let up = obj.full(&p, &mut scratch);
                    p[i] -= 2e-6;
                    let down = obj.full(&p, &mut scratch);
                    let fd = (up - down) / 2e-6;
                    assert!(
                        (fd - g[i]).abs() < 1e-5,
                        "{head:?} {act:?} param {i}: {fd} vs {}",
                        g[i]
                    );
                }
            }
        }
    }
}
