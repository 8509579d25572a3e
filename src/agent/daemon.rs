//! The running agent: its shared state, the install and rollback procedures, the threads.

use super::serving::{Active, Loaded, RollbackCandidate, RollbackPolicy, Serving, Shadow};
use super::store::{self, ModelStore};
use super::{Config, http, link};
use crate::graph::budget::Requirements;
use crate::metrics::{Report, ReportQueue};
use crate::runtime;
use crate::sync::ModelRef;
use crate::sync::server::Shutdown;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The model store is unusable.
    #[error("model store in {dir}: {error}")]
    Store {
        /// State directory.
        dir: String,
        /// The cause.
        error: store::StoreError,
    },
    /// The report queue is unusable.
    #[error("report queue in {dir}: {reason}")]
    Queue {
        /// Queue directory.
        dir: String,
        /// The cause.
        reason: String,
    },
    /// The local API cannot listen.
    #[error("cannot serve the local API on {addr}: {reason}")]
    Http {
        /// Configured address.
        addr: String,
        /// The cause.
        reason: String,
    },
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {error}")]
    Thread {
        /// Which.
        what: &'static str,
        /// The cause.
        error: std::io::Error,
    },
}

/// The agent's link to the host, as `GET /health` reports it.
#[derive(Debug, Clone, Default)]
pub(crate) struct LinkStatus {
    pub connected: bool,
    pub last_error: Option<String>,
    pub sessions: u64,
    /// Times the link thread was started again after a panic.
    pub restarts: u64,
}

/// State shared by the agent's threads.
pub(crate) struct Shared {
    pub config: Config,
    pub serving: Mutex<Serving>,
    pub queue: Mutex<ReportQueue>,
    pub store: Mutex<ModelStore>,
    pub link: Mutex<LinkStatus>,
}

pub(crate) use crate::lock;

fn failpoints() -> &'static [String] {
    static POINTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("PERCH_FAILPOINTS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    })
}

/// Fault injection for the install tests: `PERCH_FAILPOINTS=install:after-verify,...`
/// makes the agent abort (as a power cut would stop it) when it reaches that step.
pub(crate) fn failpoint(name: &str) {
    if failpoints().iter().any(|p| p == name) {
        log::error!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Fault injection for the supervisor test: the first time the agent reaches `name` (when
/// `PERCH_FAILPOINTS` names it), the thread panics.
pub(crate) fn failpoint_panic_once(name: &str) {
    static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if failpoints().iter().any(|p| p == name)
        && !FIRED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        panic!("failpoint {name}");
    }
}

/// Why an offered model was not installed, for `Rejected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// What went wrong.
    pub reason: String,
    /// The cause may pass (a failing write, a full disk): the host offers it again later.
    pub transient: bool,
}

impl Refusal {
    /// A refusal that will not change: a bad signature, a failed canary.
    pub fn permanent(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            transient: false,
        }
    }

    /// A refusal whose cause may pass: the device's own storage failed.
    pub fn transient(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            transient: true,
        }
    }
}

impl Shared {
    /// Queues a finished window's report.
    pub fn enqueue(&self, report: Report) {
        if let Err(e) = lock(&self.queue).push(report) {
            log::error!("cannot queue a metrics report: {e}");
        }
    }

    /// Verifies the downloaded (or staged) artifact `model` and makes it the active model,
    /// as installed under the manifest release `release`. On failure the running model is
    /// kept and the partial download deleted.
    ///
    /// # Errors
    /// The reason, for `Rejected`.
    pub fn install(&self, model: &ModelRef, release: u64) -> Result<(), Refusal> {
        let result = self.verify_and_activate(model, release);
        if result.is_err() {
            lock(&self.store).discard_partial(&model.sha256);
        }
        result
    }

