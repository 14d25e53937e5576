use std::fmt;
use std::time::{Duration, Instant};

use futures_core::stream::BoxStream;
use futures_util::TryStreamExt;
use sqlx::{Connection, SqlStr};

use crate::backend::replication::Position;
use crate::backend::{Backend, Dialect, TxSql, dialect};
use crate::config::{IsolationLevel, SessionConfig};
use crate::engine::{
    Access, Conn, PIN_AUTOCOMMIT, PIN_BEGIN, PIN_COMMIT, PIN_ROLLBACK, is_dead, pin_autocommit_end,
    pin_autocommit_next,
};
use crate::error::{Op, is_connection_lost, is_connection_lost_db};
use crate::hosts::{ReadToken, Route};
use crate::{Bind, BindKey, BindManager, Error, Result};

mod executor;

use executor::{InFlight, Statement};

/// How long a dropped session's connection may take to roll back before it is discarded.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an autocommit statement is refused on a bind behind a transaction pooler.
const AUTOCOMMIT_BEHIND_POOLER: &str = "an autocommit statement cannot run behind PgBouncer in \
     transaction pooling mode (its parse and its execution may reach two different server \
     connections); run it in a transaction (drop `.autocommit(true)`, or call `begin()` first)";

/// A unit of work on one bind: lazily connected, transactional, never leaking a transaction.
///
/// A session checks out no connection until its first statement, then pins that connection
/// until it is dropped or [closed](Session::close). The first statement begins a transaction
/// (unless the session is in autocommit mode); [`commit`](Session::commit) and
/// [`rollback`](Session::rollback) end it, and the next statement begins another.
///
/// Run any sqlx query on `&mut session`:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dbscope::Error> {
/// # let manager = dbscope::BindManager::new(dbscope::BindConfig::new("sqlite::memory:"))?;
/// let mut session = manager.session::<sqlx::Sqlite>("default")?; // no connection yet
/// sqlx::query("CREATE TABLE notes (body TEXT)").execute(&mut session).await?; // BEGIN, then this
/// sqlx::query("INSERT INTO notes (body) VALUES (?)").bind("hi").execute(&mut session).await?;
/// let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes").fetch_one(&mut session).await?;
/// assert_eq!(n, 1);
/// session.commit().await?;
/// # Ok(()) }
/// ```
///
/// Errors keep their bind through sqlx's API. A driver's `Database` or `Io` error met in a
/// statement stays that `sqlx::Error` variant (same message, code, kind, and
/// `downcast_ref::<PgDatabaseError>()`), with the bind tucked inside; errors dbscope raises
/// inside a query (a checkout timeout, a closed bind …) travel boxed in
/// `sqlx::Error::Configuration`. `?` into [`dbscope::Error`](crate::Error) gives back either one
/// with its bind named.
///
/// # Drop behavior
///
/// Dropping a session with a transaction open rolls it back: in the background when a tokio
/// runtime is there, after which the connection returns to the pool clean; if the rollback
/// fails, takes longer than 5 s, or there is no runtime, the connection is discarded (closing
/// it makes the server roll back).
///
/// A session whose last operation was cancelled or broke off mid-flight (a poisoned session)
/// leaves its connection in an unknown state, which is never reused as it is. It goes to a
/// background task on the current tokio runtime that, within 2 s, lets the driver read what is
/// still in flight, rolls back, and asks the server whether a transaction is still open; only
/// when the server's own answer says none is the connection returned to the pool (counted in
/// [`BindStatus::recovered`](crate::BindStatus::recovered)). If a step fails or the time runs
/// out, or there is no runtime, the connection is discarded, and the server rolls back. A
/// cancelled COMMIT stays unknown to the session all the same: its next operation fails with
/// [`ErrorKind::Poisoned`](crate::ErrorKind::Poisoned). A connection found dead is discarded.
///
/// # Round trips
///
/// On PostgreSQL, a transaction's BEGIN is not sent on its own when it need not be: it waits for
/// the transaction's first statement. When that statement has no parameters (a `&str`, or
/// `sqlx::raw_sql`, which sqlx sends as a simple query; not `sqlx::query` even without binds,
/// which uses the extended protocol), the BEGIN goes **in the same message**, `BEGIN; <sql>`: a
/// one-statement transaction costs two round trips instead of three. The rule:
///
/// - **A statement with parameters** sends the BEGIN first, on its own, as before. So do
///   [`connection`](Session::connection) and blocking sessions' raw access; a
///   [`savepoint`](Session::savepoint) first sends `BEGIN; SAVEPOINT …`, one message.
/// - **A transaction in which nothing ran** ([`begin`](Session::begin), then
///   [`commit`](Session::commit) or [`rollback`](Session::rollback)) sends nothing at all.
/// - **If the message fails**, the session cannot tell whether BEGIN ran: the server parses the
///   whole message before it runs any of it, so a syntax error anywhere in it means BEGIN never
///   ran and no transaction is open, while any other error came after BEGIN, leaving the
///   transaction open and aborted. To the application it is aborted either way, so the session
///   refuses further statements and savepoints itself, unsent, with
///   [`ErrorKind::TransactionAborted`](crate::ErrorKind::TransactionAborted), until the
///   transaction ends: [`rollback`](Session::rollback) (or a drop) rolls it back as usual, and
///   [`commit`](Session::commit) rolls it back and returns `TransactionAborted`. Never does a
///   statement the application meant inside the transaction run in autocommit.
/// - **What the application sees is unchanged**: BEGIN's own result is not among the results
///   of `fetch_many`, nor in `execute`'s `rows_affected`. The position of a syntax error
///   (`PgDatabaseError::position`) counts from the start of the message, BEGIN included.
/// - **A dead connection** met by the message, on a connection checked out for it, before the
///   server answered anything, is replaced and the message sent again (see "Dead
///   connections"): the transaction never ended, so nothing of it can have committed.
/// - Not for a test's pinned connection (its transaction is a savepoint, begun as before),
///   MySQL, SQLite and `engine = "any"` binds (unchanged), or sessions that send no BEGIN
///   anyway (autocommit, read-only without BEGIN).
///
/// # Read-only sessions
///
/// A read-only session ([`Bind::read_session`], `.read_only(true)`, a read-only scope or route,
/// a bind with `session.read_only = true`) runs **without BEGIN and COMMIT** where that cannot
/// change what it sees, on a connection the server itself keeps read-only: a write fails with
/// the server's read-only error (SQLSTATE 25006 on PostgreSQL, error 1792 on MySQL/MariaDB)
/// instead of landing, and a one-statement read costs one round trip instead of three. The
/// rule, in one place:
///
/// - **PostgreSQL at READ COMMITTED** (its default; READ UNCOMMITTED is the same there): each
///   statement takes its own snapshot inside a transaction too, so each runs in a transaction
///   of its own, on a connection with `default_transaction_read_only = on`.
/// - **MySQL/MariaDB at READ COMMITTED or READ UNCOMMITTED**: the same, on a connection with
///   `autocommit = 1` and `SET SESSION TRANSACTION READ ONLY`. At MySQL's default REPEATABLE
///   READ, a transaction's statements share one snapshot: read sessions begin with `START
///   TRANSACTION READ ONLY`, as before.
/// - **The level** is the session's (or the bind's) `isolation`, else the connection's default,
///   asked of the server once per connection (`SHOW default_transaction_isolation`, in the
///   round trip that makes the connection read-only; MySQL's `tx_isolation`, or known from a
///   transactional bind's connection setup). Never guessed: the statements run at the
///   connection's default, so that must be the level the session asked for, too.
/// - **Keep their transaction** (`BEGIN READ ONLY`, as before): sessions at REPEATABLE READ or
///   SERIALIZABLE, transactions opened on purpose ([`begin`](Session::begin), savepoints), SQLite
///   (its snapshot spans the transaction), binds behind PgBouncer in transaction pooling mode
///   (a connection's settings do not stick there), `engine = "any"` binds, a test's pinned
///   connection (`dbscope::testing`'s transaction mode: savepoints, as before), and every
///   session of a bind with `session.read_only_without_begin = false`, which also leaves the
///   connections' settings alone.
/// - **Autocommit read-only sessions** run on a read-only connection too, at any level: their
///   writes fail instead of landing. Not on SQLite or `engine = "any"` binds, nor with
///   `session.read_only_without_begin = false`: there an autocommit session's `read_only` is
///   not enforced (nothing makes the connection read-only, and no transaction says READ
///   ONLY), so keep such reads transactional ([`Bind::read_session`]), which is.
///
/// A connection keeps its mode, set once, and changes it only when a session needs the other:
/// a transactional write session's BEGIN says `READ WRITE` (PostgreSQL: in the same round trip;
/// MySQL: `START TRANSACTION READ WRITE`, its autocommit being on), an autocommit write session
/// first sends `SET default_transaction_read_only = off` (MySQL: `SET SESSION TRANSACTION READ
/// WRITE`). A replica's PostgreSQL connections open read-only (set in the startup packet, no
/// round trip). A change cut off before its answer leaves the mode unknown, and the next
/// session states the one it needs; so does lending the raw connection
/// ([`connection`](Session::connection)). Change these settings through the session's options,
/// not with `SET`.
///
/// What differs without a transaction:
///
/// - `now()` (PostgreSQL's transaction time) is each statement's own, as `statement_timestamp()`;
/// - transaction-scoped locks (`pg_advisory_xact_lock`) are released at the end of their
///   statement;
/// - `SELECT … FOR UPDATE` is refused in a read-only transaction anyway (PostgreSQL; MySQL
///   refuses it on a read-only connection too), so nothing is lost there;
/// - a failed statement aborts nothing: the next one runs;
/// - [`commit`](Session::commit) and [`rollback`](Session::rollback) cost no round trip, and
///   [`in_transaction`](Session::in_transaction) says `false`.
///
/// What stays: a stream dropped after its first row leaves the session usable (see "Dropped
/// streams"), and a first statement that meets a dead connection goes again on another (see
/// "Dead connections").
///
/// # Dead connections
///
/// A pooled connection can die while it sits idle: a server restart or failover, a killed
/// backend, a firewall dropping idle connections. A session finds out on its first operation:
///
/// - **Transactional sessions** (the default) begin with BEGIN, before anything of yours has
///   run (on PostgreSQL, perhaps in one message with your first statement: see "Round trips";
///   met by a dead connection, that message goes again as a BEGIN would, nothing of it having
///   committed). When the BEGIN on a connection checked out for it fails because the connection is
///   dead (an I/O error or a closed connection, or the goodbye a server sends as it closes
///   one: SQLSTATE class 08, 57P, MariaDB's connection killed (1927, SQLSTATE 70100, which a
///   killed query shares); never any other database error), the
///   session discards it and begins once more on another connection, within what is left of
///   `acquire_timeout`. You see no error. This holds for [`begin`](Session::begin) and
///   savepoints too.
/// - **MySQL/MariaDB** sessions send no BEGIN: the connections of a bind whose sessions are
///   transactional run `autocommit = 0` (set once, when each opens, with the bind's default
///   isolation), so a transaction's first statement opens it, and COMMIT or ROLLBACK ends it; a
///   transaction in which nothing ran ends with no round trip at all. Sessions with an isolation
///   or access mode of their own, and read-only binds, begin with `START TRANSACTION` as
///   before. When that first statement meets a dead connection (the same errors as above) before
///   the connection answered anything, the session discards it and sends the statement again on
///   another, within what is left of `acquire_timeout`: the transaction never ended, so nothing
///   of the statement can have committed. The exceptions are the statements that commit by
///   themselves (DDL such as `CREATE TABLE`, `LOCK TABLES`) and writes to non-transactional
///   tables (MyISAM): run those after another statement of the transaction, or in an autocommit
///   session. An autocommit session on such a connection first turns `autocommit` back on
///   (`SET autocommit = 1`, which absorbs a dead connection as BEGIN does), and the connection
///   keeps it: transactional sessions that get it later begin with BEGIN.
/// - Once a bind has found one dead connection, each of its idle connections last known alive
///   before then is pinged on its next checkout, whatever `health_check` says, and replaced if
///   the ping fails: a restart that killed all of them costs one absorbed BEGIN and a ping each.
/// - **Read-only sessions without BEGIN** (see "Read-only sessions") absorb a dead connection
///   as a BEGIN does: at the `SET` that makes it read-only, or, when it already is, at their
///   first statement, which goes again on another connection: on a read-only connection,
///   nothing of it can have been written. A lost connection later is `is_retryable()`.
/// - **Autocommit sessions** are not retried: their first statement is the first thing on the
///   wire, and a connection can die under a statement the server has run, and committed. It
///   fails with [`ErrorKind::Query`](crate::ErrorKind::Query), `is_connection_lost()` true and
///   `is_retryable()` false. What protects them is the ping of suspect connections above, from
///   the first dead connection seen on the bind (by any session), and
///   [`HealthCheck::Always`](crate::HealthCheck::Always), which pings every checkout.
/// - Inside a transaction, a lost connection is reported: the server rolled the transaction
///   back; [`is_retryable`](crate::Error::is_retryable) says whether running the whole unit of
///   work again is safe.
///
/// # Dropped streams and cancellation
///
/// Reading part of a stream and dropping it is not a cancellation. A stream from
/// [`fetch`](sqlx::query::Query::fetch) or `fetch_many` on `&mut session` that has yielded at
/// least one item (a row, or a statement's result) and is then dropped, **inside a
/// transaction**, leaves the session usable: idle, in the same transaction, keeping its
/// connection. `rows.next().await` then drop is ordinary code:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dbscope::Error> {
/// # let manager = dbscope::BindManager::new(dbscope::BindConfig::new("sqlite::memory:"))?;
/// use futures_util::TryStreamExt;
/// let mut session = manager.session::<sqlx::Sqlite>("default")?;
/// sqlx::query("CREATE TABLE notes (body TEXT)").execute(&mut session).await?;
/// sqlx::query("INSERT INTO notes VALUES ('a'), ('b')").execute(&mut session).await?;
/// let first: Option<String> = sqlx::query_scalar("SELECT body FROM notes")
///     .fetch(&mut session)
///     .try_next()
///     .await?; // the stream is dropped here, one row read
/// assert!(first.is_some());
/// sqlx::query("INSERT INTO notes VALUES ('c')").execute(&mut session).await?;
/// session.commit().await?; // all three rows committed
/// # Ok(()) }
/// ```
///
/// Why this is safe: once an item has come back, the statement has run on the server, and what
/// the rest of the stream holds can no longer change the session's bookkeeping unnoticed.
///
/// - **PostgreSQL**: sqlx 0.9 executes every portal with no row limit and a `Sync`, so the server
///   runs the statement to its end whether or not the rows are read (an `INSERT`, `UPDATE` or
///   `DELETE … RETURNING` runs to completion before its first row is sent). Before the
///   connection's next statement, sqlx reads and discards the rest up to `ReadyForQuery`; an
///   error among it (a failure after the rows read, such as a division by zero in row 5,000)
///   comes back as the error of that next operation, which then has not run, and, as any
///   failed statement, leaves the transaction aborted, so it cannot commit.
/// - **MySQL/MariaDB**: the server sends the whole result (a write with `RETURNING` runs to its
///   end as sqlx reads on), and sqlx reads and discards the rest of it before the next command;
///   an error packet in it comes back as the error of that next operation, which then has not
///   run.
/// - **SQLite**: the worker thread stops stepping the statement the next time it hands over a
///   row (it runs ahead of the reader by at most the row channel's size, 50 by default) and
///   resets it before the next command: the rest is not run, and an error among the rows it had
///   stepped ahead is dropped with them. A read loses nothing; a write with `RETURNING` made all
///   its changes in its first step, before its first row.
///
/// So a [`commit`](Session::commit) never succeeds over an error left in a dropped stream; a
/// [`rollback`](Session::rollback) (or a savepoint's) undoes the dropped statement with the rest
/// and succeeds; `SAVEPOINT` and `RELEASE` report the error as the statement's. Until
/// the session's next successful round trip, its connection is rolled back or pinged before it
/// returns to the pool, so no other session ever receives these results.
///
/// What stays a cancellation, because its outcome is genuinely unknown, and poisons the session
/// ([`ErrorKind::Poisoned`](crate::ErrorKind::Poisoned) from its next operation; when the session
/// drops or [disconnects](Session::disconnect), its transaction is rolled back and its
/// connection recovered or discarded, as "Drop behavior" says):
///
/// - a stream dropped **before its first item**: the statement may not have reached the server
///   yet, may be running, or may have finished; a write may or may not happen (sqlx could even
///   send it later, before the next statement);
/// - a stream dropped before its end **outside a transaction** (autocommit mode, no
///   [`begin`](Session::begin)): there the end of the statement is its commit, which may still
///   fail after the rows (a deferred constraint, a serialization failure) and was never read.
///   Not so for a read-only session on a read-only connection (see "Read-only sessions"), whose
///   statements have nothing to commit: there a dropped stream is as inside a transaction;
/// - a cancelled `BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `RELEASE` or `ROLLBACK TO` (its effect
///   on the transaction is unknown);
/// - a cancelled statement future whose result was never handed back: `execute`, `fetch_one`,
///   `fetch_optional`, and `fetch_all` of `sqlx::query`, even when sqlx had read part of the
///   results inside it (a write whose outcome the caller never read). `fetch_all` of `query_as`,
///   `query_scalar` and `Query::map` is sqlx collecting a `fetch` stream: cancelled after its
///   first row, it counts as a dropped stream. (Through a scope's `ScopedSession`, which hands
///   `execute` and `fetch_all` to sqlx's default, stream-based versions, they count as dropped
///   streams too.)
///
/// One case to keep in mind: a query string of **several statements** (`raw_sql`, or SQLite's
/// multi-statement queries) dropped part-way. PostgreSQL and MySQL run the statements after the
/// one being read, and report an error in them from the next operation; SQLite runs the
/// statements its worker reached before the drop (it steps ahead of the reader by up to the
/// row channel's size), and drops an error among those with the unread rows. Read such a
/// stream to its end, or run its writes on their own, if their outcome matters.
///
/// # Concurrency
///
/// Every operation takes `&mut self`, so two tasks cannot interleave statements on one session:
/// the compiler refuses. Share a session between tasks behind a `tokio::sync::Mutex`.
pub struct Session<DB: Backend> {
    bind: Bind<DB>,
    conn: Option<Conn<DB>>,
    tx: TxState,
    /// Session-level options, when they differ from the bind's defaults.
    custom: Option<Custom>,
    /// The session's `db.session` span, parent of its statements' (disabled when no subscriber
    /// wants it).
    span: tracing::Span,
    /// Read or write, its token, and the host it was given (binds with replicas).
    route: Route,
    /// The position of the session's last commit (binds with replicas).
    token: Option<ReadToken>,
    /// Autocommit statements ran on this write session of a bind with replicas since its last
    /// token: [`commit`](Session::commit) asks the server's position for one.
    untokened: bool,
}

