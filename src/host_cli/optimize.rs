//! `perch-host optimize`: quantizes and/or prunes a registered (or external ONNX) model,
//! registers the result as a new version whose parent is the input, and measures both on
//! the same data: metrics, artifact size, batch-1 latency and peak memory on the native
//! engine.

use super::eval::{Metrics, score_runtime};
use super::models::{VersionView, import};
use super::render::{Align, Render, Table};
use super::{recorded_data, recorded_schema};
use crate::optimize::finetune::{FinetuneOptions, finetune};
use crate::optimize::prune::{PruneOptions, PruneScope, prune};
use crate::optimize::quantize::{Calibration, QuantizeMode, QuantizeOptions, quantize};
use crate::registry::{ArtifactFormat, ModelRef, Payload, Registry, Version, VersionInfo};
use crate::runtime;
use crate::train::data::{Dataset, Schema, Task};
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `perch-host optimize` arguments (kept with the version it makes, so a retrained parent
/// can be optimized the same way).
#[derive(Clone, Debug, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct OptimizeOptions {
    /// The model: `NAME[@VERSION|@ALIAS]` in the registry, or an ONNX file (imported first).
    pub model: String,
    /// int8: static quantization calibrated on data; dynamic: activations quantized per call.
    #[arg(long, value_parser = ["int8", "dynamic"])]
    pub quantize: Option<String>,
    /// Calibration data for --quantize int8 (CSV like the training data; default: the
    /// version's recorded training data).
    #[arg(long)]
    pub calibrate: Option<PathBuf>,
    /// Activation range method: minmax, or `percentile[:P]` (default P 99.99).
    #[arg(long, default_value = "minmax")]
    pub calibration: String,
    /// Prune to this sparsity (fraction of weights removed, e.g. 0.8).
    #[arg(long)]
    pub prune: Option<f64>,
    /// Remove whole neurons instead of single weights (shrinks the layers).
    #[arg(long)]
    pub structured: bool,
    /// Reach the sparsity in every layer instead of across all layers.
    #[arg(long)]
    pub per_layer: bool,
    /// Prune gradually while fine-tuning this many epochs on the recorded training data.
    #[arg(long)]
    pub finetune_epochs: Option<usize>,
    /// Labelled data to score both versions on (default: the recorded test data).
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Target column of --test for an external model (no recorded schema).
    #[arg(long)]
    pub target: Option<String>,
    /// Registry name of the result (default: the input's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Seed of fine-tuning.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Metrics of an optimize run, with the data they were measured on.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Scores {
    /// The metrics (none without test data).
    #[serde(flatten)]
    pub metrics: Metrics,
    /// `test` when measured on test data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluated_on: Option<&'static str>,
}

/// What one version measures.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    /// Metrics on the test data, when there is some.
    pub metrics: Scores,
    /// Artifact size.
    pub size_bytes: usize,
    /// Median batch-1 latency on the native engine.
    pub latency_us_p50: f64,
    /// Peak heap while loading and running it once, when the allocator tracks it.
    pub peak_memory_bytes: Option<usize>,
}

/// The input version of an optimize run and its figures.
#[derive(Clone, Debug, Serialize)]
pub struct ParentFigures {
    /// `NAME@VERSION`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// The pruning step of an optimize run.
#[derive(Clone, Debug, Serialize)]
pub struct PruneStep {
    /// The sparsity asked for.
    pub sparsity: f64,
    /// The sparsity reached.
    pub achieved: f64,
    /// `global` or `per_layer`.
    pub scope: &'static str,
    /// Whether whole neurons were removed.
    pub structured: bool,
    /// Epochs of fine-tuning while pruning (0: none).
    pub finetune_epochs: usize,
}

/// The quantization step of an optimize run.
#[derive(Clone, Debug, Serialize)]
pub struct QuantizeStep {
    /// `int8` or `dynamic`.
    pub mode: String,
    /// The activation range method, for `int8`.
    pub calibration: Option<String>,
    /// The calibration data, for `int8`.
    pub calibration_data: Option<String>,
}

/// What an optimize run did, step by step (also stored in the new version's params).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Optimizations {
    /// Pruning, with `--prune`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneStep>,
    /// Quantization, with `--quantize`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantize: Option<QuantizeStep>,
}

