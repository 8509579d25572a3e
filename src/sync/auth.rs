//! The handshake's cryptography (protocol 2, `docs/protocol.md`): each side makes an
//! ephemeral X25519 key; both mix the device's 32-byte secret, the Diffie-Hellman result and
//! a hash of the transcript through HKDF-SHA256 into two proofs and two frame keys.
//!
//! ```text
//! T   = SHA-256("perch-sync-v2" ‖ postcard(Hello) ‖ protocol as u16 LE ‖ host ephemeral)
//! PRK = HKDF-Extract(salt = T, ikm = device key ‖ X25519(own secret, peer ephemeral))
//! OKM = HKDF-Expand(PRK, "perch-sync-v2 session", 128)
//!     = host proof (32) ‖ device proof (32) ‖ host→device key (32) ‖ device→host key (32)
//! ```
//!
//! The host proves first (in `Challenge`), so a device says nothing beyond its `Hello` to a
//! peer that does not hold its key; the device proves second (`Auth`). Both ephemerals are
//! fresh, so a recorded proof is useless on any other connection, and a key stolen later
//! does not open recorded sessions (forward secrecy). Proofs are compared in constant time.

use super::Message;
use super::seal::FrameKey;
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Length of a device key.
pub const KEY_LEN: usize = 32;

/// Length of an X25519 public key on the wire.
pub const EPHEMERAL_LEN: usize = 32;

/// Length of a handshake proof.
pub const PROOF_LEN: usize = 32;

/// The transcript label; also the HKDF info's prefix.
const LABEL: &[u8] = b"perch-sync-v2";
const INFO: &[u8] = b"perch-sync-v2 session";

/// Why a handshake cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer's ephemeral key is a low-order point (the shared secret would be zero).
    #[error("the peer's ephemeral key is not a usable X25519 key (low order)")]
    WeakEphemeral,
    /// The host's proof is wrong: it does not hold this device's key.
    #[error(
        "the host did not prove it holds this device's key (the key in this device's configuration differs from the host's, or this is not your perch-host)"
    )]
    HostProof,
    /// The device's proof is wrong.
    #[error("device failed authentication (wrong key, or a replayed Auth)")]
    DeviceProof,
    /// The message given as the `Hello` is another message.
    #[error("the transcript starts with {0}, not Hello")]
    NotHello(&'static str),
    /// The operating system gave no randomness.
    #[error("no randomness for an ephemeral key: {0}")]
    Random(String),
}

/// An ephemeral X25519 key pair, for one handshake.
pub struct Ephemeral {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; EPHEMERAL_LEN],
}

impl std::fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ephemeral")
            .field("public", &crate::util::to_hex(&self.public))
            .finish_non_exhaustive()
    }
}

impl Ephemeral {
    /// A fresh key pair from the operating system's randomness.
    ///
    /// # Errors
    /// [`AuthError::Random`] when the OS has no randomness to give.
    pub fn generate() -> Result<Ephemeral, AuthError> {
        let secret: [u8; 32] = random().map_err(|e| AuthError::Random(e.to_string()))?;
        Ok(Ephemeral::from_secret(secret))
    }

    /// The key pair of a given secret (X25519 clamps it). For tests and the documented
    /// transcript; a session uses [`Ephemeral::generate`].
    pub fn from_secret(secret: [u8; 32]) -> Ephemeral {
        let public = x25519_dalek::x25519(secret, x25519_dalek::X25519_BASEPOINT_BYTES);
        Ephemeral {
            secret: Zeroizing::new(secret),
            public,
        }
    }

    /// The public half, sent to the peer.
    pub fn public(&self) -> [u8; EPHEMERAL_LEN] {
        self.public
    }
}

/// Both directions' frame keys of an open session, as one side holds them.
#[derive(Debug)]
pub struct SessionKeys {
    /// Seals the frames this side sends.
    pub send: FrameKey,
    /// Opens the frames this side receives.
    pub receive: FrameKey,
}

/// What both sides derive.
struct Secrets {
    host_proof: [u8; PROOF_LEN],
    device_proof: [u8; PROOF_LEN],
    host_to_device: Zeroizing<[u8; 32]>,
    device_to_host: Zeroizing<[u8; 32]>,
}

