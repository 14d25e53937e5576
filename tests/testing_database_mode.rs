//! The testing toolkit's database mode, through `#[dbscope::test]`, on PostgreSQL (a slot of a
//! migrated template, leased: see tests/testing_reuse.rs), MariaDB (created and migrated) and
//! SQLite (a file of its own): a test that fails still has its databases dropped (its slot
//! given back), two processes at once never collide, and databases left by a process that is
//! gone are dropped. The failing and concurrent tests run
//! as child processes of this binary (`child_uses_its_own_databases`, with `CHILD_OUT` set), and
//! this process checks the server afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{
    MYSQL_DEFAULT, MYSQL_ENV, PG_DEFAULT, PG_ENV, SLOT_PREFIX, server_url, slot_lease_holders, sql,
};
use dbscope::testing::{Mode, TestContext};
use sqlx::{Connection, Row};

/// Where a child writes its databases' names; set, the child fails on purpose unless
/// `CHILD_PASS` is set too.
const CHILD_OUT: &str = "DBSCOPE_TESTING_CHILD_OUT";
const CHILD_PASS: &str = "DBSCOPE_TESTING_CHILD_PASS";

/// Each bind has its own database, migrated and seeded, on every backend.
#[dbscope::test(
    mode = "database",
    config = "tests/testing/dbscope.toml",
    migrations(pg = "tests/testing/migrations", my = "tests/testing/migrations", lite = "tests/testing/migrations"),
    fixtures(pg = ["tests/testing/fixture.sql"], my = ["tests/testing/fixture.sql"], lite = ["tests/testing/fixture.sql"])
)]
async fn child_uses_its_own_databases(t: TestContext) -> Result<(), dbscope::Error> {
    let query = "SELECT body FROM notes WHERE id = 1";
    let pg = t
        .fetch_one::<sqlx::Postgres, _>("pg", sqlx::query(query))
        .await?;
    let my = t
        .fetch_one::<sqlx::MySql, _>("my", sqlx::query(query))
        .await?;
    let lite = t
        .fetch_one::<sqlx::Sqlite, _>("lite", sqlx::query(query))
        .await?;
    for body in [pg.get::<String, _>(0), my.get(0), lite.get(0)] {
        assert_eq!(body, "from the fixture");
    }
    let names: Vec<&str> = ["pg", "my", "lite"]
        .iter()
        .map(|bind| {
            assert_eq!(t.mode(bind), Some(Mode::Database));
            t.database(bind).expect("database mode names its database")
        })
        .collect();
    assert!(names[0].starts_with("dbscope_test_"), "{names:?}");
    if let Ok(out) = std::env::var(CHILD_OUT) {
        std::fs::write(out, names.join("\n")).expect("write the names");
        if std::env::var(CHILD_PASS).is_err() {
            panic!("failing on purpose");
        }
    }
    Ok(())
}

/// Runs `child_uses_its_own_databases` in a child process, which writes its databases to a
/// file; returns its output and those names.
fn run_child(tag: &str, pass: bool) -> (Output, Vec<String>) {
    let out = std::env::temp_dir().join(format!("dbscope_testing_{}_{tag}", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "child_uses_its_own_databases",
            "--exact",
            "--test-threads=1",
        ])
        .env(CHILD_OUT, &out);
    for (var, default, bind) in [(PG_ENV, PG_DEFAULT, "PG"), (MYSQL_ENV, MYSQL_DEFAULT, "MY")] {
        child.env(
            format!("DBSCOPE_BINDS__{bind}__URL"),
            server_url(var, default),
        );
    }
    if pass {
        child.env(CHILD_PASS, "1");
    }
    let output = child.output().expect("run the child test");
    let names = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    (output, names.lines().map(str::to_owned).collect())
}

async fn admin(var: &str, default: &str) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(&server_url(var, default))
        .await
        .expect("reach the test server")
}

