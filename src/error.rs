//! dbscope's one error type: an opaque [`Error`] holding an [`ErrorKind`], the bind it is about,
//! and its cause.
//!
//! The shape is std::io's and tokio-postgres's: callers decide on [`Error::kind`] and the
//! predicates, read the few payloads through accessors, and find the cause in `source()`. New
//! kinds and fields are therefore not breaking changes. Every message is written here, by the
//! constructor of its kind.

use std::fmt;
use std::path::Path;
use std::time::Duration;

mod located;
mod routing;
mod tls;

pub(crate) use located::{Op, locate};
pub use routing::RoutingFailure;
pub use tls::TlsCheck;

/// `Result` with dbscope's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from user code, such as a hook's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in dbscope.
///
/// Decide on [`kind()`](Error::kind) or the predicates ([`is_timeout`](Error::is_timeout),
/// [`is_retryable`](Error::is_retryable) …), not on the message:
///
/// ```
/// use dbscope::{BindConfig, BindManager, ErrorKind};
///
/// let manager = BindManager::new(BindConfig::new("sqlite::memory:")).unwrap();
/// let err = manager.bind::<sqlx::Sqlite>("reports").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::UnknownBind);
/// assert_eq!(err.bind(), Some("reports"));
/// assert_eq!(err.known_binds(), ["default"]);
/// assert_eq!(
///     err.to_string(),
///     "no bind named `reports`; known binds: default; check the name or add the bind to the config"
/// );
/// ```
///
/// The message says what failed where (`` bind `main`: BEGIN failed ``) and how to fix it; the
/// cause, when there is one (the driver's error, an I/O error, a hook's), is in
/// [`source()`](std::error::Error::source), not repeated in the message. No printed form of an
/// error (`Display`, `Debug`, a log line) ever holds a password.
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    bind: Option<String>,
    message: String,
    source: Option<BoxError>,
    detail: Detail,
}

/// What an [`Error`] is about. Match on it with a wildcard arm: kinds may be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The bind's URL could not be parsed.
    InvalidUrl,
    /// The URL's scheme names no database dbscope knows.
    UnknownScheme,
    /// The config needs a cargo feature that was not compiled in: the URL's database driver,
    /// the `any` engine, or TLS.
    DriverNotEnabled,
    /// A bind has options but no URL.
    MissingUrl,
    /// No bind is configured at all.
    NoBinds,
    /// A bind name is empty or has characters that config keys cannot carry.
    InvalidBindName,
    /// The same bind name was configured twice.
    DuplicateBind,
    /// `max_connections` is zero.
    ZeroMaxConnections,
    /// `min_connections` is larger than `max_connections`.
    MinExceedsMax,
    /// A wait that must be above zero is zero (`acquire_timeout`, `routing.probe_timeout`,
    /// `routing.probe_interval`): every checkout or probe would fail or spin.
    ZeroDuration,
    /// An option this backend cannot honour (e.g. `READ COMMITTED` on SQLite).
    Unsupported,
    /// A config file could not be read.
    ConfigFile,
    /// A config file or environment variable holds a value that does not fit.
    Config,
    /// No bind has the name asked for ([`Error::known_binds`] lists those that do).
    UnknownBind,
    /// The bind exists but is of another database type than the one asked for.
    BackendMismatch,
    /// No connection became available within the bind's `acquire_timeout`
    /// ([`Error::waited`]).
    Timeout,
    /// The bind's manager was closed or dropped.
    Closed,
    /// A new connection could not be opened.
    Connect,
    /// A new connection's TLS handshake failed, or the server offers no TLS and the bind's mode
    /// requires it: [`Error::tls_check`] says which check failed; rustls's or the driver's error
    /// is the source.
    Tls,
    /// A statement or a transaction command (BEGIN, COMMIT …) failed; the driver's error is the
    /// source ([`Error::as_database_error`] when the server answered).
    Query,
    /// An earlier operation on this session was cancelled or broke mid-flight: its connection is
    /// in an unknown state.
    Poisoned,
    /// The transaction was aborted by an earlier failed statement (PostgreSQL) and was rolled
    /// back; or, refusing a statement, its first statement failed and it awaits the rollback.
    TransactionAborted,
    /// A scope's session was asked for outside any scope.
    NoScope,
    /// A blocking scope's session was asked for outside any blocking scope on this thread.
    NoBlockingScope,
    /// A scope's session was asked for after the scope ended.
    ScopeEnded,
    /// The scope declares its binds, and this one is not among them.
    BindNotInScope,
    /// A bind was declared twice for one scope.
    DuplicateScopeBind,
    /// The scope's session is in use by other code of the scope (from a `try_` call, which
    /// does not wait).
    SessionBusy,
    /// Other code of the scope kept the scope's session past the bind's `acquire_timeout`: a
    /// lease held higher up in the same code path, or a fetch stream still being read
    /// ([`Error::waited`]).
    SessionLocked,
    /// The scope ended while code still held its session ([`Error::waited`]).
    SessionHeld,
    /// An atomic block with `IfOpen::Fail` found a transaction open.
    TransactionOpen,
    /// A before-commit hook refused the commit (its error is the source).
    CommitVetoed,
    /// A scope with several binds committed some of them, then a commit failed
    /// ([`Error::committed`], [`Error::rolled_back`]; the failed commit's error is the source).
    PartialCommit,
    /// `close()` reached its deadline with sessions still holding connections
    /// ([`Error::busy_binds`]).
    CloseTimedOut,
    /// A blocking call was made from async code, where blocking would stall the runtime.
    BlockingInAsync,
    /// The runtime that drives blocking binds could not start.
    BlockingRuntime,
    /// A bind's migrations could not be read: a missing or unreadable directory, a file name
    /// sqlx's format does not accept, a version asked for that is not among them, or no down
    /// migration for a version to revert.
    MigrationSource,
    /// `migrate_after` makes a cycle ([`Error::known_binds`] lists it).
    MigrationOrder,
    /// A migration was changed after it was applied: its checksum differs from the one recorded
    /// in `_sqlx_migrations` ([`Error::migration_version`], [`Error::migration_file`]).
    MigrationEdited,
    /// The database records a migration applied that the bind's migrations no longer have
    /// ([`Error::migration_version`]).
    MigrationMissing,
    /// A migration failed part-way on a backend without transactional DDL (MySQL/MariaDB) and
    /// is marked unfinished ([`Error::migration_version`]).
    MigrationDirty,
    /// A migration failed; the driver's error is the source ([`Error::migration_version`],
    /// [`Error::migration_file`]).
    MigrationFailed,
    /// A test's pinned transaction (the `testing` feature's transaction mode) no longer isolates
    /// the test: a statement committed it (an implicit commit from DDL on MySQL/MariaDB, a raw
    /// `COMMIT`), or its connection broke; or it would not: migrations run during the test
    /// (which apply on a connection of their own, outside its rollback) with any left to apply
    /// or revert.
    TestIsolation,
    /// A test database could not be set up or cleaned up (created, cloned, migrated, seeded or
    /// dropped), with the `testing` feature.
    TestDatabase,
    /// A bind with replicas found no host for a session: no primary, two primaries, no fit
    /// replica with `fallback = "fail"` ([`Error::routing_failure`] says which).
    Routing,
}

