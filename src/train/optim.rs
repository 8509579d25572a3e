//! Optimizers over flat parameter slices, learning-rate schedules, the mini-batch training
//! loop with early stopping, and full-batch L-BFGS.
//!
//! Every gradient-trained model exposes its parameters as one `&mut [f64]` and a function
//! that, given parameters and a batch of row indices, writes the gradient of the batch loss
//! (penalties included) and returns the loss. [`fit`] drives that function with an
//! [`Optimizer`]; [`lbfgs`] minimizes a full-batch objective to convergence.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// An update rule and its hyper-parameters. Defaults follow PyTorch / Keras.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// `p -= lr * g`.
    Sgd,
    /// Heavy-ball momentum: `v = μv + g; p -= lr * v`.
    Momentum {
        /// μ (0.9 is usual).
        momentum: f64,
    },
    /// Nesterov momentum (the PyTorch form): `v = μv + g; p -= lr * (g + μv)`.
    Nesterov {
        /// μ, the velocity's decay in `[0, 1)` (default 0.9).
        momentum: f64,
    },
    /// RMSprop: `s = ρs + (1-ρ)g²; p -= lr * g / (√s + ε)`.
    RmsProp {
        /// ρ, the squared-gradient average's decay in `[0, 1)` (default 0.99).
        rho: f64,
        /// ε, added to the denominator for stability (default 1e-8).
        eps: f64,
    },
    /// Adagrad: `s += g²; p -= lr * g / (√s + ε)`.
    Adagrad {
        /// ε, added to the denominator for stability (default 1e-10).
        eps: f64,
    },
    /// Adadelta (Zeiler 2012); `lr` scales the step (1.0 is the paper's rule).
    Adadelta {
        /// ρ, the decay of both running averages in `[0, 1)` (default 0.9).
        rho: f64,
        /// ε, added inside both square roots (default 1e-6).
        eps: f64,
    },
    /// Adam with bias correction.
    Adam {
        /// β₁, the gradient average's decay in `[0, 1)` (default 0.9).
        beta1: f64,
        /// β₂, the squared-gradient average's decay in `[0, 1)` (default 0.999).
        beta2: f64,
        /// ε, added to the denominator for stability (default 1e-8).
        eps: f64,
    },
    /// AdamW: Adam with weight decay decoupled from the gradient, `p -= lr * λ * p`.
    AdamW {
        /// β₁, the gradient average's decay in `[0, 1)` (default 0.9).
        beta1: f64,
        /// β₂, the squared-gradient average's decay in `[0, 1)` (default 0.999).
        beta2: f64,
        /// ε, added to the denominator for stability (default 1e-8).
        eps: f64,
        /// λ, applied to every parameter.
        weight_decay: f64,
    },
}

impl OptimizerKind {
    /// Adam with the usual defaults.
    pub const ADAM: OptimizerKind = OptimizerKind::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };

    /// Parses a name (`sgd`, `momentum`, `nesterov`, `rmsprop`, `adagrad`, `adadelta`,
    /// `adam`, `adamw`) into the kind with default hyper-parameters.
    pub fn from_name(name: &str) -> Option<OptimizerKind> {
        Some(match name.to_ascii_lowercase().as_str() {
            "sgd" => OptimizerKind::Sgd,
            "momentum" => OptimizerKind::Momentum { momentum: 0.9 },
            "nesterov" => OptimizerKind::Nesterov { momentum: 0.9 },
            "rmsprop" => OptimizerKind::RmsProp {
                rho: 0.99,
                eps: 1e-8,
            },
            "adagrad" => OptimizerKind::Adagrad { eps: 1e-10 },
            "adadelta" => OptimizerKind::Adadelta {
                rho: 0.9,
                eps: 1e-6,
            },
            "adam" => OptimizerKind::ADAM,
            "adamw" => OptimizerKind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            _ => return None,
        })
    }
}

/// An optimizer with its per-parameter state.
#[derive(Clone, Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    m: Vec<f64>,
    v: Vec<f64>,
    t: u64,
}

impl Optimizer {
    /// State for `n_params` parameters.
    pub fn new(kind: OptimizerKind, n_params: usize) -> Optimizer {
        Optimizer {
            kind,
            m: vec![0.0; n_params],
            v: vec![0.0; n_params],
            t: 0,
        }
    }

