//! The int8 / f32 latency ratio of the trained digits MLP (models/digits-mlp-trained:
//! model.perch and model-int8.perch), measured in one process with the two engines taking
//! turns, so that load from other jobs on the machine falls on both alike.
//!
//! `cargo bench --bench int8_ratio [-- ROUNDS ITERATIONS]` (defaults 300 rounds of 5,000
//! calls at batch 1, a tenth of the calls at batch 32). Each round times one block of calls
//! per engine; the figures are nanoseconds per call over the rounds (10th percentile and
//! median), and the ratio is int8 over f32 at each.

use perch::engine::Engine;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[(sorted.len() - 1) * p / 100]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(300).max(1);
    let iterations = args.get(1).copied().unwrap_or(5000).max(10);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits-mlp-trained");
    let graphs: Vec<_> = ["model.perch", "model-int8.perch"]
        .iter()
        .map(|f| {
            perch::artifact::read(&dir.join(f))
                .expect("sample artifact")
                .model
                .graph
        })
        .collect();
    println!("digits MLP, engine alone, {rounds} rounds, f32 and int8 taking turns");
    println!("batch  variant  p10 ns/call  median ns/call");
    for (batch, calls) in [(1usize, iterations), (32, iterations / 10)] {
        let x: Vec<f32> = (0..batch * 64).map(|i| ((i * 7) % 17) as f32).collect();
        let mut engines: Vec<Engine> = graphs
            .iter()
            .map(|g| Engine::new(g, batch).expect("plans"))
            .collect();
        let mut times = vec![Vec::with_capacity(rounds); engines.len()];
        for _ in 0..rounds {
            for (e, t) in engines.iter_mut().zip(&mut times) {
                let start = Instant::now();
                for _ in 0..calls {
                    e.run(&[black_box(&x)], batch).expect("runs");
                    black_box(e.output_f32(0));
                }
                t.push(start.elapsed().as_nanos() as f64 / calls as f64);
            }
        }
        for t in &mut times {
            t.sort_by(f64::total_cmp);
        }
        for (name, t) in ["f32", "int8"].iter().zip(&times) {
            println!(
                "{batch:5}  {name:7}  {:11.1}  {:14.1}",
                percentile(t, 10),
                percentile(t, 50)
            );
        }
        println!(
            "{batch:5}  int8/f32 {:11.3}  {:14.3}",
            percentile(&times[1], 10) / percentile(&times[0], 10),
            percentile(&times[1], 50) / percentile(&times[0], 50)
        );
    }
}