impl ErrorKind {
    /// The configuration is wrong: fix it and start again. Exhaustive on purpose: a new kind
    /// must say whether it is a configuration error.
    fn is_config(self) -> bool {
        match self {
            Self::InvalidUrl
            | Self::UnknownScheme
            | Self::DriverNotEnabled
            | Self::MissingUrl
            | Self::NoBinds
            | Self::InvalidBindName
            | Self::DuplicateBind
            | Self::DuplicateScopeBind
            | Self::ZeroMaxConnections
            | Self::MinExceedsMax
            | Self::ZeroDuration
            | Self::Unsupported
            | Self::ConfigFile
            | Self::Config
            | Self::MigrationSource
            | Self::MigrationOrder => true,
            Self::UnknownBind
            | Self::BackendMismatch
            | Self::Timeout
            | Self::Closed
            | Self::Connect
            | Self::Tls
            | Self::Query
            | Self::Poisoned
            | Self::TransactionAborted
            | Self::NoScope
            | Self::NoBlockingScope
            | Self::ScopeEnded
            | Self::BindNotInScope
            | Self::SessionBusy
            | Self::SessionLocked
            | Self::SessionHeld
            | Self::TransactionOpen
            | Self::CommitVetoed
            | Self::PartialCommit
            | Self::CloseTimedOut
            | Self::BlockingInAsync
            | Self::BlockingRuntime
            | Self::MigrationEdited
            | Self::MigrationMissing
            | Self::MigrationDirty
            | Self::MigrationFailed
            | Self::TestIsolation
            | Self::TestDatabase
            | Self::Routing => false,
        }
    }
}

/// The payloads a caller may need, by kind.
#[derive(Debug, Default)]
enum Detail {
    #[default]
    None,
    /// `UnknownBind`: the known names; `BindNotInScope`: the declared ones.
    Binds(Vec<String>),
    /// `Timeout`, `SessionLocked`, `SessionHeld`: how long dbscope waited.
    Waited(Duration),
    /// `Query`: what ran, and whether its outcome is unknown.
    Op(Op),
    /// `PartialCommit`.
    Partial {
        committed: Vec<String>,
        rolled_back: Vec<String>,
    },
    /// `CloseTimedOut`: each bind with connections still out, and how many.
    Busy(Vec<(String, usize)>),
    /// `Tls`: the check that failed.
    Tls(TlsCheck),
    /// The migration errors: which migration, and its file when it has one.
    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    Migration {
        version: i64,
        file: Option<std::path::PathBuf>,
    },
    /// `Routing`: what failed.
    Routing(RoutingFailure),
}

impl Error {
    fn new(kind: ErrorKind, bind: Option<&str>, message: String) -> Self {
        Self(Box::new(Inner {
            kind,
            bind: bind.map(str::to_owned),
            message,
            source: None,
            detail: Detail::None,
        }))
    }

    fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    fn with_detail(mut self, detail: Detail) -> Self {
        self.0.detail = detail;
        self
    }

    // ----- accessors -----

    /// What the error is about.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The bind the error is about, when it is about one (for a partial commit, the bind whose
    /// commit failed).
    pub fn bind(&self) -> Option<&str> {
        self.0.bind.as_deref()
    }

    /// For [`ErrorKind::UnknownBind`], the names the manager knows; for
    /// [`ErrorKind::BindNotInScope`], the binds the scope declares; empty otherwise.
    pub fn known_binds(&self) -> &[String] {
        match &self.0.detail {
            Detail::Binds(names) => names,
            _ => &[],
        }
    }

    /// For [`ErrorKind::PartialCommit`], the binds whose commit succeeded, in commit order (they
    /// cannot be undone); empty otherwise.
    pub fn committed(&self) -> &[String] {
        match &self.0.detail {
            Detail::Partial { committed, .. } => committed,
            _ => &[],
        }
    }

    /// For [`ErrorKind::PartialCommit`], the binds rolled back after the failure; empty
    /// otherwise.
    pub fn rolled_back(&self) -> &[String] {
        match &self.0.detail {
            Detail::Partial { rolled_back, .. } => rolled_back,
            _ => &[],
        }
    }

    /// How long dbscope waited before giving up: the bind's `acquire_timeout` for
    /// [`ErrorKind::Timeout`], [`ErrorKind::SessionLocked`] and [`ErrorKind::SessionHeld`].
    pub fn waited(&self) -> Option<Duration> {
        match self.0.detail {
            Detail::Waited(waited) => Some(waited),
            _ => None,
        }
    }

    /// For [`ErrorKind::CloseTimedOut`], each bind with connections still checked out, and how
    /// many (a blocking face is named `name (blocking)`); empty otherwise.
    pub fn busy_binds(&self) -> &[(String, usize)] {
        match &self.0.detail {
            Detail::Busy(busy) => busy,
            _ => &[],
        }
    }

    /// For [`ErrorKind::Tls`], the check the handshake failed: the server's certificate not
    /// trusted, not valid for the host name, expired, or no TLS offered by the server.
    pub fn tls_check(&self) -> Option<TlsCheck> {
        match self.0.detail {
            Detail::Tls(check) => Some(check),
            _ => None,
        }
    }

    /// For the migration errors ([`ErrorKind::MigrationEdited`], [`ErrorKind::MigrationFailed`],
    /// [`ErrorKind::MigrationDirty`], [`ErrorKind::MigrationMissing`]), the version of the
    /// migration at fault.
    pub fn migration_version(&self) -> Option<i64> {
        match self.0.detail {
            Detail::Migration { version, .. } => Some(version),
            _ => None,
        }
    }

    /// For [`ErrorKind::MigrationEdited`] and [`ErrorKind::MigrationFailed`], the file of the
    /// migration at fault, when it was read from a directory (not embedded).
    pub fn migration_file(&self) -> Option<&Path> {
        match &self.0.detail {
            Detail::Migration { file, .. } => file.as_deref(),
            _ => None,
        }
    }

    /// The error the database returned, if it is one (a constraint violation, a syntax error …).
    pub fn as_database_error(&self) -> Option<&(dyn sqlx::error::DatabaseError + 'static)> {
        match self.sqlx_source()? {
            sqlx::Error::Database(e) => Some(&**e),
            _ => None,
        }
    }

    /// The driver's error behind a [`Query`](ErrorKind::Query) or [`Connect`](ErrorKind::Connect)
    /// error.
    fn sqlx_source(&self) -> Option<&sqlx::Error> {
        self.0.source.as_ref()?.downcast_ref()
    }

    // ----- predicates -----