    /// The update rule.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// Applies one update with learning rate `lr`.
    ///
    /// # Panics
    /// If `params` or `grad` is not the length given to [`Optimizer::new`].
    pub fn step(&mut self, params: &mut [f64], grad: &[f64], lr: f64) {
        assert_eq!(params.len(), self.m.len(), "parameter count changed");
        assert_eq!(grad.len(), self.m.len(), "gradient length differs");
        self.t += 1;
        let (m, v) = (&mut self.m, &mut self.v);
        match self.kind {
            OptimizerKind::Sgd => {
                for (p, g) in params.iter_mut().zip(grad) {
                    *p -= lr * g;
                }
            }
            OptimizerKind::Momentum { momentum } => {
                for ((p, g), m) in params.iter_mut().zip(grad).zip(m) {
                    *m = momentum * *m + g;
                    *p -= lr * *m;
                }
            }
            OptimizerKind::Nesterov { momentum } => {
                for ((p, g), m) in params.iter_mut().zip(grad).zip(m) {
                    *m = momentum * *m + g;
                    *p -= lr * (g + momentum * *m);
                }
            }
            OptimizerKind::RmsProp { rho, eps } => {
                for ((p, g), s) in params.iter_mut().zip(grad).zip(v) {
                    *s = rho * *s + (1.0 - rho) * g * g;
                    *p -= lr * g / (s.sqrt() + eps);
                }
            }
            OptimizerKind::Adagrad { eps } => {
                for ((p, g), s) in params.iter_mut().zip(grad).zip(v) {
                    *s += g * g;
                    *p -= lr * g / (s.sqrt() + eps);
                }
            }
            OptimizerKind::Adadelta { rho, eps } => {
                for (((p, g), s), d) in params.iter_mut().zip(grad).zip(v).zip(m) {
                    *s = rho * *s + (1.0 - rho) * g * g;
                    let step = (*d + eps).sqrt() / (*s + eps).sqrt() * g;
                    *d = rho * *d + (1.0 - rho) * step * step;
                    *p -= lr * step;
                }
            }
            OptimizerKind::Adam { beta1, beta2, eps } => {
                adam(params, grad, m, v, self.t, lr, beta1, beta2, eps);
            }
            OptimizerKind::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                for p in params.iter_mut() {
                    *p -= lr * weight_decay * *p;
                }
                adam(params, grad, m, v, self.t, lr, beta1, beta2, eps);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn adam(
    params: &mut [f64],
    grad: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    t: u64,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
) {
    let c1 = 1.0 - beta1.powi(t.min(i32::MAX as u64) as i32);
    let c2 = 1.0 - beta2.powi(t.min(i32::MAX as u64) as i32);
    for (((p, g), m), v) in params.iter_mut().zip(grad).zip(m).zip(v) {
        *m = beta1 * *m + (1.0 - beta1) * g;
        *v = beta2 * *v + (1.0 - beta2) * g * g;
        *p -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
    }
}

/// Learning rate as a function of the epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiplied by `gamma` every `every` epochs.
    Step {
        /// Epochs between drops, `>= 1`.
        every: usize,
        /// Factor per drop, in `(0, 1]` (default 0.1).
        gamma: f64,
    },
    /// Cosine annealing from the base rate to `min_lr` over the configured epochs.
    Cosine {
        /// The rate reached at the last epoch, `>= 0`.
        min_lr: f64,
    },
}

impl Schedule {
    /// Parses `constant`, `step:EVERY[:GAMMA]` (GAMMA defaults to 0.1) or
    /// `cosine[:MIN_LR]` (MIN_LR defaults to 0).
    pub fn from_spec(spec: &str) -> Option<Schedule> {
        let mut parts = spec.split(':');
        let name = parts.next()?.trim().to_ascii_lowercase();
        let args: Vec<&str> = parts.collect();
        let num = |i: usize, default: f64| -> Option<f64> {
            args.get(i)
                .map_or(Some(default), |a| a.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        match (name.as_str(), args.len()) {
            ("constant", 0) => Some(Schedule::Constant),
            ("step", 1 | 2) => Some(Schedule::Step {
                every: args[0].trim().parse().ok().filter(|&e: &usize| e > 0)?,
                gamma: num(1, 0.1)?,
            }),
            ("cosine", 0 | 1) => Some(Schedule::Cosine {
                min_lr: num(0, 0.0)?,
            }),
            _ => None,
        }
    }

    /// The rate for `epoch` (0-based) of `epochs`.
    pub fn rate(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => {
                base * gamma.powi((epoch / every.max(1)).min(i32::MAX as usize) as i32)
            }
            Schedule::Cosine { min_lr } => {
                let frac = epoch as f64 / epochs.max(1) as f64;
                min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        }
    }
}

/// Stop when the monitored loss has not improved by `tol` for `patience` epochs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EarlyStopping {
    /// Fraction of the training rows held out for validation (0 monitors the training
    /// loss instead, as scikit-learn's MLP does without `early_stopping`).
    pub validation_fraction: f64,
    /// Epochs without improvement tolerated.
    pub patience: usize,
    /// Least decrease of the monitored loss that counts as an improvement (absolute).
    pub tol: f64,
}

/// Mini-batch gradient training settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradientConfig {
    /// The update rule and its hyper-parameters.
    pub optimizer: OptimizerKind,
    /// Base learning rate, `> 0`, before the schedule scales it.
    pub learning_rate: f64,
    /// Rate schedule over epochs.
    pub schedule: Schedule,
    /// Rows per mini-batch (clamped to the data; `usize::MAX` is full batch).
    pub batch_size: usize,
    /// Epochs to run at most (early stopping may end sooner).
    pub epochs: usize,
    /// Seed for shuffling, initialization and the validation split.
    pub seed: u64,
    /// Early stopping, or none to run every epoch.
    pub early_stopping: Option<EarlyStopping>,
    /// Decoupled L2 weight decay: after each step every parameter shrinks by
    /// `learning_rate × weight_decay` of itself (AdamW keeps its own instead).
    pub weight_decay: f64,
}

impl Default for GradientConfig {
    /// scikit-learn's MLP defaults: Adam, lr 1e-3, batch 200, 200 epochs, stop after 10
    /// epochs without a 1e-4 training-loss improvement.
    fn default() -> Self {
        GradientConfig {
            optimizer: OptimizerKind::ADAM,
            learning_rate: 1e-3,
            schedule: Schedule::Constant,
            batch_size: 200,
            epochs: 200,
            seed: 0,
            early_stopping: Some(EarlyStopping {
                validation_fraction: 0.0,
                patience: 10,
                tol: 1e-4,
            }),
            weight_decay: 0.0,
        }
    }
}

/// What the progress callback receives after each epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochReport {
    /// 1-based number of the epoch just finished.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub loss: f64,
    /// Validation loss when a validation split is held out.
    pub validation: Option<f64>,
    /// Learning rate this epoch used, after the schedule.
    pub learning_rate: f64,
}

/// A progress callback: called once per epoch.
pub type Progress<'a> = &'a mut dyn FnMut(&EpochReport);

/// What a training run did.
#[derive(Clone, Debug, PartialEq)]
pub struct FitSummary {
    /// Epochs (or L-BFGS iterations) run.
    pub epochs: usize,
    /// Training loss of the last epoch (or iteration), penalties included.
    pub loss: f64,
    /// Best validation loss, when monitored.
    pub validation: Option<f64>,
    /// Whether early stopping or convergence ended the run before the limit.
    pub converged: bool,
}

/// A differentiable objective over rows of a dataset.
pub trait Objective {
    /// Number of parameters.
    fn n_params(&self) -> usize;
    /// Writes the gradient of the loss over `rows` (mean over the rows, penalties included)
    /// into `grad` and returns that loss.
    fn loss_grad(&self, params: &[f64], rows: &[usize], grad: &mut [f64]) -> f64;
    /// The mean loss over `rows` without penalties (validation loss).
    fn loss(&self, params: &[f64], rows: &[usize]) -> f64;
}

/// Trains `params` on rows `0..n_rows` with mini-batches. With a validation split the
/// parameters with the best validation loss are kept.
pub fn fit(
    objective: &dyn Objective,
    params: &mut [f64],
    n_rows: usize,
    config: &GradientConfig,
    mut progress: Option<Progress<'_>>,
) -> FitSummary {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5EED_0F0B);
    let mut rows: Vec<usize> = (0..n_rows).collect();
    let mut validation: Vec<usize> = Vec::new();
    if let Some(es) = config.early_stopping
        && es.validation_fraction > 0.0
    {
        rows.shuffle(&mut rng);
        let n_val = ((n_rows as f64 * es.validation_fraction).ceil() as usize).min(n_rows / 2);
        validation = rows.split_off(n_rows - n_val);
    }
    let batch = config.batch_size.clamp(1, rows.len().max(1));
    let mut optimizer = Optimizer::new(config.optimizer, params.len());
    let mut grad = vec![0.0; params.len()];
    let mut best = f64::INFINITY;
    let mut best_params = params.to_vec();
    let mut since_best = 0usize;
    let mut summary = FitSummary {
        epochs: 0,
        loss: f64::NAN,
        validation: None,
        converged: false,
    };
    for epoch in 0..config.epochs {
        let lr = config
            .schedule
            .rate(config.learning_rate, epoch, config.epochs);
        rows.shuffle(&mut rng);
        let mut total = 0.0;
        for chunk in rows.chunks(batch) {
            let loss = objective.loss_grad(params, chunk, &mut grad);
            total += loss * chunk.len() as f64;
            optimizer.step(params, &grad, lr);
            if config.weight_decay > 0.0 {
                let keep = 1.0 - lr * config.weight_decay;
                params.iter_mut().for_each(|p| *p *= keep);
            }
        }
        let loss = total / rows.len().max(1) as f64;
        let val = (!validation.is_empty()).then(|| objective.loss(params, &validation));
        summary.epochs = epoch + 1;
        summary.loss = loss;
        if let Some(p) = progress.as_mut() {
            p(&EpochReport {
                epoch: epoch + 1,
                loss,
                validation: val,
                learning_rate: lr,
            });
        }
        if !loss.is_finite() {
            break;
        }
        if let Some(es) = config.early_stopping {
            let monitored = val.unwrap_or(loss);
            if monitored < best - es.tol {
                since_best = 0;
            } else {
                since_best += 1;
            }
            if monitored < best {
                best = monitored;
                if val.is_some() {
                    best_params.copy_from_slice(params);
                }
            }
            if since_best >= es.patience {
                summary.converged = true;
                break;
            }
        }
    }
    if !validation.is_empty() && best.is_finite() {
        params.copy_from_slice(&best_params);
        summary.validation = Some(best);
    }
    summary
}

