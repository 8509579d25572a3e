//! The sync server's [`Store`] over the fleet database: one thread owns the SQLite
//! connection and runs every request in turn; reports that arrive together from any number
//! of sessions are written in one transaction, and each session is answered once it has
//! committed (so an acknowledged report is on disk).

use super::{Device, Fleet, FleetError};
use crate::metrics::Report;
use crate::sync::ModelRef;
use crate::sync::server::{DeviceRecord, Offer, Store, StoreError};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Task = Box<dyn FnOnce(&mut Fleet) + Send>;

enum Job {
    Reports {
        device: i64,
        reports: Vec<(u64, Report)>,
        reply: SyncSender<Result<(), StoreError>>,
    },
    Task(Task),
}

/// Largest number of reports written in one transaction.
const BATCH: usize = 4096;

/// How often the database is asked whether assignments changed (by `perch-host push` in
/// another process, or a rollout).
const GENERATION_POLL: Duration = Duration::from_millis(250);

/// A [`Store`] backed by the fleet tables.
pub struct FleetStore {
    jobs: Mutex<Sender<Job>>,
    generation: Arc<AtomicU64>,
    push_files: Mutex<HashMap<u64, PathBuf>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStore").finish_non_exhaustive()
    }
}

fn store_err(e: FleetError) -> StoreError {
    StoreError(e.to_string())
}

impl FleetStore {
    /// Opens the database at `path` and starts the thread that owns it.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<FleetStore, FleetError> {
        let fleet = Fleet::open(path)?;
        let generation = Arc::new(AtomicU64::new(fleet.assignment_change()? as u64));
        let (tx, rx) = mpsc::channel();
        let g = generation.clone();
        let worker = std::thread::Builder::new()
            .name("fleet store".into())
            .spawn(move || run(fleet, &rx, &g))
            .map_err(|error| FleetError::Io {
                path: path.to_path_buf(),
                error,
            })?;
        Ok(FleetStore {
            jobs: Mutex::new(tx),
            generation,
            push_files: Mutex::new(HashMap::new()),
            worker: Mutex::new(Some(worker)),
        })
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        crate::lock(&self.jobs)
            .send(job)
            .map_err(|_| StoreError("the fleet store thread has stopped".into()))
    }

    /// Runs `f` on the store's thread and waits for its result.
    ///
    /// # Errors
    /// What `f` returns, or the store thread having stopped.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Fleet) -> Result<T, FleetError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Job::Task(Box::new(move |fleet| {
            let _ = reply.send(f(fleet).map_err(store_err));
        })))?;
        answer
            .recv()
            .map_err(|_| StoreError("the fleet store thread has stopped".into()))?
    }

    /// Stops the store's thread after the requests already sent.
    pub fn close(&self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut *crate::lock(&self.jobs), tx));
        if let Some(w) = crate::lock(&self.worker).take() {
            let _ = w.join();
        }
    }
}

