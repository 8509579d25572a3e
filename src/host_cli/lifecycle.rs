//! The host closing the loop: quality-gated rollouts (canary devices run the candidate in
//! shadow; it is promoted only if the gates pass; a promoted model whose quality drops is
//! rolled back) and automatic retraining (a drift or accuracy alert on a model whose
//! training recipe is in the registry retrains it on the original data plus the labelled
//! feedback the devices sent, re-applies its optimization, and starts a gated rollout).
//!
//! `perch-host serve` runs [`Monitor`] in a thread; `perch-host rollout` starts a rollout
//! that the running server then drives.

use super::TrainOptions;
use super::fleet::push_to;
use super::optimize::OptimizeOptions;
use super::render::{Render, reason_suffix};
use crate::fleet::gates::{Baseline, Gates, Verdict, judge, watch};
use crate::fleet::rollout::Rollout;
use crate::fleet::{self, Fleet, SILENT_AFTER_S};
use crate::registry::{ModelRef, Registry, Version};
use crate::sync::Role;
use crate::util::now_unix_ms;
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How far back the current model's feedback counts for a rollout's baseline accuracy.
const BASELINE_WINDOW_MS: u64 = 10 * 60 * 1000;

fn open_fleet(db: &Path) -> Result<Fleet> {
    Fleet::open(db).with_context(|| format!("opening the fleet database {}", db.display()))
}

/// Starts a rollout of `r` to `group`: the candidate goes in shadow to `canary` devices of
/// the group that are online and run a model; the server's monitor judges and promotes it.
///
/// # Errors
/// An unknown version or group, a group with no running model or too few online devices,
/// a group that already runs the candidate, a rollout already under way for the group.
pub fn start_rollout(
    registry: &Registry,
    r: &ModelRef,
    group: &str,
    canary: u32,
    gates: &Gates,
    origin: &str,
) -> Result<RolloutStarted> {
    if let Err((key, value, reason)) = gates.check() {
        bail!("rollout gate {key} = {value}: must be {reason}");
    }
    let version = registry.resolve(r)?;
    let candidate = format!("{}@{}", version.name, version.number);
    let mut f = open_fleet(registry.path())?;
    if let Some(busy) = f
        .rollouts(true, 100)?
        .into_iter()
        .find(|x| x.group == group)
    {
        bail!(
            "rollout {} of {}@{} to group {group} is still under way ({}); wait for it to finish",
            busy.id,
            busy.name,
            busy.version,
            busy.state
        );
    }
    let members = f.group_devices(group)?;
    if members.is_empty() {
        return Err(fleet::FleetError::EmptyGroup {
            group: group.to_string(),
            known: f
                .devices()?
                .into_iter()
                .map(|d| d.group)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
        .into());
    }
    let now = fleet::now_unix_s();
    let statuses: Vec<_> = f
        .devices()?
        .into_iter()
        .filter(|d| d.group == group)
        .collect();
    let mut running: BTreeMap<String, usize> = BTreeMap::new();
    for s in &statuses {
        if let (Some(m), Some(v)) = (&s.model, &s.version) {
            *running.entry(format!("{m}@{v}")).or_default() += 1;
        }
    }
    let previous = running
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(m, _)| m.clone())
        .ok_or_else(|| {
            anyhow!("no device of group {group} runs a model yet: push one first (perch-host push)")
        })?;
    if previous == candidate {
        bail!("group {group} already runs {candidate}");
    }
    let online: Vec<String> = statuses
        .iter()
        .filter(|s| {
            s.model.is_some()
                && s.last_seen_unix_s
                    .is_some_and(|t| now - t <= SILENT_AFTER_S)
        })
        .map(|s| s.name.clone())
        .collect();
    let canary = canary.max(1);
    if online.len() < canary as usize {
        bail!(
            "group {group} has {} online device(s) running a model, the rollout wants {canary} canaries",
            online.len()
        );
    }
    let canaries: Vec<fleet::Device> = members
        .iter()
        .filter(|d| online[..canary as usize].contains(&d.name))
        .cloned()
        .collect();
    // The accuracy the candidate must keep after promotion: the current model's recent
    // feedback accuracy on this group, else its recorded test accuracy (replaced by the
    // candidate's own accuracy in shadow when the canaries saw enough labels).
    let (prev_name, prev_version) = previous
        .split_once('@')
        .ok_or_else(|| anyhow!("bad model reference {previous}"))?;
    let recent_ms = now_unix_ms().saturating_sub(BASELINE_WINDOW_MS);
    let q = f.quality_totals(&members, prev_name, prev_version, recent_ms)?;
    let (fb, ok) = (q.feedback, q.correct);
    let (baseline, baseline_labels) = if fb >= u64::from(gates.min_feedback) {
        (Some(ok as f64 / fb as f64), Some(fb))
    } else {
        let tested = registry
            .resolve(&previous.parse()?)
            .ok()
            .and_then(|v| v.metrics["accuracy"].as_f64());
        (tested, None)
    };
    let shadow = push_to(registry, &candidate.parse()?, &canaries, Role::Shadow)?;
    let shadow_push = shadow.push;
    let results = json!({
        "canaries": canaries.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        "baseline_accuracy": baseline,
        "baseline_labels": baseline_labels,
        "started_ms": now_unix_ms(),
    });
    let id = f.create_rollout(
        &version.name,
        &version.number.to_string(),
        group,
        canary,
        shadow_push,
        Some(&previous),
        gates,
        &results,
        origin,
    )?;
    Ok(RolloutStarted {
        rollout: id,
        model: candidate,
        group: group.to_string(),
        previous,
        canaries: canaries.iter().map(|d| d.name.clone()).collect(),
        baseline_accuracy: baseline,
        state: "canary",
    })
}