/// `T`: the hash that binds both ephemerals, the device's identity, epoch and versions, and
/// the version the host chose.
fn transcript(
    hello: &Message,
    protocol: u16,
    host_ephemeral: &[u8; EPHEMERAL_LEN],
) -> Result<[u8; 32], AuthError> {
    if !matches!(hello, Message::Hello { .. }) {
        return Err(AuthError::NotHello(hello.name()));
    }
    let mut h = Sha256::new();
    h.update(LABEL);
    // Encoding a Hello into a Vec cannot fail (no maps, no lengths beyond usize).
    let encoded = postcard::to_allocvec(hello).unwrap_or_default();
    h.update(&encoded);
    h.update(protocol.to_le_bytes());
    h.update(host_ephemeral);
    Ok(h.finalize().into())
}

fn derive(
    key: &[u8; KEY_LEN],
    own: &Ephemeral,
    peer: &[u8; EPHEMERAL_LEN],
    transcript: &[u8; 32],
) -> Result<Secrets, AuthError> {
    let shared = Zeroizing::new(x25519_dalek::x25519(*own.secret, *peer));
    if bool::from(shared.ct_eq(&[0u8; 32])) {
        return Err(AuthError::WeakEphemeral);
    }
    let mut ikm = Zeroizing::new([0u8; KEY_LEN + 32]);
    ikm[..KEY_LEN].copy_from_slice(key);
    ikm[KEY_LEN..].copy_from_slice(&*shared);
    let hk = Hkdf::<Sha256>::new(Some(transcript), &*ikm);
    let mut okm = Zeroizing::new([0u8; 128]);
    // 128 bytes is far below HKDF-SHA256's limit of 8160.
    hk.expand(INFO, &mut *okm)
        .unwrap_or_else(|_| unreachable!("128 bytes of HKDF-SHA256 output"));
    let take = |at: usize| -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&okm[at..at + 32]);
        out
    };
    Ok(Secrets {
        host_proof: take(0),
        device_proof: take(32),
        host_to_device: Zeroizing::new(take(64)),
        device_to_host: Zeroizing::new(take(96)),
    })
}

fn same(a: &[u8; PROOF_LEN], b: &[u8; PROOF_LEN]) -> bool {
    bool::from(a.ct_eq(b))
}

/// The device's half of a handshake.
pub struct DeviceHandshake {
    hello: Message,
    key: Zeroizing<[u8; KEY_LEN]>,
    ephemeral: Ephemeral,
}

impl std::fmt::Debug for DeviceHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceHandshake")
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

impl DeviceHandshake {
    /// Starts a handshake as `device` (speaking `min..=max`), with its `key`, the agent's
    /// version string, the state directory's boot `epoch`, and an ephemeral key.
    pub fn new(
        versions: (u16, u16),
        device: &str,
        agent: &str,
        epoch: u64,
        key: &[u8; KEY_LEN],
        ephemeral: Ephemeral,
    ) -> DeviceHandshake {
        DeviceHandshake {
            hello: Message::Hello {
                min_protocol: versions.0,
                max_protocol: versions.1,
                device: device.to_string(),
                agent: agent.to_string(),
                epoch,
                ephemeral: ephemeral.public(),
            },
            key: Zeroizing::new(*key),
            ephemeral,
        }
    }

    /// The `Hello` to send first.
    pub fn hello(&self) -> &Message {
        &self.hello
    }

    /// Checks the host's `Challenge` fields. When the host proved it holds the key, returns
    /// the `Auth` to send and the session's keys.
    ///
    /// # Errors
    /// [`AuthError::HostProof`] (say nothing more to this peer), a weak ephemeral key.
    pub fn answer(
        &self,
        protocol: u16,
        host_ephemeral: &[u8; EPHEMERAL_LEN],
        host_proof: &[u8; PROOF_LEN],
    ) -> Result<(Message, SessionKeys), AuthError> {
        let t = transcript(&self.hello, protocol, host_ephemeral)?;
        let s = derive(&self.key, &self.ephemeral, host_ephemeral, &t)?;
        if !same(&s.host_proof, host_proof) {
            return Err(AuthError::HostProof);
        }
        Ok((
            Message::Auth {
                proof: s.device_proof,
            },
            SessionKeys {
                send: FrameKey::new(&s.device_to_host),
                receive: FrameKey::new(&s.host_to_device),
            },
        ))
    }
}

