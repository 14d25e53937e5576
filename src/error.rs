use std::path::PathBuf;
use std::time::Duration;

/// `Result` with dbscope's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in dbscope.
///
/// Match on the predicates (`is_timeout()`, `is_unknown_bind()` …) rather than on variants: new
/// variants may come. Every message names the bind involved and says how to fix the problem; none
/// ever contains a password. The underlying cause, when there is one, is in [`source()`]
/// (`std::error::Error::source`), not repeated in the message.
///
/// [`source()`]: std::error::Error::source
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bind's URL could not be parsed.
    #[error(
        "bind `{bind}`: invalid database URL `{url}`: {reason}; expected a URL such as \
         postgres://user@host/db, mysql://user@host/db, sqlite://path/to.db or sqlite::memory:"
    )]
    InvalidUrl {
        /// The bind.
        bind: String,
        /// The URL, password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The URL's scheme names no database dbscope knows.
    #[error(
        "bind `{bind}`: unknown URL scheme `{scheme}`; use postgres://, postgresql://, mysql://, \
         mariadb:// or sqlite:"
    )]
    UnknownScheme {
        /// The bind.
        bind: String,
        /// The scheme found.
        scheme: String,
    },

    /// The URL names a database whose driver was not compiled in.
    #[error(
        "bind `{bind}`: the {driver} driver is not compiled in; enable dbscope's `{feature}` \
         cargo feature"
    )]
    DriverNotEnabled {
        /// The bind.
        bind: String,
        /// The database the URL names.
        driver: &'static str,
        /// The cargo feature that brings it.
        feature: &'static str,
    },

    /// A bind has options but no URL.
    #[error(
        "bind `{bind}`: no URL configured; set `url` in its config, or the environment variable {env}"
    )]
    MissingUrl {
        /// The bind.
        bind: String,
        /// The environment variable that would give it one.
        env: String,
    },

    /// No bind is configured at all.
    #[error(
        "no bind configured; set DATABASE_URL (for the `default` bind) or \
         DBSCOPE_BINDS__<NAME>__URL, or add binds in code or in a config file"
    )]
    NoBinds,

    /// A bind name is empty or has characters that config keys cannot carry.
    #[error("bind name {name:?} is invalid: {reason}")]
    InvalidBindName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// The same bind name was configured twice.
    #[error("bind `{bind}` is configured twice; give each bind its own name")]
    DuplicateBind {
        /// The bind.
        bind: String,
    },

    /// `max_connections` is zero.
    #[error("bind `{bind}`: max_connections is 0; a pool needs at least 1 connection")]
    ZeroMaxConnections {
        /// The bind.
        bind: String,
    },

    /// `min_connections` is larger than `max_connections`.
    #[error(
        "bind `{bind}`: min_connections ({min}) exceeds max_connections ({max}); lower \
         min_connections or raise max_connections"
    )]
    MinExceedsMax {
        /// The bind.
        bind: String,
        /// `min_connections`.
        min: u32,
        /// `max_connections`.
        max: u32,
    },

    /// An option this backend cannot honour (e.g. `READ COMMITTED` on SQLite).
    #[error("bind `{bind}`: {what}")]
    Unsupported {
        /// The bind.
        bind: String,
        /// What is not supported, and what to do instead.
        what: String,
    },

    /// A config file could not be read.
    #[error("cannot read config file `{}`; check the path and its permissions", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },

    /// A config file or environment variable holds a value that does not fit.
    #[error("invalid configuration{}", config_context(source))]
    Config {
        /// Which key, where it came from and what is wrong.
        #[source]
        source: Box<figment::Error>,
    },

    /// No bind has this name.
    #[error("no bind named `{bind}`; known binds: {}; check the name or add the bind to the config", known.join(", "))]
    UnknownBind {
        /// The name asked for.
        bind: String,
        /// The names the manager has.
        known: Vec<String>,
    },

    /// The bind exists but its engine is of another database type than the one asked for.
    #[error(
        "bind `{bind}` is a {configured} bind but was asked for as {requested}; ask for it with \
         the matching type, or set `engine = \"any\"` to use it as `Any`"
    )]
    BackendMismatch {
        /// The bind.
        bind: String,
        /// The engine the bind has.
        configured: &'static str,
        /// The type asked for.
        requested: &'static str,
    },

    /// No connection became available within the bind's `acquire_timeout`.
    #[error(
        "bind `{bind}`: no connection available within {waited:?} (acquire_timeout); raise \
         max_connections or acquire_timeout, or hold sessions for less time"
    )]
    Timeout {
        /// The bind.
        bind: String,
        /// How long the session waited.
        waited: Duration,
    },

    /// The bind's manager was closed or dropped.
    #[error(
        "bind `{bind}` is closed: its BindManager was closed or dropped, so it opens no more sessions"
    )]
    Closed {
        /// The bind.
        bind: String,
    },

    /// A new connection could not be opened.
    #[error(
        "bind `{bind}`: cannot connect to `{url}`; check that the server is up and the URL and credentials are right"
    )]
    Connect {
        /// The bind.
        bind: String,
        /// The URL, password masked.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// A statement or a transaction command failed.
    #[error("{}{what} failed", bind_prefix(bind.as_deref()))]
    Sqlx {
        /// The bind, when known.
        bind: Option<String>,
        /// What was being done (`COMMIT`, `statement` …).
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// An earlier operation on this session was cancelled or broke mid-flight.
    #[error(
        "bind `{bind}`: an earlier operation on this session was cancelled or failed mid-flight, \
         so its connection is in an unknown state; drop this session (its connection is \
         discarded, its transaction rolled back by the server) and open a new one"
    )]
    Poisoned {
        /// The bind.
        bind: String,
    },

    /// The transaction was aborted by an earlier failed statement (PostgreSQL) and was rolled back.
    #[error(
        "bind `{bind}`: the transaction was aborted by an earlier error and has been rolled back; \
         nothing was committed. Use a savepoint around statements that may fail"
    )]
    TransactionAborted {
        /// The bind.
        bind: String,
    },

    /// A scope's session was asked for outside any scope.
    #[error(
        "{}no dbscope scope is active on this task; run this code inside \
         `dbscope::scope(&manager, …)` (or `manager.scope().run(…)`), behind a `ScopeLayer`, or \
         for a task started with `tokio::spawn`, pass `Scope::current()?.attach(…)` the future \
         (spawned tasks inherit no scope)",
        bind_prefix(bind.as_deref())
    )]
    NoScope {
        /// The bind asked for, when one was.
        bind: Option<String>,
    },

    /// A scope's session was asked for after the scope ended (from a task that outlived it).
    #[error(
        "bind `{bind}`: the scope this code runs in has already ended (committed or rolled \
         back); a task attached to a scope must finish before the scope does"
    )]
    ScopeEnded {
        /// The bind asked for.
        bind: String,
    },

    /// The scope (or route) declares its binds, and this one is not among them.
    #[error(
        "bind `{bind}` is not declared for this scope (declared: {}); add `.bind(\"{bind}\")` \
         to the scope or to the route's ScopeLayer",
        declared.join(", ")
    )]
    BindNotInScope {
        /// The bind asked for.
        bind: String,
        /// The binds the scope declares.
        declared: Vec<String>,
    },

    /// A bind was declared twice for one scope (e.g. by an app-wide layer and a route layer).
    #[error(
        "bind `{bind}` is declared twice for the same scope (by two ScopeLayers on one route, or \
         twice on one scope); declare it once, on the innermost layer that needs it"
    )]
    DuplicateScopeBind {
        /// The bind.
        bind: String,
    },

    /// `try_current_session` found the scope's session in use by other code of the scope.
    #[error(
        "bind `{bind}`: the scope's session is in use by other code of this scope; drop that \
         code's guard first (async code can also wait its turn with `current_session`)"
    )]
    SessionBusy {
        /// The bind.
        bind: String,
    },

    /// The scope ended while code still held its session: a guard kept past the scope's work
    /// (returned from it, say), or an attached task still running.
    #[error(
        "bind `{bind}`: the scope ended while its session was still held after {waited:?} (a \
         ScopedSession guard kept past the scope's work, or an attached task still running); \
         nothing of it was committed, and it rolls back when that code lets go. Drop guards \
         before the scope's work returns, and await attached tasks"
    )]
    SessionHeld {
        /// The bind.
        bind: String,
        /// How long the scope waited (the bind's `acquire_timeout`).
        waited: Duration,
    },

    /// An atomic block with `IfOpen::Fail` found a transaction open.
    #[error(
        "bind `{bind}`: an atomic block found a transaction already open on the scope's \
         session; commit or roll it back first, or pick another `IfOpen` policy"
    )]
    TransactionOpen {
        /// The bind.
        bind: String,
    },

    /// A before-commit hook refused the commit; every session of the scope was rolled back.
    #[error("a before-commit hook vetoed the commit; the scope's sessions were rolled back")]
    CommitVetoed {
        /// What the hook returned.
        #[source]
        source: BoxError,
    },

    /// A scope with several binds committed some of them, then a commit failed.
    #[error(
        "scope commit failed on bind `{failed}` after committing {}; rolled back: {}. The \
         committed binds cannot be undone: reconcile them, or keep one bind per scope where \
         all-or-nothing matters",
        list(committed),
        list(rolled_back)
    )]
    PartialCommit {
        /// Binds whose commit succeeded, in commit order.
        committed: Vec<String>,
        /// The bind whose commit failed.
        failed: String,
        /// Binds rolled back after the failure.
        rolled_back: Vec<String>,
        /// The failed commit's error.
        #[source]
        source: Box<Error>,
    },

    /// `close()` reached its deadline with sessions still holding connections.
    #[error(
        "close deadline passed with connections still checked out ({}); they are closed when \
         their sessions end",
        busy.iter().map(|(b, n)| format!("`{b}`: {n}")).collect::<Vec<_>>().join(", ")
    )]
    CloseTimedOut {
        /// Each bind with connections still out, and how many.
        busy: Vec<(String, usize)>,
    },

    /// A blocking call was made from async code, where blocking would stall the runtime.
    #[error(
        "{}a blocking dbscope call was made from async code running on a tokio runtime, where \
         it would block the runtime's thread (and deadlock a current-thread runtime); use the \
         async API (`Session`), or run this blocking code in tokio::task::spawn_blocking",
        bind_prefix(bind.as_deref())
    )]
    BlockingInAsync {
        /// The bind of the call, when it is about one.
        bind: Option<String>,
    },

    /// A blocking scope's session was asked for outside any blocking scope.
    #[error(
        "{}no blocking scope is active on this thread; run this code inside \
         `dbscope::blocking::scope(&manager, || …)` (a blocking scope belongs to the thread that \
         opened it: threads it starts inherit nothing)",
        bind_prefix(bind.as_deref())
    )]
    NoBlockingScope {
        /// The bind asked for, when one was.
        bind: Option<String>,
    },

    /// The runtime that drives blocking binds could not start.
    #[error(
        "cannot start the runtime that drives blocking binds (a thread and an I/O driver); the \
         process may be out of threads or file descriptors"
    )]
    BlockingRuntime {
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// A boxed error from user code, such as a hook's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

impl Error {
    /// The bind the error is about, when it is about one.
    pub fn bind(&self) -> Option<&str> {
        match self {
            Self::InvalidUrl { bind, .. }
            | Self::UnknownScheme { bind, .. }
            | Self::DriverNotEnabled { bind, .. }
            | Self::MissingUrl { bind, .. }
            | Self::DuplicateBind { bind }
            | Self::ZeroMaxConnections { bind }
            | Self::MinExceedsMax { bind, .. }
            | Self::Unsupported { bind, .. }
            | Self::UnknownBind { bind, .. }
            | Self::BackendMismatch { bind, .. }
            | Self::Timeout { bind, .. }
            | Self::Closed { bind }
            | Self::Connect { bind, .. }
            | Self::Poisoned { bind }
            | Self::TransactionAborted { bind }
            | Self::ScopeEnded { bind }
            | Self::BindNotInScope { bind, .. }
            | Self::DuplicateScopeBind { bind }
            | Self::SessionBusy { bind }
            | Self::SessionHeld { bind, .. }
            | Self::TransactionOpen { bind } => Some(bind),
            Self::PartialCommit { failed, .. } => Some(failed),
            Self::Sqlx { bind, .. }
            | Self::NoScope { bind }
            | Self::BlockingInAsync { bind }
            | Self::NoBlockingScope { bind } => bind.as_deref(),
            Self::NoBinds
            | Self::InvalidBindName { .. }
            | Self::ConfigFile { .. }
            | Self::Config { .. }
            | Self::CloseTimedOut { .. }
            | Self::CommitVetoed { .. }
            | Self::BlockingRuntime { .. } => None,
        }
    }

    /// A connection could not be had in time (`acquire_timeout`).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::Sqlx {
                    source: sqlx::Error::PoolTimedOut,
                    ..
                }
        )
    }

    /// The manager, and so the bind, is closed.
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            Self::Closed { .. }
                | Self::Sqlx {
                    source: sqlx::Error::PoolClosed,
                    ..
                }
        )
    }

    /// No bind has the name asked for.
    pub fn is_unknown_bind(&self) -> bool {
        matches!(self, Self::UnknownBind { .. })
    }

    /// The bind exists but is of another database type.
    pub fn is_backend_mismatch(&self) -> bool {
        matches!(self, Self::BackendMismatch { .. })
    }

    /// The configuration is wrong: fix it and start again.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::InvalidUrl { .. }
                | Self::UnknownScheme { .. }
                | Self::DriverNotEnabled { .. }
                | Self::MissingUrl { .. }
                | Self::NoBinds
                | Self::InvalidBindName { .. }
                | Self::DuplicateBind { .. }
                | Self::DuplicateScopeBind { .. }
                | Self::ZeroMaxConnections { .. }
                | Self::MinExceedsMax { .. }
                | Self::Unsupported { .. }
                | Self::ConfigFile { .. }
                | Self::Config { .. }
        )
    }

    /// A new connection could not be opened.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }

    /// The session is unusable after an operation was cancelled or broke mid-flight.
    pub fn is_poisoned(&self) -> bool {
        matches!(self, Self::Poisoned { .. })
    }

    /// The transaction was aborted by an earlier error and rolled back.
    pub fn is_transaction_aborted(&self) -> bool {
        matches!(self, Self::TransactionAborted { .. })
    }

    /// A scope's session was asked for outside any scope (async, or blocking on this thread).
    pub fn is_no_scope(&self) -> bool {
        matches!(self, Self::NoScope { .. } | Self::NoBlockingScope { .. })
    }

    /// A blocking call was refused because it was made from async code: use the async API or
    /// `tokio::task::spawn_blocking`.
    pub fn is_blocking_in_async(&self) -> bool {
        matches!(self, Self::BlockingInAsync { .. })
    }

    /// A before-commit hook vetoed the scope's commit.
    pub fn is_commit_vetoed(&self) -> bool {
        matches!(self, Self::CommitVetoed { .. })
    }

    /// A scope committed some of its binds before a commit failed: see the error's lists.
    pub fn is_partial_commit(&self) -> bool {
        matches!(self, Self::PartialCommit { .. })
    }

    /// The error the database returned, if it is one (a constraint violation, a syntax error …).
    pub fn as_database_error(&self) -> Option<&(dyn sqlx::error::DatabaseError + 'static)> {
        match self {
            Self::Sqlx {
                source: sqlx::Error::Database(e),
                ..
            } => Some(&**e),
            _ => None,
        }
    }

    /// The error of a scope whose commit failed on `failed` after committing `committed` (in
    /// order) and rolling back `rolled_back`: the commit's own error when nothing had committed
    /// yet, else [`Error::PartialCommit`].
    pub(crate) fn commit_failed(
        committed: Vec<String>,
        failed: &str,
        rolled_back: Vec<String>,
        source: Error,
    ) -> Self {
        if committed.is_empty() {
            return source;
        }
        Self::PartialCommit {
            committed,
            failed: failed.to_owned(),
            rolled_back,
            source: Box::new(source),
        }
    }

    pub(crate) fn sqlx(bind: &str, what: &'static str, source: sqlx::Error) -> Self {
        Self::Sqlx {
            bind: Some(bind.to_owned()),
            what,
            source,
        }
    }

    /// Turns the error into an `sqlx::Error` for code that speaks sqlx (our `Executor` impls).
    ///
    /// Pool timeouts and closed pools keep sqlx's own variants, connect errors their driver
    /// error; the rest travel boxed in `sqlx::Error::Configuration`, and `From<sqlx::Error>`
    /// unboxes them, so `?` into [`Error`] gives back the original.
    pub(crate) fn into_sqlx(self) -> sqlx::Error {
        match self {
            Self::Timeout { .. } => sqlx::Error::PoolTimedOut,
            Self::Closed { .. } => sqlx::Error::PoolClosed,
            Self::Sqlx { source, .. } => source,
            other => sqlx::Error::Configuration(Box::new(other)),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Configuration(boxed) if boxed.is::<Error>() => match boxed.downcast() {
                Ok(ours) => *ours,
                Err(other) => Self::Sqlx {
                    bind: None,
                    what: "statement",
                    source: sqlx::Error::Configuration(other),
                },
            },
            source => Self::Sqlx {
                bind: None,
                what: "statement",
                source,
            },
        }
    }
}

/// For code that speaks sqlx (a closure given to
/// [`BlockingSession::run`](crate::blocking::BlockingSession::run) returning `sqlx::Result`): as
/// in a query, timeouts become `PoolTimedOut`, a closed bind `PoolClosed`, the rest travel boxed,
/// and `?` back into [`Error`] restores the original.
impl From<Error> for sqlx::Error {
    fn from(err: Error) -> Self {
        err.into_sqlx()
    }
}

impl From<figment::Error> for Error {
    fn from(err: figment::Error) -> Self {
        Self::Config {
            source: Box::new(err),
        }
    }
}
