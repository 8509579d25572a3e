//! The protocol's messages. Postcard encodes them; `frame` wraps each in a length and a CRC
//! during the handshake, and seals each after it.

use super::auth::{EPHEMERAL_LEN, PROOF_LEN};
use crate::metrics::{Report, ReportV2};
use serde::{Deserialize, Serialize};

/// A model as the device and host name it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ModelRef {
    /// Registry name.
    pub name: String,
    /// Registry version (as text: `3`).
    pub version: String,
    /// SHA-256 of the artifact's bytes as pushed (signature included).
    pub sha256: [u8; 32],
}

/// What a pushed model is for on the device.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Role {
    /// It becomes the model that answers requests.
    #[default]
    Active,
    /// It runs beside the active model on the same requests, its answers compared and
    /// timed but never returned (a canary rollout); `Cancel` ends it.
    Shadow,
}

/// Every message of the protocol, both directions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Message {
    /// Device → host, first: who it is and which protocol versions it speaks.
    Hello {
        /// Lowest protocol version the device speaks.
        min_protocol: u16,
        /// Highest protocol version the device speaks.
        max_protocol: u16,
        /// Device id as registered on the host.
        device: String,
        /// `perch` version string of the agent.
        agent: String,
        /// Random number of the device's state directory, made with its report queue: a
        /// wiped directory (sequence numbers from 1 again) is a new epoch.
        epoch: u64,
        /// The device's ephemeral X25519 public key (its nonce for the handshake).
        ephemeral: [u8; EPHEMERAL_LEN],
    },
    /// Host → device: the protocol version chosen, the host's ephemeral key, and its proof
    /// that it holds the device's key.
    Challenge {
        /// Protocol version both speak from here on.
        protocol: u16,
        /// The host's ephemeral X25519 public key.
        ephemeral: [u8; EPHEMERAL_LEN],
        /// The host's proof (`auth`).
        proof: [u8; PROOF_LEN],
    },
    /// Device → host: the device's proof that it holds its key.
    Auth {
        /// The device's proof (`auth`).
        proof: [u8; PROOF_LEN],
    },
    /// Host → device, the first sealed frame: authenticated; the session is open.
    Welcome {
        /// Seconds between heartbeats the host expects.
        heartbeat_s: u32,
    },
    /// Host → device, before closing: why the session ends.
    Refused {
        /// Reason, for the device's log.
        reason: String,
    },
    /// Device → host: one window of metrics; resent until acknowledged.
    Metrics {
        /// Per-device sequence number, increasing, never reused.
        seq: u64,
        /// The figures.
        report: Report,
    },
    /// Host → device: the report `seq` is stored.
    Ack {
        /// The acknowledged sequence number.
        seq: u64,
    },
    /// Host → device: install this model (as the active one, or in shadow).
    ModelOffer {
        /// Push id on the host.
        push: u64,
        /// The model.
        model: ModelRef,
        /// Artifact size in bytes.
        size: u64,
        /// Active, or in shadow beside the active model.
        role: Role,
        /// The host's signed manifest of this model (`crate::artifact::manifest`): what the
        /// offer says must be what the host signed.
        manifest: Vec<u8>,
    },
    /// Device → host: send push `push`'s bytes from `offset` on.
    Fetch {
        /// Push id.
        push: u64,
        /// First byte wanted (what the device already has).
        offset: u64,
    },
    /// Host → device: a piece of an artifact.
    Chunk {
        /// Push id.
        push: u64,
        /// Position of `bytes` in the artifact.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Host → device: push `push` is withdrawn (another model was assigned, or it was
    /// cancelled); the device drops what it downloaded of it.
    Cancel {
        /// Push id.
        push: u64,
        /// Why.
        reason: String,
    },
    /// Device → host: the pushed model is installed and active.
    Installed {
        /// Push id.
        push: u64,
    },
    /// Device → host: the pushed model was refused; the running model is kept.
    Rejected {
        /// Push id.
        push: u64,
        /// Why.
        reason: String,
        /// Whether the cause may pass (a full disk, a failing write): the host offers it
        /// again later. Otherwise (a bad signature, a failed canary) it does not.
        transient: bool,
    },
    /// Device → host: the device went back to its previous model by itself.
    RolledBack {
        /// The model it left.
        from: ModelRef,
        /// The model it runs now.
        to: ModelRef,
        /// Why.
        reason: String,
    },
    /// Device → host: still here, and what it runs.
    Heartbeat {
        /// The active model, if any.
        model: Option<ModelRef>,
    },
    /// Device → host, protocol 3 on: one window of metrics with its latency buckets (the
    /// report in form 2); resent until acknowledged, like `Metrics`, which a session of
    /// protocol 2 sends instead.
    MetricsV2 {
        /// Per-device sequence number, increasing, never reused.
        seq: u64,
        /// The figures.
        report: ReportV2,
    },
}