    /// Reads the downloaded (or staged) bytes of `model` and checks them: the offered
    /// SHA-256, the host's signature, that they load, that the canary passes.
    fn verify(&self, model: &ModelRef) -> Result<Loaded, Refusal> {
        use sha2::{Digest, Sha256};
        let bytes = lock(&self.store)
            .read_candidate(&model.sha256)
            .map_err(|e| Refusal::transient(e.to_string()))?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if digest != model.sha256 {
            return Err(Refusal::permanent(format!(
                "downloaded artifact has SHA-256 {}, the offer said {}",
                crate::util::to_hex(&digest),
                crate::util::to_hex(&model.sha256)
            )));
        }
        let artifact = crate::artifact::verify_signed(&bytes, &self.config.host_public_key)
            .map_err(|e| Refusal::permanent(e.to_string()))?;
        if let Some(req) = artifact
            .model
            .metadata
            .requirements()
            .map_err(|e| Refusal::permanent(e.to_string()))?
        {
            check_requirements(&req, &self.config).map_err(Refusal::permanent)?;
        }
        drop(artifact);
        let mut loaded = self
            .load(&bytes)
            .map_err(|e| Refusal::permanent(format!("model does not load: {e}")))?;
        check_canary(&mut loaded.model).map_err(Refusal::permanent)?;
        Ok(loaded)
    }

    /// Verifies a downloaded candidate and runs it in shadow beside the active model. The
    /// download is kept (complete) in `incoming/`, so a restart or a promotion to active
    /// need not fetch it again.
    ///
    /// # Errors
    /// The reason, for `Rejected`.
    pub fn install_shadow(&self, model: &ModelRef, push: u64) -> Result<(), Refusal> {
        let loaded = match self.verify(model) {
            Ok(l) => l,
            Err(e) => {
                lock(&self.store).discard_partial(&model.sha256);
                return Err(e);
            }
        };
        let mut serving = lock(&self.serving);
        if serving.active().is_none() {
            return Err(Refusal::permanent("no active model to run a shadow beside"));
        }
        serving.set_shadow(Shadow::new(loaded, model.clone(), push));
        log::info!(
            "running {}@{} in shadow (push {push})",
            model.name,
            model.version
        );
        Ok(())
    }

    /// Ends the shadow run of push `push`.
    pub fn end_shadow(&self, push: u64) -> Option<ModelRef> {
        let ended = lock(&self.serving).end_shadow(push)?;
        log::info!(
            "shadow run of {}@{} ended",
            ended.reference.name,
            ended.reference.version
        );
        Some(ended.reference)
    }

    fn verify_and_activate(&self, model: &ModelRef, release: u64) -> Result<(), Refusal> {
        let loaded = self.verify(model)?;
        failpoint("install:after-verify");
        {
            let mut store = lock(&self.store);
            store
                .stage(model)
                .map_err(|e| Refusal::transient(e.to_string()))?;
            store
                .activate(model, release, || failpoint("install:before-rename"))
                .map_err(|e| Refusal::transient(e.to_string()))?;
        }
        failpoint("install:after-rename");
        let replaced = lock(&self.serving).replace(
            Active::new(loaded, model.clone(), self.config.recent_predictions),
            true,
        );
        if let Some(report) = replaced {
            self.enqueue(report);
        }
        log::info!(
            "installed {}@{} ({})",
            model.name,
            model.version,
            crate::util::to_hex(&model.sha256[..8])
        );
        Ok(())
    }

