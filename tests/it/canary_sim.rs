//! Simulated canary phases for the gate's error rates: per-request latencies with noise and
//! injected spikes go through the agent's histogram into per-window shadow reports, and
//! `perch::fleet::gates::judge` looks at the evidence after every window, as the host's
//! monitor does, until it decides or the phase times out. Used by tests/it/canary_gates.rs
//! (the acceptance: 100 phases per case) and benches/canary_gates.rs (the rates
//! docs/alerts.md quotes, over many more phases).
#![allow(dead_code)]

use perch::fleet::gates::{Gates, ShadowEvidence, Verdict, judge};
use perch::metrics::{LatencyHistogram, Percentiles, ShadowReport};

/// SplitMix64: small, seedable, good enough for simulation.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Exponential with this mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.uniform()).ln()
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
}

/// The noise on a device's timings (the stated model docs/alerts.md derives the defaults
/// under).
#[derive(Debug, Clone, Copy)]
pub struct Noise {
    /// Spread shared by both models on a request (input, cache state, clock frequency):
    /// log-normal with this sigma.
    pub shared_sigma: f64,
    /// Each model's own spread on a request: log-normal with this sigma.
    pub own_sigma: f64,
    /// Chance that a model's run is preempted, each model on each request independently.
    pub spike_chance: f64,
    /// Mean delay of a preemption, µs (exponential): a scheduler time slice on a busy CPU.
    pub spike_mean_us: f64,
    /// Chance that a window is spoilt for one model (picked at random): a burst from a CPU
    /// hog falls on a share of its runs drawn from `burst_share`, however the agent orders
    /// them.
    pub burst_chance: f64,
    /// Share of the spoilt model's runs in a spoilt window that the burst delays.
    pub burst_share: (f64, f64),
}

impl Noise {
    /// The noise the defaults are derived under: a busy device, much worse than what the
    /// agent measured under two CPU hogs and a build on this 2-core machine.
    pub const BUSY: Noise = Noise {
        shared_sigma: 0.3,
        own_sigma: 0.15,
        spike_chance: 0.05,
        spike_mean_us: 4000.0,
        burst_chance: 0.2,
        burst_share: (0.5, 1.0),
    };

    /// No noise at all.
    pub const NONE: Noise = Noise {
        shared_sigma: 0.0,
        own_sigma: 0.0,
        spike_chance: 0.0,
        spike_mean_us: 0.0,
        burst_chance: 0.0,
        burst_share: (0.0, 0.0),
    };
}

/// The probabilities of the four answers to a labelled request: both models right, only
/// the candidate, only the current model, neither.
#[derive(Debug, Clone, Copy)]
pub struct Cells {
    pub both: f64,
    pub shadow_only: f64,
    pub active_only: f64,
}

impl Cells {
    pub fn shadow_accuracy(&self) -> f64 {
        self.both + self.shadow_only
    }

    pub fn active_accuracy(&self) -> f64 {
        self.both + self.active_only
    }
}

/// One kind of canary phase.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    /// The current model's median latency, µs: log-uniform in this range, drawn per phase.
    pub active_us: (f64, f64),
    /// The candidate's latency over the current model's.
    pub slowdown: f64,
    /// Share of requests on which the candidate answers as the current model does.
    pub agreement: f64,
    /// Labels, if the app sends feedback on every request.
    pub cells: Option<Cells>,
    /// The candidate's error rate.
    pub error_rate: f64,
    /// Shadow requests per window (each canary's), uniform in this range.
    pub requests: (u32, u32),
    /// Windows after which the phase times out.
    pub max_windows: u32,
    pub noise: Noise,
}

/// How a phase ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    Promoted {
        windows: u32,
        requests: u64,
    },
    Rejected {
        windows: u32,
        requests: u64,
        reason: String,
    },
    TimedOut,
}

