//! The canary gate: what a candidate must show in shadow before it is promoted ([`Gates`]),
//! the evidence the canaries' reports add up to ([`ShadowEvidence`]), and the decision
//! ([`judge`]): promote, reject, or keep running because the evidence is not yet enough.
//! After promotion, [`watch`] decides whether the group goes back to its previous model.
//!
//! Each gate names the effect it rejects and decides only on enough evidence:
//! - **quality**, on labels: the candidate's feedback accuracy more than
//!   `max_accuracy_drop` below the current model's on the same labels. Decided by a
//!   confidence interval of the paired difference (Newcombe's hybrid score interval, built on
//!   Wilson intervals): rejected when even its upper bound is below `-max_accuracy_drop`,
//!   passed when its lower bound is above.
//! - **quality**, without labels: agreement with the current model below `min_agreement`,
//!   decided by the Wilson interval of the agreement the same way.
//! - **errors**: an error rate above `max_error_rate` (Wilson interval).
//! - **latency**: a median latency both `max_latency_ratio` times and
//!   `max_latency_increase_us` above the current model's. Each report window with enough
//!   shadow requests votes with its two medians (both models timed on the same requests),
//!   slower or not; the gate decides when one side leads by `latency_lead_windows` votes (a
//!   sequential probability ratio test on the votes), so windows that a burst of
//!   preemptions spoilt only make it wait for more.
//! - **memory**: a heap more than `max_memory_ratio` times the current model's (measured
//!   once, when the model loads: no noise to wait out).
//!
//! Every interval (their arithmetic is in `stats`, re-exported here) has one-sided
//! confidence `confidence`. docs/alerts.md gives the rules with
//! the error rates of their defaults; `cargo bench --bench canary_gates` measures them.

mod stats;

pub use stats::{difference_bounds, normal_quantile, paired_difference_bounds, wilson_bounds};

use crate::metrics::ShadowReport;
use serde::{Deserialize, Serialize};

/// What a candidate must show on the canaries before it is promoted, and how it is watched
/// afterwards: the `[rollout]` table of the alert rules, and `perch-host rollout`'s flags.
/// Every field has a default ([`Gates::DEFAULT`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
#[command(next_help_heading = "Gates (the keys of the rules file's [rollout] table)")]
pub struct Gates {
    /// Shadow requests (all canaries together) before any gate is judged.
    #[arg(long, value_name = "N", default_value_t = Gates::DEFAULT.min_shadow_requests)]
    pub min_shadow_requests: u32,
    /// One-sided confidence of the bounds the gates decide with, in [0.5, 1): higher waits
    /// for more evidence and is wrong less often.
    #[arg(long, value_name = "P", default_value_t = Gates::DEFAULT.confidence)]
    pub confidence: f64,
    /// Without labels, the candidate must give the current model's answer on at least this
    /// share of requests (a fraction in [0, 1]).
    #[arg(long, value_name = "FRACTION", default_value_t = Gates::DEFAULT.min_agreement)]
    pub min_agreement: f64,
    /// Labelled shadow answers from which the candidate is judged on feedback accuracy
    /// instead of agreement (at least 1).
    #[arg(long, value_name = "N", default_value_t = Gates::DEFAULT.min_feedback)]
    pub min_feedback: u32,
    /// How far the feedback accuracy may fall below the current model's, on the canaries
    /// and after promotion (a fraction in [0, 1]).
    #[arg(long, value_name = "FRACTION", default_value_t = Gates::DEFAULT.max_accuracy_drop)]
    pub max_accuracy_drop: f64,
    /// The candidate fails on latency when its median is both more than this many times the
    /// current model's and more than max_latency_increase_us above it (above 0).
    #[arg(long, value_name = "RATIO", default_value_t = Gates::DEFAULT.max_latency_ratio)]
    pub max_latency_ratio: f64,
    /// Microseconds of median latency the candidate may add whatever the ratio: a slowdown
    /// smaller than this never fails the latency gate.
    #[arg(long, value_name = "US", default_value_t = Gates::DEFAULT.max_latency_increase_us)]
    pub max_latency_increase_us: u32,
    /// Each report window with at least 10 shadow requests votes on latency, slower or not;
    /// the gate decides when one side has this many votes more than the other (at least 1).
    #[arg(long, value_name = "N", default_value_t = Gates::DEFAULT.latency_lead_windows)]
    pub latency_lead_windows: u32,
    /// Shadow model heap over the current model's, at most (above 0).
    #[arg(long, value_name = "RATIO", default_value_t = Gates::DEFAULT.max_memory_ratio)]
    pub max_memory_ratio: f64,
    /// Error rate of the shadow, and of the group after promotion, at most (a fraction in
    /// [0, 1)).
    #[arg(long, value_name = "FRACTION", default_value_t = Gates::DEFAULT.max_error_rate)]
    pub max_error_rate: f64,
    /// Seconds a canary phase may run without a decision before the rollout is aborted
    /// (at least 1).
    #[arg(
        long = "canary-timeout",
        value_name = "SECONDS",
        default_value_t = Gates::DEFAULT.canary_timeout_s
    )]
    pub canary_timeout_s: u64,
    /// Seconds the group's quality is watched after promotion.
    #[arg(long = "watch", value_name = "SECONDS", default_value_t = Gates::DEFAULT.watch_s)]
    pub watch_s: u64,
}

