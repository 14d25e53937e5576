//! A pinned connection: one connection of a bind, inside an outer transaction, that every
//! checkout of the bind gets in turn, for the `testing` feature's transaction mode.
//!
//! Once a pool is [pinned](super::Pool::pin), its checkouts stop going to deadpool: each waits
//! (within what is left of `acquire_timeout`) for the one pinned connection, holds it until its
//! session gives it back, and sees the outer transaction. Sessions find out through
//! [`Conn::is_pinned`](super::Conn::is_pinned) and turn their BEGIN, COMMIT and ROLLBACK into
//! [`PIN_BEGIN`], [`PIN_COMMIT`] and [`PIN_ROLLBACK`], so that what the app commits stays inside
//! the outer transaction, which [`unpin`](super::Pool::unpin) rolls back.
//!
//! The pin belongs to the pool, not to a task: a server task, a spawned task and the test itself
//! all queue for the same connection.
//!
//! A connection that a session leaves in an unknown state (cut off mid-operation, found dead)
//! cannot be thrown away and replaced here: the outer transaction would go with it. Recovery
//! tries to roll the session's work back to its savepoint; when that fails the pin is *broken*,
//! every later checkout fails with [`ErrorKind::TestIsolation`](crate::ErrorKind::TestIsolation)
//! saying why, and so does `unpin`.
// Used by the `testing` feature only.
#![cfg_attr(not(feature = "testing"), allow(dead_code))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool::managed;
use futures_util::TryStreamExt;
use sqlx::{Connection, SqlStr};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::conn_manager::ConnManager;
use super::{Conn, Held, bump};
use crate::backend::{Backend, Dialect};
use crate::{Error, Result};

/// What a session on a pinned connection runs instead of BEGIN.
pub(crate) const PIN_BEGIN: &str = "SAVEPOINT dbscope_app";
/// What a session on a pinned connection runs instead of COMMIT.
pub(crate) const PIN_COMMIT: &str = "RELEASE SAVEPOINT dbscope_app";
/// What a session on a pinned connection runs instead of ROLLBACK.
pub(crate) const PIN_ROLLBACK: &str =
    "ROLLBACK TO SAVEPOINT dbscope_app; RELEASE SAVEPOINT dbscope_app";

/// What an autocommit statement on a pinned PostgreSQL connection runs in: a savepoint of its
/// own, so that its failure undoes only itself, as it would outside the test, instead of
/// aborting the outer transaction. Opened before the statement, ended lazily: before the
/// next autocommit statement (one round trip, [`pin_autocommit_next`]) or when the session
/// begins a transaction or lets the connection go ([`pin_autocommit_end`]).
pub(crate) const PIN_AUTOCOMMIT: &str = "SAVEPOINT dbscope_auto";

/// Ends the autocommit statement's savepoint (rolled back to first when the statement
/// `failed`) and opens the next one.
pub(crate) fn pin_autocommit_next(failed: bool) -> &'static str {
    if failed {
        "ROLLBACK TO SAVEPOINT dbscope_auto; RELEASE SAVEPOINT dbscope_auto; SAVEPOINT dbscope_auto"
    } else {
        "RELEASE SAVEPOINT dbscope_auto; SAVEPOINT dbscope_auto"
    }
}

/// Ends the autocommit statement's savepoint, rolled back to first when the statement `failed`.
pub(crate) fn pin_autocommit_end(failed: bool) -> &'static str {
    if failed {
        "ROLLBACK TO SAVEPOINT dbscope_auto; RELEASE SAVEPOINT dbscope_auto"
    } else {
        "RELEASE SAVEPOINT dbscope_auto"
    }
}

/// The savepoint just inside the outer transaction: rolling back to it at the end proves the
/// outer transaction was never committed. Opened with it, in one round trip.
const PG_BEGIN: &str = "BEGIN; SAVEPOINT dbscope_pin";
const MYSQL_BEGIN: &str = "START TRANSACTION; SAVEPOINT dbscope_pin";
/// The check, and the rollback after it, in one round trip when the check passes (a failed
/// statement stops the rest of the script).
const GUARD_CHECK_AND_ROLLBACK: &str = "ROLLBACK TO SAVEPOINT dbscope_pin; ROLLBACK";
/// The same, on a PostgreSQL connection to be [kept](super::kept) for the next test: then
/// clears what a rollback leaves (session advisory locks, sequences' `currval`), and returns a
/// row unless the test prepared a statement with SQL's `PREPARE`, which nothing short of
/// `DEALLOCATE ALL` (sqlx's own statements too) clears: such a connection is closed instead.
const GUARD_CHECK_ROLLBACK_AND_CLEAR: &str = "ROLLBACK TO SAVEPOINT dbscope_pin; ROLLBACK; \
     DISCARD SEQUENCES; \
     SELECT 1 AS dbscope_kept FROM (SELECT pg_advisory_unlock_all()) AS unlocked \
     WHERE NOT EXISTS (SELECT FROM pg_prepared_statements WHERE from_sql)";

