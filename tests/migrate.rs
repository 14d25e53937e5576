//! Migrations per bind, on SQLite (files), PostgreSQL and MariaDB: order, idempotence, edited
//! migrations, failures that must leave no lock behind, and two migrators racing.
//!
//! Every test makes fresh databases of its own (a PostgreSQL or MariaDB database, or a SQLite
//! file) and the migration files it needs in a temporary directory, and checks its claims on the
//! server: `_sqlx_migrations`, `pg_locks`, MariaDB's `IS_USED_LOCK`, the SQLite lock file.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Kind, MYSQL_DEFAULT, MYSQL_ENV, PG_DEFAULT, PG_ENV, eventually, server_url, sql};
use dbscope::{
    BindConfig, BindManager, BindOutcome, Engine, ErrorKind, MigrateEvent, MigrationSource,
    MigrationState, Migrations,
};
use sqlx::Connection;

/// The databases of one test, and a directory for its migration files.
struct Fresh {
    kind: Kind,
    tag: String,
    /// One URL per database, in order.
    urls: Vec<String>,
    names: Vec<String>,
    admin: Option<String>,
    dir: PathBuf,
}

impl Fresh {
    async fn new(kind: Kind, databases: usize) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "dbscope_m_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let names: Vec<String> = (0..databases).map(|i| format!("{tag}_{i}")).collect();
        let admin = match kind {
            Kind::Postgres => Some(server_url(PG_ENV, PG_DEFAULT)),
            Kind::MySql => Some(server_url(MYSQL_ENV, MYSQL_DEFAULT)),
            Kind::SqliteFile | Kind::SqliteMemory => None,
        };
        let urls = match &admin {
            Some(admin) => {
                let mut conn = any(admin).await;
                for name in &names {
                    sqlx::raw_sql(sql(format!("CREATE DATABASE {name}")))
                        .execute(&mut conn)
                        .await
                        .expect("create test database");
                }
                conn.close().await.ok();
                names.iter().map(|n| with_database(admin, n)).collect()
            }
            None => names
                .iter()
                .map(|n| format!("sqlite://{}", dir.join(format!("{n}.db")).display()))
                .collect(),
        };
        Self {
            kind,
            tag,
            urls,
            names,
            admin,
            dir,
        }
    }

    /// A bind config on database `i`, its migrations in directory `migrations/<i>`.
    fn bind(&self, i: usize) -> BindConfig {
        let mut config = BindConfig::new(self.urls[i].as_str())
            .acquire_timeout(Duration::from_secs(20))
            .migrations(self.migrations_dir(i));
        // The racing test holds SQLite's write lock while a migrator waits for it.
        config.connect.sqlite.busy_timeout = Some(Duration::from_secs(120));
        config
    }

    fn migrations_dir(&self, i: usize) -> PathBuf {
        let dir = self.dir.join(format!("migrations{i}"));
        std::fs::create_dir_all(&dir).expect("migrations dir");
        dir
    }

    /// Writes migration `file` (such as `1_users.sql`) for database `i`.
    fn write(&self, i: usize, file: &str, text: &str) -> PathBuf {
        let path = self.migrations_dir(i).join(file);
        std::fs::write(&path, text).expect("write migration");
        path
    }

    /// A connection to database `i`, outside dbscope, for the server-side facts.
    async fn probe(&self, i: usize) -> sqlx::AnyConnection {
        match self.kind {
            Kind::SqliteFile => any(&format!("{}?mode=rwc", self.urls[i])).await,
            _ => any(&self.urls[i]).await,
        }
    }

    async fn count(&self, i: usize, query: &str) -> i64 {
        let mut conn = self.probe(i).await;
        let n: i64 = sqlx::query_scalar(sql(query.to_owned()))
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        conn.close().await.ok();
        n
    }

    /// Whether table `name` exists in database `i`.
    async fn has_table(&self, i: usize, name: &str) -> bool {
        let query = match self.kind {
            Kind::Postgres => format!(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '{name}' \
                 AND table_schema = 'public'"
            ),
            Kind::MySql => format!(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '{name}' \
                 AND table_schema = DATABASE()"
            ),
            _ => format!(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{name}'"
            ),
        };
        self.count(i, &query).await == 1
    }

    /// Rows of `_sqlx_migrations` in database `i` that finished.
    async fn recorded(&self, i: usize) -> i64 {
        let success = if self.kind == Kind::Postgres {
            "success"
        } else {
            "success = 1"
        };
        self.count(
            i,
            &format!("SELECT COUNT(*) FROM _sqlx_migrations WHERE {success}"),
        )
        .await
    }

    /// Whether anyone holds database `i`'s migration lock, asked of the server (PostgreSQL's
    /// `pg_locks`, MariaDB's `IS_USED_LOCK`) or of the OS (the SQLite lock file).
    async fn lock_held(&self, i: usize) -> bool {
        let name = &self.names[i];
        match self.kind {
            Kind::Postgres => {
                let query = format!(
                    "SELECT COUNT(*) FROM pg_locks l JOIN pg_database d ON l.database = d.oid \
                     WHERE l.locktype = 'advisory' AND d.datname = '{name}'"
                );
                self.count(i, &query).await > 0
            }
            Kind::MySql => {
                let query = format!(
                    "SELECT COUNT(*) FROM (SELECT IS_USED_LOCK('{:x}') AS holder) t \
                     WHERE holder IS NOT NULL",
                    lock_id(name)
                );
                self.count(i, &query).await > 0
            }
            _ => {
                let path = format!("{}-migrate.lock", self.sqlite_path(i).display());
                match std::fs::File::open(&path) {
                    Err(_) => false, // never taken
                    Ok(file) => match file.try_lock() {
                        Ok(()) => false,
                        Err(std::fs::TryLockError::WouldBlock) => true,
                        Err(e) => panic!("probing {path}: {e:?}"),
                    },
                }
            }
        }
    }

    /// Advisory locks waited for on PostgreSQL database `i`.
    async fn pg_lock_waiters(&self, i: usize) -> i64 {
        let query = format!(
            "SELECT COUNT(*) FROM pg_locks l JOIN pg_database d ON l.database = d.oid \
             WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = '{}'",
            self.names[i]
        );
        self.count(i, &query).await
    }

    fn sqlite_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.db", self.names[i]))
    }

    async fn finish(self) {
        if let Some(admin) = &self.admin {
            let mut conn = any(admin).await;
            for name in &self.names {
                let drop = match self.kind {
                    Kind::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    _ => format!("DROP DATABASE IF EXISTS {name}"),
                };
                sqlx::raw_sql(sql(drop))
                    .execute(&mut conn)
                    .await
                    .expect("drop test database");
            }
            conn.close().await.ok();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = &self.tag;
    }
}

