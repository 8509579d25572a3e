//! The agent's configuration file (TOML), as `perch-host devices add` writes it.
//!
//! ```toml
//! device = "pi-kitchen"
//! key = "…64 hex digits…"              # the device's handshake secret
//! host = "192.168.1.10:7470"           # where `perch-host serve` listens
//! host_public_key = "…64 hex digits…"  # verifies pushed models
//! state_dir = "/var/lib/perch"         # models, the report queue (relative: to this file)
//! http = "127.0.0.1:7471"              # the local API
//! report_interval_s = 60
//! # Optional: local API access and limits.
//! http_token = "…at least 16 characters…"  # `Authorization: Bearer …` (required beyond loopback)
//! http_hosts = ["pi-kitchen.local"]      # Host names the API answers besides IPs, localhost
//! max_batch = 256                        # samples per /predict request
//! max_model_memory_bytes = 33554432      # planned peak memory a model may need (32 MiB)
//! ```

use crate::sync::auth;
use crate::util::{from_hex, to_hex};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default port of `perch-host serve`.
pub const DEFAULT_HOST_PORT: u16 = 7470;
/// Default address of the agent's local API.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7471";

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said (with the line).
        reason: String,
    },
    /// A field has a value that cannot work.
    #[error("{path}: `{field}`: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    device: String,
    key: String,
    host: String,
    host_public_key: String,
    state_dir: Option<PathBuf>,
    http: Option<String>,
    report_interval_s: Option<f64>,
    queue_capacity: Option<usize>,
    recent_predictions: Option<usize>,
    backoff_initial_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    rollback_min_requests: Option<u32>,
    rollback_error_rate: Option<f64>,
    max_model_bytes: Option<u64>,
    http_token: Option<String>,
    http_hosts: Option<Vec<String>>,
    max_batch: Option<usize>,
    max_model_memory_bytes: Option<u64>,
}

/// Shortest accepted `http_token`.
pub const MIN_TOKEN_LEN: usize = 16;
/// Default samples per `/predict` request.
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Default memory budget of a model (planned peak: weights, buffers, scratch), 32 MiB: the
/// systemd unit caps the whole agent at 64 MiB.
pub const DEFAULT_MAX_MODEL_MEMORY_BYTES: u64 = 32 << 20;

/// Whether `host` (a name or address, without port) is this machine's loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host part of `host:port` (IPv6 in brackets kept without them).
pub fn host_part(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Device id, as registered on the host.
    pub device: String,
    /// Handshake secret.
    pub key: [u8; auth::KEY_LEN],
    /// `host:port` of the sync server.
    pub host: String,
    /// The host's Ed25519 public key; pushed models must carry its signature.
    pub host_public_key: ed25519_dalek::VerifyingKey,
    /// Directory for models, partial downloads and the report queue.
    pub state_dir: PathBuf,
    /// Address of the local HTTP API (`127.0.0.1:PORT`; port 0 picks a free one).
    pub http: String,
    /// Length of a metrics window.
    pub report_interval: Duration,
    /// Reports kept while the host is unreachable (oldest dropped beyond).
    pub queue_capacity: usize,
    /// Predictions remembered for `POST /feedback`.
    pub recent_predictions: usize,
    /// First reconnection delay.
    pub backoff_initial: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// Requests a newly installed model serves before its error rate is judged.
    pub rollback_min_requests: u32,
    /// Error rate of a newly installed model at which the agent goes back to the previous.
    pub rollback_error_rate: f64,
    /// Largest model the agent accepts.
    pub max_model_bytes: u64,
    /// Bearer token the local API requires (`Authorization: Bearer TOKEN`); required when
    /// `http` is not a loopback address.
    pub http_token: Option<String>,
    /// Host names (without port) the local API answers to besides IP addresses and
    /// `localhost`; any other `Host` is refused (DNS rebinding).
    pub http_hosts: Vec<String>,
    /// Most samples one `/predict` request may carry.
    pub max_batch: usize,
    /// Memory budget of a model: the planned peak of its weights, buffers for one batch of
    /// `max_batch` samples at most, and scratch. A model whose batch-1 peak is over it is
    /// refused before it is loaded.
    pub max_model_memory_bytes: u64,
}

