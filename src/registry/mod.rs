//! The model registry (feature `host`): every trained or imported model becomes a numbered
//! version of a name, stored in SQLite with its metadata, and its artifact kept
//! content-addressed on disk beside the database (`<db dir>/artifacts/<sha256>.perch`).
//!
//! A version keeps its artifact's SHA-256 and size, hyper-parameters, metrics, training
//! time, the fingerprint and per-feature statistics of its training data, its parent version
//! (lineage), tags and aliases (`production`, `staging`…; an alias points at one version of
//! a name). The registry stores JSON documents (parameters, metrics, statistics, the data
//! schema) as given and knows nothing of training.
//!
//! References name a version: `NAME` (the latest), `NAME@3`, `NAME@production`.
//!
//! # Example
//! ```no_run
//! use perch::registry::{ModelRef, Registry};
//!
//! let registry = Registry::open("perch-registry.db")?;
//! let version = registry.resolve(&"iris@production".parse::<ModelRef>()?)?;
//! println!("{}@{} {}", version.name, version.number, version.artifact_sha256);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod files;
mod refs;
use refs::check_name;
#[cfg(test)]
mod tests;

use files::{make_private, store_file};
pub(crate) use files::{sync_parent, write_durably};
pub use refs::{ArtifactFormat, DatasetInfo, ModelRef, Payload, Selector, Version, VersionInfo};

use crate::artifact;
use crate::util::{
    SqliteError, now_unix_s, sqlite_error, write_transaction, write_transaction_with,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// File name of the registry database when neither `--registry` nor `PERCH_REGISTRY` says.
pub const DEFAULT_FILE: &str = "perch-registry.db";

/// Environment variable that overrides [`DEFAULT_FILE`].
pub const ENV_VAR: &str = "PERCH_REGISTRY";

/// Version of the database layout this build reads and writes (SQLite `user_version`): the
/// registry's tables (layouts 1 and 2) and the fleet's (3 to 5, `crate::fleet::schema`).
pub const SCHEMA_VERSION: i64 = 5;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Opening, migrating, querying or writing the SQLite database failed.
    #[error("registry database {path:?}: {error}")]
    Sqlite {
        /// The registry database file.
        path: PathBuf,
        /// SQLite's error (busy, locked, corrupt, constraint …).
        error: rusqlite::Error,
    },
    /// A file beside the database could not be read or written.
    #[error("registry file {path:?}: {error}")]
    Io {
        /// The artifact or temporary file, under `<db dir>/artifacts/`.
        path: PathBuf,
        /// The operating-system error.
        error: std::io::Error,
    },
    /// The database was written by a newer perch.
    #[error(
        "registry database {path:?} has layout version {found}, this perch reads up to {supported}; upgrade perch-host"
    )]
    SchemaTooNew {
        /// The registry database file.
        path: PathBuf,
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// No model of that name.
    #[error("unknown model {name:?} (known models: {known:?})")]
    UnknownModel {
        /// The name that was asked for.
        name: String,
        /// Names in the registry.
        known: Vec<String>,
    },
    /// The model has no such version.
    #[error("model {name:?} has no version {number} (versions: {known:?})")]
    UnknownVersion {
        /// The model's name (it exists).
        name: String,
        /// The number that was asked for.
        number: u32,
        /// The numbers the model does have, ascending.
        known: Vec<u32>,
    },
    /// The model has no such alias.
    #[error("model {name:?} has no alias {alias:?} (aliases: {known:?})")]
    UnknownAlias {
        /// The model's name (it exists).
        name: String,
        /// The alias that was asked for.
        alias: String,
        /// The aliases the model does have, sorted.
        known: Vec<String>,
    },
    /// A reference that does not parse.
    #[error("bad model reference {text:?}: {reason} (write NAME, NAME@3 or NAME@production)")]
    BadReference {
        /// The reference as given.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// A name, tag or alias with characters the registry does not accept.
    #[error("bad {what} {value:?}: {reason}")]
    BadName {
        /// `model name`, `tag` or `alias`.
        what: &'static str,
        /// The rejected string.
        value: String,
        /// What is accepted.
        reason: &'static str,
    },
    /// A stored artifact is missing or does not match its recorded SHA-256.
    #[error("artifact {path:?} of {name}@{number}: {reason}")]
    ArtifactDamaged {
        /// The version's model name.
        name: String,
        /// The version's number.
        number: u32,
        /// The expected path, `<db dir>/artifacts/<sha256>.<format>`.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A model could not be encoded as an artifact.
    #[error("encoding the artifact: {0}")]
    Artifact(artifact::ArtifactError),
    /// A JSON column holds something that does not parse.
    #[error("registry column {column} of {name}@{number} is not valid JSON: {error}")]
    Json {
        /// The version's model name.
        name: String,
        /// The version's number.
        number: u32,
        /// The column's name (`params`, `metrics`, …).
        column: &'static str,
        /// serde_json's parse error.
        error: serde_json::Error,
    },
}

impl SqliteError for RegistryError {
    fn sqlite(path: PathBuf, error: rusqlite::Error) -> RegistryError {
        RegistryError::Sqlite { path, error }
    }
}

// Not `#[from]`: that would also make the inner error the `source()`, and `{:#}` would print
// it twice (the message already holds it).
impl From<artifact::ArtifactError> for RegistryError {
    fn from(e: artifact::ArtifactError) -> Self {
        RegistryError::Artifact(e)
    }
}

/// An open registry: the database and the artifact store beside it.
#[derive(Debug)]
pub struct Registry {
    conn: Connection,
    path: PathBuf,
    artifacts: PathBuf,
}

/// The database path: `explicit` (`--registry`), else `$PERCH_REGISTRY`, else
/// [`DEFAULT_FILE`] in the current directory.
pub fn resolve_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os(ENV_VAR) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_FILE),
    }
}

