//! The local API on 127.0.0.1, for programs on the device:
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST /predict` | `{"inputs": [[…], …]}` or `{"input": […]}` | `{"model", "version", "ids", "outputs": {NAME: nested array}}` |
//! | `POST /feedback` | `{"id": N, "label": L}` or `{"feedback": [{"id", "label"}, …]}` | `{"matched", "correct", "refused": [{"id", "reason"}]}` |
//! | `GET /health` | | `{"status", "model", "connected", "queued_reports", …}` (503 without a model) |
//! | `GET /metrics` | | Prometheus text exposition format |
//!
//! Errors are `{"error": "…"}` with 400 (bad request), 404, 413 (body over the limit), 500
//! (the model failed) or 503 (no model yet).

use super::daemon::{Shared, lock};
use super::serving::PredictError;
use crate::http::{Request, Response, Server};
use crate::io::{InputFormat, parse_input};
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

fn handle(request: Request, shared: &Shared) {
    let url = request.path().to_string();
    let response = match (request.method(), url.as_str()) {
        ("POST", "/predict") => predict(request.body(), shared),
        ("POST", "/feedback") => feedback(request.body(), shared),
        ("GET", "/health") => health(shared),
        ("GET", "/metrics") => metrics(shared),
        (_, "/predict" | "/feedback" | "/health" | "/metrics") => {
            Response::error(405, format!("{} is not allowed on {url}", request.method()))
        }
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

fn predict(body: &[u8], shared: &Shared) -> Response {
    let v = match parse_json(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let samples = match (v.get("inputs"), v.get("input")) {
        (Some(x), None) => x.clone(),
        (None, Some(x)) => Value::Array(vec![x.clone()]),
        _ => {
            return Response::error(
                400,
                "body must be {\"inputs\": [[...], ...]} or {\"input\": [...]}",
            );
        }
    };
    let bytes = samples.to_string();
    let array = match parse_input(bytes.as_bytes(), InputFormat::Json, "request") {
        Ok(a) => a,
        Err(e) => return Response::error(400, e.to_string()),
    };
    let (result, rollback) = {
        let mut serving = lock(&shared.serving);
        let r = serving.predict(&array.data, &array.shape);
        (r, serving.rollback_due())
    };
    if let Some(reason) = rollback {
        shared.roll_back(&reason);
    }
    match result {
        Ok(p) => Response::json(
            200,
            &json!({
                "model": p.model.name,
                "version": p.model.version,
                "ids": p.ids,
                "outputs": crate::cli::outputs_json(&p.outputs),
            }),
        ),
        Err(PredictError::NoModel) => Response::error(503, "no model installed yet"),
        Err(PredictError::BadInput(m)) => Response::error(400, m),
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
            "sha256": crate::artifact::hex(&m.sha256),
        })),
        "shadow": shadow.as_ref().map(|m| json!({
            "name": m.name,
            "version": m.version,
            "sha256": crate::artifact::hex(&m.sha256),
        })),
        "connected": link.connected,
        "sessions": link.sessions,
        "link_restarts": link.restarts,
        "last_error": link.last_error,
        "queued_reports": queued,
    });
    Response::json(if model.is_some() { 200 } else { 503 }, &body)
}

fn metrics(shared: &Shared) -> Response {
    use std::fmt::Write;
    let mut out = String::new();
    let connected = lock(&shared.link).connected;
    let queued = lock(&shared.queue).len();
    let _ = writeln!(
        out,
        "# HELP perch_agent_connected Whether the agent has a session with the host.\n# TYPE perch_agent_connected gauge\nperch_agent_connected {}",
        u8::from(connected)
    );
    let _ = writeln!(
        out,
        "# HELP perch_agent_queued_reports Metrics reports waiting for the host's acknowledgement.\n# TYPE perch_agent_queued_reports gauge\nperch_agent_queued_reports {queued}"
    );
    {
        let serving = lock(&shared.serving);
        if let Some(m) = serving.active_ref() {
            let _ = writeln!(
                out,
                "# HELP perch_agent_model_info The active model.\n# TYPE perch_agent_model_info gauge\nperch_agent_model_info{{name=\"{}\",version=\"{}\",sha256=\"{}\"}} 1",
                escape(&m.name),
                escape(&m.version),
                crate::artifact::hex(&m.sha256)
            );
        }
        serving.write_prometheus(&mut out);
    }
    Response::new(200, "text/plain; version=0.0.4; charset=utf-8", out)
}

/// Escapes a Prometheus label value.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
