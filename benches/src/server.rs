//! The checks on the PostgreSQL server, through an admin connection that is part of no pool: the
//! benchmark's table, a session's transaction seen from the server, connections left idle in
//! transaction, connections still open after the pools closed, and the transactions committed.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

use crate::BoxError;
use crate::settings::URL_ENV;

/// Which of the server's connections the checks look at.
#[derive(Clone, Copy, Debug)]
pub enum Backends {
    /// Idle in transaction: the whole server's; left open: every other connection to this
    /// database.
    Others,
    /// The connections whose `application_name` this is (the benchmark's pools').
    App(&'static str),
}

/// A table of `rows` rows the contenders read.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    /// `CREATE TABLE IF NOT EXISTS …`.
    pub create: &'static str,
    /// `INSERT … ON CONFLICT DO NOTHING`, of the ids `1..=$1`.
    pub fill: &'static str,
    /// How many rows it holds.
    pub rows: i32,
}

/// The benchmark's database URL as sqlx options, with statement logging off (as dbscope sets
/// it), for the admin connection and the sqlx pools.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, BoxError> {
    Ok(PgConnectOptions::from_str(url)
        .map_err(|e| format!("{URL_ENV} is not a valid PostgreSQL URL: {e}"))?
        .disable_statement_logging())
}

/// The two sqlx pools the async benchmarks compare with, of at most `size` connections, not
/// connected yet: `PgPoolOptions::new()` (its defaults, which ping a connection before handing it
/// out and when it comes back), and the same with `test_before_acquire(false)`.
pub fn sqlx_pools(size: u32, options: &PgConnectOptions) -> (PgPool, PgPool) {
    let defaults = PgPoolOptions::new()
        .max_connections(size)
        .connect_lazy_with(options.clone());
    let no_test = PgPoolOptions::new()
        .max_connections(size)
        .test_before_acquire(false)
        .connect_lazy_with(options.clone());
    (defaults, no_test)
}

/// The admin connection, and the database's commit count when it opened.
#[derive(Debug)]
pub struct Admin {
    conn: PgConnection,
    backends: Backends,
    commits_before: i64,
}

impl Admin {
    /// Connects with `options`, creates and fills `table` (if not there yet), and notes the
    /// database's committed-transaction count.
    pub async fn open(
        options: &PgConnectOptions,
        backends: Backends,
        table: Table,
    ) -> Result<Self, BoxError> {
        let mut conn = PgConnection::connect_with(options)
            .await
            .map_err(|e| format!("cannot connect to {URL_ENV}: {e}"))?;
        conn.execute(table.create).await?;
        sqlx::query(table.fill)
            .bind(table.rows)
            .execute(&mut conn)
            .await?;
        let mut admin = Self {
            conn,
            backends,
            commits_before: 0,
        };
        admin.commits_before = admin.committed_transactions().await?;
        Ok(admin)
    }

    /// The connections idle inside a transaction (see [`Backends`]).
    pub async fn idle_in_transaction(&mut self) -> sqlx::Result<i64> {
        match self.backends {
            Backends::Others => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE state LIKE 'idle in transaction%'",
                )
                .fetch_one(&mut self.conn)
                .await
            }
            Backends::App(name) => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
                )
                .bind(name)
                .fetch_one(&mut self.conn)
                .await
            }
        }
    }

    /// The server processes of the connections [`Backends`] names, by pid.
    pub async fn backend_pids(&mut self) -> sqlx::Result<Vec<i32>> {
        match self.backends {
            Backends::Others => {
                sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                .fetch_all(&mut self.conn)
                .await
            }
            Backends::App(name) => {
                sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
                    .bind(name)
                    .fetch_all(&mut self.conn)
                    .await
            }
        }
    }

    /// The database's committed-transaction count.
    async fn committed_transactions(&mut self) -> sqlx::Result<i64> {
        sqlx::query_scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut self.conn)
        .await
    }

    /// Waits until none of the connections [`Backends`] names is open, or `limit` passes;
    /// returns how many are left.
    async fn wait_for_backends(&mut self, limit: Duration) -> sqlx::Result<usize> {
        let give_up = Instant::now() + limit;
        loop {
            let left = self.backend_pids().await?.len();
            if left == 0 || Instant::now() >= give_up {
                return Ok(left);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// After every pool is closed: waits for their connections to leave the server (they do so
    /// asynchronously, and report their statistics as they exit), prints what the server saw,
    /// and fails if a connection was left idle in transaction or the server committed fewer
    /// transactions than the `counted` units of work (`sessions`, `requests`).
    pub async fn final_checks(mut self, counted: u64, unit: &str) -> Result<(), BoxError> {
        let left = self.wait_for_backends(Duration::from_secs(5)).await?;
        let in_tx = self.idle_in_transaction().await?;
        let commits = self.committed_transactions().await? - self.commits_before;
        match self.backends {
            Backends::Others => {
                println!("  connections idle in transaction (whole server): {in_tx}");
                println!("  other connections to this database still open: {left}");
                println!(
                    "  server commits during the run: {commits}, for {counted} {unit} counted \
                     (the rest: the benchmark's own checks)"
                );
            }
            Backends::App(_) => {
                println!("  benchmark connections idle in transaction: {in_tx}");
                println!("  benchmark connections still open after closing the pools: {left}");
                println!(
                    "  server commits during the run (whole database): {commits}, for \
                     {counted} {unit} counted"
                );
            }
        }
        self.conn.close().await?;
        if in_tx > 0 {
            return Err(format!("{in_tx} connection(s) left idle in transaction").into());
        }
        if commits < i64::try_from(counted)? {
            return Err(format!(
                "the server committed {commits} transactions, fewer than the {counted} {unit} \
                 counted"
            )
            .into());
        }
        Ok(())
    }
}

/// The admin connection for a benchmark without an async runtime: [`Admin`] on a runtime of its
/// own (one thread, used only while a check runs).
#[derive(Debug)]
pub struct BlockingAdmin {
    runtime: tokio::runtime::Runtime,
    admin: Admin,
}

impl BlockingAdmin {
    /// [`Admin::open`], blocking.
    pub fn open(
        options: &PgConnectOptions,
        backends: Backends,
        table: Table,
    ) -> Result<Self, BoxError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let admin = runtime.block_on(Admin::open(options, backends, table))?;
        Ok(Self { runtime, admin })
    }

    /// [`Admin::idle_in_transaction`], blocking.
    pub fn idle_in_transaction(&mut self) -> sqlx::Result<i64> {
        self.runtime.block_on(self.admin.idle_in_transaction())
    }

    /// [`Admin::final_checks`], blocking.
    pub fn final_checks(self, counted: u64, unit: &str) -> Result<(), BoxError> {
        self.runtime
            .block_on(self.admin.final_checks(counted, unit))
    }
}

/// The verdict of the check that a session holds a server-side transaction from its first
/// statement until it commits (it does the same work as the other contenders), given the count
/// of connections idle in transaction before the session, after its select, after its commit.
pub fn check_session_transaction(before: i64, during: i64, after: i64) -> Result<(), BoxError> {
    if during != before + 1 || after != before {
        return Err(format!(
            "expected the session's connection to be idle in transaction after its select and \
             idle after its commit; connections idle in transaction on the server: before \
             {before}, after the select {during}, after the commit {after}"
        )
        .into());
    }
    Ok(())
}
