//! Bind configuration: plain serde structs, each field with its default.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::DatabaseUrl;

mod routing;
mod tls;

pub use routing::{Fallback, RoutingConfig};
pub use tls::{TlsConfig, TlsMode};

/// The name a single, unnamed bind gets, and the bind `DATABASE_URL` configures.
pub const DEFAULT_BIND: &str = "default";

/// All binds, by name.
///
/// Build it in code (`Config::default().bind("main", …)`, or `BindConfig::into()` for one bind
/// named `default`), or load it with [`Config::from_env`], [`Config::from_file`] or
/// [`Config::from_file_and_env`], whose docs say how the layers merge.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The binds, by name. Default: none.
    #[serde(default)]
    pub binds: BTreeMap<String, BindConfig>,
}

impl Config {
    /// Adds (or replaces) the bind `name`.
    pub fn bind(mut self, name: impl Into<String>, bind: BindConfig) -> Self {
        self.binds.insert(name.into(), bind);
        self
    }
}

impl From<BindConfig> for Config {
    /// One bind, named `default`.
    fn from(bind: BindConfig) -> Self {
        Self::default().bind(DEFAULT_BIND, bind)
    }
}

/// One database: where it is, how its pool behaves, how its sessions begin.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct BindConfig {
    /// `postgres://…`, `mysql://…` (or `mariadb://…`), `sqlite://path.db`, `sqlite::memory:`.
    /// Required.
    pub url: Option<DatabaseUrl>,
    /// Which connection type serves the bind. Default: [`Engine::Native`].
    pub engine: Engine,
    /// Log every statement of this bind through `tracing` at INFO (target `sqlx::query`).
    /// Default: `false` (statements slower than 1 s are still logged at WARN).
    pub echo: bool,
    /// Record each statement's SQL on its tracing span (`db.query.text`). Off by default: a
    /// query's text may carry data (literals) that traces should not.
    pub trace_query_text: bool,
    /// Pool sizing, timeouts and health checks.
    pub pool: PoolConfig,
    /// Options applied when a connection opens.
    pub connect: ConnectConfig,
    /// How this bind's sessions begin their transactions.
    pub session: SessionConfig,
    /// A directory of migrations in sqlx's format (`<VERSION>_<DESCRIPTION>.sql`, or
    /// `.up.sql` and `.down.sql` pairs), read when migrations run, relative to the working
    /// directory, following the project's `sqlx.toml` where one describes the directory (its
    /// `[migrate]` table, as `sqlx::migrate!` and sqlx-cli read it). Used by the `migrate`
    /// feature; migrations embedded with `sqlx::migrate!` are handed in code instead. Default:
    /// none.
    pub migrations: Option<PathBuf>,
    /// Binds whose migrations must run before this bind's (`migrate_after = ["accounts"]`).
    /// Default: none (binds migrate in name order).
    pub migrate_after: Vec<String>,
    /// Replicas of the bind's database (`replicas = ["postgres://…"]`): read sessions go to
    /// them. Every host, the bind's `url` among them, may turn out to be the primary: roles are
    /// probed, not configured. Default: none (the bind is its `url` alone). In one environment
    /// variable, `url1,url2`: split only where a comma begins another `scheme://` URL, so a
    /// comma inside a URL (a query, a password) stays in it.
    #[serde(deserialize_with = "routing::replicas")]
    pub replicas: Vec<DatabaseUrl>,
    /// How sessions are routed among the hosts of a bind with replicas.
    pub routing: RoutingConfig,
}

impl BindConfig {
    /// A bind on `url`, every other option at its default.
    pub fn new(url: impl Into<DatabaseUrl>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// Adds a replica: see [`BindConfig::replicas`].
    pub fn replica(mut self, url: impl Into<DatabaseUrl>) -> Self {
        self.replicas.push(url.into());
        self
    }

    /// Sets [`RoutingConfig::max_lag`].
    pub fn max_lag(mut self, lag: Duration) -> Self {
        self.routing.max_lag = lag;
        self
    }

    /// Sets the bind's [`RoutingConfig`].
    pub fn routing(mut self, routing: RoutingConfig) -> Self {
        self.routing = routing;
        self
    }

    /// Sets [`PoolConfig::max_connections`].
    pub fn max_connections(mut self, n: u32) -> Self {
        self.pool.max_connections = n;
        self
    }

    /// Sets [`PoolConfig::min_connections`].
    pub fn min_connections(mut self, n: u32) -> Self {
        self.pool.min_connections = n;
        self
    }

    /// Sets [`PoolConfig::acquire_timeout`].
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.pool.acquire_timeout = timeout;
        self
    }