    /// The watched model's error rate tripped: goes back to the previous model, unless
    /// the previous model fails on the same inputs (then the inputs were at fault, and a
    /// client cannot make the device give up a model by sending what no model answers).
    pub fn consider_rollback(&self, candidate: RollbackCandidate) {
        let previous = {
            let store = lock(&self.store);
            store.previous().cloned().map(|p| (store.model_path(&p), p))
        };
        let Some((path, to)) = previous else {
            log::warn!(
                "{}, but there is no previous model to go back to",
                candidate.reason
            );
            return;
        };
        let loaded = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| self.load(&b).map_err(|e| e.to_string()));
        let mut loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                log::error!(
                    "{}, but the previous model {}@{} does not load: {e}",
                    candidate.reason,
                    to.name,
                    to.version
                );
                return;
            }
        };
        let tried = candidate.failing.len();
        let also_failed = candidate
            .failing
            .iter()
            .filter(|sample| {
                !loaded
                    .model
                    .run(sample, 1)
                    .is_ok_and(|outs| super::serving::all_finite(&outs))
            })
            .count();
        if tried > 0 && also_failed * 2 >= tried {
            log::warn!(
                "not going back: {}; but the previous model {}@{} fails on {also_failed} of the \
                 {tried} failing inputs kept too, so the inputs were at fault, not the model",
                candidate.reason,
                to.name,
                to.version
            );
            lock(&self.serving).inputs_at_fault(&candidate);
            return;
        }
        self.roll_back(&candidate.reason, loaded);
    }

    /// Goes back to the previous model, `loaded` from its file (after the active one's
    /// error rate jumped on inputs the previous one answers).
    fn roll_back(&self, reason: &str, loaded: Loaded) {
        let mut store = lock(&self.store);
        let (from, to) = match store.roll_back(reason) {
            Ok(Some(pair)) => pair,
            Ok(None) => {
                log::warn!("{reason}, but there is no previous model to go back to");
                return;
            }
            Err(e) => {
                log::error!("rollback failed: {e}");
                return;
            }
        };
        drop(store);
        if let Some(report) = lock(&self.serving).replace(
            Active::new(loaded, to.clone(), self.config.recent_predictions),
            false,
        ) {
            self.enqueue(report);
        }
        log::warn!(
            "rolled back from {}@{} to {}@{}: {reason}",
            from.name,
            from.version,
            to.name,
            to.version
        );
    }

    /// Loads artifact bytes within this device's memory budget.
    fn load(&self, bytes: &[u8]) -> Result<Loaded, runtime::RuntimeError> {
        Loaded::from_bytes(bytes, self.config.max_model_memory_bytes)
    }
}

/// Checks what a model states it needs (its [`Requirements`] section, or the manifest an
/// offer carries) against this device: the format version, ops and kernels this build has,
/// and the planned peak memory against `max_model_memory_bytes`. Called on the downloaded
/// artifact before it is loaded; the offer path can call it before downloading.
///
/// # Errors
/// The reason, for `Rejected`.
pub(crate) fn check_requirements(req: &Requirements, config: &Config) -> Result<(), String> {
    req.check(config.max_model_memory_bytes)
        .map_err(|e| format!("{e} (max_model_memory_bytes in this device's configuration)"))
}

/// Runs the artifact's canary through the loaded model.
///
/// # Errors
/// No canary, a damaged one, or outputs that differ.
pub fn check_canary(model: &mut runtime::Model) -> Result<(), String> {
    let info = model.info();
    let sample_len = info.inputs.first().map_or(0, |s| s.sample_len());
    let canary = info
        .metadata
        .as_ref()
        .ok_or("model has no metadata, so no canary")?
        .canary(sample_len)
        .map_err(|e| e.to_string())?
        .ok_or("artifact carries no canary input; push it with perch-host, which adds one")?;
    runtime::check_canary(model, &canary)
}

/// A running agent.
pub struct Agent {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("device", &self.shared.config.device)
            .field("http_addr", &self.http_addr)
            .finish()
    }
}

