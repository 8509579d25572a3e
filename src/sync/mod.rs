//! The sync protocol between devices and the host (specified in `docs/protocol.md`).
//!
//! bytes → frame → message → session, one file each:
//! - [`frame`]: how a message becomes bytes: length, payload, CRC-32 during the handshake,
//!   sealed (ChaCha20-Poly1305) after it; no sockets involved.
//! - [`seal`]: one direction's frame key and counter.
//! - [`connection`]: blocking readers and writers of frames over any stream.
//! - [`Message`]: what is said (postcard-encoded enums).
//! - [`auth`]: the handshake's cryptography (ephemeral X25519 keyed with the device's
//!   secret through HKDF-SHA256: the host proves itself first, then the device).
//! - [`client`]: the device's side of the handshake.
//! - [`server`]: the host's accept loop and per-device sessions, over a [`server::Store`].

pub mod auth;
pub mod client;
pub mod connection;
pub mod frame;
mod message;
pub mod seal;
pub mod server;

pub use connection::{ConnectionError, FrameReader, FrameWriter, Received};
pub use message::{Message, ModelRef, Role};

/// The newest protocol version this build speaks. Version 2 authenticates the host to the
/// device and seals every frame after the handshake; version 1 did neither and is not
/// spoken. Version 3 adds `MetricsV2`, a report with its latency buckets; a session of
/// version 2 sends `Metrics` (the report without them) instead.
pub const PROTOCOL_VERSION: u16 = 3;

/// Oldest protocol version this build still speaks (a device never speaks an older one: a
/// peer could otherwise talk it down to a version without host authentication).
pub const MIN_PROTOCOL_VERSION: u16 = 2;

/// Largest payload of a handshake frame (`Hello`, `Challenge`, `Auth`, a `Refused` before
/// the session): a peer not yet authenticated gets no more buffer than this.
pub const HANDSHAKE_MAX_PAYLOAD: usize = 512;

/// Longest device name: letters, digits, `-`, `_` and `.`.
pub const MAX_NAME_LEN: usize = 64;

/// Picks the version both sides speak: the highest in both ranges.
pub fn negotiate(min: u16, max: u16) -> Option<u16> {
    let hi = max.min(PROTOCOL_VERSION);
    (hi >= min.max(MIN_PROTOCOL_VERSION)).then_some(hi)
}

/// Whether `name` can be a device (or group) name: 1 to [`MAX_NAME_LEN`] ASCII letters,
/// digits, `-`, `_` and `.`. Names a peer sends are checked with this before they are
/// looked up, stored or logged.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Text a peer sent (an agent version, a reason) made safe to store and log: printable
/// ASCII only (anything else becomes `?`), at most `max` characters (`…` marks a cut).
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}
