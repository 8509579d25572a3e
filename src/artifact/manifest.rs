//! The host's signed manifest of a pushed artifact: what the host vouches for when it offers
//! a model to a device. The artifact's own signature covers its bytes; the manifest binds
//! those bytes (by SHA-256 and size) to the name and version they are offered as and to a
//! release number, so an old artifact cannot be offered again as a new one, nor under
//! another name.
//!
//! ```text
//! signed manifest = postcard(Manifest) ‖ Ed25519 signature (64 bytes)
//!                   of "perch-manifest-v1\0" ‖ postcard(Manifest)
//! ```
//!
//! The context string keeps a manifest signature from ever verifying as an artifact
//! signature (those cover bytes that start with the artifact magic) and the other way round.
//! A device checks the signature before it decodes the manifest (`docs/protocol.md`).

use serde::{Deserialize, Serialize};

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u16 = 1;

/// Largest signed manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 4096;

/// What the signature covers before the encoded manifest.
const CONTEXT: &[u8] = b"perch-manifest-v1\0";

const SIGNATURE_LEN: usize = 64;

/// What a model needs from a device to run, checked before it is downloaded. Empty in
/// manifests this build makes but for the format version; the memory and capability
/// checks (issue 13 item 6) fill the rest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Format version of the artifact (`crate::artifact::FORMAT_VERSION` when it was made).
    pub format_version: u16,
    /// Planned peak memory of loading and running the model, in bytes, when known.
    pub peak_memory_bytes: Option<u64>,
    /// Operators and kernels the model needs (`dense`, `conv2d`, `int8`…).
    pub needs: Vec<String>,
}

/// The host's statement about one push of an artifact.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Manifest layout version, [`MANIFEST_FORMAT`] when this build writes it.
    pub format: u16,
    /// Registry name of the model.
    pub name: String,
    /// Registry version (as text: `3`).
    pub version: String,
    /// The host's release number: every manifest the host signs gets a larger one (at least
    /// the signing time in Unix seconds). A device installs nothing older than what it
    /// installed before.
    pub release: u64,
    /// SHA-256 of the signed artifact's bytes.
    pub sha256: [u8; 32],
    /// Size of the signed artifact in bytes.
    pub size_bytes: u64,
    /// The host goes back to an older version on purpose (`perch-host push --rollback`, or
    /// the rollout gates restoring a group's previous version).
    pub rollback: bool,
    /// What the model needs of the device.
    pub requirements: Requirements,
}

/// Why a signed manifest is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Too short to hold a signature, or longer than [`MAX_MANIFEST_BYTES`].
    #[error("signed manifest of {len} bytes (expected {min}..={max})")]
    Length {
        /// Length of the signed manifest given.
        len: usize,
        /// Fewest bytes possible.
        min: usize,
        /// Most bytes accepted.
        max: usize,
    },
    /// The signature does not verify with the host's key.
    #[error(
        "the manifest's signature does not verify with the host key {key} (signed by another host, or altered)"
    )]
    BadSignature {
        /// The public key tried, hex.
        key: String,
    },
    /// Signed, but not a manifest this build reads.
    #[error("the manifest does not decode ({0}); written by a newer perch-host?")]
    Decode(String),
    /// A manifest format this build does not read.
    #[error("manifest format {found} is not supported (this perch reads {MANIFEST_FORMAT})")]
    Format {
        /// Format in the manifest.
        found: u16,
    },
    /// postcard could not serialize the manifest.
    #[error("cannot encode the manifest: {0}")]
    Encode(String),
}

impl Manifest {
    /// The bytes the signature covers.
    fn signed_bytes(encoded: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(CONTEXT.len() + encoded.len());
        m.extend_from_slice(CONTEXT);
        m.extend_from_slice(encoded);
        m
    }