    /// A connection could not be had in time (`acquire_timeout`).
    pub fn is_timeout(&self) -> bool {
        self.0.kind == ErrorKind::Timeout
            || matches!(self.sqlx_source(), Some(sqlx::Error::PoolTimedOut))
    }

    /// The manager, and so the bind, is closed.
    pub fn is_closed(&self) -> bool {
        self.0.kind == ErrorKind::Closed
            || matches!(self.sqlx_source(), Some(sqlx::Error::PoolClosed))
    }

    /// The connection died under an operation: the server closed it (shut down, restarted,
    /// killed the session) or the network broke. The server rolled back the transaction it
    /// was in; the session's connection is discarded.
    pub fn is_connection_lost(&self) -> bool {
        self.0.kind == ErrorKind::Query && self.sqlx_source().is_some_and(is_connection_lost)
    }

    /// Running the whole unit of work again is safe and may succeed: nothing of it committed,
    /// and the failure was transient: no connection in time, a server that could not be
    /// reached (not one that refused the credentials or failed a TLS check), a serialization
    /// failure or deadlock the server rolled back, or a connection lost inside a transaction.
    /// On a bind with replicas, also a write session's statement that the host routing took for
    /// the primary refused as read-only (it was demoted since: the next attempt finds the new
    /// primary). Not for a connection lost during COMMIT or under an autocommit statement (the
    /// write may have landed), nor for a partial commit.
    pub fn is_retryable(&self) -> bool {
        match self.0.kind {
            ErrorKind::Timeout => true,
            // A failover in progress: a later attempt finds the promoted replica.
            ErrorKind::Routing => {
                matches!(
                    self.0.detail,
                    Detail::Routing(routing::RoutingFailure::NoPrimary)
                )
            }
            // Unreachable or refusing (I/O): transient, as is a server shutting down or
            // starting up (SQLSTATE 57P03 …). Its other answers (a wrong password, no such
            // database) or a bad option will say the same again, and so will a failed TLS check
            // (ErrorKind::Tls, not retryable).
            ErrorKind::Connect => match self.sqlx_source() {
                Some(sqlx::Error::Database(db)) => is_connection_lost_db(&**db),
                Some(sqlx::Error::Configuration(_)) => false,
                _ => true,
            },
            ErrorKind::Query => {
                let outcome_unknown =
                    matches!(&self.0.detail, Detail::Op(op) if op.outcome_unknown);
                let conflict = self.as_database_error().is_some_and(is_conflict);
                let demoted = matches!(&self.0.detail, Detail::Op(op) if op.on_primary)
                    && self.as_database_error().is_some_and(is_read_only_refusal);
                conflict || demoted || (self.is_connection_lost() && !outcome_unknown)
            }
            _ => false,
        }
    }

    /// The connection was lost under an operation that may have taken effect all the same (a
    /// COMMIT, or a statement outside a transaction): whether it did is unknown, and only the
    /// database can tell (look for the row before writing it again).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(&self.0.detail, Detail::Op(op) if op.outcome_unknown) && self.is_connection_lost()
    }

    /// No bind has the name asked for.
    pub fn is_unknown_bind(&self) -> bool {
        self.0.kind == ErrorKind::UnknownBind
    }

    /// The bind exists but is of another database type.
    pub fn is_backend_mismatch(&self) -> bool {
        self.0.kind == ErrorKind::BackendMismatch
    }

    /// The configuration is wrong: fix it and start again.
    pub fn is_config(&self) -> bool {
        self.0.kind.is_config()
    }

    /// A new connection could not be opened ([`ErrorKind::Connect`], or [`ErrorKind::Tls`] when
    /// its TLS handshake failed).
    pub fn is_connect(&self) -> bool {
        matches!(self.0.kind, ErrorKind::Connect | ErrorKind::Tls)
    }

    /// A new connection's TLS handshake failed ([`Error::tls_check`] says which check). Not
    /// retryable: the same certificates fail the same way until a config changes.
    pub fn is_tls(&self) -> bool {
        self.0.kind == ErrorKind::Tls
    }

    /// The session is unusable after an operation was cancelled or broke mid-flight.
    pub fn is_poisoned(&self) -> bool {
        self.0.kind == ErrorKind::Poisoned
    }

    /// The transaction was aborted by an earlier error and rolled back.
    pub fn is_transaction_aborted(&self) -> bool {
        self.0.kind == ErrorKind::TransactionAborted
    }

    /// A scope's session was asked for outside any scope (async, or blocking on this thread).
    pub fn is_no_scope(&self) -> bool {
        matches!(self.0.kind, ErrorKind::NoScope | ErrorKind::NoBlockingScope)
    }

    /// A blocking call was refused because it was made from async code: use the async API or
    /// `tokio::task::spawn_blocking`.
    pub fn is_blocking_in_async(&self) -> bool {
        self.0.kind == ErrorKind::BlockingInAsync
    }

    /// A before-commit hook vetoed the scope's commit.
    pub fn is_commit_vetoed(&self) -> bool {
        self.0.kind == ErrorKind::CommitVetoed
    }

    /// A scope committed some of its binds before a commit failed: see
    /// [`committed`](Error::committed) and [`rolled_back`](Error::rolled_back).
    pub fn is_partial_commit(&self) -> bool {
        self.0.kind == ErrorKind::PartialCommit
    }
}

/// Errors a server sends as it drops the connection, and the driver's own for a dead socket.
pub(crate) fn is_connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => is_connection_lost_db(&**db),
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// SQLSTATE class 08 (connection exception), 57P (operator intervention: terminated by an
/// admin, server shutdown) and MariaDB's connection killed (error 1927). MariaDB gives its
/// SQLSTATE, 70100, to a query killed (`KILL QUERY`, 1317) or out of `max_statement_time`
/// (1969) too, on a connection that lives on: those are not a lost connection.
pub(crate) fn is_connection_lost_db(db: &dyn sqlx::error::DatabaseError) -> bool {
    match db.code().as_deref() {
        Some(code) if code.starts_with("08") || code.starts_with("57P") => true,
        Some("70100") => mysql_error_number(db) == Some(1927),
        _ => false,
    }
}

/// The server rolled the work back to resolve a conflict: a serialization failure or deadlock
/// (SQLSTATE 40001, 40P01; MariaDB reports deadlocks as 40001), or SQLite's BUSY and LOCKED
/// (primary result codes 5 and 6).
fn is_conflict(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    match code.parse::<u32>() {
        Ok(sqlite) if code.len() < 5 => matches!(sqlite & 0xff, 5 | 6),
        _ => code == "40001" || code == "40P01",
    }
}

/// The server refused a write as read-only: PostgreSQL's SQLSTATE 25006 (a standby, or a
/// read-only transaction), MariaDB/MySQL's error 1290 (`--read-only`) or 1792 (a read-only
/// transaction).
fn is_read_only_refusal(db: &dyn sqlx::error::DatabaseError) -> bool {
    match mysql_error_number(db) {
        Some(1792) => true,
        // 1290 names the option in the way: only `--read-only` is a demotion.
        Some(1290) => db.message().contains("read-only"),
        _ => db.code().as_deref() == Some("25006"),
    }
}