async fn any(url: &str) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("the test server cannot be reached ({e}); see tests/common"))
}

/// `admin` with its database replaced by `name`.
fn with_database(admin: &str, name: &str) -> String {
    let mut url = url::Url::parse(admin).expect("server url");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// sqlx's migration lock id for a database (sqlx-mysql names the lock with it in hex).
fn lock_id(database: &str) -> i64 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC.checksum(database.as_bytes()))
}

/// A plan whose events land, as short lines, in the returned log.
fn logged(plan: Migrations, who: &'static str) -> (Migrations, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let plan = plan.on_event(move |event| {
        let line = match event {
            MigrateEvent::BindStarted { bind, .. } => format!("{who}{bind} start"),
            MigrateEvent::WaitingForLock { bind } => format!("{who}{bind} waiting"),
            MigrateEvent::MigrationStarted { bind, version, .. } => {
                format!("{who}{bind} {version} start")
            }
            MigrateEvent::MigrationFinished { bind, version, .. } => {
                format!("{who}{bind} {version} done")
            }
            MigrateEvent::BindFinished {
                bind, done, error, ..
            } => format!("{who}{bind} finish {done} {}", error.is_some()),
            other => format!("{other:?}"),
        };
        sink.lock().unwrap().push(line);
    });
    (plan, log)
}

fn lines(log: &Mutex<Vec<String>>) -> Vec<String> {
    log.lock().unwrap().clone()
}

// ----- the tests -----

