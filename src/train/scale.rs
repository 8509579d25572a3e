//! Feature scaling learned on training data and baked into the exported model as its first
//! layer ([`Layer::Standardize`]), so the device takes raw features.

use crate::graph::Layer;
use ndarray::{Array2, ArrayView2, Axis};

/// Which scaling to learn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scaling {
    /// No scaling: the model takes the features as they are.
    #[default]
    None,
    /// Zero mean, unit (population) standard deviation; constant features are only centred.
    Standard,
    /// Each feature mapped onto `[0, 1]` by its training minimum and maximum; constant
    /// features are only shifted.
    MinMax,
}

impl Scaling {
    /// Parses `none`, `standard` or `minmax`.
    pub fn from_name(name: &str) -> Option<Scaling> {
        match name.to_ascii_lowercase().as_str() {
            "none" => Some(Scaling::None),
            "standard" | "standardize" => Some(Scaling::Standard),
            "minmax" | "min-max" => Some(Scaling::MinMax),
            _ => None,
        }
    }
}

/// A learned per-feature affine map `(x - offset) * scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct Scaler {
    /// Per-feature offset, subtracted first (the mean, or the minimum).
    pub offset: Vec<f64>,
    /// Per-feature factor, multiplied second (1 / std, or 1 / range; 1 for a constant feature).
    pub scale: Vec<f64>,
}

impl Scaler {
    /// Learns `scaling` on the rows of `x`; `None` for [`Scaling::None`].
    pub fn fit(scaling: Scaling, x: ArrayView2<'_, f64>) -> Option<Scaler> {
        let (offset, scale) = match scaling {
            Scaling::None => return None,
            Scaling::Standard => x
                .axis_iter(Axis(1))
                .map(|c| {
                    let n = c.len().max(1) as f64;
                    let mean = c.sum() / n;
                    let std = (c.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
                    (mean, if std > 1e-12 { 1.0 / std } else { 1.0 })
                })
                .unzip(),
            Scaling::MinMax => x
                .axis_iter(Axis(1))
                .map(|c| {
                    let lo = c.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = c.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let lo = if lo.is_finite() { lo } else { 0.0 };
                    let range = hi - lo;
                    (lo, if range > 1e-12 { 1.0 / range } else { 1.0 })
                })
                .unzip(),
        };
        Some(Scaler { offset, scale })
    }

    /// Applies the map to every row.
    pub fn transform(&self, x: ArrayView2<'_, f64>) -> Array2<f64> {
        let mut out = x.to_owned();
        for mut row in out.rows_mut() {
            for ((v, o), s) in row.iter_mut().zip(&self.offset).zip(&self.scale) {
                *v = (*v - o) * s;
            }
        }
        out
    }

    /// The equivalent graph layer.
    pub fn layer(&self) -> Layer {
        Layer::Standardize {
            offset: self.offset.iter().map(|&v| v as f32).collect(),
            scale: self.scale.iter().map(|&v| v as f32).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn standard_and_minmax() {
        let x = array![[1.0, 5.0], [3.0, 5.0]];
        let s = Scaler::fit(Scaling::Standard, x.view()).unwrap();
        assert_eq!(s.transform(x.view()), array![[-1.0, 0.0], [1.0, 0.0]]);
        let m = Scaler::fit(Scaling::MinMax, x.view()).unwrap();
        assert_eq!(m.transform(x.view()), array![[0.0, 0.0], [1.0, 0.0]]);
        assert!(Scaler::fit(Scaling::None, x.view()).is_none());
    }
}
