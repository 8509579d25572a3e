//! The interval statistics the gates decide with: Wilson's score interval of a proportion,
//! Newcombe's hybrid intervals of a difference of proportions (independent or paired), and
//! the normal quantile that turns a confidence into standard errors. Pure functions of
//! counts, checked against the published examples.

/// Wilson's score interval of a proportion `k / n` with `z` standard errors each side;
/// `(0, 1)` when `n` is 0.
pub fn wilson_bounds(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = (k as f64 / n).clamp(0.0, 1.0);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Newcombe's hybrid score interval (1998, method 10) of `p1 - p2` for two proportions
/// with correlation `phi`, from the Wilson intervals of each.
fn newcombe(p1: f64, (l1, u1): (f64, f64), p2: f64, (l2, u2): (f64, f64), phi: f64) -> (f64, f64) {
    let d = p1 - p2;
    let below = ((p1 - l1).powi(2) - 2.0 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2).powi(2))
        .max(0.0)
        .sqrt();
    let above = ((u1 - p1).powi(2) - 2.0 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2).powi(2))
        .max(0.0)
        .sqrt();
    ((d - below).max(-1.0), (d + above).min(1.0))
}

/// Interval of `shadow - active` accuracy on the same `n` labels, of which the shadow got
/// `shadow` right, the active model `active`, and both `both`: Newcombe's interval for
/// paired proportions (the 2×2 table's correlation narrows it when the two models mostly
/// agree). `(-1, 1)` without labels.
pub fn paired_difference_bounds(n: u64, shadow: u64, active: u64, both: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (-1.0, 1.0);
    }
    let (s, a) = (shadow.min(n), active.min(n));
    let both = both.clamp((s + a).saturating_sub(n), s.min(a));
    // Cells: both right, only the shadow, only the active model, neither.
    let (c11, c10, c01) = (both as f64, (s - both) as f64, (a - both) as f64);
    let c00 = n as f64 - c11 - c10 - c01;
    let nf = n as f64;
    let margins = (c11 + c10) * (c01 + c00) * (c11 + c01) * (c10 + c00);
    // The correlation of the two answers, with Newcombe's correction that shrinks a positive
    // one by n/2 (Altman et al., Statistics with Confidence, 2000, p. 52).
    let cross = c11 * c00 - c10 * c01;
    let cross = if cross > nf / 2.0 {
        cross - nf / 2.0
    } else {
        cross.min(0.0)
    };
    let phi = if margins > 0.0 {
        cross / margins.sqrt()
    } else {
        0.0
    };
    newcombe(
        s as f64 / nf,
        wilson_bounds(s, n, z),
        a as f64 / nf,
        wilson_bounds(a, n, z),
        phi,
    )
}

/// Interval of `k1 / n1 - k2 / n2` for independent samples (Newcombe's method 10).
pub fn difference_bounds(k1: u64, n1: u64, k2: u64, n2: u64, z: f64) -> (f64, f64) {
    if n1 == 0 || n2 == 0 {
        return (-1.0, 1.0);
    }
    let (k1, k2) = (k1.min(n1), k2.min(n2));
    newcombe(
        k1 as f64 / n1 as f64,
        wilson_bounds(k1, n1, z),
        k2 as f64 / n2 as f64,
        wilson_bounds(k2, n2, z),
        0.0,
    )
}

/// The standard normal quantile of `p` in (0, 1) (Acklam's rational approximation, relative
/// error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p <= 0.0 {
        f64::NEG_INFINITY
    } else if p >= 1.0 {
        f64::INFINITY
    } else if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::gates::Gates;

    const Z95: f64 = 1.959_963_984_540_054;

    fn close(a: (f64, f64), b: (f64, f64)) -> bool {
        (a.0 - b.0).abs() < 1e-4 && (a.1 - b.1).abs() < 1e-4
    }

    #[test]
    fn normal_quantiles_match_the_tables() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, Z95),
            (0.99, 2.326_347_874),
            (0.995, 2.575_829_304),
            (0.999, 3.090_232_306),
            (0.01, -2.326_347_874),
        ] {
            assert!((normal_quantile(p) - z).abs() < 1e-8, "{p}");
        }
        assert!((Gates::DEFAULT.z() - 2.326_347_874).abs() < 1e-8);
    }

    #[test]
    fn intervals_match_newcombes_published_examples() {
        // Newcombe, Stat. Med. 17 (1998) 857-872: Wilson intervals.
        assert!(close(wilson_bounds(81, 263, Z95), (0.2553, 0.3662)));
        assert!(close(wilson_bounds(0, 10, Z95), (0.0, 0.2775)));
        // Newcombe, Stat. Med. 17 (1998) 873-890, method 10: 56/70 - 48/80.
        assert!(close(
            difference_bounds(56, 70, 48, 80, Z95),
            (0.0524, 0.3339)
        ));
        // Altman et al., Statistics with Confidence (2000), table 6.2: paired cells 14, 5,
        // 0, 22 (both, first only, second only, neither).
        let (lo, hi) = paired_difference_bounds(41, 19, 14, 14, Z95);
        assert!(close((lo, hi), (0.0115, 0.2265)), "{lo} {hi}");
        assert_eq!(wilson_bounds(3, 0, Z95), (0.0, 1.0));
        assert_eq!(paired_difference_bounds(0, 0, 0, 0, Z95), (-1.0, 1.0));
    }

    /// A small deterministic generator for the coverage checks.
    struct SplitMix(u64);
    impl SplitMix {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn the_paired_interval_covers_the_true_difference_as_often_as_it_says() {
        // Two classifiers that mostly agree, 90 % and 87 % accurate, on n labels: each bound
        // may miss on its side at most about 1 % of the time (99 % one-sided).
        let mut rng = SplitMix(7);
        let z = Gates::DEFAULT.z();
        for n in [30u64, 200, 2000] {
            let (mut low_misses, mut high_misses) = (0, 0);
            let trials = 2000;
            for _ in 0..trials {
                let (mut s, mut a, mut both) = (0, 0, 0);
                for _ in 0..n {
                    // Cells: both right 0.85, active only 0.05, shadow only 0.02, none 0.08.
                    let u = rng.next();
                    let (sr, ar) = if u < 0.85 {
                        (true, true)
                    } else if u < 0.90 {
                        (false, true)
                    } else if u < 0.92 {
                        (true, false)
                    } else {
                        (false, false)
                    };
                    s += u64::from(sr);
                    a += u64::from(ar);
                    both += u64::from(sr && ar);
                }
                let (lo, hi) = paired_difference_bounds(n, s, a, both, z);
                let truth = 0.87 - 0.90;
                low_misses += u32::from(lo > truth);
                high_misses += u32::from(hi < truth);
            }
            // 1 % of 2000 is 20; allow sampling noise (the binomial's sd is 4.5).
            assert!(
                low_misses <= 35,
                "n {n}: lower bound above the truth {low_misses} times"
            );
            assert!(
                high_misses <= 35,
                "n {n}: upper bound below the truth {high_misses} times"
            );
        }
    }
}
