//! Both `/metrics` endpoints, scraped from running binaries (`perch-host serve --http` and
//! `perch agent` with an iris model pushed to it) and read with the strict parser
//! `perch::metrics::exposition::parse`, in both text formats: types right, the agent's
//! latency histograms aggregatable (the agent's and the host's per device: cumulative, `+Inf`
//! equal to `_count`, the bounds every device shares; the host's counts every request the
//! agent served once its reports arrived), no `model`/`version` labels on counters or `up`,
//! features named by the model's metadata. Also: `Allow` on a 405 from either server, the host's `/healthz`.
use crate::harness::{Agent, Host, corpus_dir};
use perch::metrics::exposition::{Parsed, parse};
use perch::metrics::{EXPOSED_BOUNDS_US, Format};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A response: status, headers (names lower-cased), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request with `Connection: close` and the `extra` header lines.
fn request(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

const OPENMETRICS_ACCEPT: &str = "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";

/// `GET /metrics` in the 0.0.4 text and in OpenMetrics, each parsed strictly; the
/// 0.0.4 scrape.
fn scrape(addr: SocketAddr) -> Parsed {
    let plain = request(addr, "GET", "/metrics", "");
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(
        plain.header("content-type"),
        Some(Format::Prometheus.content_type())
    );
    let parsed = parse(&plain.body, Format::Prometheus)
        .unwrap_or_else(|e| panic!("{addr}: {e}\n{}", plain.body));
    let open = request(addr, "GET", "/metrics", OPENMETRICS_ACCEPT);
    assert_eq!(open.status, 200, "{}", open.body);
    assert_eq!(
        open.header("content-type"),
        Some(Format::OpenMetrics.content_type())
    );
    let om = parse(&open.body, Format::OpenMetrics)
        .unwrap_or_else(|e| panic!("{addr} OpenMetrics: {e}\n{}", open.body));
    // The same families in both, counters named without _total in OpenMetrics.
    for (family, kind) in &parsed.types {
        let om_name = match kind.as_str() {
            "counter" => family.strip_suffix("_total").expect("counter _total"),
            _ => family,
        };
        let om_kind = om.types.get(om_name).or_else(|| {
            om.types
                .get(family.strip_suffix("_info").unwrap_or(family))
                .filter(|k| *k == "info")
        });
        assert!(om_kind.is_some(), "{family} missing from OpenMetrics");
    }
    parsed
}

/// What every scrape must satisfy: model and version only on `_info` series.
fn no_model_labels_outside_info(parsed: &Parsed, who: &str) {
    for s in &parsed.samples {
        if s.name.ends_with("_info") {
            continue;
        }
        assert!(
            s.label("model").is_none() && s.label("version").is_none(),
            "{who}: {} carries model/version labels: {:?}",
            s.name,
            s.labels
        );
    }
    for s in parsed.samples.iter().filter(|s| s.name.ends_with("_total")) {
        assert_eq!(
            parsed.type_of(&s.name),
            Some("counter"),
            "{who}: {}",
            s.name
        );
    }
}

/// The histogram `family` of the series with `labels`: its `le` bounds and cumulative
/// counts in order (checked to be the shared bounds, then `+Inf`, and never to fall), and
/// its `_count`, which must equal the `+Inf` bucket.
fn histogram(parsed: &Parsed, family: &str, labels: &[(&str, &str)]) -> (Vec<f64>, f64) {
    let bucket = format!("{family}_bucket");
    assert_eq!(parsed.type_of(&bucket), Some("histogram"), "{family}");
    let buckets: Vec<(f64, f64)> = parsed
        .samples
        .iter()
        .filter(|s| s.name == bucket && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| {
            (
                s.label("le").and_then(|l| l.parse().ok()).expect("le"),
                s.value,
            )
        })
        .collect();
    let want: Vec<f64> = EXPOSED_BOUNDS_US
        .iter()
        .map(|&us| us as f64 / 1e6)
        .chain([f64::INFINITY])
        .collect();
    let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
    assert_eq!(les, want, "{family}: the bounds every device shares");
    let counts: Vec<f64> = buckets.iter().map(|b| b.1).collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "{family}: not cumulative: {counts:?}"
    );
    let count = value(parsed, &format!("{family}_count"), labels).expect("_count");
    assert_eq!(
        counts.last().copied(),
        Some(count),
        "{family}: +Inf is _count"
    );
    assert!(value(parsed, &format!("{family}_sum"), labels).is_some_and(|s| s > 0.0));
    (counts, count)
}

fn value(parsed: &Parsed, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    parsed
        .samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
}

