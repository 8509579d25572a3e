//! The device commands behind `perch run | info | bench`, as library functions that write to
//! any `Write`, so the binary stays thin and tests call them directly.

use crate::graph::DType;
use crate::io::{Arranged, InputArray, InputNames, arrange, read_input};
use crate::runtime::{
    EngineChoice, Format, InputValues, Model, ModelInfo, Output, OutputValues, RuntimeError,
};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Exit statuses of `perch` and `perch-host`, as README lists them.
pub mod exit {
    /// The command did what it was asked.
    pub const SUCCESS: u8 = 0;
    /// The command failed: bad input, a damaged model, an unreachable file, a refused
    /// operation. The one-line error on stderr says why.
    pub const FAILURE: u8 = 1;
    /// The command line is wrong: an unknown verb or flag, a flag given to a verb that does
    /// not take it, a missing argument, a value that does not parse. Nothing was done.
    pub const USAGE: u8 = 2;
    /// `perch-host push --wait` / `rollout --wait`: the wait ended with some device pending
    /// or refusing the model, or the rollout not complete (stopped, rolled back, or still
    /// under way). What was done stands; the output says which devices or which state.
    pub const INCOMPLETE: u8 = 3;
}

/// A command-line mistake: the binaries exit with [`exit::USAGE`] when an error's chain holds
/// one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    /// Whether `e`'s chain holds a usage error.
    pub fn is_in(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.is::<UsageError>())
    }
}

