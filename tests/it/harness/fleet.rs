//! A fleet on loopback for the integration tests: `perch-host serve` and `perch agent`
//! processes in a temporary directory, each on a port the OS picked, killed when dropped;
//! a minimal HTTP client for the agents' local API.

use super::{corpus_dir, host_bin, perch_bin};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running process whose stderr is collected line by line.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let label = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("PERCH_TEST_VERBOSE").is_some() {
                    eprintln!("[{label}] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Proc {
            child,
            lines,
            name: name.to_string(),
        }
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?} within {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for the process to end by itself (an injected fault aborts it).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} still runs after {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to clean up, like a power cut.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A host: registry, keys and database in `dir`.
pub struct Host {
    pub dir: PathBuf,
    pub db: PathBuf,
    pub proc: Option<Proc>,
    pub addr: Option<SocketAddr>,
}

impl Host {
    pub fn new(dir: &Path) -> Host {
        Host {
            dir: dir.to_path_buf(),
            db: dir.join("perch-registry.db"),
            proc: None,
            addr: None,
        }
    }

    /// Runs `perch-host --registry DB ARGS…`, panicking with its stderr on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(host_bin())
            .arg("--registry")
            .arg(&self.db)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("spawn perch-host");
        assert!(
            out.status.success(),
            "perch-host {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.cli(&a)).expect("perch-host printed JSON")
    }

    /// Starts `perch-host serve` on `port` (0: any) and waits until it listens.
    pub fn serve(&mut self, port: u16) -> SocketAddr {
        let mut cmd = Command::new(host_bin());
        cmd.arg("--registry")
            .arg(&self.db)
            .args([
                "serve",
                "--heartbeat",
                "1",
                "--http",
                "127.0.0.1:0",
                "--listen",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(&self.dir);
        let mut p = Proc::spawn("host", cmd);
        let line = p.wait_line("listening on ", Duration::from_secs(20));
        let addr: SocketAddr = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        self.proc = Some(p);
        self.addr = Some(addr);
        addr
    }

    /// Registers a device and writes its configuration, tuned for tests: any free API port,
    /// short report windows and reconnection delays. Returns the config path.
    pub fn add_device(&self, name: &str, group: &str, host_addr: &str, extra: &str) -> PathBuf {
        let config = self.dir.join(format!("{name}.toml"));
        self.cli(&[
            "devices",
            "add",
            name,
            "--group",
            group,
            "--host",
            host_addr,
            "--config",
            config.to_str().unwrap(),
        ]);
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text
            .replace("http = \"127.0.0.1:7471\"", "http = \"127.0.0.1:0\"")
            .replace("report_interval_s = 60", "report_interval_s = 0.3")
            .replace(
                "state_dir = \"perch-state\"",
                &format!("state_dir = \"state-{name}\""),
            );
        let text = format!("{text}backoff_initial_ms = 100\nbackoff_max_ms = 500\n{extra}");
        std::fs::write(&config, text).unwrap();
        config
    }

    /// Trains a wine classifier as NAME (a new version each call).
    pub fn train_wine(&self, name: &str, model: &str, seed: u32) {
        let data = corpus_dir().join("datasets/wine/wine_train.csv");
        self.cli(&[
            "train",
            data.to_str().unwrap(),
            "--target",
            "target",
            "--model",
            model,
            "--name",
            name,
            "--seed",
            &seed.to_string(),
        ]);
    }

    pub fn fleet(&self) -> perch::fleet::Fleet {
        perch::fleet::Fleet::open(&self.db).unwrap()
    }

    /// Waits until every assignment of push `push` left `pending`; returns device → state.
    pub fn wait_push(&self, push: u64, timeout: Duration) -> Vec<(String, String, Option<String>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let states = self.fleet().push_states(push).unwrap();
            if states.iter().all(|(_, s, _)| s != "pending") {
                return states;
            }
            assert!(
                Instant::now() < deadline,
                "push {push} still pending after {timeout:?}: {states:?}\nhost log:\n{}",
                self.proc.as_ref().map(Proc::log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running agent.
pub struct Agent {
    pub proc: Proc,
    pub http: SocketAddr,
    pub config: PathBuf,
}

impl Agent {
    pub fn start(name: &str, config: &Path, failpoints: Option<&str>) -> Agent {
        let mut cmd = Command::new(perch_bin());
        cmd.arg("agent").arg("--config").arg(config);
        if let Some(f) = failpoints {
            cmd.env("PERCH_FAILPOINTS", f);
        }
        let mut proc = Proc::spawn(name, cmd);
        let line = proc.wait_line("agent serving http://", Duration::from_secs(20));
        let http = line
            .split("http://")
            .nth(1)
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Agent {
            proc,
            http,
            config: config.to_path_buf(),
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.http, "GET", path, "")
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        http(self.http, "POST", path, body)
    }

    pub fn health(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/health").1).expect("health is JSON")
    }

    /// Waits until `/health` satisfies `f`.
    pub fn wait_health(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.health();
            if f(&h) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what} not reached in {timeout:?}; health {h}\nlog:\n{}",
                self.proc.name,
                self.proc.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the agent's API");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The features of a corpus CSV whose last column is the target, as JSON rows.
pub fn feature_rows(csv: &Path) -> Vec<Vec<f64>> {
    let mut r = csv::Reader::from_path(csv).unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            let n = rec.len();
            rec.iter().take(n - 1).map(|v| v.parse().unwrap()).collect()
        })
        .collect()
}
