//! The canary gate's error rates under the noise model of tests/it/canary_sim.rs (what
//! docs/alerts.md quotes): for each case, how many simulated canary phases end promoted,
//! rejected, or timed out, and after how many report windows and shadow requests (a
//! markdown table).
//!
//! `cargo bench --bench canary_gates [-- PHASES [CONFIDENCE]]` (default 10,000 phases per
//! case and the default gates; the simulation is deterministic, seeded per case).
//! `--profile dev` skips building the dependencies optimized: the simulation is small.

#[path = "../tests/it/canary_sim.rs"]
mod canary_sim;

use canary_sim::{Noise, cases, run};
use perch::fleet::gates::Gates;

fn main() {
    let numbers: Vec<f64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let phases = numbers.first().map_or(10_000, |&p| p as u32);
    let gates = Gates {
        confidence: numbers.get(1).copied().unwrap_or(Gates::DEFAULT.confidence),
        ..Gates::DEFAULT
    };
    println!(
        "canary gate, default gates but confidence {}, {phases} phases per case, noise {:?}",
        gates.confidence,
        Noise::BUSY
    );
    println!(
        "| case | promoted | rejected | timed out | windows to decide (mean) | requests to decide (median, 99th percentile) |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, case) in cases().iter().enumerate() {
        let t = run(&gates, case, phases, 1000 + i as u64);
        let pct = |n: u32| 100.0 * f64::from(n) / f64::from(t.phases());
        println!(
            "| {} | {:.2} % | {:.2} % | {:.2} % | {:.1} | {}, {} |",
            case.name,
            pct(t.promoted),
            pct(t.rejected),
            pct(t.timed_out),
            t.mean_windows(),
            t.requests_quantile(0.5),
            t.requests_quantile(0.99)
        );
    }
}