/// Whether a slot's lease is still held once the server has caught up with the processes that
/// ended. The backend of a child that has exited may still hold the lease for a moment, until
/// the server notices the closed socket, and a child of a test running beside this one may
/// lease the same slot meanwhile (a clean CI run saw one or the other). So the lease counts as
/// held only if it is held throughout [`LEASE_SETTLES`], asked every 100 ms.
async fn slot_stays_leased(slot: &str) -> bool {
    let deadline = tokio::time::Instant::now() + LEASE_SETTLES;
    loop {
        if slot_lease_holders(slot).await.is_empty() {
            return false;
        }
        if tokio::time::Instant::now() >= deadline {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a slot's lease may take to be seen released after its holder ended.
const LEASE_SETTLES: Duration = Duration::from_secs(30);

/// Whether each server still holds a database of `names` (pg, my, lite in that order) for its
/// test. On PostgreSQL, a slot the test leased: whether its lease is still held (given back, the
/// slot stays for the next test); any other database: whether it exists.
async fn still_there(names: &[String]) -> Vec<bool> {
    let in_pg = if names[0].starts_with(SLOT_PREFIX) {
        slot_stays_leased(&names[0]).await
    } else {
        let mut pg = admin(PG_ENV, PG_DEFAULT).await;
        let query = format!(
            "SELECT COUNT(*) FROM pg_database WHERE datname = '{}'",
            names[0]
        );
        let count: i64 = sqlx::query_scalar(sql(query))
            .fetch_one(&mut pg)
            .await
            .unwrap();
        count == 1
    };
    let mut my = admin(MYSQL_ENV, MYSQL_DEFAULT).await;
    let query = format!(
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{}'",
        names[1]
    );
    let in_my: i64 = sqlx::query_scalar(sql(query))
        .fetch_one(&mut my)
        .await
        .unwrap();
    vec![in_pg, in_my == 1, Path::new(&names[2]).exists()]
}

fn stdout(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A pid that no process has now.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("true exits");
    pid
}

/// The toolkit's tag of this machine in test database names: FNV-1a of the host name, the
/// kernel's boot id and the pid namespace (the naming rule, written out again to pin it).
fn machine_tag() -> String {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let pid_namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|link| link.display().to_string())
        .unwrap_or_default();
    let seed = format!(
        "{}|{}|{pid_namespace}",
        read("/proc/sys/kernel/hostname").trim(),
        read("/proc/sys/kernel/random/boot_id").trim()
    );
    let hash = seed.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    format!("{hash:08x}")
}

/// A failing test's databases are dropped; so are the leftovers of a process of this machine
/// that is gone, never those of another machine sharing the server (its pids mean nothing here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_test_leaves_nothing_and_leftovers_are_dropped() {
    common::within_limit("failing_test_leaves_nothing", async {
        let dead = dead_pid();
        let machine = machine_tag();
        let leftover = format!("dbscope_test_{machine}_{dead}_0000abcd_0");
        let other = if machine == "00000000" {
            "00000001"
        } else {
            "00000000"
        };
        let theirs = format!("dbscope_test_{other}_{dead}_0000abcd_0");
        let mut pg = admin(PG_ENV, PG_DEFAULT).await;
        let mut my = admin(MYSQL_ENV, MYSQL_DEFAULT).await;
        for conn in [&mut pg, &mut my] {
            for name in [&leftover, &theirs] {
                sqlx::raw_sql(sql(format!("CREATE DATABASE {name}")))
                    .execute(&mut *conn)
                    .await
                    .expect("a leftover");
            }
        }
        let lite_leftover = std::env::temp_dir().join(format!("{leftover}.db"));
        std::fs::write(&lite_leftover, b"").unwrap();
        let lite_theirs = std::env::temp_dir().join(format!("{theirs}.db"));
        std::fs::write(&lite_theirs, b"").unwrap();

        let (output, names) = tokio::task::spawn_blocking(|| run_child("fails", false))
            .await
            .unwrap();
        let printed = stdout(&output);
        assert!(!output.status.success(), "the child failed: {printed}");
        assert!(printed.contains("failing on purpose"), "{printed}");
        assert_eq!(names.len(), 3, "{printed}");
        assert!(names[0].starts_with(SLOT_PREFIX), "a slot: {names:?}");
        assert_eq!(
            still_there(&names).await,
            [false, false, false],
            "{names:?}"
        );
        let leftovers = vec![
            leftover.clone(),
            leftover,
            lite_leftover.display().to_string(),
        ];
        assert_eq!(still_there(&leftovers).await, [false, false, false]);
        let others = vec![
            theirs.clone(),
            theirs.clone(),
            lite_theirs.display().to_string(),
        ];
        assert_eq!(
            still_there(&others).await,
            [true, true, true],
            "another machine's are left alone"
        );
        std::fs::remove_file(&lite_theirs).unwrap();
        for conn in [&mut pg, &mut my] {
            sqlx::raw_sql(sql(format!("DROP DATABASE {theirs}")))
                .execute(&mut *conn)
                .await
                .expect("dropping the other machine's");
        }
    })
    .await;
}

/// Two processes at once, each with databases of its own on the same servers (on PostgreSQL,
/// two slots of the same template).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_at_once_never_collide() {
    common::within_limit("two_processes_at_once_never_collide", async {
        let a = tokio::task::spawn_blocking(|| run_child("a", true));
        let b = tokio::task::spawn_blocking(|| run_child("b", true));
        let ((out_a, names_a), (out_b, names_b)) = (a.await.unwrap(), b.await.unwrap());
        assert!(out_a.status.success(), "{}", stdout(&out_a));
        assert!(out_b.status.success(), "{}", stdout(&out_b));
        assert_eq!((names_a.len(), names_b.len()), (3, 3));
        // On PostgreSQL the two may lease the same slot one after the other: the slots of
        // two leases held at once are compared in tests/testing_reuse.rs.
        for (a, b) in names_a.iter().zip(&names_b).skip(1) {
            assert_ne!(a, b, "each process names its own databases");
        }
        assert!(names_a[0].starts_with(SLOT_PREFIX), "{names_a:?}");
        assert!(names_b[0].starts_with(SLOT_PREFIX), "{names_b:?}");
        assert_eq!(still_there(&names_a).await, [false, false, false]);
        assert_eq!(still_there(&names_b).await, [false, false, false]);
        let mut pg = admin(PG_ENV, PG_DEFAULT).await;
        let templates: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_database WHERE datname LIKE 'dbscope\\_tpl\\_%' AND datistemplate",
        )
        .fetch_one(&mut pg)
        .await
        .unwrap();
        assert!(templates >= 1, "the template is built and kept");
    })
    .await;
}

