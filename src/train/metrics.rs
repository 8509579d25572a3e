//! Evaluation metrics with scikit-learn's definitions. Classes are indices `0..k`; a
//! precision or recall whose denominator is zero counts as 0 (scikit-learn's
//! `zero_division=0` result, without its warning).

use ndarray::{Array2, ArrayView2};

/// Fraction of predictions equal to the truth.
pub fn accuracy(truth: &[usize], predicted: &[usize]) -> f64 {
    let hits = truth.iter().zip(predicted).filter(|(a, b)| a == b).count();
    hits as f64 / truth.len().max(1) as f64
}

/// `k × k` counts, rows the true class, columns the predicted one.
pub fn confusion_matrix(truth: &[usize], predicted: &[usize], k: usize) -> Array2<u64> {
    let mut m = Array2::zeros((k, k));
    for (&t, &p) in truth.iter().zip(predicted) {
        if t < k && p < k {
            m[[t, p]] += 1;
        }
    }
    m
}

/// Per-class precision, recall, F1 and support.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassScores {
    /// Precision per class.
    pub precision: Vec<f64>,
    /// Recall per class.
    pub recall: Vec<f64>,
    /// F1 per class.
    pub f1: Vec<f64>,
    /// True rows per class.
    pub support: Vec<u64>,
}

/// How per-class scores are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Average {
    /// Unweighted mean over classes.
    Macro,
    /// Mean weighted by each class' support.
    Weighted,
}

impl ClassScores {
    /// Scores of `k` classes.
    pub fn new(truth: &[usize], predicted: &[usize], k: usize) -> ClassScores {
        let m = confusion_matrix(truth, predicted, k);
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let mut s = ClassScores {
            precision: Vec::with_capacity(k),
            recall: Vec::with_capacity(k),
            f1: Vec::with_capacity(k),
            support: Vec::with_capacity(k),
        };
        for c in 0..k {
            let tp = m[[c, c]];
            let predicted_c: u64 = m.column(c).sum();
            let actual_c: u64 = m.row(c).sum();
            let p = ratio(tp, predicted_c);
            let r = ratio(tp, actual_c);
            s.precision.push(p);
            s.recall.push(r);
            s.f1.push(if p + r == 0.0 {
                0.0
            } else {
                2.0 * p * r / (p + r)
            });
            s.support.push(actual_c);
        }
        s
    }

    fn average(&self, v: &[f64], how: Average) -> f64 {
        match how {
            Average::Macro => v.iter().sum::<f64>() / v.len().max(1) as f64,
            Average::Weighted => {
                let total: u64 = self.support.iter().sum();
                v.iter()
                    .zip(&self.support)
                    .map(|(x, &n)| x * n as f64)
                    .sum::<f64>()
                    / total.max(1) as f64
            }
        }
    }

    /// Per-class precision combined as `how` says, in `[0, 1]` (a class never predicted counts 0).
    pub fn precision(&self, how: Average) -> f64 {
        self.average(&self.precision, how)
    }

    /// Per-class recall combined as `how` says, in `[0, 1]`.
    pub fn recall(&self, how: Average) -> f64 {
        self.average(&self.recall, how)
    }

    /// Averaged F1 (the mean of per-class F1, as scikit-learn computes it).
    pub fn f1(&self, how: Average) -> f64 {
        self.average(&self.f1, how)
    }
}