    /// Encodes and signs the manifest with the host's key.
    ///
    /// # Errors
    /// [`ManifestError::Encode`], or a manifest longer than [`MAX_MANIFEST_BYTES`].
    pub fn sign(&self, key: &ed25519_dalek::SigningKey) -> Result<Vec<u8>, ManifestError> {
        use ed25519_dalek::Signer;
        let mut out =
            postcard::to_allocvec(self).map_err(|e| ManifestError::Encode(e.to_string()))?;
        let signature = key.sign(&Self::signed_bytes(&out));
        out.extend_from_slice(&signature.to_bytes());
        if out.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Length {
                len: out.len(),
                min: SIGNATURE_LEN + 1,
                max: MAX_MANIFEST_BYTES,
            });
        }
        Ok(out)
    }

    /// Checks a signed manifest against the host's public key, then decodes it (bytes reach
    /// the decoder only once they are known to come from the host).
    ///
    /// # Errors
    /// [`ManifestError`]: a wrong length, a bad signature, a manifest that does not decode
    /// or has another format.
    pub fn verify(
        signed: &[u8],
        key: &ed25519_dalek::VerifyingKey,
    ) -> Result<Manifest, ManifestError> {
        if signed.len() <= SIGNATURE_LEN || signed.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Length {
                len: signed.len(),
                min: SIGNATURE_LEN + 1,
                max: MAX_MANIFEST_BYTES,
            });
        }
        let (body, sig) = signed.split_at(signed.len() - SIGNATURE_LEN);
        let mut raw = [0u8; SIGNATURE_LEN];
        raw.copy_from_slice(sig);
        key.verify_strict(
            &Self::signed_bytes(body),
            &ed25519_dalek::Signature::from_bytes(&raw),
        )
        .map_err(|_| ManifestError::BadSignature {
            key: crate::util::to_hex(key.as_bytes()),
        })?;
        let (manifest, rest): (Manifest, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| ManifestError::Decode(e.to_string()))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format {
                found: manifest.format,
            });
        }
        if !rest.is_empty() {
            return Err(ManifestError::Decode(format!(
                "{} bytes after the manifest",
                rest.len()
            )));
        }
        Ok(manifest)
    }

    /// How the offer `name@version` (`sha256`, `size_bytes`) differs from what the host
    /// signed, if it does: `(field, offered, signed)`.
    #[cfg_attr(not(feature = "device"), allow(dead_code))] // the agent's
    pub(crate) fn differs_from(
        &self,
        name: &str,
        version: &str,
        sha256: &[u8; 32],
        size_bytes: u64,
    ) -> Option<(&'static str, String, String)> {
        if name != self.name || version != self.version {
            return Some((
                "model",
                format!("{name}@{version}"),
                format!("{}@{}", self.name, self.version),
            ));
        }
        if sha256 != &self.sha256 {
            return Some((
                "sha256",
                crate::util::to_hex(sha256),
                crate::util::to_hex(&self.sha256),
            ));
        }
        if size_bytes != self.size_bytes {
            return Some(("size", size_bytes.to_string(), self.size_bytes.to_string()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            name: "wine".into(),
            version: "2".into(),
            release: 1_767_225_600,
            sha256: [7; 32],
            size_bytes: 1234,
            rollback: false,
            requirements: Requirements {
                format_version: 1,
                ..Requirements::default()
            },
        }
    }

    #[test]
    fn signed_manifests_verify_only_unaltered_and_with_the_right_key() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let signed = manifest().sign(&key).unwrap();
        assert_eq!(
            Manifest::verify(&signed, &key.verifying_key()).unwrap(),
            manifest()
        );
        for i in 0..signed.len() {
            let mut bad = signed.clone();
            bad[i] ^= 0x10;
            assert!(
                Manifest::verify(&bad, &key.verifying_key()).is_err(),
                "byte {i} flipped and the manifest still verified"
            );
        }
        let other = ed25519_dalek::SigningKey::from_bytes(&[6; 32]);
        assert!(matches!(
            Manifest::verify(&signed, &other.verifying_key()),
            Err(ManifestError::BadSignature { .. })
        ));
        assert!(matches!(
            Manifest::verify(&signed[..10], &key.verifying_key()),
            Err(ManifestError::Length { .. })
        ));
    }

    #[test]
    fn an_artifact_signature_is_not_a_manifest_signature() {
        // The same key signs artifacts; a signature over the bare encoding (no context) of
        // the manifest must not verify.
        use ed25519_dalek::Signer;
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let mut forged = postcard::to_allocvec(&manifest()).unwrap();
        let sig = key.sign(&forged);
        forged.extend_from_slice(&sig.to_bytes());
        assert!(matches!(
            Manifest::verify(&forged, &key.verifying_key()),
            Err(ManifestError::BadSignature { .. })
        ));
    }

    #[test]
    fn differences_name_the_field() {
        let m = manifest();
        assert_eq!(m.differs_from("wine", "2", &[7; 32], 1234), None);
        assert_eq!(
            m.differs_from("wine", "999", &[7; 32], 1234).unwrap().0,
            "model"
        );
        assert_eq!(
            m.differs_from("wine", "2", &[8; 32], 1234).unwrap().0,
            "sha256"
        );
        assert_eq!(m.differs_from("wine", "2", &[7; 32], 1).unwrap().0, "size");
    }
}
