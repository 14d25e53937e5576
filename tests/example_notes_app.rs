//! The tests of `examples/notes_app.rs`, as an app's own tests would be written: the app's
//! router, served by `t.serve` on 127.0.0.1 and called with reqwest, under `#[dbscope::test]`,
//!
//! - in transaction mode on PostgreSQL and MariaDB (the note lands in the test transaction: the
//!   test reads it, a plain connection of its own does not see it, and the end rolls it back),
//! - in database mode on PostgreSQL (cloned from a template) and SQLite (a file of its own),
//! - with the app's after-commit hooks run as they would be, or captured and run by the test.
//!
//! Transaction mode migrates a database of this binary's own on each server,
//! `dbscope_example_notes` (created if missing), never the shared `test` database.

mod common;

#[allow(dead_code, unreachable_pub)] // the example's `main` is not the tests'
#[path = "../examples/notes_app.rs"]
mod notes_app;

use common::{MYSQL_DEFAULT, MYSQL_ENV, PG_DEFAULT, PG_ENV, server_url};
use dbscope::testing::{Mode, TestContext};
use dbscope::{Backend, BindConfig, Config};
use notes_app::{Outbox, router};
use sqlx::{AssertSqlSafe, Connection, Row};

/// The database transaction mode migrates, on each server.
const TX_DATABASE: &str = "dbscope_example_notes";

fn one_bind(url: String) -> Config {
    let mut config = Config::default();
    config.binds.insert(
        "default".to_owned(),
        BindConfig::new(url).acquire_timeout(std::time::Duration::from_secs(10)),
    );
    config
}

fn on_database(url: &str, database: &str) -> String {
    let mut url = url::Url::parse(url).expect("a server URL");
    url.set_path(&format!("/{database}"));
    url.into()
}

fn pg_url() -> String {
    on_database(&server_url(PG_ENV, PG_DEFAULT), TX_DATABASE)
}

fn mysql_url() -> String {
    on_database(&server_url(MYSQL_ENV, MYSQL_DEFAULT), TX_DATABASE)
}

fn pg_transaction() -> Config {
    one_bind(pg_url())
}

fn mysql_transaction() -> Config {
    one_bind(mysql_url())
}

/// Database mode: the server's `test` database is where the test's own is created from.
fn pg_database() -> Config {
    one_bind(server_url(PG_ENV, PG_DEFAULT))
}

fn sqlite_database() -> Config {
    one_bind("sqlite::memory:".to_owned())
}

async fn post(base: &str, title: &str, body: &str) -> reqwest::StatusCode {
    let url = format!("{base}/notes/{title}");
    let sent = reqwest::Client::new().post(url).body(body.to_owned());
    sent.send().await.expect("the app answers").status()
}

async fn get(base: &str, title: &str) -> (reqwest::StatusCode, String) {
    let url = format!("{base}/notes/{title}");
    let response = reqwest::get(url).await.expect("the app answers");
    let status = response.status();
    (status, response.text().await.expect("a body"))
}

/// The note's text as the test reads it, on its bind (inside the test transaction).
async fn stored<DB: Backend>(t: &TestContext, title: &str) -> String
where
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    <DB as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<DB>,
{
    let query = format!("SELECT body FROM notes WHERE title = '{title}'");
    let row = t
        .fetch_one::<DB, _>("default", sqlx::query(AssertSqlSafe(query)))
        .await
        .expect("the test reads the app's note");
    row.get(0)
}

/// Notes in `url`'s database, counted from a plain connection outside the test.
async fn count_outside(url: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test server (see tests/common): {e}"));
    let n = sqlx::query_scalar("SELECT COUNT(*) FROM notes")
        .fetch_one(&mut conn)
        .await
        .expect("count the notes");
    conn.close().await.ok();
    n
}

/// The app's story through a real server: a note stored (201), refused a second time (409,
/// rolled back), read back (200) and missing (404); returns the server's base URL.
async fn note_round_trip<DB>(t: &TestContext, outbox: &Outbox) -> String
where
    DB: Backend,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'c> &'c mut dbscope::Session<DB>: sqlx::Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let base = t
        .serve(router::<DB>(t.manager(), outbox.clone()))
        .await
        .expect("serve the app");
    assert_eq!(post(&base, "milk", "buy milk").await, 201);
    assert_eq!(post(&base, "milk", "again").await, 409);
    assert_eq!(
        get(&base, "milk").await,
        (reqwest::StatusCode::OK, "buy milk".into())
    );
    assert_eq!(get(&base, "none").await.0, 404);
    assert_eq!(stored::<DB>(t, "milk").await, "buy milk");
    base
}

