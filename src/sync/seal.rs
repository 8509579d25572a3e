//! One direction of a session's frame protection: ChaCha20-Poly1305 (RFC 8439) with a key
//! from the handshake and the frame's number in that direction as the nonce.
//!
//! The nonce is never sent: both sides count frames, so a frame replayed, dropped, reordered
//! or altered fails to open and ends the session. Each direction has its own key, so the two
//! counters never share a nonce.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};

/// Bytes the Poly1305 tag adds to each frame.
pub const TAG_LEN: usize = 16;

/// Why a frame could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The tag does not match: the frame was altered, replayed, reordered, or not sealed
    /// with this session's key.
    #[error(
        "frame {counter} of the session failed authentication (altered, replayed, reordered, or not from the peer)"
    )]
    Unauthentic {
        /// The frame number expected.
        counter: u64,
    },
    /// 2^64 frames in one direction: the session must end before a nonce repeats.
    #[error("the session's frame counter is exhausted")]
    Exhausted,
}

/// The key and frame counter of one direction.
pub struct FrameKey {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl std::fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameKey")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl FrameKey {
    /// A direction keyed with `key`, its counter at 0.
    pub fn new(key: &[u8; 32]) -> FrameKey {
        FrameKey {
            cipher: ChaCha20Poly1305::new(key.into()),
            counter: 0,
        }
    }

    /// Frames sealed or opened so far.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    fn nonce(&self) -> Result<Nonce, SealError> {
        if self.counter == u64::MAX {
            return Err(SealError::Exhausted);
        }
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_le_bytes());
        Ok(n.into())
    }

    /// Encrypts `buf` in place and returns the tag; `aad` is authenticated as well.
    ///
    /// # Errors
    /// [`SealError::Exhausted`].
    pub fn seal(&mut self, aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], SealError> {
        let nonce = self.nonce()?;
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce, aad, buf.into())
            .map_err(|_| SealError::Exhausted)?;
        self.counter += 1;
        Ok(tag.into())
    }

    /// Checks `tag` over `aad` and `buf` and decrypts `buf` in place.
    ///
    /// # Errors
    /// [`SealError::Unauthentic`] (the buffer's content is then unspecified), exhaustion.
    pub fn open(
        &mut self,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), SealError> {
        let nonce = self.nonce()?;
        let tag = Tag::from(*tag);
        self.cipher
            .decrypt_inout_detached(&nonce, aad, buf.into(), &tag)
            .map_err(|_| SealError::Unauthentic {
                counter: self.counter,
            })?;
        self.counter += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8439_test_vector() {
        // RFC 8439 section 2.8.2, with the nonce as this protocol builds it: the test's
        // nonce is 07 00 00 00 40 41 42 43 44 45 46 47, which is not 4 zero bytes and a
        // counter, so the cipher is checked through the crate directly.
        let key: [u8; 32] = core::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [
            0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
        ];
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let mut text = *b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let cipher = ChaCha20Poly1305::new((&key).into());
        let tag = cipher
            .encrypt_inout_detached(&nonce.into(), &aad, (&mut text[..]).into())
            .unwrap();
        assert_eq!(
            &text[..8],
            &[0xd3, 0x1a, 0x8d, 0x34, 0x64, 0x8e, 0x60, 0xdb]
        );
        let tag: [u8; 16] = tag.into();
        assert_eq!(
            tag,
            [
                0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60,
                0x06, 0x91
            ]
        );
    }

    #[test]
    fn frames_open_once_and_in_order_only() {
        let key = [3u8; 32];
        let (mut tx, mut rx) = (FrameKey::new(&key), FrameKey::new(&key));
        let mut a = *b"first";
        let ta = tx.seal(b"aad", &mut a).unwrap();
        let mut b = *b"second";
        let tb = tx.seal(b"aad", &mut b).unwrap();
        // Out of order: the second frame cannot be opened as the first.
        let mut b2 = b;
        assert_eq!(
            rx.open(b"aad", &mut b2, &tb),
            Err(SealError::Unauthentic { counter: 0 })
        );
        let mut rx = FrameKey::new(&key);
        let mut a2 = a;
        rx.open(b"aad", &mut a2, &ta).unwrap();
        assert_eq!(&a2, b"first");
        // Replayed: the first frame again is now out of place.
        let mut a3 = a;
        assert!(rx.open(b"aad", &mut a3, &ta).is_err());
        let mut rx = FrameKey::new(&key);
        // Altered associated data or a flipped bit.
        let mut a4 = a;
        assert!(rx.open(b"aaD", &mut a4, &ta).is_err());
        let mut a5 = a;
        a5[0] ^= 1;
        assert!(FrameKey::new(&key).open(b"aad", &mut a5, &ta).is_err());
        // Another key.
        let mut a6 = a;
        assert!(FrameKey::new(&[4; 32]).open(b"aad", &mut a6, &ta).is_err());
    }
}