/// Bind `a` migrates after `b` (`migrate_after`), against name order; a second run applies
/// nothing; the pools were never used (the migrations ran on connections of their own).
async fn two_binds_migrate_in_order_and_a_second_run_applies_nothing(kind: Kind) {
    let db = Fresh::new(kind, 2).await;
    db.write(
        0,
        "1_users.sql",
        "CREATE TABLE users (id BIGINT PRIMARY KEY)",
    );
    db.write(
        0,
        "2_user_names.sql",
        "ALTER TABLE users ADD COLUMN name VARCHAR(50)",
    );
    db.write(
        1,
        "1_orders.sql",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY)",
    );
    let manager = BindManager::builder()
        .bind("a", db.bind(0).migrate_after(["b"]))
        .bind("b", db.bind(1))
        .build()
        .unwrap();

    let (plan, log) = logged(Migrations::new(), "");
    let report = manager.migrate_all(&plan).await.expect("migrate");
    let order: Vec<&str> = report.binds.iter().map(|b| b.bind.as_str()).collect();
    assert_eq!(order, ["b", "a"]);
    assert_eq!(
        lines(&log),
        [
            "b start",
            "b 1 start",
            "b 1 done",
            "b finish 1 false",
            "a start",
            "a 1 start",
            "a 1 done",
            "a 2 start",
            "a 2 done",
            "a finish 2 false"
        ]
    );
    let a = report.bind("a").unwrap();
    assert_eq!(a.done.iter().map(|m| m.version).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(a.done[1].description, "user names");
    assert!(a.done[0].file.as_ref().unwrap().ends_with("1_users.sql"));
    assert!(db.has_table(0, "users").await && db.has_table(1, "orders").await);
    assert_eq!((db.recorded(0).await, db.recorded(1).await), (2, 1));
    for status in manager.status() {
        assert_eq!(
            status.opened, 0,
            "bind `{}`: its pool was used",
            status.name
        );
    }

    let (plan, log) = logged(Migrations::new(), "");
    let again = manager.migrate_all(&plan).await.expect("migrate again");
    assert_eq!(again.done(), 0);
    let already: Vec<usize> = again.binds.iter().map(|b| b.already_applied).collect();
    assert_eq!(already, [1, 2]);
    assert_eq!(
        lines(&log),
        ["b start", "b finish 0 false", "a start", "a finish 0 false"]
    );
    assert_eq!((db.recorded(0).await, db.recorded(1).await), (2, 1));
    db.finish().await;
}

/// A migration changed after it was applied stops the run before anything else is applied,
/// naming the version and the file; status calls it edited.
async fn an_edited_migration_is_refused(kind: Kind) {
    let db = Fresh::new(kind, 1).await;
    let first = db.write(
        0,
        "1_users.sql",
        "CREATE TABLE users (id BIGINT PRIMARY KEY)",
    );
    let manager = BindManager::builder()
        .bind("main", db.bind(0))
        .build()
        .unwrap();
    manager.migrate_all(&Migrations::new()).await.unwrap();

    std::fs::write(
        &first,
        "CREATE TABLE users (id BIGINT PRIMARY KEY, extra INT)",
    )
    .unwrap();
    db.write(
        0,
        "2_orders.sql",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY)",
    );
    let err = manager.migrate_all(&Migrations::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MigrationEdited, "{err}");
    assert_eq!(err.bind(), Some("main"));
    assert_eq!(err.migration_version(), Some(1));
    assert!(err.migration_file().unwrap().ends_with("1_users.sql"));
    assert!(err.to_string().contains("1_users.sql"), "{err}");
    assert!(!db.has_table(0, "orders").await, "nothing may be applied");
    assert_eq!(db.recorded(0).await, 1);

    let status = manager.migration_status(&Migrations::new()).await.unwrap();
    let states: Vec<MigrationState> = status[0].migrations.iter().map(|m| m.state).collect();
    assert_eq!(states, [MigrationState::Edited, MigrationState::Pending]);
    db.finish().await;
}

/// A migration that fails leaves no migration lock held on the server, and the next run,
/// under a timeout, applies the fixed migration.
async fn a_failed_migration_leaves_no_lock_and_the_next_run_does_not_hang(kind: Kind) {
    let db = Fresh::new(kind, 1).await;
    db.write(
        0,
        "1_users.sql",
        "CREATE TABLE users (id BIGINT PRIMARY KEY)",
    );
    let broken = db.write(0, "2_broken.sql", "THIS IS NOT SQL");
    let manager = BindManager::builder()
        .bind("main", db.bind(0))
        .build()
        .unwrap();

    let report = Migrations::new().apply(&manager).await.unwrap();
    let main = report.bind("main").unwrap();
    let err = main.error().expect("migration 2 fails");
    assert_eq!(err.kind(), ErrorKind::MigrationFailed, "{err}");
    assert_eq!(err.migration_version(), Some(2));
    assert!(err.migration_file().unwrap().ends_with("2_broken.sql"));
    assert!(
        std::error::Error::source(err).is_some(),
        "the driver's error is the source"
    );
    assert_eq!(main.done.len(), 1, "migration 1 stays applied");
    eventually(
        "the failed migrator's lock is released on the server",
        || async { !db.lock_held(0).await },
    )
    .await;
    assert_eq!(
        manager.status()[0].opened,
        0,
        "no pooled connection was used"
    );

    std::fs::write(&broken, "CREATE TABLE fixed (id BIGINT PRIMARY KEY)").unwrap();
    let next = tokio::time::timeout(
        Duration::from_secs(60),
        manager.migrate_all(&Migrations::new()),
    )
    .await
    .expect("the next run must not wait for a stranded lock")
    .expect("the fixed migration applies");
    assert_eq!(next.done(), 1);
    assert!(db.has_table(0, "fixed").await);
    assert!(
        !db.lock_held(0).await,
        "released after a successful run too"
    );
    db.finish().await;
}