impl Message {
    /// Report `seq` as a session of protocol `protocol` sends it: `MetricsV2` from
    /// version 3 on, else `Metrics` (whose report has no latency buckets).
    pub fn metrics(protocol: u16, seq: u64, report: Report) -> Message {
        if protocol >= 3 {
            Message::MetricsV2 {
                seq,
                report: ReportV2(report),
            }
        } else {
            Message::Metrics { seq, report }
        }
    }

    /// The sequence number and report of a `Metrics` or `MetricsV2`; any other message
    /// is handed back.
    pub fn into_report(self) -> Result<(u64, Report), Box<Message>> {
        match self {
            Message::Metrics { seq, report }
            | Message::MetricsV2 {
                seq,
                report: ReportV2(report),
            } => Ok((seq, report)),
            other => Err(Box::new(other)),
        }
    }

    /// The variant's name, for logs (never the content, which may be large).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Challenge { .. } => "Challenge",
            Message::Auth { .. } => "Auth",
            Message::Welcome { .. } => "Welcome",
            Message::Refused { .. } => "Refused",
            Message::Metrics { .. } => "Metrics",
            Message::Ack { .. } => "Ack",
            Message::ModelOffer { .. } => "ModelOffer",
            Message::Fetch { .. } => "Fetch",
            Message::Chunk { .. } => "Chunk",
            Message::Cancel { .. } => "Cancel",
            Message::Installed { .. } => "Installed",
            Message::Rejected { .. } => "Rejected",
            Message::RolledBack { .. } => "RolledBack",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::MetricsV2 { .. } => "MetricsV2",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::report_compat::{as_current, old_report};
    use crate::metrics::{LATENCY_BUCKETS, LatencyBuckets};

    #[test]
    fn an_old_agents_metrics_still_decode_off_the_wire() {
        // What a protocol-2 agent sends: variant 5, seq, the report in form 1.
        let old = old_report();
        let mut bytes = vec![5, 9];
        bytes.extend(postcard::to_allocvec(&old).unwrap());
        let m: Message = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(m.clone().into_report().unwrap(), (9, as_current(&old)));
        assert_eq!(postcard::to_allocvec(&m).unwrap(), bytes);
        assert_eq!(Message::metrics(2, 9, as_current(&old)), m);
    }

    #[test]
    fn protocol_3_sends_the_buckets_as_metrics_v2() {
        let mut r = as_current(&old_report());
        r.latency_buckets = Some(LatencyBuckets::new(vec![2; LATENCY_BUCKETS], 77).unwrap());
        let m = Message::metrics(3, 4, r.clone());
        assert_eq!(m.name(), "MetricsV2");
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(bytes[..2], [15, 4]);
        let back: Message = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.into_report().unwrap(), (4, r.clone()));
        // Protocol 2 cannot carry them: the report goes without.
        let (_, sent) = Message::metrics(2, 4, r).into_report().unwrap();
        let on_wire: Message = postcard::from_bytes(
            &postcard::to_allocvec(&Message::Metrics {
                seq: 4,
                report: sent,
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(on_wire.into_report().unwrap().1.latency_buckets, None);
    }

    #[test]
    fn a_metrics_v2_with_a_wrong_bucket_count_is_refused() {
        let r = as_current(&old_report());
        let mut bytes = vec![15, 1];
        bytes.extend(postcard::to_allocvec(&r).unwrap());
        bytes.push(1);
        bytes.extend(postcard::to_allocvec(&(vec![0u32; 18], 0u64)).unwrap());
        assert!(postcard::from_bytes::<Message>(&bytes).is_err());
    }
}
