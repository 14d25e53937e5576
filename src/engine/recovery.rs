//! Background recovery of a connection whose session was cut off mid-operation.
//!
//! A cancelled operation leaves its connection in an unknown state: a statement perhaps still
//! running, its results unread, a transaction perhaps open. Discarding such a connection is
//! safe but costs a reconnect per cancellation, which under a storm of client timeouts turns a
//! slow database into a down one. Instead the connection goes to a task that, within
//! [`RECOVERY_TIMEOUT`]:
//!
//! 1. drains what is in flight: a ping, which sqlx answers only after reading every pending
//!    reply (PostgreSQL: up to the last `ReadyForQuery`; MySQL: the rest of every result set;
//!    SQLite: the worker thread finishes or resets the cut statement first);
//! 2. rolls back whatever transaction may be open;
//! 3. asks the server whether a transaction is still open, in a statement whose reply carries
//!    a name made for this check alone, so that a reply left over from the cut operation can
//!    never pass for it (PostgreSQL: `now() = statement_timestamp()`, true only outside a
//!    transaction block; MySQL/MariaDB: `@@autocommit = 1 AND @@completion_type = 0`, so the
//!    ROLLBACK answered just before ended the transaction and chained none, and this statement
//!    opened none; SQLite: a `BEGIN`, which fails inside a transaction, then its `ROLLBACK`).
//!    On PostgreSQL and SQLite the check runs first too, and a connection already out of any
//!    transaction skips steps 2 and 3.
//!
//! Only then does the connection go back to the pool, clean; any failure, or the time running
//! out, discards it, and the server rolls back what it had open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::{AssertSqlSafe, Column, Connection, Row, SqlSafeStr, SqlStr};

use super::{Conn, bump, is_dead};
use crate::backend::{Backend, Dialect};

/// How long recovering a cut-off connection may take, all steps together, before it is
/// discarded instead.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(2);

impl<DB: Backend> Conn<DB> {
    /// Hands a connection whose last operation was cut off (or failed mid-flight) to background
    /// work ([`Conn::in_background`]: where its socket is driven), which returns it to the pool
    /// once it is provably clean, or discards it. With nowhere to run, discards it at once.
    pub(crate) fn recover(self) {
        self.in_background(Conn::recover_now);
    }

    /// [`recover`](Conn::recover), awaited here. Cancel safe: dropped before it ends, the
    /// connection is discarded.
    pub(crate) async fn recover_now(self) {
        let this = match self.0 {
            super::Held::Pinned(pin) => return pin.recover().await,
            pooled => Conn(pooled),
        };
        this.restore_or_discard(true).await;
    }

    /// Proves a pooled connection idle before it goes back: as recovery does, from step 1,
    /// but not counted as recovered. For a raw connection lent outside any transaction of the
    /// session's, on which the application may have opened one of its own (a raw `BEGIN`).
    /// Cancel safe: dropped before it ends, the connection is discarded.
    pub(crate) async fn verify_now(self) {
        self.restore_or_discard(false).await;
    }

    /// [`verify_now`](Conn::verify_now), in the background.
    pub(crate) fn verify(self) {
        self.in_background(Conn::verify_now);
    }

    async fn restore_or_discard(self, counted: bool) {
        let mut held = Recovering(Some(self), counted);
        let conn = held.0.as_mut().expect("held until the end");
        let Some(dialect) = conn.dialect() else {
            return; // the bind is gone: dropping the connection is all there is to do
        };
        let implicit = conn.has_implicit_transactions();
        let restored = restore::<DB>(conn.raw(), dialect, implicit);
        match tokio::time::timeout(RECOVERY_TIMEOUT, restored).await {
            Ok(Ok(true)) => held.recovered(),
            Ok(Ok(false)) => tracing::debug!("a cut-off connection was still in a transaction"),
            Ok(Err(e)) if is_dead(&e) => held.lost(),
            Ok(Err(e)) => tracing::debug!(error = %e, "recovering a cut-off connection failed"),
            Err(_elapsed) => tracing::debug!("recovering a cut-off connection timed out"),
        }
    }
}

/// Holds a connection under recovery (counted as recovered when it comes back, if the `bool`
/// says so); dropped still holding it, it discards it.
struct Recovering<DB: Backend>(Option<Conn<DB>>, bool);

