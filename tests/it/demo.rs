//! The monitoring loop end to end: `perch-host demo` (train, int8, a host and agents in
//! two groups, push, traffic with feedback, drift injected into one group's inputs, the
//! drift alert, retraining, the canary-gated rollout), checked step by step; then the
//! dashboard over what the demo left, rendered by headless Chromium.
use crate::harness;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Run {
    summary: Value,
    dir: PathBuf,
    wall_s: f64,
}

/// One demo run shared by the tests of this file.
fn demo() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo");
        let _ = std::fs::remove_dir_all(&dir);
        let started = Instant::now();
        let out = Command::new(harness::host_bin())
            .args(["demo", "--json", "--http", "off", "--dir"])
            .arg(&dir)
            .output()
            .expect("spawn perch-host demo");
        let wall_s = started.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "perch-host demo failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_slice(&out.stdout).expect("the summary is JSON");
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        Run {
            summary,
            dir,
            wall_s,
        }
    })
}

fn step<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no {name} step in {summary:#}"))
}

#[test]
fn drift_on_one_group_is_caught_retrained_and_rolled_out_to_that_group_only() {
    let run = demo();
    let s = &run.summary;
    assert_eq!(s["ok"], true, "{s:#}");
    eprintln!("demo took {:.1} s (target < 120 s)", run.wall_s);
    assert!(run.wall_s < 120.0, "the demo took {:.1} s", run.wall_s);

    // The alert fired within two report intervals of the shift, on the drifted group.
    let alert = step(s, "alert");
    let intervals = alert["intervals"].as_f64().unwrap();
    assert!(intervals <= 2.0, "alert after {intervals} report intervals");
    assert!(
        alert["device"].as_str().unwrap().starts_with("south-"),
        "{alert}"
    );

    // The retrained version passed the gate and runs on south only.
    let retrain = step(s, "retrain");
    let candidate = retrain["candidate"].as_str().unwrap();
    let original = step(s, "optimize")["model"].as_str().unwrap();
    assert_ne!(candidate, original);
    assert_eq!(step(s, "gate")["state"], "promoted", "{s:#}");
    let rollout = step(s, "rollout");
    assert_eq!(rollout["state"], "complete");
    for m in rollout["south"].as_array().unwrap() {
        assert_eq!(m, candidate, "south runs the retrained model");
    }
    for m in rollout["north"].as_array().unwrap() {
        assert_eq!(m, original, "north is untouched");
    }
    // The new model serves south's drifted inputs better than the old one did.
    let before = retrain["accuracy_south_drifted"].as_f64().unwrap();
    let after = rollout["accuracy_south_new"].as_f64().unwrap();
    assert!(
        after > before,
        "accuracy on the drifted inputs {before} -> {after}"
    );

    // Its drift baseline is south's new inputs: the drift alerts resolve.
    let resolved = step(s, "resolved");
    assert_eq!(resolved["resolved"], true, "{resolved}");
    let psi = resolved["psi_max_south"].as_f64().unwrap();
    assert!(psi < 0.2, "south's PSI against the new baseline: {psi}");

    // The registry knows where the retrained version came from.
    let reg = perch::registry::Registry::open(run.dir.join("perch-registry.db")).unwrap();
    let v = reg.resolve(&candidate.parse().unwrap()).unwrap();
    assert!(v.parent.is_some(), "{candidate} has a parent");
    assert!(
        v.params.get("optimize").is_some(),
        "re-quantized like its predecessor"
    );
}

/// What a headless Chromium run left.
struct Browser {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs headless Chromium; fails the test with what to install when it is missing.
///
/// Its output goes to files, not pipes: Chromium's helper processes inherit the standard
/// streams and may outlive the browser by minutes, and reading a pipe to its end waits for
/// them all. The browser itself is given a minute.
fn chromium(args: &[&str]) -> Browser {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("headless Chromium is needed for the dashboard test: apt-get install chromium")
        });
    let scratch = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (scratch.path().join("out"), scratch.path().join("err"));
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!(
            "--user-data-dir={}",
            scratch.path().join("profile").display()
        ))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("run chromium");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Browser {
        success: status.is_some_and(|s| s.success()),
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

#[test]
fn the_dashboard_renders_the_fleet_and_charts_from_the_stored_metrics() {
    let run = demo();
    let db = run.dir.join("perch-registry.db");
    let mut host = harness::Proc::spawn("host", {
        let mut c = Command::new(harness::host_bin());
        c.arg("--registry").arg(&db).args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ]);
        c
    });
    let line = host.wait_line("dashboard on http://", Duration::from_secs(20));
    let url = line
        .split("dashboard on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();

    // The page as the browser built it, after its scripts fetched the data.
    let mut dom = String::new();
    for _ in 0..3 {
        let out = chromium(&["--virtual-time-budget=8000", "--dump-dom", &url]);
        dom = out.stdout;
        if dom.contains("data-refreshes=\"1\"") || dom.contains("data-refreshes=\"2\"") {
            break;
        }
    }
    assert!(
        dom.contains("id=\"fleet-table\""),
        "no fleet table in:\n{dom}"
    );
    let fleet = perch::fleet::Fleet::open(&db).unwrap();
    for d in fleet.devices().unwrap() {
        let row = format!(
            "{}@{}",
            d.model.clone().unwrap(),
            d.version.clone().unwrap()
        );
        assert!(dom.contains(&format!(">{}<", d.name)), "{} missing", d.name);
        assert!(dom.contains(&row), "{row} of {} missing", d.name);
    }
    // A chart per device and metric, with one point per stored report.
    let device = fleet.device("south-1").unwrap().unwrap();
    let stored = fleet.reports(&device).unwrap().len();
    let tag = "<svg class=\"chart\" data-device=\"south-1\" data-metric=\"latency\"";
    let at = dom
        .find(tag)
        .unwrap_or_else(|| panic!("no latency chart for south-1"));
    let chart = &dom[at..at + dom[at..].find("</svg>").unwrap()];
    assert!(
        chart.contains(&format!("data-points=\"{stored}\"")),
        "the chart should have {stored} points: {}",
        &chart[..chart.len().min(300)]
    );
    let polyline = chart.find("<polyline").expect("a drawn series");
    let points = &chart[polyline..];
    let pts = points
        .split(" points=\"")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .unwrap_or("");
    assert_eq!(
        pts.split_whitespace().count(),
        stored,
        "one vertex per report"
    );

    // A screenshot for people to look at.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("dashboard.png");
    let out = chromium(&[
        "--window-size=1400,2200",
        "--virtual-time-budget=8000",
        &format!("--screenshot={}", png.display()),
        &url,
    ]);
    assert!(out.success, "{}", out.stderr);
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        "{} bytes",
        bytes.len()
    );
    eprintln!("screenshot: {} ({} bytes)", png.display(), bytes.len());
    drop(host);
}
