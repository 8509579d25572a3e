//! The protocol's messages. Postcard encodes them; `frame` wraps each in a length and CRC.

use crate::metrics::Report;
use serde::{Deserialize, Serialize};

/// Nonce length for the challenge-response handshake.
pub const NONCE_LEN: usize = 16;

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
        /// The device's nonce for the handshake.
        nonce: [u8; NONCE_LEN],
    },
    /// Host → device: the protocol version chosen and the host's nonce.
    Challenge {
        /// Protocol version both speak from here on.
        protocol: u16,
        /// The host's nonce.
        nonce: [u8; NONCE_LEN],
    },
    /// Device → host: HMAC-SHA256 over both nonces with the device's key.
    Auth {
        /// The MAC.
        mac: [u8; 32],
    },
    /// Host → device: authenticated; the session is open.
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
}

impl Message {
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
        }
    }
}