/// `keep` (here through the builder) keeps the databases and says where they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_databases_stay() {
    common::within_limit("kept_databases_stay", async {
        let config = dbscope::Config::from_file("tests/testing/dbscope.toml").unwrap();
        let mut config = config;
        config.binds.retain(|name, _| name == "lite");
        let t = dbscope::testing::TestDb::builder()
            .config(config)
            .migrations("lite", PathBuf::from("tests/testing/migrations"))
            .keep(true)
            .start()
            .await
            .unwrap();
        assert_eq!(t.mode("lite"), Some(Mode::Database), "SQLite's default");
        let path = t.database("lite").unwrap().to_owned();
        t.finish().await.unwrap();
        assert!(Path::new(&path).exists());
        std::fs::remove_file(&path).unwrap();
    })
    .await;
}

/// MariaDB has no `DROP DATABASE … WITH (FORCE)`: a session the app kept past the test (in a
/// task, here leaked outright), its transaction open, would make the drop wait for its locks a
/// year. The toolkit ends such connections first: `finish` returns (reporting the close that
/// timed out), and the database is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_database_held_by_a_kept_session_is_dropped_all_the_same() {
    common::within_limit("a_mariadb_database_held_by_a_kept_session", async {
        let mut config = dbscope::Config::default();
        let url = server_url(MYSQL_ENV, MYSQL_DEFAULT);
        config
            .binds
            .insert("my".into(), dbscope::BindConfig::new(url));
        let t = dbscope::testing::TestDb::builder()
            .config(config)
            .mode(Mode::Database)
            .migrations("my", PathBuf::from("tests/testing/migrations"))
            .start()
            .await
            .unwrap();
        let name = t.database("my").unwrap().to_owned();
        let mut kept = t.manager().session::<sqlx::MySql>("my").unwrap();
        sqlx::query("INSERT INTO notes (id, body) VALUES (1, 'kept')")
            .execute(&mut kept)
            .await
            .unwrap();
        std::mem::forget(kept); // never ends: its connection stays, in its transaction
        let finished = t.finish().await;
        assert!(
            finished
                .as_ref()
                .is_err_and(|e| e.kind() == dbscope::ErrorKind::CloseTimedOut),
            "the close waited for the kept session: {finished:?}"
        );
        let still = vec![name.clone(), name, String::new()];
        assert!(!still_there(&still).await[1], "the database is gone");
    })
    .await;
}

