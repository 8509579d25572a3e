//! The local API on 127.0.0.1, for programs on the device:
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST /predict` | `{"inputs": [[…], …]}` or `{"input": […]}`; rows may be objects of named values (`{"sepal_length_cm": 5.1, …}`) | `{"model", "version", "ids", "outputs": {NAME: nested array}}` (and `"note"` when the target column was dropped) |
//! | `POST /feedback` | `{"id": N, "label": L}` or `{"feedback": [{"id", "label"}, …]}` | `{"matched", "correct", "refused": [{"id", "reason"}]}` |
//! | `GET /health` | | `{"status", "model", "connected", "queued_reports", …}` (503 without a model) |
//! | `GET /metrics` | | Prometheus text format 0.0.4, or OpenMetrics 1.0.0 when `Accept` asks for it ([`crate::metrics::exposition`]; the series are in `docs/dashboard.md`) |
//!
//! Another method on one of these paths is a 405 with `Allow` naming the one it takes.
//!
//! Errors are `{"error": "…"}` with 400 (bad request), 401 (token missing or wrong), 403
//! (an `Origin` of another site), 404, 408 (a request not whole in time), 413 (body or
//! batch over the limit), 415 (a POST body not `application/json`), 421 (a `Host` this
//! device does not answer to), 422 (inputs that make the model's outputs non-finite), 500
//! (the model failed) or 503 (no model yet).
//!
//! Every request is checked before it reaches a handler: its `Host` must be an IP address,
//! `localhost` or a name in `http_hosts` (a web page whose name was rebound to 127.0.0.1
//! sends its own name); an `Origin`, when sent, the same; with `http_token` set, `Authorization: Bearer TOKEN`; a POST must say
//! `Content-Type: application/json` (which a page cannot send across sites without a
//! CORS preflight, which this API never grants).

use super::config::{host_part, is_loopback_host};
use super::daemon::{Shared, lock};
use super::serving::PredictError;
use crate::http::{Request, Response, Server};
use crate::io::NestedNumbers;
use crate::metrics::{Exposition, Format, Kind};
use crate::sync::server::Shutdown;
use serde_json::{Value, json};
use std::time::Duration;

/// Largest request body accepted.
pub(crate) const MAX_BODY_BYTES: u64 = 16 << 20;

pub(crate) fn run(server: &Server, shared: &Shared, shutdown: &Shutdown) {
    while !shutdown.is_triggered() {
        if let Some(request) = server.recv_timeout(Duration::from_millis(200)) {
            handle(request, shared);
        }
    }
}

/// Whether the API answers to `host` (a `Host` or `Origin` host, without port): an IP
/// address (a rebinding attack needs a name it controls), `localhost`, or a name in
/// `http_hosts`.
fn known_host(host: &str, shared: &Shared) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>().is_ok()
        || is_loopback_host(bare)
        || shared
            .config
            .http_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(bare))
}

/// Compares without an early exit, so the time taken does not tell how much matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The refusal for a request that may not reach the handlers, if it is one.
fn refusal(request: &Request, shared: &Shared) -> Option<Response> {
    let host = match (request.header("host"), request.header_count("host")) {
        (Some(h), 1) => h,
        _ => {
            return Some(Response::error(
                400,
                "a request needs exactly one Host header",
            ));
        }
    };
    if !known_host(host_part(host), shared) {
        return Some(Response::error(
            421,
            format!(
                "this API does not answer to Host {host:?} (add the name to http_hosts in the agent's configuration)"
            ),
        ));
    }
    if let Some(origin) = request.header("origin") {
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| host_part(rest.split('/').next().unwrap_or("")));
        if !origin_host.is_some_and(|h| known_host(h, shared)) {
            return Some(Response::error(
                403,
                format!("requests from pages of {origin:?} are not allowed"),
            ));
        }
    }
    if let Some(token) = &shared.config.http_token {
        let given = request
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
            return Some(
                Response::error(
                    401,
                    "this API needs Authorization: Bearer TOKEN (http_token in the agent's configuration)",
                )
                .with_header("WWW-Authenticate", "Bearer realm=\"perch agent\""),
            );
        }
    }
    if request.method() == "POST" {
        let media = request
            .header("content-type")
            .and_then(|v| v.split(';').next())
            .map(str::trim);
        if !media.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
            return Some(Response::error(
                415,
                format!(
                    "POST bodies must be sent as Content-Type: application/json (got {})",
                    request
                        .header("content-type")
                        .map_or("none".to_string(), |c| format!("{c:?}"))
                ),
            ));
        }
    }
    None
}

fn handle(request: Request, shared: &Shared) {
    if let Some(refused) = refusal(&request, shared) {
        request.respond(refused);
        return;
    }
    let url = request.path().to_string();
    let response = match (request.method(), url.as_str()) {
        ("POST", "/predict") => predict(request.body(), shared),
        ("POST", "/feedback") => feedback(request.body(), shared),
        ("GET", "/health") => health(shared),
        ("GET", "/metrics") => metrics(shared, Format::from_accept(request.header("accept"))),
        (method, "/predict" | "/feedback") => Response::method_not_allowed(method, &url, "POST"),
        (method, "/health" | "/metrics") => Response::method_not_allowed(method, &url, "GET"),
        _ => Response::error(
            404,
            format!("no endpoint {url} (POST /predict, POST /feedback, GET /health, GET /metrics)"),
        ),
    };
    request.respond(response);
}

fn parse_json(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body)
        .map_err(|e| Response::error(400, format!("request body is not JSON: {e}")))
}

/// The body of `/predict`, streamed: the samples of `inputs` (or the one sample of
/// `input`) go straight into a flat array of at most the model's `max_values`.
struct PredictBody<'a> {
    inputs: &'a mut NestedNumbers,
    single: &'a mut Option<bool>,
}

impl<'de> serde::de::DeserializeSeed<'de> for PredictBody<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for PredictBody<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "an object {\"inputs\": [[...], ...]} or {\"input\": [...]} (rows as arrays of numbers or objects of named values)",
        )
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        while let Some(key) = map.next_key::<std::borrow::Cow<'_, str>>()? {
            let single = match key.as_ref() {
                "inputs" => false,
                "input" => true,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            if self.single.is_some() {
                return Err(A::Error::custom(
                    "give either \"inputs\" or \"input\", once",
                ));
            }
            *self.single = Some(single);
            map.next_value_seed(self.inputs.seed())?;
        }
        Ok(())
    }
}

/// Parses a `/predict` body into samples: shape (the first axis counts samples) and values,
/// at most `max_values` of them.
fn parse_predict(body: &[u8], max_values: usize) -> Result<crate::io::InputArray, Response> {
    let mut inputs = NestedNumbers::new("request", max_values);
    let mut single = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = serde::de::DeserializeSeed::deserialize(
        PredictBody {
            inputs: &mut inputs,
            single: &mut single,
        },
        &mut de,
    )
    .and_then(|()| de.end());
    let Some(single) = single else {
        if let Err(e) = parsed {
            return Err(Response::error(
                400,
                format!("request body is not JSON: {e}"),
            ));
        }
        return Err(Response::error(
            400,
            "body must be {\"inputs\": [[...], ...]} or {\"input\": [...]}",
        ));
    };
    let finished = if single {
        inputs.finish_one(parsed)
    } else {
        inputs.finish(parsed)
    };
    match finished {
        Err(e @ crate::io::InputError::TooLarge { .. }) => Err(Response::error(413, e.to_string())),
        Err(e) => Err(Response::error(400, e.to_string())),
        Ok(a) => Ok(a),
    }
}

fn predict(body: &[u8], shared: &Shared) -> Response {
    let max_batch = shared.config.max_batch;
    let Some(sample_len) = lock(&shared.serving).sample_len() else {
        return Response::error(503, "no model installed yet");
    };
    let max_values = max_batch.saturating_mul(sample_len.max(1));
    let array = match parse_predict(body, max_values) {
        Ok(a) => a,
        Err(mut r) => {
            if r.status == 413 {
                r = Response::error(
                    413,
                    format!(
                        "a request carries at most {max_batch} samples of {sample_len} values (max_batch in the agent's configuration)"
                    ),
                );
            }
            lock(&shared.serving).count_bad_request();
            return r;
        }
    };
    let (result, rollback, note) = {
        let mut serving = lock(&shared.serving);
        // Named values are matched to the active model's features, as `perch run` does.
        let (array, arranged) = match serving.active().filter(|_| array.columns.is_some()) {
            Some(active) => {
                let names = crate::cli::input_names(active.model.info());
                match crate::io::arrange(array, names.as_ref(), None, "request") {
                    Ok(a) => a,
                    Err(e) => {
                        serving.refuse_input();
                        return Response::error(400, e.to_string());
                    }
                }
            }
            None => (array, crate::io::Arranged::default()),
        };
        let r = serving.predict(&array.data, &array.shape);
        (r, serving.rollback_due(), arranged.note())
    };
    if let Some(candidate) = rollback {
        shared.consider_rollback(candidate);
    }
    match result {
        Ok(p) => {
            let mut body = json!({
                "model": p.model.name,
                "version": p.model.version,
                "ids": p.ids,
                "outputs": crate::io::outputs_json(&p.outputs),
            });
            if let Some(note) = note {
                body["note"] = json!(note);
            }
            Response::json(200, &body)
        }
        Err(PredictError::NoModel) => Response::error(503, "no model installed yet"),
        Err(PredictError::BadInput(m)) => Response::error(400, m),
        Err(PredictError::OutOfRange(m)) => Response::error(422, m),
        Err(PredictError::Model(m)) => Response::error(500, m),
    }
}

fn feedback(body: &[u8], shared: &Shared) -> Response {
    let v = match parse_json(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let items: Vec<Value> = match v.get("feedback") {
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return Response::error(400, "\"feedback\" must be an array of {\"id\", \"label\"}");
        }
        None => vec![v],
    };
    let mut parsed = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let id = item.get("id").and_then(Value::as_u64);
        let label = item.get("label").and_then(Value::as_f64);
        match (id, label) {
            (Some(id), Some(label)) if label.is_finite() => parsed.push((id, label)),
            _ => {
                return Response::error(
                    400,
                    format!(
                        "feedback item {i}: needs a numeric \"id\" (from /predict) and a numeric \"label\""
                    ),
                );
            }
        }
    }
    let (mut matched, mut correct, mut unknown) = (0u64, 0u64, Vec::new());
    {
        let mut serving = lock(&shared.serving);
        for (id, label) in parsed {
            match serving.feedback(id, label) {
                Ok(ok) => {
                    matched += 1;
                    correct += u64::from(ok);
                }
                Err(reason) => unknown.push(json!({"id": id, "reason": reason})),
            }
        }
    }
    let status = if matched == 0 && !unknown.is_empty() {
        404
    } else {
        200
    };
    Response::json(
        status,
        &json!({ "matched": matched, "correct": correct, "refused": unknown }),
    )
}

fn health(shared: &Shared) -> Response {
    let (model, shadow) = {
        let serving = lock(&shared.serving);
        (
            serving.active_ref().cloned(),
            serving.shadow().map(|s| s.reference.clone()),
        )
    };
    let link = lock(&shared.link).clone();
    let queued = lock(&shared.queue).len();
    let body = json!({
        "status": if model.is_some() { "ok" } else { "no model" },
        "device": shared.config.device,
        "model": model.as_ref().map(|m| json!({
            "name": m.name,
            "version": m.version,
            "sha256": crate::util::to_hex(&m.sha256),
        })),
        "shadow": shadow.as_ref().map(|m| json!({
            "name": m.name,
            "version": m.version,
            "sha256": crate::util::to_hex(&m.sha256),
        })),
        "connected": link.connected,
        "sessions": link.sessions,
        "link_restarts": link.restarts,
        "last_error": link.last_error,
        "queued_reports": queued,
    });
    Response::json(if model.is_some() { 200 } else { 503 }, &body)
}

/// `GET /metrics`: the agent's link and queue, the active model as `perch_model_info`, and
/// the serving figures, in the format the `Accept` header asks for.
fn metrics(shared: &Shared, format: Format) -> Response {
    let mut e = Exposition::new();
    e.family(
        "perch_agent_connected",
        Kind::Gauge,
        "Whether the agent has a session with the host.",
    );
    e.sample(
        "perch_agent_connected",
        &[],
        f64::from(u8::from(lock(&shared.link).connected)),
    );
    e.family(
        "perch_agent_queued_reports",
        Kind::Gauge,
        "Metrics reports waiting for the host's acknowledgement.",
    );
    e.sample(
        "perch_agent_queued_reports",
        &[],
        lock(&shared.queue).len() as f64,
    );
    e.family(
        "perch_model",
        Kind::Info,
        "The active model: its name, version and artifact SHA-256.",
    );
    {
        let serving = lock(&shared.serving);
        if let Some(m) = serving.active_ref() {
            let sha256 = crate::util::to_hex(&m.sha256);
            e.info(
                "perch_model",
                &[
                    ("name", &m.name),
                    ("version", &m.version),
                    ("sha256", &sha256),
                ],
            );
        }
        serving.expose(&mut e);
    }
    Response::new(200, format.content_type(), e.render(format))
}
