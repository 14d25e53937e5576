#![doc = include_str!("../README.md")]

#[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
compile_error!(
    "dbscope needs a database driver: enable at least one of its `postgres`, `mysql` or `sqlite` features"
);

mod backend;
mod bind;
mod config;
mod database_url;
mod engine;
mod error;
mod load;
mod manager;
mod savepoint;
mod session;

pub use backend::Backend;
pub use bind::{Bind, BindStatus};
pub use config::{
    BindConfig, Config, ConnectConfig, DEFAULT_BIND, Engine, HealthCheck, IsolationLevel,
    JournalMode, PoolConfig, SessionConfig, SqliteConfig,
};
pub use database_url::DatabaseUrl;
pub use error::{Error, Result};
pub use load::{BIND_ENV_PREFIX, DATABASE_URL_ENV};
pub use manager::{BindKey, BindManager, BindManagerBuilder, DefaultBind};
pub use savepoint::Savepoint;
pub use session::Session;
