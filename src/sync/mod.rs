//! The sync protocol between devices and the host: messages, framing, connections.

mod message;

pub use message::{Message, ModelRef, NONCE_LEN};
