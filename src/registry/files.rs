//! The registry's files: artifacts stored content-addressed and durably (written to a
//! temporary file, synced, renamed, the directory synced), and the database file kept
//! readable by its owner only.

use super::{ArtifactFormat, RegistryError};
use std::path::{Path, PathBuf};

/// Makes the database file readable by its owner only (it holds the devices' keys): a new
/// one is created so, an existing one (and its WAL and shared-memory files, which SQLite
/// creates with the database's mode) is changed when others could read it (with a warning,
/// also when it cannot be changed).
#[cfg(unix)]
pub(super) fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.is_file()
            && meta.permissions().mode() & 0o077 != 0
        {
            // Someone else's database is still readable to us: say so, do not refuse it.
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => log::warn!(
                    "{}: made readable by its owner only (it holds device keys)",
                    file.display()
                ),
                Err(e) => log::warn!(
                    "{}: others can read it, and it holds device keys; make it mode 0600 ({e})",
                    file.display()
                ),
            }
        }
    }
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn make_private(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

pub(super) fn store_file(
    dir: &Path,
    sha: &str,
    format: ArtifactFormat,
    bytes: &[u8],
) -> Result<(), RegistryError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| RegistryError::Io { path, error }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let target = dir.join(format!("{sha}.{}", format.name()));
    if target.is_file() {
        return Ok(());
    }
    let tmp = dir.join(format!(".{sha}.{}.tmp", std::process::id()));
    write_durably(&tmp, &target, bytes).map_err(io(&target))
}

/// Writes `bytes` to `tmp`, flushes them to disk, renames `tmp` to `target` and flushes the
/// directory: after a power cut `target` is either absent or whole.
///
/// # Errors
/// Any step failing (`tmp` is removed then).
pub(crate) fn write_durably(tmp: &Path, target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let written = (|| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(tmp, target)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    sync_parent(target)
}

/// Flushes the entries of `path`'s directory (a rename or a new file in it) to disk.
///
/// # Errors
/// The directory cannot be opened or synced.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