    /// Sets [`PoolConfig::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.pool.idle_timeout = timeout;
        self
    }

    /// Sets [`PoolConfig::max_lifetime`].
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.pool.max_lifetime = lifetime;
        self
    }

    /// Sets [`PoolConfig::health_check`].
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.pool.health_check = check;
        self
    }

    /// Sets [`BindConfig::echo`].
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }

    /// Sets [`BindConfig::trace_query_text`].
    pub fn trace_query_text(mut self, on: bool) -> Self {
        self.trace_query_text = on;
        self
    }

    /// Sets [`BindConfig::engine`].
    pub fn engine(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }

    /// Sets [`ConnectConfig::application_name`].
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.connect.application_name = Some(name.into());
        self
    }

    /// Sets [`TlsConfig::mode`]: whether connections are encrypted, and what is verified.
    pub fn tls_mode(mut self, mode: TlsMode) -> Self {
        self.connect.tls.mode = Some(mode);
        self
    }

    /// Sets [`TlsConfig::root_cert`]: the PEM file of the CA certificates the server's may be
    /// signed by.
    pub fn tls_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.connect.tls.root_cert = Some(path.into());
        self
    }

    /// Sets [`TlsConfig::client_cert`] and [`TlsConfig::client_key`]: the certificate this
    /// bind's connections present to the server, and its private key (PEM files).
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.connect.tls.client_cert = Some(cert.into());
        self.connect.tls.client_key = Some(key.into());
        self
    }

    /// Sets [`ConnectConfig::pooler`]: `Pooler::PgbouncerTransaction` for a bind behind
    /// PgBouncer in transaction pooling mode.
    pub fn pooler(mut self, pooler: Pooler) -> Self {
        self.connect.pooler = pooler;
        self
    }

    /// Sets [`SessionConfig::isolation`].
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        self.session.isolation = Some(level);
        self
    }

    /// Sets [`SessionConfig::read_only`].
    pub fn read_only(mut self, on: bool) -> Self {
        self.session.read_only = on;
        self
    }

    /// Sets [`SessionConfig::autocommit`].
    pub fn autocommit(mut self, on: bool) -> Self {
        self.session.autocommit = on;
        self
    }

    /// Sets [`SessionConfig::read_only_without_begin`].
    pub fn read_only_without_begin(mut self, on: bool) -> Self {
        self.session.read_only_without_begin = on;
        self
    }

    /// Sets [`BindConfig::migrations`]: the directory this bind's migrations are read from.
    pub fn migrations(mut self, dir: impl Into<PathBuf>) -> Self {
        self.migrations = Some(dir.into());
        self
    }

    /// Sets [`BindConfig::migrate_after`]: the binds migrated before this one.
    pub fn migrate_after<S: Into<String>>(mut self, binds: impl IntoIterator<Item = S>) -> Self {
        self.migrate_after = binds.into_iter().map(Into::into).collect();
        self
    }
}

/// Which sqlx connection type serves a bind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Engine {
    /// The driver's own connection (`PgConnection`, `MySqlConnection`, `SqliteConnection`),
    /// chosen by the URL's scheme; ask for the bind as `Bind<Postgres>` and so on.
    #[default]
    Native,
    /// `AnyConnection`, for code that does not know the backend at compile time; ask for the bind
    /// as `Bind<Any>`. Needs the `any` feature. Driver options that `Any` cannot carry
    /// (statement cache, application name, SQLite pragmas) go in the URL's query instead.
    Any,
}

/// Pool sizing, timeouts and health checks of one bind.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Most connections open at once. Default: 10.
    ///
    /// When all are in use, checkouts wait in the order they asked: a connection given back
    /// goes to the checkout that has waited longest, never to a newcomer (the one that gave it
    /// back included), so no caller starves while others are served.
    pub max_connections: u32,
    /// Connections kept open once the bind has been used (or connected eagerly); the pool
    /// starts with none. Default: 0.
    pub min_connections: u32,
    /// Longest wait for a connection, creation included, before [`ErrorKind::Timeout`](crate::ErrorKind::Timeout)
    /// (`"30s"`, `"500ms"` in files). Default: 30 s.
    ///
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout): crate::Error::Timeout
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Close a connection idle for this long (never below `min_connections`). Default: 10 min.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Close a connection this old when it is next idle. Default: 30 min.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
    /// When to ping a connection before handing it out. Default: if idle for more than 30 s.
    pub health_check: HealthCheck,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            health_check: HealthCheck::default(),
        }
    }
}

/// When a pooled connection is pinged before a session gets it.
///
/// Connections are never pinged on release: a session returns its connection only when it knows
/// the connection is clean, and discards it otherwise.
///
/// In TOML: `health_check = "always"`, `"never"` or `{ if_idle_for = "30s" }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthCheck {
    /// Ping on every checkout (one round trip each, as sqlx's `test_before_acquire`).
    Always,
    /// Never ping; a dead connection shows up as an error on the session's first statement.
    Never,
    /// Ping only connections idle for longer than this (the default, with 30 s): a connection
    /// in steady use costs nothing, one that sat idle is checked.
    IfIdleFor(#[serde(with = "humantime_serde")] Duration),
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self::IfIdleFor(Duration::from_secs(30))
    }
}