struct Custom {
    options: SessionConfig,
    sql: std::result::Result<TxSql, String>,
}

/// What the session knows of its connection's protocol and transaction state.
#[derive(Debug, Default)]
struct TxState {
    /// 0: no transaction; 1: a transaction; n ≥ 2: n − 1 savepoints inside it.
    depth: u32,
    /// A dropped savepoint guard's level, rolled back before the next operation.
    pending_rollback_to: Option<u32>,
    wire: Wire,
    /// PostgreSQL: a statement failed, the transaction can only roll back.
    aborted: bool,
    /// The raw connection was lent out: its state is unverified until our next round trip.
    lent: bool,
    /// A read stream was dropped after its first item, inside the transaction: the rest of its
    /// results are still on the wire. sqlx reads them before the connection's next round trip,
    /// and an error among them comes back from that round trip; until one has succeeded, the
    /// connection is rolled back or pinged before it returns to the pool, never handed on with
    /// someone else's results.
    unread: bool,
    /// How the open transaction ends, fixed when it began: later option changes apply to the
    /// next transaction, never to the way this one ends.
    end: EndSql,
    /// The open transaction was begun without a BEGIN, on a connection whose first statement
    /// opens it (MySQL's `autocommit = 0`), and nothing has run in it yet: nothing is open on
    /// the server, and ending it takes no round trip.
    implicit: bool,
    /// The connection was checked out for this session and has not answered yet: a dead one
    /// fails before anything of the session's has run on a server (see "Dead connections").
    unproven: bool,
    /// When the checkout of an unproven connection began: a retry on another connection gets
    /// what is left of `acquire_timeout` since then, not a budget of its own.
    checkout_began: Option<Instant>,
    /// PostgreSQL: the open transaction's BEGIN, not sent yet. The next statement without
    /// parameters carries it in its own message; anything else sends it first (see "Round
    /// trips"). Nothing is open on the server, and ending it takes no round trip.
    pending_begin: Option<SqlStr>,
    /// The message in flight carries the transaction's BEGIN with its first statement.
    piggybacked: bool,
    /// That message failed: whether its BEGIN ran is unknown (not after a syntax error anywhere
    /// in it), so the session refuses statements itself until the transaction rolls back,
    /// rather than let the next one run in autocommit.
    begin_failed: bool,
    /// The server rolled the whole transaction back on its own (MySQL/MariaDB's deadlock, error
    /// 1213), savepoints included: the session refuses statements and savepoints
    /// ([`ErrorKind::TransactionAborted`](crate::ErrorKind::TransactionAborted)) until the
    /// transaction ends, rather than run them in a new one outside what the code thinks it is
    /// in; `aborted` is set too, so its commit says so.
    rolled_back: bool,
    /// A test's pinned PostgreSQL connection: the last autocommit statement's savepoint is
    /// still open (see `PIN_AUTOCOMMIT`); `aborted` says whether the statement failed.
    autocommit_savepoint: bool,
    /// A read-only session's statements run outside any transaction, each in one of its own, on
    /// a connection the server keeps read-only (see "Read-only sessions"): nothing to begin,
    /// nothing to end, until the session's options change or its connection does.
    bare: bool,
}

