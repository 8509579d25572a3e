//! Blocking message streams over any `Read` / `Write` (a `TcpStream`, or its two halves
//! from `try_clone`, so one thread can read while others write whole frames).

use super::Message;
use super::frame::{self, FrameError};
use super::seal::FrameKey;
use std::io::{ErrorKind, Read, Write};

/// Why a connection stopped working.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer closed the connection between frames.
    #[error("connection closed by the peer")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes of it received)")]
    Truncated {
        /// Bytes of the unfinished frame.
        buffered: usize,
    },
    /// The bytes received are not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// What a read produced.
#[derive(Debug, PartialEq)]
// A message is moved to the caller once per frame; boxing it would allocate per frame to
// shrink an enum that only lives on the stack.
#[allow(clippy::large_enum_variant)]
pub enum Received {
    /// A whole message.
    Message(Message),
    /// No whole frame yet: the read timed out, or the bytes that came do not finish a
    /// frame (partial bytes are kept).
    Idle,
}

/// One read of the stream.
// As `Received`: moved once per frame, never stored.
#[allow(clippy::large_enum_variant)]
enum Step {
    Message(Message),
    Partial,
    TimedOut,
}

/// Reads frames from a byte stream, keeping partial frames across read timeouts.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    max_payload: usize,
    /// What each `read` call fills (kept, so it is not zeroed per call).
    scratch: Box<[u8]>,
    /// Set once the handshake is done: every later frame is sealed.
    key: Option<FrameKey>,
}

impl<R: Read> FrameReader<R> {
    /// A reader accepting payloads up to [`frame::DEFAULT_MAX_PAYLOAD`].
    pub fn new(inner: R) -> Self {
        Self::with_max_payload(inner, frame::DEFAULT_MAX_PAYLOAD)
    }

