//! Test databases: one per test, on SQLite (file or memory), PostgreSQL or MariaDB, with the
//! server-side census the behaviour suite checks its claims against.
//!
//! PostgreSQL and MariaDB run at `DBSCOPE_TEST_PG_URL` / `DBSCOPE_TEST_MYSQL_URL`, or at the
//! standard local servers ([`PG_DEFAULT`], [`MYSQL_DEFAULT`]) when those are unset. A server that
//! cannot be reached fails the test, naming the URL and the variable to set: no test passes
//! without running.
//!
//! The behaviour suites write each test once, as a generic `async fn name<B: Suite>()` (or a plain
//! `fn` for the blocking face); [`async_tests!`] and [`blocking_tests!`] instantiate a list of them
//! for one backend, [`Suite`] being what a body may ask of its backend.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dbscope::{BindConfig, BindManager};
use sqlx::{AssertSqlSafe, Connection};

pub const PG_ENV: &str = "DBSCOPE_TEST_PG_URL";
pub const MYSQL_ENV: &str = "DBSCOPE_TEST_MYSQL_URL";
/// The PostgreSQL server the tests use when [`PG_ENV`] is unset (the one `.ci/run` sets up).
/// Plain, as `.ci/run`'s URL is: the server also offers TLS, which a build with the `tls` feature
/// would otherwise take (`prefer`); tests/tls.rs asks for TLS in its binds' config.
pub const PG_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable";
/// The MariaDB server the tests use when [`MYSQL_ENV`] is unset (the one `.ci/run` sets up);
/// plain, as [`PG_DEFAULT`].
pub const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test?ssl-mode=DISABLED";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SqliteFile,
    SqliteMemory,
    Postgres,
    MySql,
}

/// A database of one test: a unique tag, a URL whose connections the census can count, a table.
pub struct TestDb {
    pub kind: Kind,
    pub tag: String,
    pub url: String,
    pub table: String,
    admin_url: Option<String>,
    sqlite_path: Option<std::path::PathBuf>,
}