/// How a pinned bind's sessions ended, counted while the pin lasts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PinCounts {
    /// Transactions the bind's sessions committed (savepoints released).
    pub(crate) commits: u64,
    /// Transactions the bind's sessions rolled back.
    pub(crate) rollbacks: u64,
}

/// The pinned connection of one bind and what the pin has seen.
pub(crate) struct Pin<DB: Backend> {
    bind: Arc<str>,
    dialect: Dialect,
    slot: Arc<Mutex<Slot<DB>>>,
    commits: AtomicU64,
    rollbacks: AtomicU64,
}

struct Slot<DB: Backend> {
    /// `None` once unpinned: checkouts then fail as on a closed bind.
    conn: Option<managed::Object<ConnManager<DB>>>,
    /// Why the pinned connection can no longer be trusted, once it cannot.
    broken: Option<String>,
}

/// A checkout of the pinned connection: the lock on it, released when dropped.
pub(crate) struct PinGuard<DB: Backend> {
    guard: OwnedMutexGuard<Slot<DB>>,
    pin: Arc<Pin<DB>>,
}

impl<DB: Backend> Pin<DB> {
    /// Opens the outer transaction on `conn` (BEGIN, and the guard savepoint) and pins it;
    /// runs `reset` first, to make the connection read-write again.
    pub(super) async fn begin(
        bind: Arc<str>,
        dialect: Dialect,
        mut conn: managed::Object<ConnManager<DB>>,
        reset: Option<&'static str>,
        setup: Vec<String>,
    ) -> Result<Self> {
        let begin = match dialect {
            Dialect::MySql => MYSQL_BEGIN,
            Dialect::Postgres | Dialect::Sqlite => PG_BEGIN,
        };
        if let Some(reset) = reset {
            run::<DB>(&mut conn.raw, reset)
                .await
                .map_err(|e| Error::test_database(Some(&bind), format!("`{reset}` failed"), e))?;
            conn.access = super::Access::AsOpened;
        }
        run::<DB>(&mut conn.raw, begin)
            .await
            .map_err(|e| Error::test_database(Some(&bind), format!("`{begin}` failed"), e))?;
        for sql in setup {
            let script = sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql));
            DB::fetch_many(&mut conn.raw, script)
                .try_for_each(|_| std::future::ready(Ok(())))
                .await
                .map_err(|e| Error::test_database(Some(&bind), "a fixture failed".to_owned(), e))?;
        }
        Ok(Self {
            bind,
            dialect,
            slot: Arc::new(Mutex::new(Slot {
                conn: Some(conn),
                broken: None,
            })),
            commits: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
        })
    }

    /// Waits for the pinned connection until `deadline`.
    pub(super) async fn checkout(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
        acquire_timeout: Duration,
    ) -> Result<Conn<DB>> {
        let lock = self.slot.clone().lock_owned();
        let Ok(guard) = tokio::time::timeout_at(deadline, lock).await else {
            return Err(Error::pin_timeout(&self.bind, acquire_timeout));
        };
        if let Some(why) = &guard.broken {
            return Err(Error::test_isolation(&self.bind, why));
        }
        if guard.conn.is_none() {
            return Err(Error::closed(&self.bind));
        }
        Ok(Conn(Held::Pinned(PinGuard {
            guard,
            pin: self.clone(),
        })))
    }

    pub(super) fn counts(&self) -> PinCounts {
        PinCounts {
            commits: self.commits.load(Ordering::Relaxed),
            rollbacks: self.rollbacks.load(Ordering::Relaxed),
        }
    }

    /// Ends the pin: checks that the outer transaction is still open and rolls it back, then
    /// returns the connection to the pool. Later checkouts fail as on a closed bind.
    pub(super) async fn end(&self, wait: Duration) -> Result<PinCounts> {
        let Ok(mut slot) = tokio::time::timeout(wait, self.slot.lock()).await else {
            return Err(Error::test_isolation(
                &self.bind,
                &format!(
                    "a session still held the pinned connection {wait:?} after the test ended \
                     (a session or a task outliving the test?), so it could not be rolled back"
                ),
            ));
        };
        let Some(mut conn) = slot.conn.take() else {
            return Ok(self.counts());
        };
        let keepable = conn.reactor.is_none()
            && managed::Object::pool(&conn).is_some_and(|pool| pool.manager().keeps_connections());
        let verdict = match slot.broken.take() {
            Some(why) => Err(why),
            None => self.check_isolation(&mut conn.raw, keepable).await,
        };
        // The check rolled back when it passed. Whatever the verdict, nothing of the test may
        // stay: roll back, or close the socket.
        let rolled_back = match verdict {
            Ok(_) => Ok(()),
            Err(_) => run::<DB>(&mut conn.raw, "ROLLBACK").await,
        };
        // sqlx's statements prepared during the test go too: one on a table the test changed
        // (DDL, rolled back since) could meet the next test's table of the same name and fail
        // ("cached plan must not change result type"), as on no fresh connection.
        let cleared = match verdict {
            Ok(true) => DB::forget_statements(&mut conn.raw).await.is_ok(),
            _ => false,
        };
        match (rolled_back, &verdict) {
            (Ok(()), Ok(true)) if cleared => Conn(Held::Pooled(conn)).keep_for_next_test(),
            (Ok(()), Ok(true)) => Conn(Held::Pooled(conn)).discard(),
            (Ok(()), Ok(false)) => Conn(Held::Pooled(conn)).give_back(),
            _ => Conn(Held::Pooled(conn)).discard(),
        }
        verdict.map_err(|why| Error::test_isolation(&self.bind, &why))?;
        Ok(self.counts())
    }

    /// `Ok` when the outer transaction is still the one the pin began, and then rolled back;
    /// `Ok(true)` when the connection is also cleared to be kept for the next test (asked for
    /// with `keep`, on PostgreSQL).
    async fn check_isolation(
        &self,
        raw: &mut DB::Connection,
        keep: bool,
    ) -> std::result::Result<bool, String> {
        if self.dialect == Dialect::MySql && !mysql_in_transaction::<DB>(raw).await {
            return Err(
                "it was committed: MySQL and MariaDB commit implicitly before and after \
                        DDL (CREATE, ALTER, DROP, TRUNCATE …), LOCK TABLES and other statements"
                    .into(),
            );
        }
        let gone = |e: sqlx::Error| {
            format!(
                "a statement of the test or the app committed or rolled it back (its savepoint \
                 `dbscope_pin` is gone: {e})"
            )
        };
        if !keep {
            return run::<DB>(raw, GUARD_CHECK_AND_ROLLBACK)
                .await
                .map(|()| false)
                .map_err(gone);
        }
        let rows = rows::<DB>(raw, GUARD_CHECK_ROLLBACK_AND_CLEAR)
            .await
            .map_err(gone)?;
        Ok(rows == 1)
    }
}