/// A MySQL/MariaDB server error's number (their SQLSTATE is often the generic `HY000`); `None`
/// for other databases' errors, or without the `mysql` feature.
pub(crate) fn mysql_error_number(db: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return Some(my.number());
    }
    let _ = db;
    None
}

// ----- constructors: every message lives here -----

const URL_EXAMPLES: &str = "postgres://user@host/db, mysql://user@host/db, sqlite://path/to.db \
                            or sqlite::memory:";

impl Error {
    /// `reason` must already be free of secrets ([`DatabaseUrl::scrub`](crate::DatabaseUrl)).
    pub(crate) fn invalid_url(bind: &str, redacted_url: &str, reason: &str) -> Self {
        Self::new(
            ErrorKind::InvalidUrl,
            Some(bind),
            format!(
                "bind `{bind}`: invalid database URL `{redacted_url}`: {reason}; expected a URL \
                 such as {URL_EXAMPLES}"
            ),
        )
    }

    pub(crate) fn unknown_scheme(bind: &str, scheme: &str) -> Self {
        Self::new(
            ErrorKind::UnknownScheme,
            Some(bind),
            format!(
                "bind `{bind}`: unknown URL scheme `{scheme}`; use postgres://, postgresql://, \
                 mysql://, mariadb:// or sqlite:"
            ),
        )
    }

    pub(crate) fn driver_not_enabled(bind: &str, driver: &str, feature: &str) -> Self {
        Self::not_compiled_in(bind, &format!("the {driver} driver"), feature)
    }

    /// `setting` (such as "`sslmode=require` in the URL") asks for TLS.
    pub(crate) fn tls_not_enabled(bind: &str, setting: &str) -> Self {
        Self::not_compiled_in(bind, &format!("TLS, which {setting} asks for,"), "tls")
    }

    fn not_compiled_in(bind: &str, what: &str, feature: &str) -> Self {
        Self::new(
            ErrorKind::DriverNotEnabled,
            Some(bind),
            format!(
                "bind `{bind}`: {what} is not compiled in; enable dbscope's `{feature}` cargo \
                 feature"
            ),
        )
    }

    pub(crate) fn missing_url(bind: &str, env: &str) -> Self {
        Self::new(
            ErrorKind::MissingUrl,
            Some(bind),
            format!(
                "bind `{bind}`: no URL configured; set `url` in its config, or the environment \
                 variable {env}"
            ),
        )
    }

    pub(crate) fn no_binds() -> Self {
        Self::new(
            ErrorKind::NoBinds,
            None,
            "no bind configured; set DATABASE_URL (for the `default` bind) or \
             DBSCOPE_BINDS__<NAME>__URL, or add binds in code or in a config file"
                .to_owned(),
        )
    }

    pub(crate) fn invalid_bind_name(name: &str, reason: &str) -> Self {
        Self::new(
            ErrorKind::InvalidBindName,
            None,
            format!("bind name {name:?} is invalid: {reason}"),
        )
    }

    pub(crate) fn duplicate_bind(bind: &str) -> Self {
        Self::new(
            ErrorKind::DuplicateBind,
            Some(bind),
            format!("bind `{bind}` is configured twice; give each bind its own name"),
        )
    }

    pub(crate) fn zero_max_connections(bind: &str) -> Self {
        Self::new(
            ErrorKind::ZeroMaxConnections,
            Some(bind),
            format!("bind `{bind}`: max_connections is 0; a pool needs at least 1 connection"),
        )
    }

    /// `key` (`acquire_timeout` …) is zero; `what` says what that would do.
    pub(crate) fn zero_duration(bind: &str, key: &str, what: &str) -> Self {
        Self::new(
            ErrorKind::ZeroDuration,
            Some(bind),
            format!("bind `{bind}`: {key} is 0, so {what}; give it a duration above zero"),
        )
    }

    pub(crate) fn min_exceeds_max(bind: &str, min: u32, max: u32) -> Self {
        Self::new(
            ErrorKind::MinExceedsMax,
            Some(bind),
            format!(
                "bind `{bind}`: min_connections ({min}) exceeds max_connections ({max}); lower \
                 min_connections or raise max_connections"
            ),
        )
    }

