//! The native model file, `.perch` (format version 1).
//!
//! ```text
//! offset        size  field
//! 0             8     magic  89 50 45 52 43 48 0D 0A  ("\x89PERCH\r\n")
//! 8             2     format version, u16 LE (1)
//! 10            2     flags, u16 LE (bit 0: signed; other bits reserved, must be 0)
//! 12            8     payload length L, u64 LE
//! 20            L     payload: postcard-encoded `graph::Model`
//! 20+L          32    SHA-256 of the payload
//! 52+L          64    Ed25519 signature of bytes 0..52+L, or zeros when unsigned
//! ```
//!
//! [`decode`] never panics, whatever the bytes: each defect has its own
//! [`ArtifactError`] variant. The full specification is `docs/artifact.md`.

use crate::graph::{GraphError, Model};
use crate::util::to_hex;
use sha2::{Digest, Sha256};
use std::path::Path;

pub mod manifest;
pub use manifest::{Manifest, ManifestError};

/// The eight bytes every `.perch` file starts with.
pub const MAGIC: [u8; 8] = *b"\x89PERCH\r\n";
/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 20;
/// Length of the SHA-256 field.
pub const DIGEST_LEN: usize = 32;
/// Length of the signature slot.
pub const SIGNATURE_LEN: usize = 64;
/// Largest payload accepted (checked before anything is allocated).
pub const MAX_PAYLOAD_BYTES: u64 = 1 << 30;
/// Flag bit: the signature slot holds a signature.
pub const FLAG_SIGNED: u16 = 1;

/// Why bytes are not a usable `.perch` artifact.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// Fewer bytes than the fixed header and trailer need.
    #[error("artifact is {len} bytes, shorter than the {needed}-byte minimum (truncated file?)")]
    TooShort {
        /// Length of the bytes given.
        len: usize,
        /// Header, digest and signature slot together: the smallest possible artifact.
        needed: usize,
    },
    /// The file does not start with the perch magic.
    #[error("not a perch artifact: magic is {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic {
        /// The first eight bytes.
        found: [u8; 8],
    },
    /// The file uses a format version this build cannot read.
    #[error(
        "artifact format version {found} is not supported (this perch reads 1..={supported}); upgrade perch"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// Newest version this build reads.
        supported: u16,
    },
    /// Reserved flag bits are set.
    #[error("artifact sets unknown flag bits {flags:#06x} (written by a newer perch?)")]
    UnknownFlags {
        /// The header's flags field (bit 0 is [`FLAG_SIGNED`]).
        flags: u16,
    },
    /// The declared payload is beyond the accepted maximum.
    #[error("payload length {len} exceeds the {max}-byte maximum")]
    PayloadTooLarge {
        /// Payload length the header declares.
        len: u64,
        /// The accepted maximum, [`MAX_PAYLOAD_BYTES`].
        max: u64,
    },
    /// The file is shorter than its header says.
    #[error("artifact is truncated: header says {expected} bytes, file has {actual}")]
    Truncated {
        /// Length implied by the header.
        expected: u64,
        /// Length of the bytes given.
        actual: usize,
    },
    /// The file is longer than its header says.
    #[error("artifact has {extra} unexpected bytes after the signature slot")]
    TrailingBytes {
        /// Bytes past the end the header implies.
        extra: usize,
    },
    /// The payload does not match its digest.
    #[error(
        "payload checksum mismatch: header records sha256 {expected}, payload hashes to {computed} (corrupted file)"
    )]
    ChecksumMismatch {
        /// Stored digest, hex.
        expected: String,
        /// Computed digest, hex.
        computed: String,
    },
    /// The payload is not a model this build understands.
    #[error(
        "payload does not decode as a perch model ({0}); the file is damaged or uses layers from a newer perch"
    )]
    Payload(postcard::Error),
    /// The model decodes but its graph is inconsistent.
    #[error("model graph is invalid: {0}")]
    Graph(GraphError),
    /// postcard could not serialize the model (in practice: out of memory).
    #[error("encoding model: {0}")]
    Encode(postcard::Error),
    /// A signature was required and the artifact has none.
    #[error("artifact is not signed (the device accepts only models signed by its host)")]
    Unsigned,
    /// The signature does not verify with the expected public key.
    #[error(
        "artifact signature does not verify with the host key {key} (signed by another host, or altered after signing)"
    )]
    BadSignature {
        /// The public key tried, hex.
        key: String,
    },
    /// Reading or writing the file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file as given.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
}

