#![doc = include_str!("../README.md")]

#[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
compile_error!(
    "dbscope needs a database driver: enable at least one of its `postgres`, `mysql` or `sqlite` features"
);

mod backend;
mod bind;
mod bind_key;
pub mod blocking;
mod config;
mod database_url;
mod engine;
mod error;
mod hosts;
mod integration;
mod load;
mod manager;
#[cfg(feature = "migrate")]
mod migrate;
mod observe;
mod savepoint;
mod scope;
mod session;
#[cfg(feature = "testing")]
pub mod testing;

pub use backend::Backend;
pub use bind::Bind;
pub use bind_key::{BindKey, DefaultBind};
pub use config::{
    BindConfig, Config, ConnectConfig, DEFAULT_BIND, Engine, Fallback, HealthCheck, IsolationLevel,
    JournalMode, PoolConfig, Pooler, RoutingConfig, SessionConfig, SqliteConfig, TlsConfig,
    TlsMode,
};
pub use database_url::DatabaseUrl;
/// Runs an `async fn(t: TestContext)` as a test on per-test copies of the app's binds: see
/// [`testing`].
#[cfg(feature = "testing")]
pub use dbscope_macros::test;
pub use engine::{BindStatus, HostRole, HostStatus};
pub use error::{BoxError, Error, ErrorKind, Result, RoutingFailure, TlsCheck};
pub use hosts::{HostChoice, HostContext, ReadToken};
#[cfg(feature = "actix")]
pub use integration::actix;
#[cfg(feature = "axum")]
pub use integration::axum;
#[cfg(feature = "tower")]
pub use integration::tower;
pub use load::{BIND_ENV_PREFIX, DATABASE_URL_ENV};
pub use manager::{BindManager, BindManagerBuilder};
#[cfg(feature = "migrate")]
pub use migrate::{
    BindMigrations, BindOutcome, BindReport, Direction, MigrateEvent, MigrateReport, MigrationInfo,
    MigrationSource, MigrationState, MigrationStatus, Migrations,
};
pub use savepoint::Savepoint;
pub use scope::{
    Atomic, IfOpen, Scope, ScopeBuilder, ScopedSession, SessionLease, TransactionMode, atomic,
    atomic_for, current_read_session, current_session, current_session_for, scope,
    try_current_session,
};
pub use session::Session;