/// The host's half of a handshake, between its `Challenge` and the device's `Auth`.
pub struct HostHandshake {
    secrets: Secrets,
}

impl std::fmt::Debug for HostHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostHandshake").finish_non_exhaustive()
    }
}

impl HostHandshake {
    /// Answers a device's `Hello` (already checked: a known device, a version both speak)
    /// with the `Challenge` to send, which carries the host's proof.
    ///
    /// # Errors
    /// `hello` is not a Hello, or its ephemeral key is weak.
    pub fn challenge(
        hello: &Message,
        protocol: u16,
        key: &[u8; KEY_LEN],
        ephemeral: Ephemeral,
    ) -> Result<(HostHandshake, Message), AuthError> {
        let Message::Hello {
            ephemeral: device_ephemeral,
            ..
        } = hello
        else {
            return Err(AuthError::NotHello(hello.name()));
        };
        let own = ephemeral.public();
        let t = transcript(hello, protocol, &own)?;
        let secrets = derive(key, &ephemeral, device_ephemeral, &t)?;
        let challenge = Message::Challenge {
            protocol,
            ephemeral: own,
            proof: secrets.host_proof,
        };
        Ok((HostHandshake { secrets }, challenge))
    }

    /// Checks the device's proof; the session's keys when it holds the key.
    ///
    /// # Errors
    /// [`AuthError::DeviceProof`].
    pub fn verify(self, device_proof: &[u8; PROOF_LEN]) -> Result<SessionKeys, AuthError> {
        if !same(&self.secrets.device_proof, device_proof) {
            return Err(AuthError::DeviceProof);
        }
        Ok(SessionKeys {
            send: FrameKey::new(&self.secrets.host_to_device),
            receive: FrameKey::new(&self.secrets.device_to_host),
        })
    }
}

/// Fresh random bytes from the operating system.
///
/// # Errors
/// When the OS has no randomness to give.
pub fn random<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(key: [u8; 32], secret: u8) -> DeviceHandshake {
        DeviceHandshake::new(
            (2, 2),
            "pi-1",
            "test",
            7,
            &key,
            Ephemeral::from_secret([secret; 32]),
        )
    }

    fn frame_round_trip(a: &mut SessionKeys, b: &mut SessionKeys) {
        let mut wire = Vec::new();
        let m = Message::Ack { seq: 9 };
        super::super::frame::encode_sealed(&m, &mut wire, 1024, &mut a.send).unwrap();
        let got = super::super::frame::decode_sealed(&mut wire, 1024, &mut b.receive).unwrap();
        assert_eq!(got.map(|(m, _)| m), Some(m));
    }

    #[test]
    fn both_sides_agree_and_each_proof_binds_the_key_and_both_ephemerals() {
        let key = [7u8; 32];
        let d = device(key, 1);
        let (host, challenge) =
            HostHandshake::challenge(d.hello(), 2, &key, Ephemeral::from_secret([2; 32])).unwrap();
        let Message::Challenge {
            protocol,
            ephemeral,
            proof,
        } = challenge
        else {
            panic!()
        };
        let (auth, mut dk) = d.answer(protocol, &ephemeral, &proof).unwrap();
        let Message::Auth { proof: dp } = auth else {
            panic!()
        };
        let mut hk = host.verify(&dp).unwrap();
        frame_round_trip(&mut dk, &mut hk);
        frame_round_trip(&mut hk, &mut dk);

        // A host without the key cannot prove it.
        let (_, forged) =
            HostHandshake::challenge(d.hello(), 2, &[8; 32], Ephemeral::from_secret([2; 32]))
                .unwrap();
        let Message::Challenge { proof: bad, .. } = forged else {
            panic!()
        };
        assert_eq!(
            d.answer(2, &ephemeral, &bad).unwrap_err(),
            AuthError::HostProof
        );
        // A proof made for another Hello (another device ephemeral) does not verify.
        assert_eq!(
            device(key, 3).answer(2, &ephemeral, &proof).unwrap_err(),
            AuthError::HostProof
        );
        // Nor one replayed against a downgraded version number.
        assert_eq!(
            d.answer(1, &ephemeral, &proof).unwrap_err(),
            AuthError::HostProof
        );
        // The device's proof is useless against a fresh host ephemeral (a replayed Auth).
        let (fresh, _) =
            HostHandshake::challenge(d.hello(), 2, &key, Ephemeral::from_secret([4; 32])).unwrap();
        assert_eq!(fresh.verify(&dp).unwrap_err(), AuthError::DeviceProof);
    }

    #[test]
    fn a_low_order_ephemeral_is_refused() {
        let key = [7u8; 32];
        let hello = Message::Hello {
            min_protocol: 2,
            max_protocol: 2,
            device: "pi-1".into(),
            agent: "x".into(),
            epoch: 0,
            ephemeral: [0; 32],
        };
        let e =
            HostHandshake::challenge(&hello, 2, &key, Ephemeral::from_secret([2; 32])).unwrap_err();
        assert_eq!(e, AuthError::WeakEphemeral);
        assert_eq!(
            device(key, 1).answer(2, &[0; 32], &[0; 32]).unwrap_err(),
            AuthError::WeakEphemeral
        );
    }
}