/// Two managers migrate one database at once: one applies, the other waits for the lock (it
/// says so) and then applies nothing; migration 1 ran exactly once on the server.
async fn two_migrators_at_once_apply_once(kind: Kind) {
    race(kind, Engine::Native).await;
}

/// The same with `engine = "any"` binds, whose lock dbscope takes itself rather than through
/// sqlx's `Any` lock: on MariaDB that is sqlx-mysql's `GET_LOCK(name, -1)`, which returns
/// NULL at once when the lock is held, so that neither would ever wait.
async fn two_any_engine_migrators_at_once_apply_once(kind: Kind) {
    race(kind, Engine::Any).await;
}

async fn race(kind: Kind, engine: Engine) {
    let db = Fresh::new(kind, 1).await;
    // The first migration blocks on a gate the test holds, so that both are surely running
    // when the test lets go: an UPDATE of a row the test has locked.
    let mut gate = db.probe(0).await;
    sqlx::raw_sql("CREATE TABLE gate (n BIGINT); INSERT INTO gate VALUES (0)")
        .execute(&mut gate)
        .await
        .unwrap();
    let hold = match kind {
        Kind::SqliteFile => "BEGIN IMMEDIATE",
        _ => "BEGIN; SELECT n FROM gate FOR UPDATE",
    };
    sqlx::raw_sql(hold).execute(&mut gate).await.unwrap();
    db.write(0, "1_gated.sql", "UPDATE gate SET n = n + 1");
    db.write(0, "2_after.sql", "CREATE TABLE after_gate (id BIGINT)");

    let one = BindManager::builder()
        .bind("main", db.bind(0).engine(engine))
        .build()
        .unwrap();
    let two = BindManager::builder()
        .bind("main", db.bind(0).engine(engine))
        .build()
        .unwrap();
    let (plan1, log1) = logged(Migrations::new(), "1:");
    let (plan2, log2) = logged(Migrations::new(), "2:");
    let first = tokio::spawn(async move { one.migrate_all(&plan1).await });
    let second = tokio::spawn(async move { two.migrate_all(&plan2).await });

    eventually("one migrator waits for the other's lock", || async {
        lines(&log1)
            .iter()
            .chain(lines(&log2).iter())
            .any(|l| l.ends_with("waiting"))
    })
    .await;
    if kind == Kind::Postgres {
        assert_eq!(
            db.pg_lock_waiters(0).await,
            1,
            "pg_locks shows the waiting migrator"
        );
    }
    assert!(db.lock_held(0).await);
    sqlx::raw_sql("COMMIT").execute(&mut gate).await.unwrap();
    gate.close().await.ok();

    let reports = [
        first.await.unwrap().expect("migrator 1"),
        second.await.unwrap().expect("migrator 2"),
    ];
    let mut done: Vec<usize> = reports.iter().map(|r| r.done()).collect();
    done.sort_unstable();
    assert_eq!(done, [0, 2], "exactly one applies");
    let waiter = if lines(&log1).iter().any(|l| l.ends_with("waiting")) {
        0
    } else {
        1
    };
    assert_eq!(
        reports[waiter].done(),
        0,
        "the one that waited applies nothing"
    );
    assert_eq!(reports[waiter].binds[0].already_applied, 2);
    assert_eq!(
        db.count(0, "SELECT n FROM gate").await,
        1,
        "migration 1 ran once"
    );
    assert_eq!(db.recorded(0).await, 2);
    db.finish().await;
}

