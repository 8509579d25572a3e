//! `GET /metrics`: the fleet in the Prometheus text format (0.0.4, or OpenMetrics 1.0.0
//! when asked for), written with the shared [`Exposition`]: per-device series labelled
//! `device` and `group`, the model each device runs in `perch_device_model_info`, each
//! device's latency as a histogram on the bounds every device shares (from the fleet's
//! running totals, so it only grows), alerts by rule and rollouts by state. The series are listed in `docs/dashboard.md`.

use super::api::{self, is_up};
use super::{Dashboard, Totals};
use crate::fleet::{FleetError, now_unix_s};
use crate::metrics::{EXPOSED_BOUNDS_US, Exposition, Format, Kind};
use crate::registry::{ArtifactFormat, ModelRef};
use rusqlite::{OptionalExtension, params};
use std::collections::HashMap;

/// Brings the lifetime sums of device `id` up to date with the rows stored since the last
/// call. Sums restart when the device's rows went away (a device removed, its id reused).
fn update_totals(d: &mut Dashboard, id: i64, name: &str) -> Result<Totals, FleetError> {
    let fleet = &d.fleet;
    let newest: Option<(i64, i64)> = fleet
        .conn
        .query_row(
            "SELECT run, seq FROM metrics WHERE device_id = ?1 ORDER BY run DESC, seq DESC
             LIMIT 1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(fleet.sql())?;
    let key = (id, name.to_string());
    let fresh = Totals {
        last: (-1, -1),
        ..Totals::default()
    };
    let mut t = d.totals.get(&key).copied().unwrap_or(fresh);
    match newest {
        None => t = Totals::default(),
        Some(m) if m < t.last => t = fresh,
        _ => {}
    }
    if let Some(newest) = newest.filter(|m| *m > t.last) {
        let (requests, errors, feedback, correct): (i64, i64, i64, i64) = fleet
            .conn
            .query_row(
                "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(errors), 0),
                        COALESCE(SUM(feedback), 0), COALESCE(SUM(feedback_correct), 0)
                 FROM metrics WHERE device_id = ?1 AND (run, seq) > (?2, ?3)
                   AND (run, seq) <= (?4, ?5)",
                params![id, t.last.0, t.last.1, newest.0, newest.1],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(fleet.sql())?;
        let add = |a: u64, b: i64| a.saturating_add(u64::try_from(b).unwrap_or(0));
        t.requests = add(t.requests, requests);
        t.errors = add(t.errors, errors);
        t.feedback = add(t.feedback, feedback);
        t.feedback_correct = add(t.feedback_correct, correct);
        t.last = newest;
    }
    d.totals.insert(key, t);
    Ok(t)
}

/// The feature names of the model whose artifact SHA-256 begins with `model` (how reports
/// name it): the registry version it is, or was pushed from (a push adds the drift
/// baseline, so its artifact differs), read from that version's metadata. Cached, since an
/// artifact never changes. Empty when neither the registry nor the pushes know it, it is
/// ONNX, or it records no names; a registry failure costs the names, not the scrape.
/// `labels` is the scrape's map of artifact prefixes to `name@version`, read on the first
/// miss and kept for the rest of the scrape.
fn feature_names(
    d: &mut Dashboard,
    labels: &mut Option<HashMap<String, String>>,
    model: [u8; 8],
) -> Vec<String> {
    if let Some(names) = d.feature_names.get(&model) {
        return names.clone();
    }
    if labels.is_none() {
        *labels = Some(api::model_labels(d).unwrap_or_default());
    }
    let prefix = crate::util::to_hex(&model);
    let Some(version) = labels
        .as_ref()
        .and_then(|labels| labels.get(&prefix)?.parse::<ModelRef>().ok())
        .and_then(|r| d.registry.resolve(&r).ok())
    else {
        return Vec::new();
    };
    let names = match version.format {
        ArtifactFormat::Perch => d
            .registry
            .artifact_bytes(&version)
            .ok()
            .and_then(|bytes| crate::artifact::decode(&bytes).ok())
            .and_then(|a| a.model.metadata.feature_names())
            .unwrap_or_default(),
        ArtifactFormat::Onnx => Vec::new(),
    };
    d.feature_names.insert(model, names.clone());
    names
}

/// The whole `/metrics` text in `format`.
pub(super) fn render(d: &mut Dashboard, format: Format) -> Result<String, FleetError> {
    use Kind::{Counter, Gauge, Histogram, Info};
    let bounds = EXPOSED_BOUNDS_US.map(|us| us as f64 / 1e6);
    let mut e = Exposition::new();
    e.family(
        "perch_device_up",
        Gauge,
        "1 when the device was heard from within the silence limit (90 s), else 0.",
    );
    e.family(
        "perch_device_model",
        Info,
        "The model and version the device last said it runs.",
    );
    e.family(
        "perch_device_last_seen_seconds",
        Gauge,
        "Last contact with the device, seconds since the Unix epoch.",
    );
    e.family(
        "perch_device_last_report_seconds",
        Gauge,
        "Start of the device's latest stored report window, seconds since the Unix epoch.",
    );
    e.family(
        "perch_device_requests",
        Counter,
        "Prediction requests in all reports stored for the device.",
    );
    e.family(
        "perch_device_errors",
        Counter,
        "Failed prediction requests in all reports stored for the device.",
    );
    e.family(
        "perch_device_feedback",
        Counter,
        "Labelled feedback in all reports stored for the device.",
    );
    e.family(
        "perch_device_feedback_correct",
        Counter,
        "Labelled feedback that matched the prediction, in all reports stored for the device.",
    );
    e.family(
        "perch_device_latency_seconds",
        Histogram,
        "Prediction latency over every report the device sent with buckets, on bounds shared by all devices (sum by le across devices for fleet quantiles).",
    );
    e.family(
        "perch_device_reports_without_latency_buckets",
        Counter,
        "Reports from the device without latency buckets (an agent older than sync protocol 3): not in perch_device_latency_seconds.",
    );
    e.family(
        "perch_device_window_latency_seconds",
        Gauge,
        "Prediction latency percentiles of the device's latest report window, as the device computed them (within 3.125 %, finer than the histogram's buckets).",
    );
    e.family(
        "perch_device_feature_psi",
        Gauge,
        "Population stability index per input feature (by name when the model records names) in the device's latest report window.",
    );
    e.family(
        "perch_device_feature_psi_max",
        Gauge,
        "Largest population stability index of any input feature in the latest report window.",
    );
    e.family(
        "perch_device_feedback_accuracy",
        Gauge,
        "Share of labelled feedback matching the prediction in the latest report window.",
    );
    e.family(
        "perch_device_resident_memory_bytes",
        Gauge,
        "Resident memory of the device's agent in its latest report.",
    );
    e.family("perch_alerts_open", Gauge, "Open alerts per rule.");
    e.family("perch_rollouts", Gauge, "Rollouts per state.");
    e.family(
        "perch_reports_stored",
        Gauge,
        "Metrics reports stored in the fleet database.",
    );

    let now = now_unix_s();
    let statuses = d.fleet.devices()?;
    let mut live = Vec::new();
    let mut model_labels = None;
    for s in &statuses {
        let Some(dev) = d.fleet.device(&s.name)? else {
            continue;
        };
        live.push((dev.id, dev.name.clone()));
        let labels = [("device", s.name.as_str()), ("group", s.group.as_str())];
        e.sample(
            "perch_device_up",
            &labels,
            f64::from(u8::from(is_up(s.last_seen_unix_s, now))),
        );
        if let (Some(model), Some(version)) = (&s.model, &s.version) {
            e.info(
                "perch_device_model",
                &[
                    ("device", s.name.as_str()),
                    ("group", s.group.as_str()),
                    ("model", model),
                    ("version", version),
                ],
            );
        }
        if let Some(t) = s.last_seen_unix_s {
            e.sample("perch_device_last_seen_seconds", &labels, t as f64);
        }
        let totals = update_totals(d, dev.id, &dev.name)?;
        e.sample("perch_device_requests", &labels, totals.requests as f64);
        e.sample("perch_device_errors", &labels, totals.errors as f64);
        e.sample("perch_device_feedback", &labels, totals.feedback as f64);
        e.sample(
            "perch_device_feedback_correct",
            &labels,
            totals.feedback_correct as f64,
        );
        let latency = d.fleet.latency_totals(&dev)?;
        if latency.bucketed_reports > 0 {
            let cumulative = latency.cumulative();
            let (finite, all) = cumulative.split_at(EXPOSED_BOUNDS_US.len());
            e.histogram(
                "perch_device_latency_seconds",
                &labels,
                &bounds,
                finite,
                latency.sum_us as f64 / 1e6,
                all[0],
            );
        }
        e.sample(
            "perch_device_reports_without_latency_buckets",
            &labels,
            latency.unbucketed_reports as f64,
        );
        let Some(latest) = d.fleet.recent_reports(&dev, None, 1)?.pop() else {
            continue;
        };
        let r = &latest.report;
        e.sample(
            "perch_device_last_report_seconds",
            &labels,
            r.window_start_ms as f64 / 1000.0,
        );
        if r.requests > 0 {
            for (q, us) in [
                ("0.5", r.latency_us.p50),
                ("0.95", r.latency_us.p95),
                ("0.99", r.latency_us.p99),
            ] {
                let mut with_q = labels.to_vec();
                with_q.push(("quantile", q));
                e.sample(
                    "perch_device_window_latency_seconds",
                    &with_q,
                    f64::from(us) / 1e6,
                );
            }
        }
        let names = if r.psi_milli.is_empty() {
            Vec::new()
        } else {
            feature_names(d, &mut model_labels, r.model)
        };
        for (i, &m) in r.psi_milli.iter().enumerate() {
            let feature = names.get(i).cloned().unwrap_or_else(|| i.to_string());
            let mut with_f = labels.to_vec();
            with_f.push(("feature", feature.as_str()));
            e.sample("perch_device_feature_psi", &with_f, f64::from(m) / 1000.0);
        }
        if let Some(m) = api::psi_max(r) {
            e.sample("perch_device_feature_psi_max", &labels, m);
        }
        if let Some(a) = api::accuracy(r) {
            e.sample("perch_device_feedback_accuracy", &labels, a);
        }
        if r.rss_kib > 0 {
            e.sample(
                "perch_device_resident_memory_bytes",
                &labels,
                f64::from(r.rss_kib) * 1024.0,
            );
        }
    }
    d.totals.retain(|k, _| live.contains(k));
    for (rule, open) in api::open_alerts_by_rule(d)? {
        e.sample("perch_alerts_open", &[("rule", &rule)], open as f64);
    }
    let mut by_state: std::collections::BTreeMap<String, u64> = Default::default();
    for r in api::rollout_rows(d)? {
        *by_state.entry(r.state).or_default() += 1;
    }
    for (state, n) in by_state {
        e.sample("perch_rollouts", &[("state", &state)], n as f64);
    }
    e.sample("perch_reports_stored", &[], d.fleet.report_count()? as f64);
    Ok(e.render(format))
}
