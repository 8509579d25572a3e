//! Framing, independent of any socket: a frame is a little-endian `u32` payload length, the
//! postcard-encoded [`Message`], and a CRC-32 (IEEE) of the length bytes and the payload.
//!
//! ```text
//! offset  size  field
//! 0       4     payload length L (little-endian), at most the reader's maximum
//! 4       L     postcard-encoded Message
//! 4+L     4     CRC-32 of bytes 0..4+L (little-endian)
//! ```
//!
//! The CRC covers the length too, so a corrupted length is caught when the frame ends rather
//! than silently shifting every later frame.
//!
//! After the handshake every frame is sealed instead ([`encode_sealed`]): the length, then
//! the message encrypted with ChaCha20-Poly1305 and its 16-byte tag, the length bytes
//! authenticated with it (`super::seal`).
//!
//! ```text
//! offset  size  field
//! 0       4     L = message length + 16 (little-endian), at most the reader's maximum + 16
//! 4       L-16  postcard-encoded Message, encrypted
//! L-12    16    Poly1305 tag over the length bytes and the ciphertext
//! ```

use super::Message;
use super::seal::{FrameKey, SealError, TAG_LEN};

/// Bytes a frame adds around its payload.
pub const OVERHEAD: usize = 8;

/// Largest payload a reader accepts unless told otherwise: a 64 KiB chunk and its header
/// fit with room to spare.
pub const DEFAULT_MAX_PAYLOAD: usize = 256 * 1024;

/// Why bytes are not a valid frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length field is larger than the maximum (garbage, or a hostile peer).
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The CRC does not match: the bytes were damaged.
    #[error("frame CRC mismatch (expected {expected:08x}, computed {computed:08x})")]
    Crc {
        /// CRC in the frame.
        expected: u32,
        /// CRC of the bytes received.
        computed: u32,
    },
    /// The payload is not a message of this protocol.
    #[error("frame payload is not a valid message: {0}")]
    Payload(String),
    /// A message could not be encoded (it would exceed the maximum, or postcard failed).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// A sealed frame did not open (altered, replayed, reordered, not from the peer).
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Appends `message` as one frame to `out`.
///
/// # Errors
/// [`FrameError::Encode`] when postcard fails or the payload exceeds `max_payload`.
pub fn encode(message: &Message, out: &mut Vec<u8>, max_payload: usize) -> Result<(), FrameError> {
    let (start, len) = append_payload(message, out, max_payload)?;
    let len32 = u32::try_from(len).map_err(|_| FrameError::Encode("payload too long".into()))?;
    out[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Appends a 4-byte length slot and `message`'s postcard bytes to `out`, for [`encode`] and
/// [`encode_sealed`] to fill the slot and close the frame. Returns where the frame starts in
/// `out` and the payload's length.
fn append_payload(
    message: &Message,
    out: &mut Vec<u8>,
    max_payload: usize,
) -> Result<(usize, usize), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let encoded = postcard::to_extend(message, std::mem::take(out));
    *out = encoded.map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - start - 4;
    if len > max_payload {
        out.truncate(start);
        return Err(FrameError::Encode(format!(
            "payload of {len} bytes exceeds the maximum of {max_payload}"
        )));
    }
    Ok((start, len))
}

/// Tries to take one frame from the front of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the message and the number of bytes it used.
///
/// # Errors
/// An oversized length (reported as soon as the length arrives), a CRC mismatch, or a
/// payload that is not a message.
pub fn decode(buf: &[u8], max_payload: usize) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > max_payload {
        return Err(FrameError::TooLarge {
            len,
            max: max_payload,
        });
    }
    let total = 4 + len + 4;
    let Some(frame) = buf.get(..total) else {
        return Ok(None);
    };
    let (body, tail) = frame.split_at(4 + len);
    let expected = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = crc32fast::hash(body);
    if expected != computed {
        return Err(FrameError::Crc { expected, computed });
    }
    let message: Message =
        postcard::from_bytes(&body[4..]).map_err(|e| FrameError::Payload(e.to_string()))?;
    Ok(Some((message, total)))
}

/// Bytes a sealed frame adds around its message.
pub const SEALED_OVERHEAD: usize = 4 + TAG_LEN;

/// Appends `message` as one sealed frame to `out`, with the next number of `key`.
///
/// # Errors
/// [`FrameError::Encode`] when postcard fails or the message exceeds `max_payload`; an
/// exhausted counter.
pub fn encode_sealed(
    message: &Message,
    out: &mut Vec<u8>,
    max_payload: usize,
    key: &mut FrameKey,
) -> Result<(), FrameError> {
    let (start, len) = append_payload(message, out, max_payload)?;
    let sealed =
        u32::try_from(len + TAG_LEN).map_err(|_| FrameError::Encode("payload too long".into()))?;
    let (head, body) = out[start..].split_at_mut(4);
    head.copy_from_slice(&sealed.to_le_bytes());
    match key.seal(head, body) {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e.into())
        }
    }
}