impl<DB: Backend> PinGuard<DB> {
    pub(super) fn raw(&mut self) -> &mut DB::Connection {
        &mut self
            .guard
            .conn
            .as_mut()
            .expect("a pinned checkout holds the connection")
            .raw
    }

    pub(super) fn dialect(&self) -> Dialect {
        self.pin.dialect
    }

    /// Marks the pin broken, for `why`, and lets the connection go.
    pub(super) fn break_with(mut self, why: &str) {
        tracing::warn!(bind = %self.pin.bind, why, "the test's pinned connection broke");
        self.guard.broken.get_or_insert_with(|| why.to_owned());
    }

    pub(super) fn ended(&self, committed: bool) {
        bump(if committed {
            &self.pin.commits
        } else {
            &self.pin.rollbacks
        });
    }

    /// Recovers a session cut off mid-operation: drains what is in flight and rolls the
    /// session's work back to the savepoint it had open, whichever that was (see
    /// [`undo_cut_off_session`]); breaks the pin if that fails.
    pub(super) async fn recover(mut self) {
        let dialect = self.dialect();
        let raw = self.raw();
        let work = async {
            raw.ping().await.map_err(|e| e.to_string())?;
            undo_cut_off_session::<DB>(raw, dialect).await
        };
        match tokio::time::timeout(Duration::from_secs(2), work).await {
            Ok(Ok(())) => self.ended(false),
            Ok(Err(e)) => self.break_with(&format!(
                "a session was cut off mid-operation and rolling it back failed: {e}"
            )),
            Err(_) => self.break_with(
                "a session was cut off mid-operation and rolling it back took over 2 s",
            ),
        }
    }
}

