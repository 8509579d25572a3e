//! The device's side of the handshake: connect, `Hello`, answer the `Challenge`, wait for
//! `Welcome`. What follows is the agent's business (`crate::agent`).

use super::auth;
use super::connection::{ConnectionError, FrameReader, FrameWriter, Received};
use super::{MIN_PROTOCOL_VERSION, Message, NONCE_LEN, PROTOCOL_VERSION};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The host is unreachable (or the name does not resolve).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Host address as configured.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The host refused the session and said why.
    #[error("host refused the session: {0}")]
    Refused(String),
    /// The host broke the handshake.
    #[error("handshake: {0}")]
    Protocol(String),
    /// The link failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

/// An open, authenticated session.
#[derive(Debug)]
pub struct Link {
    /// Frames from the host.
    pub reader: FrameReader<TcpStream>,
    /// Frames to the host.
    pub writer: FrameWriter<TcpStream>,
    /// The protocol version agreed.
    pub protocol: u16,
    /// Heartbeat period the host asked for.
    pub heartbeat_s: u32,
}

/// Connects to `addr` and authenticates as `device` with `key`. The stream keeps a read
/// timeout of `poll` afterwards, so the caller's loop wakes regularly.
///
/// # Errors
/// [`ClientError`]: unreachable host, refusal (unknown device, wrong key…), a broken
/// handshake, or no answer within `timeout`.
pub fn connect(
    addr: &str,
    device: &str,
    key: &[u8; auth::KEY_LEN],
    agent: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<Link, ClientError> {
    let connect_err = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let mut last_err = None;
    let mut stream = None;
    for sa in addr.to_socket_addrs().map_err(connect_err)? {
        match TcpStream::connect_timeout(&sa, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let stream = stream.ok_or_else(|| {
        connect_err(
            last_err
                .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")),
        )
    })?;
    let io = |e: std::io::Error| ClientError::Connection(ConnectionError::Io(e));
    stream.set_nodelay(true).map_err(io)?;
    stream.set_read_timeout(Some(poll)).map_err(io)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut writer = FrameWriter::new(stream.try_clone().map_err(io)?);
    let mut reader = FrameReader::new(stream);
    let deadline = Instant::now() + timeout;
    let nonce: [u8; NONCE_LEN] =
        auth::random().map_err(|e| ClientError::Protocol(format!("no randomness: {e}")))?;
    writer.send(&Message::Hello {
        min_protocol: MIN_PROTOCOL_VERSION,
        max_protocol: PROTOCOL_VERSION,
        device: device.to_string(),
        agent: agent.to_string(),
        nonce,
    })?;
    let (protocol, host_nonce) = match read_until(&mut reader, deadline)? {
        Message::Challenge { protocol, nonce } => (protocol, nonce),
        Message::Refused { reason } => return Err(ClientError::Refused(reason)),
        other => {
            return Err(ClientError::Protocol(format!(
                "expected Challenge, got {}",
                other.name()
            )));
        }
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol) {
        return Err(ClientError::Protocol(format!(
            "host chose protocol {protocol}, this agent speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
        )));
    }
    writer.send(&Message::Auth {
        mac: auth::sign(key, device, &nonce, &host_nonce),
    })?;
    match read_until(&mut reader, deadline)? {
        Message::Welcome { heartbeat_s } => Ok(Link {
            reader,
            writer,
            protocol,
            heartbeat_s,
        }),
        Message::Refused { reason } => Err(ClientError::Refused(reason)),
        other => Err(ClientError::Protocol(format!(
            "expected Welcome, got {}",
            other.name()
        ))),
    }
}

fn read_until(
    reader: &mut FrameReader<TcpStream>,
    deadline: Instant,
) -> Result<Message, ClientError> {
    loop {
        match reader.read() {
            Ok(Received::Message(m)) => return Ok(m),
            Ok(Received::Idle) if Instant::now() >= deadline => {
                return Err(ClientError::Protocol(
                    "the host did not answer in time".into(),
                ));
            }
            Ok(Received::Idle) => {}
            // A host that refuses may close right after saying why.
            Err(ConnectionError::Closed) => {
                return Err(ClientError::Protocol(
                    "the host closed the connection during the handshake".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
