//! Versions, references, aliases, deletion, concurrency, permissions and migrations.

use super::*;

fn model(bias: f32) -> Payload {
    Payload::Native(Box::new(crate::test_fixtures::tiny_dense(Some(bias))))
}

fn info(acc: f64) -> VersionInfo {
    VersionInfo {
        params: serde_json::json!({"model": "linear"}),
        metrics: serde_json::json!({"accuracy": acc}),
        fit_seconds: Some(0.5),
        dataset: Some(DatasetInfo {
            sha256: "ab".repeat(32),
            rows: 10,
            columns: 3,
            feature_stats: serde_json::json!([{"name": "a", "mean": 1.0}]),
        }),
        ..VersionInfo::default()
    }
}

fn reference(s: &str) -> ModelRef {
    s.parse().unwrap()
}

#[test]
fn references_parse() {
    assert_eq!(reference("iris").selector, Selector::Latest);
    assert_eq!(reference("iris@3").selector, Selector::Number(3));
    assert_eq!(
        reference("iris@production").selector,
        Selector::Alias("production".into())
    );
    assert_eq!(reference("iris@production").to_string(), "iris@production");
    for bad in [
        "",
        "@3",
        "iris@",
        "iris@0",
        "iris@99999999999",
        "a b",
        "iris@a b",
    ] {
        let e = bad.parse::<ModelRef>().unwrap_err();
        assert!(
            matches!(e, RegistryError::BadReference { .. }),
            "{bad}: {e}"
        );
    }
}

#[test]
fn versions_number_per_name_and_keep_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(dir.path().join("r.db")).unwrap();
    let v1 = reg.register("iris", model(0.5), info(0.9)).unwrap();
    let v2 = reg
        .register(
            "iris",
            model(1.5),
            VersionInfo {
                parent: Some(reference("iris@1")),
                ..info(0.95)
            },
        )
        .unwrap();
    let w1 = reg.register("wine", model(0.5), info(0.8)).unwrap();
    assert_eq!((v1.number, v2.number, w1.number), (1, 2, 1));
    assert_eq!(v2.parent.as_deref(), Some("iris@1"));
    assert_eq!(v1.metrics["accuracy"], 0.9);
    assert_eq!(v1.dataset.as_ref().unwrap().rows, 10);
    assert_eq!(v1.fit_seconds, Some(0.5));
    let bytes = reg.artifact_bytes(&v2).unwrap();
    let decoded = artifact::decode(&bytes).unwrap().model;
    assert_eq!(decoded.metadata.version, "2");
    assert_eq!(decoded.metadata.name, "iris");
    assert!(
        dir.path()
            .join("artifacts")
            .join(format!("{}.perch", v2.artifact_sha256))
            .is_file()
    );
    assert_eq!(reg.resolve(&reference("iris")).unwrap().number, 2);
    assert_eq!(reg.list().unwrap().len(), 3);
    drop(reg);
    let reg = Registry::open(dir.path().join("r.db")).unwrap();
    assert_eq!(reg.resolve(&reference("iris@1")).unwrap(), v1);
}

#[test]
fn aliases_tags_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(dir.path().join("r.db")).unwrap();
    reg.register("iris", model(0.5), info(0.9)).unwrap();
    reg.register("iris", model(1.5), info(0.95)).unwrap();
    reg.set_alias(&reference("iris@1"), "production").unwrap();
    assert_eq!(
        reg.resolve(&reference("iris@production")).unwrap().number,
        1
    );
    reg.set_alias(&reference("iris@2"), "production").unwrap();
    let v2 = reg.tag(&reference("iris@production"), "best").unwrap();
    assert_eq!((v2.number, v2.tags.clone()), (2, vec!["best".to_string()]));
    assert_eq!(v2.aliases, vec!["production".to_string()]);
    assert!(matches!(
        reg.resolve(&reference("nope")),
        Err(RegistryError::UnknownModel { known, .. }) if known == ["iris"]
    ));
    assert!(matches!(
        reg.resolve(&reference("iris@7")),
        Err(RegistryError::UnknownVersion { known, .. }) if known == [1, 2]
    ));
    assert!(matches!(
        reg.resolve(&reference("iris@staging")),
        Err(RegistryError::UnknownAlias { known, .. }) if known == ["production"]
    ));
    assert!(reg.set_alias(&reference("iris@1"), "latest").is_err());
    assert!(reg.register("bad name", model(0.0), info(0.0)).is_err());
}

