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

/// The file of the database at `url`, as sqlx reads it (the path percent-decoded, the query
/// cut off at `?`), so that the lock sits beside the very file the connections open; `None` for
/// an in-memory one.
pub(super) fn database_file(url: &str) -> Option<PathBuf> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    #[cfg(feature = "sqlite")]
    {
        use std::str::FromStr;
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
        let file = options.get_filename();
        (!file.as_os_str().is_empty()).then(|| file.to_path_buf())
    }
    // Without sqlx's SQLite driver no connection can open this URL (an `Any` bind on SQLite
    // needs it): a rough reading is enough for a lock nothing contends for.
    #[cfg(not(feature = "sqlite"))]
    {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?;
        let path = rest.split('?').next().unwrap_or(rest);
        (!path.is_empty()).then(|| PathBuf::from(path))
    }
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

#[cfg(test)]
#[cfg(feature = "sqlite")]
mod tests {
    use std::path::Path;
    use std::str::FromStr;

    use super::*;

    #[test]
    fn the_lock_sits_beside_the_file_sqlx_opens() {
        // A percent-encoded path is the decoded file's, as sqlx opens it, not the URL's text.
        let url = "sqlite://data%20dir/app%3F.db?mode=rwc";
        let sqlx_file = sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .unwrap()
            .get_filename()
            .to_path_buf();
        assert_eq!(sqlx_file, Path::new("data dir/app?.db"));
        assert_eq!(database_file(url), Some(sqlx_file));
        assert_eq!(
            lock_file(url),
            Some(PathBuf::from("data dir/app?.db-migrate.lock"))
        );
        assert_eq!(
            lock_file("sqlite:app.db"),
            Some(PathBuf::from("app.db-migrate.lock"))
        );
        assert_eq!(
            lock_file("sqlite:///tmp/x/app.db?mode=ro"),
            Some(PathBuf::from("/tmp/x/app.db-migrate.lock"))
        );
    }

    #[test]
    fn in_memory_databases_have_no_file() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://shared?mode=memory&cache=shared",
            "sqlite:",
        ] {
            assert_eq!(database_file(url), None, "{url}");
        }
    }
}
