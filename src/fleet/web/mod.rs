//! The host's web server (`perch-host serve --http`): a dashboard page, the JSON it reads,
//! and a Prometheus endpoint, over its own read connections to the fleet database.
//!
//! - `GET /`: the dashboard, one self-contained HTML page (CSS, JS and SVG charts inline;
//!   nothing is fetched from elsewhere) that polls the JSON endpoints every few seconds.
//! - `GET /api/fleet`, `/api/models`, `/api/devices/{name}/series?since=MS&limit=N`,
//!   `/api/alerts`, `/api/rollouts`, `/api/events?device=NAME&limit=N`: JSON (`api.rs`).
//! - `GET /metrics`: fleet-level series in the Prometheus text format, or OpenMetrics when
//!   the `Accept` header asks for it (`prometheus.rs`, over [`crate::metrics::exposition`]).
//! - `GET /healthz`: `{"status": "ok"}` while the fleet database answers, else 503.
//! - Other methods than GET and HEAD: 405 with `Allow: GET, HEAD`.
//!
//! Requests are answered one at a time on the server's thread; each reads in its own short
//! transaction, and SQLite's WAL mode lets those reads run beside the sync server's writer
//! without blocking it. `docs/dashboard.md` documents the endpoints and series.

mod api;
mod prometheus;

use super::{Fleet, FleetError};
use crate::http::{Limits, Request, Response, Server};
use crate::metrics::Format;
use crate::registry::{Registry, RegistryError};
use crate::sync::server::Shutdown;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

/// The dashboard page, with its CSS and JS.
const PAGE: &str = include_str!("page.html");

/// How long the accept loop waits for a request before looking at the shutdown handle.
const POLL: Duration = Duration::from_millis(200);

/// Why the web server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// The fleet database could not be opened.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// The registry could not be opened.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The HTTP server could not use the listener.
    #[error("dashboard server on {addr}: {reason}")]
    Listen {
        /// The listener's address, if known.
        addr: String,
        /// What failed.
        reason: String,
    },
}

/// Lifetime sums of one device's stored reports, kept up to date by reading only the rows
/// stored since the last scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// `(run, seq)` of the last row summed; `(-1, -1)` before any.
    last: (i64, i64),
    requests: u64,
    errors: u64,
    feedback: u64,
    feedback_correct: u64,
}

/// The web server's read-side view of the fleet database: its own connections, and the
/// running totals behind the Prometheus counters.
pub struct Dashboard {
    fleet: Fleet,
    registry: Registry,
    totals: HashMap<(i64, String), Totals>,
    /// Feature names by the artifact SHA-256 prefix reports carry (see
    /// `prometheus::feature_names`).
    feature_names: HashMap<[u8; 8], Vec<String>>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("db", &self.fleet.path())
            .finish_non_exhaustive()
    }
}

/// Serves the dashboard of the database at `db` on `listener` until `shutdown` is
/// triggered.
///
/// # Errors
/// The database cannot be opened, the listener cannot be used.
pub fn serve(listener: TcpListener, db: PathBuf, shutdown: Shutdown) -> Result<(), WebError> {
    Dashboard::open(db)?.serve(listener, &shutdown)
}

impl Dashboard {
    /// Opens read connections to the database at `db` (creating or migrating it as
    /// [`Fleet::open`] does).
    ///
    /// # Errors
    /// When the database cannot be opened.
    pub fn open(db: PathBuf) -> Result<Dashboard, WebError> {
        let fleet = Fleet::open(&db)?;
        let registry = Registry::open(&db)?;
        Ok(Dashboard {
            fleet,
            registry,
            totals: HashMap::new(),
            feature_names: HashMap::new(),
        })
    }

