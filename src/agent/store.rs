//! The device's models on disk, changed only by atomic renames so that a power cut at any
//! step leaves a working model.
//!
//! ```text
//! STATE_DIR/
//!   state.json                 which model is active, which was before it, what was refused,
//!                              the newest release installed
//!   models/<sha256>.perch      installed artifacts (the active one and the previous one)
//!   incoming/<sha256>.part     a download in progress (resumed from its length)
//! ```
//!
//! Each install records the release number of the host's signed manifest: the store keeps
//! the largest as its floor, and the agent refuses offers older than it (an old offer
//! replayed, or relabelled).
//!
//! Installing: the download is complete in `incoming/` → it is verified (SHA-256, the
//! host's signature, it loads, its canary passes) → fsync, renamed into `models/` → a new
//! `state.json` is written beside the old one, fsynced, and renamed over it (the step that
//! activates the model) → the directory is fsynced. Before that last rename the old model
//! is the active one; after it, the new one.

use crate::sync::ModelRef;
use crate::util::to_hex;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Refused models remembered (so the host's re-offers are answered at once).
const REFUSED_KEPT: usize = 16;

/// Why the model store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// `state.json` does not parse.
    #[error("{path}: damaged state file ({reason}); move it away to start without a model")]
    DamagedState {
        /// The file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// A chunk does not continue the download where it stands.
    #[error("chunk at offset {offset} does not continue the download at {have} bytes")]
    OutOfOrder {
        /// Offset of the chunk.
        offset: u64,
        /// Bytes already downloaded.
        have: u64,
    },
}

/// A model that went away by itself, to be told to the host when it is reachable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RollbackNotice {
    /// The model left.
    pub from: ModelRef,
    /// The model active now.
    pub to: ModelRef,
    /// Why.
    pub reason: String,
}

/// A model this device went back from: its digest, why, and the release of the manifest it
/// was installed under (a later release of it is the host's decision to try it again).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(from = "RefusalRepr", into = "RefusalRepr")]
struct Refusal {
    sha256: [u8; 32],
    reason: String,
    release: u64,
}

/// `[digest, reason, release]`; state files written before releases hold `[digest, reason]`.
#[derive(Serialize, Deserialize, Clone)]
#[serde(untagged)]
enum RefusalRepr {
    Current([u8; 32], String, u64),
    Old([u8; 32], String),
}

impl From<RefusalRepr> for Refusal {
    fn from(r: RefusalRepr) -> Refusal {
        match r {
            RefusalRepr::Current(sha256, reason, release) => Refusal {
                sha256,
                reason,
                release,
            },
            RefusalRepr::Old(sha256, reason) => Refusal {
                sha256,
                reason,
                release: 0,
            },
        }
    }
}