/// Set in the process `a_failed_migration_leaves_no_database` runs itself in.
const ALONE: &str = "DBSCOPE_TESTING_ALONE";

/// A migration that fails: `start` reports it, naming the bind, and leaves no database behind
/// (MariaDB's was created before it was migrated; SQLite's file too). It counts the databases
/// of its process, so it runs in a process of its own: under `cargo test`, other tests of this
/// binary make databases in this one meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_leaves_no_database() {
    if std::env::var(ALONE).is_err() {
        let output = tokio::task::spawn_blocking(|| {
            Command::new(std::env::current_exe().unwrap())
                .args(["a_failed_migration_leaves_no_database", "--exact"])
                .env(ALONE, "1")
                .output()
                .expect("run the test alone")
        })
        .await
        .unwrap();
        let printed = stdout(&output);
        assert!(output.status.success(), "{printed}");
        assert!(printed.contains("1 passed"), "it ran: {printed}");
        return;
    }
    common::within_limit("a_failed_migration_leaves_no_database", async {
        let dir =
            std::env::temp_dir().join(format!("dbscope-bad-migrations-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("1_bad.sql"), "CREATE TABLE nope (;").unwrap();
        let lite_before = test_files();
        for bind in ["my", "lite"] {
            let mut config = dbscope::Config::from_file("tests/testing/dbscope.toml").unwrap();
            config.binds.retain(|name, _| name == bind);
            let mysql_before = mysql_test_databases().await;
            let err = dbscope::testing::TestDb::builder()
                .config(config)
                .mode(Mode::Database)
                .migrations(bind, dir.clone())
                .start()
                .await
                .expect_err("the migration fails");
            assert_eq!(err.bind(), Some(bind), "{err}");
            assert_eq!(
                mysql_test_databases().await,
                mysql_before,
                "{bind}: none left"
            );
        }
        assert_eq!(test_files(), lite_before, "no SQLite file left");
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await;
}

/// MariaDB's test databases of this process, by name.
async fn mysql_test_databases() -> Vec<String> {
    let mut my = admin(MYSQL_ENV, MYSQL_DEFAULT).await;
    let query = format!(
        "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
         WHERE schema_name LIKE 'dbscope\\_test\\_%\\_{}\\_%'",
        std::process::id()
    );
    sqlx::query_scalar(sql(query))
        .fetch_all(&mut my)
        .await
        .unwrap()
}

/// The SQLite test files of this process in the temp dir.
fn test_files() -> Vec<String> {
    let pid = format!("_{}_", std::process::id());
    let mut files: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("dbscope_test_") && n.contains(&pid))
        .collect();
    files.sort();
    files
}

/// The PostgreSQL bind alone, at the test server.
fn pg_only() -> dbscope::Config {
    let mut config = dbscope::Config::default();
    let url = server_url(PG_ENV, PG_DEFAULT);
    config
        .binds
        .insert("pg".into(), dbscope::BindConfig::new(url));
    config
}

/// `reuse = false` in the attribute: a clone of the template of the test's own, not a slot.
#[dbscope::test(
    mode = "database",
    reuse = false,
    config = pg_only,
    migrations(pg = "tests/testing/migrations")
)]
async fn attribute_turns_reuse_off(t: TestContext) -> Result<(), dbscope::Error> {
    let name = t.database("pg").expect("database mode");
    assert!(name.starts_with("dbscope_test_"), "{name}");
    assert!(!name.starts_with(SLOT_PREFIX), "not a slot: {name}");
    let row = t
        .fetch_one::<sqlx::Postgres, _>("pg", sqlx::query("SELECT count(*) FROM notes"))
        .await?;
    assert_eq!(row.get::<i64, _>(0), 0, "migrated, from the template");
    Ok(())
}