/// A name no other test uses: this process's pid and start (a later process may get the same
/// pid, and find the user or table a crashed one left), then a count.
fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32))
    });
    format!(
        "dbscope_t_{}_{start:08x}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates the test's table (`id BIGINT PRIMARY KEY, v VARCHAR(50)`) on bind `main`, committed.
pub async fn create_table<B: Suite>(manager: &BindManager, db: &TestDb) {
    let mut session = manager.session::<B::Db>("main").unwrap();
    let ddl = format!(
        "CREATE TABLE {} (id BIGINT PRIMARY KEY, v VARCHAR(50))",
        db.table
    );
    sqlx::query(sql(ddl))
        .execute(&mut session)
        .await
        .expect("create table");
    session.commit().await.expect("commit create table");
}

/// Inserts row `id` (`v = 'row {id}'`) into the test's table, in `session`.
pub async fn insert<DB: Typed>(
    session: &mut dbscope::Session<DB>,
    db: &TestDb,
    id: i64,
) -> sqlx::Result<()> {
    let stmt = format!("INSERT INTO {} (id, v) VALUES ({id}, 'row {id}')", db.table);
    sqlx::query(sql(stmt)).execute(session).await.map(|_| ())
}

/// Wraps SQL built at run time (table names); the tests build it from their own tags only.
pub fn sql(text: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(text)
}

impl TestDb {
    /// The test database for `kind`. Panics, saying which URL and which variable, when its server
    /// cannot be reached.
    pub async fn new(kind: Kind) -> Self {
        let tag = unique_tag();
        let table = format!("{tag}_items");
        match kind {
            Kind::SqliteFile => {
                let path = std::env::temp_dir().join(format!("{tag}.db"));
                let url = format!("sqlite://{}", path.display());
                Self {
                    kind,
                    tag,
                    url,
                    table,
                    admin_url: None,
                    sqlite_path: Some(path),
                }
            }
            Kind::SqliteMemory => Self {
                kind,
                tag,
                url: "sqlite::memory:".into(),
                table,
                admin_url: None,
                sqlite_path: None,
            },
            Kind::Postgres => {
                let admin = server_url(PG_ENV, PG_DEFAULT);
                // Reached now, so that a server that is down fails here with a clear message.
                admin_connection(&admin).await.close().await.ok();
                Self {
                    kind,
                    tag,
                    url: admin.clone(),
                    table,
                    admin_url: Some(admin),
                    sqlite_path: None,
                }
            }
            Kind::MySql => {
                let admin = server_url(MYSQL_ENV, MYSQL_DEFAULT);
                let url = mysql_user(&admin, &tag).await;
                Self {
                    kind,
                    tag,
                    url,
                    table,
                    admin_url: Some(admin),
                    sqlite_path: None,
                }
            }
        }
    }

    /// A bind config on this database whose connections the census recognises.
    pub fn config(&self) -> BindConfig {
        let config = BindConfig::new(self.url.as_str()).acquire_timeout(Duration::from_secs(10));
        match self.kind {
            Kind::Postgres => config.application_name(self.tag.as_str()),
            _ => config,
        }
    }

    /// A manager with one bind, `main`, from `config()` as `tweak` changes it.
    pub fn manager(&self, tweak: impl FnOnce(BindConfig) -> BindConfig) -> BindManager {
        BindManager::builder()
            .bind("main", tweak(self.config()))
            .build()
            .expect("test manager builds")
    }

    /// Connections the server has open for this test (`None` on SQLite, which has no server).
    pub async fn server_connections(&self) -> Option<i64> {
        let query = match self.kind {
            Kind::Postgres => format!(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '{}'",
                self.tag
            ),
            Kind::MySql => {
                format!(
                    "SELECT COUNT(*) FROM information_schema.processlist WHERE user = '{}'",
                    self.tag
                )
            }
            Kind::SqliteFile | Kind::SqliteMemory => return None,
        };
        Some(self.admin_count(query).await)
    }

    /// Transactions left open on the server by this test's connections: PostgreSQL's
    /// `idle in transaction`, InnoDB's open transactions, a SQLite file's write lock. `None` for
    /// in-memory SQLite, which nothing outside the pool can see.
    pub async fn open_transactions(&self) -> Option<i64> {
        let query = match self.kind {
            Kind::Postgres => format!(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '{}' \
                 AND state LIKE 'idle in transaction%'",
                self.tag
            ),
            Kind::MySql => format!(
                "SELECT COUNT(*) FROM information_schema.innodb_trx t \
                 JOIN information_schema.processlist p ON t.trx_mysql_thread_id = p.id \
                 WHERE p.user = '{}'",
                self.tag
            ),
            Kind::SqliteFile => return Some(self.sqlite_write_locked().await),
            Kind::SqliteMemory => return None,
        };
        Some(self.admin_count(query).await)
    }

    /// 1 if another connection holds the SQLite file's write lock (a write transaction).
    async fn sqlite_write_locked(&self) -> i64 {
        use std::str::FromStr;
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(&self.url)
            .expect("sqlite url")
            .busy_timeout(Duration::ZERO);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("open sqlite file");
        let locked = match sqlx::raw_sql("BEGIN IMMEDIATE; ROLLBACK")
            .execute(&mut conn)
            .await
        {
            Ok(_) => 0,
            Err(e) if e.to_string().contains("locked") => 1,
            Err(e) => panic!("probing the sqlite write lock: {e}"),
        };
        conn.close().await.ok();
        locked
    }

    /// The InnoDB transactions of the server: (connection id, isolation level).
    pub async fn innodb_transactions(&self) -> Vec<(i64, String)> {
        let query = "SELECT CAST(trx_mysql_thread_id AS SIGNED), trx_isolation_level \
                     FROM information_schema.innodb_trx";
        let _spaced = innodb_trx_gate().await;
        let mut conn = self.admin().await;
        let rows = sqlx::query_as(query)
            .fetch_all(&mut conn)
            .await
            .expect("innodb_trx");
        conn.close().await.ok();
        rows
    }

    /// A connection as the server's administrator, outside any pool under test.
    async fn admin(&self) -> sqlx::AnyConnection {
        admin_connection(self.admin_url.as_deref().expect("server database")).await
    }

    /// The count `query` returns, asked as the server's administrator (through the
    /// `innodb_trx` gate when it reads that table).
    pub async fn admin_count(&self, query: String) -> i64 {
        let _spaced = if query.contains("innodb_trx") {
            Some(innodb_trx_gate().await)
        } else {
            None
        };
        let mut conn = self.admin().await;
        let n: i64 = sqlx::query_scalar(sql(query))
            .fetch_one(&mut conn)
            .await
            .expect("census");
        conn.close().await.ok();
        n
    }

    /// The server's id for a session's connection, from inside it.
    pub fn connection_id_query(&self) -> &'static str {
        match self.kind {
            Kind::Postgres => "SELECT CAST(pg_backend_pid() AS BIGINT)",
            Kind::MySql => "SELECT CAST(CONNECTION_ID() AS SIGNED)",
            Kind::SqliteFile | Kind::SqliteMemory => unreachable!("SQLite has no server"),
        }
    }

    /// Kills a connection from the server side, as a failover or an admin would.
    pub async fn kill_connection(&self, id: i64) {
        let query = match self.kind {
            Kind::Postgres => format!("SELECT pg_terminate_backend({id})"),
            Kind::MySql => format!("KILL {id}"),
            Kind::SqliteFile | Kind::SqliteMemory => unreachable!("SQLite has no server"),
        };
        let mut conn = self.admin().await;
        sqlx::raw_sql(sql(query))
            .execute(&mut conn)
            .await
            .expect("kill");
    }

    /// Drops what the test made on the server.
    pub async fn finish(self) {
        let cleanup = match self.kind {
            Kind::Postgres => format!("DROP TABLE IF EXISTS {}", self.table),
            Kind::MySql => {
                format!(
                    "DROP TABLE IF EXISTS {}; DROP USER IF EXISTS '{}'@'%'",
                    self.table, self.tag
                )
            }
            Kind::SqliteFile => {
                let path = self.sqlite_path.as_ref().expect("file");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                return;
            }
            Kind::SqliteMemory => return,
        };
        let mut conn = self.admin().await;
        sqlx::raw_sql(sql(cleanup))
            .execute(&mut conn)
            .await
            .expect("clean up");
    }
}