/// Windows with fewer shadow requests than this do not vote on latency: a median of a
/// handful of timings is one unlucky request away from any value.
pub const MIN_WINDOW_REQUESTS: u32 = 10;

impl Gates {
    /// The defaults; docs/alerts.md derives them.
    pub const DEFAULT: Gates = Gates {
        min_shadow_requests: 200,
        confidence: 0.99,
        min_agreement: 0.9,
        min_feedback: 20,
        max_accuracy_drop: 0.02,
        max_latency_ratio: 3.0,
        max_latency_increase_us: 500,
        latency_lead_windows: 5,
        max_memory_ratio: 3.0,
        max_error_rate: 0.02,
        canary_timeout_s: 1200,
        watch_s: 120,
    };

    /// Checks every value's range.
    ///
    /// # Errors
    /// The first gate out of range: its key (as in the `[rollout]` table), its value, and
    /// what it must be.
    pub fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        for (key, v) in [
            ("min_agreement", self.min_agreement),
            ("max_accuracy_drop", self.max_accuracy_drop),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err((key, v.to_string(), "a fraction in [0, 1]"));
            }
        }
        if !(0.0..1.0).contains(&self.max_error_rate) {
            return Err((
                "max_error_rate",
                self.max_error_rate.to_string(),
                "a fraction in [0, 1)",
            ));
        }
        if !(0.5..1.0).contains(&self.confidence) {
            return Err((
                "confidence",
                self.confidence.to_string(),
                "in [0.5, 1) (0.99 is 99 %)",
            ));
        }
        for (key, v) in [
            ("max_latency_ratio", self.max_latency_ratio),
            ("max_memory_ratio", self.max_memory_ratio),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err((key, v.to_string(), "a positive ratio"));
            }
        }
        for (key, v) in [
            ("min_feedback", u64::from(self.min_feedback)),
            ("latency_lead_windows", u64::from(self.latency_lead_windows)),
            ("canary_timeout_s", self.canary_timeout_s),
        ] {
            if v == 0 {
                return Err((key, v.to_string(), "at least 1"));
            }
        }
        Ok(())
    }

    /// The normal quantile of [`Gates::confidence`]: how many standard errors a bound lies
    /// from its estimate.
    pub fn z(&self) -> f64 {
        normal_quantile(self.confidence.clamp(0.5, 0.999_999))
    }
}

impl Default for Gates {
    fn default() -> Self {
        Gates::DEFAULT
    }
}

/// One report window's latency medians, both models on the same requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WindowLatency {
    /// Shadow requests in the window.
    pub requests: u32,
    /// The candidate's median latency, µs.
    pub p50_us: u32,
    /// The current model's median latency on the same requests, µs.
    pub active_p50_us: u32,
}