/// The handshake transcript docs/protocol.md shows, byte for byte.
#[cfg(test)]
mod transcript {
    use super::*;
    use crate::sync::frame;

    fn hex(frame: &[u8]) -> String {
        frame
            .chunks(16)
            .map(|row| {
                row.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The device side of the documented session: key 00 01 … 1f, ephemeral secret 22 × 32,
    /// epoch 42.
    fn documented_device() -> ([u8; 32], DeviceHandshake) {
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let device = DeviceHandshake::new(
            (2, 2),
            "pi-1",
            "perch 0.1.0",
            42,
            &key,
            Ephemeral::from_secret([0x22; 32]),
        );
        (key, device)
    }

    /// The frames of a session with fixed secrets: device key 00 01 … 1f, the device's
    /// ephemeral secret 22 × 32, the host's 33 × 32, epoch 42.
    pub(crate) fn frames() -> Vec<(&'static str, Vec<u8>)> {
        let (key, device) = documented_device();
        let (host, challenge) =
            HostHandshake::challenge(device.hello(), 2, &key, Ephemeral::from_secret([0x33; 32]))
                .unwrap();
        let Message::Challenge {
            protocol,
            ephemeral,
            proof,
        } = &challenge
        else {
            unreachable!()
        };
        let (auth, mut dk) = device.answer(*protocol, ephemeral, proof).unwrap();
        let Message::Auth { proof: dp } = &auth else {
            unreachable!()
        };
        let mut hk = host.verify(dp).unwrap();
        let plain = |m: &Message| {
            let mut out = Vec::new();
            frame::encode(m, &mut out, 512).unwrap();
            out
        };
        let sealed = |m: &Message, k: &mut FrameKey| {
            let mut out = Vec::new();
            frame::encode_sealed(m, &mut out, frame::DEFAULT_MAX_PAYLOAD, k).unwrap();
            out
        };
        vec![
            ("Hello", plain(device.hello())),
            ("Challenge", plain(&challenge)),
            ("Auth", plain(&auth)),
            (
                "Welcome",
                sealed(&Message::Welcome { heartbeat_s: 15 }, &mut hk.send),
            ),
            (
                "Heartbeat",
                sealed(&Message::Heartbeat { model: None }, &mut dk.send),
            ),
            ("Ack", sealed(&Message::Ack { seq: 1 }, &mut hk.send)),
        ]
    }

    /// The transcript hash and the frame keys of that session (never on the wire).
    fn secrets() -> Vec<(&'static str, Vec<u8>)> {
        let (key, device) = documented_device();
        let host = Ephemeral::from_secret([0x33; 32]);
        let t = transcript(device.hello(), 2, &host.public()).unwrap();
        let s = derive(&key, &host, &device.ephemeral.public(), &t).unwrap();
        vec![
            ("T", t.to_vec()),
            ("host->device key", s.host_to_device.to_vec()),
            ("device->host key", s.device_to_host.to_vec()),
        ]
    }

    /// docs/protocol.md shows these values and frames; this is what keeps them true.
    #[test]
    fn the_documented_handshake_has_these_bytes() {
        let doc = include_str!("../../docs/protocol.md");
        let missing: Vec<String> = secrets()
            .into_iter()
            .chain(frames())
            .filter(|(_, bytes)| !doc.contains(&hex(bytes)))
            .map(|(name, bytes)| format!("{name} ({} bytes):\n{}", bytes.len(), hex(&bytes)))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/protocol.md lacks\n{}",
            missing.join("\n\n")
        );
    }
}