async fn admin_connection(url: &str) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url).await.unwrap_or_else(|e| {
        let var = if url.starts_with("postgres") {
            PG_ENV
        } else {
            MYSQL_ENV
        };
        let set = match std::env::var(var) {
            Ok(value) if !value.is_empty() => format!("{var} is set to this URL"),
            _ => format!("{var} is unset, so the tests use the standard local server"),
        };
        panic!(
            "the test server at {} cannot be reached: {e}\n({set}; start that server, e.g. with \
             `bash .ci/run`, or set {var} to the URL of a reachable one)",
            masked(url)
        )
    })
}

/// The server URL in `var`, or `default` when it is unset or empty.
pub fn server_url(var: &str, default: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => url,
        _ => default.to_owned(),
    }
}

/// How the testing toolkit names a PostgreSQL slot: `dbscope_test_slot_<template hash>_<n>`.
pub const SLOT_PREFIX: &str = "dbscope_test_slot_";

/// The sessions holding the lease of the testing toolkit's slot `slot` on the PostgreSQL test
/// server: its advisory lock `(key, n)`, `key` the template hash's low 31 bits, as `pg_locks`
/// shows it in any database.
pub async fn slot_lease_holders(slot: &str) -> Vec<i32> {
    let (hash, n) = slot
        .strip_prefix(SLOT_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .unwrap_or_else(|| panic!("not a slot: {slot}"));
    let digest = u64::from_str_radix(hash, 16).expect("a template hash");
    let key = i64::try_from(digest & 0x7fff_ffff).expect("31 bits");
    let n: i64 = n.parse().expect("a slot number");
    let mut admin = sqlx::PgConnection::connect(&server_url(PG_ENV, PG_DEFAULT))
        .await
        .expect("reach the PostgreSQL test server");
    let holders = sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted \
         AND classid = $1::int8::oid AND objid = $2::int8::oid",
    )
    .bind(key)
    .bind(n)
    .fetch_all(&mut admin)
    .await
    .expect("read pg_locks");
    admin.close().await.ok();
    holders
}