/// What the canaries' shadow runs reported since a rollout started: the sums of their
/// reports, and each window's latency medians.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShadowEvidence {
    /// Shadow requests.
    pub requests: u64,
    /// Failed shadow requests.
    pub errors: u64,
    /// Shadow answers equal to the active model's.
    pub agreed: u64,
    /// Largest shadow heap reported, KiB.
    pub memory_kib: u32,
    /// Largest active-model heap reported, KiB.
    pub active_memory_kib: u32,
    /// Labelled feedback on requests the shadow also answered.
    pub feedback: u64,
    /// Of those, right according to the shadow.
    pub feedback_correct: u64,
    /// Of those, right according to the active model.
    pub active_feedback_correct: u64,
    /// Of those, right according to both.
    pub feedback_both_correct: u64,
    /// The latency medians of each window with at least [`MIN_WINDOW_REQUESTS`] shadow
    /// requests, in the order added.
    #[serde(skip)]
    pub windows: Vec<WindowLatency>,
}

impl ShadowEvidence {
    /// The evidence of `reports`.
    pub fn from_reports<'a>(reports: impl IntoIterator<Item = &'a ShadowReport>) -> Self {
        let mut e = ShadowEvidence::default();
        for r in reports {
            e.add(r);
        }
        e
    }

    /// Adds one window's report. Counts that contradict each other (a hostile or broken
    /// device) are clamped to what is possible.
    pub fn add(&mut self, r: &ShadowReport) {
        let errors = r.errors.min(r.requests);
        let answered = r.requests - errors;
        self.requests += u64::from(r.requests);
        self.errors += u64::from(errors);
        self.agreed += u64::from(r.agreed.min(answered));
        self.memory_kib = self.memory_kib.max(r.memory_kib);
        self.active_memory_kib = self.active_memory_kib.max(r.active_memory_kib);
        let n = r.feedback;
        let (s, a) = (r.feedback_correct.min(n), r.active_feedback_correct.min(n));
        // Both right: at least what the two counts force to overlap, at most the smaller.
        let both = r
            .feedback_both_correct
            .clamp((s + a).saturating_sub(n), s.min(a));
        self.feedback += u64::from(n);
        self.feedback_correct += u64::from(s);
        self.active_feedback_correct += u64::from(a);
        self.feedback_both_correct += u64::from(both);
        if r.requests >= MIN_WINDOW_REQUESTS && r.latency_us.p50 > 0 && r.active_latency_us.p50 > 0
        {
            self.windows.push(WindowLatency {
                requests: r.requests,
                p50_us: r.latency_us.p50,
                active_p50_us: r.active_latency_us.p50,
            });
        }
    }

    /// Agreement among the shadow answers that did not fail.
    pub fn agreement(&self) -> f64 {
        ratio(self.agreed, self.requests.saturating_sub(self.errors))
    }

    /// Shadow and active feedback accuracy on the same labels.
    pub fn accuracies(&self) -> Option<(f64, f64)> {
        (self.feedback > 0).then(|| {
            (
                ratio(self.feedback_correct, self.feedback),
                ratio(self.active_feedback_correct, self.feedback),
            )
        })
    }

    /// The medians over the voting windows of the candidate's and the current model's
    /// per-window median latency, µs.
    pub fn latency_medians(&self) -> Option<(f64, f64)> {
        let med = |f: fn(&WindowLatency) -> u32| {
            let mut v: Vec<u32> = self.windows.iter().map(f).collect();
            median(&mut v)
        };
        Some((med(|w| w.p50_us)?, med(|w| w.active_p50_us)?))
    }

    /// The figures a rollout records (`results.shadow`): the sums, and the latency medians.
    pub fn summary(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        let medians = self.latency_medians();
        v["latency_windows"] = self.windows.len().into();
        v["p50_us"] = medians.map(|m| m.0).into();
        v["active_p50_us"] = medians.map(|m| m.1).into();
        v
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn median(v: &mut [u32]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        f64::from(v[n / 2])
    } else {
        (f64::from(v[n / 2 - 1]) + f64::from(v[n / 2])) / 2.0
    })
}

/// The outcome of [`judge`].
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every gate passed: promote. Says what each showed.
    Promote(String),
    /// At least one gate failed beyond its bound: reject. Names each that failed.
    Reject(String),
    /// No gate failed, but at least one lacks the evidence to pass: keep the canaries
    /// running (up to the timeout). Says what is missing.
    Wait(String),
}

/// One gate's finding.
enum Finding {
    Pass(String),
    Fail(String),
    Wait(String),
}