/// A dry run changes nothing (no `_sqlx_migrations` even); a target stops at its version;
/// revert undoes with the down migrations, the latest first, or down to a target.
async fn dry_run_target_and_revert(kind: Kind) {
    let db = Fresh::new(kind, 1).await;
    db.write(
        0,
        "1_users.up.sql",
        "CREATE TABLE users (id BIGINT PRIMARY KEY)",
    );
    db.write(0, "1_users.down.sql", "DROP TABLE users");
    db.write(
        0,
        "2_orders.up.sql",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY)",
    );
    db.write(0, "2_orders.down.sql", "DROP TABLE orders");
    let manager = BindManager::builder()
        .bind("main", db.bind(0))
        .build()
        .unwrap();

    let dry = Migrations::new()
        .dry_run(true)
        .apply(&manager)
        .await
        .unwrap();
    assert!(dry.dry_run);
    let would: Vec<i64> = dry.binds[0].done.iter().map(|m| m.version).collect();
    assert_eq!(would, [1, 2]);
    assert!(
        !db.has_table(0, "_sqlx_migrations").await,
        "a dry run creates nothing"
    );

    let to_one = manager
        .migrate_all(&Migrations::new().target(1))
        .await
        .unwrap();
    assert_eq!(to_one.done(), 1);
    assert_eq!(to_one.binds[0].pending[0].version, 2);
    assert!(db.has_table(0, "users").await && !db.has_table(0, "orders").await);
    let err = manager
        .migrate_all(&Migrations::new().target(7))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MigrationSource, "{err}");

    manager.migrate_all(&Migrations::new()).await.unwrap();
    let status = manager.migration_status(&Migrations::new()).await.unwrap();
    assert!(
        status[0]
            .migrations
            .iter()
            .all(|m| m.state == MigrationState::Applied && m.reversible)
    );

    let (plan, log) = logged(Migrations::new(), "");
    let reverted = manager.revert_migrations(&plan).await.unwrap();
    assert_eq!(reverted.binds[0].done[0].version, 2, "the latest first");
    assert!(lines(&log).contains(&"main 2 start".to_owned()));
    assert!(!db.has_table(0, "orders").await && db.has_table(0, "users").await);
    manager
        .revert_migrations(&Migrations::new().target(0))
        .await
        .unwrap();
    assert!(!db.has_table(0, "users").await);
    let status = manager.migration_status(&Migrations::new()).await.unwrap();
    assert_eq!(status[0].count(MigrationState::Pending), 2);
    assert_eq!(db.recorded(0).await, 0);
    db.finish().await;
}

/// A migration recorded as applied whose file is gone: status calls it missing, and migrating
/// refuses before applying anything, naming the version and how to fix it.
async fn a_migration_missing_from_the_source_is_refused(kind: Kind) {
    let db = Fresh::new(kind, 1).await;
    db.write(
        0,
        "1_users.sql",
        "CREATE TABLE users (id BIGINT PRIMARY KEY)",
    );
    let second = db.write(
        0,
        "2_orders.sql",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY)",
    );
    let manager = BindManager::builder()
        .bind("main", db.bind(0))
        .build()
        .unwrap();
    manager.migrate_all(&Migrations::new()).await.unwrap();

    std::fs::remove_file(&second).unwrap();
    db.write(0, "3_more.sql", "CREATE TABLE more (id BIGINT)");
    let status = manager.migration_status(&Migrations::new()).await.unwrap();
    let states: Vec<(i64, MigrationState)> = status[0]
        .migrations
        .iter()
        .map(|m| (m.migration.version, m.state))
        .collect();
    assert_eq!(
        states,
        [
            (1, MigrationState::Applied),
            (2, MigrationState::Missing),
            (3, MigrationState::Pending)
        ]
    );

    let err = manager.migrate_all(&Migrations::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MigrationMissing, "{err}");
    assert_eq!(err.bind(), Some("main"));
    assert_eq!(err.migration_version(), Some(2));
    let message = err.to_string();
    assert!(
        message.contains("migration 2") && message.contains("restore its file"),
        "{message}"
    );
    assert!(!db.has_table(0, "more").await, "nothing may be applied");
    assert_eq!(db.recorded(0).await, 2);
    db.finish().await;
}