#[test]
fn agent_and_host_metrics_follow_the_prometheus_conventions() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    let data = corpus_dir().join("datasets/iris/iris_train.csv");
    host.cli(&[
        "train",
        data.to_str().unwrap(),
        "--target",
        "target",
        "--model",
        "softmax",
        "--name",
        "iris",
    ]);
    let addr = host.serve(0).to_string();
    let web: SocketAddr = {
        let proc = host.proc.as_mut().expect("serving");
        let line = proc.wait_line("dashboard on http://", Duration::from_secs(20));
        line.split("http://")
            .nth(1)
            .and_then(|r| r.trim().trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    };
    let config = host.add_device("pi", "kitchen", &addr, "");
    let agent = Agent::start("pi", &config, None);
    let push = host.cli_json(&["push", "iris@1", "--to", "pi"]);
    let states = host.wait_push(push["push"].as_u64().unwrap(), Duration::from_secs(60));
    assert_eq!(states[0].1, "installed", "{states:?}");
    agent.wait_health("iris installed", Duration::from_secs(30), |h| {
        h["model"]["name"] == "iris"
    });
    let rows =
        json!({"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]});
    for _ in 0..4 {
        let (status, body) = agent.post("/predict", &rows.to_string());
        assert_eq!(status, 200, "{body}");
    }

    // The agent.
    let a = scrape(agent.http);
    no_model_labels_outside_info(&a, "agent");
    assert_eq!(a.type_of("perch_latency_seconds_bucket"), Some("histogram"));
    assert_eq!(a.type_of("perch_requests_total"), Some("counter"));
    assert_eq!(a.type_of("perch_agent_connected"), Some("gauge"));
    assert_eq!(a.type_of("perch_model_info"), Some("gauge"));
    assert_eq!(value(&a, "perch_requests_total", &[]), Some(12.0));
    assert_eq!(value(&a, "perch_latency_seconds_count", &[]), Some(12.0));
    // The bounds are the ones every device uses, so buckets sum across a fleet.
    histogram(&a, "perch_latency_seconds", &[]);
    let info: Vec<_> = a
        .samples
        .iter()
        .filter(|s| s.name.ends_with("_info"))
        .collect();
    assert_eq!(info.len(), 1, "one model-info metric: {info:?}");
    assert_eq!(
        (info[0].label("name"), info[0].label("version")),
        (Some("iris"), Some("1"))
    );
    assert_eq!(info[0].label("sha256").map(str::len), Some(64));
    let features: Vec<&str> = a
        .samples
        .iter()
        .filter(|s| s.name == "perch_feature_mean")
        .filter_map(|s| s.label("feature"))
        .collect();
    assert_eq!(
        features,
        [
            "sepal_length_cm",
            "sepal_width_cm",
            "petal_length_cm",
            "petal_width_cm"
        ]
    );

    // The host, once it stored reports of the agent's windows (0.3 s): requests keep coming
    // so that the latest window has drift figures.
    let deadline = Instant::now() + Duration::from_secs(60);
    let h = loop {
        let (status, body) = agent.post("/predict", &rows.to_string());
        assert_eq!(status, 200, "{body}");
        let h = scrape(web);
        let stored = value(&h, "perch_device_requests_total", &[("device", "pi")]);
        let psi = value(&h, "perch_device_feature_psi_max", &[("device", "pi")]);
        if stored.is_some_and(|n| n >= 12.0) && psi.is_some() {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "no stored report with drift figures: requests {stored:?}, psi {psi:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    no_model_labels_outside_info(&h, "host");
    assert_eq!(value(&h, "perch_device_up", &[("device", "pi")]), Some(1.0));
    assert_eq!(
        value(
            &h,
            "perch_device_model_info",
            &[("device", "pi"), ("model", "iris"), ("version", "1")]
        ),
        Some(1.0)
    );
    assert_eq!(h.type_of("perch_device_model_info"), Some("gauge"));
    assert_eq!(h.type_of("perch_device_errors_total"), Some("counter"));
    let psi_features: Vec<&str> = h
        .samples
        .iter()
        .filter(|s| s.name == "perch_device_feature_psi")
        .filter_map(|s| s.label("feature"))
        .collect();
    assert_eq!(psi_features.len(), 4, "{psi_features:?}");
    assert!(psi_features.contains(&"petal_width_cm"), "{psi_features:?}");

    // The host's latency is a histogram too, per device, and once the agent's last window
    // reached the host it has counted every request the agent served, exactly.
    assert_eq!(
        h.type_of("perch_device_latency_seconds_bucket"),
        Some("histogram")
    );
    let served = value(&scrape(agent.http), "perch_requests_total", &[]).expect("requests");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (host_buckets, host_count) = loop {
        let h = scrape(web);
        let (buckets, count) = histogram(&h, "perch_device_latency_seconds", &[("device", "pi")]);
        if count >= served {
            break (buckets, count);
        }
        assert!(
            Instant::now() < deadline,
            "the host counted {count} latencies, the agent served {served}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(host_count, served);
    let (agent_buckets, agent_count) = histogram(&scrape(agent.http), "perch_latency_seconds", &[]);
    assert_eq!(
        (host_buckets, host_count),
        (agent_buckets, agent_count),
        "the host's buckets are the agent's"
    );

    // 405 names what is allowed; the host has a health endpoint.
    let refused = request(
        agent.http,
        "POST",
        "/metrics",
        "Content-Type: application/json\r\n",
    );
    assert_eq!(
        (refused.status, refused.header("allow")),
        (405, Some("GET"))
    );
    let refused = request(agent.http, "GET", "/predict", "");
    assert_eq!(
        (refused.status, refused.header("allow")),
        (405, Some("POST"))
    );
    let refused = request(web, "DELETE", "/metrics", "");
    assert_eq!(
        (refused.status, refused.header("allow")),
        (405, Some("GET, HEAD"))
    );
    let health = request(web, "GET", "/healthz", "");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&health.body).unwrap(),
        json!({"status": "ok"})
    );
}
