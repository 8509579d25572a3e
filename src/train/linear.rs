//! Closed-form and coordinate-descent solvers for linear regression: normal equations with
//! a Cholesky factorization (ordinary least squares and ridge), and lasso by cyclic
//! coordinate descent with soft thresholding.

use ndarray::{Array2, ArrayView2};

/// Solves `A x = b` for a symmetric positive definite `A` (`n × n`, row-major) in place of a
/// copy: Cholesky `A = L Lᵀ`, then two triangular solves. `None` when `A` is not positive
/// definite.
pub(crate) fn cholesky_solve(a: &Array2<f64>, b: &[f64]) -> Option<Vec<f64>> {
    let n = b.len();
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let mut sum = a[[i, j]];
            for k in 0..j {
                sum -= l[[i, k]] * l[[j, k]];
            }
            if i == j {
                if sum <= 0.0 || !sum.is_finite() {
                    return None;
                }
                l[[i, i]] = sum.sqrt();
            } else {
                l[[i, j]] = sum / l[[j, j]];
            }
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        let mut sum = b[i];
        for k in 0..i {
            sum -= l[[i, k]] * y[k];
        }
        y[i] = sum / l[[i, i]];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut sum = y[i];
        for k in i + 1..n {
            sum -= l[[k, i]] * x[k];
        }
        x[i] = sum / l[[i, i]];
    }
    Some(x)
}

/// Least squares with an intercept and penalty `alpha·‖w‖²` on the weights (scikit-learn
/// `Ridge` form; `alpha = 0` is ordinary least squares). The data is centred first so the
/// intercept is not penalized; a rank-deficient system (collinear or one-hot features) gets
/// a tiny ridge so a minimum-norm-like solution is still found. Returns `(w, b)`.
pub(crate) fn normal_equations(x: ArrayView2<'_, f64>, y: &[f64], alpha: f64) -> (Vec<f64>, f64) {
    let (n, d) = x.dim();
    let nf = n.max(1) as f64;
    let x_mean: Vec<f64> = (0..d).map(|j| x.column(j).sum() / nf).collect();
    let y_mean = y.iter().sum::<f64>() / nf;
    let mut xc = x.to_owned();
    for mut row in xc.rows_mut() {
        for (v, m) in row.iter_mut().zip(&x_mean) {
            *v -= m;
        }
    }
    let mut gram = xc.t().dot(&xc);
    let yc: Vec<f64> = y.iter().map(|v| v - y_mean).collect();
    let rhs: Vec<f64> = (0..d)
        .map(|j| xc.column(j).iter().zip(&yc).map(|(a, b)| a * b).sum())
        .collect();
    let trace = (0..d).map(|j| gram[[j, j]]).sum::<f64>().max(1e-300);
    let mut jitter = 0.0;
    let w = loop {
        let mut a = gram.clone();
        for j in 0..d {
            a[[j, j]] += alpha + jitter;
        }
        if let Some(w) = cholesky_solve(&a, &rhs) {
            break w;
        }
        jitter = if jitter == 0.0 {
            trace * 1e-12
        } else {
            jitter * 10.0
        };
        if jitter > trace {
            for j in 0..d {
                gram[[j, j]] += trace;
            }
        }
    };
    let b = y_mean - w.iter().zip(&x_mean).map(|(w, m)| w * m).sum::<f64>();
    (w, b)
}

/// Lasso, scikit-learn's objective `1/(2n)·‖y - Xw - b‖² + alpha·‖w‖₁`, by cyclic
/// coordinate descent until the largest weight change is below `tol` (relative to the
/// largest weight) or `max_iter` sweeps. Returns `(w, b, sweeps)`.
pub(crate) fn lasso(
    x: ArrayView2<'_, f64>,
    y: &[f64],
    alpha: f64,
    max_iter: usize,
    tol: f64,
) -> (Vec<f64>, f64, usize) {
    let (n, d) = x.dim();
    let nf = n.max(1) as f64;
    let x_mean: Vec<f64> = (0..d).map(|j| x.column(j).sum() / nf).collect();
    let y_mean = y.iter().sum::<f64>() / nf;
    let mut xc = x.to_owned();
    for mut row in xc.rows_mut() {
        for (v, m) in row.iter_mut().zip(&x_mean) {
            *v -= m;
        }
    }
    let col_sq: Vec<f64> = (0..d)
        .map(|j| xc.column(j).iter().map(|v| v * v).sum())
        .collect();
    let mut residual: Vec<f64> = y.iter().map(|v| v - y_mean).collect();
    let mut w = vec![0.0; d];
    let mut sweeps = 0;
    for sweep in 0..max_iter {
        sweeps = sweep + 1;
        let mut max_change = 0.0f64;
        let mut max_w = 0.0f64;
        for j in 0..d {
            if col_sq[j] == 0.0 {
                continue;
            }
            let col = xc.column(j);
            let old = w[j];
            let rho: f64 =
                col.iter().zip(&residual).map(|(a, r)| a * r).sum::<f64>() + old * col_sq[j];
            let new = soft_threshold(rho, alpha * nf) / col_sq[j];
            if new != old {
                for (r, a) in residual.iter_mut().zip(col.iter()) {
                    *r -= (new - old) * a;
                }
                w[j] = new;
            }
            max_change = max_change.max((new - old).abs());
            max_w = max_w.max(new.abs());
        }
        if max_w == 0.0 || max_change / max_w < tol {
            break;
        }
    }
    let b = y_mean - w.iter().zip(&x_mean).map(|(w, m)| w * m).sum::<f64>();
    (w, b, sweeps)
}

fn soft_threshold(v: f64, t: f64) -> f64 {
    if v > t {
        v - t
    } else if v < -t {
        v + t
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn cholesky_solves_spd_system() {
        let a = array![[4.0, 2.0], [2.0, 3.0]];
        let x = cholesky_solve(&a, &[2.0, 1.0]).unwrap();
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
        assert!(cholesky_solve(&array![[1.0, 2.0], [2.0, 1.0]], &[1.0, 1.0]).is_none());
    }

    #[test]
    fn exact_fit_and_collinear_columns() {
        let x = array![[1.0, 2.0], [2.0, 4.0], [3.0, 6.0], [4.0, 8.0]];
        let y = [3.0, 5.0, 7.0, 9.0];
        let (w, b) = normal_equations(x.view(), &y, 0.0);
        for (row, t) in x.rows().into_iter().zip(y) {
            let p = row[0] * w[0] + row[1] * w[1] + b;
            assert!((p - t).abs() < 1e-6, "{p} vs {t}");
        }
    }

    #[test]
    fn lasso_matches_closed_form_on_orthogonal_design() {
        // With centred orthogonal columns of squared norm n, the lasso solution is the
        // least-squares one soft-thresholded by alpha.
        let x = array![[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]];
        let y = [3.0, 1.0, -1.0, -3.0];
        let (w, b, _) = lasso(x.view(), &y, 0.5, 100, 1e-10);
        assert!((w[0] - 1.5).abs() < 1e-9 && (w[1] - 0.5).abs() < 1e-9 && b.abs() < 1e-12);
        let (w, _, _) = lasso(x.view(), &y, 1.5, 100, 1e-10);
        assert!((w[0] - 0.5).abs() < 1e-9 && w[1] == 0.0);
    }
}