/// Tries to take one sealed frame from the front of `buf`, opening it in place with `key`:
/// `Ok(None)` when more bytes are needed, otherwise the message and the bytes it used.
///
/// # Errors
/// An oversized length (as soon as it arrives), a frame that does not open (the session
/// must end: the counter no longer matches the peer's), a message that does not decode.
pub fn decode_sealed(
    buf: &mut [u8],
    max_payload: usize,
    key: &mut FrameKey,
) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let head = [head[0], head[1], head[2], head[3]];
    let len = u32::from_le_bytes(head) as usize;
    if len > max_payload + TAG_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: max_payload + TAG_LEN,
        });
    }
    if len < TAG_LEN {
        return Err(FrameError::Payload(format!(
            "sealed frame of {len} bytes is shorter than its {TAG_LEN}-byte tag"
        )));
    }
    let total = 4 + len;
    let Some(frame) = buf.get_mut(..total) else {
        return Ok(None);
    };
    let (body, tag) = frame[4..].split_at_mut(len - TAG_LEN);
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(tag);
    key.open(&head, body, &t)?;
    let message: Message =
        postcard::from_bytes(body).map_err(|e| FrameError::Payload(e.to_string()))?;
    Ok(Some((message, total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Report;
    use proptest::prelude::*;

    fn sample() -> Message {
        Message::Metrics {
            seq: 7,
            report: Report {
                requests: 100,
                predictions: vec![40, 60],
                psi_milli: vec![12, 3, 250],
                ..Report::default()
            },
        }
    }

    /// The bytes docs/protocol.md shows.
    #[test]
    fn frames_have_the_documented_bytes() {
        let cases: [(Message, &[u8]); 3] = [
            (
                Message::Ack { seq: 7 },
                &[0x02, 0, 0, 0, 0x06, 0x07, 0x8d, 0x32, 0x34, 0x34],
            ),
            (
                Message::Fetch {
                    push: 3,
                    offset: 65_536,
                },
                &[
                    0x05, 0, 0, 0, 0x08, 0x03, 0x80, 0x80, 0x04, 0x1c, 0xf2, 0x80, 0x53,
                ],
            ),
            (
                Message::Heartbeat { model: None },
                &[0x02, 0, 0, 0, 0x0e, 0x00, 0x26, 0x2d, 0x89, 0x62],
            ),
        ];
        for (m, bytes) in cases {
            let mut out = Vec::new();
            encode(&m, &mut out, DEFAULT_MAX_PAYLOAD).unwrap();
            assert_eq!(out, bytes, "{m:?}");
            assert_eq!(
                decode(bytes, DEFAULT_MAX_PAYLOAD).unwrap(),
                Some((m, bytes.len()))
            );
        }
    }

    #[test]
    fn round_trip_and_partial_input() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf, DEFAULT_MAX_PAYLOAD).unwrap();
        encode(&Message::Ack { seq: 7 }, &mut buf, DEFAULT_MAX_PAYLOAD).unwrap();
        let (first, used) = decode(&buf, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(first, sample());
        for cut in 0..buf.len() - used {
            assert_eq!(
                decode(&buf[used..used + cut], DEFAULT_MAX_PAYLOAD),
                Ok(None)
            );
        }
        let (second, used2) = decode(&buf[used..], DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(second, Message::Ack { seq: 7 });
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf, DEFAULT_MAX_PAYLOAD).unwrap();
        for i in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[i / 8] ^= 1 << (i % 8);
            // A flipped length bit may ask for more bytes or exceed the maximum: both fine.
            assert!(
                !matches!(decode(&bad, DEFAULT_MAX_PAYLOAD), Ok(Some(_))),
                "bit {i} flipped and the frame still decoded"
            );
        }
    }

    #[test]
    fn oversized_length_is_refused_before_the_payload_arrives() {
        let head = (1_000_000u32).to_le_bytes();
        assert_eq!(
            decode(&head, DEFAULT_MAX_PAYLOAD),
            Err(FrameError::TooLarge {
                len: 1_000_000,
                max: DEFAULT_MAX_PAYLOAD
            })
        );
        let mut out = Vec::new();
        let big = Message::Chunk {
            push: 1,
            offset: 0,
            bytes: vec![0; 2000],
        };
        assert!(matches!(
            encode(&big, &mut out, 1000),
            Err(FrameError::Encode(_))
        ));
        assert!(out.is_empty());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, 1024);
        }

        #[test]
        fn valid_crc_over_garbage_payload_is_an_error_not_a_panic(
            payload in proptest::collection::vec(any::<u8>(), 0..100)
        ) {
            let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&payload);
            let crc = crc32fast::hash(&frame);
            frame.extend_from_slice(&crc.to_le_bytes());
            let _ = decode(&frame, 1024);
        }
    }
}