    /// A reader accepting payloads up to `max_payload` bytes.
    pub fn with_max_payload(inner: R, max_payload: usize) -> Self {
        FrameReader {
            inner,
            buf: Vec::with_capacity(8 * 1024),
            start: 0,
            max_payload,
            scratch: vec![0u8; 16 * 1024].into_boxed_slice(),
            key: None,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Changes the largest payload accepted from the next frame on (the handshake's frames
    /// are held to a small maximum, the session's are not).
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
    }

    /// From the next frame on, every frame must be sealed with `key` (the handshake is done).
    pub fn protect(&mut self, key: FrameKey) {
        self.key = Some(key);
    }

    /// Reads the stream once (waiting at most its read timeout) and returns a message if one
    /// is complete, else [`Received::Idle`]. Each call returns, so a caller that keeps
    /// calling can hold a peer to a deadline however slowly it sends.
    ///
    /// # Errors
    /// [`ConnectionError::Closed`] at a clean end, [`ConnectionError::Truncated`] inside a
    /// frame, frame errors (oversized length, CRC, a sealed frame that does not open, not a
    /// message), socket errors.
    pub fn read(&mut self) -> Result<Received, ConnectionError> {
        Ok(match self.step()? {
            Step::Message(m) => Received::Message(m),
            Step::Partial | Step::TimedOut => Received::Idle,
        })
    }

    fn step(&mut self) -> Result<Step, ConnectionError> {
        if let Some(m) = self.buffered()? {
            return Ok(Step::Message(m));
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        match self.inner.read(&mut self.scratch) {
            Ok(0) if self.buf.is_empty() => Err(ConnectionError::Closed),
            Ok(0) => Err(ConnectionError::Truncated {
                buffered: self.buf.len(),
            }),
            Ok(n) => {
                self.buf.extend_from_slice(&self.scratch[..n]);
                Ok(match self.buffered()? {
                    Some(m) => Step::Message(m),
                    None => Step::Partial,
                })
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Ok(Step::TimedOut)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(Step::Partial),
            Err(e) => Err(e.into()),
        }
    }

    /// A message already received in full, without reading the stream: lets a caller take
    /// a burst of frames (a device's backlog of reports) and answer them together.
    ///
    /// # Errors
    /// Frame errors, as [`FrameReader::read`].
    pub fn buffered(&mut self) -> Result<Option<Message>, ConnectionError> {
        let rest = &mut self.buf[self.start..];
        let decoded = match &mut self.key {
            Some(key) => frame::decode_sealed(rest, self.max_payload, key)?,
            None => frame::decode(rest, self.max_payload)?,
        };
        match decoded {
            Some((message, used)) => {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                Ok(Some(message))
            }
            None => Ok(None),
        }
    }

    /// Reads until a whole message arrives; a read timeout with nothing received is an
    /// error here.
    ///
    /// # Errors
    /// As [`FrameReader::read`], and `TimedOut` when the read timeout passes first.
    pub fn read_message(&mut self) -> Result<Message, ConnectionError> {
        loop {
            match self.step()? {
                Step::Message(m) => return Ok(m),
                Step::Partial => {}
                Step::TimedOut => {
                    return Err(ConnectionError::Io(std::io::Error::new(
                        ErrorKind::TimedOut,
                        "timed out waiting for a message",
                    )));
                }
            }
        }
    }
}

/// Writes whole frames to a byte stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
    max_payload: usize,
    bytes_sent: u64,
    /// Set once the handshake is done: every later frame is sealed.
    key: Option<FrameKey>,
}

impl<W: Write> FrameWriter<W> {
    /// A writer sending payloads up to [`frame::DEFAULT_MAX_PAYLOAD`].
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: Vec::with_capacity(1024),
            max_payload: frame::DEFAULT_MAX_PAYLOAD,
            bytes_sent: 0,
            key: None,
        }
    }

    /// From the next frame on, seals every frame with `key` (the handshake is done).
    pub fn protect(&mut self, key: FrameKey) {
        self.key = Some(key);
    }

    /// Whether frames are sealed.
    pub fn is_protected(&self) -> bool {
        self.key.is_some()
    }

    fn encode(&mut self, message: &Message) -> Result<(), FrameError> {
        match &mut self.key {
            Some(key) => frame::encode_sealed(message, &mut self.buf, self.max_payload, key),
            None => frame::encode(message, &mut self.buf, self.max_payload),
        }
    }

    /// Encodes and writes one message, flushing it.
    ///
    /// # Errors
    /// Encoding failures and socket errors.
    pub fn send(&mut self, message: &Message) -> Result<(), ConnectionError> {
        self.buf.clear();
        self.encode(message)?;
        self.inner.write_all(&self.buf)?;
        self.inner.flush()?;
        self.bytes_sent += self.buf.len() as u64;
        Ok(())
    }

    /// Encodes several messages and writes them with one system call.
    ///
    /// # Errors
    /// Encoding failures and socket errors.
    pub fn send_all(&mut self, messages: &[Message]) -> Result<(), ConnectionError> {
        self.buf.clear();
        for m in messages {
            self.encode(m)?;
        }
        self.inner.write_all(&self.buf)?;
        self.inner.flush()?;
        self.bytes_sent += self.buf.len() as u64;
        Ok(())
    }

    /// Bytes written so far, frames included.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_messages_then_reports_a_clean_close_or_a_truncation() {
        let mut w = FrameWriter::new(Vec::new());
        w.send(&Message::Ack { seq: 1 }).unwrap();
        w.send(&Message::Ack { seq: 2 }).unwrap();
        let bytes = w.get_ref().clone();
        let mut r = FrameReader::new(Cursor::new(bytes.clone()));
        assert_eq!(
            r.read().unwrap(),
            Received::Message(Message::Ack { seq: 1 })
        );
        assert_eq!(
            r.read().unwrap(),
            Received::Message(Message::Ack { seq: 2 })
        );
        assert!(matches!(r.read(), Err(ConnectionError::Closed)));
        let mut r = FrameReader::new(Cursor::new(bytes[..bytes.len() - 3].to_vec()));
        assert_eq!(
            r.read().unwrap(),
            Received::Message(Message::Ack { seq: 1 })
        );
        assert!(matches!(r.read(), Err(ConnectionError::Truncated { .. })));
    }
}