impl From<Refusal> for RefusalRepr {
    fn from(r: Refusal) -> RefusalRepr {
        RefusalRepr::Current(r.sha256, r.reason, r.release)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
struct State {
    active: Option<ModelRef>,
    previous: Option<ModelRef>,
    /// Release of the active model's manifest (0 before releases existed).
    #[serde(default)]
    active_release: u64,
    /// Release of the previous model's manifest.
    #[serde(default)]
    previous_release: u64,
    /// The largest release ever installed as the active model.
    #[serde(default)]
    release_floor: u64,
    /// Models this device went back from, newest last, with the reason.
    refused: Vec<Refusal>,
    /// Rollbacks not yet reported.
    notices: Vec<RollbackNotice>,
}

/// The on-disk model store.
#[derive(Debug)]
pub struct ModelStore {
    dir: PathBuf,
    state: State,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Flushes a directory's entries (renames in it) to disk.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl ModelStore {
    /// Opens (creating) the store in `dir`.
    ///
    /// # Errors
    /// Unwritable directories, a damaged `state.json`.
    pub fn open(dir: &Path) -> Result<ModelStore, StoreError> {
        for sub in ["models", "incoming"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let path = dir.join("state.json");
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::DamagedState {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io(&path)(e)),
        };
        // A crash between writing the new state and renaming it leaves this behind.
        let _ = fs::remove_file(dir.join("state.json.tmp"));
        Ok(ModelStore {
            dir: dir.to_path_buf(),
            state,
        })
    }

    /// The active model.
    pub fn active(&self) -> Option<&ModelRef> {
        self.state.active.as_ref()
    }

    /// The model before it.
    pub fn previous(&self) -> Option<&ModelRef> {
        self.state.previous.as_ref()
    }

    /// Where an installed model's artifact lives.
    pub fn model_path(&self, model: &ModelRef) -> PathBuf {
        self.dir
            .join("models")
            .join(format!("{}.perch", to_hex(&model.sha256)))
    }

    /// Whether the artifact with this digest is already in `models/` (installed, or moved
    /// there by an install that stopped before activating it).
    pub fn has_model_file(&self, sha256: &[u8; 32]) -> bool {
        self.dir
            .join("models")
            .join(format!("{}.perch", to_hex(sha256)))
            .is_file()
    }

    /// Why the device went back from this model before, and the release it had been
    /// installed under, if it did.
    pub fn refused(&self, sha256: &[u8; 32]) -> Option<(&str, u64)> {
        self.state
            .refused
            .iter()
            .rev()
            .find(|r| &r.sha256 == sha256)
            .map(|r| (r.reason.as_str(), r.release))
    }

    /// The largest release of a host manifest ever installed as the active model: offers
    /// older than this are refused.
    pub fn release_floor(&self) -> u64 {
        self.state.release_floor
    }

    /// Rollbacks the host has not heard of.
    pub fn notices(&self) -> &[RollbackNotice] {
        &self.state.notices
    }

    fn part_path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.dir
            .join("incoming")
            .join(format!("{}.part", to_hex(sha256)))
    }

    /// Bytes of this artifact downloaded so far.
    pub fn partial_len(&self, sha256: &[u8; 32]) -> u64 {
        fs::metadata(self.part_path(sha256)).map_or(0, |m| m.len())
    }

    /// Deletes a partial download (and any other partial download, when `all`).
    pub fn discard_partial(&self, sha256: &[u8; 32]) {
        let _ = fs::remove_file(self.part_path(sha256));
    }

    /// Appends a chunk at `offset`, which must be the current length. Returns the new length.
    ///
    /// # Errors
    /// [`StoreError::OutOfOrder`], or the write failing.
    pub fn append(&self, sha256: &[u8; 32], offset: u64, bytes: &[u8]) -> Result<u64, StoreError> {
        let path = self.part_path(sha256);
        let have = self.partial_len(sha256);
        if offset != have {
            return Err(StoreError::OutOfOrder { offset, have });
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(bytes).map_err(io(&path))?;
        Ok(have + bytes.len() as u64)
    }

    /// The bytes of a complete download (or of a model file already in `models/`).
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn read_candidate(&self, sha256: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
        let installed = self
            .dir
            .join("models")
            .join(format!("{}.perch", to_hex(sha256)));
        let path = if installed.is_file() {
            installed
        } else {
            self.part_path(sha256)
        };
        fs::read(&path).map_err(io(&path))
    }

    /// Moves a verified download into `models/` (fsynced), ready to activate.
    ///
    /// # Errors
    /// File operations failing.
    pub fn stage(&self, model: &ModelRef) -> Result<(), StoreError> {
        let target = self.model_path(model);
        if target.is_file() {
            return Ok(());
        }
        let part = self.part_path(&model.sha256);
        File::open(&part)
            .and_then(|f| f.sync_all())
            .map_err(io(&part))?;
        fs::rename(&part, &target).map_err(io(&target))?;
        sync_dir(&self.dir.join("models"))?;
        sync_dir(&self.dir.join("incoming"))
    }

    /// Makes a staged model the active one (the previous active becomes `previous`), as
    /// installed under the manifest release `release`: writes the new state beside the old
    /// and renames it into place. `before_rename` runs between the two (the agent's
    /// fault-injection point).
    ///
    /// # Errors
    /// File operations failing (the old state stays in force then).
    pub fn activate(
        &mut self,
        model: &ModelRef,
        release: u64,
        before_rename: impl FnOnce(),
    ) -> Result<(), StoreError> {
        let mut next = self.state.clone();
        if next.active.as_ref() != Some(model) {
            next.previous = next.active.take();
            next.previous_release = next.active_release;
            next.active = Some(model.clone());
        }
        next.active_release = release;
        next.release_floor = next.release_floor.max(release);
        // Installed again under a newer release: the host decided to try it again.
        next.refused.retain(|r| r.sha256 != model.sha256);
        self.commit(next, before_rename)?;
        self.remove_unused_models();
        Ok(())
    }

    /// Goes back to the previous model: it becomes active, the current one is remembered
    /// as refused (with `reason`) and a notice is kept for the host. Returns `(from, to)`,
    /// or `None` when there is no previous model.
    ///
    /// # Errors
    /// File operations failing.
    pub fn roll_back(&mut self, reason: &str) -> Result<Option<(ModelRef, ModelRef)>, StoreError> {
        let (Some(from), Some(to)) = (self.state.active.clone(), self.state.previous.clone())
        else {
            return Ok(None);
        };
        let mut next = self.state.clone();
        next.active = Some(to.clone());
        next.previous = None;
        next.refused.push(Refusal {
            sha256: from.sha256,
            reason: reason.to_string(),
            release: next.active_release,
        });
        next.active_release = next.previous_release;
        next.previous_release = 0;
        if next.refused.len() > REFUSED_KEPT {
            next.refused.remove(0);
        }
        next.notices.push(RollbackNotice {
            from: from.clone(),
            to: to.clone(),
            reason: reason.to_string(),
        });
        self.commit(next, || {})?;
        Ok(Some((from, to)))
    }

    /// The active model's file is unusable: go back to the previous one if there is one,
    /// else forget the active model. Returns what is active now.
    ///
    /// # Errors
    /// File operations failing.
    pub fn drop_active(&mut self, reason: &str) -> Result<Option<ModelRef>, StoreError> {
        if self.roll_back(reason)?.is_none() {
            let mut next = self.state.clone();
            if let Some(from) = next.active.take() {
                next.refused.push(Refusal {
                    sha256: from.sha256,
                    reason: reason.to_string(),
                    release: next.active_release,
                });
                next.active_release = 0;
            }
            self.commit(next, || {})?;
        }
        Ok(self.state.active.clone())
    }

    /// The host has heard of the first `n` notices.
    ///
    /// # Errors
    /// File operations failing.
    pub fn notices_sent(&mut self, n: usize) -> Result<(), StoreError> {
        let mut next = self.state.clone();
        next.notices.drain(..n.min(next.notices.len()));
        self.commit(next, || {})
    }

    fn commit(&mut self, next: State, before_rename: impl FnOnce()) -> Result<(), StoreError> {
        let path = self.dir.join("state.json");
        let tmp = self.dir.join("state.json.tmp");
        let bytes = serde_json::to_vec_pretty(&next).map_err(|e| StoreError::DamagedState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        before_rename();
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        self.state = next;
        Ok(())
    }

    /// Deletes artifacts that are neither active nor previous, and partial downloads of
    /// installed models.
    fn remove_unused_models(&self) {
        let keep: Vec<String> = [&self.state.active, &self.state.previous]
            .into_iter()
            .flatten()
            .map(|m| format!("{}.perch", to_hex(&m.sha256)))
            .collect();
        if let Ok(entries) = fs::read_dir(self.dir.join("models")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        for m in [&self.state.active, &self.state.previous]
            .into_iter()
            .flatten()
        {
            self.discard_partial(&m.sha256);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(n: u8) -> ModelRef {
        ModelRef {
            name: "m".into(),
            version: n.to_string(),
            sha256: [n; 32],
        }
    }

    fn download(store: &ModelStore, m: &ModelRef, bytes: &[u8]) {
        let mid = bytes.len() / 2;
        assert_eq!(
            store.append(&m.sha256, 0, &bytes[..mid]).unwrap(),
            mid as u64
        );
        assert!(matches!(
            store.append(&m.sha256, 0, &bytes[mid..]),
            Err(StoreError::OutOfOrder { offset: 0, .. })
        ));
        store.append(&m.sha256, mid as u64, &bytes[mid..]).unwrap();
    }

    #[test]
    fn install_keeps_one_previous_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ModelStore::open(dir.path()).unwrap();
        for n in 1..=3 {
            let m = model(n);
            download(&s, &m, &[n; 100]);
            assert_eq!(s.read_candidate(&m.sha256).unwrap(), vec![n; 100]);
            s.stage(&m).unwrap();
            assert_eq!(s.partial_len(&m.sha256), 0);
            s.activate(&m, u64::from(n), || {}).unwrap();
        }
        let s = ModelStore::open(dir.path()).unwrap();
        assert_eq!(s.active(), Some(&model(3)));
        assert_eq!(s.previous(), Some(&model(2)));
        assert!(!s.has_model_file(&[1; 32]), "older models are deleted");
        assert!(s.has_model_file(&[2; 32]) && s.has_model_file(&[3; 32]));
    }

    #[test]
    fn a_crash_before_the_state_rename_keeps_the_old_model() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ModelStore::open(dir.path()).unwrap();
        download(&s, &model(1), &[1; 10]);
        s.stage(&model(1)).unwrap();
        s.activate(&model(1), 1, || {}).unwrap();
        download(&s, &model(2), &[2; 10]);
        s.stage(&model(2)).unwrap();
        // Simulate the crash: the new state is written beside the old one, never renamed.
        let mut crashed = ModelStore::open(dir.path()).unwrap();
        let mut next = crashed.state.clone();
        next.active = Some(model(2));
        let bytes = serde_json::to_vec(&next).unwrap();
        fs::write(dir.path().join("state.json.tmp"), bytes).unwrap();
        crashed = ModelStore::open(dir.path()).unwrap();
        assert_eq!(crashed.active(), Some(&model(1)));
        assert!(
            crashed.has_model_file(&[2; 32]),
            "staged file is kept for the retry"
        );
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn roll_back_refuses_the_model_and_keeps_a_notice_until_sent() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ModelStore::open(dir.path()).unwrap();
        assert_eq!(s.roll_back("x").unwrap(), None);
        for n in 1..=2 {
            download(&s, &model(n), &[n; 10]);
            s.stage(&model(n)).unwrap();
            s.activate(&model(n), u64::from(n), || {}).unwrap();
        }
        let (from, to) = s.roll_back("error rate 0.9").unwrap().unwrap();
        assert_eq!((from, to), (model(2), model(1)));
        let mut s = ModelStore::open(dir.path()).unwrap();
        assert_eq!(s.active(), Some(&model(1)));
        assert_eq!(s.refused(&[2; 32]), Some(("error rate 0.9", 2)));
        assert_eq!(s.release_floor(), 2, "going back keeps the floor");
        assert_eq!(s.notices().len(), 1);
        s.notices_sent(1).unwrap();
        assert!(ModelStore::open(dir.path()).unwrap().notices().is_empty());
    }

    #[test]
    fn the_release_floor_only_rises_and_a_new_release_lifts_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ModelStore::open(dir.path()).unwrap();
        for (n, release) in [(1u8, 10u64), (2, 20)] {
            download(&s, &model(n), &[n; 10]);
            s.stage(&model(n)).unwrap();
            s.activate(&model(n), release, || {}).unwrap();
        }
        s.roll_back("canary").unwrap();
        assert_eq!(s.refused(&[2; 32]), Some(("canary", 20)));
        // The host pushes model 2 again under a newer release: installed, the refusal goes.
        download(&s, &model(2), &[2; 10]);
        s.stage(&model(2)).unwrap();
        s.activate(&model(2), 30, || {}).unwrap();
        assert_eq!(s.refused(&[2; 32]), None);
        // An explicit rollback to model 1 under a newer release: the floor follows it.
        s.activate(&model(1), 40, || {}).unwrap();
        let s = ModelStore::open(dir.path()).unwrap();
        assert_eq!((s.active(), s.release_floor()), (Some(&model(1)), 40));
    }

    #[test]
    fn a_state_file_from_before_releases_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let old = format!(
            r#"{{"active": {{"name": "m", "version": "1", "sha256": {a:?}}}, "previous": null,
                "refused": [[{b:?}, "error rate 0.5"]], "notices": []}}"#,
            a = [1u8; 32],
            b = [2u8; 32]
        );
        fs::write(dir.path().join("state.json"), old).unwrap();
        let s = ModelStore::open(dir.path()).unwrap();
        assert_eq!(s.active(), Some(&model(1)));
        assert_eq!(s.refused(&[2; 32]), Some(("error rate 0.5", 0)));
        assert_eq!(s.release_floor(), 0);
    }

    #[test]
    fn a_damaged_state_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("state.json"), b"{\"active\": 3").unwrap();
        let e = ModelStore::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("damaged state file"), "{e}");
    }
}