/// Counts of phase ends.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub promoted: u32,
    pub rejected: u32,
    pub timed_out: u32,
    /// Windows to a decision, summed over decided phases.
    pub windows: u64,
    /// Shadow requests (and labels, where every request has one) to each decision.
    pub requests: Vec<u64>,
    /// A reason given for a rejection, for the record.
    pub reasons: Vec<String>,
}

impl Tally {
    pub fn phases(&self) -> u32 {
        self.promoted + self.rejected + self.timed_out
    }

    /// The `q`-quantile of the shadow requests to a decision.
    pub fn requests_quantile(&self, q: f64) -> u64 {
        let mut v = self.requests.clone();
        v.sort_unstable();
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
        v.get(i).copied().unwrap_or(0)
    }

    pub fn mean_windows(&self) -> f64 {
        let decided = self.promoted + self.rejected;
        if decided == 0 {
            0.0
        } else {
            self.windows as f64 / f64::from(decided)
        }
    }
}

fn percentiles(h: &LatencyHistogram) -> Percentiles {
    let q = |p| {
        h.percentile(p)
            .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX))
    };
    Percentiles {
        p50: q(0.5),
        p95: q(0.95),
        p99: q(0.99),
    }
}

/// One window's shadow report, as an agent would send it.
pub fn window(case: &Case, active_us: f64, rng: &mut Rng) -> ShadowReport {
    let n = noise_requests(case, rng);
    let noise = case.noise;
    let (mut shadow_h, mut active_h) = (LatencyHistogram::new(), LatencyHistogram::new());
    // A burst spoils this window for one of the two models.
    let burst = rng.chance(noise.burst_chance).then(|| {
        (
            rng.chance(0.5),
            rng.between(noise.burst_share.0, noise.burst_share.1),
        )
    });
    let mut r = ShadowReport {
        model: [1; 8],
        requests: n,
        memory_kib: 64,
        active_memory_kib: 64,
        ..ShadowReport::default()
    };
    for _ in 0..n {
        let shared = (noise.shared_sigma * rng.normal()).exp();
        let time = |base: f64, on_shadow: bool, rng: &mut Rng| {
            let mut us = base * shared * (noise.own_sigma * rng.normal()).exp();
            if rng.chance(noise.spike_chance) {
                us += rng.exponential(noise.spike_mean_us);
            }
            if let Some((shadow_hit, share)) = burst
                && shadow_hit == on_shadow
                && rng.chance(share)
            {
                us += rng.exponential(noise.spike_mean_us);
            }
            us.round().max(1.0) as u64
        };
        active_h.record(time(active_us, false, rng));
        shadow_h.record(time(active_us * case.slowdown, true, rng));
        if rng.chance(case.error_rate) {
            r.errors += 1;
            continue;
        }
        if rng.chance(case.agreement) {
            r.agreed += 1;
        }
        if let Some(c) = case.cells {
            r.feedback += 1;
            let u = rng.uniform();
            if u < c.both {
                r.feedback_both_correct += 1;
                r.feedback_correct += 1;
                r.active_feedback_correct += 1;
            } else if u < c.both + c.shadow_only {
                r.feedback_correct += 1;
            } else if u < c.both + c.shadow_only + c.active_only {
                r.active_feedback_correct += 1;
            }
        }
    }
    r.latency_us = percentiles(&shadow_h);
    r.active_latency_us = percentiles(&active_h);
    r
}

fn noise_requests(case: &Case, rng: &mut Rng) -> u32 {
    let (lo, hi) = case.requests;
    lo + (rng.next_u64() % u64::from(hi - lo + 1)) as u32
}

/// One phase: a window at a time, judged after each, until a decision or the timeout.
pub fn phase(gates: &Gates, case: &Case, rng: &mut Rng) -> End {
    let (lo, hi) = case.active_us;
    let active_us = (lo.ln() + (hi.ln() - lo.ln()) * rng.uniform()).exp();
    let mut evidence = ShadowEvidence::default();
    for w in 1..=case.max_windows {
        evidence.add(&window(case, active_us, rng));
        let requests = evidence.requests;
        match judge(gates, &evidence) {
            Verdict::Promote(_) => {
                return End::Promoted {
                    windows: w,
                    requests,
                };
            }
            Verdict::Reject(reason) => {
                return End::Rejected {
                    windows: w,
                    requests,
                    reason,
                };
            }
            Verdict::Wait(_) => {}
        }
    }
    End::TimedOut
}

