//! The device's side of the handshake: connect, `Hello`, check the host's proof in the
//! `Challenge` (saying nothing more to a host that cannot prove it holds this device's key),
//! answer with `Auth`, and wait for the sealed `Welcome`. What follows is the agent's
//! business (`crate::agent`).

use super::auth::{self, AuthError, DeviceHandshake, Ephemeral};
use super::connection::{ConnectionError, FrameReader, FrameWriter, Received};
use super::{HANDSHAKE_MAX_PAYLOAD, MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION, frame};
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
    /// The peer failed the host's half of the handshake; the device closed the connection
    /// without saying more.
    #[error("{addr}: {source}; closed the connection")]
    NotTheHost {
        /// Host address as configured.
        addr: String,
        /// What failed.
        source: AuthError,
    },
    /// The host broke the handshake.
    #[error("handshake: {0}")]
    Protocol(String),
    /// The link failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

/// Who a device is, for the handshake.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// Device id, as registered on the host.
    pub device: &'a str,
    /// The device's key.
    pub key: &'a [u8; auth::KEY_LEN],
    /// The agent's version string (`perch 0.1.0`).
    pub agent: &'a str,
    /// The state directory's boot epoch (the report queue's).
    pub epoch: u64,
}

/// An open, authenticated session: every frame either way is sealed.
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

/// Connects to `addr` and authenticates both ways as `who`. The whole handshake must finish
/// within `timeout`; the stream keeps a read timeout of `poll` afterwards, so the caller's
/// loop wakes regularly.
///
/// # Errors
/// [`ClientError`]: unreachable host, refusal (unknown device…), a peer that cannot prove
/// it holds the device's key, a broken handshake, or no answer within `timeout`.
pub fn connect(
    addr: &str,
    who: &Credentials<'_>,
    timeout: Duration,
    poll: Duration,
) -> Result<Link, ClientError> {
    let connect_err = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let deadline = Instant::now() + timeout;
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
    let mut reader = FrameReader::with_max_payload(stream, HANDSHAKE_MAX_PAYLOAD);
    let ephemeral = Ephemeral::generate().map_err(|e| ClientError::Protocol(e.to_string()))?;
    let handshake = DeviceHandshake::new(
        (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
        who.device,
        who.agent,
        who.epoch,
        who.key,
        ephemeral,
    );
    writer.send(handshake.hello())?;
    let (protocol, host_ephemeral, proof) = match read_until(&mut reader, deadline)? {
        Message::Challenge {
            protocol,
            ephemeral,
            proof,
        } => (protocol, ephemeral, proof),
        Message::Refused { reason } => {
            return Err(ClientError::Refused(super::printable(&reason, 256)));
        }
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
    let (auth, keys) = handshake
        .answer(protocol, &host_ephemeral, &proof)
        .map_err(|source| {
            let _ = reader.get_ref().shutdown(std::net::Shutdown::Both);
            ClientError::NotTheHost {
                addr: addr.to_string(),
                source,
            }
        })?;
    writer.send(&auth)?;
    writer.protect(keys.send);
    reader.protect(keys.receive);
    reader.set_max_payload(frame::DEFAULT_MAX_PAYLOAD);
    match read_until(&mut reader, deadline)? {
        Message::Welcome { heartbeat_s } => Ok(Link {
            reader,
            writer,
            protocol,
            heartbeat_s,
        }),
        Message::Refused { reason } => Err(ClientError::Refused(super::printable(&reason, 256))),
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
                    "the host did not finish the handshake in time".into(),
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
