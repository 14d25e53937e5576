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
            | Self::TransactionAborted { bind } => Some(bind),
            Self::Sqlx { bind, .. } => bind.as_deref(),
            Self::NoBinds
            | Self::InvalidBindName { .. }
            | Self::ConfigFile { .. }
            | Self::Config { .. }
            | Self::CloseTimedOut { .. } => None,
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

impl From<figment::Error> for Error {
    fn from(err: figment::Error) -> Self {
        Self::Config {
            source: Box::new(err),
        }
    }
}