#[derive(Clone, Copy, Debug)]
struct EndSql {
    commit: &'static str,
    rollback: &'static str,
}

impl Default for EndSql {
    fn default() -> Self {
        Self {
            commit: "COMMIT",
            rollback: "ROLLBACK",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Wire {
    /// Nothing in flight: the connection's state is what `TxState` says.
    #[default]
    Idle,
    /// An operation started and has not finished; if it never does, it was cancelled.
    Busy,
    /// An operation was cut off or failed with an effect unknown: the connection is recovered
    /// in the background (or discarded) when the session lets it go, never reused as it is.
    Broken,
    /// The connection died (the server or the network closed it): it is discarded, and the
    /// bind's older idle connections become suspect.
    Lost,
    /// The driver lost track of the protocol: the connection is discarded.
    Garbled,
}

impl TxState {
    /// Records how an operation ended. Errors the server answered leave the connection usable;
    /// anything else (I/O, protocol, a crashed worker) leaves it in an unknown state.
    fn settle<T>(&mut self, result: &sqlx::Result<T>, aborts_on_error: bool) {
        match result {
            Ok(_) => {
                self.wire = Wire::Idle;
                // sqlx read what a dropped stream left before this round trip could succeed.
                self.unread = false;
                self.unproven = false;
                self.piggybacked = false;
            }
            Err(e) => self.settle_err(e, aborts_on_error),
        }
    }

    /// Whether the connection must be checked (a round trip) before it returns to the pool.
    fn unverified(&self) -> bool {
        self.lent || self.unread
    }

    /// Whether the open transaction has reached the server yet: not when it was begun without
    /// BEGIN (MySQL's `autocommit = 0`) or its BEGIN is still pending, and nothing ran since.
    fn unopened(&self) -> bool {
        self.implicit || self.pending_begin.is_some()
    }

    fn settle_err(&mut self, err: &sqlx::Error, aborts_on_error: bool) {
        let piggybacked = std::mem::take(&mut self.piggybacked);
        if is_dead(err) {
            self.wire = Wire::Lost;
            return;
        }
        if is_connection_lost(err) {
            self.wire = Wire::Garbled;
            return;
        }
        if !is_answered(err) {
            self.wire = Wire::Broken;
            return;
        }
        self.unproven = false;
        let in_savepoint = self.depth > 0 || self.autocommit_savepoint;
        if aborts_on_error && in_savepoint && matches!(err, sqlx::Error::Database(_)) {
            self.aborted = true;
        }
        if self.depth > 0 && rolls_back_the_transaction(err) {
            self.aborted = true;
            self.rolled_back = true;
        }
        if piggybacked {
            self.aborted = true;
            self.begin_failed = true;
        }
        self.wire = Wire::Idle;
    }
}

/// MySQL/MariaDB's deadlock (error 1213): InnoDB rolls back the whole transaction, where its
/// other errors undo the statement alone.
fn rolls_back_the_transaction(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if crate::error::mysql_error_number(&**db) == Some(1213))
}

/// An error after which the connection is known to be usable: the server answered, or the
/// driver refused before sending anything.
fn is_answered(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => !is_connection_lost_db(&**db),
        sqlx::Error::Encode(_)
        | sqlx::Error::InvalidArgument(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::RowNotFound => true,
        _ => false,
    }
}

impl<DB: Backend> Bind<DB> {
    /// A new session with the bind's defaults. Opens nothing: the session checks a connection
    /// out on its first statement.
    pub fn session(&self) -> Session<DB> {
        Session::new(self.clone())
    }

    /// A new read session: read-only (without BEGIN where that reads alike, else in READ ONLY
    /// transactions: see "Read-only sessions" on [`Session`]), and on a bind with replicas it
    /// goes to a healthy replica within `max_lag` (two chosen at random, the less busy one),
    /// else to the primary (or fails, with `fallback = "fail"`). Its host is chosen at its
    /// first checkout and kept for its life. On a bind without replicas, a read-only session.
    pub fn read_session(&self) -> Session<DB> {
        Session::routed(self.clone(), Route::read(None))
    }

    /// A read session that sees the commit `token` stands for: it goes to a replica that has
    /// replayed past it, waits up to `token_wait` for one, or goes to the primary. A token
    /// from another timeline (before a failover) never sends it to a replica.
    pub fn read_session_after(&self, token: Option<ReadToken>) -> Session<DB> {
        Session::routed(self.clone(), Route::read(token))
    }
}

impl BindManager {
    /// A new session on the bind `name`. Opens nothing until its first statement.
    ///
    /// # Errors
    ///
    /// As [`BindManager::bind`].
    pub fn session<DB: Backend>(&self, name: &str) -> Result<Session<DB>> {
        Ok(self.bind::<DB>(name)?.session())
    }

    /// A new [read session](Bind::read_session) on the bind `name`.
    ///
    /// # Errors
    ///
    /// As [`BindManager::bind`].
    pub fn read_session<DB: Backend>(&self, name: &str) -> Result<Session<DB>> {
        Ok(self.bind::<DB>(name)?.read_session())
    }

    /// A new [read session](Bind::read_session_after) on the bind `token` names, that sees the
    /// commit it stands for.
    ///
    /// # Errors
    ///
    /// As [`BindManager::bind`].
    pub fn read_session_after<DB: Backend>(&self, token: &ReadToken) -> Result<Session<DB>> {
        Ok(self
            .bind::<DB>(token.bind())?
            .read_session_after(Some(token.clone())))
    }

    /// A new session on the bind a [`BindKey`] names.
    ///
    /// # Errors
    ///
    /// As [`BindManager::bind`].
    pub fn session_for<K: BindKey>(&self) -> Result<Session<K::Database>> {
        self.session(K::NAME)
    }
}

impl<DB: Backend> Session<DB> {
    pub(crate) fn new(bind: Bind<DB>) -> Self {
        Self::routed(bind, Route::default())
    }

    pub(crate) fn routed(bind: Bind<DB>, route: Route) -> Self {
        let span = bind.observer().session_span();
        Self {
            bind,
            conn: None,
            tx: TxState::default(),
            custom: None,
            span,
            route,
            token: None,
            untokened: false,
        }
    }

    /// Whether this is a read session ([`Bind::read_session`]).
    pub fn is_read(&self) -> bool {
        self.route.read
    }

    /// The read-your-writes token of this session's last commit, on a bind with replicas (on
    /// PostgreSQL and MariaDB): give it to a later read session ([`Bind::read_session_after`])
    /// so that it sees this commit. `None` before a commit, on a read session, and on binds
    /// without replicas.
    ///
    /// An [autocommit](Session::autocommit) session's statements land on their own; its
    /// [`commit`](Session::commit) (which a scope's end and the web layers call) then asks the
    /// server's position in one round trip, and the token covers every statement before it.
    pub fn read_token(&self) -> Option<&ReadToken> {
        self.token.as_ref()
    }

    /// Whether the session's connection is on a replica (`false` on the primary, before the
    /// first checkout, and on binds without replicas).
    pub fn on_replica(&self) -> bool {
        self.conn.is_some() && self.bind.hosts().is_some_and(|h| h.on_replica(&self.route))
    }

    /// The bind this session works on.
    pub fn bind(&self) -> &Bind<DB> {
        &self.bind
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.tx.depth > 0
    }

    /// Whether the session holds a connection (it has run a statement and not been closed).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Runs the session's next transactions at this isolation level.
    pub fn isolation(self, level: IsolationLevel) -> Self {
        self.with_options(|o| o.isolation = Some(level))
    }

    /// Makes the session read-only (or not) from its next transaction on: its writes fail on
    /// the server. See "Read-only sessions" for when it runs without BEGIN.
    pub fn read_only(self, on: bool) -> Self {
        self.with_options(|o| o.read_only = on)
    }

    /// Autocommit mode: statements run without BEGIN/COMMIT, each landing on its own;
    /// [`Session::begin`] and [`Session::savepoint`] still open transactions.
    pub fn autocommit(self, on: bool) -> Self {
        self.with_options(|o| o.autocommit = on)
    }

    /// Whether the session runs in autocommit mode.
    pub(crate) fn is_autocommit(&self) -> bool {
        self.options().autocommit
    }

    fn with_options(mut self, change: impl FnOnce(&mut SessionConfig)) -> Self {
        let mut options = self.options();
        change(&mut options);
        // What the next statement needs of the connection is decided anew.
        self.tx.bare = false;
        let sql = self
            .bind
            .dialect()
            .tx_sql(options.isolation, options.read_only);
        self.custom = Some(Custom { options, sql });
        self
    }

    fn options(&self) -> SessionConfig {
        let mut options = self
            .custom
            .as_ref()
            .map_or_else(|| self.bind.session_defaults(), |c| c.options);
        options.read_only |= self.route.read;
        options
    }

    fn tx_sql(&self) -> Result<&TxSql> {
        match &self.custom {
            None if self.route.read => Ok(self.bind.read_tx_sql()),
            None => Ok(self.bind.tx_sql()),
            Some(Custom { sql: Ok(sql), .. }) => Ok(sql),
            Some(Custom { sql: Err(what), .. }) => Err(Error::unsupported(self.bind.name(), what)),
        }
    }

    /// Opens a transaction now, checking a connection out if needed; a no-op when one is open.
    /// On PostgreSQL the BEGIN itself waits for the first statement, and goes in its message if
    /// it can (see "Round trips" on [`Session`]): a transaction in which nothing runs sends
    /// nothing.
    ///
    /// Statements begin one by themselves, so this is needed only in autocommit mode, for a
    /// read-only session that needs a transaction (one `now()`, transaction-scoped locks: at
    /// READ COMMITTED it runs without one otherwise, see "Read-only sessions"; a snapshot
    /// shared by its statements needs REPEATABLE READ), or to learn about a checkout problem as
    /// a typed error before the first statement.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout), [`ErrorKind::Connect`](crate::ErrorKind::Connect), [`ErrorKind::Closed`](crate::ErrorKind::Closed) from the checkout;
    /// [`ErrorKind::Query`](crate::ErrorKind::Query) when BEGIN fails (not on PostgreSQL, where it is sent later); [`ErrorKind::Poisoned`](crate::ErrorKind::Poisoned) after a cancelled operation.
    ///
    /// A connection checked out for this BEGIN and found dead by it is replaced once, as
    /// described under "Dead connections" on [`Session`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: cancelled during checkout, nothing changes; during BEGIN, the session is
    /// poisoned and its connection recovered in the background (or discarded) when it drops.
    pub async fn begin(&mut self) -> Result<()> {
        self.attach_and_begin().await.map(drop)
    }

    /// Commits the open transaction, if any. The session keeps its connection; its next
    /// statement begins a new transaction.
    ///
    /// In [autocommit](Session::autocommit) mode each statement has committed on its own; on a
    /// bind with replicas, this then asks the primary's position (one round trip), for the
    /// [`read_token`](Session::read_token) of those statements.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::TransactionAborted`](crate::ErrorKind::TransactionAborted) when an earlier statement failed on PostgreSQL (the
    /// transaction is rolled back instead); [`ErrorKind::Query`](crate::ErrorKind::Query) when the server refuses the commit
    /// (the transaction is then rolled back); [`ErrorKind::Poisoned`](crate::ErrorKind::Poisoned) after a cancelled operation.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: cancelled during COMMIT, the outcome is unknown; the session is poisoned,
    /// and its connection is recovered (once the server has answered the COMMIT, whichever way)
    /// or discarded when it drops, never reused as it is.
    pub async fn commit(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.conn.is_none() {
            return Ok(());
        }
        self.flush_pending_rollback().await?;
        if self.tx.depth == 0 {
            if self.untokened {
                Box::pin(self.token_for_autocommit()).await;
            }
            return Ok(());
        }
        if self.tx.aborted {
            self.rollback_transaction().await?;
            return Err(Error::transaction_aborted(self.bind.name()));
        }
        if self.tx.unopened() && self.tx.depth == 1 {
            self.end_transaction(); // nothing ran: nothing to commit
            if self.untokened {
                Box::pin(self.token_for_autocommit()).await;
            }
            return Ok(());
        }
        let commit = self.commit_sql();
        match self.exec_returning(commit, DB::first_text).await {
            Ok(position) => {
                self.conn_mut().ended(true);
                self.end_transaction();
                self.bind.observer().metrics.transaction(true);
                self.keep_token(position);
                Ok(())
            }
            Err(e) => {
                if self.tx.wire == Wire::Idle {
                    self.bind.observer().metrics.transaction(false);
                    // The server refused the commit (a deferred constraint, a serialization
                    // failure, SQLITE_BUSY); make sure nothing stays open before reporting.
                    self.rollback_after_failed_commit().await;
                }
                Err(Error::query(Some(self.bind.name()), Op::commit(), e))
            }
        }
    }

    /// Rolls back the open transaction, if any. The session keeps its connection.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Query`](crate::ErrorKind::Query) when ROLLBACK fails (the connection is then
    /// recovered or discarded when the session drops); [`ErrorKind::Poisoned`](crate::ErrorKind::Poisoned)
    /// after a cancelled operation.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in effect: cancelled during ROLLBACK, the session is poisoned, and its
    /// transaction is rolled back when it drops (its connection recovered or discarded).
    pub async fn rollback(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.conn.is_none() || self.tx.depth == 0 {
            self.tx.pending_rollback_to = None;
            return Ok(());
        }
        self.rollback_transaction().await
    }

    /// Opens a savepoint (or, with no transaction open in autocommit mode, the transaction
    /// itself) and returns the level that ends it.
    pub(crate) async fn open_savepoint(&mut self) -> Result<u32> {
        if self.attach_and_begin().await? && self.options().autocommit {
            return Ok(1);
        }
        if self.tx.begin_failed {
            return Err(Error::first_statement_failed(self.bind.name()));
        }
        if self.tx.rolled_back {
            return Err(Error::transaction_aborted(self.bind.name()));
        }
        let level = self.tx.depth + 1;
        let savepoint = dialect::savepoint(level);
        if self.tx.pending_begin.is_some() {
            self.send_begin(Some(savepoint)).await?; // `BEGIN; SAVEPOINT …`: one round trip
        } else {
            self.exec_or_poison(savepoint, "SAVEPOINT").await?;
        }
        self.tx.depth = level;
        Ok(level)
    }

    /// How deep the open transaction is: 0 without one, 1 for a transaction, one more per
    /// savepoint inside it.
    pub(crate) fn depth(&self) -> u32 {
        self.tx.depth
    }

    /// The session's raw sqlx connection, checked out and inside the session's transaction (a
    /// read-only session running without one lends it outside any, read-only: see "Read-only
    /// sessions"), for APIs that want a `&mut PgConnection` and the like (`COPY`, `LISTEN`,
    /// migrations).
    ///
    /// Work cancelled on the raw connection is invisible to the session, so it treats the
    /// connection as unverified: when the session ends, its transaction is rolled back and the
    /// connection pinged before it returns to the pool. Lent outside a transaction of the
    /// session's (an autocommit session, a read-only one without BEGIN), where what runs on it
    /// may open one of its own (a raw `BEGIN`), the connection goes back only once the server
    /// says no transaction is open, any it finds rolled back, as a cut-off session's does (see
    /// "Drop behavior"); it is not counted as recovered.
    ///
    /// # Errors
    ///
    /// As [`Session::begin`] (a pending BEGIN is sent here, so its errors are too), and
    /// [`ErrorKind::TransactionAborted`](crate::ErrorKind::TransactionAborted) after the
    /// transaction's first statement failed (see "Round trips" on [`Session`]).
    ///
    /// # Cancel safety
    ///
    /// As [`Session::begin`].
    pub async fn connection(&mut self) -> Result<&mut DB::Connection> {
        self.ready().await?;
        self.send_begin(None).await?; // what runs on it runs in the transaction
        self.tx.lent = true;
        self.tx.implicit = false; // what runs on it opens the transaction
        self.conn_mut().lent();
        Ok(self.conn_mut().raw())
    }

    /// Ends the session: rolls back an open transaction and returns the connection to the pool.
    ///
    /// Prefer this to a plain drop where you can await: the rollback is then confirmed, and an
    /// error reaches you.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Query`](crate::ErrorKind::Query) when the rollback fails; the connection is
    /// then recovered in the background, or discarded.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the session is dropped, with the drop behaviour described above.
    pub async fn close(mut self) -> Result<()> {
        self.disconnect().await
    }

    /// Ends the session's work and gives its connection back, like [`close`](Session::close),
    /// but keeps the session: its next statement checks out a fresh connection.
    ///
    /// This is also how a [poisoned](crate::ErrorKind::Poisoned) session starts over: its
    /// connection goes to background recovery (see "Drop behavior") and the session is usable
    /// again at once.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Query`](crate::ErrorKind::Query) when the rollback fails; the connection is
    /// then recovered in the background, or discarded, and the session is usable again all the
    /// same.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: cancelled mid-rollback, the session is poisoned, and its connection is
    /// recovered or discarded when it drops or is disconnected again.
    pub async fn disconnect(&mut self) -> Result<()> {
        let result = self.settle_before_release().await;
        self.let_go();
        self.tx = TxState::default();
        result
    }

    /// [`close`](Session::close), recovering a cut-off connection here rather than in the
    /// background: for blocking sessions, whose drop returns once the connection is settled.
    pub(crate) async fn close_recovering(mut self) -> Result<()> {
        let result = self.settle_before_release().await;
        if matches!(self.tx.wire, Wire::Busy | Wire::Broken)
            && let Some(conn) = self.conn.take()
        {
            conn.recover_now().await;
        }
        self.let_go();
        result
    }

    /// Rolls back and verifies a lent connection, so that it can go back to the pool clean.
    async fn settle_before_release(&mut self) -> Result<()> {
        if self.conn.is_none() {
            return Ok(());
        }
        if self.tx.wire == Wire::Idle && self.tx.depth > 0 {
            self.rollback_transaction().await?;
        }
        if self.tx.wire == Wire::Idle {
            self.end_autocommit_savepoint().await?;
        }
        if self.tx.wire == Wire::Idle && self.lent_outside_a_transaction() {
            // The application may have opened a transaction of its own on it: only the server
            // can say it did not.
            self.tx.lent = false;
            if let Some(conn) = self.conn.take() {
                conn.verify_now().await;
            }
            return Ok(());
        }
        if self.tx.wire == Wire::Idle && self.tx.unverified() {
            let result = self.conn_mut().raw().ping().await;
            self.tx.settle(&result, false);
            result.map_err(|e| Error::query(Some(self.bind.name()), Op::new("ping"), e))?;
            self.tx.lent = false;
        }
        Ok(())
    }

    /// The raw connection was lent while no transaction of the session's was open (an
    /// autocommit session, a read-only one running without BEGIN), on a pooled connection: a
    /// transaction opened on it (a raw `BEGIN`) is the session's to end. A test's pinned
    /// connection is left as it was: what runs there stays inside the test's transaction.
    fn lent_outside_a_transaction(&self) -> bool {
        self.tx.lent
            && self.tx.depth == 0
            && self.conn.as_ref().is_some_and(|conn| !conn.is_pinned())
    }

    // ----- the state machine behind the public methods -----

    fn check_usable(&mut self) -> Result<()> {
        match self.tx.wire {
            Wire::Idle => return Ok(()),
            // Still busy with an operation whose future was dropped: it was cancelled.
            Wire::Busy => self.tx.wire = Wire::Broken,
            Wire::Broken | Wire::Lost | Wire::Garbled => {}
        }
        Err(Error::poisoned(self.bind.name()))
    }

    fn conn_mut(&mut self) -> &mut Conn<DB> {
        self.conn.as_mut().expect("the session is attached")
    }

    /// Checks a connection out if the session has none, and settles dropped savepoints.
    async fn attach(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.conn.is_none() {
            let began = Instant::now();
            let budget = self.bind.acquire_timeout();
            self.conn = Some(self.bind.checkout_routed(&mut self.route, budget).await?);
            self.tx.unproven = true;
            self.tx.checkout_began = Some(began);
        }
        self.flush_pending_rollback().await
    }

    /// What is left of `acquire_timeout` since the checkout of the session's unproven
    /// connection began: the budget of a retry on another connection, which is not given one
    /// of its own. The one clock read is the checkout's, in `attach`.
    fn retry_budget(&self) -> Duration {
        let spent = self
            .tx
            .checkout_began
            .map_or(Duration::ZERO, |b| b.elapsed());
        self.bind.acquire_timeout().saturating_sub(spent)
    }

    /// Everything a statement needs first: a connection, and a transaction unless autocommit
    /// or a read-only session that runs without one. On PostgreSQL the transaction's BEGIN may
    /// be left pending, for the statement to send (see "Round trips").
    /// Blocking sessions call it before a statement, so that its errors reach them typed.
    pub(crate) async fn ready(&mut self) -> Result<()> {
        let tx = &self.tx;
        let idle = tx.wire == Wire::Idle && tx.pending_rollback_to.is_none();
        if (tx.depth > 0 || tx.bare) && idle && !tx.begin_failed && !tx.rolled_back {
            return Ok(()); // the hot path: mid-transaction, or reading without one
        }
        if tx.rolled_back {
            // A savepoint guard dropped since may have ended the transaction (an autocommit
            // session's outermost): its rollback goes first, and decides.
            if self.tx.pending_rollback_to.is_some() {
                self.attach().await?;
            }
            if self.tx.rolled_back {
                return Err(Error::transaction_aborted(self.bind.name()));
            }
        }
        let tx = &self.tx;
        let idle = tx.wire == Wire::Idle && tx.pending_rollback_to.is_none();
        if tx.begin_failed && idle {
            return Err(Error::first_statement_failed(self.bind.name()));
        }
        let options = self.options();
        let reads = !options.autocommit && self.reads_without_begin(options);
        if options.autocommit || reads {
            if options.autocommit && self.tx.depth == 0 && self.bind.pools_transactions() {
                return Err(Error::unsupported(
                    self.bind.name(),
                    AUTOCOMMIT_BEHIND_POOLER,
                ));
            }
            // No BEGIN to try a connection with: an autocommit session's dead one fails the
            // statement itself, which may have run, so it is reported, never retried (see
            // "Dead connections"); a read-only session's statement goes again.
            self.attach().await?;
            if self.tx.depth == 0 {
                let bare = match self.prepared_already(options, reads) {
                    Some(bare) => bare,
                    // Boxed: the rare round trips keep the common path's future small.
                    None => Box::pin(self.prepare_connection(options, reads)).await?,
                };
                if reads && bare {
                    return Ok(());
                }
            }
            if options.autocommit {
                if self.tx.depth == 0 && !self.route.read && !self.untokened {
                    self.untokened = self.bind.hosts().is_some_and(|h| h.makes_tokens());
                }
                if self.tx.depth == 0
                    && self.conn_mut().is_pinned()
                    && self.bind.dialect().aborts_on_error()
                {
                    Box::pin(self.next_autocommit_savepoint()).await?;
                }
                return Ok(());
            }
        }
        self.attach_and_begin().await.map(drop)
    }

    /// Whether the session is read-only and may run on a connection the server keeps
    /// read-only: on a bind that can make them so, with `read_only_without_begin` on.
    fn reads_without_begin(&self, options: SessionConfig) -> bool {
        options.read_only
            && options.read_only_without_begin
            && self.bind.makes_connections_read_only()
    }

    /// What [`prepare_connection`](Self::prepare_connection) would answer, when the connection
    /// needs no round trip for it (the common case: it is what the last session left); `None`
    /// when it does.
    fn prepared_already(&mut self, options: SessionConfig, transactional: bool) -> Option<bool> {
        let conn = self.conn.as_ref()?;
        if conn.is_pinned() {
            return Some(false);
        }
        if self.reads_without_begin(options) {
            if transactional {
                let default = conn.default_isolation()?;
                let dialect = self.bind.dialect();
                if !dialect.reads_alike_without_begin(options.isolation, default) {
                    return Some(false);
                }
            }
            if conn.access() != Access::ReadOnly {
                return None;
            }
            self.tx.bare = true;
            return Some(true);
        }
        if transactional {
            return Some(false);
        }
        let plain = conn.access() == Access::AsOpened && !conn.has_implicit_transactions();
        plain.then_some(false)
    }

    /// Makes the connection what the session's statements need outside a transaction, before
    /// any of them runs there (`transactional`: a transactional session, which begins one when
    /// this returns `false`):
    ///
    /// - a read-only session, on a bind that can: the connection made read-only, and `true`
    ///   (for a transactional one, only at an isolation level where that reads alike, as
    ///   [`Dialect::reads_alike_without_begin`](crate::backend::Dialect) says);
    /// - an autocommit session that writes: the connection made read-write again, and MySQL's
    ///   autocommit turned back on (`SET autocommit = 1`; the connection keeps it: later
    ///   transactional sessions on it begin with BEGIN).
    ///
    /// A connection checked out for this session that turns out dead here (nothing of the
    /// session's has run on it) is replaced once, as a BEGIN's would be.
    async fn prepare_connection(
        &mut self,
        options: SessionConfig,
        transactional: bool,
    ) -> Result<bool> {
        let fresh = self.tx.unproven;
        match self.prepare_once(options, transactional).await {
            Err(e) if fresh && e.is_connection_lost() => {
                tracing::debug!(bind = %self.bind.name(), error = %e, "a pooled connection was dead before the session's first statement; trying another");
                self.switch_connection().await?;
                self.prepare_once(options, transactional).await
            }
            other => other,
        }
    }

    async fn prepare_once(&mut self, options: SessionConfig, transactional: bool) -> Result<bool> {
        if self.conn_mut().is_pinned() {
            return Ok(false); // a test's connection keeps its settings
        }
        if self.reads_without_begin(options) {
            if transactional && !self.reads_alike_without_begin(options.isolation).await? {
                return Ok(false);
            }
            self.make_read_only().await?;
            self.tx.bare = true;
            return Ok(true);
        }
        if transactional {
            return Ok(false); // its BEGIN says READ WRITE if the connection needs it
        }
        if self.conn_mut().access() != Access::AsOpened {
            let sql = self.bind.dialect().read_write_sql();
            self.set_access(sql, Access::AsOpened).await?;
        }
        if self.conn_mut().has_implicit_transactions() {
            let sql = SqlStr::from_static(dialect::AUTOCOMMIT_ON);
            self.exec_or_poison(sql, "SET autocommit").await?;
            self.conn_mut().lost_implicit_transactions();
        }
        Ok(false)
    }

    /// Whether a read-only session asking for isolation `wanted` reads alike without BEGIN on
    /// this connection, whose default level is asked of the server once (on PostgreSQL, in the
    /// round trip that makes the connection read-only).
    async fn reads_alike_without_begin(&mut self, wanted: Option<IsolationLevel>) -> Result<bool> {
        use IsolationLevel::{ReadCommitted, ReadUncommitted};
        if wanted.is_some_and(|level| !matches!(level, ReadCommitted | ReadUncommitted)) {
            return Ok(false);
        }
        let dialect = self.bind.dialect();
        let default = match self.conn_mut().default_isolation() {
            Some(level) => level,
            None => {
                let and_read_only =
                    dialect == Dialect::Postgres && self.conn_mut().access() != Access::ReadOnly;
                if and_read_only {
                    self.conn_mut().set_access(Access::Unknown);
                }
                let sql = SqlStr::from_static(dialect.isolation_query(and_read_only));
                self.read_unread_before("SHOW").await?;
                let answer = self
                    .exec_returning(sql, DB::last_text)
                    .await
                    .map_err(|e| self.poisoned_by(e, "SHOW"))?;
                if and_read_only {
                    self.conn_mut().set_access(Access::ReadOnly);
                }
                let Some(level) = answer.as_deref().and_then(IsolationLevel::from_server) else {
                    tracing::debug!(bind = %self.bind.name(), ?answer, "the server named an isolation level dbscope does not know; read sessions begin transactions");
                    return Ok(false);
                };
                self.conn_mut().learned_isolation(level);
                level
            }
        };
        Ok(dialect.reads_alike_without_begin(wanted, default))
    }

    /// Makes the connection read-only, enforced by the server, unless it is already.
    async fn make_read_only(&mut self) -> Result<()> {
        if self.conn_mut().access() == Access::ReadOnly {
            return Ok(());
        }
        let dialect = self.bind.dialect();
        let sql = dialect
            .read_only_sql()
            .expect("binds that make connections read-only have the SQL for it");
        self.set_access(sql, Access::ReadOnly).await?;
        if dialect == Dialect::MySql {
            self.conn_mut().lost_implicit_transactions(); // it turned autocommit on
        }
        Ok(())
    }

    /// Changes the connection's default access mode with `sql`: unknown until the server has
    /// answered, so that a change cut off leaves the next session stating the mode it needs.
    async fn set_access(&mut self, sql: &'static str, access: Access) -> Result<()> {
        self.conn_mut().set_access(Access::Unknown);
        self.exec_or_poison(SqlStr::from_static(sql), "SET").await?;
        self.conn_mut().set_access(access);
        Ok(())
    }

    /// A test's pinned PostgreSQL connection: ends the last autocommit statement's savepoint
    /// and opens the next one's, in one round trip.
    async fn next_autocommit_savepoint(&mut self) -> Result<()> {
        let sql = if self.tx.autocommit_savepoint {
            pin_autocommit_next(self.tx.aborted)
        } else {
            PIN_AUTOCOMMIT
        };
        self.exec_or_poison(SqlStr::from_static(sql), "SAVEPOINT")
            .await?;
        self.tx.autocommit_savepoint = true;
        self.tx.aborted = false;
        Ok(())
    }

    /// Ends the last autocommit statement's savepoint, if one is open, before a transaction
    /// begins or the connection goes.
    async fn end_autocommit_savepoint(&mut self) -> Result<()> {
        if !self.tx.autocommit_savepoint || self.tx.depth > 0 {
            return Ok(());
        }
        let sql = pin_autocommit_end(self.tx.aborted);
        self.exec_or_poison(SqlStr::from_static(sql), "RELEASE SAVEPOINT")
            .await?;
        self.tx.autocommit_savepoint = false;
        self.tx.aborted = false;
        Ok(())
    }

    /// Checks a connection out if the session has none, then begins a transaction unless one
    /// is open; `true` when it began one.
    ///
    /// A connection checked out here whose BEGIN fails because it is dead (the server closed
    /// it while it sat in the pool) is discarded, and BEGIN runs once more on another,
    /// within what is left of `acquire_timeout`: nothing of the caller's has run yet. The
    /// discard marks the bind's older idle connections suspect, so the retry's checkout pings
    /// them first and gets a live one.
    async fn attach_and_begin(&mut self) -> Result<bool> {
        let fresh = self.conn.is_none();
        self.attach().await?;
        if self.tx.depth > 0 {
            return Ok(false);
        }
        self.end_autocommit_savepoint().await?;
        match self.begin_transaction().await {
            Err(e) if fresh && e.is_connection_lost() => {
                tracing::debug!(bind = %self.bind.name(), error = %e, "a pooled connection was dead at BEGIN; beginning on another");
                // Boxed: the rare path keeps the common one's future small.
                Box::pin(self.begin_on_another()).await?;
            }
            other => other?,
        }
        Ok(true)
    }

    /// Discards the dead connection BEGIN met, and begins on another within the
    /// [retry budget](Self::retry_budget).
    async fn begin_on_another(&mut self) -> Result<()> {
        self.switch_connection().await?;
        self.begin_transaction().await
    }

    /// Discards the dead connection the session met before anything of its own ran, and checks
    /// out another within the [retry budget](Self::retry_budget), which stays the first
    /// checkout's.
    async fn switch_connection(&mut self) -> Result<()> {
        let budget = self.retry_budget();
        let began = self.tx.checkout_began;
        self.let_go();
        self.tx = TxState::default();
        self.conn = Some(self.bind.checkout_routed(&mut self.route, budget).await?);
        self.tx.unproven = true;
        self.tx.checkout_began = began;
        Ok(())
    }

    /// Whether the next statement opens a transaction begun without BEGIN, on a connection
    /// checked out for it that has not answered yet: if it turns out dead, nothing can have
    /// committed (the transaction never ended), so the statement may go again on another.
    pub(super) fn may_resend(&self) -> bool {
        DB::RESENDS_STATEMENTS && (self.tx.unopened() || self.tx.bare) && self.tx.unproven
    }

    /// Whether `err`, from the statement [`may_resend`](Self::may_resend) allowed, says the
    /// connection was dead before it ever answered.
    pub(super) fn lost_before_answering(&self, err: &sqlx::Error) -> bool {
        self.tx.unproven && is_dead(err)
    }

    /// After the first statement of a transaction begun without BEGIN, or of a read-only
    /// session running without one, met a dead connection: starts again on another, within
    /// the [retry budget](Self::retry_budget).
    pub(super) async fn start_again(&mut self) -> Result<()> {
        tracing::debug!(bind = %self.bind.name(), "a pooled connection was dead at a session's first statement; sending it again on another");
        let bare = self.tx.bare;
        self.switch_connection().await?;
        let options = self.options();
        if bare && (self.prepare_once(options, !options.autocommit).await? || options.autocommit) {
            return Ok(());
        }
        self.begin_transaction().await
    }

    async fn begin_transaction(&mut self) -> Result<()> {
        if self.begins_implicitly() {
            // MySQL with `autocommit = 0`: the first statement opens the transaction.
            self.tx.depth = 1;
            self.tx.end = EndSql::default();
            self.tx.implicit = true;
            return Ok(());
        }
        // A read-write transaction on a connection made read-only for read sessions says so.
        let read_write = !self.options().read_only && self.conn_mut().access() != Access::AsOpened;
        let sql = self.tx_sql()?;
        let begin = if read_write {
            &sql.begin_read_write
        } else {
            &sql.begin
        };
        let (mut begin, mut end) = (
            begin.clone(),
            EndSql {
                commit: sql.commit,
                rollback: sql.rollback,
            },
        );
        if self.conn_mut().is_pinned() {
            // A test's pinned connection: the outer transaction is the test's, this one a
            // savepoint inside it (the session's isolation and read-only options do not apply).
            begin = SqlStr::from_static(PIN_BEGIN);
            end = EndSql {
                commit: PIN_COMMIT,
                rollback: PIN_ROLLBACK,
            };
        } else if DB::PIGGYBACKS_BEGIN {
            // PostgreSQL: the BEGIN goes with the first statement (see "Round trips").
            self.tx.depth = 1;
            self.tx.end = end;
            self.tx.pending_begin = Some(begin);
            return Ok(());
        }
        self.exec_or_poison(begin, "BEGIN").await?;
        self.tx.depth = 1;
        self.tx.end = end;
        Ok(())
    }

    /// Sends the pending BEGIN, if any, with `then` in the same message (a savepoint); without
    /// one, sends nothing. A connection checked out for it that turns out dead is replaced
    /// once, as under "Dead connections": nothing of the session's has run on it.
    async fn send_begin(&mut self, then: Option<SqlStr>) -> Result<()> {
        let Some(begin) = self.tx.pending_begin.take() else {
            return Ok(());
        };
        let fresh = self.tx.unproven;
        let sql = joined(&begin, then.as_ref());
        match self.exec_or_poison(sql, "BEGIN").await {
            Err(e) if fresh && e.is_connection_lost() => {
                tracing::debug!(bind = %self.bind.name(), error = %e, "a pooled connection was dead at BEGIN; beginning on another");
                // Boxed: the rare path keeps the common one's future small.
                Box::pin(self.begin_on_another()).await?;
                match self.tx.pending_begin.take() {
                    Some(begin) => {
                        let sql = joined(&begin, then.as_ref());
                        self.exec_or_poison(sql, "BEGIN").await
                    }
                    None => Ok(()),
                }
            }
            other => other,
        }
    }

    /// Whether the next transaction opens with its first statement: the connection's setup
    /// made it so, and the session asks for the bind's own isolation and access mode, which the
    /// setup gave the connection.
    fn begins_implicitly(&self) -> bool {
        let Some(conn) = &self.conn else {
            return false;
        };
        if !conn.has_implicit_transactions() || conn.access() != Access::AsOpened {
            return false;
        }
        // A read session is READ ONLY, which the connection's setup did not make it unless the
        // bind's defaults are read-only.
        let (options, defaults) = (self.options(), self.bind.session_defaults());
        options.isolation == defaults.isolation && options.read_only == defaults.read_only
    }

    async fn rollback_transaction(&mut self) -> Result<()> {
        if self.tx.unopened() && self.tx.depth == 1 {
            self.end_transaction(); // nothing ran: nothing is open on the server
            return Ok(());
        }
        let sql = self.tx.end.rollback;
        self.exec_or_poison(SqlStr::from_static(sql), "ROLLBACK")
            .await?;
        self.conn_mut().ended(false);
        self.end_transaction();
        self.bind.observer().metrics.transaction(false);
        Ok(())
    }

    async fn rollback_after_failed_commit(&mut self) {
        match self.exec(SqlStr::from_static(self.tx.end.rollback)).await {
            // "No transaction in progress" is an answer too: either way nothing is open now.
            Ok(()) => self.end_transaction(),
            Err(e) if is_answered(&e) => self.end_transaction(),
            // Broken or lost, as `exec` settled it.
            Err(_) => {}
        }
    }

    fn end_transaction(&mut self) {
        self.tx.depth = 0;
        self.tx.implicit = false;
        self.tx.pending_begin = None;
        self.tx.begin_failed = false;
        self.tx.pending_rollback_to = None;
        self.tx.aborted = false;
        self.tx.rolled_back = false;
        self.tx.lent = false;
    }

    /// Rolls back to the savepoint of a guard dropped without commit.
    async fn flush_pending_rollback(&mut self) -> Result<()> {
        let Some(level) = self.tx.pending_rollback_to else {
            return Ok(());
        };
        if self.tx.rolled_back && level > 1 {
            // The server rolled everything back, its savepoints too: nothing to send. The
            // transaction stays refused until the code ends it.
            self.tx.pending_rollback_to = None;
            return Ok(());
        }
        if level <= 1 {
            return self.rollback_transaction().await;
        }
        self.exec_or_poison(dialect::rollback_to(level), "ROLLBACK TO SAVEPOINT")
            .await?;
        self.tx.depth = level - 1;
        self.tx.pending_rollback_to = None;
        self.tx.aborted = false;
        Ok(())
    }

    /// Runs a transaction-control statement; any failure leaves its effect unknown, so it
    /// poisons the session.
    async fn exec_or_poison(&mut self, sql: SqlStr, what: &'static str) -> Result<()> {
        self.read_unread_before(what).await?;
        self.exec(sql).await.map_err(|e| self.poisoned_by(e, what))
    }

    /// What a dropped stream left unread is read first, so that an error in it is not taken
    /// for the failure of the next statement of the session's own (`what`): a rollback
    /// (`ROLLBACK`, `ROLLBACK TO`) undoes that statement anyway and goes on; the others report
    /// the error without poisoning.
    async fn read_unread_before(&mut self, what: &'static str) -> Result<()> {
        if let Err(e) = self.read_unread().await {
            let undone = what.starts_with("ROLLBACK") && self.tx.wire == Wire::Idle;
            if !undone {
                return Err(Error::query(
                    Some(self.bind.name()),
                    Op::statement(false),
                    e,
                ));
            }
        }
        Ok(())
    }

    /// The error of the session's own statement `what`, which poisons the session: even an
    /// answered failure leaves the statement's effect in doubt; a lost connection stays lost.
    fn poisoned_by(&mut self, err: sqlx::Error, what: &'static str) -> Error {
        if self.tx.wire == Wire::Idle {
            self.tx.wire = Wire::Broken;
        }
        Error::query(Some(self.bind.name()), Op::new(what), err)
    }

    /// Reads what a dropped stream left on the wire, if anything: sqlx reads it before any
    /// round trip, and a ping is the smallest one. An error among it (a failure of the dropped
    /// statement after the rows read) is that statement's, and settles as such.
    async fn read_unread(&mut self) -> sqlx::Result<()> {
        if !self.tx.unread {
            return Ok(());
        }
        let (raw, mut op) = self.start_op(Op::statement(false), true);
        let result = raw.ping().await;
        op.settle(&result);
        result
    }

    /// COMMIT, or on a write session of a bind with replicas, COMMIT and the position that
    /// makes its token, in one message.
    fn commit_sql(&self) -> SqlStr {
        let makes_tokens = self.bind.hosts().is_some_and(|h| h.makes_tokens());
        let with_position = (makes_tokens && !self.route.read)
            .then(|| self.bind.dialect().commit_with_position())
            .flatten()
            .filter(|_| self.tx.end.commit == "COMMIT");
        SqlStr::from_static(with_position.unwrap_or(self.tx.end.commit))
    }

    /// The token of the autocommit statements that ran since the last: the primary's position
    /// now, which is past each of their commits. Failing, the session has no token for them
    /// (a later read may not see them), which is logged; their rows have landed all the same,
    /// so the commit is not reported failed.
    async fn token_for_autocommit(&mut self) {
        let Some(sql) = self.bind.dialect().position_sql() else {
            self.untokened = false;
            return;
        };
        match self
            .exec_returning(SqlStr::from_static(sql), DB::first_text)
            .await
        {
            Ok(position) => self.keep_token(position),
            Err(error) => {
                self.untokened = false;
                tracing::warn!(bind = %self.bind.name(), %error, "no read token for autocommit statements: the position query failed");
            }
        }
    }

    fn keep_token(&mut self, position: Option<String>) {
        self.untokened = false;
        let Some(hosts) = self.bind.hosts() else {
            return;
        };
        let position = position.as_deref().and_then(Position::parse);
        if let Some(position) = position {
            let token = ReadToken::new(
                self.bind.shared_name(),
                hosts.timeline(&self.route),
                position,
            );
            self.token = Some(match self.token.take() {
                Some(earlier) => earlier.later(token),
                None => token,
            });
        }
    }

    /// [`exec`](Self::exec), keeping `pick` of the last row (a column as text).
    async fn exec_returning(
        &mut self,
        sql: SqlStr,
        pick: fn(&DB::Row) -> Option<String>,
    ) -> sqlx::Result<Option<String>> {
        let (raw, mut op) = self.start_op(Op::new("command"), true);
        let mut last = None;
        let result = DB::fetch_many(raw, sql)
            .try_for_each(|item| {
                if let sqlx::Either::Right(row) = &item {
                    last = pick(row);
                }
                std::future::ready(Ok(()))
            })
            .await;
        op.settle(&result);
        result.map(|()| last)
    }

    /// Runs one command, all its results drained, with in-flight tracking.
    async fn exec(&mut self, sql: SqlStr) -> sqlx::Result<()> {
        let (raw, mut op) = self.start_op(Op::new("command"), true);
        let result = drain(DB::fetch_many(raw, sql)).await;
        op.settle(&result);
        result
    }

    /// Marks an operation in flight and lends the connection for it, with what settles it when
    /// it ends. If the operation's future is dropped before it settles, the session stays
    /// `Busy`: poisoned. `may_abort`: a failure of this operation aborts a PostgreSQL
    /// transaction (a statement, or a prepare once the transaction is open on the server).
    fn start_op(&mut self, op: Op, may_abort: bool) -> (&mut DB::Connection, InFlight<'_>) {
        self.start(op, may_abort, false)
    }

    /// Whether a prepare or describe the server refuses aborts the session's transaction: it
    /// does on PostgreSQL (any error in a transaction block does), once the transaction is open
    /// on the server; not while its BEGIN is still pending, as the prepare runs before it.
    pub(crate) fn aborts_if_refused(&self) -> bool {
        self.tx.pending_begin.is_none()
    }

    /// [`start_op`](Self::start_op) for a statement sqlx runs through the session: timed for
    /// `db.client.operation.duration`, in a `db.statement` span.
    fn start_statement(&mut self, may_abort: bool) -> (&mut DB::Connection, InFlight<'_>) {
        // A read-only statement has no outcome to be unsure of.
        let autocommit = self.tx.depth == 0 && !self.tx.bare;
        // A read-only session's write is its own mistake, wherever it runs.
        let on_primary = self.route.primary && !self.options().read_only;
        let op = Op::statement(autocommit).on_primary(on_primary);
        self.start(op, may_abort, true)
    }

    fn start(
        &mut self,
        op: Op,
        may_abort: bool,
        statement: bool,
    ) -> (&mut DB::Connection, InFlight<'_>) {
        let aborts_on_error = may_abort && self.bind.dialect().aborts_on_error();
        let Self {
            bind,
            conn,
            tx,
            span,
            ..
        } = self;
        debug_assert!(
            !may_abort || tx.pending_begin.is_none(),
            "a pending BEGIN is sent before anything that needs the transaction"
        );
        tx.wire = Wire::Busy;
        // Whatever goes to the server now opens the transaction begun without BEGIN.
        tx.implicit = false;
        let statement = statement.then(|| Statement::new(bind.observer(), span));
        let raw = conn.as_mut().expect("the session is attached").raw();
        let op = InFlight {
            tx,
            aborts_on_error,
            bind: bind.name(),
            op,
            statement,
        };
        (raw, op)
    }

    /// Whether the session can end without a round trip: no transaction open, nothing in
    /// flight, nothing to roll back or verify. Dropping it then gives its connection back clean.
    pub(crate) fn ends_without_round_trip(&self) -> bool {
        let tx = &self.tx;
        (tx.depth == 0 || tx.unopened())
            && !self.untokened
            && !(tx.autocommit_savepoint && tx.aborted)
            && tx.wire == Wire::Idle
            && !tx.unverified()
            && tx.pending_rollback_to.is_none()
    }

    pub(crate) fn savepoint_dropped(&mut self, level: u32) {
        if level > self.tx.depth {
            // Its transaction ended through the guard (a commit, a rollback, a disconnect of
            // the session): there is nothing left to roll back, and in a transaction begun
            // since, a ROLLBACK TO would name a savepoint that is not its own.
            return;
        }
        let pending = self.tx.pending_rollback_to.map_or(level, |p| p.min(level));
        self.tx.pending_rollback_to = Some(pending);
    }

    pub(crate) async fn release_savepoint(&mut self, level: u32) -> Result<()> {
        if level > self.tx.depth {
            return Ok(()); // its transaction already ended (see `savepoint_dropped`)
        }
        self.attach().await?;
        if self.tx.rolled_back && level > 1 {
            return Err(Error::transaction_aborted(self.bind.name()));
        }
        if level <= 1 {
            return self.commit().await;
        }
        self.exec_or_poison(dialect::release_savepoint(level), "RELEASE SAVEPOINT")
            .await?;
        self.tx.depth = level - 1;
        Ok(())
    }

    pub(crate) async fn rollback_savepoint(&mut self, level: u32) -> Result<()> {
        self.savepoint_dropped(level);
        self.attach().await
    }
}

/// `begin`, and `then` after it in the same message.
fn joined(begin: &SqlStr, then: Option<&SqlStr>) -> SqlStr {
    match then {
        Some(then) => dialect::piggybacked(begin, then.as_str()),
        None => begin.clone(),
    }
}

async fn drain<T>(stream: BoxStream<'_, sqlx::Result<T>>) -> sqlx::Result<()> {
    stream.try_for_each(|_| std::future::ready(Ok(()))).await
}

impl<DB: Backend> Drop for Session<DB> {
    fn drop(&mut self) {
        self.let_go();
    }
}

impl<DB: Backend> Session<DB> {
    /// Gives the connection up without awaiting: back to the pool when it is clean, rolled back
    /// in the background when a transaction is open, recovered in the background (or
    /// discarded) when it was cut off mid-operation, discarded when it is dead.
    fn let_go(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        match self.tx.wire {
            Wire::Lost => {
                tracing::debug!(bind = %self.bind.name(), "discarding a dead connection");
                return conn.discard_dead();
            }
            Wire::Garbled => return conn.discard(),
            Wire::Busy | Wire::Broken => {
                tracing::debug!(bind = %self.bind.name(), "recovering a connection cut off mid-operation");
                return conn.recover();
            }
            Wire::Idle => {}
        }
        // An autocommit statement's savepoint that succeeded may stay: its work is kept in the
        // test's transaction either way. One that failed is rolled back, uncounted.
        let undo = self.tx.depth == 0 && self.tx.autocommit_savepoint && self.tx.aborted;
        if self.tx.lent && self.tx.depth == 0 && !conn.is_pinned() && !undo {
            // As `lent_outside_a_transaction`: proven idle by the server, in the background.
            return conn.verify();
        }
        if (self.tx.depth == 0 || self.tx.unopened()) && !self.tx.unverified() && !undo {
            conn.give_back();
            return;
        }
        let rollback = (self.tx.depth > 0).then_some(self.tx.end.rollback);
        if rollback.is_some() {
            // Rolled back in the background, or by the server when that fails.
            self.bind.observer().metrics.transaction(false);
        }
        let undo = undo.then(|| pin_autocommit_end(true));
        conn.in_background(|conn| clean_up(CleanupGuard(Some(conn)), rollback, undo));
    }
}

/// Holds a connection being cleaned up; if the cleanup does not finish (error, timeout, the
/// runtime shutting down and dropping the task), the connection is discarded, never returned.
struct CleanupGuard<DB: Backend>(Option<Conn<DB>>);

impl<DB: Backend> Drop for CleanupGuard<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.discard();
        }
    }
}

