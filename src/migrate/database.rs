//! Creating and dropping a bind's database, as sqlx-cli's `database create` and `drop` do.

use sqlx::migrate::MigrateDatabase;

use crate::backend::{self, Dialect};
use crate::error::Op;
use crate::{BindManager, Error, Result};

/// What to do with the database a bind's URL names.
#[derive(Clone, Copy)]
enum Action {
    Exists,
    Create,
    Drop,
}

impl BindManager {
    /// Whether the database of bind `bind` exists (for SQLite: its file).
    ///
    /// Connects with the bind's URL alone, to the server's maintenance database
    /// (`postgres`, or none on MySQL): TLS and other settings of `connect` outside the URL do
    /// not apply.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::UnknownBind`](crate::ErrorKind::UnknownBind);
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) for an in-memory SQLite bind;
    /// [`ErrorKind::Query`](crate::ErrorKind::Query) when the server cannot be reached or
    /// refuses.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn database_exists(&self, bind: &str) -> Result<bool> {
        self.database(bind, Action::Exists).await
    }

    /// Creates the database of bind `bind`, unless it exists. Returns whether it created it.
    ///
    /// Connects as [`database_exists`](BindManager::database_exists) does.
    ///
    /// # Errors
    ///
    /// As [`BindManager::database_exists`]; the server's refusal (no privilege …) is the
    /// source.
    ///
    /// # Cancel safety
    ///
    /// Dropped after the server received `CREATE DATABASE`, the database may or may not exist:
    /// call it again.
    pub async fn create_database(&self, bind: &str) -> Result<bool> {
        if self.database(bind, Action::Exists).await? {
            return Ok(false);
        }
        self.database(bind, Action::Create).await?;
        Ok(true)
    }

    /// Drops the database of bind `bind`, and all its data, if it exists. Returns whether it
    /// dropped it. Sessions of the bind must be done: PostgreSQL refuses to drop a database
    /// with connections open.
    ///
    /// # Errors
    ///
    /// As [`BindManager::database_exists`].
    ///
    /// # Cancel safety
    ///
    /// As [`BindManager::create_database`].
    pub async fn drop_database(&self, bind: &str) -> Result<bool> {
        if !self.database(bind, Action::Exists).await? {
            return Ok(false);
        }
        self.database(bind, Action::Drop).await?;
        Ok(true)
    }

    async fn database(&self, bind: &str, action: Action) -> Result<bool> {
        let config = self.entry(bind)?.erased.config();
        let (url, dialect) = backend::resolve(bind, config)?;
        let raw = url.expose();
        if dialect == Dialect::Sqlite && (raw.contains(":memory:") || raw.contains("mode=memory")) {
            return Err(Error::unsupported(
                bind,
                "an in-memory SQLite database cannot be created or dropped: it lives as long as \
                 the bind",
            ));
        }
        let url = backend::sqlx_url(url, config);
        let (op, result) = match dialect {
            #[cfg(feature = "postgres")]
            Dialect::Postgres => run::<sqlx::Postgres>(&url, action).await,
            #[cfg(feature = "mysql")]
            Dialect::MySql => run::<sqlx::MySql>(&url, action).await,
            #[cfg(feature = "sqlite")]
            Dialect::Sqlite => {
                let out = run::<sqlx::Sqlite>(&url, action).await;
                if matches!(action, Action::Drop) && out.1.is_ok() {
                    remove_sqlite_leftovers(&url);
                }
                out
            }
            #[allow(unreachable_patterns)]
            other => unreachable!("resolve refuses drivers not compiled in: {other:?}"),
        };
        result.map_err(|e| Error::query(Some(bind), Op::new(op), e))
    }
}

async fn run<DB: MigrateDatabase>(url: &str, action: Action) -> (&'static str, sqlx::Result<bool>) {
    match action {
        Action::Exists => (
            "checking that the database exists",
            DB::database_exists(url).await,
        ),
        Action::Create => (
            "CREATE DATABASE",
            DB::create_database(url).await.map(|()| true),
        ),
        Action::Drop => ("DROP DATABASE", DB::drop_database(url).await.map(|()| true)),
    }
}

/// A dropped SQLite database's WAL and shared-memory files, which sqlx leaves.
#[cfg(feature = "sqlite")]
fn remove_sqlite_leftovers(url: &str) {
    use std::str::FromStr;
    if let Ok(options) = sqlx::sqlite::SqliteConnectOptions::from_str(url) {
        let file = options.get_filename().display().to_string();
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{file}{suffix}"));
        }
    }
}