impl HealthCheck {
    pub(crate) fn should_ping(self, idle: Duration) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::IfIdleFor(limit) => idle > limit,
        }
    }
}

/// Options applied when a connection opens.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ConnectConfig {
    /// Prepared statements cached per connection. Default: the driver's (100).
    pub statement_cache_capacity: Option<usize>,
    /// The `application_name` the server shows (PostgreSQL; other backends ignore it and say
    /// so in a WARN at start-up). Default: none.
    pub application_name: Option<String>,
    /// SQLite pragmas and file options.
    pub sqlite: SqliteConfig,
    /// TLS: mode, CA and client certificate (PostgreSQL and MySQL/MariaDB). Default: the URL's
    /// settings, else the driver's (`prefer`).
    pub tls: TlsConfig,
    /// The connection pooler between this bind and its server, if one shares server
    /// connections among clients (`pooler = "pgbouncer_transaction"` in TOML). Default:
    /// [`Pooler::None`].
    pub pooler: Pooler,
}

/// A connection pooler in front of a bind's server: what the bind must not rely on across
/// transactions. See "Behind PgBouncer" in the README.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Pooler {
    /// None, or one that gives each client connection a server connection of its own for as
    /// long as it is open (PgBouncer's session mode): the driver's defaults hold.
    #[default]
    None,
    /// PgBouncer in transaction pooling mode (PostgreSQL binds only): a client connection has
    /// a server connection only from BEGIN to COMMIT or ROLLBACK, and the next transaction may
    /// get another. The bind then prepares no named statements (every statement is parsed
    /// anew, unnamed, inside its transaction: one more round trip per statement with
    /// parameters), keeps no statement cache, and refuses autocommit sessions, whose parse and
    /// execute could land on two different server connections.
    PgbouncerTransaction,
}

impl Pooler {
    /// Whether server connections change hands between a client's transactions.
    pub(crate) fn pools_transactions(self) -> bool {
        self == Self::PgbouncerTransaction
    }
}

/// SQLite pragmas and file options.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// `PRAGMA foreign_keys`. Default: the driver's (on).
    pub foreign_keys: Option<bool>,
    /// `PRAGMA journal_mode`. Default: the driver's (`wal` for files).
    pub journal_mode: Option<JournalMode>,
    /// How long a statement waits for a lock held by another connection. Default: the driver's
    /// (5 s).
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Option<Duration>,
    /// Create the database file when it does not exist. Default: `true`.
    pub create_if_missing: bool,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            foreign_keys: None,
            journal_mode: None,
            busy_timeout: None,
            create_if_missing: true,
        }
    }
}

/// SQLite's `journal_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
#[non_exhaustive]
pub enum JournalMode {
    Delete,
    Truncate,
    Persist,
    Memory,
    Wal,
    Off,
}

/// How a bind's sessions begin their transactions; a session can override the first three.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Isolation level of each transaction. Default: the server's.
    pub isolation: Option<IsolationLevel>,
    /// Begin transactions read-only. Default: `false`.
    pub read_only: bool,
    /// Run statements without BEGIN/COMMIT: each lands on its own. Default: `false`.
    pub autocommit: bool,
    /// Let read-only sessions run without BEGIN/COMMIT where that cannot change what they see,
    /// on connections the server itself keeps read-only (PostgreSQL's
    /// `default_transaction_read_only`, MySQL's session `READ ONLY` access mode), set once per
    /// connection. `false` keeps every read-only session in a `READ ONLY` transaction and leaves
    /// the connections' settings alone. See "Read-only sessions" on
    /// [`Session`](crate::Session) for the rule. Default: `true`.
    pub read_only_without_begin: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            isolation: None,
            read_only: false,
            autocommit: false,
            read_only_without_begin: true,
        }
    }
}

/// Transaction isolation level.
///
/// PostgreSQL and MySQL/MariaDB take all four. SQLite transactions are always serializable, so a
/// SQLite bind accepts only [`IsolationLevel::Serializable`] and refuses the others with
/// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
#[non_exhaustive]
pub enum IsolationLevel {
    ReadUncommitted,
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

impl IsolationLevel {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Self::ReadUncommitted => "READ UNCOMMITTED",
            Self::ReadCommitted => "READ COMMITTED",
            Self::RepeatableRead => "REPEATABLE READ",
            Self::Serializable => "SERIALIZABLE",
        }
    }

    /// The level a server names: PostgreSQL's `read committed`, MySQL's `READ-COMMITTED`.
    pub(crate) fn from_server(name: &str) -> Option<Self> {
        let name = name.trim().to_ascii_uppercase().replace('-', " ");
        [
            Self::ReadUncommitted,
            Self::ReadCommitted,
            Self::RepeatableRead,
            Self::Serializable,
        ]
        .into_iter()
        .find(|level| level.sql() == name)
    }
}