#[test]
fn delete_removes_versions_aliases_and_unused_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(dir.path().join("r.db")).unwrap();
    let v1 = reg.register("iris", model(0.5), info(0.9)).unwrap();
    reg.register("iris", model(1.5), info(0.95)).unwrap();
    reg.set_alias(&reference("iris@1"), "staging").unwrap();
    let file = reg.artifact_path(&v1.artifact_sha256, v1.format);
    assert!(file.is_file());
    reg.delete(&reference("iris@staging")).unwrap();
    assert!(!file.is_file());
    assert!(reg.resolve(&reference("iris@staging")).is_err());
    assert_eq!(reg.resolve(&reference("iris")).unwrap().number, 2);
    // Numbers are never reused.
    assert_eq!(reg.next_number("iris").unwrap(), 3);
    reg.delete(&reference("iris")).unwrap();
    assert!(matches!(
        reg.resolve(&reference("iris")),
        Err(RegistryError::UnknownModel { .. })
    ));
    assert!(reg.delete(&reference("iris")).is_err());
}

#[test]
fn concurrent_writers_get_distinct_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    Registry::open(&db).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut reg = Registry::open(&db).unwrap();
                (0..3)
                    .map(|j| {
                        reg.register("iris", model((i * 3 + j) as f32), info(0.9))
                            .unwrap()
                            .number
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut numbers: Vec<u32> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=12).collect::<Vec<_>>());
}

#[cfg(unix)]
#[test]
fn the_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut reg = Registry::open(&db).unwrap();
    reg.register("iris", model(0.5), info(0.9)).unwrap();
    assert_eq!(mode(&db), 0o600);
    drop(reg);
    // A database made before (0644, as SQLite leaves it under a usual umask) is fixed.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let wal = dir.path().join("r.db-wal");
    std::fs::write(&wal, b"").unwrap();
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
    Registry::open(&db).unwrap();
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&wal), 0o600);
}

#[test]
fn damaged_artifact_and_newer_schema_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut reg = Registry::open(&db).unwrap();
    let v = reg.register("iris", model(0.5), info(0.9)).unwrap();
    std::fs::write(reg.artifact_path(&v.artifact_sha256, v.format), b"junk").unwrap();
    assert!(matches!(
        reg.artifact_bytes(&v),
        Err(RegistryError::ArtifactDamaged { .. })
    ));
    reg.conn
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(reg);
    assert!(matches!(
        Registry::open(&db),
        Err(RegistryError::SchemaTooNew { .. })
    ));
}

#[test]
fn a_layout_1_database_gains_data_files_and_fleet_tables_and_keeps_its_versions() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reg.db");
    let mut reg = Registry::open(&db).unwrap();
    reg.register("iris", model(0.5), info(0.9)).unwrap();
    // Make it a layout-1 database, as perch 0.1's first registry wrote it.
    reg.conn
        .execute_batch(
            "ALTER TABLE versions DROP COLUMN data_files; DROP TABLE latency_bucket_totals; DROP TABLE latency_totals; DROP TABLE feedback_samples; DROP TABLE rollouts; DROP TABLE alerts; DROP TABLE events; DROP TABLE metrics;
             DROP TABLE epochs; DROP TABLE assignments; DROP TABLE counters; DROP TABLE push_targets; DROP TABLE pushes; DROP TABLE devices;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    drop(reg);
    let mut reg = Registry::open(&db).unwrap();
    let found: i64 = reg
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(found, SCHEMA_VERSION);
    let old = reg.resolve(&reference("iris@1")).unwrap();
    assert_eq!(old.data_files, None);
    let files = serde_json::json!({"train": {"path": "/data/iris.csv", "sha256": "ab"}});
    let mut with_files = info(0.95);
    with_files.data_files = Some(files.clone());
    let v = reg.register("iris", model(0.6), with_files).unwrap();
    assert_eq!(v.number, 2);
    assert_eq!(
        reg.resolve(&reference("iris@2")).unwrap().data_files,
        Some(files)
    );
}