/// `perch-host optimize`'s result: the new version with its figures, and its parent's.
#[derive(Clone, Debug, Serialize)]
pub struct OptimizeReport {
    /// The new version; its metrics and size are the ones measured, its parent the input's
    /// figures.
    #[serde(flatten)]
    pub version: VersionView<Scores, ParentFigures>,
    /// Median batch-1 latency of the new version.
    pub latency_us_p50: f64,
    /// Its peak heap.
    pub peak_memory_bytes: Option<usize>,
    /// What was done.
    pub optimizations: Optimizations,
    /// `test` when both were scored on test data.
    pub evaluated_on: Option<&'static str>,
    /// The test data both were scored on.
    pub test_data: Option<String>,
}

/// Batch-1 runs timed for the latency figure (after as many warm-up runs).
const LATENCY_RUNS: usize = 2000;

/// Loads `bytes` on the native engine and measures it on `data` (when there is data).
fn measure(bytes: &[u8], data: Option<(&Dataset, &Schema)>) -> Result<Figures> {
    let window = crate::memory::open_window();
    let mut model = runtime::Model::from_artifact_bytes(bytes)?;
    let sample_len = model.info().inputs[0].sample_len();
    let rows: Vec<f32> = match data {
        Some((d, _)) => d.features_f32().iter().copied().collect(),
        None => (0..sample_len).map(|i| (i % 17) as f32 / 16.0).collect(),
    };
    let n_rows = (rows.len() / sample_len.max(1)).max(1);
    model.run(&rows[..sample_len], 1)?;
    let peak_memory_bytes = crate::memory::peak_since(window);
    let mut times = Vec::with_capacity(LATENCY_RUNS);
    for i in 0..2 * LATENCY_RUNS {
        let r = i % n_rows;
        let x = &rows[r * sample_len..(r + 1) * sample_len];
        let t = Instant::now();
        let out = model.run(x, 1)?;
        let elapsed = t.elapsed().as_secs_f64() * 1e6;
        std::hint::black_box(out);
        if i >= LATENCY_RUNS {
            times.push(elapsed);
        }
    }
    times.sort_by(f64::total_cmp);
    let latency_us_p50 = times[times.len() / 2];
    let metrics = match data {
        Some((d, schema)) => Scores {
            metrics: score_runtime(&mut model, d, schema)?.metrics,
            evaluated_on: Some("test"),
        },
        None => Scores::default(),
    };
    Ok(Figures {
        metrics,
        size_bytes: bytes.len(),
        latency_us_p50,
        peak_memory_bytes,
    })
}

fn calibration_method(spec: &str) -> Result<Calibration> {
    let (name, arg) = spec.split_once(':').unwrap_or((spec, ""));
    match (name, arg) {
        ("minmax", "") => Ok(Calibration::MinMax),
        ("percentile", "") => Ok(Calibration::Percentile(99.99)),
        ("percentile", p) => p
            .parse::<f32>()
            .ok()
            .filter(|p| *p > 50.0 && *p <= 100.0)
            .map(Calibration::Percentile)
            .ok_or_else(|| {
                anyhow!("bad --calibration {spec:?}: the percentile must be in (50, 100]")
            }),
        _ => bail!("bad --calibration {spec:?}: expected minmax or percentile[:P]"),
    }
}

/// Features of a CSV encoded as the model's training data was, when there is a schema;
/// else the file read as numeric rows, its columns matched by name to the features the
/// model records (the training target dropped), in file order when it records none.
fn feature_rows(
    path: &Path,
    schema: Option<&Schema>,
    model: &crate::graph::Model,
) -> Result<Vec<f32>> {
    if let Some(schema) = schema
        && let Ok(d) = Dataset::load_with_schema(path, schema)
    {
        return Ok(d.features_f32().iter().copied().collect());
    }
    let array = crate::io::read_input(path).context("calibration data")?;
    let names = crate::io::InputNames::of(
        Some(&model.metadata),
        model.graph.inputs.first().map_or(0, |i| i.sample_len()),
    );
    let (array, _) = crate::io::arrange(array, names.as_ref(), None, &path.display().to_string())
        .context("calibration data")?;
    Ok(array.data)
}

