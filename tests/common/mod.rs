//! Test databases: one per test, on SQLite (file or memory), PostgreSQL or MariaDB, with the
//! server-side census the behaviour suite checks its claims against.
//!
//! PostgreSQL and MariaDB run at `DBSCOPE_TEST_PG_URL` / `DBSCOPE_TEST_MYSQL_URL`, or at the
//! standard local servers ([`PG_DEFAULT`], [`MYSQL_DEFAULT`]) when those are unset. A server that
//! cannot be reached fails the test, naming the URL and the variable to set: no test passes
//! without running.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dbscope::{BindConfig, BindManager};
use sqlx::{AssertSqlSafe, Connection};

pub const PG_ENV: &str = "DBSCOPE_TEST_PG_URL";
pub const MYSQL_ENV: &str = "DBSCOPE_TEST_MYSQL_URL";
/// The PostgreSQL server the tests use when [`PG_ENV`] is unset (the one `.ci/run` sets up).
pub const PG_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The MariaDB server the tests use when [`MYSQL_ENV`] is unset (the one `.ci/run` sets up).
pub const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";

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

fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "dbscope_t_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
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

    async fn admin_count(&self, query: String) -> i64 {
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
fn server_url(var: &str, default: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => url,
        _ => default.to_owned(),
    }
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
/// in this process goes through this gate, which spaces them 150 ms apart.
async fn innodb_trx_gate() -> InnodbTrxRead {
    static LAST_READ: tokio::sync::Mutex<Option<Instant>> = tokio::sync::Mutex::const_new(None);
    let last = LAST_READ.lock().await;
    if let Some(at) = *last {
        tokio::time::sleep(
            (at + Duration::from_millis(150)).saturating_duration_since(Instant::now()),
        )
        .await;
    }
    InnodbTrxRead(last)
}

/// Held while reading `innodb_trx`; records when the read ended.
struct InnodbTrxRead(tokio::sync::MutexGuard<'static, Option<Instant>>);

impl Drop for InnodbTrxRead {
    fn drop(&mut self) {
        *self.0 = Some(Instant::now());
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