/// Judges a canary phase on its evidence. Pure: the same evidence gives the same verdict.
pub fn judge(gates: &Gates, e: &ShadowEvidence) -> Verdict {
    if e.requests < u64::from(gates.min_shadow_requests) {
        return Verdict::Wait(format!(
            "{} of the {} shadow requests needed before the gates are judged",
            e.requests, gates.min_shadow_requests
        ));
    }
    let z = gates.z();
    let findings = [
        quality(gates, e, z),
        errors(gates, e, z),
        latency(gates, e),
        memory(gates, e),
    ];
    let pick = |f: fn(&Finding) -> Option<&String>| -> Vec<String> {
        findings.iter().filter_map(f).cloned().collect()
    };
    let failed = pick(|f| match f {
        Finding::Fail(s) => Some(s),
        _ => None,
    });
    if !failed.is_empty() {
        return Verdict::Reject(failed.join("; "));
    }
    let waiting = pick(|f| match f {
        Finding::Wait(s) => Some(s),
        _ => None,
    });
    if !waiting.is_empty() {
        return Verdict::Wait(waiting.join("; "));
    }
    Verdict::Promote(
        pick(|f| match f {
            Finding::Pass(s) => Some(s),
            _ => None,
        })
        .join("; "),
    )
}

fn pct(c: f64) -> String {
    format!("{:.0} %", c * 100.0)
}

/// Labels when there are `min_feedback` of them, else agreement.
fn quality(g: &Gates, e: &ShadowEvidence, z: f64) -> Finding {
    if e.feedback >= u64::from(g.min_feedback) {
        let (shadow, active) = e.accuracies().unwrap_or((0.0, 0.0));
        let (lo, hi) = paired_difference_bounds(
            e.feedback,
            e.feedback_correct,
            e.active_feedback_correct,
            e.feedback_both_correct,
            z,
        );
        let text = format!(
            "feedback accuracy {shadow:.3} vs the current model's {active:.3} on the same {} labels: difference {:+.3}, {} bounds [{lo:+.3}, {hi:+.3}]",
            e.feedback,
            shadow - active,
            pct(g.confidence)
        );
        let floor = -g.max_accuracy_drop;
        return if hi < floor {
            Finding::Fail(format!("{text}, all below -{:.3}", g.max_accuracy_drop))
        } else if lo > floor {
            Finding::Pass(text)
        } else {
            Finding::Wait(format!(
                "{text}, not yet all above or all below -{:.3}: more labels needed",
                g.max_accuracy_drop
            ))
        };
    }
    let answered = e.requests.saturating_sub(e.errors);
    let (lo, hi) = wilson_bounds(e.agreed, answered, z);
    let text = format!(
        "agreement {:.3} over {answered} answers, {} bounds [{lo:.3}, {hi:.3}]",
        e.agreement(),
        pct(g.confidence)
    );
    if lo >= g.min_agreement {
        Finding::Pass(text)
    } else if hi < g.min_agreement && e.feedback == 0 {
        Finding::Fail(format!("{text}, all below {:.3}", g.min_agreement))
    } else if hi < g.min_agreement {
        // Labels are coming: a candidate retrained for new inputs is meant to disagree
        // where the current model is wrong, and the labels will say which is right.
        Finding::Wait(format!(
            "{text}, below {:.3}; {} of the {} labels that judge accuracy instead",
            g.min_agreement, e.feedback, g.min_feedback
        ))
    } else {
        Finding::Wait(format!(
            "{text}, not yet all above or all below {:.3}: more requests needed",
            g.min_agreement
        ))
    }
}

fn errors(g: &Gates, e: &ShadowEvidence, z: f64) -> Finding {
    let (lo, hi) = wilson_bounds(e.errors, e.requests, z);
    let text = format!(
        "error rate {:.3} over {} requests, {} bounds [{lo:.3}, {hi:.3}]",
        ratio(e.errors, e.requests),
        e.requests,
        pct(g.confidence)
    );
    if lo > g.max_error_rate {
        Finding::Fail(format!("shadow {text}, all above {:.3}", g.max_error_rate))
    } else if hi <= g.max_error_rate {
        Finding::Pass(text)
    } else {
        Finding::Wait(format!(
            "{text}, not yet all below or all above {:.3}: more requests needed",
            g.max_error_rate
        ))
    }
}