    /// Answers requests on `listener` until `shutdown` is triggered.
    ///
    /// # Errors
    /// The listener cannot be used.
    pub fn serve(mut self, listener: TcpListener, shutdown: &Shutdown) -> Result<(), WebError> {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let server =
            Server::from_listener(listener, Limits::default()).map_err(|e| WebError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        while !shutdown.is_triggered() {
            if let Some(request) = server.recv_timeout(POLL) {
                self.answer(request);
            }
        }
        Ok(())
    }

    fn answer(&mut self, request: Request) {
        let reply = if matches!(request.method(), "GET" | "HEAD") {
            let url = request.url().to_string();
            let format = Format::from_accept(request.header("accept"));
            // A bug in a handler must cost one request, not the dashboard.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.route_as(&url, format)))
                .unwrap_or_else(|_| Response::error(500, "internal error (see the host's log)"))
        } else {
            Response::method_not_allowed(request.method(), request.path(), "GET, HEAD")
        };
        if reply.status >= 500 {
            log::warn!(
                "dashboard: {} {}: {}",
                request.method(),
                request.url(),
                String::from_utf8_lossy(&reply.body).trim_end()
            );
        }
        request.respond(reply.with_header("Cache-Control", "no-store"));
    }

    /// The answer to `GET url` (path and query), `/metrics` in the 0.0.4 text format.
    #[cfg(test)]
    pub(crate) fn route(&mut self, url: &str) -> Response {
        self.route_as(url, Format::Prometheus)
    }

    /// The answer to `GET url` (path and query), `/metrics` in `format`.
    pub(crate) fn route_as(&mut self, url: &str, format: Format) -> Response {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let query = parse_query(query);
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let result = match parts.as_slice() {
            [] => {
                return Response::new(200, "text/html; charset=utf-8", PAGE);
            }
            ["metrics"] => {
                return match prometheus::render(self, format) {
                    Ok(text) => Response::new(200, format.content_type(), text),
                    Err(e) => Response::error(500, e.to_string()),
                };
            }
            ["healthz"] => {
                // Healthy when the fleet database answers a read (of a small table: a
                // probe every few seconds must not count the reports).
                let read = self
                    .fleet
                    .conn
                    .query_row("SELECT COUNT(*) FROM devices", [], |r| r.get::<_, i64>(0))
                    .map_err(self.fleet.sql());
                return match read {
                    Ok(_) => Response::json(200, &json!({ "status": "ok" })),
                    Err(e) => {
                        Response::json(503, &json!({ "status": "error", "error": e.to_string() }))
                    }
                };
            }
            ["api", "fleet"] => api::fleet(self),
            ["api", "models"] => api::models(self),
            ["api", "alerts"] => api::alerts(self),
            ["api", "rollouts"] => api::rollouts(self),
            ["api", "events"] => api::events(self, &query),
            ["api", "devices", name, "series"] => api::series(self, name, &query),
            _ => Err(ApiError::NotFound(json!({
                "error": format!("no such page: {path}"),
                "endpoints": ["/", "/healthz", "/metrics", "/api/fleet", "/api/models",
                    "/api/devices/{name}/series", "/api/alerts", "/api/rollouts", "/api/events"],
            }))),
        };
        match result {
            Ok(v) => Response::json(200, &v),
            Err(ApiError::NotFound(v)) => Response::json(404, &v),
            Err(ApiError::BadRequest(m)) => Response::error(400, m),
            Err(ApiError::Fleet(e)) => Response::error(500, e.to_string()),
            Err(ApiError::Registry(e)) => Response::error(500, e.to_string()),
        }
    }
}

/// Why an API request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// Nothing there (the JSON body says what).
    #[error("not found: {0}")]
    NotFound(Value),
    /// A bad query parameter.
    #[error("{0}")]
    BadRequest(String),
    /// A database failure.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// A registry failure.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// `a=1&b=x%20y` as pairs, percent-decoded (`+` is a space); malformed escapes are kept
/// as they are.
fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The address the dashboard is reachable at, for messages: `0.0.0.0` and `::` become
/// `127.0.0.1` / `[::1]`.
pub fn display_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        SocketAddr::V6(a) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        a => a.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Percentiles, Report};

    fn report(t_ms: u64, requests: u32) -> Report {
        Report {
            window_start_ms: t_ms,
            window_ms: 60_000,
            requests,
            errors: requests / 50,
            latency_us: Percentiles {
                p50: 900,
                p95: 1800,
                p99: 2500,
            },
            feedback: 10,
            feedback_correct: 9,
            psi_milli: vec![12, 340, 55],
            rss_kib: 2048,
            ..Report::default()
        }
    }

    /// A database with two devices (one with reports) and an alert whose rule needs
    /// escaping, and a dashboard over it.
    fn fixture() -> (tempfile::TempDir, Fleet, Dashboard) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("registry.db");
        let mut fleet = Fleet::open(&db).expect("fleet");
        let a = fleet.add_device("pi-1", "lab").expect("add");
        fleet.add_device("pi-2", "lab").expect("add");
        fleet
            .seen(
                &a,
                None,
                None,
                Some(Some(&crate::sync::ModelRef {
                    name: "digits".into(),
                    version: "2".into(),
                    sha256: [7; 32],
                })),
            )
            .expect("seen");
        let mut exposed = crate::metrics::ExposedBuckets::default();
        [40, 40, 700].iter().for_each(|&us| exposed.record(us));
        // The first report is from before latency buckets, the second carries them.
        let r1 = report(1_000_000, 600);
        let r2 = Report {
            latency_buckets: Some(crate::metrics::LatencyBuckets::from_exposed(&exposed)),
            ..report(1_060_000, 1200)
        };
        fleet
            .store_reports(&[(a.id, 1, &r1), (a.id, 2, &r2)])
            .expect("store");
        fleet
            .conn
            .execute(
                "INSERT INTO alerts (rule, device_id, subject, value, threshold, state,
                   opened_unix_s, updated_unix_s, detail)
                 VALUES ('drift \"x\"\\', ?1, 'f1', 0.34, 0.2, 'open', 1, 1, 'psi high')",
                [a.id],
            )
            .expect("alert");
        let dash = Dashboard::open(db).expect("dashboard");
        (dir, fleet, dash)
    }

    #[test]
    fn metrics_follow_the_exposition_format_and_count_every_report_once() {
        let (_dir, mut fleet, mut dash) = fixture();
        let reply = dash.route("/metrics");
        assert_eq!(reply.status, 200);
        let text = String::from_utf8(reply.body).expect("utf-8");
        let samples = crate::metrics::exposition::tests::check_exposition(&text);
        let get = |name: &str, device: &str, extra: Option<(&str, &str)>| {
            samples
                .iter()
                .find(|(n, l, _)| {
                    n == name
                        && l.iter().any(|(k, v)| k == "device" && v == device)
                        && extra.is_none_or(|(ek, ev)| l.iter().any(|(k, v)| k == ek && v == ev))
                })
                .map(|s| s.2)
        };
        assert_eq!(
            get("perch_device_requests_total", "pi-1", None),
            Some(1800.0)
        );
        assert_eq!(get("perch_device_errors_total", "pi-1", None), Some(36.0));
        assert_eq!(get("perch_device_requests_total", "pi-2", None), Some(0.0));
        assert_eq!(get("perch_device_up", "pi-1", None), Some(1.0));
        assert_eq!(get("perch_device_up", "pi-2", None), Some(0.0));
        assert_eq!(
            get(
                "perch_device_window_latency_seconds",
                "pi-1",
                Some(("quantile", "0.95"))
            ),
            Some(0.0018)
        );
        // The report without buckets is counted apart, the other is the histogram.
        assert_eq!(
            get(
                "perch_device_reports_without_latency_buckets_total",
                "pi-1",
                None
            ),
            Some(1.0)
        );
        assert_eq!(
            get("perch_device_latency_seconds_count", "pi-1", None),
            Some(3.0)
        );
        assert_eq!(
            get("perch_device_latency_seconds_count", "pi-2", None),
            None
        );
        assert_eq!(
            get("perch_device_feature_psi", "pi-1", Some(("feature", "1"))),
            Some(0.34)
        );
        assert_eq!(
            get("perch_device_feature_psi_max", "pi-1", None),
            Some(0.34)
        );
        assert_eq!(
            get("perch_device_feedback_accuracy", "pi-1", None),
            Some(0.9)
        );
        assert!(
            text.contains("perch_device_model_info{device=\"pi-1\",group=\"lab\",model=\"digits\",version=\"2\"} 1\n"),
            "{text}"
        );
        for (name, labels, _) in &samples {
            if name != "perch_device_model_info" {
                assert!(
                    labels.iter().all(|(k, _)| k != "model" && k != "version"),
                    "{name} {labels:?}"
                );
            }
        }
        assert!(
            text.contains("perch_alerts_open{rule=\"drift \\\"x\\\"\\\\\"} 1\n"),
            "{text}"
        );

        // Only the rows stored since the last scrape are summed again.
        let a = fleet.device("pi-1").expect("db").expect("pi-1");
        let mut exposed = crate::metrics::ExposedBuckets::default();
        [40, 40, 700, 700, 700, 30_000_000]
            .iter()
            .for_each(|&us| exposed.record(us));
        let bucketed = Report {
            latency_buckets: Some(crate::metrics::LatencyBuckets::from_exposed(&exposed)),
            ..report(1_120_000, 60)
        };
        fleet
            .store_reports(&[(a.id, 3, &bucketed), (a.id, 4, &bucketed)])
            .expect("store");
        let text = String::from_utf8(dash.route("/metrics").body).expect("utf-8");
        crate::metrics::exposition::tests::check_exposition(&text);
        assert!(
            text.contains("perch_device_requests_total{device=\"pi-1\",group=\"lab\"} 1920\n"),
            "{text}"
        );
        let h = "perch_device_latency_seconds";
        for (le, want) in [
            ("0.000025", 0),
            ("0.00005", 6),
            ("0.001", 13),
            ("10.0", 13),
            ("+Inf", 15),
        ] {
            assert!(
                text.contains(&format!(
                    "{h}_bucket{{device=\"pi-1\",group=\"lab\",le=\"{le}\"}} {want}\n"
                )),
                "le {le}: {text}"
            );
        }
        assert!(text.contains(&format!("{h}_count{{device=\"pi-1\",group=\"lab\"}} 15\n")));
        assert!(text.contains(&format!(
            "{h}_sum{{device=\"pi-1\",group=\"lab\"}} 60.00514\n"
        )));

        // A device removed and registered again starts from zero.
        fleet.remove_device("pi-1").expect("remove");
        let b = fleet.add_device("pi-1", "lab").expect("add");
        fleet
            .store_reports(&[(b.id, 1, &report(2_000_000, 5))])
            .expect("store");
        let text = String::from_utf8(dash.route("/metrics").body).expect("utf-8");
        crate::metrics::exposition::tests::check_exposition(&text);
        assert!(
            text.contains("perch_device_requests_total{device=\"pi-1\",group=\"lab\"} 5\n"),
            "{text}"
        );
    }

    #[test]
    fn feature_psi_is_labelled_by_the_names_the_registered_model_records() {
        use crate::graph::{DType, Graph, Layer, Metadata, Node, Output, Tensor, TensorSpec};
        let (dir, mut fleet, mut dash) = fixture();
        let mut metadata = Metadata::default();
        let names: Vec<String> = ["alcohol", "ash \"dry\"", "hue"].map(String::from).into();
        metadata.set_feature_names(&names, "target");
        let model = crate::graph::Model {
            metadata,
            graph: Graph {
                inputs: vec![TensorSpec {
                    name: "x".into(),
                    dtype: DType::F32,
                    shape: vec![3],
                }],
                nodes: vec![Node {
                    name: "d".into(),
                    layer: Layer::Dense {
                        weight: Tensor::f32(vec![1, 3], vec![1.0, 2.0, 3.0]),
                        bias: None,
                    },
                    inputs: vec![0],
                }],
                outputs: vec![Output {
                    name: "y".into(),
                    value: 1,
                }],
            },
        };
        let mut registry = Registry::open(dir.path().join("registry.db")).expect("registry");
        let v = registry
            .register(
                "wine",
                crate::registry::Payload::Native(Box::new(model)),
                Default::default(),
            )
            .expect("register");
        let mut r = report(1_200_000, 10);
        r.model = crate::util::from_hex::<8>(&v.artifact_sha256[..16]).expect("hex");
        let a = fleet.device("pi-1").expect("db").expect("pi-1");
        fleet.store_reports(&[(a.id, 3, &r)]).expect("store");
        let text = String::from_utf8(dash.route("/metrics").body).expect("utf-8");
        let samples = crate::metrics::exposition::tests::check_exposition(&text);
        let psi: Vec<(&str, f64)> = samples
            .iter()
            .filter(|(n, _, _)| n == "perch_device_feature_psi")
            .filter_map(|(_, l, v)| Some((l.iter().find(|(k, _)| k == "feature")?.1.as_str(), *v)))
            .collect();
        assert_eq!(
            psi,
            [("alcohol", 0.012), ("ash \"dry\"", 0.34), ("hue", 0.055)]
        );
    }

    #[test]
    fn healthz_and_openmetrics() {
        let (_dir, _fleet, mut dash) = fixture();
        let health = dash.route("/healthz");
        assert_eq!(health.status, 200);
        assert_eq!(
            serde_json::from_slice::<Value>(&health.body).expect("JSON"),
            json!({"status": "ok"})
        );
        let reply = dash.route_as("/metrics", Format::OpenMetrics);
        assert_eq!(reply.content_type, Format::OpenMetrics.content_type());
        let text = String::from_utf8(reply.body).expect("utf-8");
        crate::metrics::exposition::tests::check(&text, Format::OpenMetrics);
        assert!(
            text.contains("# TYPE perch_device_requests counter\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE perch_device_model info\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    /// Every series the Grafana dashboard in docs/ queries is one the host exports, with
    /// the labels the dashboard groups by.
    #[test]
    fn the_grafana_dashboard_queries_only_exported_series() {
        let (_dir, _fleet, mut dash) = fixture();
        let text = String::from_utf8(dash.route("/metrics").body).expect("utf-8");
        let samples = crate::metrics::exposition::tests::check_exposition(&text);
        let board: Value =
            serde_json::from_str(include_str!("../../../docs/grafana-dashboard.json"))
                .expect("docs/grafana-dashboard.json is JSON");
        let mut exprs = Vec::new();
        for panel in board["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                exprs.push(target["expr"].as_str().expect("expr").to_string());
            }
        }
        assert!(exprs.len() >= 6, "{exprs:?}");
        let mut queried = 0;
        for expr in &exprs {
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            let names: Vec<&str> = words.filter(|w| w.starts_with("perch_")).collect();
            assert!(!names.is_empty(), "{expr} queries no perch series");
            // A family the fixture has no rows for (rollouts) is still declared.
            for name in &names {
                queried += 1;
                let declared = text.contains(&format!("# TYPE {name} "));
                assert!(
                    declared || samples.iter().any(|(n, _, _)| n == name),
                    "{expr}: no series {name} in\n{text}"
                );
            }
            let queried_samples: Vec<_> = samples
                .iter()
                .filter(|(n, _, _)| names.contains(&n.as_str()))
                .collect();
            // Labels grouped by (`by (a, b)`) are on the series.
            for group in expr.split("by (").skip(1) {
                let labels = group.split(')').next().unwrap_or("");
                for label in labels.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                    assert!(
                        queried_samples.is_empty()
                            || queried_samples
                                .iter()
                                .any(|(_, l, _)| l.iter().any(|(k, _)| k == label)),
                        "{expr}: no series it queries has the label {label}"
                    );
                }
            }
        }
        assert!(queried >= exprs.len(), "{exprs:?}");
    }

    #[test]
    fn api_answers_and_refusals() {
        let (_dir, _fleet, mut dash) = fixture();
        let json = |r: Response| -> Value { serde_json::from_slice(&r.body).expect("JSON body") };

        let page = dash.route("/");
        assert_eq!(
            (page.status, page.content_type.as_str()),
            (200, "text/html; charset=utf-8")
        );

        let series = dash.route("/api/devices/pi-1/series");
        assert_eq!(series.status, 200);
        let v = json(series);
        assert_eq!(v["points"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["points"][1]["rps"], 20.0);
        assert_eq!(v["points"][1]["psi_max"], 0.34);
        let since = json(dash.route("/api/devices/pi-1/series?since=1000000"));
        assert_eq!(since["points"].as_array().map(Vec::len), Some(1));
        let last = json(dash.route("/api/devices/pi-1/series?limit=1"));
        assert_eq!(last["points"][0]["seq"], 2);

        let fleet = json(dash.route("/api/fleet"));
        assert_eq!(fleet["devices"][0]["model_ref"], "digits@2");
        assert_eq!(fleet["summary"]["open_alerts"], 1);
        let alerts = json(dash.route("/api/alerts"));
        assert_eq!(alerts["open"][0]["device"], "pi-1");
        for path in [
            "/api/models",
            "/api/rollouts",
            "/api/events?device=pi-1&limit=5",
        ] {
            assert_eq!(dash.route(path).status, 200, "{path}");
        }

        let unknown = dash.route("/api/devices/nope/series");
        assert_eq!(unknown.status, 404);
        assert_eq!(unknown.content_type, "application/json");
        let v = json(unknown);
        assert_eq!(v["error"], "unknown device \"nope\"");
        assert_eq!(v["known"], serde_json::json!(["pi-1", "pi-2"]));
        assert_eq!(dash.route("/api/events?device=nope").status, 404);
        for path in [
            "/nope",
            "/api",
            "/api/devices/pi-1",
            "/api/devices/pi-1/series/x",
            "/metrics/x",
        ] {
            let r = dash.route(path);
            assert_eq!(r.status, 404, "{path}");
            assert!(json(r)["error"].is_string());
        }
        for path in [
            "/api/devices/pi-1/series?since=-1",
            "/api/devices/pi-1/series?since=abc",
            "/api/devices/pi-1/series?limit=1e3",
            "/api/events?limit=x",
        ] {
            assert_eq!(dash.route(path).status, 400, "{path}");
        }
    }

    #[test]
    fn query_is_percent_decoded() {
        let q = parse_query("since=12&device=pi%2D1&x=a+b&bad=%zz&tail=%4");
        assert_eq!(q["since"], "12");
        assert_eq!(q["device"], "pi-1");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["tail"], "%4");
        assert!(parse_query("").is_empty());
    }
}
