//! Transaction mode keeps a PostgreSQL connection from one test to the next on the same
//! runtime (`dbscope::testing::runtime()`, which `#[dbscope::test]` runs every test on), and
//! only a clean one: rolled back, its session advisory locks released, its sequences' `currval`
//! and sqlx's prepared statements forgotten. A test that ran SQL's `PREPARE`, lost its transaction or had its connection killed
//! passes on nothing; another runtime shares nothing; MariaDB connections are never kept.
//! Which connection a test got is read from the server (`pg_backend_pid()`,
//! `pg_stat_activity`, `pg_locks`).
//!
//! Each test's bind has an `application_name` of its own: connections are kept per connect
//! options, so the tests of this binary, run in parallel, never take each other's.

mod common;

use std::time::Duration;

use common::{MYSQL_DEFAULT, MYSQL_ENV, PG_DEFAULT, PG_ENV, server_url, sql};
use dbscope::testing::{Mode, TestContext, TestDb};
use dbscope::{BindConfig, Config, ErrorKind};
use sqlx::{Connection, Row};

fn pg_url(name: &str) -> String {
    let mut url = url::Url::parse(&server_url(PG_ENV, PG_DEFAULT)).expect("a PostgreSQL URL");
    url.query_pairs_mut()
        .append_pair("application_name", &format!("dbscope_kept_{name}"));
    url.into()
}

fn config(url: &str) -> Config {
    let mut config = Config::default();
    config.binds.insert(
        "main".into(),
        BindConfig::new(url).acquire_timeout(Duration::from_secs(10)),
    );
    config
}

async fn start(url: &str) -> TestContext {
    let t = TestDb::builder()
        .config(config(url))
        .mode(Mode::Transaction)
        .start()
        .await
        .expect("the test starts");
    assert_eq!(t.mode("main"), Some(Mode::Transaction));
    t
}

/// Runs `query` as the app would: a session of the test's manager.
async fn app(t: &TestContext, query: &str) -> Result<(), dbscope::Error> {
    let mut session = t.manager().session::<sqlx::Postgres>("main")?;
    sqlx::raw_sql(sql(query.to_owned()))
        .execute(&mut session)
        .await?;
    session.commit().await?;
    session.close().await
}

async fn backend_pid(t: &TestContext) -> i32 {
    t.fetch_one::<sqlx::Postgres, _>("main", sqlx::query("SELECT pg_backend_pid()"))
        .await
        .expect("the pid")
        .get(0)
}

/// A count from a connection of its own, outside every test.
async fn server_count(query: String) -> i64 {
    let mut conn = sqlx::PgConnection::connect(&server_url(PG_ENV, PG_DEFAULT))
        .await
        .expect("an admin connection");
    let n = sqlx::query_scalar(sql(query))
        .fetch_one(&mut conn)
        .await
        .expect("a count");
    conn.close().await.ok();
    n
}

