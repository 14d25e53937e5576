//! The databases prepared, every contender's pool built, the checks before measuring and the
//! teardown's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dbscope::{Bind, BindConfig, BindManager, JournalMode};
use dbscope_benches::server::{self, check_session_transaction};
use dbscope_benches::sessions::{CONNECTIONS, SELECT, TABLE};
use dbscope_benches::{Admin, Backends, BoxError, Settings, print_teardown};
use deadpool::managed;
use deadpool_postgres::{ManagerConfig, RecyclingMethod};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, Postgres, Sqlite};

use crate::contenders::{Contender, PgManager, SQLITE_SELECT};

/// The `application_name` of every pooled PostgreSQL connection, to find them in
/// `pg_stat_activity` (the server is shared: the checks look at this benchmark's alone).
const APP_NAME: &str = "dbscope-sweep";
/// The admin connection's, which the checks leave out.
const ADMIN_APP_NAME: &str = "dbscope-sweep-admin";

/// The SQLite table: rows `1..=TABLE.rows`, `v = id`, like PostgreSQL's.
const SQLITE_CREATE: &str =
    "CREATE TABLE IF NOT EXISTS dbscope_sweep (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)";
const SQLITE_FILL: &str = "INSERT OR IGNORE INTO dbscope_sweep (id, v) \
     WITH RECURSIVE ids(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM ids WHERE i < ?) \
     SELECT i, i FROM ids";
/// What the check of a SQLite session's transaction writes to.
const SQLITE_PROBE: &str = "CREATE TABLE IF NOT EXISTS dbscope_sweep_probe (n INTEGER PRIMARY KEY)";
const SQLITE_PROBE_COUNT: &str = "SELECT count(*) FROM dbscope_sweep_probe";

/// The databases prepared, and every contender's pool built (no connection opened yet).
pub(crate) struct Setup {
    /// PostgreSQL's, for setup queries and the checks; not part of any pool.
    admin: Admin,
    /// SQLite's, likewise.
    sqlite_admin: SqliteConnection,
    sqlite_file: SqliteFile,
    manager: BindManager,
    pg_bind: Bind<Postgres>,
    sqlite_bind: Bind<Sqlite>,
    /// PostgreSQL's first, then SQLite's.
    pub(crate) contenders: Vec<Arc<Contender>>,
}

impl Setup {
    /// Prepares both databases and builds every pool.
    pub(crate) async fn open(settings: &Settings) -> Result<Self, BoxError> {
        let options = server::connect_options(&settings.url)?;
        let admin = Admin::open(
            &options.clone().application_name(ADMIN_APP_NAME),
            Backends::App(APP_NAME),
            TABLE,
        )
        .await?;
        let options = options.application_name(APP_NAME);

        let sqlite_file = SqliteFile::new();
        let sqlite_options = SqliteConnectOptions::new()
            .filename(&sqlite_file.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .disable_statement_logging();
        let sqlite_admin = prepare_sqlite(&sqlite_options).await?;

        let mut sqlite_config = BindConfig::new(sqlite_file.url()).max_connections(CONNECTIONS);
        sqlite_config.connect.sqlite.journal_mode = Some(JournalMode::Wal);
        let manager = BindManager::builder()
            .bind(
                "pg",
                BindConfig::new(settings.url.as_str())
                    .max_connections(CONNECTIONS)
                    .application_name(APP_NAME),
            )
            .bind("sqlite", sqlite_config)
            .build()?;
        let pg_bind = manager.bind::<Postgres>("pg")?;
        let sqlite_bind = manager.bind::<Sqlite>("sqlite")?;

        let (sqlx_defaults, sqlx_no_test) = server::sqlx_pools(CONNECTIONS, &options);
        let hand_written = managed::Pool::builder(PgManager { options })
            .max_size(CONNECTIONS as usize)
            .build()?;
        let sqlite_pool = |test: bool| {
            SqlitePoolOptions::new()
                .max_connections(CONNECTIONS)
                .test_before_acquire(test)
                .connect_lazy_with(sqlite_options.clone())
        };
        let contenders = [
            Contender::Dbscope(pg_bind.clone()),
            Contender::HandWritten(hand_written),
            Contender::TokioPostgres(tokio_postgres_pool(&settings.url)?),
            Contender::SqlxPg {
                name: "sqlx PgPool (test_before_acquire=false)",
                pool: sqlx_no_test,
            },
            Contender::SqlxPg {
                name: "sqlx PgPool (defaults)",
                pool: sqlx_defaults,
            },
            Contender::DbscopeSqlite(sqlite_bind.clone()),
            Contender::SqlxSqlite {
                name: "sqlx SqlitePool (test_before_acquire=false)",
                pool: sqlite_pool(false),
            },
            Contender::SqlxSqlite {
                name: "sqlx SqlitePool (defaults)",
                pool: sqlite_pool(true),
            },
        ];
        Ok(Self {
            admin,
            sqlite_admin,
            sqlite_file,
            manager,
            pg_bind,
            sqlite_bind,
            contenders: contenders.into_iter().map(Arc::new).collect(),
        })
    }

    /// Checks, before measuring, that dbscope's sessions do the same work as the others: on
    /// PostgreSQL, the server shows the session's connection idle in transaction from its
    /// select to its commit; on SQLite, every pool's connections run in WAL mode, and a
    /// session's reads share one snapshot (a row another connection commits between them is not
    /// seen by the second, and is seen once the session has committed).
    pub(crate) async fn check_dbscope_sessions(&mut self) -> Result<(), BoxError> {
        self.check_pg_transaction().await?;
        self.check_sqlite_journal().await?;
        self.check_sqlite_transaction().await
    }

    async fn check_pg_transaction(&mut self) -> Result<(), BoxError> {
        let before = self.admin.idle_in_transaction().await?;
        let mut session = self.pg_bind.session();
        let _: i32 = sqlx::query_scalar(SELECT)
            .bind(1)
            .fetch_one(&mut session)
            .await?;
        let during = self.admin.idle_in_transaction().await?;
        session.commit().await?;
        let after = self.admin.idle_in_transaction().await?;
        drop(session);
        check_session_transaction(before, during, after)
    }

    async fn check_sqlite_journal(&self) -> Result<(), BoxError> {
        let mut session = self.sqlite_bind.session();
        let dbscope: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut session)
            .await?;
        session.commit().await?;
        check_wal("dbscope's SQLite bind", &dbscope)?;
        for contender in &self.contenders {
            if let Contender::SqlxSqlite { name, pool } = &**contender {
                let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                    .fetch_one(pool)
                    .await?;
                check_wal(name, &mode)?;
            }
        }
        Ok(())
    }