/// On MariaDB a migration that fails after a DDL statement (committed at once) stays recorded
/// as unfinished: status calls it dirty, migrating refuses with `MigrationDirty` naming the
/// version and the fix, and the fix it names (undo by hand, delete the row) works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_a_migration_failing_after_ddl_is_dirty_until_fixed() {
    common::within_limit("dirty", async {
        let db = Fresh::new(Kind::MySql, 1).await;
        db.write(
            0,
            "1_users.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY)",
        );
        let half = db.write(
            0,
            "2_half.sql",
            "CREATE TABLE half (id BIGINT); THIS IS NOT SQL",
        );
        let manager = BindManager::builder()
            .bind("main", db.bind(0))
            .build()
            .unwrap();
        let err = manager.migrate_all(&Migrations::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MigrationFailed, "{err}");
        assert_eq!(err.migration_version(), Some(2));
        assert!(db.has_table(0, "half").await, "MariaDB committed the DDL");
        let unfinished = "SELECT COUNT(*) FROM _sqlx_migrations WHERE version = 2 AND NOT success";
        assert_eq!(db.count(0, unfinished).await, 1, "recorded as unfinished");

        let status = manager.migration_status(&Migrations::new()).await.unwrap();
        let states: Vec<MigrationState> = status[0].migrations.iter().map(|m| m.state).collect();
        assert_eq!(states, [MigrationState::Applied, MigrationState::Dirty]);

        let err = manager.migrate_all(&Migrations::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MigrationDirty, "{err}");
        assert_eq!(err.bind(), Some("main"));
        assert_eq!(err.migration_version(), Some(2));
        let message = err.to_string();
        assert!(
            message.contains("migration 2") && message.contains("delete its row (version = 2)"),
            "{message}"
        );
        assert!(!db.lock_held(0).await, "the refusal leaves no lock behind");

        // The fix the message names.
        let mut conn = db.probe(0).await;
        sqlx::raw_sql("DROP TABLE half; DELETE FROM _sqlx_migrations WHERE version = 2")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        std::fs::write(&half, "CREATE TABLE half (id BIGINT)").unwrap();
        let fixed = manager.migrate_all(&Migrations::new()).await.unwrap();
        assert_eq!(fixed.done(), 1);
        assert_eq!(db.recorded(0).await, 2);
        db.finish().await;
    })
    .await;
}

/// An `engine = "any"` bind on SQLite takes the same lock file as a native one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_any_engine_sqlite_bind_takes_the_lock_file() {
    common::within_limit("any sqlite lock", async {
        let db = Fresh::new(Kind::SqliteFile, 1).await;
        db.write(0, "1_users.sql", "CREATE TABLE users (id BIGINT)");
        // The test holds the lock file, as a native migrator would, while the `Any` one starts.
        let path = format!("{}-migrate.lock", db.sqlite_path(0).display());
        let file = std::fs::File::create(&path).unwrap();
        file.lock().unwrap();
        let manager = BindManager::builder()
            .bind(
                "main",
                BindConfig::new(db.urls[0].as_str())
                    .engine(Engine::Any)
                    .migrations(db.migrations_dir(0)),
            )
            .build()
            .unwrap();
        let (plan, log) = logged(Migrations::new(), "");
        let run = tokio::spawn(async move { manager.migrate_all(&plan).await });
        eventually("the Any migrator waits for the lock file", || async {
            lines(&log).iter().any(|l| l.ends_with("waiting"))
        })
        .await;
        assert!(
            !db.has_table(0, "users").await,
            "nothing applied while it waits"
        );
        drop(file);
        let report = run.await.unwrap().expect("migrates once the lock is free");
        assert_eq!(report.done(), 1);
        db.finish().await;
    })
    .await;
}