impl Config {
    /// Reads and checks the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and, for bad values, the field.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.display().to_string(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// Parses configuration text; relative paths are taken from `base`.
    ///
    /// # Errors
    /// As [`Config::load`]; `origin` names the text in messages.
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let f: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        let invalid = |field: &'static str, reason: String| ConfigError::Invalid {
            path: origin.to_string(),
            field,
            reason,
        };
        let key = from_hex::<{ auth::KEY_LEN }>(&f.key).map_err(|r| invalid("key", r))?;
        let pk = from_hex::<32>(&f.host_public_key).map_err(|r| invalid("host_public_key", r))?;
        let host_public_key = ed25519_dalek::VerifyingKey::from_bytes(&pk)
            .map_err(|_| invalid("host_public_key", "not an Ed25519 public key".into()))?;
        if f.device.is_empty() {
            return Err(invalid("device", "empty".into()));
        }
        if !f.host.contains(':') {
            return Err(invalid(
                "host",
                format!(
                    "{:?} has no port (write host:port, e.g. {}:{DEFAULT_HOST_PORT})",
                    f.host, f.host
                ),
            ));
        }
        let interval = f.report_interval_s.unwrap_or(60.0);
        if !(0.05..=86_400.0).contains(&interval) {
            return Err(invalid(
                "report_interval_s",
                format!("{interval} is outside 0.05..=86400"),
            ));
        }
        let rate = f.rollback_error_rate.unwrap_or(0.25);
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(invalid(
                "rollback_error_rate",
                format!("{rate} is not in (0, 1]"),
            ));
        }
        let capacity = f.queue_capacity.unwrap_or(1440);
        if capacity == 0 || capacity > 1_000_000 {
            return Err(invalid(
                "queue_capacity",
                format!("{capacity} is outside 1..=1000000"),
            ));
        }
        let recent = f.recent_predictions.unwrap_or(256);
        if recent > 1_000_000 {
            return Err(invalid(
                "recent_predictions",
                format!("{recent} is above 1000000"),
            ));
        }
        let backoff_initial = Duration::from_millis(f.backoff_initial_ms.unwrap_or(500).max(1));
        let backoff_max = Duration::from_millis(f.backoff_max_ms.unwrap_or(60_000));
        if backoff_max < backoff_initial {
            return Err(invalid(
                "backoff_max_ms",
                "smaller than backoff_initial_ms".into(),
            ));
        }
        let http = f.http.unwrap_or_else(|| DEFAULT_HTTP.to_string());
        let http_token = f.http_token.filter(|t| !t.is_empty());
        if let Some(t) = &http_token
            && (t.len() < MIN_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(invalid(
                "http_token",
                format!(
                    "must be at least {MIN_TOKEN_LEN} printable ASCII characters without spaces"
                ),
            ));
        }
        if !is_loopback_host(host_part(&http)) && http_token.is_none() {
            return Err(invalid(
                "http",
                format!(
                    "{http:?} is reachable beyond this machine: set http_token (at least \
                     {MIN_TOKEN_LEN} characters) so that only clients holding it are answered"
                ),
            ));
        }
        let http_hosts = f.http_hosts.unwrap_or_default();
        if let Some(h) = http_hosts
            .iter()
            .find(|h| h.is_empty() || h.contains(['/', ' ', ',']))
        {
            return Err(invalid("http_hosts", format!("{h:?} is not a host name")));
        }
        let max_batch = f.max_batch.unwrap_or(DEFAULT_MAX_BATCH);
        if !(1..=1_000_000).contains(&max_batch) {
            return Err(invalid(
                "max_batch",
                format!("{max_batch} is outside 1..=1000000"),
            ));
        }
        let max_model_memory_bytes = f
            .max_model_memory_bytes
            .unwrap_or(DEFAULT_MAX_MODEL_MEMORY_BYTES);
        if max_model_memory_bytes < 1 << 20 {
            return Err(invalid(
                "max_model_memory_bytes",
                format!("{max_model_memory_bytes} is below 1 MiB"),
            ));
        }
        let state_dir = f.state_dir.unwrap_or_else(|| PathBuf::from("perch-state"));
        let state_dir = if state_dir.is_relative() {
            base.join(state_dir)
        } else {
            state_dir
        };
        Ok(Config {
            device: f.device,
            key,
            host: f.host,
            host_public_key,
            state_dir,
            http,
            report_interval: Duration::from_secs_f64(interval),
            queue_capacity: capacity,
            recent_predictions: recent,
            backoff_initial,
            backoff_max,
            rollback_min_requests: f.rollback_min_requests.unwrap_or(20).max(1),
            rollback_error_rate: rate,
            max_model_bytes: f.max_model_bytes.unwrap_or(256 << 20),
            http_token,
            http_hosts,
            max_batch,
            max_model_memory_bytes,
        })
    }
}