    /// `what` says what is not supported, and what to do instead.
    pub(crate) fn unsupported(bind: &str, what: &str) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            Some(bind),
            format!("bind `{bind}`: {what}"),
        )
    }

    pub(crate) fn config_file(path: &Path, source: std::io::Error) -> Self {
        Self::new(
            ErrorKind::ConfigFile,
            None,
            format!(
                "cannot read config file `{}`; check the path and its permissions",
                path.display()
            ),
        )
        .with_source(source)
    }

    /// A TLS file (`what`: "CA certificate", …) named by `setting` that cannot be used:
    /// `problem` says why, `source` is the I/O error if reading it failed.
    pub(crate) fn tls_file(
        bind: &str,
        what: &str,
        setting: &str,
        path: &Path,
        problem: &str,
        source: Option<std::io::Error>,
    ) -> Self {
        let err = Self::new(
            ErrorKind::Config,
            Some(bind),
            format!(
                "bind `{bind}`: the {what} file `{}` ({setting}) {problem}; check the path, or \
                 remove the setting",
                path.display()
            ),
        );
        match source {
            Some(source) => err.with_source(source),
            None => err,
        }
    }

    /// A bind of a file whose name has capitals, where the environment may override it: its
    /// variables name binds in lowercase, so they would make another bind.
    pub(crate) fn bind_name_case(bind: &str) -> Self {
        let lower = bind.to_ascii_lowercase();
        Self::new(
            ErrorKind::Config,
            Some(bind),
            format!(
                "bind `{bind}`: a bind name with capitals cannot be overridden from the \
                 environment, whose `DBSCOPE_BINDS__…` variables name binds in lowercase (they \
                 would make a bind `{lower}` beside it); name it `{lower}` in the file"
            ),
        )
    }

    /// One of a client certificate and its key is set (`set`), the other (`unset`) is not.
    pub(crate) fn tls_client_pair(bind: &str, set: &str, unset: &str) -> Self {
        Self::new(
            ErrorKind::Config,
            Some(bind),
            format!(
                "bind `{bind}`: {set} is set but {unset} is not; a client certificate and its \
                 key go together: set both, or neither"
            ),
        )
    }

    pub(crate) fn unknown_bind(bind: &str, known: Vec<String>) -> Self {
        Self::new(
            ErrorKind::UnknownBind,
            Some(bind),
            format!(
                "no bind named `{bind}`; known binds: {}; check the name or add the bind to the \
                 config",
                known.join(", ")
            ),
        )
        .with_detail(Detail::Binds(known))
    }

    pub(crate) fn backend_mismatch(bind: &str, configured: &str, requested: &str) -> Self {
        Self::new(
            ErrorKind::BackendMismatch,
            Some(bind),
            format!(
                "bind `{bind}` is a {configured} bind but was asked for as {requested}; ask for \
                 it with the matching type, or set `engine = \"any\"` to use it as `Any`"
            ),
        )
    }

    pub(crate) fn timeout(bind: &str, waited: Duration) -> Self {
        Self::new(
            ErrorKind::Timeout,
            Some(bind),
            format!(
                "bind `{bind}`: no connection available within {waited:?} (acquire_timeout); \
                 raise max_connections or acquire_timeout, or hold sessions for less time"
            ),
        )
        .with_detail(Detail::Waited(waited))
    }

    /// A session waited past `acquire_timeout` for a test's pinned connection.
    pub(crate) fn pin_timeout(bind: &str, waited: Duration) -> Self {
        Self::new(
            ErrorKind::Timeout,
            Some(bind),
            format!(
                "bind `{bind}`: the test's pinned connection stayed in use by another session for \
                 {waited:?} (acquire_timeout); in transaction mode every session of the bind \
                 takes turns on one connection, so end a session (drop it, or let its scope \
                 finish) before waiting for work that needs the bind, such as an HTTP request"
            ),
        )
        .with_detail(Detail::Waited(waited))
    }

    /// Migrations a transaction-mode test asked for, which would outlive its rollback.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn migration_in_pinned_test(bind: &str, pending: usize) -> Self {
        Self::new(
            ErrorKind::TestIsolation,
            Some(bind),
            format!(
                "bind `{bind}`: {pending} migration(s) would run during a transaction-mode test, \
                 on a connection of their own that the test's rollback does not undo; nothing \
                 was applied. Declare the migrations to the test (`migrations(...)` of \
                 `#[dbscope::test]` or `TestDb::builder()`), which applies them once before the \
                 tests, or run the test in database mode"
            ),
        )
    }

    /// A test's pinned transaction no longer isolates the test.
    pub(crate) fn test_isolation(bind: &str, why: &str) -> Self {
        Self::new(
            ErrorKind::TestIsolation,
            Some(bind),
            format!(
                "bind `{bind}`: the test transaction was lost, {why}; what the test wrote may \
                 be left on the server. Run the test in database mode (a database of its own) \
                 if it needs DDL or commits of its own"
            ),
        )
    }

    /// A test database could not be set up or dropped.
    pub(crate) fn test_database(
        bind: Option<&str>,
        what: String,
        source: impl Into<BoxError>,
    ) -> Self {
        let message = match bind {
            Some(bind) => format!("bind `{bind}`: {what}"),
            None => what,
        };
        Self::new(ErrorKind::TestDatabase, bind, message).with_source(source)
    }

    pub(crate) fn closed(bind: &str) -> Self {
        Self::new(
            ErrorKind::Closed,
            Some(bind),
            format!(
                "bind `{bind}` is closed: its BindManager was closed or dropped, so it opens no \
                 more sessions"
            ),
        )
    }

    /// A failed connect: [`ErrorKind::Tls`] when its TLS handshake failed, else
    /// [`ErrorKind::Connect`].
    pub(crate) fn connect(bind: &str, redacted_url: &str, source: sqlx::Error) -> Self {
        if let Some(check) = tls::failed_check(&source) {
            return Self::tls(bind, redacted_url, check, source);
        }
        Self::new(
            ErrorKind::Connect,
            Some(bind),
            format!(
                "bind `{bind}`: cannot connect to `{redacted_url}`; check that the server is up \
                 and the URL and credentials are right"
            ),
        )
        .with_source(source)
    }

    fn tls(bind: &str, redacted_url: &str, check: TlsCheck, source: sqlx::Error) -> Self {
        Self::new(
            ErrorKind::Tls,
            Some(bind),
            format!(
                "bind `{bind}`: TLS with `{redacted_url}` failed: {}",
                tls::advice(check)
            ),
        )
        .with_source(source)
        .with_detail(Detail::Tls(check))
    }

    /// A statement or transaction command (`op.what`) failed on `bind`.
    pub(crate) fn query(bind: Option<&str>, op: Op, source: sqlx::Error) -> Self {
        let mut message = match bind {
            Some(bind) => format!("bind `{bind}`: {} failed", op.what),
            None => format!("{} failed", op.what),
        };
        if op.outcome_unknown && is_connection_lost(&source) {
            message.push_str(
                "; the connection was lost before the server answered, so whether it took \
                 effect is unknown: check the database before doing it again",
            );
        }
        Self::new(ErrorKind::Query, bind, message)
            .with_source(source)
            .with_detail(Detail::Op(op))
    }

    pub(crate) fn poisoned(bind: &str) -> Self {
        Self::new(
            ErrorKind::Poisoned,
            Some(bind),
            format!(
                "bind `{bind}`: an earlier operation on this session was cancelled or failed \
                 mid-flight, so its connection is in an unknown state; drop this session (its \
                 connection is discarded, its transaction rolled back by the server) and open a \
                 new one"
            ),
        )
    }

    pub(crate) fn transaction_aborted(bind: &str) -> Self {
        Self::new(
            ErrorKind::TransactionAborted,
            Some(bind),
            format!(
                "bind `{bind}`: the transaction was aborted by an earlier error and has been \
                 rolled back; nothing was committed. Use a savepoint around statements that may \
                 fail"
            ),
        )
    }

    /// A statement (or savepoint) refused, unsent: the message that carried the transaction's
    /// BEGIN with its first statement failed (see "Round trips" on `Session`).
    pub(crate) fn first_statement_failed(bind: &str) -> Self {
        Self::new(
            ErrorKind::TransactionAborted,
            Some(bind),
            format!(
                "bind `{bind}`: the transaction's first statement failed, which aborted it;                  nothing more runs in it: call `rollback()` (a `commit()` rolls it back) and                  start again"
            ),
        )
    }

    pub(crate) fn no_scope(bind: Option<&str>) -> Self {
        Self::new(
            ErrorKind::NoScope,
            bind,
            format!(
                "{}no dbscope scope is active on this task; run this code inside \
                 `dbscope::scope(&manager, …)` (or `manager.scope().run(…)`), behind a \
                 `ScopeLayer`, or for a task started with `tokio::spawn`, pass \
                 `Scope::current()?.attach(…)` the future (spawned tasks inherit no scope)",
                bind_prefix(bind)
            ),
        )
    }

    pub(crate) fn scope_ended(bind: &str) -> Self {
        Self::new(
            ErrorKind::ScopeEnded,
            Some(bind),
            format!(
                "bind `{bind}`: the scope this code runs in has already ended (committed or \
                 rolled back); a task attached to a scope must finish before the scope does"
            ),
        )
    }

    pub(crate) fn bind_not_in_scope(bind: &str, declared: Vec<String>) -> Self {
        Self::new(
            ErrorKind::BindNotInScope,
            Some(bind),
            format!(
                "bind `{bind}` is not declared for this scope (declared: {}); add \
                 `.bind(\"{bind}\")` to the scope or to the route's ScopeLayer",
                declared.join(", ")
            ),
        )
        .with_detail(Detail::Binds(declared))
    }

    pub(crate) fn duplicate_scope_bind(bind: &str) -> Self {
        Self::new(
            ErrorKind::DuplicateScopeBind,
            Some(bind),
            format!(
                "bind `{bind}` is declared twice for the same scope (by two ScopeLayers on one \
                 route, or twice on one scope); declare it once, on the innermost layer that \
                 needs it"
            ),
        )
    }

    pub(crate) fn session_busy(bind: &str) -> Self {
        Self::new(
            ErrorKind::SessionBusy,
            Some(bind),
            format!(
                "bind `{bind}`: the scope's session is in use by other code of this scope (a \
                 lease, a statement, a fetch stream); let it finish first, or wait for it with \
                 `lock()`"
            ),
        )
    }

    pub(crate) fn session_locked(bind: &str, waited: Duration) -> Self {
        Self::new(
            ErrorKind::SessionLocked,
            Some(bind),
            format!(
                "bind `{bind}`: the scope's session stayed taken for {waited:?} \
                 (acquire_timeout): a lease (`ScopedSession::lock`) held higher up in this code \
                 path, or a fetch stream still being read, waits for this code, which waits for \
                 it. Drop the lease (or finish the stream) before calling code that uses the \
                 same bind, or pass that code the lease"
            ),
        )
        .with_detail(Detail::Waited(waited))
    }

    pub(crate) fn session_held(bind: &str, waited: Duration) -> Self {
        Self::new(
            ErrorKind::SessionHeld,
            Some(bind),
            format!(
                "bind `{bind}`: the scope ended while its session was still taken after \
                 {waited:?} (a SessionLease kept past the scope's work, or an attached task \
                 still running a statement); nothing of it was committed, and it rolls back \
                 when that code lets go. Drop leases before the scope's work returns, and await \
                 attached tasks"
            ),
        )
        .with_detail(Detail::Waited(waited))
    }

    pub(crate) fn transaction_open(bind: &str) -> Self {
        Self::new(
            ErrorKind::TransactionOpen,
            Some(bind),
            format!(
                "bind `{bind}`: an atomic block found a transaction already open on the scope's \
                 session; commit or roll it back first, or pick another `IfOpen` policy"
            ),
        )
    }

    pub(crate) fn commit_vetoed(source: BoxError) -> Self {
        Self::new(
            ErrorKind::CommitVetoed,
            None,
            "a before-commit hook vetoed the commit; the scope's sessions were rolled back"
                .to_owned(),
        )
        .with_source(source)
    }

    /// The error of a scope whose commit failed on `failed` after committing `committed` (in
    /// order) and rolling back `rolled_back`: the commit's own error when nothing had committed
    /// yet, else a [`PartialCommit`](ErrorKind::PartialCommit).
    pub(crate) fn commit_failed(
        committed: Vec<String>,
        failed: &str,
        rolled_back: Vec<String>,
        source: Error,
    ) -> Self {
        if committed.is_empty() {
            return source;
        }
        Self::new(
            ErrorKind::PartialCommit,
            Some(failed),
            format!(
                "scope commit failed on bind `{failed}` after committing {}; rolled back: {}. \
                 The committed binds cannot be undone: reconcile them, or keep one bind per \
                 scope where all-or-nothing matters",
                list(&committed),
                list(&rolled_back)
            ),
        )
        .with_source(source)
        .with_detail(Detail::Partial {
            committed,
            rolled_back,
        })
    }

    pub(crate) fn close_timed_out(busy: Vec<(String, usize)>) -> Self {
        let listed: Vec<String> = busy.iter().map(|(b, n)| format!("`{b}`: {n}")).collect();
        Self::new(
            ErrorKind::CloseTimedOut,
            None,
            format!(
                "close deadline passed with connections still checked out ({}); they are closed \
                 when their sessions end",
                listed.join(", ")
            ),
        )
        .with_detail(Detail::Busy(busy))
    }

    pub(crate) fn blocking_in_async(bind: Option<&str>) -> Self {
        Self::new(
            ErrorKind::BlockingInAsync,
            bind,
            format!(
                "{}a blocking dbscope call was made from async code running on a tokio runtime, \
                 where it would block the runtime's thread (and deadlock a current-thread \
                 runtime); use the async API (`Session`), or run this blocking code in \
                 tokio::task::spawn_blocking",
                bind_prefix(bind)
            ),
        )
    }

    pub(crate) fn no_blocking_scope(bind: Option<&str>) -> Self {
        Self::new(
            ErrorKind::NoBlockingScope,
            bind,
            format!(
                "{}no blocking scope is active on this thread; run this code inside \
                 `dbscope::blocking::scope(&manager, || …)` (a blocking scope belongs to the \
                 thread that opened it: threads it starts inherit nothing)",
                bind_prefix(bind)
            ),
        )
    }

    pub(crate) fn blocking_runtime(source: std::io::Error) -> Self {
        Self::new(
            ErrorKind::BlockingRuntime,
            None,
            "cannot start the runtime that drives blocking binds (a thread and an I/O driver); \
             the process may be out of threads or file descriptors"
                .to_owned(),
        )
        .with_source(source)
    }

    /// `what` could not be read (a directory, a file name, a version): `problem` says why and
    /// how to fix it.
    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    pub(crate) fn migration_source(bind: &str, problem: &str, source: Option<BoxError>) -> Self {
        let err = Self::new(
            ErrorKind::MigrationSource,
            Some(bind),
            format!("bind `{bind}`: {problem}"),
        );
        match source {
            Some(source) => err.with_source(source),
            None => err,
        }
    }

    /// `cycle`: the binds of a `migrate_after` cycle, the first repeated at the end.
    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    pub(crate) fn migration_order(cycle: Vec<String>) -> Self {
        let path = cycle
            .iter()
            .map(|b| format!("`{b}`"))
            .collect::<Vec<_>>()
            .join(" after ");
        Self::new(
            ErrorKind::MigrationOrder,
            cycle.first().map(String::as_str),
            format!(
                "`migrate_after` makes a cycle: {path}; remove one of these entries so that \
                 some bind migrates first"
            ),
        )
        .with_detail(Detail::Binds(cycle))
    }

    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    pub(crate) fn migration_edited(
        bind: &str,
        version: i64,
        description: &str,
        file: Option<std::path::PathBuf>,
    ) -> Self {
        let place = file_or_embedded(file.as_deref());
        Self::new(
            ErrorKind::MigrationEdited,
            Some(bind),
            format!(
                "bind `{bind}`: migration {version} ({description}, {place}) was edited after \
                 it was applied: its checksum differs from the one in _sqlx_migrations. Restore \
                 its applied text and put the change in a new migration; nothing was applied"
            ),
        )
        .with_detail(Detail::Migration { version, file })
    }

    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    pub(crate) fn migration_missing(bind: &str, version: i64) -> Self {
        Self::new(
            ErrorKind::MigrationMissing,
            Some(bind),
            format!(
                "bind `{bind}`: migration {version} is recorded as applied in _sqlx_migrations \
                 but is not among the bind's migrations; restore its file (or point the bind at \
                 the right migrations); nothing was applied"
            ),
        )
        .with_detail(Detail::Migration {
            version,
            file: None,
        })
    }

    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    pub(crate) fn migration_dirty(bind: &str, version: i64) -> Self {
        Self::new(
            ErrorKind::MigrationDirty,
            Some(bind),
            format!(
                "bind `{bind}`: migration {version} failed part-way earlier and is marked \
                 unfinished in _sqlx_migrations (this backend cannot roll DDL back); undo what \
                 it did by hand, delete its row (version = {version}), then migrate again"
            ),
        )
        .with_detail(Detail::Migration {
            version,
            file: None,
        })
    }

    /// Migration `version` (`what`: "applying", "reverting") failed with `source`.
    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    pub(crate) fn migration_failed(
        bind: &str,
        what: &str,
        version: i64,
        description: &str,
        file: Option<std::path::PathBuf>,
        source: BoxError,
    ) -> Self {
        let place = file_or_embedded(file.as_deref());
        Self::new(
            ErrorKind::MigrationFailed,
            Some(bind),
            format!(
                "bind `{bind}`: {what} migration {version} ({description}, {place}) failed; \
                 fix it and run again. Migrations before it stay applied (each bind migrates on \
                 its own: nothing is atomic across binds)"
            ),
        )
        .with_source(source)
        .with_detail(Detail::Migration { version, file })
    }

    /// The same error, about `bind` when it named none (an error that crossed sqlx's API
    /// without one).
    pub(crate) fn or_bind(mut self, bind: &str) -> Self {
        if self.0.bind.is_none() {
            self.0.message = format!("bind `{bind}`: {}", self.0.message);
            self.0.bind = Some(bind.to_owned());
        }
        self
    }

    /// Turns the error into an `sqlx::Error` for code that speaks sqlx (our `Executor` impls):
    /// a driver's `Database` or `Io` error keeps its variant, with the bind tucked inside;
    /// everything else travels whole, boxed in `sqlx::Error::Configuration`. `From<sqlx::Error>`
    /// undoes both.
    pub(crate) fn into_sqlx(self) -> sqlx::Error {
        if self.0.kind == ErrorKind::Query
            && let Detail::Op(op) = self.0.detail
            && let (Some(bind), Some(source)) = (&self.0.bind, &self.0.source)
            && source
                .downcast_ref::<sqlx::Error>()
                .is_some_and(located::can_locate)
        {
            let bind = bind.clone();
            let source = *self
                .0
                .source
                .expect("checked above")
                .downcast::<sqlx::Error>()
                .expect("checked above");
            return locate(&bind, op, source);
        }
        sqlx::Error::Configuration(Box::new(self))
    }
}