/// `url` with its password, if any, replaced by `***`, for messages.
fn masked(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "(an unparsable URL)".to_owned(),
    }
}

/// A MariaDB user for this test alone, so the census counts only its connections.
async fn mysql_user(admin: &str, tag: &str) -> String {
    let mut conn = admin_connection(admin).await;
    let ddl = format!(
        "CREATE USER '{tag}'@'%' IDENTIFIED BY ''; GRANT ALL PRIVILEGES ON test.* TO '{tag}'@'%'; \
         GRANT PROCESS ON *.* TO '{tag}'@'%'"
    );
    sqlx::raw_sql(sql(ddl))
        .execute(&mut conn)
        .await
        .expect("create test user");
    conn.close().await.ok();
    let mut url = url::Url::parse(admin).expect("mysql url");
    url.set_username(tag).expect("set user");
    url.set_password(None).expect("clear password");
    url.to_string()
}

/// MariaDB refreshes `information_schema.innodb_trx` only once nobody has read it for 100 ms:
/// readers polling faster than that, together, would see a frozen snapshot forever. Every read
/// goes through this gate, which spaces them 150 ms apart: across the tasks of this process (a
/// mutex) and across processes (cargo-nextest runs one per test, two at once on two cores: a
/// lock file in the temp dir holds when the last read of any process ended).
pub async fn innodb_trx_gate() -> InnodbTrxRead {
    static IN_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let in_process = IN_PROCESS.lock().await;
    let (file, last) = tokio::task::spawn_blocking(|| {
        use std::io::Read as _;
        let path = std::env::temp_dir().join("dbscope-tests-innodb-trx.gate");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .expect("the innodb_trx gate file");
        // Held for one read by another process; a minute without it is a stuck reader.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("the innodb_trx gate file stayed locked: {e}"),
            }
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        (file, text.trim().parse::<u128>().unwrap_or(0))
    })
    .await
    .expect("the innodb_trx gate");
    let next = last + Duration::from_millis(150).as_nanos();
    let wait = next.saturating_sub(epoch_nanos());
    tokio::time::sleep(Duration::from_nanos(
        u64::try_from(wait).unwrap_or(u64::MAX),
    ))
    .await;
    InnodbTrxRead {
        file,
        _in_process: in_process,
    }
}

fn epoch_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Held while reading `innodb_trx`; records when the read ended, then lets the next one in.
/// Its holder takes no other gate meanwhile (each read takes it once), so no task waits on
/// itself; the in-process wait lasts as long as one read of another task.
pub struct InnodbTrxRead {
    file: std::fs::File,
    _in_process: tokio::sync::MutexGuard<'static, ()>,
}

impl Drop for InnodbTrxRead {
    fn drop(&mut self) {
        use std::io::{Seek as _, Write as _};
        let _ = self.file.set_len(0);
        let _ = self.file.rewind();
        let _ = write!(self.file, "{}", epoch_nanos());
        let _ = self.file.unlock();
    }
}