const SCHEMA: &str = "
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    last_number INTEGER NOT NULL DEFAULT 0,
    created_unix_s INTEGER NOT NULL
);
CREATE TABLE versions (
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    format TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    params TEXT NOT NULL,
    metrics TEXT NOT NULL,
    fit_seconds REAL,
    created_unix_s INTEGER NOT NULL,
    dataset_sha256 TEXT,
    dataset_rows INTEGER,
    dataset_columns INTEGER,
    feature_stats TEXT,
    data_schema TEXT,
    parent_id INTEGER REFERENCES versions(id) ON DELETE SET NULL,
    data_files TEXT,
    UNIQUE (model_id, number)
);
CREATE TABLE tags (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (version_id, tag)
);
CREATE TABLE aliases (
    model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    alias TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    PRIMARY KEY (model_id, alias)
);
";

impl Registry {
    /// Opens (creating on first use) the registry database at `path` and its artifact store
    /// `artifacts/` beside it.
    ///
    /// # Errors
    /// [`RegistryError::Sqlite`] / [`RegistryError::Io`] when the files cannot be opened or
    /// created, [`RegistryError::SchemaTooNew`] for a database from a newer perch.
    pub fn open(path: impl AsRef<Path>) -> Result<Registry, RegistryError> {
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|error| RegistryError::Io {
            path: dir.clone(),
            error,
        })?;
        let sql = sqlite_error::<RegistryError>(&path);
        make_private(&path).map_err(|error| RegistryError::Io {
            path: path.clone(),
            error,
        })?;
        let mut conn = Connection::open(&path).map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        if found > SCHEMA_VERSION {
            return Err(RegistryError::SchemaTooNew {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            write_transaction(&mut conn, &path, |tx| {
                if found == 0 {
                    tx.execute_batch(SCHEMA).map_err(sql)?;
                }
                // Layout 2 records where the training and test data came from.
                if found == 1 {
                    tx.execute_batch("ALTER TABLE versions ADD COLUMN data_files TEXT;")
                        .map_err(sql)?;
                }
                // Layouts 3 to 5 are the fleet's: it creates and migrates its own tables.
                crate::fleet::schema::migrate(tx, found).map_err(sql)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(sql)
            })?;
        }
        Ok(Registry {
            conn,
            artifacts: dir.join("artifacts"),
            path,
        })
    }

    /// The database file's path, as opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> RegistryError + '_ {
        sqlite_error(&self.path)
    }