fn list(binds: &[String]) -> String {
    if binds.is_empty() {
        return "none".to_owned();
    }
    binds
        .iter()
        .map(|b| format!("`{b}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg_attr(not(feature = "migrate"), allow(dead_code))]
fn file_or_embedded(file: Option<&Path>) -> String {
    match file {
        Some(path) => format!("file `{}`", path.display()),
        None => "embedded".to_owned(),
    }
}

fn bind_prefix(bind: Option<&str>) -> String {
    bind.map(|b| format!("bind `{b}`: ")).unwrap_or_default()
}

fn config_context(err: &figment::Error) -> String {
    let mut out = String::new();
    if !err.path.is_empty() {
        out.push_str(&format!(" at key `{}`", err.path.join(".")));
    }
    if let Some(source) = err.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        out.push_str(&format!(" (from {source})"));
    }
    out
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Error");
        out.field("kind", &self.0.kind);
        if let Some(bind) = &self.0.bind {
            out.field("bind", bind);
        }
        out.field("message", &self.0.message);
        if let Some(source) = &self.0.source {
            out.field("source", source);
        }
        out.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// An error that crossed sqlx's API: dbscope's own come back whole; a driver error raised in a
/// session's statement comes back with its bind (see [`Session`](crate::Session)); any other
/// sqlx error (`RowNotFound` from `fetch_one`, a decode error) becomes a
/// [`Query`](ErrorKind::Query) error without a bind.
impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Configuration(boxed) if boxed.is::<Error>() => {
                *boxed.downcast::<Error>().expect("checked by is::<Error>()")
            }
            other => match located::unlocate(other) {
                Ok((bind, op, source)) => Self::query(Some(&bind), op, source),
                Err(source) => Self::query(None, Op::statement(false), source),
            },
        }
    }
}

