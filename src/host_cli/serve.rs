//! `perch-host serve`: the sync server devices connect to, with the web dashboard and
//! Prometheus endpoint beside it and the monitor (alerts, rollouts, retraining) in a thread.

use crate::fleet::alerts::Rules;
use crate::fleet::{self, Fleet, FleetStore};
use crate::sync::server::{self, ServerConfig, Shutdown};
use anyhow::{Context, Result, anyhow};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What `perch-host serve` runs with.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    /// The sync server's settings.
    pub server: ServerConfig,
    /// Alert rules (checked when loaded, see [`fleet::alerts::load_rules`]).
    pub rules: Rules,
    /// What the monitor does by itself (rollouts, retraining); `None`: no monitor.
    pub automation: Option<super::lifecycle::Automation>,
}

impl ServeConfig {
    /// `perch-host serve`'s configuration: heartbeats every `heartbeat_s` seconds (devices
    /// silent for four of them are dropped), at most `max_connections` devices at once, the
    /// alert `rules`, and the monitor automating rollouts and retraining as they say.
    pub fn with_monitor(heartbeat_s: u32, max_connections: usize, rules: Rules) -> Self {
        let heartbeat_s = heartbeat_s.max(1);
        ServeConfig {
            server: ServerConfig {
                heartbeat_s,
                idle_timeout: Duration::from_secs(u64::from(heartbeat_s) * 4),
                max_connections: max_connections.max(1),
                ..Default::default()
            },
            automation: Some(super::lifecycle::Automation::from_rules(&rules)),
            rules,
        }
    }
}

/// Runs the sync server on `listen` and, unless `http` is `None`, the dashboard and
/// Prometheus endpoint on `http` beside it, until `shutdown` is triggered (which stops
/// both). `dashboard_ready` is told the dashboard's bound address before the sync server
/// starts, `ready` the sync server's.
///
/// # Errors
/// The database cannot be opened, an address cannot be bound, the dashboard failed.
pub fn serve_with_dashboard(
    db: &Path,
    listen: &str,
    http: Option<&str>,
    config: ServeConfig,
    shutdown: Shutdown,
    ready: impl FnOnce(SocketAddr),
    dashboard_ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let Some(http) = http else {
        return serve(db, listen, config, shutdown, ready);
    };
    let dashboard = fleet::web::Dashboard::open(db.to_path_buf())
        .with_context(|| format!("opening {} for the dashboard", db.display()))?;
    let listener = TcpListener::bind(http)
        .with_context(|| format!("dashboard: listening on {http} (--http off disables it)"))?;
    dashboard_ready(listener.local_addr()?);
    let web = {
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("dashboard".into())
            .spawn(move || dashboard.serve(listener, &shutdown))
            .context("starting the dashboard thread")?
    };
    let result = serve(db, listen, config, shutdown.clone(), ready);
    shutdown.trigger();
    let web = match web.join() {
        Ok(r) => r.context("dashboard"),
        Err(_) => Err(anyhow!("the dashboard thread panicked")),
    };
    result.and(web)
}

/// Runs the sync server on `listen` until `shutdown` is triggered; `ready` is told the
/// bound address (useful with port 0).
///
/// # Errors
/// The database cannot be opened, the address cannot be bound.
pub fn serve(
    db: &Path,
    listen: &str,
    config: ServeConfig,
    shutdown: Shutdown,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let store = Arc::new(FleetStore::open_with(db, config.rules.retention)?);
    fleet::keys::load_or_create(db)?;
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let monitor = match config.automation {
        Some(a) => {
            let mut m = super::lifecycle::Monitor::open(db, a)?;
            let mut f = Fleet::open(db)?;
            let (stop, rules) = (shutdown.clone(), config.rules.clone());
            Some(
                std::thread::Builder::new()
                    .name("monitor".into())
                    .spawn(move || {
                        while !stop.is_triggered() {
                            let opened = match fleet::alerts::evaluate(
                                &mut f,
                                &rules,
                                fleet::now_unix_s(),
                            ) {
                                Ok(changes) => {
                                    for c in &changes {
                                        log::info!(
                                            "alert {:?}: {} on {}: {}",
                                            c.change,
                                            c.rule,
                                            c.device,
                                            c.detail
                                        );
                                    }
                                    super::lifecycle::opened(&changes)
                                }
                                Err(e) => {
                                    log::error!("alerts: {e}");
                                    Vec::new()
                                }
                            };
                            match m.step(&opened) {
                                Ok(lines) => lines.iter().for_each(|l| log::info!("{l}")),
                                Err(e) => log::error!("monitor: {e:#}"),
                            }
                            std::thread::sleep(MONITOR_PERIOD);
                        }
                    })
                    .context("starting the monitor thread")?,
            )
        }
        None => None,
    };
    ready(listener.local_addr()?);
    let served = server::serve(listener, store.clone(), config.server, shutdown.clone());
    shutdown.trigger();
    if let Some(m) = monitor {
        let _ = m.join();
    }
    store.close();
    served?;
    Ok(())
}

/// How often the monitor steps rollouts and evaluates alerts.
pub const MONITOR_PERIOD: Duration = Duration::from_millis(500);