/// Settings for [`lbfgs`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LbfgsConfig {
    /// Iterations at most (each one a line search and a gradient).
    pub max_iter: usize,
    /// Stop when the largest gradient component falls below this.
    pub gtol: f64,
    /// Curvature pairs (step, gradient change) kept for the Hessian estimate.
    pub memory: usize,
}

impl Default for LbfgsConfig {
    /// scikit-learn's LogisticRegression stopping rule (`tol=1e-4` on the largest gradient
    /// component of the mean loss), with up to 1000 iterations where it stops at 100.
    fn default() -> Self {
        LbfgsConfig {
            max_iter: 1000,
            gtol: 1e-4,
            memory: 10,
        }
    }
}

/// Minimizes a smooth full-batch objective `f(params, grad) -> loss` with L-BFGS and a
/// backtracking Armijo line search. Stops on a small gradient, a stalled loss or
/// `max_iter`.
pub fn lbfgs(
    mut f: impl FnMut(&[f64], &mut [f64]) -> f64,
    params: &mut [f64],
    config: &LbfgsConfig,
    mut progress: Option<Progress<'_>>,
) -> FitSummary {
    let n = params.len();
    let mut g = vec![0.0; n];
    let mut loss = f(params, &mut g);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut d = vec![0.0; n];
    let mut trial = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    let mut converged = false;
    let mut iters = 0;
    for it in 0..config.max_iter {
        iters = it + 1;
        if g.iter().fold(0.0f64, |a, v| a.max(v.abs())) < config.gtol {
            converged = true;
            break;
        }
        // Two-loop recursion: d = -H g.
        d.copy_from_slice(&g);
        let k = s_hist.len();
        let mut alpha = vec![0.0; k];
        for i in (0..k).rev() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            alpha[i] = rho * dot(&s_hist[i], &d);
            axpy(-alpha[i], &y_hist[i], &mut d);
        }
        if k > 0 {
            let gamma = dot(&s_hist[k - 1], &y_hist[k - 1]) / dot(&y_hist[k - 1], &y_hist[k - 1]);
            d.iter_mut().for_each(|v| *v *= gamma);
        } else {
            let norm = dot(&g, &g).sqrt().max(1e-12);
            d.iter_mut().for_each(|v| *v /= norm);
        }
        for i in 0..k {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            let beta = rho * dot(&y_hist[i], &d);
            axpy(alpha[i] - beta, &s_hist[i], &mut d);
        }
        d.iter_mut().for_each(|v| *v = -*v);
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            s_hist.clear();
            y_hist.clear();
            d.iter_mut().zip(&g).for_each(|(d, g)| *d = -g);
            slope = -dot(&g, &g);
        }
        let mut step = 1.0;
        let mut accepted = false;
        let mut new_loss = loss;
        for _ in 0..40 {
            for ((t, p), d) in trial.iter_mut().zip(params.iter()).zip(&d) {
                *t = p + step * d;
            }
            new_loss = f(&trial, &mut g_new);
            if new_loss.is_finite() && new_loss <= loss + 1e-4 * step * slope {
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            converged = true;
            break;
        }
        let s: Vec<f64> = trial
            .iter()
            .zip(params.iter())
            .map(|(a, b)| a - b)
            .collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        if dot(&s, &y) > 1e-12 {
            if s_hist.len() == config.memory {
                s_hist.remove(0);
                y_hist.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
        }
        params.copy_from_slice(&trial);
        g.copy_from_slice(&g_new);
        let improvement = loss - new_loss;
        loss = new_loss;
        if let Some(p) = progress.as_mut() {
            p(&EpochReport {
                epoch: it + 1,
                loss,
                validation: None,
                learning_rate: step,
            });
        }
        if improvement.abs() <= 1e-14 * loss.abs().max(1.0) {
            converged = true;
            break;
        }
    }
    FitSummary {
        epochs: iters,
        loss,
        validation: None,
        converged,
    }
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f(p) = Σ c_i (p_i - t_i)²` with a known minimum at `t`.
    struct Quadratic {
        c: Vec<f64>,
        t: Vec<f64>,
    }

    impl Objective for Quadratic {
        fn n_params(&self) -> usize {
            self.c.len()
        }
        fn loss_grad(&self, p: &[f64], _rows: &[usize], g: &mut [f64]) -> f64 {
            let mut l = 0.0;
            for i in 0..p.len() {
                let d = p[i] - self.t[i];
                l += self.c[i] * d * d;
                g[i] = 2.0 * self.c[i] * d;
            }
            l
        }
        fn loss(&self, p: &[f64], rows: &[usize]) -> f64 {
            let mut g = vec![0.0; p.len()];
            self.loss_grad(p, rows, &mut g)
        }
    }

    fn quadratic() -> Quadratic {
        Quadratic {
            c: vec![1.0, 0.5, 2.0],
            t: vec![3.0, -2.0, 0.5],
        }
    }

    fn minimize(kind: OptimizerKind, lr: f64, epochs: usize) -> Vec<f64> {
        let q = quadratic();
        let mut p = vec![0.0; 3];
        let config = GradientConfig {
            optimizer: kind,
            learning_rate: lr,
            batch_size: 1,
            epochs,
            early_stopping: None,
            ..GradientConfig::default()
        };
        fit(&q, &mut p, 1, &config, None);
        p
    }

    macro_rules! converges {
        ($($name:ident: $kind:expr, $lr:expr, $epochs:expr, $tol:expr;)*) => {$(
            #[test]
            fn $name() {
                let p = minimize($kind, $lr, $epochs);
                for (p, t) in p.iter().zip(&quadratic().t) {
                    assert!((p - t).abs() < $tol, "{p:?} vs {t}");
                }
            }
        )*};
    }

    converges! {
        sgd_finds_minimum: OptimizerKind::Sgd, 0.1, 500, 1e-6;
        momentum_finds_minimum: OptimizerKind::Momentum { momentum: 0.9 }, 0.02, 1000, 1e-6;
        nesterov_finds_minimum: OptimizerKind::Nesterov { momentum: 0.9 }, 0.02, 1000, 1e-6;
        rmsprop_finds_minimum: OptimizerKind::RmsProp { rho: 0.9, eps: 1e-8 }, 0.01, 3000, 2e-2;
        adagrad_finds_minimum: OptimizerKind::Adagrad { eps: 1e-10 }, 1.0, 3000, 1e-4;
        adadelta_finds_minimum: OptimizerKind::Adadelta { rho: 0.95, eps: 1e-6 }, 1.0, 20000, 1e-2;
        adam_finds_minimum: OptimizerKind::ADAM, 0.05, 3000, 1e-4;
        adamw_finds_shrunk_minimum: OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }, 0.05, 3000, 1e-4;
    }

    #[test]
    fn weight_decay_pulls_any_optimizer_toward_zero() {
        let q = quadratic();
        let run = |weight_decay: f64| {
            let mut p = vec![0.0; 3];
            let config = GradientConfig {
                optimizer: OptimizerKind::Sgd,
                learning_rate: 0.1,
                batch_size: 1,
                epochs: 500,
                early_stopping: None,
                weight_decay,
                ..GradientConfig::default()
            };
            fit(&q, &mut p, 1, &config, None);
            p
        };
        let (free, decayed) = (run(0.0), run(0.5));
        let norm = |p: &[f64]| dot(p, p).sqrt();
        assert!(
            norm(&decayed) < 0.9 * norm(&free),
            "{decayed:?} vs {free:?}"
        );
    }

    #[test]
    fn adamw_decay_pulls_toward_zero() {
        let free = minimize(OptimizerKind::ADAM, 0.05, 2000);
        let decayed = minimize(
            OptimizerKind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
            },
            0.05,
            2000,
        );
        assert!(
            decayed[0].abs() < free[0].abs() - 0.01,
            "{decayed:?} {free:?}"
        );
    }

    #[test]
    fn lbfgs_finds_minimum() {
        let q = quadratic();
        let mut p = vec![0.0; 3];
        let s = lbfgs(
            |p, g| q.loss_grad(p, &[], g),
            &mut p,
            &LbfgsConfig {
                gtol: 1e-10,
                ..LbfgsConfig::default()
            },
            None,
        );
        assert!(s.converged);
        for (p, t) in p.iter().zip(&q.t) {
            assert!((p - t).abs() < 1e-6);
        }
    }

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Constant.rate(0.1, 5, 10), 0.1);
        assert_eq!(Schedule::from_spec("constant"), Some(Schedule::Constant));
        assert_eq!(
            Schedule::from_spec("step:10:0.5"),
            Some(Schedule::Step {
                every: 10,
                gamma: 0.5
            })
        );
        assert_eq!(
            Schedule::from_spec("step:3"),
            Some(Schedule::Step {
                every: 3,
                gamma: 0.1
            })
        );
        assert_eq!(
            Schedule::from_spec("cosine"),
            Some(Schedule::Cosine { min_lr: 0.0 })
        );
        for bad in [
            "step",
            "step:0",
            "step:x",
            "cosine:-1",
            "linear",
            "constant:2",
        ] {
            assert_eq!(Schedule::from_spec(bad), None, "{bad}");
        }
        let step = Schedule::Step {
            every: 2,
            gamma: 0.5,
        };
        assert_eq!(step.rate(1.0, 3, 10), 0.5);
        assert_eq!(step.rate(1.0, 4, 10), 0.25);
        let cos = Schedule::Cosine { min_lr: 0.0 };
        assert!((cos.rate(1.0, 0, 10) - 1.0).abs() < 1e-12);
        assert!((cos.rate(1.0, 5, 10) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn early_stopping_and_progress() {
        let q = quadratic();
        let mut p = vec![0.0; 3];
        let mut seen = Vec::new();
        let config = GradientConfig {
            optimizer: OptimizerKind::Sgd,
            learning_rate: 0.1,
            batch_size: 1,
            epochs: 10_000,
            early_stopping: Some(EarlyStopping {
                validation_fraction: 0.0,
                patience: 5,
                tol: 1e-9,
            }),
            ..GradientConfig::default()
        };
        let s = fit(&q, &mut p, 1, &config, Some(&mut |r| seen.push(r.epoch)));
        assert!(s.converged && s.epochs < 10_000);
        assert_eq!(seen.len(), s.epochs);
    }
}