/// A rollout just started (`rollout` without `--wait`).
#[derive(Clone, Debug, Serialize)]
pub struct RolloutStarted {
    /// The rollout's id.
    pub rollout: i64,
    /// The candidate, `NAME@VERSION`.
    pub model: String,
    /// The group it rolls out to.
    pub group: String,
    /// What most of the group runs now, `NAME@VERSION`.
    pub previous: String,
    /// The devices that run the candidate in shadow.
    pub canaries: Vec<String>,
    /// The accuracy the candidate must keep, when known.
    pub baseline_accuracy: Option<f64>,
    /// `canary`.
    pub state: &'static str,
}

/// `rollout`'s result: the rollout as started, or as it stands after `--wait`.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum RolloutOutcome {
    /// Started; the server drives it from here.
    Started(RolloutStarted),
    /// As it stood when the wait ended.
    Waited(Box<Rollout>),
}

impl RolloutOutcome {
    /// Whether the rollout completed (a started one has not yet).
    pub fn is_complete(&self) -> bool {
        matches!(self, RolloutOutcome::Waited(r) if r.state == "complete")
    }
}

impl Render for RolloutOutcome {
    fn text(&self) -> String {
        match self {
            RolloutOutcome::Started(r) => format!(
                "rollout {}: {} to group {} ({})\n",
                r.rollout, r.model, r.group, r.state
            ),
            RolloutOutcome::Waited(r) => format!(
                "rollout {}: {}@{} to group {} ({})\n",
                r.id,
                r.name,
                r.version,
                r.group,
                state_text(r)
            ),
        }
    }
}

/// A rollout's state with the reason it is in it: `aborted: accuracy 0.71 < 0.80`.
fn state_text(r: &Rollout) -> String {
    format!("{}{}", r.state, reason_suffix(r.reason.as_deref()))
}