    /// Where the artifact with `sha256` in `format` lives.
    pub fn artifact_path(&self, sha256: &str, format: ArtifactFormat) -> PathBuf {
        self.artifacts.join(format!("{sha256}.{}", format.name()))
    }

    /// The number the next version of `name` will get.
    ///
    /// # Errors
    /// [`RegistryError::Sqlite`].
    pub fn next_number(&self, name: &str) -> Result<u32, RegistryError> {
        let last: Option<u32> = self
            .conn
            .query_row(
                "SELECT last_number FROM models WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?;
        Ok(last.unwrap_or(0) + 1)
    }

    /// Stores `payload` as the next version of `name`, in one transaction. A native model
    /// gets `name` and the version number in its metadata before it is encoded.
    ///
    /// # Errors
    /// [`RegistryError::BadName`], an unknown parent, encoding, I/O and SQLite failures.
    /// Nothing is recorded when any step fails.
    pub fn register(
        &mut self,
        name: &str,
        payload: Payload,
        info: VersionInfo,
    ) -> Result<Version, RegistryError> {
        check_name("model name", name)?;
        let sql = sqlite_error::<RegistryError>(&self.path);
        // Immediate: take the write lock before reading the numbers it writes.
        let immediate = TransactionBehavior::Immediate;
        let number = write_transaction_with(&mut self.conn, &self.path, immediate, |tx| {
            let parent_id = match &info.parent {
                Some(r) => Some(resolve_id(tx, r).map_err(|e| with_path(e, &self.path))?.0),
                None => None,
            };
            tx.execute(
            "INSERT INTO models (name, created_unix_s) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
            params![name, now_unix_s()],
        )
        .map_err(sql)?;
            let (model_id, last): (i64, u32) = tx
                .query_row(
                    "SELECT id, last_number FROM models WHERE name = ?1",
                    [name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sql)?;
            let number = last + 1;
            let (format, bytes) = match payload {
                Payload::Native(mut model) => {
                    model.metadata.name = name.to_string();
                    model.metadata.version = number.to_string();
                    model
                        .stamp_requirements()
                        .map_err(artifact::ArtifactError::from)?;
                    (ArtifactFormat::Perch, artifact::encode(&model)?)
                }
                Payload::Onnx(bytes) => (ArtifactFormat::Onnx, bytes),
            };
            let sha = crate::util::to_hex(&Sha256::digest(&bytes));
            store_file(&self.artifacts, &sha, format, &bytes)?;
            let to_text = |v: &serde_json::Value| v.to_string();
            let created = now_unix_s();
            tx.execute(
            "INSERT INTO versions (model_id, number, format, artifact_sha256, size_bytes, params,
                metrics, fit_seconds, created_unix_s, dataset_sha256, dataset_rows,
                dataset_columns, feature_stats, data_schema, parent_id, data_files)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                model_id,
                number,
                format.name(),
                sha,
                bytes.len() as i64,
                to_text(&info.params),
                to_text(&info.metrics),
                info.fit_seconds,
                created,
                info.dataset.as_ref().map(|d| d.sha256.clone()),
                info.dataset.as_ref().map(|d| d.rows as i64),
                info.dataset.as_ref().map(|d| d.columns as i64),
                info.dataset.as_ref().map(|d| to_text(&d.feature_stats)),
                info.data_schema.as_ref().map(to_text),
                parent_id,
                info.data_files.as_ref().map(to_text),
            ],
        )
        .map_err(sql)?;
            tx.execute(
                "UPDATE models SET last_number = ?1 WHERE id = ?2",
                params![number, model_id],
            )
            .map_err(sql)?;
            Ok::<_, RegistryError>(number)
        })?;
        self.get(name, number)
    }