/// Waits (at most 30 s) until the server no longer has a backend `pid`.
async fn gone_from_server(pid: i32) {
    let query = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    for _ in 0..300 {
        if server_count(query.clone()).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("backend {pid} is still on the server 30 s after its connection was let go");
}

#[test]
fn a_clean_test_passes_its_connection_on_cleared() {
    dbscope::testing::runtime().block_on(async {
        let url = pg_url("clean");
        // A sequence outside every test, for currval.
        let mut admin = sqlx::PgConnection::connect(&server_url(PG_ENV, PG_DEFAULT))
            .await
            .expect("an admin connection");
        sqlx::raw_sql("CREATE SEQUENCE IF NOT EXISTS dbscope_kept_seq")
            .execute(&mut admin)
            .await
            .expect("the sequence");
        admin.close().await.ok();

        let first = start(&url).await;
        let pid = backend_pid(&first).await;
        app(
            &first,
            "SELECT pg_advisory_lock(424242); \
             SELECT nextval('dbscope_kept_seq'); \
             SELECT set_config('search_path', 'pg_catalog', false); \
             CREATE TEMP TABLE dbscope_kept_temp (id int)",
        )
        .await
        .expect("the first test's statements");
        first.finish().await.expect("a clean end");

        // Between the tests, the server shows the connection idle, no transaction, no lock.
        let state =
            format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'idle'");
        assert_eq!(
            server_count(state).await,
            1,
            "kept, idle, outside a transaction"
        );
        let locks =
            format!("SELECT count(*) FROM pg_locks WHERE pid = {pid} AND locktype = 'advisory'");
        assert_eq!(
            server_count(locks.clone()).await,
            0,
            "its advisory lock released"
        );

        let second = start(&url).await;
        assert_eq!(backend_pid(&second).await, pid, "the same server session");
        let currval = app(&second, "SELECT currval('dbscope_kept_seq')").await;
        let code = currval
            .as_ref()
            .err()
            .and_then(dbscope::Error::as_database_error)
            .and_then(|e| e.code().map(|c| c.into_owned()));
        assert_eq!(
            code.as_deref(),
            Some("55000"),
            "currval forgotten: {currval:?}"
        );
        let row = second
            .fetch_one::<sqlx::Postgres, _>(
                "main",
                sqlx::query(
                    "SELECT current_setting('search_path'), \
                     to_regclass('pg_temp.dbscope_kept_temp') IS NULL",
                ),
            )
            .await
            .expect("the second test's reads");
        assert_eq!(
            row.get::<String, _>(0),
            "\"$user\", public",
            "the setting rolled back"
        );
        assert!(row.get::<bool, _>(1), "the temp table rolled back");
        second.finish().await.expect("a clean end");
    });
}

/// A statement sqlx prepared on a table the test made (rolled back since) is not reused on the
/// next test's table of the same name and another shape.
#[test]
fn statements_prepared_during_a_test_are_forgotten() {
    dbscope::testing::runtime().block_on(async {
        let url = pg_url("statements");
        let select = "SELECT * FROM dbscope_kept_shape";
        let first = start(&url).await;
        let pid = backend_pid(&first).await;
        app(
            &first,
            "CREATE TABLE dbscope_kept_shape (a int); INSERT INTO dbscope_kept_shape VALUES (1)",
        )
        .await
        .expect("the first test's table");
        let row = first
            .fetch_one::<sqlx::Postgres, _>("main", sqlx::query(select))
            .await
            .expect("a prepared select");
        assert_eq!(row.get::<i32, _>(0), 1);
        first.finish().await.expect("a clean end");

        let second = start(&url).await;
        assert_eq!(backend_pid(&second).await, pid, "kept");
        app(
            &second,
            "CREATE TABLE dbscope_kept_shape (a text, b int); \
             INSERT INTO dbscope_kept_shape VALUES ('two', 2)",
        )
        .await
        .expect("the second test's table");
        let row = second
            .fetch_one::<sqlx::Postgres, _>("main", sqlx::query(select))
            .await
            .expect("the same select, on the new table");
        assert_eq!(row.get::<String, _>(0), "two");
        second.finish().await.expect("a clean end");
    });
}

#[test]
fn prepare_closes_the_connection_instead() {
    dbscope::testing::runtime().block_on(async {
        let url = pg_url("prepare");
        let first = start(&url).await;
        let pid = backend_pid(&first).await;
        app(&first, "PREPARE dbscope_kept_statement AS SELECT 1")
            .await
            .expect("a PREPARE");
        first.finish().await.expect("a clean end");
        gone_from_server(pid).await;
        let second = start(&url).await;
        assert_ne!(backend_pid(&second).await, pid);
        // And the second's statement of that name would not collide.
        app(&second, "PREPARE dbscope_kept_statement AS SELECT 1")
            .await
            .expect("no statement left of that name");
        second.finish().await.expect("a clean end");
    });
}

#[test]
fn a_test_that_lost_its_transaction_passes_nothing_on() {
    dbscope::testing::runtime().block_on(async {
        let url = pg_url("lost");
        let first = start(&url).await;
        let pid = backend_pid(&first).await;
        // The app commits the outer transaction behind the toolkit's back.
        let mut session = first
            .manager()
            .session::<sqlx::Postgres>("main")
            .expect("a session")
            .autocommit(true);
        let _ = sqlx::raw_sql("COMMIT").execute(&mut session).await;
        drop(session);
        let end = first.finish().await;
        assert_eq!(
            end.as_ref().err().map(dbscope::Error::kind),
            Some(ErrorKind::TestIsolation),
            "{end:?}"
        );
        gone_from_server(pid).await;
        let second = start(&url).await;
        assert_ne!(backend_pid(&second).await, pid);
        second.finish().await.expect("a clean end");
    });
}

#[test]
fn a_kept_connection_killed_meanwhile_is_replaced() {
    dbscope::testing::runtime().block_on(async {
        let url = pg_url("killed");
        let first = start(&url).await;
        let pid = backend_pid(&first).await;
        first.finish().await.expect("a clean end");
        let kill = format!("SELECT count(*) FROM (SELECT pg_terminate_backend({pid})) AS k");
        assert_eq!(server_count(kill).await, 1);
        gone_from_server(pid).await;
        let second = start(&url).await;
        let other = backend_pid(&second).await;
        assert_ne!(other, pid);
        app(&second, "SELECT 1")
            .await
            .expect("a working connection");
        second.finish().await.expect("a clean end");
    });
}

#[test]
fn another_runtime_shares_nothing_and_a_dropped_one_lets_go() {
    let url = pg_url("runtimes");
    let own = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    };
    let first_runtime = own();
    let pid = first_runtime.block_on(async {
        let first = start(&url).await;
        let pid = backend_pid(&first).await;
        first.finish().await.expect("a clean end");
        pid
    });
    drop(first_runtime);
    own().block_on(async {
        let second = start(&url).await;
        assert_ne!(
            backend_pid(&second).await,
            pid,
            "a new runtime connects anew"
        );
        // The dropped runtime's connection was closed by this test's start.
        gone_from_server(pid).await;
        second.finish().await.expect("a clean end");
    });
}

#[test]
fn mariadb_connections_are_not_kept() {
    dbscope::testing::runtime().block_on(async {
        let url = server_url(MYSQL_ENV, MYSQL_DEFAULT);
        let mut ids = Vec::new();
        for _ in 0..2 {
            let t = start(&url).await;
            let id: u64 = t
                .fetch_one::<sqlx::MySql, _>("main", sqlx::query("SELECT CONNECTION_ID()"))
                .await
                .expect("the connection id")
                .get(0);
            ids.push(id);
            t.finish().await.expect("a clean end");
        }
        assert_ne!(ids[0], ids[1], "each test connects anew on MariaDB");
    });
}

/// The attribute runs the test on the shared runtime.
#[dbscope::test(config = pg_config)]
async fn the_attribute_runs_on_the_shared_runtime(t: TestContext) {
    assert_eq!(
        tokio::runtime::Handle::current().id(),
        dbscope::testing::runtime().handle().id()
    );
    assert_eq!(t.mode("main"), Some(Mode::Transaction));
}

fn pg_config() -> Config {
    config(&pg_url("attribute"))
}
