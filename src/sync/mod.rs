//! The sync protocol between devices and the host (specified in `docs/protocol.md`).
//!
//! bytes → frame → message → session, one file each:
//! - [`frame`]: how a message becomes bytes: length, payload, CRC-32; no sockets involved.
//! - [`connection`]: blocking readers and writers of frames over any stream.
//! - [`Message`]: what is said (postcard-encoded enums).
//! - [`auth`]: the challenge-response proof (HMAC-SHA256 with the device's key).
//! - [`client`]: the device's side of the handshake.
//! - [`server`]: the host's accept loop and per-device sessions, over a [`server::Store`].

pub mod auth;
pub mod client;
pub mod connection;
pub mod frame;
mod message;
pub mod server;

pub use connection::{ConnectionError, FrameReader, FrameWriter, Received};
pub use message::{Message, ModelRef, NONCE_LEN, Role};

/// The protocol version this build speaks (the only one so far).
pub const PROTOCOL_VERSION: u16 = 1;

/// Oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Picks the version both sides speak: the highest in both ranges.
pub fn negotiate(min: u16, max: u16) -> Option<u16> {
    let hi = max.min(PROTOCOL_VERSION);
    (hi >= min.max(MIN_PROTOCOL_VERSION)).then_some(hi)
}
