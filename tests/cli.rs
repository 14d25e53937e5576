//! The `dbscope` binary, run as a process on temporary configs: golden text output (timings
//! normalised), parsed JSON, exit codes, and a sentinel password that must not appear in any
//! byte it prints, on success or on error, on PostgreSQL and MariaDB users created with it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{MYSQL_DEFAULT, MYSQL_ENV, PG_DEFAULT, PG_ENV, server_url, sql};
use sqlx::Connection;

/// The password of the users the tests create: it must never be printed.
const SENTINEL: &str = "Sentinel-Pw-7f3a9c";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `dbscope --config <config> args…` with a clean dbscope environment.
fn dbscope(dir: &Path, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_dbscope"))
        .current_dir(dir)
        .arg("--config")
        .arg(dir.join("dbscope.toml"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DBSCOPE_CONFIG")
        .output()
        .expect("run dbscope");
    let run = Run {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8(output.stdout).expect("utf-8"),
        stderr: String::from_utf8(output.stderr).expect("utf-8"),
    };
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        assert!(
            !text.contains(SENTINEL),
            "the password in {name} of {args:?}:\n{text}"
        );
    }
    run
}

/// A temporary directory with a config and migrations.
fn workdir(config: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dbscope_cli_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(dir.join("migrations/main")).unwrap();
    std::fs::create_dir_all(dir.join("migrations/audit")).unwrap();
    std::fs::write(dir.join("dbscope.toml"), config).unwrap();
    let write = |f: &str, t: &str| std::fs::write(dir.join(f), t).unwrap();
    write(
        "migrations/main/1_users.up.sql",
        "CREATE TABLE users (id BIGINT PRIMARY KEY)",
    );
    write("migrations/main/1_users.down.sql", "DROP TABLE users");
    write(
        "migrations/main/2_orders.sql",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY)",
    );
    write(
        "migrations/audit/1_events.sql",
        "CREATE TABLE events (id BIGINT PRIMARY KEY)",
    );
    dir
}