/// Waits until `check` holds, up to 15 s; panics with `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `fut` at most `polls` times, sleeping 1 ms between polls so I/O progresses, then drops
/// it: a cancellation at whatever await it had reached. `Some` if it finished first.
pub async fn cancel_after<F: Future>(fut: F, polls: usize) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    for _ in 0..polls {
        let poll_once = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx)));
        if let std::task::Poll::Ready(out) = poll_once.await {
            return Some(out);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// Runs `work` on a thread of its own and fails the test if it takes longer than `limit`: a
/// deadlock fails instead of hanging the suite.
pub fn within<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let _ = done.send(result);
    });
    match outcome.recv_timeout(limit) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("did not finish within {limit:?}: a deadlock?"),
    }
}

// ----- the suites: one generic body per test, instantiated per backend -----

/// How long one test of a suite may take before it fails as hung.
pub const TEST_LIMIT: Duration = Duration::from_secs(300);

/// Awaits a test body, failing the test if it takes longer than [`TEST_LIMIT`].
pub async fn within_limit<F: Future<Output = ()>>(test: &str, body: F) {
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("{test} did not finish within {TEST_LIMIT:?}: hung?");
    }
}

/// What a suite's generic test body may ask of its backend: one zero-sized type per backend
/// ([`SqliteFile`], [`SqliteMemory`], [`Pg`], [`MySql`]) implements it.
pub trait Suite: Send + Sync + 'static {
    /// The backend's sqlx database type.
    type Db: Typed;
    /// Some other backend's database type: asking for a bind as this one is a mismatch.
    type Other: dbscope::Backend;
    /// The typed key of the tests' bind `main`, declared with `dbscope::bind_key!`.
    type Main: dbscope::BindKey<Database = Self::Db>;
    /// Which test database [`TestDb::new`] makes.
    const KIND: Kind;

    /// A statement that runs for about a second, to cancel mid-flight.
    fn slow_query() -> &'static str {
        match Self::KIND {
            Kind::Postgres => "SELECT pg_sleep(1)",
            Kind::MySql => "SELECT SLEEP(1)",
            Kind::SqliteFile | Kind::SqliteMemory => {
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000) \
                 SELECT COUNT(*) FROM c"
            }
        }
    }
}

/// SQLite in a file of its own.
#[derive(Debug)]
pub struct SqliteFile;
/// SQLite in memory.
#[derive(Debug)]
pub struct SqliteMemory;
/// PostgreSQL, at [`PG_ENV`] or [`PG_DEFAULT`].
#[derive(Debug)]
pub struct Pg;
/// MariaDB, at [`MYSQL_ENV`] or [`MYSQL_DEFAULT`].
#[derive(Debug)]
pub struct MySql;

dbscope::bind_key!(pub SqliteMain: sqlx::Sqlite = "main");
dbscope::bind_key!(pub PgMain: sqlx::Postgres = "main");
dbscope::bind_key!(pub MySqlMain: sqlx::MySql = "main");

impl Suite for SqliteFile {
    type Db = sqlx::Sqlite;
    type Other = sqlx::Postgres;
    type Main = SqliteMain;
    const KIND: Kind = Kind::SqliteFile;
}

impl Suite for SqliteMemory {
    type Db = sqlx::Sqlite;
    type Other = sqlx::Postgres;
    type Main = SqliteMain;
    const KIND: Kind = Kind::SqliteMemory;
}

impl Suite for Pg {
    type Db = sqlx::Postgres;
    type Other = sqlx::MySql;
    type Main = PgMain;
    const KIND: Kind = Kind::Postgres;
}

impl Suite for MySql {
    type Db = sqlx::MySql;
    type Other = sqlx::Sqlite;
    type Main = MySqlMain;
    const KIND: Kind = Kind::MySql;
}

