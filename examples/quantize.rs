//! Quantizes a native model to int8 with [`perch::optimize::quantize`]:
//!
//! ```text
//! cargo run --release --features host --example quantize -- \
//!     MODEL.perch OUT.perch [minmax | percentile:P | dynamic] [CALIBRATION.csv]
//! ```
//!
//! CALIBRATION.csv has a header; each row's first `sample_len` columns are used (a corpus
//! split's trailing `target` column is ignored). `perch-host optimize` is the command for
//! users; this example is what models/quantize.sh runs.

use anyhow::{Context, bail};
use perch::optimize::{Calibration, QuantizeMode, QuantizeOptions, quantize};
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, out, method, rest @ ..] = &args[..] else {
        bail!("usage: quantize MODEL OUT [minmax | percentile:P | dynamic] [CALIBRATION.csv]");
    };
    let model = perch::artifact::read(&PathBuf::from(model))
        .with_context(|| format!("reading {model}"))?
        .model;
    let mode = match method.as_str() {
        "dynamic" => QuantizeMode::Dynamic,
        "minmax" => QuantizeMode::Static {
            calibration: Calibration::MinMax,
        },
        m => match m.strip_prefix("percentile:").map(str::parse::<f32>) {
            Some(Ok(p)) => QuantizeMode::Static {
                calibration: Calibration::Percentile(p),
            },
            _ => bail!("unknown method {m:?} (minmax, percentile:P, dynamic)"),
        },
    };
    let sample_len = model
        .graph
        .inputs
        .first()
        .map_or(0, perch::graph::TensorSpec::sample_len);
    let rows = match rest.first() {
        Some(path) => {
            let mut rows = Vec::new();
            let mut reader =
                csv::Reader::from_path(path).with_context(|| format!("reading {path}"))?;
            for (i, rec) in reader.records().enumerate() {
                let rec = rec.with_context(|| format!("{path}: row {}", i + 1))?;
                for (j, v) in rec.iter().take(sample_len).enumerate() {
                    rows.push(v.trim().parse::<f32>().with_context(|| {
                        format!("{path}: row {}, column {}: {v:?}", i + 1, j + 1)
                    })?);
                }
            }
            Some(rows)
        }
        None => None,
    };
    let q = quantize(&model, &QuantizeOptions { mode }, rows.as_deref())?;
    let size = perch::artifact::write(&PathBuf::from(out), &q)
        .with_context(|| format!("writing {out}"))?;
    println!("quantize: {out}: {size} bytes");
    Ok(())
}
