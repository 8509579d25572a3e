//! `perch`: the device runtime. Thin: parses arguments, calls the library, maps errors to
//! exit codes.

use anyhow::{Context, Result, bail};
use perch::cli::{self, OutputFormat};
use perch::runtime::EngineChoice;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
perch: run machine-learning models on this device, offline

Usage:
  perch run MODEL --input FILE [--format csv|json] [--output FILE] [--batch B] [--engine auto|native|tract]
            [--max-memory BYTES]
  perch info MODEL [--json] [--engine auto|native|tract] [--max-memory BYTES]
  perch bench MODEL [--input FILE] [--iterations N] [--batch B] [--warmup N] [--json]
  perch agent --config FILE
  perch --version | --help

MODEL is a .perch artifact or an .onnx file. FILE is CSV (rows of numbers, optional
header), .npy, or JSON ([[...], ...]). ONNX models whose ops all exist natively run on
perch's native engine unless --engine tract is given.

--max-memory (default 1G; K, M, G suffixes) bounds what a model may plan to allocate:
its weights, its buffers and scratch. A model over it is refused before anything is
allocated; `perch run` splits its input into batches that fit.

`perch agent` runs until stopped: it keeps a link to the host in FILE (written by
`perch-host devices add`), installs the models it pushes, reports metrics, and serves
POST /predict, POST /feedback, GET /health and GET /metrics on 127.0.0.1. Log verbosity:
RUST_LOG=debug|info|warn.
";

enum Command {
    Run {
        model: PathBuf,
        input: PathBuf,
        format: OutputFormat,
        output: Option<PathBuf>,
        batch: Option<usize>,
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

fn parse_args() -> Result<Command> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let verb = match parser.next()? {
        None => return Ok(Command::Help),
        Some(Long("help") | Short('h')) => return Ok(Command::Help),
        Some(Long("version") | Short('V')) => return Ok(Command::Version),
        Some(Value(v)) => v.string()?,
        Some(other) => return Err(other.unexpected().into()),
    };
    let (mut model, mut input, mut output, mut config) = (None, None, None, None);
    let (mut format, mut json, mut engine) = (OutputFormat::Csv, false, EngineChoice::Auto);
    let (mut iterations, mut batch, mut warmup) = (1000usize, None, 100usize);
    let mut max_memory = perch::graph::budget::DEFAULT_MAX_MEMORY_BYTES;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("input") | Short('i') => input = Some(PathBuf::from(parser.value()?)),
            Long("output") | Short('o') => output = Some(PathBuf::from(parser.value()?)),
            Long("format") | Short('f') => format = parser.value()?.string()?.parse()?,
            Long("engine") => engine = parser.value()?.string()?.parse()?,
            Long("json") => json = true,
            Long("iterations") | Short('n') => iterations = parser.value()?.parse()?,
            Long("batch") | Short('b') => batch = Some(parser.value()?.parse()?),
            Long("warmup") => warmup = parser.value()?.parse()?,
            Long("max-memory") => max_memory = cli::parse_bytes(&parser.value()?.string()?)?,
            Long("config") | Short('c') => config = Some(PathBuf::from(parser.value()?)),
            Long("help") | Short('h') => return Ok(Command::Help),
            Value(v) if model.is_none() => model = Some(PathBuf::from(v)),
            other => return Err(other.unexpected().into()),
        }
    }
    let model = || {
        model
            .clone()
            .context("missing MODEL argument (see perch --help)")
    };
    Ok(match verb.as_str() {
        "run" => Command::Run {
            model: model()?,
            input: input.context("perch run needs --input FILE")?,
            format,
            output,
            batch,
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
            config: config
                .context("perch agent needs --config FILE (see perch-host devices add)")?,
        },
        "help" => Command::Help,
        other => bail!(
            "unknown command {other:?} (expected run, info, bench or agent; see perch --help)"
        ),
    })
}

fn execute(cmd: Command) -> Result<()> {
    let stdout = std::io::stdout();
    match cmd {
        Command::Help => print!("{USAGE}"),
        Command::Agent { config } => {
            let cfg = perch::agent::Config::load(&config)?;
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
            engine,
            max_memory,
        } => {
            let mut m = cli::load_model_within(&model, engine, max_memory)?;
            let array = perch::io::read_input(&input)?;
            let total = m
                .batch_of(&array.shape, array.data.len())
                .with_context(|| format!("running on {}", input.display()))?;
            let batch = cli::batch_within(&m, batch, total, max_memory)?;
            let outputs = cli::predict_array(&mut m, &array, batch)
                .with_context(|| format!("running on {}", input.display()))?;
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
                serde_json::to_writer_pretty(&mut out, &cli::info_json(m.info(), &name))?;
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
    match parse_args().and_then(execute) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that closed the pipe (`perch run ... | head`) is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("perch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
