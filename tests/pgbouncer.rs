//! A bind behind PgBouncer (Debian 12's 1.18, no protocol-level prepared statements) in
//! transaction pooling mode, in front of a throwaway cluster (tests/common/pgbouncer.rs).
//!
//! Without `connect.pooler`, sqlx's named prepared statements meet each other on the server
//! connections the bouncer shares out: `prepared statement "sqlx_s_1" already exists` (42P05),
//! or `… does not exist` (26000). With `Pooler::PgbouncerTransaction`, sessions, scopes,
//! savepoints, health-check pings, the recovery of a cut-off statement, concurrent sessions and
//! read sessions (in their READ ONLY transaction) all work, and the server shows nothing left
//! idle in a transaction; autocommit statements,
//! which could be parsed on one server connection and executed on another, are refused with a
//! typed error.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/pgbouncer.rs"]
mod pgbouncer;

use std::time::Duration;

use cluster::Cluster;
use dbscope::{Bind, BindConfig, BindManager, ErrorKind, HealthCheck, Pooler};
use pgbouncer::PgBouncer;
use sqlx::{Connection, PgConnection, Postgres};

/// The upstream cluster, the bouncer in front of it, and a table `notes` on the cluster.
struct Rig {
    cluster: Cluster,
    bouncer: PgBouncer,
}