/// Area under the ROC curve of `scores` for the positive rows (`positive[i]`), ties
/// counted half (the Mann–Whitney statistic). `None` when one side has no rows.
pub fn roc_auc_binary(positive: &[bool], scores: &[f64]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid_rank = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            if positive[o] {
                rank_sum += mid_rank;
            }
        }
        i = j + 1;
    }
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    Some((rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

/// ROC-AUC from class probabilities `[n, k]`: class 1's column for two classes, else the
/// macro average of one-vs-rest AUCs (scikit-learn `multi_class="ovr"`). `None` when a
/// class has no rows.
pub fn roc_auc(truth: &[usize], probabilities: ArrayView2<'_, f64>) -> Option<f64> {
    let k = probabilities.ncols();
    if k == 2 {
        let pos: Vec<bool> = truth.iter().map(|&t| t == 1).collect();
        return roc_auc_binary(&pos, &probabilities.column(1).to_vec());
    }
    let mut total = 0.0;
    for c in 0..k {
        let pos: Vec<bool> = truth.iter().map(|&t| t == c).collect();
        total += roc_auc_binary(&pos, &probabilities.column(c).to_vec())?;
    }
    Some(total / k as f64)
}

/// Mean negative log-probability of the true class, probabilities clipped to
/// `[ε, 1 - ε]` with ε the f64 machine epsilon (as scikit-learn does).
pub fn log_loss(truth: &[usize], probabilities: ArrayView2<'_, f64>) -> f64 {
    let eps = f64::EPSILON;
    let total: f64 = truth
        .iter()
        .zip(probabilities.rows())
        .map(|(&t, row)| {
            -row.get(t)
                .copied()
                .unwrap_or(0.0)
                .clamp(eps, 1.0 - eps)
                .ln()
        })
        .sum();
    total / truth.len().max(1) as f64
}

/// Mean squared error.
pub fn mse(truth: &[f64], predicted: &[f64]) -> f64 {
    truth
        .iter()
        .zip(predicted)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        / truth.len().max(1) as f64
}

/// Mean absolute error.
pub fn mae(truth: &[f64], predicted: &[f64]) -> f64 {
    truth
        .iter()
        .zip(predicted)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / truth.len().max(1) as f64
}

/// Coefficient of determination `1 - SS_res / SS_tot` (1 for a perfect fit of constant
/// truth, 0 for an imperfect one, as scikit-learn).
pub fn r2(truth: &[f64], predicted: &[f64]) -> f64 {
    let mean = truth.iter().sum::<f64>() / truth.len().max(1) as f64;
    let ss_tot: f64 = truth.iter().map(|v| (v - mean) * (v - mean)).sum();
    let ss_res = mse(truth, predicted) * truth.len() as f64;
    if ss_tot == 0.0 {
        return if ss_res == 0.0 { 1.0 } else { 0.0 };
    }
    1.0 - ss_res / ss_tot
}

/// Index of the largest value of each row (first on ties).
pub fn argmax_rows(probabilities: ArrayView2<'_, f64>) -> Vec<usize> {
    probabilities
        .rows()
        .into_iter()
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    // Reference values from scikit-learn 1.9.1:
    //   y = [0,1,2,2,1,0,2,1]; p = [0,2,2,2,1,0,1,1]
    //   accuracy_score(y, p) = 0.75
    //   precision_score(y, p, average="macro") = 0.7777777777777777
    //   recall_score(y, p, average="macro") = 0.7777777777777777
    //   f1_score(y, p, average="macro") = 0.7777777777777777
    //   f1_score(y, p, average="weighted") = 0.75
    //   precision_score(y, p, average="weighted") = 0.75
    const Y: [usize; 8] = [0, 1, 2, 2, 1, 0, 2, 1];
    const P: [usize; 8] = [0, 2, 2, 2, 1, 0, 1, 1];

    #[test]
    fn classification_scores() {
        close(accuracy(&Y, &P), 0.75);
        let s = ClassScores::new(&Y, &P, 3);
        close(s.precision(Average::Macro), 0.7777777777777777);
        close(s.recall(Average::Macro), 0.7777777777777777);
        close(s.f1(Average::Macro), 0.7777777777777777);
        close(s.f1(Average::Weighted), 0.75);
        close(s.precision(Average::Weighted), 0.75);
        assert_eq!(
            confusion_matrix(&Y, &P, 3),
            array![[2u64, 0, 0], [0, 2, 1], [0, 1, 2]]
        );
    }

    // scikit-learn 1.9.1:
    //   roc_auc_score([0,0,1,1,1], [0.1,0.4,0.35,0.8,0.4]) = 0.75   (a tie at 0.4)
    //   log_loss([0,0,1,1,1], [[.9,.1],[.6,.4],[.65,.35],[.2,.8],[.6,.4]]) = 0.5610885094221719
    #[test]
    fn binary_auc_and_log_loss() {
        let y = [0, 0, 1, 1, 1];
        let p1 = [0.1, 0.4, 0.35, 0.8, 0.4];
        let proba =
            Array2::from_shape_fn((5, 2), |(i, c)| if c == 1 { p1[i] } else { 1.0 - p1[i] });
        close(roc_auc(&y, proba.view()).unwrap(), 0.75);
        close(log_loss(&y, proba.view()), 0.5610885094221719);
    }

    // scikit-learn 1.9.1:
    //   y = [0,1,2,2,0,1]
    //   p = [[.7,.2,.1],[.2,.5,.3],[.1,.3,.6],[.3,.3,.4],[.4,.4,.2],[.5,.3,.2]]
    //   roc_auc_score(y, p, multi_class="ovr") = 0.875
    #[test]
    fn one_vs_rest_auc() {
        let y = [0, 1, 2, 2, 0, 1];
        let p = array![
            [0.7, 0.2, 0.1],
            [0.2, 0.5, 0.3],
            [0.1, 0.3, 0.6],
            [0.3, 0.3, 0.4],
            [0.4, 0.4, 0.2],
            [0.5, 0.3, 0.2]
        ];
        close(roc_auc(&y, p.view()).unwrap(), 0.875);
    }

    // By hand: errors [0.5, -1, 0, 2]; MSE = 5.25/4, MAE = 3.5/4;
    // mean of truth 2.5, SS_tot = 5, SS_res = 5.25, R² = -0.05.
    #[test]
    fn regression_scores() {
        let t = [1.0, 2.0, 3.0, 4.0];
        let p = [0.5, 3.0, 3.0, 2.0];
        close(mse(&t, &p), 1.3125);
        close(mae(&t, &p), 0.875);
        close(r2(&t, &p), -0.05);
    }
}