/// Timings replaced by `N`: the digits (and decimals) before ` ms`.
fn normalise(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(" ms") {
        let head = &rest[..i];
        let keep = head.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        out.push_str(keep);
        if keep.len() < head.len() {
            out.push('N');
        }
        out.push_str(" ms");
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

const SQLITE_CONFIG: &str = r#"
[binds.main]
url = "sqlite://main.db"
migrations = "migrations/main"
migrate_after = ["audit"]

[binds.audit]
url = "sqlite://audit.db"
migrations = "migrations/audit"
"#;

#[test]
fn status_migrate_revert_golden_output_and_exit_codes() {
    let dir = workdir(SQLITE_CONFIG);

    let status = dbscope(&dir, &["status"]);
    assert_eq!(
        status.code, 4,
        "pending migrations: exit 4\n{}",
        status.stderr
    );
    assert_eq!(
        status.stdout,
        "\
audit  0 applied, 1 pending  (migrations/audit)
            1 events                         pending
main   0 applied, 2 pending  (migrations/main)
            1 users                          pending
            2 orders                         pending
"
    );
    assert_eq!(
        normalise(&status.stderr),
        "\
audit  reading migrations (SQLite)
audit  read in N ms
main   reading migrations (SQLite)
main   read in N ms
",
        "status reports its progress on stderr"
    );

    let dry = dbscope(&dir, &["migrate", "--dry-run"]);
    assert_eq!(dry.code, 0);
    assert_eq!(
        dry.stdout,
        "\
audit  would apply 1 [1], 0 already applied, 0 pending
main   would apply 2 [1, 2], 0 already applied, 0 pending
"
    );
    assert_eq!(
        dbscope(&dir, &["status"]).code,
        4,
        "a dry run changes nothing"
    );

    let migrate = dbscope(&dir, &["migrate"]);
    assert_eq!(migrate.code, 0, "{}", migrate.stderr);
    assert_eq!(
        migrate.stdout,
        "\
audit  applied 1 [1], 0 already applied, 0 pending
main   applied 2 [1, 2], 0 already applied, 0 pending
"
    );
    assert_eq!(
        normalise(&migrate.stderr),
        "\
audit  connecting (SQLite)
audit  applying 1 events
audit  applied 1 in N ms
audit  finished: 1 in N ms
main   connecting (SQLite)
main   applying 1 users
main   applied 1 in N ms
main   applying 2 orders
main   applied 2 in N ms
main   finished: 2 in N ms
"
    );
    let status = dbscope(&dir, &["status", "--format", "json"]);
    assert_eq!(status.code, 0, "all applied: exit 0");
    let doc = json(&status);
    assert_eq!(doc["command"], "status");
    assert_eq!(doc["binds"][1]["bind"], "main");
    assert_eq!(doc["binds"][1]["applied"], 2);
    assert_eq!(doc["binds"][1]["migrations"][0]["reversible"], true);

    let revert = dbscope(&dir, &["revert", "--bind", "main", "--format", "json"]);
    assert_eq!(
        revert.code, 1,
        "migration 2 has no down file\n{}",
        revert.stdout
    );
    let doc = json(&revert);
    assert_eq!(doc["ok"], false);
    assert!(
        doc["binds"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no down migration")
    );

    std::fs::write(
        dir.join("migrations/main/1_users.up.sql"),
        "CREATE TABLE users (x INT)",
    )
    .unwrap();
    let edited = dbscope(&dir, &["status"]);
    assert_eq!(edited.code, 5, "an edited migration: exit 5");
    assert!(
        edited
            .stdout
            .contains("1 users                          edited")
    );
    let refused = dbscope(&dir, &["migrate"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stdout.contains("migration 1 (users, file"),
        "{}",
        refused.stdout
    );

    assert_eq!(
        dbscope(&dir, &["status", "--bind", "nope"]).code,
        2,
        "unknown bind"
    );
    let drop = dbscope(&dir, &["database", "drop"]);
    assert_eq!(drop.code, 2, "refused without --yes");
    assert!(dir.join("main.db").exists());
    let drop = dbscope(&dir, &["database", "drop", "--yes"]);
    assert_eq!(
        (drop.code, drop.stdout.as_str()),
        (0, "audit  dropped\nmain   dropped\n")
    );
    assert!(!dir.join("main.db").exists());
    let reset = dbscope(&dir, &["database", "reset", "--yes", "--bind", "audit"]);
    assert_eq!(reset.code, 0, "{}", reset.stderr);
    assert!(
        reset.stdout.contains("audit  did not exist, then created"),
        "{}",
        reset.stdout
    );
    assert!(
        reset.stdout.contains("audit  applied 1 [1]"),
        "{}",
        reset.stdout
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_bad_config_exits_3_and_check_reports_each_bind() {
    let dir = workdir("[binds.main]\nurl = \"nosuch://x\"\n");
    let run = dbscope(&dir, &["check"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown URL scheme `nosuch`"),
        "{}",
        run.stderr
    );

    let dir = workdir(SQLITE_CONFIG);
    let run = dbscope(&dir, &["check", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = json(&run);
    assert_eq!(doc["binds"][0]["backend"], "SQLite");
    assert!(
        doc["binds"][0]["server_version"]
            .as_str()
            .unwrap()
            .starts_with('3')
    );
    assert_eq!(doc["binds"][0]["pool"]["max_connections"], 10);
    std::fs::remove_dir_all(&dir).ok();
}

/// A PostgreSQL role and a MariaDB user with the sentinel password, and a database each.
async fn users_with_password(tag: &str) -> (String, String) {
    sqlx::any::install_default_drivers();
    let pg_admin = server_url(PG_ENV, PG_DEFAULT);
    let mut pg = sqlx::AnyConnection::connect(&pg_admin)
        .await
        .expect("PostgreSQL");
    for ddl in [
        format!("CREATE ROLE {tag} LOGIN PASSWORD '{SENTINEL}'"),
        format!("CREATE DATABASE {tag} OWNER {tag}"),
    ] {
        sqlx::raw_sql(sql(ddl))
            .execute(&mut pg)
            .await
            .expect("pg user");
    }
    pg.close().await.ok();
    let my_admin = server_url(MYSQL_ENV, MYSQL_DEFAULT);
    let mut my = sqlx::AnyConnection::connect(&my_admin)
        .await
        .expect("MariaDB");
    let ddl = format!(
        "CREATE DATABASE {tag}; CREATE USER '{tag}'@'%' IDENTIFIED BY '{SENTINEL}'; \
         GRANT ALL PRIVILEGES ON {tag}.* TO '{tag}'@'%'"
    );
    sqlx::raw_sql(sql(ddl))
        .execute(&mut my)
        .await
        .expect("mysql user");
    my.close().await.ok();
    let with = |admin: &str, password: &str| {
        let mut url = url::Url::parse(admin).unwrap();
        url.set_username(tag).unwrap();
        url.set_password(Some(password)).unwrap();
        url.set_path(&format!("/{tag}"));
        url.to_string()
    };
    let pg_url = with(&pg_admin, SENTINEL);
    let my_url = with(&my_admin, SENTINEL);
    (pg_url, my_url)
}

async fn drop_users(tag: &str) {
    let mut pg = sqlx::AnyConnection::connect(&server_url(PG_ENV, PG_DEFAULT))
        .await
        .unwrap();
    for ddl in [
        format!("DROP DATABASE IF EXISTS {tag} WITH (FORCE)"),
        format!("DROP ROLE IF EXISTS {tag}"),
    ] {
        sqlx::raw_sql(sql(ddl)).execute(&mut pg).await.unwrap();
    }
    let mut my = sqlx::AnyConnection::connect(&server_url(MYSQL_ENV, MYSQL_DEFAULT))
        .await
        .unwrap();
    let ddl = format!("DROP DATABASE IF EXISTS {tag}; DROP USER IF EXISTS '{tag}'@'%'");
    sqlx::raw_sql(sql(ddl)).execute(&mut my).await.unwrap();
}

/// Every command, on servers reached with the sentinel password, succeeding and failing (a
/// wrong password, a missing database): the password never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_shows_on_postgres_and_mariadb() {
    let tag = format!("dbscope_cli_{}", std::process::id());
    let (pg, my) = users_with_password(&tag).await;
    let config = format!(
        "[binds.main]\nurl = \"{pg}\"\nmigrations = \"migrations/main\"\n\n\
         [binds.audit]\nurl = \"{my}\"\nmigrations = \"migrations/audit\"\n"
    );
    let dir = workdir(&config);
    let body = async {
        let check = dbscope(&dir, &["check"]);
        assert_eq!(check.code, 0, "{}", check.stderr);
        let masked = format!("{tag}:***@");
        assert!(check.stderr.contains(&masked) || !check.stderr.contains("://"));
        assert!(
            check
                .stdout
                .contains("main   ok      PostgreSQL  PostgreSQL "),
            "{}",
            check.stdout
        );
        assert!(
            check.stdout.contains("audit  ok      MySQL  10."),
            "{}",
            check.stdout
        );
        let migrate = dbscope(&dir, &["migrate", "--format", "json"]);
        assert_eq!(migrate.code, 0, "{}", migrate.stderr);
        assert_eq!(json(&migrate)["binds"][1]["done"][1]["version"], 2);
        assert_eq!(dbscope(&dir, &["status"]).code, 0);
        assert_eq!(
            dbscope(&dir, &["revert", "--dry-run"]).code,
            1,
            "2_orders has no down"
        );
        assert_eq!(
            dbscope(&dir, &["revert", "--bind", "audit", "--dry-run"]).code,
            1
        );

        // Wrong passwords with the sentinel inside, and a database that does not exist.
        let wrong = config
            .replace(SENTINEL, &format!("{SENTINEL}x"))
            .replace(&format!("/{tag}\""), &format!("/{tag}_missing\""));
        std::fs::write(dir.join("dbscope.toml"), &wrong).unwrap();
        for args in [
            &["check"][..],
            &["check", "--format", "json"],
            &["status"],
            &["migrate"],
            &["migrate", "--format", "json"],
            &["revert"],
            &["database", "create"],
        ] {
            let run = dbscope(&dir, args);
            assert_ne!(run.code, 0, "{args:?} fails");
            assert!(
                !run.stdout.is_empty() || !run.stderr.is_empty(),
                "{args:?} says why"
            );
        }
    };
    let outcome = tokio::time::timeout(common::TEST_LIMIT, body).await;
    drop_users(&tag).await;
    std::fs::remove_dir_all(&dir).ok();
    outcome.expect("within the limit");
}

/// A child `dbscope` process whose stderr lines arrive on a channel as it prints them; killed
/// if the test fails before it exits.
struct Child {
    child: std::process::Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Child {
    /// Starts `dbscope --config <dir>/dbscope.toml args…`; each stderr line goes to `lines`
    /// tagged with `who`.
    fn spawn(
        dir: &Path,
        args: &[&str],
        who: usize,
        lines: std::sync::mpsc::Sender<(usize, String)>,
    ) -> Self {
        use std::io::{BufRead, Read};
        use std::process::Stdio;
        let mut child = Command::new(env!("CARGO_BIN_EXE_dbscope"))
            .current_dir(dir)
            .arg("--config")
            .arg(dir.join("dbscope.toml"))
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("DBSCOPE_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dbscope");
        let mut out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            out.read_to_string(&mut text).expect("stdout");
            text
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in std::io::BufReader::new(err).lines() {
                let line = line.expect("stderr");
                text.push_str(&line);
                text.push('\n');
                let _ = lines.send((who, line));
            }
            text
        });
        Self {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Waits for the process to exit (bounded by the test's limit, which kills it).
    fn finish(mut self) -> Run {
        let status = self.child.wait().expect("wait for dbscope");
        Run {
            code: status.code().expect("exited"),
            stdout: self.stdout.take().unwrap().join().unwrap(),
            stderr: self.stderr.take().unwrap().join().unwrap(),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.stdout.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits, at most `limit`, for a stderr line of either process that `matches`; returns who
/// printed it.
fn wait_for_line(
    lines: &std::sync::mpsc::Receiver<(usize, String)>,
    limit: std::time::Duration,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> usize {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok((who, line)) if matches(&line) => return who,
            Ok(_) => {}
            Err(e) => panic!("no stderr line {what} within {limit:?}: {e}"),
        }
    }
}

/// A fresh database `name` on the server at `admin`, with a `gate` table of one row; returns
/// its URL.
async fn fresh_database(admin: &str, name: &str) -> String {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(admin).await.expect("server");
    sqlx::raw_sql(sql(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    conn.close().await.ok();
    let mut url = url::Url::parse(admin).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("database");
    sqlx::raw_sql("CREATE TABLE gate (n BIGINT); INSERT INTO gate VALUES (0)")
        .execute(&mut conn)
        .await
        .expect("gate table");
    conn.close().await.ok();
    url
}

/// A connection holding the row lock of `gate` in an open transaction: a migration that
/// updates the row blocks until it commits.
async fn hold_gate(url: &str) -> sqlx::AnyConnection {
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("gate");
    sqlx::raw_sql("BEGIN; SELECT n FROM gate FOR UPDATE")
        .execute(&mut conn)
        .await
        .expect("lock the gate row");
    conn
}

async fn scalar(url: &str, query: &str) -> i64 {
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("probe");
    let n: i64 = sqlx::query_scalar(sql(query.to_owned()))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    conn.close().await.ok();
    n
}

/// Two `dbscope migrate` processes on the same MariaDB and PostgreSQL databases at once: for
/// each bind, the one that got the migration lock first blocks in migration 1 (on a row lock
/// the test holds) until the other says on stderr that it waits for the lock, and the server
/// shows it waiting; then the test lets go. Both exit 0, each bind's migrations were applied
/// by exactly one of them, the other found them applied, and `_sqlx_migrations` has each
/// version once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cli_processes_migrating_at_once_apply_once() {
    let tag = format!("dbscope_cli_race_{}", std::process::id());
    let my_admin = server_url(MYSQL_ENV, MYSQL_DEFAULT);
    let pg_admin = server_url(PG_ENV, PG_DEFAULT);
    let my = fresh_database(&my_admin, &tag).await;
    let pg = fresh_database(&pg_admin, &tag).await;
    let config = format!(
        "[binds.my]\nurl = \"{my}\"\nmigrations = \"migrations/race\"\n\n\
         [binds.pg]\nurl = \"{pg}\"\nmigrations = \"migrations/race\"\n"
    );
    let dir = workdir(&config);
    std::fs::create_dir_all(dir.join("migrations/race")).unwrap();
    std::fs::write(
        dir.join("migrations/race/1_gated.sql"),
        "UPDATE gate SET n = n + 1",
    )
    .unwrap();
    std::fs::write(
        dir.join("migrations/race/2_after.sql"),
        "CREATE TABLE after_gate (id BIGINT)",
    )
    .unwrap();

    let body = async {
        let mut my_gate = hold_gate(&my).await;
        let mut pg_gate = hold_gate(&pg).await;
        let (tx, lines) = std::sync::mpsc::channel();
        let children = [
            Child::spawn(&dir, &["migrate", "--format", "json"], 0, tx.clone()),
            Child::spawn(&dir, &["migrate", "--format", "json"], 1, tx),
        ];
        let limit = std::time::Duration::from_secs(120);
        // Binds migrate in name order: `my` first.
        let waiting = |bind: &'static str| {
            move |line: &str| line.starts_with(&format!("{bind}  waiting for the migration lock"))
        };
        wait_for_line(&lines, limit, "`my` waiting", waiting("my"));
        common::eventually("MariaDB shows the waiter in GET_LOCK", || async {
            let query = format!(
                "SELECT COUNT(*) FROM information_schema.processlist \
                 WHERE db = '{tag}' AND info LIKE '%GET_LOCK%'"
            );
            scalar(&my_admin, &query).await == 1
        })
        .await;
        sqlx::raw_sql("COMMIT").execute(&mut my_gate).await.unwrap();

        wait_for_line(&lines, limit, "`pg` waiting", waiting("pg"));
        let waiters = format!(
            "SELECT COUNT(*) FROM pg_locks l JOIN pg_database d ON l.database = d.oid \
             WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = '{tag}'"
        );
        common::eventually("pg_locks shows the waiting migrator", || async {
            scalar(&pg_admin, &waiters).await == 1
        })
        .await;
        sqlx::raw_sql("COMMIT").execute(&mut pg_gate).await.unwrap();

        let [a, b] = children.map(Child::finish);
        for run in [&a, &b] {
            assert_eq!(run.code, 0, "both exit 0\n{}\n{}", run.stdout, run.stderr);
        }
        let (a, b) = (json(&a), json(&b));
        for i in 0..2 {
            let bind = a["binds"][i]["bind"].as_str().unwrap();
            let mut done = [&a, &b].map(|doc| doc["binds"][i]["done"].as_array().unwrap().len());
            let mut already = [&a, &b].map(|doc| doc["binds"][i]["already_applied"].clone());
            if done[0] == 0 {
                done.reverse();
                already.reverse();
            }
            assert_eq!(done, [2, 0], "bind `{bind}`: exactly one process applies");
            assert_eq!(
                already,
                [0, 2],
                "bind `{bind}`: the other finds both applied"
            );
        }
        for url in [&my, &pg] {
            assert_eq!(
                scalar(url, "SELECT n FROM gate").await,
                1,
                "migration 1 ran once"
            );
            let rows = "SELECT COUNT(*) FROM (SELECT version FROM _sqlx_migrations \
                        GROUP BY version HAVING COUNT(*) = 1) once";
            assert_eq!(scalar(url, rows).await, 2, "each version recorded once");
            let total = scalar(url, "SELECT COUNT(*) FROM _sqlx_migrations").await;
            assert_eq!(total, 2, "and nothing else");
        }
    };
    let outcome = tokio::time::timeout(common::TEST_LIMIT, body).await;
    for admin in [&my_admin, &pg_admin] {
        let mut conn = sqlx::AnyConnection::connect(admin).await.unwrap();
        let force = if admin == &pg_admin {
            " WITH (FORCE)"
        } else {
            ""
        };
        sqlx::raw_sql(sql(format!("DROP DATABASE IF EXISTS {tag}{force}")))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    std::fs::remove_dir_all(&dir).ok();
    outcome.expect("within the limit");
}

/// `--help`, of the binary and of each command, lists the exit codes, and they are the ones
/// the README's table documents.
#[test]
fn help_lists_the_exit_codes_the_readme_documents() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = readme
        .split("### The dbscope CLI")
        .nth(1)
        .expect("the CLI section");
    let documented: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next())
        .filter(|code| code.parse::<u8>().is_ok())
        .collect();
    assert_eq!(
        documented,
        ["0", "1", "2", "3", "4", "5"],
        "the README's table"
    );
    let dir = workdir(SQLITE_CONFIG);
    for args in [
        &["--help"][..],
        &["check", "--help"],
        &["status", "--help"],
        &["migrate", "--help"],
        &["revert", "--help"],
        &["database", "--help"],
    ] {
        let help = dbscope(&dir, args);
        assert_eq!(help.code, 0, "{args:?}: {}", help.stderr);
        let listed = help
            .stdout
            .split("Exit codes:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{args:?} lists no exit codes:\n{}", help.stdout));
        let codes: Vec<&str> = listed
            .lines()
            .filter_map(|l| l.trim_start().split("  ").next())
            .collect();
        assert_eq!(codes, documented, "{args:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