/// A SQLite URL naming a file that does not exist yet (a fresh checkout, or a typo): the status
/// and a dry run, which change nothing, call every migration pending without making the file
/// (an empty database is what is there); a real run makes it, as sqlx would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_dry_run_make_no_sqlite_file() {
    common::within_limit("status makes no file", async {
        let dir = std::env::temp_dir().join(format!("dbscope-no-file-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("migrations")).unwrap();
        std::fs::write(dir.join("migrations/1_t.sql"), "CREATE TABLE t (id BIGINT)").unwrap();
        let file = dir.join("typo.db");
        let manager = BindManager::builder()
            .bind(
                "main",
                BindConfig::new(format!("sqlite://{}", file.display()).as_str())
                    .migrations(dir.join("migrations")),
            )
            .build()
            .unwrap();
        let status = manager.migration_status(&Migrations::new()).await.unwrap();
        assert!(status[0].error.is_none(), "{:?}", status[0].error);
        assert_eq!(status[0].migrations.len(), 1);
        assert!(
            status[0]
                .migrations
                .iter()
                .all(|m| m.state == MigrationState::Pending),
            "{:?}",
            status[0].migrations
        );
        assert!(!file.exists(), "status made no file");
        let dry = manager
            .migrate_all(&Migrations::new().dry_run(true))
            .await
            .unwrap();
        assert_eq!(dry.done(), 1, "the dry run would apply it");
        assert!(!file.exists(), "a dry run made no file");
        let report = manager.migrate_all(&Migrations::new()).await.unwrap();
        assert_eq!(report.done(), 1);
        assert!(file.exists(), "a real run makes the database");
        manager.close(Duration::from_secs(5)).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await;
}

/// A directory source follows the project's `sqlx.toml` where it describes that directory, as
/// `sqlx::migrate!` and sqlx-cli do: its table (`table-name`), its checksums (`ignored-chars`).
/// A directory it does not describe keeps sqlx's defaults; a malformed one is refused, named.
async fn a_sqlx_toml_describing_the_directory_is_followed(kind: Kind) {
    let db = Fresh::new(kind, 2).await;
    std::fs::write(
        db.dir.join("sqlx.toml"),
        "[migrate]\ntable-name = \"app_migrations\"\nmigrations-dir = \"migrations0\"\n\
         ignored-chars = [\"\\r\"]\n",
    )
    .unwrap();
    let users = db.write(
        0,
        "1_users.sql",
        "CREATE TABLE users (id BIGINT PRIMARY KEY);\r\n",
    );
    db.write(
        1,
        "1_orders.sql",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY);\r\n",
    );
    let manager = BindManager::builder()
        .bind("described", db.bind(0))
        .bind("other", db.bind(1))
        .build()
        .unwrap();
    let report = manager.migrate_all(&Migrations::new()).await.unwrap();
    assert_eq!(report.done(), 2);
    assert!(db.has_table(0, "users").await);
    assert!(db.has_table(0, "app_migrations").await, "sqlx.toml's table");
    assert!(!db.has_table(0, "_sqlx_migrations").await);
    assert!(
        db.has_table(1, "_sqlx_migrations").await,
        "not described: sqlx's table"
    );
    assert!(!db.has_table(1, "app_migrations").await);

    // With `\r` ignored, the file's checksum is its LF copy's, as sqlx-cli records it.
    std::fs::write(&users, "CREATE TABLE users (id BIGINT PRIMARY KEY);\n").unwrap();
    let status = manager.migration_status(&Migrations::new()).await.unwrap();
    let described = status.iter().find(|b| b.bind == "described").unwrap();
    assert!(described.error.is_none(), "{:?}", described.error);
    let states: Vec<MigrationState> = described.migrations.iter().map(|m| m.state).collect();
    assert_eq!(states, [MigrationState::Applied]);

    std::fs::write(db.dir.join("sqlx.toml"), "[migrate]\ntable-name = 7\n").unwrap();
    let err = manager.migrate_all(&Migrations::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MigrationSource, "{err}");
    // Both directories lie under it: neither can tell whether it is described.
    assert!(matches!(err.bind(), Some("described" | "other")), "{err}");
    assert!(err.to_string().contains("sqlx.toml"), "{err}");
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

macro_rules! on_every_backend {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::common::within_limit(stringify!($name), super::$name(crate::Kind::SqliteFile)).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::common::within_limit(stringify!($name), super::$name(crate::Kind::Postgres)).await;
                }
            )+
        }
        mod mariadb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::common::within_limit(stringify!($name), super::$name(crate::Kind::MySql)).await;
                }
            )+
        }
    };
}

on_every_backend!(
    two_binds_migrate_in_order_and_a_second_run_applies_nothing,
    an_edited_migration_is_refused,
    a_failed_migration_leaves_no_lock_and_the_next_run_does_not_hang,
    two_migrators_at_once_apply_once,
    dry_run_target_and_revert,
    a_migration_missing_from_the_source_is_refused,
    a_sqlx_toml_describing_the_directory_is_followed,
);