/// For code that speaks sqlx (a closure given to
/// [`BlockingSession::run`](crate::blocking::BlockingSession::run) returning `sqlx::Result`):
/// as in a query, and `?` back into [`Error`] restores the original.
impl From<Error> for sqlx::Error {
    fn from(err: Error) -> Self {
        err.into_sqlx()
    }
}

impl From<figment::Error> for Error {
    /// The message says where (the key, the file or variable) and what was wrong, never with
    /// the value: figment's own text quotes it (`found string "postgres://app:pw@db/x"`, for a
    /// URL given where a bind's table was expected), and a TOML syntax error quotes the line,
    /// which may hold a password. So figment's error is not kept as the source; a description
    /// of its kind, values left out, is.
    fn from(err: figment::Error) -> Self {
        let message = format!("invalid configuration{}", config_context(&err));
        let problem = ConfigProblem(describe_config_problem(&err.kind));
        Self::new(ErrorKind::Config, None, message).with_source(problem)
    }
}

/// What was wrong with a configuration, in words that quote no value of it.
#[derive(Debug)]
struct ConfigProblem(String);

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigProblem {}

fn describe_config_problem(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::Message(message) => without_quoted_values(message),
        Kind::InvalidType(actual, expected) => {
            format!("invalid type: found {}, expected {expected}", shape(actual))
        }
        Kind::InvalidValue(actual, expected) => {
            format!(
                "invalid value: found {}, expected {expected}",
                shape(actual)
            )
        }
        Kind::InvalidLength(length, expected) => {
            format!("invalid length {length}, expected {expected}")
        }
        Kind::UnknownVariant(_, expected) => {
            format!("unknown variant, expected one of {}", expected.join(", "))
        }
        Kind::UnknownField(field, expected) => {
            format!(
                "unknown key `{field}`, expected one of {}",
                expected.join(", ")
            )
        }
        Kind::MissingField(field) => format!("missing key `{field}`"),
        Kind::DuplicateField(field) => format!("duplicate key `{field}`"),
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "a number out of range".into(),
        Kind::Unsupported(actual) => format!("unsupported {}", shape(actual)),
        Kind::UnsupportedKey(actual, expected) => {
            format!("unsupported key {}, expected {expected}", shape(actual))
        }
    }
}