/// Rolls the connection back (`rollback`: a transaction, counted; `undo`: a failed autocommit
/// statement's savepoint on a test's pinned connection, not counted) or pings it, then gives it
/// back.
async fn clean_up<DB: Backend>(
    mut guard: CleanupGuard<DB>,
    rollback: Option<&'static str>,
    undo: Option<&'static str>,
) {
    let conn = guard.0.as_mut().expect("guard holds the connection");
    let work = async {
        match rollback.or(undo) {
            Some(sql) => drain(DB::fetch_many(conn.raw(), SqlStr::from_static(sql))).await,
            None => conn.raw().ping().await,
        }
    };
    match tokio::time::timeout(CLEANUP_TIMEOUT, work).await {
        Ok(Ok(())) => {
            let conn = guard.0.take().expect("guard holds the connection");
            if rollback.is_some() {
                conn.ended(false);
            }
            conn.give_back();
        }
        Ok(Err(e)) if is_dead(&e) => guard.0.take().map_or((), Conn::discard_dead),
        _ => {} // the guard discards it
    }
}

impl<DB: Backend> fmt::Debug for Session<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("bind", &self.bind.name())
            .field("connected", &self.conn.is_some())
            .field("depth", &self.tx.depth)
            .field("state", &self.tx.wire)
            .finish_non_exhaustive()
    }
}