/// `phases` phases of `case` from `seed`.
pub fn run(gates: &Gates, case: &Case, phases: u32, seed: u64) -> Tally {
    let mut rng = Rng::new(seed);
    let mut t = Tally::default();
    for _ in 0..phases {
        match phase(gates, case, &mut rng) {
            End::Promoted { windows, requests } => {
                t.promoted += 1;
                t.windows += u64::from(windows);
                t.requests.push(requests);
            }
            End::Rejected {
                windows,
                requests,
                reason,
            } => {
                t.rejected += 1;
                t.windows += u64::from(windows);
                t.requests.push(requests);
                if t.reasons.len() < 3 {
                    t.reasons.push(reason);
                }
            }
            End::TimedOut => t.timed_out += 1,
        }
    }
    t
}

/// The same classifier quality for both: 90 % right, 6 % of labels right for one model
/// only (3 % each way).
pub const SAME_QUALITY: Cells = Cells {
    both: 0.87,
    shadow_only: 0.03,
    active_only: 0.03,
};

/// The candidate 5 points less accurate: 85 % against 90 %.
pub const FIVE_POINTS_WORSE: Cells = Cells {
    both: 0.82,
    shadow_only: 0.03,
    active_only: 0.08,
};

/// A model retrained for drifted inputs against the current one (the demo): 99 % against
/// 79 %.
pub const RETRAINED: Cells = Cells {
    both: 0.785,
    shadow_only: 0.205,
    active_only: 0.005,
};

/// The cases of the acceptance and of docs/alerts.md's table.
pub fn cases() -> Vec<Case> {
    let base = Case {
        name: "",
        active_us: (5.0, 20_000.0),
        slowdown: 1.0,
        agreement: 0.97,
        cells: None,
        error_rate: 0.0,
        requests: (100, 400),
        max_windows: 20,
        noise: Noise::BUSY,
    };
    vec![
        Case {
            name: "good, no labels (5 us - 20 ms)",
            ..base
        },
        Case {
            name: "good, labels on every request",
            agreement: 0.93,
            cells: Some(SAME_QUALITY),
            ..base
        },
        Case {
            name: "good, retrained for drift (agreement 0.79)",
            agreement: 0.79,
            cells: Some(RETRAINED),
            ..base
        },
        Case {
            name: "good, 3x slower at 5-100 us",
            active_us: (5.0, 100.0),
            slowdown: 3.0,
            ..base
        },
        Case {
            name: "5x slower at 1-20 ms",
            active_us: (1000.0, 20_000.0),
            slowdown: 5.0,
            ..base
        },
        Case {
            name: "5 points less accurate, labels on every request",
            agreement: 0.9,
            cells: Some(FIVE_POINTS_WORSE),
            ..base
        },
        Case {
            name: "agreement 0.80, no labels",
            agreement: 0.8,
            ..base
        },
        Case {
            name: "good, labels, 10 % of them right for one only",
            agreement: 0.9,
            cells: Some(Cells {
                both: 0.85,
                shadow_only: 0.05,
                active_only: 0.05,
            }),
            ..base
        },
        Case {
            name: "good, half the windows spoilt",
            noise: Noise {
                burst_chance: 0.5,
                ..Noise::BUSY
            },
            ..base
        },
        Case {
            name: "5x slower at 1-20 ms, half the windows spoilt",
            active_us: (1000.0, 20_000.0),
            slowdown: 5.0,
            noise: Noise {
                burst_chance: 0.5,
                ..Noise::BUSY
            },
            ..base
        },
        Case {
            name: "error rate 5 %",
            error_rate: 0.05,
            ..base
        },
        Case {
            name: "good, error rate 1 %",
            error_rate: 0.01,
            ..base
        },
    ]
}