impl Drop for FleetStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn run(mut fleet: Fleet, jobs: &Receiver<Job>, generation: &AtomicU64) {
    let mut held: Option<Job> = None;
    loop {
        let job = match held.take() {
            Some(j) => j,
            None => match jobs.recv_timeout(GENERATION_POLL) {
                Ok(j) => j,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    match fleet.assignment_change() {
                        Ok(g) => generation.store(g as u64, Ordering::SeqCst),
                        Err(e) => log::error!("{e}"),
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        match job {
            Job::Task(f) => f(&mut fleet),
            Job::Reports {
                device,
                reports,
                reply,
            } => {
                let mut batch = vec![(device, reports, reply)];
                let mut count = batch[0].1.len();
                while count < BATCH {
                    match jobs.try_recv() {
                        Ok(Job::Reports {
                            device,
                            reports,
                            reply,
                        }) => {
                            count += reports.len();
                            batch.push((device, reports, reply));
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let rows: Vec<(i64, u64, &Report)> = batch
                    .iter()
                    .flat_map(|(d, rs, _)| rs.iter().map(move |(seq, r)| (*d, *seq, r)))
                    .collect();
                let result = fleet.store_reports(&rows).map(|_| ()).map_err(store_err);
                if let Err(e) = &result {
                    log::error!("storing {} reports: {e}", rows.len());
                }
                for (_, _, reply) in batch {
                    let _ = reply.send(result.clone());
                }
            }
        }
    }
}

fn as_device(d: &DeviceRecord) -> Device {
    Device {
        id: d.id,
        name: d.name.clone(),
        group: String::new(),
        key: d.key,
    }
}

impl Store for FleetStore {
    fn device(&self, name: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let name = name.to_string();
        self.call(move |f| {
            Ok(f.device(&name)?.map(|d| DeviceRecord {
                id: d.id,
                name: d.name,
                key: d.key,
            }))
        })
    }

    fn session_opened(
        &self,
        device: &DeviceRecord,
        peer: &str,
        agent: &str,
    ) -> Result<(), StoreError> {
        let (d, peer, agent) = (as_device(device), peer.to_string(), agent.to_string());
        self.call(move |f| f.seen(&d, Some(&peer), Some(&agent), None))
    }

    fn heartbeat(&self, device: &DeviceRecord, model: Option<&ModelRef>) -> Result<(), StoreError> {
        let (d, model) = (as_device(device), model.cloned());
        self.call(move |f| f.seen(&d, None, None, Some(model.as_ref())))
    }

    fn store_reports(
        &self,
        device: &DeviceRecord,
        reports: &[(u64, Report)],
    ) -> Result<(), StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Job::Reports {
            device: device.id,
            reports: reports.to_vec(),
            reply,
        })?;
        answer
            .recv()
            .map_err(|_| StoreError("the fleet store thread has stopped".into()))?
    }

    fn offers(&self, device: &DeviceRecord) -> Result<Vec<Offer>, StoreError> {
        let id = device.id;
        let pushes = self.call(move |f| f.offers(id))?;
        let mut files = crate::lock(&self.push_files);
        Ok(pushes
            .into_iter()
            .map(|(p, role)| {
                files.insert(p.id, p.path.clone());
                Offer {
                    push: p.id,
                    model: p.model,
                    size: p.size,
                    role,
                }
            })
            .collect())
    }

    fn read_chunk(
        &self,
        push: u64,
        offset: u64,
        max: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let cached = crate::lock(&self.push_files).get(&push).cloned();
        let path = match cached {
            Some(p) => p,
            None => {
                self.call(move |f| f.push(push))?
                    .ok_or_else(|| StoreError(format!("no push {push}")))?
                    .path
            }
        };
        let err = |e: std::io::Error| StoreError(format!("{}: {e}", path.display()));
        let mut file = std::fs::File::open(&path).map_err(err)?;
        file.seek(SeekFrom::Start(offset)).map_err(err)?;
        buf.clear();
        file.take(max as u64).read_to_end(buf).map_err(err)?;
        Ok(())
    }

    fn install_outcome(
        &self,
        device: &DeviceRecord,
        push: u64,
        outcome: Result<(), &str>,
    ) -> Result<(), StoreError> {
        let d = as_device(device);
        let outcome = outcome.map_err(str::to_string);
        self.call(move |f| {
            f.record_install(
                &d,
                push,
                outcome.as_ref().map(|_| ()).map_err(String::as_str),
            )
        })
    }

    fn rolled_back(
        &self,
        device: &DeviceRecord,
        from: &ModelRef,
        to: &ModelRef,
        reason: &str,
    ) -> Result<(), StoreError> {
        let (d, from, to, reason) = (
            as_device(device),
            from.clone(),
            to.clone(),
            reason.to_string(),
        );
        self.call(move |f| f.record_rollback(&d, &from, &to, &reason))
    }

    fn event(&self, device: Option<&str>, kind: &str, detail: &str) {
        let (name, kind, detail) = (
            device.map(str::to_string),
            kind.to_string(),
            detail.to_string(),
        );
        let result = self.call(move |f| {
            let known = match &name {
                Some(n) => f.device(n)?,
                None => None,
            };
            f.record_event(known.as_ref(), name.as_deref(), &kind, &detail)
        });
        if let Err(e) = result {
            log::error!("cannot record an event: {e}");
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}