impl Agent {
    /// Opens the state directory, loads the active model (or the previous one when the
    /// active one no longer loads), binds the local API and starts the threads.
    ///
    /// # Errors
    /// An unusable state directory or queue, an address the API cannot bind.
    pub fn start(config: Config, shutdown: Shutdown) -> Result<Agent, AgentError> {
        let dir = config.state_dir.clone();
        let store_err = |error| AgentError::Store {
            dir: dir.display().to_string(),
            error,
        };
        let mut store = ModelStore::open(&dir).map_err(store_err)?;
        let queue_dir = dir.join("queue");
        let queue = ReportQueue::open(&queue_dir, config.queue_capacity).map_err(|e| {
            AgentError::Queue {
                dir: queue_dir.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        let mut serving = Serving::new(RollbackPolicy {
            min_requests: config.rollback_min_requests,
            error_rate: config.rollback_error_rate,
        });
        // The active model, or the one before it if the active file became unusable.
        while let Some(active) = store.active().cloned() {
            let path = store.model_path(&active);
            let loaded = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    Loaded::from_bytes(&b, config.max_model_memory_bytes).map_err(|e| e.to_string())
                });
            match loaded {
                Ok(m) => {
                    log::info!("serving {}@{}", active.name, active.version);
                    serving.replace(Active::new(m, active, config.recent_predictions), false);
                    break;
                }
                Err(e) => {
                    let reason = format!("installed model {} does not load: {e}", path.display());
                    log::error!("{reason}");
                    store.drop_active(&reason).map_err(store_err)?;
                }
            }
        }
        if serving.active().is_none() {
            log::info!("no model installed yet; waiting for the host to push one");
        }
        let limits = crate::http::Limits {
            max_body_bytes: http::MAX_BODY_BYTES,
            ..crate::http::Limits::default()
        };
        let server =
            crate::http::Server::bind(&config.http, limits).map_err(|e| AgentError::Http {
                addr: config.http.clone(),
                reason: e.to_string(),
            })?;
        let http_addr = server.local_addr();
        let shared = Arc::new(Shared {
            config,
            serving: Mutex::new(serving),
            queue: Mutex::new(queue),
            store: Mutex::new(store),
            link: Mutex::new(LinkStatus::default()),
        });
        let mut threads = Vec::new();
        let spawn = |what: &'static str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(what.into())
                .spawn(f)
                .map_err(|error| AgentError::Thread { what, error })
        };
        {
            let (s, d) = (shared.clone(), shutdown.clone());
            threads.push(spawn("link", Box::new(move || supervise_link(&s, &d)))?);
        }
        {
            let (s, d) = (shared.clone(), shutdown.clone());
            threads.push(spawn("windows", Box::new(move || run_windows(&s, &d)))?);
        }
        {
            let (s, d) = (shared.clone(), shutdown.clone());
            threads.push(spawn("http", Box::new(move || http::run(&server, &s, &d)))?);
        }
        log::info!("local API on http://{http_addr}");
        Ok(Agent {
            shared,
            http_addr,
            threads,
            shutdown,
        })
    }

    /// Where the local API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Stops the threads (after the current window is queued) and waits for them.
    pub fn stop(self) {
        self.shutdown.trigger();
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Waits until the shutdown handle is triggered elsewhere, then stops.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Runs the link to the host, starting it again after a panic (a bug must not leave the
/// device serving without ever reporting again). Builds with `panic = "abort"` (the
/// compact profile) stop the process instead, and the service manager restarts it.
fn supervise_link(shared: &Shared, shutdown: &Shutdown) {
    while !shutdown.is_triggered() {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            link::run(shared, shutdown);
        }));
        let Err(panic) = run else { break };
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        log::error!("the link thread panicked ({what}); starting it again in 1 s");
        {
            let mut s = lock(&shared.link);
            s.connected = false;
            s.last_error = Some(format!("link thread panicked: {what}"));
            s.restarts += 1;
        }
        let until = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < until && !shutdown.is_triggered() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Closes a metrics window every `report_interval` and queues its report.
fn run_windows(shared: &Shared, shutdown: &Shutdown) {
    let interval = shared.config.report_interval;
    let tick = Duration::from_millis(50).min(interval);
    let mut next = std::time::Instant::now() + interval;
    loop {
        if shutdown.is_triggered() {
            break;
        }
        std::thread::sleep(tick);
        if std::time::Instant::now() < next {
            continue;
        }
        next += interval;
        let report = lock(&shared.serving).close_window();
        if let Some(r) = report {
            shared.enqueue(r);
        }
    }
    // The unfinished window is not lost at a clean stop.
    if let Some(r) = lock(&shared.serving).close_window() {
        shared.enqueue(r);
    }
}
