//! `perch`: the device runtime. Thin: parses arguments, calls the library, maps errors to
//! exit codes.

use anyhow::{Context, Result};
use perch::cli::{self, OutputFormat, UsageError, exit};
use perch::runtime::EngineChoice;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
perch: run machine-learning models on this device, offline

Usage:
  perch run MODEL --input FILE [--format csv|json | --json] [--output FILE] [--batch B] [--target COL] [--engine auto|native|tract]
            [--max-memory BYTES]
  perch info MODEL [--json] [--engine auto|native|tract] [--max-memory BYTES]
  perch bench MODEL [--input FILE] [--iterations N] [--batch B] [--warmup N] [--json] [--engine auto|native|tract]
  perch agent --config FILE
  perch --version | --help

MODEL is a .perch artifact or an .onnx file. FILE is CSV (rows of numbers, optional
header), .npy, or JSON ([[...], ...] or [{\"name\": value, ...}, ...]). When the model
records its feature names (models perch-host trained do; perch info lists them), a CSV
header or JSON keys are matched to them by name, in any order, and the training target's
column is dropped; --target COL drops another. ONNX models whose ops all exist natively run on
perch's native engine unless --engine tract is given. --json prints one JSON document.

--max-memory (default 1G; K, M, G suffixes) bounds what a model may plan to allocate:
its weights, its buffers and scratch. A model over it is refused before anything is
allocated; `perch run` splits its input into batches that fit.

`perch agent` runs until stopped: it keeps a link to the host in FILE (written by
`perch-host devices add`), installs the models it pushes, reports metrics, and serves
POST /predict, POST /feedback, GET /health and GET /metrics on 127.0.0.1. Log verbosity:
RUST_LOG=debug|info|warn.

Exit status: 0 done, 1 failed (the error says why), 2 usage error (unknown verb or flag,
a flag the verb does not take, a missing or bad argument).
";

enum Command {
    Run {
        model: PathBuf,
        input: PathBuf,
        format: OutputFormat,
        output: Option<PathBuf>,
        batch: Option<usize>,
        target: Option<String>,
        engine: EngineChoice,
        max_memory: u64,
    },
    Info {
        model: PathBuf,
        json: bool,
        engine: EngineChoice,
        max_memory: u64,
    },
    Bench {
        model: PathBuf,
        input: Option<PathBuf>,
        iterations: usize,
        batch: usize,
        warmup: usize,
        json: bool,
        engine: EngineChoice,
    },
    Agent {
        config: PathBuf,
    },
    Help,
    Version,
}

/// The flags each verb takes, for the message when another is given.
fn flags_of(verb: &str) -> &'static str {
    match verb {
        "run" => "--input, --format, --json, --output, --batch, --target, --engine, --max-memory",
        "info" => "--json, --engine, --max-memory",
        "bench" => "--input, --iterations, --batch, --warmup, --json, --engine",
        _ => "--config",
    }
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(format!("{} (see perch --help)", message.into())).into()
}

/// lexopt's own errors (a missing or unparsable value) are usage errors.
fn lex<T>(r: Result<T, lexopt::Error>) -> Result<T> {
    r.map_err(|e| usage(e.to_string()))
}

fn number<T: std::str::FromStr>(parser: &mut lexopt::Parser, flag: &str) -> Result<T> {
    use lexopt::ValueExt;
    let text = lex(lex(parser.value())?.string())?;
    text.parse()
        .map_err(|_| usage(format!("{flag} takes a whole number, not {text:?}")))
}

fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Command> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_iter(std::iter::once("perch".into()).chain(args));
    let verb = match lex(parser.next())? {
        None => return Ok(Command::Help),
        Some(Long("help") | Short('h')) => return Ok(Command::Help),
        Some(Long("version") | Short('V')) => return Ok(Command::Version),
        Some(Value(v)) => lex(v.string())?,
        Some(other) => return Err(usage(other.unexpected().to_string())),
    };
    if !matches!(verb.as_str(), "run" | "info" | "bench" | "agent" | "help") {
        return Err(usage(format!(
            "unknown command {verb:?} (expected run, info, bench or agent)"
        )));
    }
    let (mut model, mut input, mut output, mut config) = (None, None, None, None);
    let mut target = None;
    let (mut format, mut json, mut engine) = (None, false, EngineChoice::Auto);
    let (mut iterations, mut batch, mut warmup) = (1000usize, None, 100usize);
    let mut max_memory = perch::graph::budget::DEFAULT_MAX_MEMORY_BYTES;
    while let Some(arg) = lex(parser.next())? {
        let v = verb.as_str();
        match arg {
            Long("max-memory") if matches!(v, "run" | "info") => {
                max_memory = cli::parse_bytes(&lex(lex(parser.value())?.string())?)?;
            }
            Long("help") | Short('h') => return Ok(Command::Help),
            Long("input") | Short('i') if matches!(v, "run" | "bench") => {
                input = Some(PathBuf::from(lex(parser.value())?));
            }
            Long("target") if v == "run" => target = Some(lex(lex(parser.value())?.string())?),
            Long("output") | Short('o') if v == "run" => {
                output = Some(PathBuf::from(lex(parser.value())?));
            }
            Long("format") | Short('f') if v == "run" => {
                format = Some(lex(lex(parser.value())?.string())?.parse::<OutputFormat>()?);
            }
            Long("engine") if matches!(v, "run" | "info" | "bench") => {
                engine = lex(lex(parser.value())?.string())?.parse()?;
            }
            Long("json") if matches!(v, "run" | "info" | "bench") => json = true,
            Long("iterations") | Short('n') if v == "bench" => {
                iterations = number(&mut parser, "--iterations")?;
            }
            Long("batch") | Short('b') if matches!(v, "run" | "bench") => {
                batch = Some(number(&mut parser, "--batch")?);
            }
            Long("warmup") if v == "bench" => warmup = number(&mut parser, "--warmup")?,
            Long("config") | Short('c') if v == "agent" => {
                config = Some(PathBuf::from(lex(parser.value())?));
            }
            Value(m) if model.is_none() && matches!(v, "run" | "info" | "bench") => {
                model = Some(PathBuf::from(m));
            }
            Value(extra) => {
                return Err(usage(format!(
                    "perch {v} takes {}, not {:?}",
                    if v == "agent" {
                        "no MODEL"
                    } else {
                        "one MODEL"
                    },
                    extra.to_string_lossy()
                )));
            }
            Long(flag) => {
                return Err(usage(format!(
                    "perch {v} does not take --{flag} (its options: {})",
                    flags_of(v)
                )));
            }
            Short(flag) => {
                return Err(usage(format!(
                    "perch {v} does not take -{flag} (its options: {})",
                    flags_of(v)
                )));
            }
        }
    }
    if batch == Some(0) {
        return Err(usage("--batch must be at least 1"));
    }
    if iterations == 0 {
        return Err(usage("--iterations must be at least 1"));
    }
    let model = || model.clone().ok_or_else(|| usage("missing MODEL argument"));
    Ok(match verb.as_str() {
        "run" => Command::Run {
            model: model()?,
            input: input.ok_or_else(|| usage("perch run needs --input FILE"))?,
            format: match (format, json) {
                (Some(OutputFormat::Csv), true) => {
                    return Err(usage("--json and --format csv ask for different outputs"));
                }
                (_, true) => OutputFormat::Json,
                (f, false) => f.unwrap_or_default(),
            },
            output,
            batch,
            target,
            engine,
            max_memory,
        },
        "info" => Command::Info {
            model: model()?,
            json,
            engine,
            max_memory,
        },
        "bench" => Command::Bench {
            model: model()?,
            input,
            iterations,
            batch: batch.unwrap_or(1),
            warmup,
            json,
            engine,
        },
        "agent" => Command::Agent {
            config: config.ok_or_else(|| {
                usage("perch agent needs --config FILE (written by perch-host devices add)")
            })?,
        },
        _ => Command::Help,
    })
}

fn execute(cmd: Command) -> Result<()> {
    let stdout = std::io::stdout();
    match cmd {
        Command::Help => print!("{USAGE}"),
        Command::Agent { config } => {
            let cfg = perch::agent::Config::load(&config).context("the agent's configuration")?;
            let shutdown = perch::sync::server::Shutdown::new();
            let agent = perch::agent::Agent::start(cfg, shutdown.clone())
                .with_context(|| format!("starting the agent of {}", config.display()))?;
            perch::signals::stop_on_termination(shutdown)
                .context("installing the SIGTERM/SIGINT handlers")?;
            eprintln!("perch: agent serving http://{}", agent.http_addr());
            agent.wait();
            eprintln!("perch: agent stopped (metrics window queued)");
        }
        Command::Version => println!("perch {}", env!("CARGO_PKG_VERSION")),
        Command::Run {
            model,
            input,
            format,
            output,
            batch,
            target,
            engine,
            max_memory,
        } => {
            let mut m = cli::load_model_within(&model, engine, max_memory)?;
            let (outputs, arranged) =
                cli::predict(&mut m, &input, batch, target.as_deref(), max_memory)?;
            if let Some(note) = arranged.note() {
                eprintln!("perch: note: {}: {note}", input.display());
            }
            let name = cli::model_name(&m, &model);
            match output {
                Some(path) => {
                    let mut buf = Vec::new();
                    cli::write_outputs(&mut buf, &name, &outputs, format)?;
                    std::fs::write(&path, buf)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                None => cli::write_outputs(&mut stdout.lock(), &name, &outputs, format)?,
            }
        }
        Command::Info {
            model,
            json,
            engine,
            max_memory,
        } => {
            let m = cli::load_model_within(&model, engine, max_memory)?;
            let name = cli::model_name(&m, &model);
            let mut out = stdout.lock();
            if json {
                serde_json::to_writer(&mut out, &cli::info_json(m.info(), &name))?;
                writeln!(out)?;
            } else {
                cli::write_info(&mut out, m.info(), &name)?;
            }
        }
        Command::Bench {
            model,
            input,
            iterations,
            batch,
            warmup,
            json,
            engine,
        } => {
            let report = cli::bench(&model, engine, input.as_deref(), batch, iterations, warmup)?;
            let mut out = stdout.lock();
            if json {
                serde_json::to_writer(&mut out, &report)?;
                writeln!(out)?;
            } else {
                cli::write_bench(&mut out, &report)?;
            }
        }
    }
    Ok(())
}

/// Counts live heap bytes, so the agent can say how much memory a model holds (a shadow
/// model is judged against the active one on it).
#[global_allocator]
static ALLOCATOR: perch::memory::Tracking = perch::memory::Tracking;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,perch=info"))
        .init();
    match parse_args(std::env::args_os().skip(1)).and_then(execute) {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        // A reader that closed the pipe (`perch run ... | head`) is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::from(exit::SUCCESS)
        }
        Err(e) => {
            eprintln!("perch: error: {e:#}");
            ExitCode::from(if UsageError::is_in(&e) {
                exit::USAGE
            } else {
                exit::FAILURE
            })
        }
    }
}