    /// The version `r` names.
    ///
    /// # Errors
    /// [`RegistryError::UnknownModel`], [`RegistryError::UnknownVersion`],
    /// [`RegistryError::UnknownAlias`].
    pub fn resolve(&self, r: &ModelRef) -> Result<Version, RegistryError> {
        let (id, _) = resolve_id(&self.conn, r).map_err(|e| with_path(e, &self.path))?;
        self.load(id)
    }

    fn get(&self, name: &str, number: u32) -> Result<Version, RegistryError> {
        self.resolve(&ModelRef {
            name: name.to_string(),
            selector: Selector::Number(number),
        })
    }

    fn load(&self, id: i64) -> Result<Version, RegistryError> {
        let sql = self.sql();
        let row = self
            .conn
            .query_row(
                "SELECT m.name, v.number, v.format, v.artifact_sha256, v.size_bytes, v.params,
                    v.metrics, v.fit_seconds, v.created_unix_s, v.dataset_sha256, v.dataset_rows,
                    v.dataset_columns, v.feature_stats, v.data_schema,
                    (SELECT pm.name || '@' || p.number FROM versions p JOIN models pm
                        ON pm.id = p.model_id WHERE p.id = v.parent_id),
                    v.data_files
                 FROM versions v JOIN models m ON m.id = v.model_id WHERE v.id = ?1",
                [id],
                |r| {
                    Ok((
                        (
                            r.get::<_, String>(0)?,
                            r.get::<_, u32>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                        ),
                        (
                            r.get::<_, String>(5)?,
                            r.get::<_, String>(6)?,
                            r.get::<_, Option<f64>>(7)?,
                            r.get::<_, i64>(8)?,
                        ),
                        (
                            r.get::<_, Option<String>>(9)?,
                            r.get::<_, Option<i64>>(10)?,
                            r.get::<_, Option<i64>>(11)?,
                            r.get::<_, Option<String>>(12)?,
                            r.get::<_, Option<String>>(13)?,
                            r.get::<_, Option<String>>(14)?,
                            r.get::<_, Option<String>>(15)?,
                        ),
                    ))
                },
            )
            .map_err(&sql)?;
        let ((name, number, format, sha, size), (params, metrics, fit_seconds, created), rest) =
            row;
        let (ds_sha, ds_rows, ds_cols, stats, schema, parent, files) = rest;
        let json = |column: &'static str, text: &str| {
            serde_json::from_str(text).map_err(|error| RegistryError::Json {
                name: name.clone(),
                number,
                column,
                error,
            })
        };
        let dataset = match ds_sha {
            Some(sha256) => Some(DatasetInfo {
                sha256,
                rows: ds_rows.unwrap_or(0).max(0) as u64,
                columns: ds_cols.unwrap_or(0).max(0) as u64,
                feature_stats: match &stats {
                    Some(s) => json("feature_stats", s)?,
                    None => serde_json::Value::Null,
                },
            }),
            None => None,
        };
        let data_schema = match &schema {
            Some(s) => Some(json("data_schema", s)?),
            None => None,
        };
        let data_files = match &files {
            Some(s) => Some(json("data_files", s)?),
            None => None,
        };
        let strings = |q: &str| -> Result<Vec<String>, RegistryError> {
            let mut stmt = self.conn.prepare(q).map_err(&sql)?;
            let rows = stmt
                .query_map([id], |r| r.get::<_, String>(0))
                .map_err(&sql)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(&sql)
        };
        Ok(Version {
            params: json("params", &params)?,
            metrics: json("metrics", &metrics)?,
            tags: strings("SELECT tag FROM tags WHERE version_id = ?1 ORDER BY tag")?,
            aliases: strings("SELECT alias FROM aliases WHERE version_id = ?1 ORDER BY alias")?,
            format: ArtifactFormat::from_name(&format),
            artifact_sha256: sha,
            size_bytes: size.max(0) as u64,
            fit_seconds,
            created_unix_s: created,
            dataset,
            data_schema,
            parent,
            data_files,
            name,
            number,
        })
    }

    /// Every version, by name then number.
    ///
    /// # Errors
    /// [`RegistryError::Sqlite`] or a damaged JSON column.
    pub fn list(&self) -> Result<Vec<Version>, RegistryError> {
        let sql = self.sql();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id
                 ORDER BY m.name, v.number",
            )
            .map_err(&sql)?;
        let ids = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(&sql)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&sql)?;
        ids.into_iter().map(|id| self.load(id)).collect()
    }

    /// The artifact bytes of `version`, checked against their recorded SHA-256.
    ///
    /// # Errors
    /// [`RegistryError::ArtifactDamaged`] when the file is missing or altered.
    pub fn artifact_bytes(&self, version: &Version) -> Result<Vec<u8>, RegistryError> {
        let path = self.artifact_path(&version.artifact_sha256, version.format);
        let damaged = |reason: String| RegistryError::ArtifactDamaged {
            name: version.name.clone(),
            number: version.number,
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|e| damaged(e.to_string()))?;
        let sha = crate::util::to_hex(&Sha256::digest(&bytes));
        if sha != version.artifact_sha256 {
            return Err(damaged(format!(
                "its SHA-256 is {sha}, the registry recorded {}",
                version.artifact_sha256
            )));
        }
        Ok(bytes)
    }

    /// Adds `tag` to the version `r` names (adding it twice is not an error).
    ///
    /// # Errors
    /// [`RegistryError::BadName`] or an unknown reference.
    pub fn tag(&mut self, r: &ModelRef, tag: &str) -> Result<Version, RegistryError> {
        check_name("tag", tag)?;
        let (id, _) = resolve_id(&self.conn, r).map_err(|e| with_path(e, &self.path))?;
        self.conn
            .execute(
                "INSERT OR IGNORE INTO tags (version_id, tag) VALUES (?1, ?2)",
                params![id, tag],
            )
            .map_err(self.sql())?;
        self.load(id)
    }

    /// Points `alias` of the model at the version `r` names, moving it if it pointed
    /// elsewhere.
    ///
    /// # Errors
    /// [`RegistryError::BadName`] or an unknown reference.
    pub fn set_alias(&mut self, r: &ModelRef, alias: &str) -> Result<Version, RegistryError> {
        check_name("alias", alias)?;
        if alias == "latest" {
            return Err(RegistryError::BadName {
                what: "alias",
                value: alias.into(),
                reason: "'latest' is reserved: NAME alone means the latest version",
            });
        }
        let (id, model_id) = resolve_id(&self.conn, r).map_err(|e| with_path(e, &self.path))?;
        self.conn
            .execute(
                "INSERT INTO aliases (model_id, alias, version_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT (model_id, alias) DO UPDATE SET version_id = excluded.version_id",
                params![model_id, alias, id],
            )
            .map_err(self.sql())?;
        self.load(id)
    }

    /// Deletes the version `r` names, or every version of the model when `r` is a bare
    /// name, with their tags and aliases; artifact files no other version uses are removed
    /// after the transaction commits. Returns what was deleted.
    ///
    /// # Errors
    /// An unknown reference or SQLite failures (then nothing is deleted).
    pub fn delete(&mut self, r: &ModelRef) -> Result<Vec<Version>, RegistryError> {
        let victims: Vec<Version> = match r.selector {
            Selector::Latest => self
                .list()?
                .into_iter()
                .filter(|v| v.name == r.name)
                .collect(),
            _ => vec![self.resolve(r)?],
        };
        if victims.is_empty() {
            return Err(unknown_model(&self.conn, &r.name).map_err(|e| with_path(e, &self.path))?);
        }
        let sql = sqlite_error::<RegistryError>(&self.path);
        // Immediate: take the write lock before reading the numbers it writes.
        let immediate = TransactionBehavior::Immediate;
        write_transaction_with(&mut self.conn, &self.path, immediate, |tx| {
            for v in &victims {
                tx.execute(
                    "DELETE FROM versions WHERE number = ?2
                   AND model_id = (SELECT id FROM models WHERE name = ?1)",
                    params![v.name, v.number],
                )
                .map_err(sql)?;
            }
            if r.selector == Selector::Latest {
                tx.execute("DELETE FROM models WHERE name = ?1", [&r.name])
                    .map_err(sql)?;
            }
            Ok::<_, RegistryError>(())
        })?;
        for v in &victims {
            let still_used: bool = self
                .conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM versions WHERE artifact_sha256 = ?1)",
                    [&v.artifact_sha256],
                    |r| r.get(0),
                )
                .map_err(self.sql())?;
            if !still_used {
                // A leftover file is harmless (content-addressed); failing here would report
                // an error for a deletion that has committed.
                let _ = std::fs::remove_file(self.artifact_path(&v.artifact_sha256, v.format));
            }
        }
        Ok(victims)
    }
}