/// Writes a configuration file for a device (what `perch-host devices add` calls).
pub fn render(
    device: &str,
    key: &[u8; auth::KEY_LEN],
    host: &str,
    host_public_key: &[u8; 32],
) -> String {
    format!(
        "# perch agent configuration for device {device:?}; keep it secret (it holds the key).\n\
         device = {device:?}\n\
         key = \"{}\"\n\
         host = {host:?}\n\
         host_public_key = \"{}\"\n\
         state_dir = \"perch-state\"\n\
         http = \"{DEFAULT_HTTP}\"\n\
         report_interval_s = 60\n",
        to_hex(key),
        to_hex(host_public_key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk() -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&[5; 32])
            .verifying_key()
            .to_bytes()
    }

    #[test]
    fn rendered_config_parses_back() {
        let text = render("pi-1", &[9; 32], "10.0.0.2:7470", &pk());
        let c = Config::parse(&text, "t.toml", Path::new("/etc/perch")).unwrap();
        assert_eq!(c.device, "pi-1");
        assert_eq!(c.key, [9; 32]);
        assert_eq!(c.state_dir, Path::new("/etc/perch/perch-state"));
        assert_eq!(c.report_interval, Duration::from_secs(60));
        assert_eq!(c.host_public_key.to_bytes(), pk());
    }

    #[test]
    fn bad_values_name_the_field() {
        let good = render("pi-1", &[9; 32], "h:1", &pk());
        for (from, to, field) in [
            ("h:1", "h", "host"),
            (
                "report_interval_s = 60",
                "report_interval_s = 0",
                "report_interval_s",
            ),
        ] {
            let text = good.replace(from, to);
            let e = Config::parse(&text, "t.toml", Path::new(".")).unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
        let short_key = good.replace(&to_hex(&[9; 32]), "abcd");
        let e = Config::parse(&short_key, "t.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("`key`"), "{e}");
        let e = Config::parse("device = 3", "t.toml", Path::new(".")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e =
            Config::parse(&format!("{good}\nbogus = 1\n"), "t.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn an_api_beyond_loopback_needs_a_token() {
        let good = render("pi-1", &[9; 32], "h:1", &pk());
        let open = good.replace("127.0.0.1:7471", "0.0.0.0:7471");
        let e = Config::parse(&open, "t.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("http_token"), "{e}");
        let short = format!("{open}http_token = \"abc\"\n");
        let e = Config::parse(&short, "t.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("`http_token`"), "{e}");
        let with = format!("{open}http_token = \"0123456789abcdef\"\n");
        let c = Config::parse(&with, "t.toml", Path::new(".")).unwrap();
        assert_eq!(c.http_token.as_deref(), Some("0123456789abcdef"));
        // On loopback the token is optional.
        let c = Config::parse(&good, "t.toml", Path::new(".")).unwrap();
        assert_eq!(c.http_token, None);
        assert_eq!(c.max_batch, DEFAULT_MAX_BATCH);
        for (addr, host) in [
            ("127.0.0.1:7471", "127.0.0.1"),
            ("[::1]:80", "::1"),
            ("localhost:1", "localhost"),
            ("pi.local", "pi.local"),
        ] {
            assert_eq!(host_part(addr), host);
        }
        assert!(is_loopback_host("127.0.0.2") && is_loopback_host("[::1]"));
        assert!(!is_loopback_host("0.0.0.0") && !is_loopback_host("attacker.example"));
    }
}
