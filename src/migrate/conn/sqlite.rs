//! SQLite's migration lock: sqlx takes none (its `lock` does nothing), so two processes
//! migrating one file would both apply. dbscope locks a file beside the database,
//! `<database>-migrate.lock`, with the operating system's advisory lock, which the OS releases
//! when the process ends, however it ends: no lock can outlive its holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;
use std::time::Duration;

use futures_core::future::BoxFuture;
use sqlx::Connection;
use sqlx::migrate::{Migrate, MigrateError};

use super::{MigrationConn, close_within};

/// How often a migrator waiting for the lock tries again.
const RETRY: Duration = Duration::from_millis(25);

/// A SQLite connection (native, or `Any` on SQLite) and the lock file of its database.
pub(crate) struct SqliteMigrationConn<C> {
    conn: C,
    /// `None` for an in-memory database, which no other process can reach.
    lock_file: Option<PathBuf>,
    held: Option<File>,
}

impl<C> SqliteMigrationConn<C> {
    pub(crate) fn new(conn: C, lock_file: Option<PathBuf>) -> Self {
        Self {
            conn,
            lock_file,
            held: None,
        }
    }
}

/// The lock file of the database at `url`; `None` for an in-memory one.
pub(super) fn lock_file(url: &str) -> Option<PathBuf> {
    let file = database_file(url)?;
    Some(PathBuf::from(format!("{}-migrate.lock", file.display())))
}

/// The file of the database at `url`; `None` for an in-memory one.
pub(super) fn database_file(url: &str) -> Option<PathBuf> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split(['?', '#']).next().unwrap_or(rest);
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// A database file that does not exist yet, for work that must not make it: it has nothing
/// applied, which an empty in-memory database answers as well, and no file comes of asking.
pub(super) fn is_missing(url: Option<&crate::DatabaseUrl>) -> bool {
    url.and_then(|u| database_file(u.expose()))
        .is_some_and(|file| !file.exists())
}

fn io(e: std::io::Error) -> MigrateError {
    MigrateError::Execute(sqlx::Error::Io(e))
}

impl<C: Connection + Migrate + 'static> MigrationConn for SqliteMigrationConn<C> {
    fn migrate(&mut self) -> &mut (dyn Migrate + Send) {
        &mut self.conn
    }

    fn lock<'a>(
        &'a mut self,
        waiting: &'a (dyn Fn() + Send + Sync),
    ) -> BoxFuture<'a, Result<(), MigrateError>> {
        Box::pin(async move {
            let Some(path) = &self.lock_file else {
                return Ok(());
            };
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(io)?;
            let mut told = false;
            // Polled rather than blocking a thread: dropping this future stops the wait.
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(TryLockError::WouldBlock) => {
                        if !told {
                            waiting();
                            told = true;
                        }
                        tokio::time::sleep(RETRY).await;
                    }
                    Err(TryLockError::Error(e)) => return Err(io(e)),
                }
            }
            self.held = Some(file);
            Ok(())
        })
    }

    fn unlock(&mut self) -> BoxFuture<'_, Result<(), MigrateError>> {
        // Closing the file releases the lock; the file stays, for the next migrator to lock.
        self.held = None;
        Box::pin(async { Ok(()) })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(close_within(self.conn))
    }
}
