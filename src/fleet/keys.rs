//! The host's Ed25519 signing key: made on first use, kept beside the registry database in
//! `perch-host.key` (64 hex digits of the secret, readable by its owner only).

use super::FleetError;
use crate::sync::auth;
use crate::util::{from_hex, to_hex};
use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};

/// File name of the host key, beside the database.
pub const KEY_FILE: &str = "perch-host.key";

/// Where the key of the registry at `db` lives.
pub fn key_path(db: &Path) -> PathBuf {
    match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(KEY_FILE),
        _ => PathBuf::from(KEY_FILE),
    }
}

/// Loads the host key of the registry at `db`, creating it when there is none.
///
/// # Errors
/// An unreadable or damaged key file (it is never overwritten), no randomness, a key that
/// cannot be written.
pub fn load_or_create(db: &Path) -> Result<SigningKey, FleetError> {
    let path = key_path(db);
    let io = |error| FleetError::Io {
        path: path.clone(),
        error,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = from_hex::<32>(&text).map_err(|reason| FleetError::DamagedKey {
                path: path.clone(),
                reason,
            })?;
            Ok(SigningKey::from_bytes(&secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret: [u8; 32] = auth::random().map_err(|e| FleetError::Random(e.to_string()))?;
            write_private(&path, format!("{}\n", to_hex(&secret)).as_bytes()).map_err(io)?;
            log::info!("made the host signing key {}", path.display());
            Ok(SigningKey::from_bytes(&secret))
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes a file only its owner can read (mode 0600 on Unix), refusing to replace one, and
/// flushes it and its directory entry to disk.
///
/// # Errors
/// The file exists already, or cannot be written.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    crate::registry::sync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_made_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("reg.db");
        let a = load_or_create(&db).unwrap();
        let b = load_or_create(&db).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_path(&db))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(key_path(&db), "not hex").unwrap();
        let e = load_or_create(&db).unwrap_err();
        assert!(e.to_string().contains("perch-host.key"), "{e}");
    }
}