/// `unix_s` as a UTC date and time, `YYYY-MM-DD HH:MM:SS` (RFC 3339 with a space, in UTC),
/// the way every command shows a time.
pub fn utc_time(unix_s: i64) -> String {
    let days = unix_s.div_euclid(86_400);
    let secs = unix_s.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Output formats of `perch run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// One header row, then one row per sample; multi-value outputs get `name_i` columns.
    #[default]
    Csv,
    /// `{"model": NAME, "outputs": {OUTPUT_NAME: nested array}}`.
    Json,
}

impl std::str::FromStr for OutputFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "csv" => Ok(OutputFormat::Csv),
            "json" => Ok(OutputFormat::Json),
            other => {
                Err(UsageError(format!("unknown format {other:?} (expected json or csv)")).into())
            }
        }
    }
}

impl std::str::FromStr for EngineChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "native" => Ok(EngineChoice::Native),
            "tract" => Ok(EngineChoice::Tract),
            other => Err(UsageError(format!(
                "unknown engine {other:?} (expected auto, native or tract)"
            ))
            .into()),
        }
    }
}

/// Loads a model with context naming the file.
///
/// # Errors
/// Whatever [`Model::load`] reports, prefixed with the path unless the error names it.
pub fn load_model(path: &Path, engine: EngineChoice) -> Result<Model> {
    load_model_within(path, engine, crate::graph::budget::DEFAULT_MAX_MEMORY_BYTES)
}

/// As [`load_model`], refusing a model whose planned peak memory for one sample is over
/// `max_memory_bytes` (`--max-memory`).
///
/// # Errors
/// As [`load_model`], and a model over the limit.
pub fn load_model_within(
    path: &Path,
    engine: EngineChoice,
    max_memory_bytes: u64,
) -> Result<Model> {
    Model::load_within(path, engine, max_memory_bytes).map_err(|e| match e {
        RuntimeError::Io { .. } | RuntimeError::UnknownFormat { .. } => e.into(),
        // A caught tract panic names the file already.
        #[cfg(feature = "onnx")]
        RuntimeError::Onnx(crate::onnx::OnnxError::Panic { .. }) => e.into(),
        RuntimeError::Budget(_) => anyhow::Error::new(e).context(format!(
            "loading model {} (memory limit {max_memory_bytes} bytes; --max-memory sets it)",
            path.display()
        )),
        e => anyhow::Error::new(e).context(format!("loading model {}", path.display())),
    })
}

/// The samples per run for `perch run`: `batch` if given and its planned memory fits
/// `max_memory_bytes`, else as many as fit (at most `total`); tract models run whole.
///
/// # Errors
/// A given batch whose planned memory is over the limit.
pub fn batch_within(
    model: &Model,
    batch: Option<usize>,
    total: usize,
    max_memory_bytes: u64,
) -> Result<Option<usize>> {
    let Some(plan) = model.info().memory else {
        return Ok(batch);
    };
    match batch {
        Some(b) => {
            crate::graph::budget::check_memory(&plan, b, max_memory_bytes)
                .with_context(|| format!("--batch {b} (raise --max-memory or lower --batch)"))?;
            Ok(Some(b))
        }
        None => Ok(Some(
            plan.max_batch_within(max_memory_bytes)
                .clamp(1, total.max(1)),
        )),
    }
}

/// Parses a byte count: a number with an optional `K`, `M`, `G` (powers of 1024, with or
/// without `iB` / `B`).
///
/// # Errors
/// Anything else.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        UsageError(format!(
            "{text:?} is not a byte count (e.g. 512M, 2G, 1048576)"
        ))
    })?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => {
            return Err(
                UsageError(format!("{text:?}: unknown unit {other:?} (use K, M or G)")).into(),
            );
        }
    };
    n.checked_mul(1 << shift)
        .with_context(|| format!("{text:?} is too large"))
}

/// The name a model is reported under: its metadata name, else the file stem.
pub fn model_name(model: &Model, path: &Path) -> String {
    model
        .info()
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// The feature names and training target `info`'s model records, when they fit its input.
pub fn input_names(info: &ModelInfo) -> Option<InputNames> {
    let sample_len = info.inputs.first()?.sample_len();
    InputNames::of(info.metadata.as_ref(), sample_len)
}

/// Reads `input` and fits its columns to `model` ([`arrange`]): by name when the file names
/// them and the model records its feature names, dropping the training target (or the
/// column `target` names).
///
/// # Errors
/// Unreadable or malformed input; missing, unknown or repeated columns.
pub fn read_for(
    model: &Model,
    input: &Path,
    target: Option<&str>,
) -> Result<(InputArray, Arranged)> {
    let array = read_input(input)?;
    let names = input_names(model.info());
    Ok(arrange(
        array,
        names.as_ref(),
        target,
        &input.display().to_string(),
    )?)
}

/// Reads `input` ([`read_for`]) and runs every sample through `model`, `batch` samples per
/// call (without `batch`, as many as fit `max_memory_bytes`: [`batch_within`]). Returns the
/// outputs and what was done to the columns (for a note to the user).
///
/// # Errors
/// Unreadable or malformed input, columns or a width that do not fit the model, a batch
/// over the memory limit, runtime failures.
pub fn predict(
    model: &mut Model,
    input: &Path,
    batch: Option<usize>,
    target: Option<&str>,
    max_memory_bytes: u64,
) -> Result<(Vec<Output>, Arranged)> {
    let (array, arranged) = read_for(model, input, target)?;
    let run = |model: &mut Model| -> Result<Vec<Output>> {
        let total = model.batch_of(&array.shape, array.data.len())?;
        let batch = batch_within(model, batch, total, max_memory_bytes)?;
        predict_array(model, &array, batch)
    };
    let outputs = run(model).map_err(|e| {
        let e = e.context(format!("running on {}", input.display()));
        match width_hint(model.info(), &array) {
            Some(hint) => anyhow::anyhow!("{e:#}; {hint}"),
            None => e,
        }
    })?;
    Ok((outputs, arranged))
}

/// For a file whose header gives more columns than the model takes (the usual reason: the
/// training target is still in it), what to do.
fn width_hint(info: &ModelInfo, array: &InputArray) -> Option<String> {
    let columns = array.columns.as_ref()?;
    let takes = info.inputs.first()?.sample_len();
    (info.inputs.len() == 1 && columns.names.len() > takes).then(|| {
        format!(
            "the file has {} columns: drop the target column or name it with --target COL",
            columns.names.len()
        )
    })
}

/// Runs `array` (rows are samples) through `model`, `batch` samples per call (all at
/// once when `None`), and concatenates the results.
///
/// # Errors
/// A shape that does not fit the model, a zero batch, runtime failures.
pub fn predict_array(
    model: &mut Model,
    array: &InputArray,
    batch: Option<usize>,
) -> Result<Vec<Output>> {
    let total = model.batch_of(&array.shape, array.data.len())?;
    let chunk = batch.unwrap_or(total);
    if chunk == 0 {
        return Err(UsageError("--batch must be at least 1".into()).into());
    }
    let sample_len = array.data.len() / total;
    let spec = model.info().inputs[0].clone();
    let mut merged: Vec<Output> = Vec::new();
    for (k, rows) in array.data.chunks(chunk * sample_len).enumerate() {
        let n = rows.len() / sample_len;
        let outs = if spec.dtype == DType::F32 {
            model.run(rows, n)
        } else {
            // Converted here so that a value's error names its row in the whole file.
            let values = InputValues::from_f32(&spec, rows, k * chunk)?;
            model.run_values(std::slice::from_ref(&values), n)
        }
        .with_context(|| format!("batch starting at sample {}", k * chunk))?;
        if merged.is_empty() {
            merged = outs;
            continue;
        }
        for (m, o) in merged.iter_mut().zip(outs) {
            if let Some(first) = m.shape.first_mut() {
                *first += o.shape.first().copied().unwrap_or(0);
            }
            match (&mut m.values, o.values) {
                (OutputValues::F32(a), OutputValues::F32(b)) => a.extend(b),
                (OutputValues::I64(a), OutputValues::I64(b)) => a.extend(b),
                _ => bail!("output {} changed type between batches", m.name),
            }
        }
    }
    Ok(merged)
}

/// Writes outputs as `format`.
///
/// # Errors
/// Write failures.
pub fn write_outputs(
    out: &mut dyn Write,
    model_name: &str,
    outputs: &[Output],
    format: OutputFormat,
) -> Result<()> {
    match format {
        OutputFormat::Json => {
            let map = crate::io::outputs_json(outputs);
            serde_json::to_writer(&mut *out, &json!({ "model": model_name, "outputs": map }))?;
            writeln!(out)?;
        }
        OutputFormat::Csv => {
            let rows = outputs
                .first()
                .map_or(0, |o| o.shape.first().copied().unwrap_or(0));
            let widths: Vec<usize> = outputs
                .iter()
                .map(|o| o.shape.iter().skip(1).product())
                .collect();
            let mut header = Vec::new();
            for (o, &w) in outputs.iter().zip(&widths) {
                if w == 1 && o.shape.len() <= 1 {
                    header.push(o.name.clone());
                } else {
                    header.extend((0..w).map(|i| format!("{}_{i}", o.name)));
                }
            }
            writeln!(out, "{}", header.join(","))?;
            for r in 0..rows {
                let mut cells = Vec::new();
                for (o, &w) in outputs.iter().zip(&widths) {
                    match &o.values {
                        OutputValues::F32(v) => cells.extend(
                            v.get(r * w..(r + 1) * w)
                                .ok_or_else(|| missing(&o.name, r))?
                                .iter()
                                .map(f32::to_string),
                        ),
                        OutputValues::I64(v) => cells.extend(
                            v.get(r * w..(r + 1) * w)
                                .ok_or_else(|| missing(&o.name, r))?
                                .iter()
                                .map(i64::to_string),
                        ),
                    }
                }
                writeln!(out, "{}", cells.join(","))?;
            }
        }
    }
    Ok(())
}

fn missing(name: &str, row: usize) -> anyhow::Error {
    anyhow::anyhow!(
        "output {name} has no row {row}; use --format json for outputs without a batch axis"
    )
}

fn shape_text(shape: &[u32]) -> String {
    let dims: Vec<String> = std::iter::once("N".to_string())
        .chain(shape.iter().map(u32::to_string))
        .collect();
    format!("[{}]", dims.join(", "))
}

/// `perch info` as JSON.
pub fn info_json(info: &ModelInfo, name: &str) -> Value {
    let spec = |s: &crate::graph::TensorSpec| json!({"name": s.name, "dtype": s.dtype.name(), "shape": shape_text(&s.shape)});
    let meta = info.metadata.as_ref().map(|m| {
        let sections: Vec<Value> = sections(info)
            .into_iter()
            .map(|s| json!({"kind": s.kind, "name": s.name, "summary": s.summary, "ok": s.ok}))
            .collect();
        json!({
            "name": m.name, "version": m.version, "created_unix_s": m.created_unix_s,
            "producer": m.producer, "description": m.description,
            "class_labels": m.class_labels, "properties": m.properties,
            "sections": sections,
        })
    });
    let names = input_names(info);
    json!({
        "name": name,
        "format": match info.format { Format::Perch => "perch", Format::Onnx => "onnx" },
        "features": names.as_ref().map(|n| &n.features),
        "target": names.as_ref().and_then(|n| n.target.as_ref()),
        "engine": info.engine.name(),
        "size_bytes": info.size_bytes,
        "sha256": info.sha256,
        "inputs": info.inputs.iter().map(spec).collect::<Vec<_>>(),
        "outputs": info.outputs.iter().map(spec).collect::<Vec<_>>(),
        "ops": info.ops,
        "memory": info.memory.map(|p| json!({
            "peak_bytes_batch_1": u64::try_from(p.peak_bytes(1)).unwrap_or(u64::MAX),
            "weights_bytes": p.weights_bytes,
            "prepared_bytes": p.prepared_bytes,
            "per_sample_bytes": p.per_sample_bytes,
            "scratch_bytes": p.scratch_bytes,
        })),
        "metadata": meta,
        "notes": info.notes,
        "arena_bytes": info.arena_bytes,
    })
}

/// What `perch info` says about one metadata section.
struct SectionSummary {
    kind: u32,
    name: &'static str,
    summary: String,
    ok: bool,
}

/// The metadata sections of a model, described: the registered kinds decoded and checked
/// against the model's input, others by kind and size.
fn sections(info: &ModelInfo) -> Vec<SectionSummary> {
    use crate::graph::budget::REQUIREMENTS;
    use crate::graph::sections::{CANARY, DRIFT_BASELINE};
    let Some(m) = &info.metadata else {
        return Vec::new();
    };
    let sample_len = info.inputs.first().map_or(0, |i| i.sample_len());
    m.sections
        .iter()
        .map(|s| {
            let (name, result) = match s.kind {
                DRIFT_BASELINE => (
                    "drift baseline",
                    m.drift_baseline(sample_len)
                        .map(|b| format!("{} features", b.map_or(0, |b| b.features.len()))),
                ),
                CANARY => (
                    "canary",
                    m.canary(sample_len).map(|c| {
                        c.map_or_else(String::new, |c| {
                            format!(
                                "yes ({} outputs, tolerance {})",
                                c.outputs.len(),
                                c.tolerance
                            )
                        })
                    }),
                ),
                REQUIREMENTS => (
                    "requirements",
                    m.requirements().map(|r| {
                        r.map_or_else(String::new, |r| {
                            format!(
                                "format {}, peak memory {} bytes for one sample ({} per further sample), ops {}, kernels {}",
                                r.format_version,
                                r.peak_memory_bytes,
                                r.memory.per_sample_bytes,
                                r.ops.join(" "),
                                r.kernels.join(" ")
                            )
                        })
                    }),
                ),
                _ => (
                    "section",
                    Ok(format!("kind {}, {} bytes", s.kind, s.bytes.len())),
                ),
            };
            match result {
                Ok(summary) => SectionSummary {
                    kind: s.kind,
                    name,
                    summary,
                    ok: true,
                },
                Err(e) => SectionSummary {
                    kind: s.kind,
                    name,
                    summary: format!("unusable: {e}"),
                    ok: false,
                },
            }
        })
        .collect()
}

/// `perch info` as text.
///
/// # Errors
/// Write failures.
pub fn write_info(out: &mut dyn Write, info: &ModelInfo, name: &str) -> Result<()> {
    let format = match info.format {
        Format::Perch => "perch artifact",
        Format::Onnx => "ONNX",
    };
    writeln!(out, "model:   {name}")?;
    writeln!(out, "format:  {format}, {} bytes", info.size_bytes)?;
    writeln!(out, "engine:  {}", info.engine.name())?;
    if let Some(a) = info.arena_bytes {
        writeln!(out, "arena:   {a} bytes per sample")?;
    }
    if let Some(h) = &info.sha256 {
        writeln!(out, "sha256:  {h}")?;
    }
    for (title, specs) in [("inputs", &info.inputs), ("outputs", &info.outputs)] {
        writeln!(out, "{title}:")?;
        for s in specs {
            writeln!(
                out,
                "  {:<24} {} {}",
                s.name,
                s.dtype.name(),
                shape_text(&s.shape)
            )?;
        }
    }
    match input_names(info) {
        Some(names) => {
            writeln!(out, "features: {} (by name)", names.features.len())?;
            writeln!(out, "  {}", names.features.join(", "))?;
            if let Some(t) = &names.target {
                writeln!(out, "target:  {t} (dropped when an input still has it)")?;
            }
        }
        None => writeln!(out, "features: not named (inputs are read in column order)")?,
    }
    writeln!(out, "ops:")?;
    for (op, n) in &info.ops {
        writeln!(out, "  {op:<32} {n}")?;
    }
    if let Some(p) = &info.memory {
        writeln!(
            out,
            "memory:  {} bytes planned for one sample (weights {}, prepared {}, buffers {} per sample, scratch {})",
            p.peak_bytes(1),
            p.weights_bytes,
            p.prepared_bytes,
            p.per_sample_bytes,
            p.scratch_bytes
        )?;
    }
    if let Some(m) = &info.metadata {
        writeln!(out, "metadata:")?;
        for (k, v) in [
            ("name", &m.name),
            ("version", &m.version),
            ("producer", &m.producer),
            ("description", &m.description),
        ] {
            if !v.is_empty() {
                writeln!(out, "  {k}: {v}")?;
            }
        }
        if m.created_unix_s > 0 {
            let t = i64::try_from(m.created_unix_s).unwrap_or(i64::MAX);
            writeln!(out, "  created: {} UTC", utc_time(t))?;
        }
        if !m.class_labels.is_empty() {
            writeln!(out, "  class_labels: {}", m.class_labels.join(", "))?;
        }
        for (k, v) in &m.properties {
            writeln!(out, "  {k}: {v}")?;
        }
        for s in sections(info) {
            writeln!(out, "  {}: {}", s.name, s.summary)?;
        }
    }
    for n in &info.notes {
        writeln!(out, "note: {n}")?;
    }
    Ok(())
}

/// Latency and footprint figures from `perch bench`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Model name.
    pub model: String,
    /// Engine used.
    pub engine: String,
    /// Samples per call.
    pub batch: usize,
    /// Timed calls.
    pub iterations: usize,
    /// Load (parse + plan) time, milliseconds.
    pub load_ms: f64,
    /// 10th percentile, microseconds: on a shared machine the least disturbed figure.
    pub latency_us_p10: f64,
    /// Median call latency, microseconds.
    pub latency_us_p50: f64,
    /// 90th percentile, microseconds.
    pub latency_us_p90: f64,
    /// 99th percentile, microseconds.
    pub latency_us_p99: f64,
    /// Samples per second at the median latency.
    pub throughput_per_s: f64,
    /// Peak resident memory of the process, KiB (Linux `VmHWM`), if known.
    pub peak_rss_kib: Option<u64>,
}

/// Peak resident set size of this process in KiB, from `/proc/self/status`.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Times `iterations` calls of batch `batch` after `warmup` untimed calls. Inputs are the
/// rows of `input` (cycled), or a deterministic pattern when none is given.
///
/// # Errors
/// Load, input or run failures.
pub fn bench(
    path: &Path,
    engine: EngineChoice,
    input: Option<&Path>,
    batch: usize,
    iterations: usize,
    warmup: usize,
) -> Result<BenchReport> {
    if batch == 0 || iterations == 0 {
        return Err(UsageError("--batch and --iterations must be at least 1".into()).into());
    }
    let t0 = Instant::now();
    let mut model = load_model(path, engine)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let sample_len = model.info().inputs[0].sample_len();
    let source = match input {
        Some(p) => {
            let (a, _) = read_for(&model, p, None)?;
            model
                .batch_of(&a.shape, a.data.len())
                .with_context(|| format!("input {}", p.display()))?;
            a.data
        }
        None => (0..sample_len)
            .map(|i| ((i * 7919) % 17) as f32 / 16.0)
            .collect(),
    };
    let data: Vec<f32> = source
        .iter()
        .copied()
        .cycle()
        .take(batch * sample_len)
        .collect();
    for _ in 0..warmup {
        model.run(&data, batch)?;
    }
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let out = model.run(&data, batch)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(out);
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let p50 = pct(0.5);
    Ok(BenchReport {
        model: model_name(&model, path),
        engine: model.info().engine.name().into(),
        batch,
        iterations,
        load_ms,
        latency_us_p10: pct(0.1),
        latency_us_p50: p50,
        latency_us_p90: pct(0.9),
        latency_us_p99: pct(0.99),
        throughput_per_s: batch as f64 / (p50 / 1e6),
        peak_rss_kib: peak_rss_kib(),
    })
}

/// Writes a bench report as text.
///
/// # Errors
/// Write failures.
pub fn write_bench(out: &mut dyn Write, r: &BenchReport) -> Result<()> {
    writeln!(
        out,
        "model {} on {} engine, batch {}, {} iterations",
        r.model, r.engine, r.batch, r.iterations
    )?;
    writeln!(out, "load        {:>10.2} ms", r.load_ms)?;
    writeln!(out, "latency p10 {:>10.2} µs", r.latency_us_p10)?;
    writeln!(out, "latency p50 {:>10.2} µs", r.latency_us_p50)?;
    writeln!(out, "latency p90 {:>10.2} µs", r.latency_us_p90)?;
    writeln!(out, "latency p99 {:>10.2} µs", r.latency_us_p99)?;
    writeln!(out, "throughput  {:>10.0} samples/s", r.throughput_per_s)?;
    match r.peak_rss_kib {
        Some(k) => writeln!(out, "peak RSS    {:>10.1} MiB", k as f64 / 1024.0)?,
        None => writeln!(out, "peak RSS    unknown on this OS")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Section;
    use crate::graph::sections::{CANARY, DRIFT_BASELINE, DriftBaseline};

    fn model_with_sections() -> crate::graph::Model {
        let mut model = crate::test_fixtures::tiny_dense(None);
        let col = [1.0, 2.0, 3.0];
        let baseline = DriftBaseline::from_columns([&col[..], &col[..]]);
        model
            .metadata
            .set_section(DRIFT_BASELINE, &baseline)
            .unwrap();
        let mut rt = Model::from_native(&model).unwrap();
        let canary = crate::runtime::record_canary(&mut rt, &[1.0, 1.0], 1e-4).unwrap();
        model.metadata.set_section(CANARY, &canary).unwrap();
        model
    }

    fn info_of(model: &crate::graph::Model) -> (String, Value) {
        let bytes = crate::artifact::encode(model).unwrap();
        let loaded = Model::from_artifact_bytes(&bytes).unwrap();
        let mut text = Vec::new();
        write_info(&mut text, loaded.info(), "m").unwrap();
        (
            String::from_utf8(text).unwrap(),
            info_json(loaded.info(), "m"),
        )
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_time(1_796_515_199), "2026-12-05 23:59:59");
        assert_eq!(utc_time(4_107_542_400), "2100-03-01 00:00:00");
        assert_eq!(utc_time(-1), "1969-12-31 23:59:59");
    }

    #[test]
    fn info_names_the_sections_present() {
        let mut model = model_with_sections();
        let (text, json) = info_of(&model);
        assert!(text.contains("  drift baseline: 2 features\n"), "{text}");
        assert!(
            text.contains("  canary: yes (1 outputs, tolerance 0.0001)\n"),
            "{text}"
        );
        let sections = &json["metadata"]["sections"];
        assert_eq!(sections[0]["kind"], DRIFT_BASELINE);
        assert_eq!(sections[1]["name"], "canary");
        assert_eq!(sections[1]["ok"], true);

        // A damaged section and an unknown kind are shown, not fatal.
        model.metadata.sections[1].bytes.truncate(2);
        model.metadata.sections.push(Section {
            kind: 99,
            bytes: vec![1, 2, 3],
        });
        let (text, json) = info_of(&model);
        assert!(text.contains("  canary: unusable: "), "{text}");
        assert!(text.contains("  section: kind 99, 3 bytes\n"), "{text}");
        assert_eq!(json["metadata"]["sections"][1]["ok"], false);
    }
}