/// The typed reads of the suites, for any of the test databases.
///
/// sqlx's decoding bounds put the database on the right (`i64: Decode<'r, DB>`,
/// `usize: ColumnIndex<DB::Row>`), so a generic body could only carry them as `where` clauses of
/// its own, repeated on every body. This trait holds those reads instead, written once (the
/// blanket impl below, with the bounds) as the bodies wrote them, and a body reaches them through
/// `B::Db: Typed` or the free functions after it.
pub trait Typed:
    dbscope::Backend
    + sqlx::Database<
        Arguments: sqlx::IntoArguments<Self>,
        QueryResult: std::fmt::Debug + RowsAffected,
        Row: std::fmt::Debug,
    >
{
    /// `query_scalar` of an `i64`, `fetch_one`.
    fn fetch_i64<'e, E>(executor: E, stmt: SqlText) -> BoxFuture<'e, sqlx::Result<i64>>
    where
        E: 'e + sqlx::Executor<'e, Database = Self>;

    /// `query_scalar` of a `String`, `fetch_one`.
    fn fetch_string<'e, E>(executor: E, stmt: SqlText) -> BoxFuture<'e, sqlx::Result<String>>
    where
        E: 'e + sqlx::Executor<'e, Database = Self>;

    /// `query_scalar` of a `String`, `fetch_optional`.
    fn fetch_optional_string<'e, E>(
        executor: E,
        stmt: SqlText,
    ) -> BoxFuture<'e, sqlx::Result<Option<String>>>
    where
        E: 'e + sqlx::Executor<'e, Database = Self>;

    /// `query_as` of `(i64, String)` rows, `fetch_all`.
    fn fetch_all_pairs<'e, E>(
        executor: E,
        stmt: SqlText,
    ) -> BoxFuture<'e, sqlx::Result<Vec<(i64, String)>>>
    where
        E: 'e + sqlx::Executor<'e, Database = Self>;

    /// `query(..).execute` on a raw connection (`Session::connection`).
    fn raw_execute(conn: &mut Self::Connection, stmt: SqlText) -> BoxFuture<'_, sqlx::Result<()>>;

    /// `query_scalar` of an `i64`, `fetch_one`, on a raw connection.
    fn raw_fetch_i64(
        conn: &mut Self::Connection,
        stmt: SqlText,
    ) -> BoxFuture<'_, sqlx::Result<i64>>;

    /// Column 0 of `row` as an `i64` (`Row::get`).
    fn column0_i64(row: &Self::Row) -> i64;

    /// `session.fetch_one(query_scalar(..))` of an `i64` on a blocking session.
    fn blocking_fetch_i64(
        session: &mut dbscope::blocking::BlockingSession<Self>,
        stmt: SqlText,
    ) -> dbscope::Result<i64>;

    /// `session.fetch_one(query_scalar(..))` of a `String` on a blocking session.
    fn blocking_fetch_string(
        session: &mut dbscope::blocking::BlockingSession<Self>,
        stmt: SqlText,
    ) -> dbscope::Result<String>;

    /// `session.fetch_optional(query_scalar(..))` of a `String` on a blocking session.
    fn blocking_fetch_optional_string(
        session: &mut dbscope::blocking::BlockingSession<Self>,
        stmt: SqlText,
    ) -> dbscope::Result<Option<String>>;

    /// `session.fetch_all(query_as(..))` of `(i64, String)` rows on a blocking session.
    fn blocking_fetch_all_pairs(
        session: &mut dbscope::blocking::BlockingSession<Self>,
        stmt: SqlText,
    ) -> dbscope::Result<Vec<(i64, String)>>;
}

/// `rows_affected()`, which each backend's query result has as a method of its own.
pub trait RowsAffected {
    /// The rows the statement inserted, updated or deleted.
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::sqlite::SqliteQueryResult::rows_affected(self)
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::postgres::PgQueryResult::rows_affected(self)
    }
}

impl RowsAffected for sqlx::mysql::MySqlQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::mysql::MySqlQueryResult::rows_affected(self)
    }
}

/// A boxed, `Send` future: what [`Typed`]'s async reads return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// SQL text for [`Typed`]'s reads: built at run time from the tests' own tags ([`sql`]), or fixed.
pub enum SqlText {
    Built(AssertSqlSafe<String>),
    Fixed(&'static str),
}

impl From<AssertSqlSafe<String>> for SqlText {
    fn from(text: AssertSqlSafe<String>) -> Self {
        Self::Built(text)
    }
}

impl From<&'static str> for SqlText {
    fn from(text: &'static str) -> Self {
        Self::Fixed(text)
    }
}