/// Transaction mode: the note is in the test transaction, unseen outside it; the app's scopes
/// committed once (as savepoints) and rolled back once; its after-commit hook ran.
async fn transaction_mode<DB>(t: TestContext, url: String)
where
    DB: Backend,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'c> &'c mut dbscope::Session<DB>: sqlx::Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    common::within_limit("transaction_mode", async {
        assert_eq!(t.mode("default"), Some(Mode::Transaction));
        let outbox = Outbox::default();
        note_round_trip::<DB>(&t, &outbox).await;
        // The 201 and the 200 committed their scopes; the 409 and the 404 rolled back.
        assert_eq!(t.commits("default"), Some(2));
        assert_eq!(t.rollbacks("default"), Some(2));
        assert_eq!(count_outside(&url).await, 0, "the note is the test's alone");
        assert_eq!(*outbox.lock().unwrap(), ["note `milk` stored"]);
    })
    .await;
}

#[dbscope::test(config = pg_transaction, migrations(default = "examples/migrations/notes_app"))]
async fn notes_in_transaction_mode_on_postgres(t: TestContext) {
    transaction_mode::<sqlx::Postgres>(t, pg_url()).await;
}

#[dbscope::test(config = mysql_transaction, migrations(default = "examples/migrations/notes_app"))]
async fn notes_in_transaction_mode_on_mariadb(t: TestContext) {
    transaction_mode::<sqlx::MySql>(t, mysql_url()).await;
}

/// Database mode: the note is committed for real, in the test's own database.
async fn database_mode<DB>(t: TestContext)
where
    DB: Backend,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'c> &'c mut dbscope::Session<DB>: sqlx::Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    common::within_limit("database_mode", async {
        assert_eq!(t.mode("default"), Some(Mode::Database));
        let outbox = Outbox::default();
        note_round_trip::<DB>(&t, &outbox).await;
        assert_eq!(
            t.commits("default"),
            None,
            "no test transaction to count in"
        );
        let database = t.database("default").expect("its own database");
        assert!(database.contains("dbscope_test_"), "{database}");
        assert_eq!(*outbox.lock().unwrap(), ["note `milk` stored"]);
    })
    .await;
}

#[dbscope::test(
    mode = "database",
    config = pg_database,
    migrations(default = "examples/migrations/notes_app")
)]
async fn notes_in_database_mode_on_postgres(t: TestContext) {
    let own = on_database(&pg_url(), t.database("default").expect("database mode"));
    database_mode::<sqlx::Postgres>(t).await;
    // Committed for real, in the test's own database.
    assert_eq!(count_outside(&own).await, 1);
}

#[dbscope::test(config = sqlite_database, migrations(default = "examples/migrations/notes_app"))]
async fn notes_in_database_mode_on_sqlite(t: TestContext) {
    let own = format!("sqlite://{}", t.database("default").expect("database mode"));
    database_mode::<sqlx::Sqlite>(t).await;
    assert_eq!(count_outside(&own).await, 1);
}

/// A test that captures the app's after-commit hooks: nothing is sent when the note commits;
/// the test sees one hook held, runs it, and then the message is out.
async fn captured_hooks<DB>(t: TestContext)
where
    DB: Backend,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'c> &'c mut dbscope::Session<DB>: sqlx::Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    common::within_limit("captured_hooks", async {
        let outbox = Outbox::default();
        let base = note_round_trip::<DB>(&t, &outbox).await;
        assert!(outbox.lock().unwrap().is_empty(), "held, not run");
        assert_eq!(t.captured_after_commit(), 1, "the 409 rolled back: no hook");
        assert_eq!(t.run_captured().await, 1);
        assert_eq!(*outbox.lock().unwrap(), ["note `milk` stored"]);
        assert_eq!((t.captured_after_commit(), t.run_captured().await), (0, 0));
        // Hooks of later commits are held again, in order.
        assert_eq!(post(&base, "eggs", "a dozen").await, 201);
        assert_eq!(post(&base, "bread", "rye").await, 201);
        assert_eq!(t.captured_after_commit(), 2);
        assert_eq!(t.run_captured().await, 2);
        let sent = outbox.lock().unwrap().clone();
        assert_eq!(sent[1..], ["note `eggs` stored", "note `bread` stored"]);
    })
    .await;
}

#[dbscope::test(
    config = pg_transaction,
    migrations(default = "examples/migrations/notes_app"),
    capture_after_commit
)]
async fn captured_after_commit_hooks_on_postgres(t: TestContext) {
    captured_hooks::<sqlx::Postgres>(t).await;
}

#[dbscope::test(
    config = sqlite_database,
    migrations(default = "examples/migrations/notes_app"),
    capture_after_commit
)]
async fn captured_after_commit_hooks_on_sqlite(t: TestContext) {
    captured_hooks::<sqlx::Sqlite>(t).await;
}