// Not `#[from]`: that would also make the inner error the `source()`, and `{:#}` would print
// it twice (the message already holds it).
impl From<GraphError> for ArtifactError {
    fn from(e: GraphError) -> Self {
        ArtifactError::Graph(e)
    }
}

/// A decoded and verified artifact ([`decode`]): header fields, payload digest, signature
/// slot and the model.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Format version from the header.
    pub format_version: u16,
    /// Flags from the header.
    pub flags: u16,
    /// SHA-256 of the payload (verified).
    pub sha256: [u8; 32],
    /// The signature slot, if the signed flag is set (not verified here).
    pub signature: Option<[u8; SIGNATURE_LEN]>,
    /// The model, graph validated.
    pub model: Model,
    /// Total size of the file in bytes.
    pub size_bytes: usize,
}

/// Serializes `model` as an unsigned `.perch` artifact.
///
/// # Errors
/// [`ArtifactError::Graph`] when the graph is invalid (nothing invalid is ever written),
/// [`ArtifactError::Encode`] if postcard fails.
pub fn encode(model: &Model) -> Result<Vec<u8>, ArtifactError> {
    model.graph.infer_shapes()?;
    let payload = postcard::to_stdvec(model).map_err(ArtifactError::Encode)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + DIGEST_LEN + SIGNATURE_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&[0u8; SIGNATURE_LEN]);
    Ok(out)
}