impl sqlx::SqlSafeStr for SqlText {
    fn into_sql_str(self) -> sqlx::SqlStr {
        match self {
            Self::Built(text) => text.into_sql_str(),
            Self::Fixed(text) => text.into_sql_str(),
        }
    }
}

impl<DB> Typed for DB
where
    DB: dbscope::Backend
        + sqlx::Database<
            Arguments: sqlx::IntoArguments<DB>,
            QueryResult: std::fmt::Debug + RowsAffected,
            Row: std::fmt::Debug,
        >,
    for<'r> i64: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    fn fetch_i64<'e, E>(executor: E, stmt: SqlText) -> BoxFuture<'e, sqlx::Result<i64>>
    where
        E: 'e + sqlx::Executor<'e, Database = Self>,
    {
        Box::pin(sqlx::query_scalar(stmt).fetch_one(executor))
    }

    fn fetch_string<'e, E>(executor: E, stmt: SqlText) -> BoxFuture<'e, sqlx::Result<String>>
    where
        E: 'e + sqlx::Executor<'e, Database = Self>,
    {
        Box::pin(sqlx::query_scalar(stmt).fetch_one(executor))
    }

    fn fetch_optional_string<'e, E>(
        executor: E,
        stmt: SqlText,
    ) -> BoxFuture<'e, sqlx::Result<Option<String>>>
    where
        E: 'e + sqlx::Executor<'e, Database = Self>,
    {
        Box::pin(sqlx::query_scalar(stmt).fetch_optional(executor))
    }

    fn fetch_all_pairs<'e, E>(
        executor: E,
        stmt: SqlText,
    ) -> BoxFuture<'e, sqlx::Result<Vec<(i64, String)>>>
    where
        E: 'e + sqlx::Executor<'e, Database = Self>,
    {
        Box::pin(sqlx::query_as(stmt).fetch_all(executor))
    }

    fn raw_execute(conn: &mut Self::Connection, stmt: SqlText) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(async move { sqlx::query(stmt).execute(conn).await.map(|_| ()) })
    }

    fn raw_fetch_i64(
        conn: &mut Self::Connection,
        stmt: SqlText,
    ) -> BoxFuture<'_, sqlx::Result<i64>> {
        Box::pin(sqlx::query_scalar(stmt).fetch_one(conn))
    }

    fn column0_i64(row: &Self::Row) -> i64 {
        sqlx::Row::get::<i64, _>(row, 0)
    }

    fn blocking_fetch_i64(
        session: &mut dbscope::blocking::BlockingSession<Self>,
        stmt: SqlText,
    ) -> dbscope::Result<i64> {
        session.fetch_one(sqlx::query_scalar(stmt))
    }

    fn blocking_fetch_string(
        session: &mut dbscope::blocking::BlockingSession<Self>,
        stmt: SqlText,
    ) -> dbscope::Result<String> {
        session.fetch_one(sqlx::query_scalar(stmt))
    }

    fn blocking_fetch_optional_string(
        session: &mut dbscope::blocking::BlockingSession<Self>,
        stmt: SqlText,
    ) -> dbscope::Result<Option<String>> {
        session.fetch_optional(sqlx::query_scalar(stmt))
    }

    fn blocking_fetch_all_pairs(
        session: &mut dbscope::blocking::BlockingSession<Self>,
        stmt: SqlText,
    ) -> dbscope::Result<Vec<(i64, String)>> {
        session.fetch_all(sqlx::query_as(stmt))
    }
}

/// [`Typed::fetch_i64`] on any executor (a session, a savepoint, a scope's session).
pub fn fetch_i64<'e, E>(executor: E, stmt: impl Into<SqlText>) -> BoxFuture<'e, sqlx::Result<i64>>
where
    E: 'e + sqlx::Executor<'e, Database: Typed>,
{
    <E::Database as Typed>::fetch_i64(executor, stmt.into())
}