/// What `optimize` starts from.
enum Input {
    /// A registered native version.
    Registered(Box<Version>),
    /// An ONNX file converted in memory; registered (imported) only once the optimized
    /// version is ready, so a failed run leaves the registry as it was.
    External(PathBuf),
}

/// The input model, its native artifact bytes and its display name.
fn load_input(
    registry: &Registry,
    opts: &OptimizeOptions,
) -> Result<(Input, crate::graph::Model, Vec<u8>, String)> {
    let path = Path::new(&opts.model);
    let names_a_file = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
        || opts.model.contains('/');
    if names_a_file && path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let model = crate::convert::onnx_bytes_to_native(&bytes).with_context(|| {
            format!(
                "{} does not convert to perch's native IR, so it cannot be optimized",
                path.display()
            )
        })?;
        let artifact = crate::artifact::encode(&model)?;
        let shown = path.display().to_string();
        return Ok((Input::External(path.to_path_buf()), model, artifact, shown));
    }
    let version = match opts.model.parse::<ModelRef>() {
        Ok(r) => registry.resolve(&r),
        Err(e) => Err(e),
    };
    let version = match version {
        Ok(v) => v,
        Err(_) if names_a_file => bail!(
            "{}: no such file (and no registered model of that name)",
            path.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let shown = format!("{}@{}", version.name, version.number);
    if version.format != ArtifactFormat::Perch {
        bail!(
            "{shown} is stored as ONNX (it has ops perch's native engine lacks); only native models can be optimized"
        );
    }
    let bytes = registry.artifact_bytes(&version)?;
    let model = crate::artifact::decode(&bytes)
        .with_context(|| format!("decoding {shown}"))?
        .model;
    Ok((Input::Registered(Box::new(version)), model, bytes, shown))
}

/// The data file the input version recorded, if it is a registered version that did.
fn recorded(input: &Input, which: &str) -> Result<PathBuf> {
    match input {
        Input::Registered(v) => recorded_data(v, which),
        Input::External(p) => bail!(
            "{} is an external model: it has no recorded {which} data",
            p.display()
        ),
    }
}

/// Runs `perch-host optimize`: the new version's figures with the parent's.
///
/// # Errors
/// Unknown models, models stored as ONNX, nothing to do, missing data, failed transforms.
pub fn optimize(registry: &mut Registry, opts: &OptimizeOptions) -> Result<OptimizeReport> {
    if opts.quantize.is_none() && opts.prune.is_none() {
        bail!("nothing to do: give --quantize int8|dynamic and/or --prune SPARSITY");
    }
    if opts.finetune_epochs.is_some() && opts.prune.is_none() {
        bail!("--finetune-epochs fine-tunes while pruning: give --prune SPARSITY too");
    }
    if opts.calibrate.is_some() && opts.quantize.as_deref() != Some("int8") {
        bail!("--calibrate is for --quantize int8 (dynamic quantization needs no calibration)");
    }
    let (input, model, parent_bytes, parent_shown) = load_input(registry, opts)?;
    let schema = match &input {
        Input::Registered(v) => recorded_schema(v)?,
        Input::External(_) => None,
    };

    // The data both versions are scored on.
    let test_path = match &opts.test {
        Some(p) => Some(p.clone()),
        None => recorded(&input, "test").ok(),
    };
    let test = match (&test_path, &schema, &opts.target) {
        (Some(p), Some(s), _) => Some((
            Dataset::load_with_schema(p, s).context("test data")?,
            s.clone(),
        )),
        (Some(p), None, Some(target)) => {
            let task = if model
                .graph
                .outputs
                .iter()
                .any(|o| o.name == "probabilities")
            {
                Task::Classification
            } else {
                Task::Regression
            };
            let d = Dataset::load(p, target, task).context("test data")?;
            let s = d.schema.clone();
            Some((d, s))
        }
        (Some(p), None, None) => bail!(
            "{parent_shown} has no recorded schema: give --target COL to score it on {}",
            p.display()
        ),
        (None, _, _) => None,
    };
    let data = test.as_ref().map(|(d, s)| (d, s));
    // How to read calibration data: the training schema, else the one --target gave.
    let schema = schema.or_else(|| test.as_ref().map(|(_, s)| s.clone()));
    let before = measure(&parent_bytes, data)?;

    // Transform.
    let mut out = model.clone();
    let mut steps = Optimizations::default();
    if let Some(sparsity) = opts.prune {
        if !(0.0..1.0).contains(&sparsity) {
            bail!("bad --prune {sparsity}: expected a fraction in [0, 1)");
        }
        let scope = if opts.per_layer {
            PruneScope::PerLayer
        } else {
            PruneScope::Global
        };
        let report = match opts.finetune_epochs {
            Some(epochs) if epochs > 0 => {
                let train_path = recorded(&input, "train")
                    .context("fine-tuning needs the training data recorded at training")?;
                let s = schema
                    .as_ref()
                    .ok_or_else(|| anyhow!("{parent_shown} has no recorded schema to fine-tune"))?;
                let train = Dataset::load_with_schema(&train_path, s).context("training data")?;
                let (m, report) = finetune(
                    &out,
                    &train,
                    &FinetuneOptions {
                        epochs,
                        sparsity: sparsity as f32,
                        scope,
                        structured: opts.structured,
                        seed: opts.seed,
                        ..FinetuneOptions::default()
                    },
                )?;
                out = m;
                report
            }
            _ => {
                let (m, report) = prune(
                    &out,
                    &PruneOptions {
                        sparsity: sparsity as f32,
                        scope,
                        structured: opts.structured,
                    },
                )?;
                out = m;
                report
            }
        };
        steps.prune = Some(PruneStep {
            sparsity,
            achieved: f64::from(report.sparsity),
            scope: if opts.per_layer {
                "per_layer"
            } else {
                "global"
            },
            structured: opts.structured,
            finetune_epochs: opts.finetune_epochs.unwrap_or(0),
        });
    }
    if let Some(q) = &opts.quantize {
        let (mode, rows, source) = if q == "dynamic" {
            (QuantizeMode::Dynamic, None, None)
        } else {
            let source = match &opts.calibrate {
                Some(p) => p.clone(),
                None => recorded(&input, "train").context(
                    "static int8 needs calibration data: give --calibrate FILE, or use --quantize dynamic",
                )?,
            };
            let rows = feature_rows(&source, schema.as_ref(), &model)?;
            let width = model.graph.inputs[0].sample_len();
            if width == 0 || rows.is_empty() || rows.len() % width != 0 {
                bail!(
                    "calibration data {} holds {} values, not rows of the model's {width} inputs{}",
                    source.display(),
                    rows.len(),
                    if schema.is_none() {
                        " (name its target column with --target, or give features only)"
                    } else {
                        ""
                    }
                );
            }
            let mode = QuantizeMode::Static {
                calibration: calibration_method(&opts.calibration)?,
            };
            (mode, Some(rows), Some(source))
        };
        out = quantize(&out, &QuantizeOptions { mode }, rows.as_deref())?;
        steps.quantize = Some(QuantizeStep {
            mode: q.clone(),
            calibration: (q == "int8").then(|| opts.calibration.clone()),
            calibration_data: source.map(|p| p.display().to_string()),
        });
    }
    out.metadata.producer = format!("perch-host {} optimize", env!("CARGO_PKG_VERSION"));
    rerecord_canary(&mut out).context("recording the optimized model's canary")?;
    let out_bytes = crate::artifact::encode(&out)?;
    let after = measure(&out_bytes, data)?;

    // Everything succeeded: register the input first when it is an external file.
    let parent = match input {
        Input::Registered(v) => *v,
        Input::External(path) => {
            let imported = import(registry, &path, opts.name.as_deref())?;
            registry.resolve(&imported.version.reference.parse()?)?
        }
    };
    let parent_ref = format!("{}@{}", parent.name, parent.number);
    let name = opts.name.clone().unwrap_or_else(|| parent.name.clone());
    let mut params = parent.params.clone();
    if let Some(p) = params.as_object_mut() {
        p.insert("optimize".into(), serde_json::to_value(&steps)?);
        p.insert("optimize_recipe".into(), serde_json::to_value(opts)?);
    }
    let version = registry.register(
        &name,
        Payload::Native(Box::new(out)),
        VersionInfo {
            params,
            metrics: serde_json::to_value(&after.metrics)?,
            fit_seconds: None,
            dataset: parent.dataset.clone(),
            data_schema: parent.data_schema.clone(),
            parent: Some(parent_ref.parse()?),
            data_files: parent.data_files.clone(),
        },
    )?;
    let mut new = VersionView::of(&version);
    // The registry's size is the stored file's; the figures measure the same bytes.
    new.size_bytes = after.size_bytes as u64;
    Ok(OptimizeReport {
        version: new.with(
            after.metrics,
            ParentFigures {
                reference: parent_ref,
                figures: before,
            },
        ),
        latency_us_p50: after.latency_us_p50,
        peak_memory_bytes: after.peak_memory_bytes,
        optimizations: steps,
        evaluated_on: test_path.as_ref().map(|_| "test"),
        test_data: test_path.map(|p| p.display().to_string()),
    })
}

/// Records the canary's expected outputs again for the transformed model, from the same
/// input and tolerance: int8 and pruned models give (slightly) different outputs than the
/// float model the canary was recorded on, and the device checks the model it receives.
/// A model without a canary is left without one.
///
/// # Errors
/// A canary section that does not decode or fit the input, or a model that fails to run.
fn rerecord_canary(model: &mut crate::graph::Model) -> Result<()> {
    let width = model.graph.inputs.first().map_or(0, |i| i.sample_len());
    let Some(old) = model.metadata.canary(width)? else {
        return Ok(());
    };
    let mut runtime = crate::runtime::Model::from_native(model)?;
    let canary = crate::runtime::record_canary(&mut runtime, &old.input, old.tolerance)?;
    model
        .metadata
        .set_section(crate::graph::sections::CANARY, &canary)?;
    Ok(())
}

impl Render for OptimizeReport {
    /// The before/after table.
    fn text(&self) -> String {
        let parent = &self.version.parent;
        let ratio = |a: f64, b: f64| {
            if a > 0.0 {
                format!("{:.2}×", b / a)
            } else {
                "-".into()
            }
        };
        let mut table = Table::fixed(&[
            (Align::Left, 24),
            (Align::Right, 16),
            (Align::Right, 16),
            (Align::Right, 12),
        ]);
        table.row([
            "",
            parent.reference.as_str(),
            self.version.reference.as_str(),
            "change",
        ]);
        let (a, b) = (
            &parent.figures.metrics.metrics,
            &self.version.metrics.metrics,
        );
        for key in ["accuracy", "f1_macro", "r2", "mse"] {
            if let (Some(&x), Some(&y)) = (a.get(key), b.get(key)) {
                let change = if key == "accuracy" || key == "f1_macro" {
                    format!("{:+.2} pts", (y - x) * 100.0)
                } else {
                    format!("{:+.4}", y - x)
                };
                table.row([key.into(), format!("{x:.4}"), format!("{y:.4}"), change]);
            }
        }
        let (size_a, size_b) = (parent.figures.size_bytes, self.version.size_bytes);
        table.row([
            "size".into(),
            format!("{size_a} B"),
            format!("{size_b} B"),
            ratio(size_a as f64, size_b as f64),
        ]);
        let (lat_a, lat_b) = (parent.figures.latency_us_p50, self.latency_us_p50);
        table.row([
            "latency p50 (batch 1)".into(),
            format!("{lat_a:.2} µs"),
            format!("{lat_b:.2} µs"),
            ratio(lat_a, lat_b),
        ]);
        if let (Some(a), Some(b)) = (parent.figures.peak_memory_bytes, self.peak_memory_bytes) {
            let (a, b) = (a as f64, b as f64);
            table.row([
                "peak memory".into(),
                format!("{:.1} KiB", a / 1024.0),
                format!("{:.1} KiB", b / 1024.0),
                ratio(a, b),
            ]);
        }
        let mut s = table.text();
        match &self.test_data {
            Some(on) => s.push_str(&format!("metrics on the test data {on}\n")),
            None => s.push_str("no test data recorded or given (--test): metrics not measured\n"),
        }
        s
    }
}