/// Starts a rollout as [`start_rollout`] does and, with `wait`, waits up to that long for the
/// server to finish it (complete, aborted or rolled back).
///
/// # Errors
/// As [`start_rollout`]; database failures while waiting (a timeout is not an error: the
/// outcome says where the rollout stands).
pub fn rollout(
    registry: &Registry,
    r: &ModelRef,
    group: &str,
    canary: u32,
    gates: &Gates,
    wait: Option<Duration>,
) -> Result<RolloutOutcome> {
    let started = start_rollout(registry, r, group, canary, gates, "operator")?;
    match wait {
        None => Ok(RolloutOutcome::Started(started)),
        Some(timeout) => Ok(RolloutOutcome::Waited(Box::new(wait_for_rollout(
            registry.path(),
            started.rollout,
            timeout,
        )?))),
    }
}

/// Waits until rollout `id` leaves its canary and promoted phases, or `timeout` passes;
/// returns it as it then stands.
///
/// # Errors
/// Database failures, a rollout that vanished.
pub fn wait_for_rollout(db: &Path, id: i64, timeout: Duration) -> Result<Rollout> {
    let f = open_fleet(db)?;
    let deadline = Instant::now() + timeout;
    loop {
        let r = f.rollout(id)?.context("the rollout vanished")?;
        if !matches!(r.state.as_str(), "canary" | "promoted") || Instant::now() >= deadline {
            return Ok(r);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Moves every rollout under way one step if it can: judges canaries that have enough
/// shadow traffic (promote or abort), aborts canary phases that timed out, rolls back
/// promoted rollouts whose quality dropped, completes those watched long enough. Returns a
/// line per change.
///
/// # Errors
/// Database or registry failures (a rollout that cannot move is left as it is).
pub fn step_rollouts(registry: &Registry) -> Result<Vec<String>> {
    let mut f = open_fleet(registry.path())?;
    let mut log = Vec::new();
    for r in f.rollouts(true, 100)? {
        let line = match r.state.as_str() {
            "canary" => step_canary(registry, &mut f, &r)?,
            "promoted" => step_promoted(registry, &mut f, &r)?,
            _ => None,
        };
        log.extend(line);
    }
    Ok(log)
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

fn step_canary(registry: &Registry, f: &mut Fleet, r: &Rollout) -> Result<Option<String>> {
    let canary_names = names(&r.results["canaries"]);
    let canaries = f.select(&canary_names, None)?;
    let since = r.results["started_ms"].as_u64().unwrap_or(0);
    let evidence = f.shadow_evidence(&canaries, &r.name, &r.version, since)?;
    let mut results = r.results.clone();
    results["shadow"] = evidence.summary();
    let candidate = format!("{}@{}", r.name, r.version);
    if let Some(push) = r.shadow_push {
        let refused: Vec<String> = f
            .push_states(push)?
            .into_iter()
            .filter(|(_, s, _)| s == "rejected")
            .map(|(d, _, why)| format!("{d}: {}", why.unwrap_or_default()))
            .collect();
        if !refused.is_empty() {
            let reason = format!("a canary refused the candidate ({})", refused.join("; "));
            f.clear_shadow(&canaries)?;
            f.update_rollout(r.id, "aborted", Some(&reason), &results, None)?;
            return Ok(Some(format!(
                "rollout {} of {candidate} aborted: {reason}",
                r.id
            )));
        }
    }
    match judge(&r.gates, &evidence) {
        Verdict::Promote(detail) => {
            let group = f.group_devices(&r.group)?;
            let active = push_to(registry, &candidate.parse()?, &group, Role::Active)?;
            f.clear_shadow(&canaries)?;
            results["promoted_ms"] = json!(now_unix_ms());
            if let Some((shadow_acc, _)) = evidence.accuracies()
                && evidence.feedback >= u64::from(r.gates.min_feedback)
            {
                results["baseline_accuracy"] = json!(shadow_acc);
                results["baseline_labels"] = json!(evidence.feedback);
            }
            results["active_push"] = json!(active.push);
            let detail = format!(
                "gates passed over {} shadow requests: {detail}",
                evidence.requests
            );
            f.update_rollout(r.id, "promoted", Some(&detail), &results, Some(active.push))?;
            Ok(Some(format!(
                "rollout {} of {candidate} promoted to group {}: {detail}",
                r.id, r.group
            )))
        }
        Verdict::Reject(reason) => {
            f.clear_shadow(&canaries)?;
            let reason = format!("canary gate failed: {reason}");
            f.update_rollout(r.id, "aborted", Some(&reason), &results, None)?;
            Ok(Some(format!(
                "rollout {} of {candidate} aborted: {reason}",
                r.id
            )))
        }
        Verdict::Wait(missing) => {
            let age_s = fleet::now_unix_s() - r.created_unix_s;
            if age_s <= r.gates.canary_timeout_s as i64 {
                return Ok(None);
            }
            f.clear_shadow(&canaries)?;
            let reason = format!("no decision after {age_s} s: {missing}");
            f.update_rollout(r.id, "aborted", Some(&reason), &results, None)?;
            Ok(Some(format!(
                "rollout {} of {candidate} aborted: {reason}",
                r.id
            )))
        }
    }
}

fn step_promoted(registry: &Registry, f: &mut Fleet, r: &Rollout) -> Result<Option<String>> {
    let group = f.group_devices(&r.group)?;
    let since = r.results["promoted_ms"].as_u64().unwrap_or(0);
    let q = f.quality_totals(&group, &r.name, &r.version, since)?;
    let (fb, ok, req, err) = (q.feedback, q.correct, q.requests, q.errors);
    let mut results = r.results.clone();
    results["after"] =
        json!({"feedback": fb, "feedback_correct": ok, "requests": req, "errors": err});
    let candidate = format!("{}@{}", r.name, r.version);
    let baseline = r.results["baseline_accuracy"]
        .as_f64()
        .map(|accuracy| Baseline {
            accuracy,
            labels: r.results["baseline_labels"].as_u64(),
        });
    let reason = watch(&r.gates, baseline, &q);
    if let Some(reason) = reason {
        let previous = r
            .previous
            .clone()
            .ok_or_else(|| anyhow!("rollout {} has no previous version to restore", r.id))?;
        let back = super::fleet::push_back_to(registry, &previous.parse()?, &group)?;
        results["rollback_push"] = json!(back.push);
        let why = format!("{reason}; group {} back on {previous}", r.group);
        f.update_rollout(r.id, "rolled-back", Some(&why), &results, None)?;
        return Ok(Some(format!(
            "rollout {} of {candidate} rolled back: {why}",
            r.id
        )));
    }
    let installed = match r.active_push {
        Some(p) => f.push_states(p)?.iter().all(|(_, s, _)| s != "pending"),
        None => true,
    };
    let watched_ms = now_unix_ms().saturating_sub(since);
    if installed && watched_ms >= r.gates.watch_s * 1000 {
        f.update_rollout(r.id, "complete", None, &results, None)?;
        return Ok(Some(format!(
            "rollout {} of {candidate} complete on group {}",
            r.id, r.group
        )));
    }
    if let Value::Object(_) = results
        && results != r.results
    {
        f.update_rollout(r.id, "promoted", None, &results, None)?;
    }
    Ok(None)
}

/// Fewest labelled samples received since an alert for the retrained model's drift baseline
/// to be made of them (fewer: the combined training data's).
pub const MIN_BASELINE_SAMPLES: usize = 100;

/// Retrains `version` on its recorded training data plus the labelled feedback `group`'s
/// devices sent while running it, re-applies its optimization steps, and registers the
/// result (its parent is `version`). The new model's drift baseline is made of the samples
/// received after the second `baseline_since_unix_s` when there are at least
/// [`MIN_BASELINE_SAMPLES`] of them, else of its training data. Returns the new `NAME@N`.
///
/// # Errors
/// No training recipe (an imported model), training data that changed or vanished, no
/// labelled feedback, a schema whose columns are not the model's inputs, training failures.
pub fn retrain(
    registry: &mut Registry,
    version: &Version,
    group: &str,
    baseline_since_unix_s: Option<i64>,
) -> Result<String> {
    let shown = format!("{}@{}", version.name, version.number);
    let recipe: TrainOptions =
        serde_json::from_value(version.params["recipe"].clone()).map_err(|_| {
            anyhow!(
                "{shown} has no training recipe (it was imported, or trained by an older perch)"
            )
        })?;
    let original = super::recorded_data(version, "train")?;
    let f = open_fleet(registry.path())?;
    let devices: Vec<i64> = f.group_devices(group)?.iter().map(|d| d.id).collect();
    let ids = model_ids(&f, &version.name, &version.number.to_string())?;
    let samples = f.feedback_samples(&ids, Some(&devices))?;
    if samples.is_empty() {
        bail!("no labelled feedback from group {group} for {shown} to retrain on");
    }
    let text = std::fs::read_to_string(&original)
        .with_context(|| format!("reading {}", original.display()))?;
    let header: Vec<&str> = text.lines().next().unwrap_or("").split(',').collect();
    let target = header
        .iter()
        .position(|h| h.trim() == recipe.target)
        .ok_or_else(|| anyhow!("{} has no column {:?}", original.display(), recipe.target))?;
    let width = header.len() - 1;
    if let Some(bad) = samples.iter().find(|(x, _, _)| x.len() != width) {
        bail!(
            "feedback samples have {} values, the training file {} feature columns: retraining needs a numeric schema whose columns are the model's inputs",
            bad.0.len(),
            width
        );
    }
    let mut combined = text.trim_end().to_string();
    combined.push('\n');
    push_csv_rows(&mut combined, &samples, target);
    let dir = registry
        .path()
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("retrain"), |p| p.join("retrain"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let data = dir.join(format!(
        "{}-{}-{}.csv",
        version.name,
        version.number,
        fleet::now_unix_s()
    ));
    std::fs::write(&data, combined).with_context(|| format!("writing {}", data.display()))?;
    // The new model's drift baseline: what the group sends now, when there is enough of it
    // (a baseline from the old data mixed with the new would keep the alert open, and
    // retrain again, for a model made for the new inputs).
    // Reports carry their own window's samples; those received in the second the alert was
    // seen may be of the window that straddles the shift.
    let recent: Vec<_> = match baseline_since_unix_s {
        Some(since) => samples.iter().filter(|s| s.2 > since).collect(),
        None => Vec::new(),
    };
    let baseline = if recent.len() >= MIN_BASELINE_SAMPLES {
        let mut rows = header.join(",");
        rows.push('\n');
        push_csv_rows(&mut rows, recent, target);
        let path = data.with_extension("baseline.csv");
        std::fs::write(&path, rows).with_context(|| format!("writing {}", path.display()))?;
        Some(path)
    } else {
        None
    };
    let optimized: Option<OptimizeOptions> = version
        .params
        .get("optimize_recipe")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    // The trained model an optimized version came from keeps its own name.
    let trained_name = match (&optimized, &version.parent) {
        (Some(_), Some(p)) => p.split('@').next().unwrap_or(&version.name).to_string(),
        _ => version.name.clone(),
    };
    let mut opts = recipe;
    opts.data = data.clone();
    opts.name = Some(trained_name.clone());
    opts.parent = Some(shown.clone());
    opts.baseline = baseline;
    let trained = super::train(registry, &opts)
        .with_context(|| format!("retraining {shown} on {}", data.display()))?;
    let trained_ref = format!("{trained_name}@{}", trained.version);
    let Some(mut o) = optimized else {
        return Ok(trained_ref);
    };
    o.model = trained_ref.clone();
    o.name = Some(version.name.clone());
    let report = super::optimize::optimize(registry, &o)
        .with_context(|| format!("optimizing the retrained {trained_ref} as {shown} was"))?;
    Ok(format!("{}@{}", version.name, report.version.version))
}

/// Appends labelled samples `(input, label, _)` as CSV rows, the label in column `target`.
fn push_csv_rows<'a>(
    out: &mut String,
    samples: impl IntoIterator<Item = &'a (Vec<f32>, f32, i64)>,
    target: usize,
) {
    for (x, label, _) in samples {
        let mut cells: Vec<String> = x.iter().map(f32::to_string).collect();
        cells.insert(target, label.to_string());
        out.push_str(&cells.join(","));
        out.push('\n');
    }
}

fn model_ids(f: &Fleet, name: &str, version: &str) -> Result<Vec<[u8; 8]>> {
    Ok(f.push_model_ids(name, version)?)
}

/// Whether a retraining happened.
enum Retrain {
    /// Not enough labelled feedback yet.
    Waiting,
    /// Done, or not applicable; with a line for the log.
    Done(Option<String>),
}

/// What the monitor does on its own.
#[derive(Debug, Clone)]
pub struct Automation {
    /// Gates of the rollouts it starts.
    pub gates: Gates,
    /// Canary devices of the rollouts it starts.
    pub canary: u32,
    /// Retrain on these alert rules (`drift`, `accuracy`); empty: never.
    pub retrain_on: Vec<String>,
    /// Labelled feedback samples from the group needed before retraining.
    pub min_samples: usize,
}

impl Automation {
    /// What the `[retrain]` and `[rollout]` tables of the alert rules ask for.
    pub fn from_rules(rules: &crate::fleet::alerts::Rules) -> Automation {
        Automation {
            gates: rules.rollout.clone(),
            canary: rules.retrain.canary.max(1),
            retrain_on: if rules.retrain.enabled {
                rules.retrain.on.clone()
            } else {
                Vec::new()
            },
            min_samples: rules.retrain.min_samples as usize,
        }
    }
}

/// The alerts that just opened, as [`Monitor::step`] takes them: `(rule, device, id)`.
pub fn opened(changes: &[crate::fleet::alerts::AlertChange]) -> Vec<(String, String, i64)> {
    changes
        .iter()
        .filter(|c| c.change == crate::fleet::alerts::Change::Opened)
        .map(|c| (c.rule.as_str().to_string(), c.device.clone(), c.id))
        .collect()
}

impl Default for Automation {
    fn default() -> Self {
        Automation {
            gates: Gates::default(),
            canary: 1,
            retrain_on: vec!["drift".into(), "accuracy".into()],
            min_samples: 200,
        }
    }
}

/// The host's monitoring loop: rollouts stepped, alerts evaluated, retraining started.
#[derive(Debug)]
pub struct Monitor {
    registry: Registry,
    automation: Automation,
    /// Versions already retrained for a group (one retraining per model and group).
    retrained: HashSet<(String, String)>,
    /// Alerts waiting for enough labelled feedback before retraining: (rule, device, id,
    /// when it opened).
    waiting: Vec<(String, String, i64, i64)>,
}

impl Monitor {
    /// A monitor over the registry at `db`.
    ///
    /// # Errors
    /// The registry cannot be opened.
    pub fn open(db: &Path, automation: Automation) -> Result<Monitor> {
        Ok(Monitor {
            registry: Registry::open(db)?,
            automation,
            retrained: HashSet::new(),
            waiting: Vec::new(),
        })
    }

    /// One pass: steps the rollouts, then reacts to `opened` alerts `(rule, device, id)`.
    /// Returns a line per thing done.
    ///
    /// # Errors
    /// Database failures (retraining failures are logged as events, not errors).
    pub fn step(&mut self, opened: &[(String, String, i64)]) -> Result<Vec<String>> {
        let mut log = step_rollouts(&self.registry)?;
        for (rule, device, alert) in opened {
            if self.automation.retrain_on.contains(rule)
                && !self.waiting.iter().any(|w| w.1 == *device)
            {
                let now = fleet::now_unix_s();
                self.waiting
                    .push((rule.clone(), device.clone(), *alert, now));
            }
        }
        let waiting = std::mem::take(&mut self.waiting);
        for (rule, device, alert, since) in waiting {
            match self.retrain_for(&rule, &device, alert, since)? {
                Retrain::Waiting => self.waiting.push((rule, device, alert, since)),
                Retrain::Done(Some(line)) => log.push(line),
                Retrain::Done(None) => {}
            }
        }
        Ok(log)
    }

    fn retrain_for(
        &mut self,
        rule: &str,
        device: &str,
        alert: i64,
        since_unix_s: i64,
    ) -> Result<Retrain> {
        let mut f = open_fleet(self.registry.path())?;
        let Some(status) = f.devices()?.into_iter().find(|d| d.name == device) else {
            return Ok(Retrain::Done(None));
        };
        let (Some(name), Some(number)) = (status.model.clone(), status.version.clone()) else {
            return Ok(Retrain::Done(None));
        };
        let key = (format!("{name}@{number}"), status.group.clone());
        if self.retrained.contains(&key)
            || f.rollouts(true, 100)?
                .iter()
                .any(|r| r.group == status.group)
        {
            return Ok(Retrain::Done(None));
        }
        // Retraining on a handful of labels from after the alert changes nothing: wait for
        // enough of them.
        let devices: Vec<i64> = f
            .group_devices(&status.group)?
            .iter()
            .map(|d| d.id)
            .collect();
        let ids = f.push_model_ids(&name, &number)?;
        let have = f.feedback_sample_count(&ids, &devices, since_unix_s)?;
        if have < self.automation.min_samples as u64 {
            return Ok(Retrain::Waiting);
        }
        self.retrained.insert(key.clone());
        let Ok(version) = self.registry.resolve(&key.0.parse()?) else {
            return Ok(Retrain::Done(None));
        };
        f.record_event(
            None,
            Some(device),
            "retrain",
            &format!(
                "{rule} alert {alert} on {device}: retraining {} for group {}",
                key.0, key.1
            ),
        )?;
        let new = match retrain(
            &mut self.registry,
            &version,
            &status.group,
            Some(since_unix_s),
        ) {
            Ok(v) => v,
            Err(e) => {
                let why = format!("retraining {} failed: {e:#}", key.0);
                f.record_event(None, Some(device), "retrain", &why)?;
                return Ok(Retrain::Done(Some(why)));
            }
        };
        f.record_event(
            None,
            Some(device),
            "retrain",
            &format!(
                "{} retrained as {new} on the original data and the group's feedback",
                key.0
            ),
        )?;
        let origin = format!("retrain after {rule} alert {alert} on {device}");
        match start_rollout(
            &self.registry,
            &new.parse()?,
            &status.group,
            self.automation.canary,
            &self.automation.gates,
            &origin,
        ) {
            Ok(v) => Ok(Retrain::Done(Some(format!(
                "{rule} alert on {device}: retrained {} as {new}, rollout {} to group {}",
                key.0, v.rollout, status.group
            )))),
            Err(e) => {
                let why = format!("rollout of {new} not started: {e:#}");
                f.record_event(None, Some(device), "retrain", &why)?;
                Ok(Retrain::Done(Some(why)))
            }
        }
    }
}

/// Rollouts (`rollouts`): a JSON array, or a line each.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct RolloutList(pub Vec<Rollout>);

/// The rollouts under way, or every rollout (the latest 100) with `all`.
///
/// # Errors
/// Database failures.
pub fn rollouts(db: &Path, all: bool) -> Result<RolloutList> {
    Ok(RolloutList(open_fleet(db)?.rollouts(!all, 100)?))
}

impl Render for RolloutList {
    fn text(&self) -> String {
        let mut out = String::new();
        for r in &self.0 {
            out.push_str(&format!(
                "{:>4}  {}@{}  group {}  {}\n",
                r.id,
                r.name,
                r.version,
                r.group,
                state_text(r)
            ));
        }
        if out.is_empty() {
            out.push_str(
                "no rollouts (start one with `perch-host rollout NAME@VERSION --group G`)\n",
            );
        }
        out
    }
}