/// [`Typed::fetch_string`] on any executor.
pub fn fetch_string<'e, E>(
    executor: E,
    stmt: impl Into<SqlText>,
) -> BoxFuture<'e, sqlx::Result<String>>
where
    E: 'e + sqlx::Executor<'e, Database: Typed>,
{
    <E::Database as Typed>::fetch_string(executor, stmt.into())
}

/// [`Typed::fetch_optional_string`] on any executor.
pub fn fetch_optional_string<'e, E>(
    executor: E,
    stmt: impl Into<SqlText>,
) -> BoxFuture<'e, sqlx::Result<Option<String>>>
where
    E: 'e + sqlx::Executor<'e, Database: Typed>,
{
    <E::Database as Typed>::fetch_optional_string(executor, stmt.into())
}

/// [`Typed::fetch_all_pairs`] on any executor.
pub fn fetch_all_pairs<'e, E>(
    executor: E,
    stmt: impl Into<SqlText>,
) -> BoxFuture<'e, sqlx::Result<Vec<(i64, String)>>>
where
    E: 'e + sqlx::Executor<'e, Database: Typed>,
{
    <E::Database as Typed>::fetch_all_pairs(executor, stmt.into())
}

/// [`Typed::blocking_fetch_i64`] on a blocking session.
pub fn blocking_fetch_i64<DB: Typed>(
    session: &mut dbscope::blocking::BlockingSession<DB>,
    stmt: impl Into<SqlText>,
) -> dbscope::Result<i64> {
    DB::blocking_fetch_i64(session, stmt.into())
}

/// [`Typed::blocking_fetch_string`] on a blocking session.
pub fn blocking_fetch_string<DB: Typed>(
    session: &mut dbscope::blocking::BlockingSession<DB>,
    stmt: impl Into<SqlText>,
) -> dbscope::Result<String> {
    DB::blocking_fetch_string(session, stmt.into())
}

/// [`Typed::blocking_fetch_optional_string`] on a blocking session.
pub fn blocking_fetch_optional_string<DB: Typed>(
    session: &mut dbscope::blocking::BlockingSession<DB>,
    stmt: impl Into<SqlText>,
) -> dbscope::Result<Option<String>> {
    DB::blocking_fetch_optional_string(session, stmt.into())
}

/// [`Typed::blocking_fetch_all_pairs`] on a blocking session.
pub fn blocking_fetch_all_pairs<DB: Typed>(
    session: &mut dbscope::blocking::BlockingSession<DB>,
    stmt: impl Into<SqlText>,
) -> dbscope::Result<Vec<(i64, String)>> {
    DB::blocking_fetch_all_pairs(session, stmt.into())
}

/// One module `$module` of `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`s for
/// backend `$suite`: test `name` awaits the generic body `name::<$suite>()` of the file that
/// invokes this, within [`TEST_LIMIT`].
#[allow(unused_macros)]
macro_rules! async_tests {
    ($module:ident, $suite:ty: $($name:ident),+ $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::common::within_limit(
                        concat!(module_path!(), "::", stringify!($name)),
                        super::$name::<$suite>(),
                    )
                    .await;
                }
            )+
        }
    };
}

/// One module `$module` of plain `#[test]`s for backend `$suite`: test `name` calls the generic
/// body `name::<$suite>()` of the file that invokes this, on a thread of its own, within
/// [`TEST_LIMIT`].
#[allow(unused_macros)]
macro_rules! blocking_tests {
    ($module:ident, $suite:ty: $($name:ident),+ $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[test]
                fn $name() {
                    crate::common::within(crate::common::TEST_LIMIT, super::$name::<$suite>);
                }
            )+
        }
    };
}

#[allow(unused_imports)]
pub(crate) use {async_tests, blocking_tests};