/// Rolls the pinned connection back to (and releases) the savepoint of the cut-off session's
/// transaction, [`PIN_BEGIN`]'s, if it is there, without losing the test's transaction on the
/// way. The session cannot say whether it is: the operation cut off may have been the one
/// that opened or ended it. When it is not, nothing of the session's is left to undo: its
/// BEGIN never reached the server, its COMMIT went through, or it was in autocommit mode and
/// its last statement ran whole (a statement that failed aborts the transaction, below).
///
/// MySQL, MariaDB and SQLite keep a transaction going after a failed statement, so the
/// rollback is simply tried. PostgreSQL aborts the whole transaction at its first error, a
/// missing savepoint's included: the try runs inside a savepoint of its own, `dbscope_probe`,
/// rolled back to when the session's is not there. When the transaction was already aborted,
/// no probe can open: rolling back to the session's transaction savepoint brings it back, and
/// without one the pin breaks. Autocommit savepoints ([`PIN_AUTOCOMMIT`]) are never rolled
/// back to here: sessions that succeeded leave theirs open, and the latest of that name need
/// not be the cut-off session's, so rolling back to one could undo other sessions' work.
async fn undo_cut_off_session<DB: Backend>(
    raw: &mut DB::Connection,
    dialect: Dialect,
) -> std::result::Result<(), String> {
    let outcome = if dialect == Dialect::Postgres {
        // Done, the probe (opened inside the session's savepoint) gone with it.
        match run::<DB>(raw, PROBED_ROLLBACK).await {
            Err(e) if is_no_such_savepoint(&e) => run::<DB>(raw, PROBE_BACK).await,
            Err(e) if is_aborted(&e) => match run::<DB>(raw, PIN_ROLLBACK).await {
                Err(e) if is_no_such_savepoint(&e) => {
                    return Err("a failed statement aborted the test's transaction outside \
                                any transaction of a session's"
                        .into());
                }
                done => done,
            },
            tried => tried,
        }
    } else {
        match run::<DB>(raw, PIN_ROLLBACK).await {
            Err(e) if is_no_such_savepoint(&e) => Ok(()),
            tried => tried,
        }
    };
    outcome.map_err(|e| e.to_string())
}

/// [`PIN_ROLLBACK`] inside a probe savepoint, so that a missing `dbscope_app` does not abort
/// the test's transaction on PostgreSQL.
const PROBED_ROLLBACK: &str = "SAVEPOINT dbscope_probe; \
     ROLLBACK TO SAVEPOINT dbscope_app; RELEASE SAVEPOINT dbscope_app";
/// Back out of the probe once `dbscope_app` was not there.
const PROBE_BACK: &str = "ROLLBACK TO SAVEPOINT dbscope_probe; RELEASE SAVEPOINT dbscope_probe";

/// The savepoint named is not there: PostgreSQL's SQLSTATE 3B001, MySQL/MariaDB's error 1305,
/// SQLite's "no such savepoint".
fn is_no_such_savepoint(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code().as_deref() == Some("3B001")
        || crate::error::mysql_error_number(db.as_ref()) == Some(1305)
        || db.message().starts_with("no such savepoint")
}

/// PostgreSQL refused the statement because the transaction is aborted (SQLSTATE 25P02).
fn is_aborted(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("25P02"))
}

/// MySQL/MariaDB: whether a transaction is open on the connection (one row back, or none).
async fn mysql_in_transaction<DB: Backend>(raw: &mut DB::Connection) -> bool {
    let sql = "SELECT 1 AS dbscope_in_transaction FROM DUAL WHERE @@in_transaction = 1";
    rows::<DB>(raw, sql).await.is_ok_and(|rows| rows == 1)
}

/// Runs `sql`, every result read; how many rows it returned.
async fn rows<DB: Backend>(raw: &mut DB::Connection, sql: &'static str) -> sqlx::Result<usize> {
    DB::fetch_many(raw, SqlStr::from_static(sql))
        .try_fold(0, |rows, step| {
            std::future::ready(Ok(rows + usize::from(step.is_right())))
        })
        .await
}

/// Runs one command, every result read.
async fn run<DB: Backend>(raw: &mut DB::Connection, sql: &'static str) -> sqlx::Result<()> {
    DB::fetch_many(raw, SqlStr::from_static(sql))
        .try_for_each(|_| std::future::ready(Ok(())))
        .await
}