/// Parses and verifies an artifact: header, length, checksum, payload, graph.
///
/// # Errors
/// One [`ArtifactError`] variant per defect; never panics.
pub fn decode(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
    let min = HEADER_LEN + DIGEST_LEN + SIGNATURE_LEN;
    if bytes.len() < HEADER_LEN {
        return Err(ArtifactError::TooShort {
            len: bytes.len(),
            needed: min,
        });
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&bytes[0..8]);
    if magic != MAGIC {
        return Err(ArtifactError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version == 0 || version > FORMAT_VERSION {
        return Err(ArtifactError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
    if flags & !FLAG_SIGNED != 0 {
        return Err(ArtifactError::UnknownFlags { flags });
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[12..20]);
    let payload_len = u64::from_le_bytes(len_bytes);
    if payload_len > MAX_PAYLOAD_BYTES {
        return Err(ArtifactError::PayloadTooLarge {
            len: payload_len,
            max: MAX_PAYLOAD_BYTES,
        });
    }
    let total = min as u64 + payload_len;
    if (bytes.len() as u64) < total {
        return Err(ArtifactError::Truncated {
            expected: total,
            actual: bytes.len(),
        });
    }
    if bytes.len() as u64 > total {
        return Err(ArtifactError::TrailingBytes {
            extra: (bytes.len() as u64 - total) as usize,
        });
    }
    let payload_end = HEADER_LEN + payload_len as usize;
    let payload = &bytes[HEADER_LEN..payload_end];
    let mut stored = [0u8; 32];
    stored.copy_from_slice(&bytes[payload_end..payload_end + DIGEST_LEN]);
    let computed: [u8; 32] = Sha256::digest(payload).into();
    if stored != computed {
        return Err(ArtifactError::ChecksumMismatch {
            expected: to_hex(&stored),
            computed: to_hex(&computed),
        });
    }
    let mut sig = [0u8; SIGNATURE_LEN];
    sig.copy_from_slice(&bytes[payload_end + DIGEST_LEN..]);
    let model: Model = postcard::from_bytes(payload).map_err(ArtifactError::Payload)?;
    model.graph.infer_shapes()?;
    Ok(Artifact {
        format_version: version,
        flags,
        sha256: computed,
        signature: (flags & FLAG_SIGNED != 0).then_some(sig),
        model,
        size_bytes: bytes.len(),
    })
}

/// The bytes a signature covers: everything before the signature slot.
///
/// # Errors
/// As [`decode`]'s length checks, if `bytes` is not a whole artifact.
pub fn signed_region(bytes: &[u8]) -> Result<&[u8], ArtifactError> {
    let min = HEADER_LEN + DIGEST_LEN + SIGNATURE_LEN;
    if bytes.len() < min {
        return Err(ArtifactError::TooShort {
            len: bytes.len(),
            needed: min,
        });
    }
    Ok(&bytes[..bytes.len() - SIGNATURE_LEN])
}

/// Signs a whole artifact with the host's key: sets the signed flag and fills the signature
/// slot with the Ed25519 signature of every byte before it (header with the flag, payload,
/// digest). An artifact signed before is signed afresh.
///
/// # Errors
/// As [`decode`]: only a valid artifact is signed.
pub fn sign(bytes: &[u8], key: &ed25519_dalek::SigningKey) -> Result<Vec<u8>, ArtifactError> {
    use ed25519_dalek::Signer;
    decode(bytes)?;
    let mut out = bytes.to_vec();
    let flags = u16::from_le_bytes([out[10], out[11]]) | FLAG_SIGNED;
    out[10..12].copy_from_slice(&flags.to_le_bytes());
    let split = out.len() - SIGNATURE_LEN;
    let signature = key.sign(&out[..split]);
    out[split..].copy_from_slice(&signature.to_bytes());
    Ok(out)
}

/// Checks that `bytes` is an artifact signed with the secret half of `key`, and decodes it.
///
/// # Errors
/// [`ArtifactError::Unsigned`], [`ArtifactError::BadSignature`], or any [`decode`] error.
#[cfg_attr(not(feature = "device"), allow(dead_code))] // the agent's
pub(crate) fn verify_signed(
    bytes: &[u8],
    key: &ed25519_dalek::VerifyingKey,
) -> Result<Artifact, ArtifactError> {
    // The signature is checked before the payload is parsed: untrusted bytes reach the
    // decoder only once they are known to come from the host.
    let min = HEADER_LEN + DIGEST_LEN + SIGNATURE_LEN;
    if bytes.len() < min || !bytes.starts_with(&MAGIC) {
        return decode(bytes);
    }
    if u16::from_le_bytes([bytes[10], bytes[11]]) & FLAG_SIGNED == 0 {
        return Err(ArtifactError::Unsigned);
    }
    let (region, sig) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
    let mut raw = [0u8; SIGNATURE_LEN];
    raw.copy_from_slice(sig);
    let signature = ed25519_dalek::Signature::from_bytes(&raw);
    key.verify_strict(region, &signature)
        .map_err(|_| ArtifactError::BadSignature {
            key: to_hex(key.as_bytes()),
        })?;
    decode(bytes)
}

/// Reads and decodes the artifact at `path`.
///
/// # Errors
/// [`ArtifactError::Io`] if the file cannot be read, else as [`decode`].
pub fn read(path: &Path) -> Result<Artifact, ArtifactError> {
    let bytes = std::fs::read(path).map_err(|error| ArtifactError::Io {
        path: path.display().to_string(),
        error,
    })?;
    decode(&bytes)
}

/// Encodes `model` and writes it to `path` (through a temporary file and a rename, so a
/// crash never leaves half a file under `path`).
///
/// # Errors
/// As [`encode`], or [`ArtifactError::Io`].
pub fn write(path: &Path, model: &Model) -> Result<usize, ArtifactError> {
    let bytes = encode(model)?;
    let io = |error| ArtifactError::Io {
        path: path.display().to_string(),
        error,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Layer, Tensor};

    /// The smallest useful model: `y = [1 2]·x + 0.5`.
    fn tiny() -> Model {
        crate::test_fixtures::tiny_dense(Some(0.5))
    }

    #[test]
    fn signatures_verify_only_with_the_right_key_and_unaltered_bytes() {
        let host = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
        let bytes = encode(&tiny()).unwrap();
        assert!(matches!(
            verify_signed(&bytes, &host.verifying_key()),
            Err(ArtifactError::Unsigned)
        ));
        let signed = sign(&bytes, &host).unwrap();
        assert_eq!(signed.len(), bytes.len());
        let art = verify_signed(&signed, &host.verifying_key()).unwrap();
        assert_eq!(art.flags, FLAG_SIGNED);
        assert!(matches!(
            verify_signed(&signed, &other.verifying_key()),
            Err(ArtifactError::BadSignature { .. })
        ));
        // Re-signing by another host replaces the signature.
        let resigned = sign(&signed, &other).unwrap();
        verify_signed(&resigned, &other.verifying_key()).unwrap();
        // Any altered byte breaks it: the digest for the payload, the signature elsewhere.
        for i in 0..signed.len() {
            let mut bad = signed.clone();
            bad[i] ^= 0x10;
            assert!(
                verify_signed(&bad, &host.verifying_key()).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn encodes_the_documented_bytes() {
        let bytes = encode(&tiny()).expect("encodes");
        #[rustfmt::skip]
        let payload: &[u8] = &[
            // metadata: name, version, created, producer, description, labels, properties, sections
            0, 0, 0, 0, 0, 0, 0, 0,
            // graph.inputs: 1 × TensorSpec { "x", F32, [2] }
            1, 1, b'x', 0, 1, 2,
            // graph.nodes: 1 × Node { "d", Dense(variant 1) {
            1, 1, b'd', 1,
            //   weight: Tensor { shape [1, 2], F32(variant 0) [1.0, 2.0] }
            2, 1, 2, 0, 2, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40,
            //   bias: Some(Tensor { shape [1], F32 [0.5] }) }, inputs [0] }
            1, 1, 1, 0, 1, 0x00, 0x00, 0x00, 0x3f, 1, 0,
            // graph.outputs: 1 × Output { "y", 1 }
            1, 1, b'y', 1,
        ];
        assert_eq!(payload.len(), 46, "docs/artifact.md quotes this length");
        let mut expected = Vec::new();
        expected.extend_from_slice(b"\x89PERCH\r\n");
        expected.extend_from_slice(&[1, 0, 0, 0]);
        expected.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        expected.extend_from_slice(payload);
        expected.extend_from_slice(&Sha256::digest(payload));
        expected.extend_from_slice(&[0; 64]);
        assert_eq!(bytes, expected);
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back.model, tiny());
        assert_eq!(back.signature, None);
    }

    #[test]
    fn each_defect_has_its_own_error() {
        let good = encode(&tiny()).expect("encodes");
        assert!(matches!(
            decode(&good[..10]),
            Err(ArtifactError::TooShort { .. })
        ));
        let mut b = good.clone();
        b[1] = b'X';
        assert!(matches!(decode(&b), Err(ArtifactError::BadMagic { .. })));
        let mut b = good.clone();
        b[8] = 2;
        assert!(matches!(
            decode(&b),
            Err(ArtifactError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        ));
        let mut b = good.clone();
        b[10] = 0x04;
        assert!(matches!(
            decode(&b),
            Err(ArtifactError::UnknownFlags { flags: 4 })
        ));
        let mut b = good.clone();
        b[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode(&b),
            Err(ArtifactError::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(ArtifactError::Truncated { .. })
        ));
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(
            decode(&b),
            Err(ArtifactError::TrailingBytes { extra: 1 })
        ));
        let mut b = good.clone();
        b[HEADER_LEN + 3] ^= 0xff;
        assert!(matches!(
            decode(&b),
            Err(ArtifactError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn an_unknown_layer_variant_is_a_payload_error() {
        let good = encode(&tiny()).expect("encodes");
        // Rewrite the layer tag (variant 1, Dense) as 200, fix up the digest.
        let mut payload = good[HEADER_LEN..good.len() - DIGEST_LEN - SIGNATURE_LEN].to_vec();
        let at = payload.iter().position(|&b| b == b'd').expect("node name") + 1;
        payload[at] = 0x7f;
        let mut b = good[..HEADER_LEN].to_vec();
        b.extend_from_slice(&payload);
        b.extend_from_slice(&Sha256::digest(&payload));
        b.extend_from_slice(&[0; 64]);
        let err = decode(&b).expect_err("unknown variant");
        assert!(matches!(err, ArtifactError::Payload(_)), "{err}");
        assert!(err.to_string().contains("newer perch"));
    }

    /// `tiny` with a sparse `[2, 3]` weight `[[0 0 1] [2 3 0]]` (CSR).
    fn tiny_sparse() -> Model {
        let mut m = tiny();
        m.graph.inputs[0].shape = vec![3];
        m.graph.nodes[0].layer = Layer::Dense {
            weight: Tensor {
                shape: vec![2, 3],
                data: crate::graph::TensorData::Csr {
                    row_ptr: vec![0, 1, 3],
                    col_idx: vec![2, 0, 1],
                    values: vec![1.0, 2.0, 3.0],
                },
            },
            bias: None,
        };
        m
    }

    /// The variant index of `TensorData::Csr` (docs/artifact.md).
    const CSR_VARIANT: u8 = 2;

    #[test]
    fn a_sparse_weight_round_trips_with_the_documented_bytes() {
        let m = tiny_sparse();
        let bytes = encode(&m).expect("encodes");
        #[rustfmt::skip]
        let weight: &[u8] = &[
            2, 2, 3,            // shape [2, 3]
            CSR_VARIANT,        // TensorData::Csr
            3, 0, 1, 3,         // row_ptr
            3, 2, 0, 1,         // col_idx
            3, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x40, 0x40,
            0,                  // bias: None
        ];
        assert!(
            bytes.windows(weight.len()).any(|w| w == weight),
            "CSR bytes as documented"
        );
        let back = decode(&bytes).expect("decodes").model;
        assert_eq!(back, m);
        let mut engine = crate::engine::Engine::new(&back.graph, 1).expect("plans");
        engine.run(&[&[1.0, 10.0, 100.0]], 1).expect("runs");
        assert_eq!(engine.output_f32(0), Some(&[100.0, 32.0][..]));
        assert_eq!(engine.kernel_choices().len(), 1);
    }

    #[test]
    fn an_inconsistent_graph_is_rejected_at_decode() {
        let mut m = tiny();
        m.graph.nodes[0].inputs = vec![5];
        assert!(matches!(encode(&m), Err(ArtifactError::Graph(_))));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn payload_decoding_and_planning_never_panic(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256), flip in 0usize..64, val in proptest::prelude::any::<u8>()) {
            // Start from a real payload, change one byte and append noise, then fix the digest
            // so the postcard decoder and graph validation see the damage.
            let good = encode(&tiny()).expect("encodes");
            let mut p = good[HEADER_LEN..good.len() - DIGEST_LEN - SIGNATURE_LEN].to_vec();
            let n = p.len();
            p[flip % n] = val;
            p.extend_from_slice(&payload[..payload.len() % 8]);
            let mut b = good[..12].to_vec();
            b.extend_from_slice(&(p.len() as u64).to_le_bytes());
            b.extend_from_slice(&p);
            b.extend_from_slice(&Sha256::digest(&p));
            b.extend_from_slice(&[0; 64]);
            if let Ok(art) = decode(&b)
                && let Ok(mut engine) = crate::engine::Engine::new(&art.model.graph, 1)
            {
                let len: usize = art.model.graph.inputs.iter().map(|s| s.sample_len()).sum();
                if art.model.graph.inputs.len() == 1 && len < 4096 {
                    let _ = engine.run(&[&vec![0.25; len]], 1);
                }
            }
        }

        #[test]
        fn damaged_sparse_weights_never_panic(flip in 0usize..64, val in proptest::prelude::any::<u8>()) {
            let good = encode(&tiny_sparse()).expect("encodes");
            let mut p = good[HEADER_LEN..good.len() - DIGEST_LEN - SIGNATURE_LEN].to_vec();
            let n = p.len();
            p[flip % n] = val;
            let mut b = good[..12].to_vec();
            b.extend_from_slice(&(p.len() as u64).to_le_bytes());
            b.extend_from_slice(&p);
            b.extend_from_slice(&Sha256::digest(&p));
            b.extend_from_slice(&[0; 64]);
            if let Ok(art) = decode(&b)
                && let Ok(mut engine) = crate::engine::Engine::new(&art.model.graph, 1)
            {
                let len: usize = art.model.graph.inputs.iter().map(|s| s.sample_len()).sum();
                if art.model.graph.inputs.len() == 1 && len < 4096 {
                    let _ = engine.run(&[&vec![0.25; len]], 1);
                }
            }
        }

        #[test]
        fn decode_never_panics_on_mutated_artifacts(pos in 0usize..200, val in proptest::prelude::any::<u8>(), cut in 0usize..200) {
            let mut b = encode(&tiny()).expect("encodes");
            let n = b.len();
            b[pos % n] = val;
            b.truncate(n - cut % n);
            let _ = decode(&b);
        }
    }
}