/// Resolution errors carry no path; SQLite ones get the database path here.
enum Lookup {
    Sql(rusqlite::Error),
    Registry(RegistryError),
}

impl From<rusqlite::Error> for Lookup {
    fn from(e: rusqlite::Error) -> Lookup {
        Lookup::Sql(e)
    }
}

fn with_path(e: Lookup, path: &Path) -> RegistryError {
    match e {
        Lookup::Sql(error) => RegistryError::sqlite(path.to_path_buf(), error),
        Lookup::Registry(e) => e,
    }
}

fn unknown_model(conn: &Connection, name: &str) -> Result<RegistryError, Lookup> {
    let mut stmt = conn.prepare(
        "SELECT name FROM models WHERE EXISTS (SELECT 1 FROM versions v WHERE v.model_id = models.id) ORDER BY name",
    )?;
    let known = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RegistryError::UnknownModel {
        name: name.to_string(),
        known,
    })
}

/// `(version id, model id)` of the version `r` names.
fn resolve_id(conn: &Connection, r: &ModelRef) -> Result<(i64, i64), Lookup> {
    let model_id: Option<i64> = conn
        .query_row("SELECT id FROM models WHERE name = ?1", [&r.name], |row| {
            row.get(0)
        })
        .optional()?;
    let Some(model_id) = model_id else {
        return Err(Lookup::Registry(unknown_model(conn, &r.name)?));
    };
    let found: Option<i64> = match &r.selector {
        Selector::Latest => conn
            .query_row(
                "SELECT id FROM versions WHERE model_id = ?1 ORDER BY number DESC LIMIT 1",
                [model_id],
                |row| row.get(0),
            )
            .optional()?,
        Selector::Number(n) => conn
            .query_row(
                "SELECT id FROM versions WHERE model_id = ?1 AND number = ?2",
                params![model_id, n],
                |row| row.get(0),
            )
            .optional()?,
        Selector::Alias(a) => conn
            .query_row(
                "SELECT version_id FROM aliases WHERE model_id = ?1 AND alias = ?2",
                params![model_id, a],
                |row| row.get(0),
            )
            .optional()?,
    };
    if let Some(id) = found {
        return Ok((id, model_id));
    }
    let err = match &r.selector {
        Selector::Latest => unknown_model(conn, &r.name)?,
        Selector::Number(n) => {
            let mut stmt =
                conn.prepare("SELECT number FROM versions WHERE model_id = ?1 ORDER BY number")?;
            let known = stmt
                .query_map([model_id], |row| row.get::<_, u32>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            RegistryError::UnknownVersion {
                name: r.name.clone(),
                number: *n,
                known,
            }
        }
        Selector::Alias(a) => {
            let mut stmt =
                conn.prepare("SELECT alias FROM aliases WHERE model_id = ?1 ORDER BY alias")?;
            let known = stmt
                .query_map([model_id], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            RegistryError::UnknownAlias {
                name: r.name.clone(),
                alias: a.clone(),
                known,
            }
        }
    };
    Err(Lookup::Registry(err))
}