impl<DB: Backend> Recovering<DB> {
    fn recovered(mut self) {
        let conn = self.0.take().expect("held until the end");
        if let Some(manager) = conn.manager().filter(|_| self.1) {
            bump(&manager.counters.recovered);
            manager.observer.metrics.recovered();
        }
        conn.give_back();
    }

    fn lost(mut self) {
        self.0.take().expect("held until the end").discard_dead();
    }
}

impl<DB: Backend> Drop for Recovering<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.discard();
        }
    }
}

/// Drains, rolls back and checks; `Ok(false)` when the server says a transaction is open.
/// `implicit`: the connection runs MySQL's `autocommit = 0` (its statements open transactions),
/// and must still.
async fn restore<DB: Backend>(
    raw: &mut DB::Connection,
    dialect: Dialect,
    implicit: bool,
) -> sqlx::Result<bool> {
    raw.ping().await?;
    if dialect == Dialect::Sqlite {
        // A read-only transaction's `PRAGMA query_only = ON` outlives its rollback: switched
        // off first, as the session's own COMMIT and ROLLBACK do.
        run::<DB>(raw, SqlStr::from_static("PRAGMA query_only = OFF")).await?;
    }
    // PostgreSQL's and SQLite's checks hold whatever ran before them, so a connection already
    // out of any transaction (cut outside one, or in a COMMIT the server finished) needs no
    // ROLLBACK, nor PostgreSQL's warning for one; MySQL's holds only right after a ROLLBACK.
    if dialect != Dialect::MySql {
        match is_idle::<DB>(raw, dialect, implicit).await {
            Ok(true) => return Ok(true),
            // Not idle, or PostgreSQL refusing statements in an aborted transaction.
            Ok(false) | Err(sqlx::Error::Database(_)) => {}
            Err(e) => return Err(e),
        }
    }
    match run::<DB>(raw, SqlStr::from_static("ROLLBACK")).await {
        // SQLite answers a ROLLBACK outside a transaction with an error; the check says more.
        Ok(_) | Err(sqlx::Error::Database(_)) => {}
        Err(e) => return Err(e),
    }
    is_idle::<DB>(raw, dialect, implicit).await
}

/// Whether the server says no transaction is open on the connection (for MySQL, right after a
/// ROLLBACK, and with the connection's `autocommit` still as the pool knows it).
async fn is_idle<DB: Backend>(
    raw: &mut DB::Connection,
    dialect: Dialect,
    implicit: bool,
) -> sqlx::Result<bool> {
    match dialect {
        Dialect::Postgres | Dialect::MySql => {
            let (name, sql) = idle_check(dialect, implicit);
            let rows = run::<DB>(raw, sql).await?;
            Ok(rows.len() == 1 && rows[0].columns().first().is_some_and(|c| c.name() == name))
        }
        Dialect::Sqlite => {
            run::<DB>(raw, SqlStr::from_static("BEGIN")).await?;
            run::<DB>(raw, SqlStr::from_static("ROLLBACK")).await?;
            Ok(true)
        }
    }
}

/// A statement that returns one row, in a column of a name never used before, only when no
/// transaction is open; and that name. On MySQL, right after a ROLLBACK that chained no
/// transaction (`completion_type = 0`), a statement reading no table opens none, whichever
/// `autocommit` the connection runs (`implicit`: 0, which it must still have).
fn idle_check(dialect: Dialect, implicit: bool) -> (String, SqlStr) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let name = format!("dbscope_idle_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let condition = match (dialect, implicit) {
        (Dialect::Postgres, _) => "now() = statement_timestamp()",
        (_, false) => "@@autocommit = 1 AND @@completion_type = 0",
        (_, true) => "@@autocommit = 0 AND @@completion_type = 0",
    };
    let from = if dialect == Dialect::MySql {
        " FROM DUAL"
    } else {
        ""
    };
    let sql = format!("SELECT 1 AS {name}{from} WHERE {condition}");
    (name, AssertSqlSafe(sql).into_sql_str())
}

/// Runs one command, every result read; its rows.
async fn run<DB: Backend>(raw: &mut DB::Connection, sql: SqlStr) -> sqlx::Result<Vec<DB::Row>> {
    DB::fetch_many(raw, sql)
        .try_filter_map(|step| std::future::ready(Ok(step.right())))
        .try_collect()
        .await
}
