//! The sync protocol between devices and the host.
//!
//! - [`message`](Message): what is said (postcard-encoded enums).
//! - [`frame`]: how a message becomes bytes: length, payload, CRC-32; no sockets involved.
//! - [`connection`]: blocking readers and writers of frames over any stream.
//! - [`auth`]: the challenge-response proof (HMAC-SHA256 with the device's key).
//!
//! The device's client lives in [`crate::agent`], the host's server in `crate::fleet`.

pub mod auth;
pub mod connection;
pub mod frame;
mod message;

pub use connection::{ConnectionError, FrameReader, FrameWriter, Received};
pub use message::{Message, ModelRef, NONCE_LEN};

/// The protocol version this build speaks (the only one so far).
pub const PROTOCOL_VERSION: u16 = 1;

/// Oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Picks the version both sides speak: the highest in both ranges.
pub fn negotiate(min: u16, max: u16) -> Option<u16> {
    let hi = max.min(PROTOCOL_VERSION);
    (hi >= min.max(MIN_PROTOCOL_VERSION)).then_some(hi)
}
