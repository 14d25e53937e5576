//! The migration lock of an `Any` connection (`engine = "any"`), which learns its backend only
//! at run time: it takes the same lock as the native connection of that backend, rather than
//! sqlx's `Any` lock, which on MySQL/MariaDB is sqlx-mysql's `GET_LOCK(name, -1)` (it returns
//! NULL at once on MariaDB, and both migrators go ahead) and on SQLite no lock at all.

use futures_core::future::BoxFuture;
use sqlx::AnyConnection;
use sqlx::migrate::{Migrate, MigrateError};

use super::sqlite::{self, SqliteMigrationConn};
use super::{MigrationConn, NamedLock, close_within, lock_id, named_lock};
use crate::DatabaseUrl;

/// The dedicated connection of an `Any` bind at `url`: on SQLite, under the lock file of its
/// database, as a native SQLite bind.
pub(super) fn open(conn: AnyConnection, url: Option<&DatabaseUrl>) -> Box<dyn MigrationConn> {
    match url.and_then(|u| sqlite::lock_file(u.expose())) {
        Some(file) if conn.backend_name() == "SQLite" => {
            Box::new(SqliteMigrationConn::new(conn, Some(file)))
        }
        _ => Box::new(conn),
    }
}

named_lock_queries!(AnyConnection);

/// PostgreSQL's lock, tried first so that a wait is told: as the native connection does.
async fn pg_lock(
    conn: &mut AnyConnection,
    waiting: &(dyn Fn() + Send + Sync),
) -> Result<(), MigrateError> {
    // `Any` has no decoder for PostgreSQL's `name` type: hence the cast.
    let database: String = sqlx::query_scalar("SELECT CAST(current_database() AS TEXT)")
        .fetch_one(&mut *conn)
        .await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_id(&database))
        .fetch_one(&mut *conn)
        .await?;
    if !got {
        waiting();
        // sqlx-postgres' `pg_advisory_lock`, which does wait.
        Migrate::lock(conn).await?;
    }
    Ok(())
}

impl MigrationConn for AnyConnection {
    fn migrate(&mut self) -> &mut (dyn Migrate + Send) {
        self
    }

    fn lock<'a>(
        &'a mut self,
        waiting: &'a (dyn Fn() + Send + Sync),
    ) -> BoxFuture<'a, Result<(), MigrateError>> {
        Box::pin(async move {
            match self.backend_name() {
                "PostgreSQL" => pg_lock(self, waiting).await,
                "MySQL" => named_lock(self as &mut dyn NamedLock, waiting).await,
                // SQLite in memory, which no other process can reach (a file is locked by
                // `SqliteMigrationConn`), or a driver dbscope does not know.
                _ => Migrate::lock(self).await,
            }
        })
    }

    fn unlock(&mut self) -> BoxFuture<'_, Result<(), MigrateError>> {
        Migrate::unlock(self)
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(close_within(*self))
    }
}