    async fn check_sqlite_transaction(&mut self) -> Result<(), BoxError> {
        let mut session = self.sqlite_bind.session();
        let first: i64 = sqlx::query_scalar(SQLITE_PROBE_COUNT)
            .fetch_one(&mut session)
            .await?;
        self.sqlite_admin
            .execute("INSERT INTO dbscope_sweep_probe DEFAULT VALUES")
            .await?;
        let second: i64 = sqlx::query_scalar(SQLITE_PROBE_COUNT)
            .fetch_one(&mut session)
            .await?;
        session.commit().await?;
        let mut after_commit = self.sqlite_bind.session();
        let third: i64 = sqlx::query_scalar(SQLITE_PROBE_COUNT)
            .fetch_one(&mut after_commit)
            .await?;
        after_commit.commit().await?;
        if second != first || third != first + 1 {
            return Err(format!(
                "a dbscope SQLite session's reads did not share one transaction: rows seen \
                 {first}, then {second} after another connection committed one, then {third} \
                 in a new session (expected {first}, {first}, {})",
                first + 1
            )
            .into());
        }
        // Sanity: the session's select reads the rows the contenders read.
        let mut session = self.sqlite_bind.session();
        let v: i32 = sqlx::query_scalar(SQLITE_SELECT)
            .bind(TABLE.rows)
            .fetch_one(&mut session)
            .await?;
        session.commit().await?;
        if v != TABLE.rows {
            return Err(format!("SQLite row {} reads v = {v}", TABLE.rows).into());
        }
        Ok(())
    }

    /// Closes every pool, removes the SQLite file, then checks on PostgreSQL that none of this
    /// benchmark's connections was left inside a transaction or open, and that the server
    /// committed a transaction per PostgreSQL session counted (`pg_sessions`).
    pub(crate) async fn close(self, pg_sessions: u64) -> Result<(), BoxError> {
        print_teardown(
            "dbscope bind",
            &[self.pg_bind.status(), self.sqlite_bind.status()],
        );
        for contender in &self.contenders {
            contender.close().await;
        }
        self.manager.close(Duration::from_secs(5)).await?;
        self.sqlite_admin.close().await?;
        drop(self.sqlite_file);
        self.admin.final_checks(pg_sessions, "sessions").await
    }
}

/// tokio-postgres on deadpool-postgres, of [`CONNECTIONS`] connections, without TLS, recycled
/// with `RecyclingMethod::Fast` (deadpool-postgres's default: no round trip).
fn tokio_postgres_pool(url: &str) -> Result<deadpool_postgres::Pool, BoxError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("tokio-postgres cannot read the URL: {e}"))?;
    config.application_name(APP_NAME);
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(deadpool_postgres::Pool::builder(manager)
        .max_size(CONNECTIONS as usize)
        .build()?)
}

/// Creates and fills the SQLite tables; returns the admin connection.
async fn prepare_sqlite(options: &SqliteConnectOptions) -> Result<SqliteConnection, BoxError> {
    let mut conn = SqliteConnection::connect_with(options).await?;
    conn.execute(SQLITE_CREATE).await?;
    conn.execute(SQLITE_PROBE).await?;
    sqlx::query(SQLITE_FILL)
        .bind(TABLE.rows)
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

fn check_wal(who: &str, mode: &str) -> Result<(), BoxError> {
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("{who}: journal_mode is {mode}, not wal").into());
    }
    Ok(())
}

/// The SQLite database file, in the temp directory, named after this process; removed (with
/// its WAL and shared-memory files) when dropped, and before use if a run of the same pid left
/// one.
struct SqliteFile {
    path: PathBuf,
}

impl SqliteFile {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("dbscope-sweep-{}.db", std::process::id()));
        remove_with_sidecars(&path);
        Self { path }
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        remove_with_sidecars(&self.path);
    }
}

fn remove_with_sidecars(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}