/// `engine = "any"` binds on the servers (SQLite: `an_any_engine_sqlite_bind_takes_the_lock_file`).
mod any_engine {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb_two_migrators_at_once_apply_once() {
        let body = super::two_any_engine_migrators_at_once_apply_once(crate::Kind::MySql);
        crate::common::within_limit("any mariadb race", body).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_two_migrators_at_once_apply_once() {
        let body = super::two_any_engine_migrators_at_once_apply_once(crate::Kind::Postgres);
        crate::common::within_limit("any postgres race", body).await;
    }
}

// ----- without a server -----

/// A `migrate_after` cycle is refused before anything runs, naming the binds.
#[tokio::test]
async fn a_dependency_cycle_is_refused() {
    let manager = BindManager::builder()
        .bind("a", BindConfig::new("sqlite::memory:").migrate_after(["b"]))
        .bind("b", BindConfig::new("sqlite::memory:").migrate_after(["a"]))
        .build()
        .unwrap();
    let err = manager.migrate_all(&Migrations::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MigrationOrder);
    assert_eq!(err.known_binds(), ["a", "b", "a"]);
    assert!(err.is_config());
}

/// An embedded migrator's `create_schema` (sqlx's, for a table and migrations that live in a
/// schema of their own): made before the bookkeeping table, as sqlx's `Migrator::run` does, so
/// that a migrator that works with sqlx on a fresh database works through dbscope too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrators_schemas_are_made_first() {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    common::within_limit("a_migrators_schemas_are_made_first", async {
        let db = Fresh::new(Kind::Postgres, 1).await;
        let mut migrator = Migrator::with_migrations(vec![Migration::new(
            1,
            "notes".into(),
            MigrationType::Simple,
            "CREATE TABLE app.notes (body TEXT)".into_sql_str(),
            false,
        )]);
        migrator.create_schema("app");
        migrator.dangerous_set_table_name("app._sqlx_migrations");
        let manager = BindManager::builder()
            .bind("main", BindConfig::new(db.urls[0].as_str()))
            .build()
            .unwrap();
        let plan = Migrations::new().source("main", MigrationSource::Owned(Arc::new(migrator)));
        let report = manager.migrate_all(&plan).await.expect("the schema first");
        assert_eq!(report.done(), 1);
        let mut conn = any(&db.urls[0]).await;
        let tables: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'app'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(tables, 2, "app.notes and app._sqlx_migrations");
        conn.close().await.ok();
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

/// Migrations handed in code (as `sqlx::migrate!` embeds them) apply to an in-memory bind,
/// whose database outlives the dedicated connection; a bind without migrations is skipped; a
/// missing directory is a typed error naming it.
#[tokio::test]
async fn embedded_migrations_and_binds_without_any() {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let migrator = Migrator::with_migrations(vec![Migration::new(
        1,
        "notes".into(),
        MigrationType::Simple,
        "CREATE TABLE notes (body TEXT)".into_sql_str(),
        false,
    )]);
    let manager = BindManager::builder()
        .bind("main", BindConfig::new("sqlite::memory:"))
        .bind("plain", BindConfig::new("sqlite::memory:"))
        .bind(
            "lost",
            BindConfig::new("sqlite::memory:").migrations("/nonexistent/dbscope"),
        )
        .build()
        .unwrap();
    let plan = Migrations::new()
        .source("main", MigrationSource::Owned(Arc::new(migrator)))
        .bind("main")
        .bind("plain");
    let report = manager.migrate_all(&plan).await.unwrap();
    assert_eq!(report.bind("main").unwrap().done.len(), 1);
    assert!(matches!(
        report.bind("plain").unwrap().outcome,
        BindOutcome::NoMigrations
    ));
    let mut session = manager.session::<sqlx::Sqlite>("main").unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes")
        .fetch_one(&mut session)
        .await
        .expect("the table the migration made");
    assert_eq!(n, 0);

    let err = manager
        .migrate_all(&Migrations::new().bind("lost"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MigrationSource);
    assert!(err.to_string().contains("/nonexistent/dbscope"), "{err}");
}

/// `migrations` and `migrate_after` come from a config file like any other setting.
#[test]
fn migration_settings_load_from_toml() {
    let path = std::env::temp_dir().join(format!("dbscope_m_cfg_{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[binds.main]\nurl = \"sqlite::memory:\"\nmigrations = \"migrations/main\"\n\
         migrate_after = [\"accounts\"]\n[binds.accounts]\nurl = \"sqlite::memory:\"\n",
    )
    .unwrap();
    let config = dbscope::Config::from_file(&path).unwrap();
    std::fs::remove_file(&path).ok();
    let main = &config.binds["main"];
    assert_eq!(
        main.migrations.as_deref(),
        Some(Path::new("migrations/main"))
    );
    assert_eq!(main.migrate_after, ["accounts"]);
    assert!(config.binds["accounts"].migrations.is_none());
}