impl Rig {
    async fn start() -> Self {
        let cluster = Cluster::start().await;
        let bouncer = PgBouncer::start(cluster.port()).await;
        let rig = Self { cluster, bouncer };
        let mut admin = rig.admin().await;
        sqlx::query("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
            .execute(&mut admin)
            .await
            .expect("create table");
        rig
    }

    /// A connection straight to the cluster, past the bouncer.
    async fn admin(&self) -> PgConnection {
        let url = format!(
            "{}?application_name=dbscope_pgbouncer_admin",
            self.cluster.url()
        );
        PgConnection::connect(&url).await.expect("admin connection")
    }

    /// A bind on the bouncer's database `db`, with the switch or without.
    fn bind(&self, db: &str, switch: bool) -> (BindManager, Bind<Postgres>) {
        let mut config = BindConfig::new(self.bouncer.url(db)).max_connections(4);
        if switch {
            config = config.pooler(Pooler::PgbouncerTransaction);
        }
        let manager = BindManager::new(config).expect("a bind behind pgbouncer");
        let bind = manager.bind::<Postgres>("default").expect("the bind");
        (manager, bind)
    }

    /// Server backends of the bouncer's (not the admin's) idle in a transaction.
    async fn idle_in_transaction(&self) -> i64 {
        let mut admin = self.admin().await;
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND application_name <> 'dbscope_pgbouncer_admin' \
             AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(&mut admin)
        .await
        .expect("pg_stat_activity")
    }
}

async fn echo(session: &mut dbscope::Session<Postgres>, n: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT $1::bigint")
        .bind(n)
        .fetch_one(session)
        .await
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_switch_named_statements_collide_on_shared_server_connections() {
    common::within_limit("without_the_switch", async {
        let rig = Rig::start().await;
        // `single`: one server connection for every client connection.
        let (manager, bind) = rig.bind("single", false);
        let mut first = bind.session();
        assert_eq!(echo(&mut first, 1).await.expect("first statement"), 1);
        first.commit().await.expect("commit");
        // `first` keeps its client connection; `second` gets another, whose own first
        // statement is named `sqlx_s_1` too, on the same server connection.
        let mut second = bind.session();
        let err = echo(&mut second, 2)
            .await
            .expect_err("a second client's statement");
        assert_eq!(sqlstate(&err).as_deref(), Some("42P05"), "{err}");
        assert!(err.to_string().contains("already exists"), "{err}");
        drop((first, second));
        manager.close(Duration::from_secs(5)).await.ok();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_switch_sessions_savepoints_and_scopes_work() {
    common::within_limit("with_the_switch", async {
        let rig = Rig::start().await;
        let (manager, bind) = rig.bind("single", true);
        // Two client connections taking turns on one server connection, as above.
        let mut first = bind.session();
        let mut second = bind.session();
        for n in 0..20 {
            assert_eq!(echo(&mut first, n).await.expect("first"), n);
            first.commit().await.expect("commit first");
            assert_eq!(echo(&mut second, n).await.expect("second"), n);
            second.commit().await.expect("commit second");
        }

        // A savepoint rolled back inside a committed transaction.
        sqlx::query("INSERT INTO notes VALUES ($1, $2)")
            .bind(1_i64)
            .bind("kept")
            .execute(&mut first)
            .await
            .expect("insert kept");
        let mut savepoint = first.savepoint().await.expect("savepoint");
        sqlx::query("INSERT INTO notes VALUES ($1, $2)")
            .bind(2_i64)
            .bind("undone")
            .execute(&mut *savepoint)
            .await
            .expect("insert undone");
        savepoint.rollback().await.expect("rollback to savepoint");
        first.commit().await.expect("commit");
        drop((first, second));

        // A scope: its session commits when the work succeeds.
        dbscope::scope(&manager, async {
            let mut session = dbscope::current_session::<Postgres>("default").await?;
            sqlx::query("INSERT INTO notes VALUES ($1, $2)")
                .bind(3_i64)
                .bind("scoped")
                .execute(&mut session)
                .await?;
            Ok::<_, dbscope::Error>(())
        })
        .await
        .expect("scope");

        // A read session keeps its READ ONLY transaction: no connection setting sticks here.
        let mut read = bind.read_session();
        let at = "SELECT transaction_timestamp()::text, current_setting('transaction_read_only')";
        let first_at: (String, String) = sqlx::query_as(at)
            .fetch_one(&mut read)
            .await
            .expect("a read");
        let second_at: (String, String) = sqlx::query_as(at)
            .fetch_one(&mut read)
            .await
            .expect("a second read");
        assert_eq!(first_at, second_at, "one transaction");
        assert_eq!(first_at.1, "on", "a read-only one");
        read.commit().await.expect("commit the read");
        drop(read);
        // The database's one server connection was not made read-only.
        let mut next = bind.session();
        let default: String =
            sqlx::query_scalar("SELECT current_setting('default_transaction_read_only')")
                .fetch_one(&mut next)
                .await
                .expect("a read in the next session");
        assert_eq!(default, "off");
        next.commit().await.expect("commit");
        drop(next);

        let mut admin = rig.admin().await;
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM notes ORDER BY id")
            .fetch_all(&mut admin)
            .await
            .expect("read back");
        assert_eq!(
            ids,
            [1, 3],
            "the savepoint's row undone, the others committed"
        );

        common::eventually("nothing idle in transaction", || async {
            rig.idle_in_transaction().await == 0
        })
        .await;
        manager.close(Duration::from_secs(5)).await.ok();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_switch_concurrent_sessions_hold_different_server_connections() {
    common::within_limit("concurrent_sessions", async {
        let rig = Rig::start().await;
        let (manager, bind) = rig.bind("test", true);
        let mut a = bind.session();
        let mut b = bind.session();
        let pid = "SELECT pg_backend_pid()::bigint + $1";
        let pid_a: i64 = sqlx::query_scalar(pid)
            .bind(0_i64)
            .fetch_one(&mut a)
            .await
            .unwrap();
        let pid_b: i64 = sqlx::query_scalar(pid)
            .bind(0_i64)
            .fetch_one(&mut b)
            .await
            .unwrap();
        assert_ne!(
            pid_a, pid_b,
            "two open transactions, two server connections"
        );
        // Each transaction keeps its server connection to its end.
        let again_a: i64 = sqlx::query_scalar(pid)
            .bind(0_i64)
            .fetch_one(&mut a)
            .await
            .unwrap();
        assert_eq!(again_a, pid_a);
        let mut admin = rig.admin().await;
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE pid IN ($1::int, $2::int) \
             AND state LIKE 'idle in transaction%'",
        )
        .bind(pid_a)
        .bind(pid_b)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert_eq!(open, 2, "both transactions open on the server");
        a.commit().await.expect("commit a");
        b.rollback().await.expect("rollback b");
        common::eventually("nothing idle in transaction", || async {
            rig.idle_in_transaction().await == 0
        })
        .await;
        manager.close(Duration::from_secs(5)).await.ok();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_switch_pings_and_recovery_of_a_cut_statement_work() {
    common::within_limit("pings_and_recovery", async {
        let rig = Rig::start().await;
        let config = BindConfig::new(rig.bouncer.url("test"))
            .max_connections(2)
            .health_check(HealthCheck::Always)
            .pooler(Pooler::PgbouncerTransaction);
        let manager = BindManager::new(config).unwrap();
        let bind = manager.bind::<Postgres>("default").unwrap();
        for n in 0..5 {
            let mut session = bind.session();
            assert_eq!(echo(&mut session, n).await.unwrap(), n);
            session.commit().await.unwrap();
        }
        // A statement cut off mid-flight: its connection is recovered through the bouncer.
        // Cut once the server shows it running (not after a number of polls, which a loaded
        // machine can spend still checking the connection out).
        let mut cut = bind.session();
        let mut admin = rig.admin().await;
        {
            let mut slow = std::pin::pin!(sqlx::query("SELECT pg_sleep(1)").execute(&mut cut));
            loop {
                let polled =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(slow.as_mut().poll(cx))).await;
                assert!(
                    polled.is_pending(),
                    "the sleep ended before it was seen running"
                );
                let running: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE state = 'active' AND query = 'SELECT pg_sleep(1)'",
                )
                .fetch_one(&mut admin)
                .await
                .expect("pg_stat_activity");
                if running == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        drop(cut);
        common::eventually("the cut-off connection recovered", || async {
            bind.status().recovered >= 1
        })
        .await;
        let mut after = bind.session();
        assert_eq!(echo(&mut after, 7).await.unwrap(), 7);
        after.commit().await.unwrap();
        common::eventually("nothing idle in transaction", || async {
            rig.idle_in_transaction().await == 0
        })
        .await;
        manager.close(Duration::from_secs(5)).await.ok();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_switch_autocommit_is_refused_typed() {
    common::within_limit("autocommit_refused", async {
        let rig = Rig::start().await;
        let (manager, bind) = rig.bind("test", true);
        let mut session = bind.session().autocommit(true);
        let err = dbscope::Error::from(echo(&mut session, 1).await.expect_err("refused"));
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert_eq!(err.bind(), Some("default"));
        assert!(err.to_string().contains("transaction pooling"), "{err}");
        // In an explicit transaction the same session works.
        session.begin().await.expect("begin");
        assert_eq!(echo(&mut session, 2).await.expect("in a transaction"), 2);
        session.commit().await.expect("commit");
        manager.close(Duration::from_secs(5)).await.ok();
    })
    .await;
}

/// The CLI behind the bouncer: `check` probes the bind in a transaction of its own (an
/// autocommit probe would be refused) and passes; migrations, whose lock is a session-level
/// advisory lock the bouncer may split across server connections, are refused typed, saying
/// to go to the server itself, before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_checks_a_bind_behind_the_bouncer_and_refuses_to_migrate_it() {
    common::within_limit("cli_behind_the_bouncer", async {
        let rig = Rig::start().await;
        let dir = std::env::temp_dir().join(format!("dbscope-bouncer-cli-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("migrations")).unwrap();
        let cleanup = dir.clone();
        std::fs::write(dir.join("migrations/1_t.sql"), "CREATE TABLE t (id int);").unwrap();
        std::fs::write(
            dir.join("dbscope.toml"),
            format!(
                "[binds.main]\nurl = \"{}\"\nmigrations = \"migrations\"\n\
                 [binds.main.connect]\npooler = \"pgbouncer_transaction\"\n",
                rig.bouncer.url("test")
            ),
        )
        .unwrap();
        let run = move |args: &[&str]| {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_dbscope"))
                .arg("--config")
                .arg(dir.join("dbscope.toml"))
                .args(args)
                .current_dir(&dir)
                .env_remove("DBSCOPE_CONFIG")
                .env_remove("DATABASE_URL")
                .output()
                .expect("the dbscope binary runs");
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            (output.status.code(), printed)
        };
        let ((checked, check_said), (migrated, migrate_said)) =
            tokio::task::spawn_blocking(move || (run(&["check"]), run(&["migrate"])))
                .await
                .unwrap();
        assert_eq!(checked, Some(0), "check passes: {check_said}");
        assert!(check_said.contains("PostgreSQL"), "{check_said}");
        assert_ne!(migrated, Some(0), "migrate is refused: {migrate_said}");
        assert!(
            migrate_said.contains("cannot run behind PgBouncer"),
            "{migrate_said}"
        );
        let mut admin = rig.admin().await; // the database the bouncer's `test` leads to
        let made: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('t', '_sqlx_migrations')",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert_eq!(made, 0, "nothing ran");
        std::fs::remove_dir_all(&cleanup).ok();
    })
    .await;
}

#[test]
fn settings_that_cannot_work_behind_a_transaction_pooler_are_refused() {
    let url = "postgres://postgres@127.0.0.1:6432/test";
    let behind = || BindConfig::new(url).pooler(Pooler::PgbouncerTransaction);
    let refused = [
        ("autocommit", behind().autocommit(true)),
        ("statement cache", {
            let mut c = behind();
            c.connect.statement_cache_capacity = Some(100);
            c
        }),
        (
            "mysql",
            BindConfig::new("mysql://root@127.0.0.1:3306/test")
                .pooler(Pooler::PgbouncerTransaction),
        ),
    ];
    for (what, config) in refused {
        let err = BindManager::new(config).expect_err(what);
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{what}: {err}");
        assert!(err.to_string().contains("`default`"), "{what}: {err}");
    }
    let mut zero = behind();
    zero.connect.statement_cache_capacity = Some(0);
    BindManager::new(zero).expect("a cache of 0 is what the switch sets anyway");
}

#[test]
#[allow(
    clippy::result_large_err,
    reason = "figment's Jail dictates the closure's error type"
)]
fn the_switch_loads_from_toml_and_the_environment() {
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "dbscope.toml",
            "[binds.main]\nurl = \"postgres://app@bouncer/app\"\n\
             [binds.main.connect]\npooler = \"pgbouncer_transaction\"\n\
             [binds.other]\nurl = \"postgres://app@db/app\"\n",
        )?;
        jail.set_env(
            "DBSCOPE_BINDS__OTHER__CONNECT__POOLER",
            "pgbouncer_transaction",
        );
        let config = dbscope::Config::from_file_and_env("dbscope.toml").expect("config");
        for name in ["main", "other"] {
            assert_eq!(
                config.binds[name].connect.pooler,
                Pooler::PgbouncerTransaction,
                "{name}"
            );
        }
        Ok(())
    });
}
