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
mod savepoint;
mod scope;
mod session;

pub use backend::Backend;
pub use bind::Bind;
pub use bind_key::{BindKey, DefaultBind};
pub use config::{
    BindConfig, Config, ConnectConfig, DEFAULT_BIND, Engine, Fallback, HealthCheck, IsolationLevel,
    JournalMode, PoolConfig, RoutingConfig, SessionConfig, SqliteConfig, TlsConfig, TlsMode,
};
pub use database_url::DatabaseUrl;
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
pub use savepoint::Savepoint;
pub use scope::{
    Atomic, IfOpen, Scope, ScopeBuilder, ScopedSession, SessionLease, TransactionMode, atomic,
    atomic_for, current_read_session, current_session, current_session_for, scope,
    try_current_session,
};
pub use session::Session;