/// What kind of value figment found, without the value.
fn shape(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) => "a character",
        Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "unit",
        Actual::Option => "an option",
        Actual::NewtypeStruct => "a newtype struct",
        Actual::Seq => "a sequence",
        Actual::Map => "a table",
        Actual::Enum
        | Actual::UnitVariant
        | Actual::NewtypeVariant
        | Actual::TupleVariant
        | Actual::StructVariant => "an enum",
        Actual::Other(_) => "a value",
    }
}

/// A parser's or a deserializer's message without what it quotes of the input: the source
/// lines a TOML error shows (`3 | url = "…"`, and the marker lines around them), and anything
/// between quotes or backticks (a value, a URL), which is masked.
fn without_quoted_values(message: &str) -> String {
    let is_source_line = |line: &str| {
        let line = line.trim_start();
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        line.starts_with('|') || (digits > 0 && line[digits..].trim_start().starts_with('|'))
    };
    let kept: Vec<&str> = message
        .lines()
        .filter(|line| !is_source_line(line))
        .filter(|line| !line.trim().is_empty())
        .collect();
    let mut out = String::with_capacity(message.len());
    // The open quote, and what it holds so far.
    let mut quote: Option<(char, String)> = None;
    for c in kept.join("; ").chars() {
        match &mut quote {
            Some((open, held)) if c == *open => {
                // A character or two (the escapes a TOML error lists) tell nothing secret.
                let shown = if held.chars().count() <= 2 {
                    held.as_str()
                } else {
                    MASK
                };
                out.push_str(shown);
                out.push(c);
                quote = None;
            }
            Some((_, held)) => held.push(c),
            None => {
                out.push(c);
                if matches!(c, '"' | '`') {
                    quote = Some((c, String::new()));
                }
            }
        }
    }
    if quote.is_some() {
        out.push_str(MASK); // never closed: what followed the quote stays out
    }
    out
}

/// What stands for a value left out of a configuration error.
const MASK: &str = "…";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_the_bind_and_the_cause_is_the_source() {
        let err = Error::query(Some("main"), Op::new("BEGIN"), sqlx::Error::WorkerCrashed);
        assert_eq!(err.to_string(), "bind `main`: BEGIN failed");
        assert_eq!(err.bind(), Some("main"));
        let source = std::error::Error::source(&err).expect("a source");
        assert!(source.to_string().contains("crashed background worker"));
        assert!(err.is_connection_lost() && err.is_retryable());
    }

    #[test]
    fn commit_with_lost_connection_is_not_retryable() {
        let err = Error::query(Some("main"), Op::commit(), sqlx::Error::WorkerCrashed);
        assert!(err.is_connection_lost());
        assert!(!err.is_retryable(), "a lost COMMIT may have committed");
        let autocommit = Error::query(
            Some("main"),
            Op::statement(true),
            sqlx::Error::WorkerCrashed,
        );
        assert!(
            !autocommit.is_retryable(),
            "an autocommit write may have landed"
        );
        assert!(err.is_outcome_unknown() && autocommit.is_outcome_unknown());
        assert!(
            err.to_string()
                .contains("whether it took effect is unknown")
        );
        let begin = Error::query(Some("main"), Op::new("BEGIN"), sqlx::Error::WorkerCrashed);
        assert!(!begin.is_outcome_unknown() && !begin.to_string().contains("unknown"));
        let refused = Error::query(Some("main"), Op::commit(), sqlx::Error::RowNotFound);
        assert!(!refused.is_outcome_unknown(), "an answered COMMIT is known");
    }

    #[test]
    fn dbscope_errors_survive_a_trip_through_sqlx() {
        for err in [
            Error::timeout("main", Duration::from_millis(250)),
            Error::closed("main"),
            Error::poisoned("main"),
            Error::query(Some("main"), Op::new("BEGIN"), sqlx::Error::WorkerCrashed),
        ] {
            let (kind, message) = (err.kind(), err.to_string());
            let back = Error::from(err.into_sqlx());
            assert_eq!((back.kind(), back.to_string()), (kind, message));
            assert_eq!(back.bind(), Some("main"));
        }
    }

    #[test]
    fn only_transient_connect_failures_are_retryable() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let unreachable = Error::connect("main", "postgres://db/app", sqlx::Error::Io(refused));
        assert!(unreachable.is_connect() && unreachable.is_retryable());
        let bad_option = sqlx::Error::Configuration("sslmode".into());
        let misconfigured = Error::connect("main", "postgres://db/app", bad_option);
        assert!(!misconfigured.is_retryable());
        let starting_up = Error::connect("main", "postgres://db/app", server_says("57P03"));
        assert!(
            starting_up.is_retryable(),
            "the server is starting up: try again"
        );
        let wrong_password = Error::connect("main", "postgres://db/app", server_says("28P01"));
        assert!(!wrong_password.is_retryable());
    }

    /// A database error with `code`, as a server would answer.
    fn server_says(code: &'static str) -> sqlx::Error {
        #[derive(Debug)]
        struct Answer(&'static str);
        impl fmt::Display for Answer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "the server said {}", self.0)
            }
        }
        impl std::error::Error for Answer {}
        impl sqlx::error::DatabaseError for Answer {
            fn message(&self) -> &str {
                "the server said no"
            }
            fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
                Some(self.0.into())
            }
            fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
                self
            }
            fn kind(&self) -> sqlx::error::ErrorKind {
                sqlx::error::ErrorKind::Other
            }
        }
        sqlx::Error::Database(Box::new(Answer(code)))
    }

    #[test]
    fn or_bind_names_a_bind_once() {
        let err = Error::from(sqlx::Error::RowNotFound);
        assert_eq!(err.bind(), None);
        assert_eq!(err.to_string(), "statement failed");
        let err = err.or_bind("main").or_bind("other");
        assert_eq!(err.to_string(), "bind `main`: statement failed");
        assert_eq!(err.bind(), Some("main"));
    }

    #[test]
    fn partial_commit_carries_its_lists() {
        let cause = Error::query(Some("b"), Op::commit(), sqlx::Error::WorkerCrashed);
        let err = Error::commit_failed(vec!["a".into()], "b", vec!["c".into()], cause);
        assert!(err.is_partial_commit() && !err.is_retryable());
        assert_eq!(err.committed(), ["a"]);
        assert_eq!(err.rolled_back(), ["c"]);
        assert_eq!(err.bind(), Some("b"));
        let nothing_committed = Error::commit_failed(
            vec![],
            "b",
            vec![],
            Error::query(Some("b"), Op::commit(), sqlx::Error::WorkerCrashed),
        );
        assert_eq!(nothing_committed.kind(), ErrorKind::Query);
    }

    #[test]
    fn error_stays_one_pointer_wide() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }
}