fn latency(g: &Gates, e: &ShadowEvidence) -> Finding {
    let n = e.windows.len();
    let slow = e
        .windows
        .iter()
        .filter(|w| {
            let (s, a) = (f64::from(w.p50_us), f64::from(w.active_p50_us));
            s > g.max_latency_ratio * a && s - a > f64::from(g.max_latency_increase_us)
        })
        .count();
    let fast = n - slow;
    let lead = g.latency_lead_windows as usize;
    let text = match e.latency_medians() {
        Some((s, a)) => format!(
            "median latency {s:.0} us vs the current model's {a:.0} us ({:.2}x, {:+.0} us; medians over {n} windows), {slow} of {n} windows more than {:.2}x and {} us slower",
            if a > 0.0 { s / a } else { 0.0 },
            s - a,
            g.max_latency_ratio,
            g.max_latency_increase_us
        ),
        None => format!("latency: no report window with {MIN_WINDOW_REQUESTS} shadow requests yet"),
    };
    if slow >= fast + lead {
        Finding::Fail(text)
    } else if fast >= slow + lead {
        Finding::Pass(text)
    } else {
        Finding::Wait(format!("{text}: one side must lead by {lead} windows"))
    }
}

fn memory(g: &Gates, e: &ShadowEvidence) -> Finding {
    if e.active_memory_kib == 0 {
        return Finding::Pass("memory not measured".into());
    }
    let r = f64::from(e.memory_kib) / f64::from(e.active_memory_kib);
    let text = format!(
        "memory {} KiB vs the current model's {} KiB ({r:.2}x)",
        e.memory_kib, e.active_memory_kib
    );
    if r > g.max_memory_ratio {
        Finding::Fail(format!("{text}, above {:.2}x", g.max_memory_ratio))
    } else {
        Finding::Pass(text)
    }
}

/// The quality a promoted candidate is held to: the accuracy it showed in shadow (or the
/// previous model's recent accuracy), and how many labels that figure rests on (`None` when
/// it is a recorded test accuracy, taken as exact).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    /// Accuracy, 0..=1.
    pub accuracy: f64,
    /// Labels behind it.
    pub labels: Option<u64>,
}

/// What the group reported after promotion: labelled feedback and requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QualityTotals {
    /// Labels received.
    pub feedback: u64,
    /// Labels that matched the prediction.
    pub correct: u64,
    /// Requests served.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
}

/// Whether a promoted candidate must be rolled back, and why: its feedback accuracy is
/// more than `max_accuracy_drop` below the baseline beyond the confidence bound (Newcombe's
/// interval of the difference of two independent proportions; Wilson's when the baseline is
/// exact), or its error rate is above `max_error_rate` beyond the bound. `None` while neither
/// is shown.
pub fn watch(gates: &Gates, baseline: Option<Baseline>, q: &QualityTotals) -> Option<String> {
    let z = gates.z();
    if let Some(base) = baseline
        && q.feedback > 0
    {
        let acc = ratio(q.correct.min(q.feedback), q.feedback);
        let hi = match base.labels {
            Some(n0) if n0 > 0 => {
                let k0 = (base.accuracy.clamp(0.0, 1.0) * n0 as f64).round() as u64;
                difference_bounds(q.correct.min(q.feedback), q.feedback, k0, n0, z).1
            }
            _ => wilson_bounds(q.correct.min(q.feedback), q.feedback, z).1 - base.accuracy,
        };
        if hi < -gates.max_accuracy_drop {
            return Some(format!(
                "feedback accuracy {acc:.3} over {} labels is more than {:.3} below {:.3} ({} upper bound of the difference {hi:+.3})",
                q.feedback,
                gates.max_accuracy_drop,
                base.accuracy,
                pct(gates.confidence)
            ));
        }
    }
    let (lo, _) = wilson_bounds(q.errors.min(q.requests), q.requests, z);
    if lo > gates.max_error_rate {
        return Some(format!(
            "error rate {:.3} over {} requests is above {:.3} ({} lower bound {lo:.3})",
            ratio(q.errors, q.requests),
            q.requests,
            gates.max_error_rate,
            pct(gates.confidence)
        ));
    }
    None
}

#[cfg(test)]
mod tests;
