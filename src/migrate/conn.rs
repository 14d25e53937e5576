//! The dedicated connection a bind migrates on, and its lock.
//!
//! It is opened for one run, outside the bind's pool, and closed after it; after a failure it
//! is dropped without a goodbye, so the server ends the session and frees whatever lock it
//! held. A lock can therefore never be stranded on a pooled connection, which a migrator that
//! borrows one from the pool and fails between lock and unlock does (sqlx's `Migrator::run`
//! returns early without unlocking: lakekeeper #1790).

use std::time::Duration;

use futures_core::future::BoxFuture;
use sqlx::Connection;
use sqlx::migrate::{Migrate, MigrateError};

use crate::{BindManager, Error, Result};

/// A connection migrations run on: sqlx's [`Migrate`] plus a lock that says when it must wait.
pub(crate) trait MigrationConn: Send {
    /// The connection, for sqlx's migration steps.
    fn migrate(&mut self) -> &mut (dyn Migrate + Send);

    /// Takes the migration lock of the database (the one sqlx's migrator takes, so that
    /// sqlx-cli and dbscope exclude each other), calling `waiting` first if another holds it.
    fn lock<'a>(
        &'a mut self,
        waiting: &'a (dyn Fn() + Send + Sync),
    ) -> BoxFuture<'a, Result<(), MigrateError>>;

    /// Releases the lock.
    fn unlock(&mut self) -> BoxFuture<'_, Result<(), MigrateError>>;

    /// Closes the connection politely.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// How long a polite close may take before the connection is dropped instead.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

async fn close_within<C: Connection>(conn: C) {
    let _ = tokio::time::timeout(CLOSE_LIMIT, conn.close()).await;
}

/// Seconds of one `GET_LOCK` wait on MySQL/MariaDB, repeated until the lock is had.
#[cfg(any(feature = "mysql", feature = "any"))]
const MYSQL_LOCK_ROUND: i64 = 5;

/// sqlx's lock id for a database: its name's CRC-32 times a constant (sqlx-postgres and
/// sqlx-mysql `generate_lock_id`), so that the try below and sqlx's lock are the same lock.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "any"))]
fn lock_id(database: &str) -> i64 {
    const CRC_IEEE: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC_IEEE.checksum(database.as_bytes()))
}

/// Why a bind behind a transaction pooler cannot migrate, and what to do.
const MIGRATE_BEHIND_POOLER: &str = "migrations cannot run behind PgBouncer in transaction \
     pooling: their lock is a session-level advisory lock, which the bouncer may split across \
     server connections; migrate through a bind (or `DBSCOPE_BINDS__<NAME>__URL`) that points at \
     the server itself, without `connect.pooler`";

/// Opens the dedicated connection of bind `name`; without `create`, for work that changes
/// nothing (a status, a dry run, a revert), makes no database: a SQLite file that does not
/// exist is answered by an empty in-memory database (nothing applied), so that a URL with a
/// typo leaves no empty file behind.
pub(crate) async fn open(
    manager: &BindManager,
    name: &str,
    create: bool,
) -> Result<Box<dyn MigrationConn>> {
    let entry = manager.entry(name)?;
    if entry.erased.is_closed() {
        return Err(Error::closed(name));
    }
    if entry.erased.config().connect.pooler.pools_transactions() {
        // The migration lock is a session-level advisory lock, taken and released outside any
        // transaction: behind a transaction pooler, each may land on another server connection,
        // and a lock could be stranded, or two migrators could both hold it.
        return Err(Error::unsupported(name, MIGRATE_BEHIND_POOLER));
    }
    // One arm per driver compiled in, as `bind::open` picks them.
    #[cfg(feature = "any")]
    if let Some(bind) = entry.typed::<sqlx::Any>() {
        let url = entry.erased.config().url.as_ref();
        if !create
            && url.is_some_and(|u| u.expose().starts_with("sqlite"))
            && sqlite::is_missing(url)
        {
            let conn = <sqlx::AnyConnection as sqlx::Connection>::connect("sqlite::memory:")
                .await
                .map_err(|e| Error::connect(name, "sqlite::memory:", e))?;
            return Ok(any::open(conn, None));
        }
        return Ok(any::open(bind.connect_unpooled(create).await?, url));
    }
    #[cfg(feature = "postgres")]
    if let Some(bind) = entry.typed::<sqlx::Postgres>() {
        return Ok(Box::new(bind.connect_unpooled(create).await?));
    }
    #[cfg(feature = "mysql")]
    if let Some(bind) = entry.typed::<sqlx::MySql>() {
        return Ok(Box::new(bind.connect_unpooled(create).await?));
    }
    #[cfg(feature = "sqlite")]
    if let Some(bind) = entry.typed::<sqlx::Sqlite>() {
        let url = entry.erased.config().url.as_ref();
        if !create && sqlite::is_missing(url) {
            let conn = <sqlx::SqliteConnection as sqlx::Connection>::connect("sqlite::memory:")
                .await
                .map_err(|e| Error::connect(name, "sqlite::memory:", e))?;
            return Ok(Box::new(sqlite::SqliteMigrationConn::new(conn, None)));
        }
        let lock_file = url.and_then(|u| sqlite::lock_file(u.expose()));
        let conn = bind.connect_unpooled(create).await?;
        return Ok(Box::new(sqlite::SqliteMigrationConn::new(conn, lock_file)));
    }
    unreachable!("bind `{name}` is of a backend compiled in")
}

#[cfg(feature = "postgres")]
impl MigrationConn for sqlx::PgConnection {
    fn migrate(&mut self) -> &mut (dyn Migrate + Send) {
        self
    }

    fn lock<'a>(
        &'a mut self,
        waiting: &'a (dyn Fn() + Send + Sync),
    ) -> BoxFuture<'a, Result<(), MigrateError>> {
        Box::pin(async move {
            let database: String = sqlx::query_scalar("SELECT current_database()")
                .fetch_one(&mut *self)
                .await?;
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(lock_id(&database))
                .fetch_one(&mut *self)
                .await?;
            if got {
                return Ok(());
            }
            waiting();
            Migrate::lock(self).await
        })
    }

    fn unlock(&mut self) -> BoxFuture<'_, Result<(), MigrateError>> {
        Migrate::unlock(self)
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(close_within(*self))
    }
}

/// The two queries of the MySQL/MariaDB lock, on a native or an `Any` connection.
#[cfg(any(feature = "mysql", feature = "any"))]
trait NamedLock: Send {
    /// `SELECT DATABASE()`.
    fn database(&mut self) -> BoxFuture<'_, sqlx::Result<String>>;

    /// `GET_LOCK(name, seconds)`: 1 when had, 0 on timeout, NULL on a server error.
    fn get_lock<'a>(
        &'a mut self,
        name: &'a str,
        seconds: i64,
    ) -> BoxFuture<'a, sqlx::Result<Option<i64>>>;
}

/// Takes sqlx's MySQL/MariaDB migration lock, calling `waiting` once if another holds it.
///
/// sqlx-mysql names the lock with the id in hex. Its own lock, `GET_LOCK(name, -1)`, waits
/// forever on MySQL but returns NULL at once on MariaDB (10.11 does), and sqlx ignores the
/// answer: two migrators would both go ahead. This one waits in rounds of a timeout both
/// accept, until the server says it holds the lock.
#[cfg(any(feature = "mysql", feature = "any"))]
async fn named_lock(
    conn: &mut dyn NamedLock,
    waiting: &(dyn Fn() + Send + Sync),
) -> Result<(), MigrateError> {
    let name = format!("{:x}", lock_id(&conn.database().await?));
    let mut told = false;
    loop {
        let round = if told { MYSQL_LOCK_ROUND } else { 0 };
        match conn.get_lock(&name, round).await? {
            Some(1) => return Ok(()),
            Some(_) if !told => {
                waiting();
                told = true;
            }
            Some(_) => {}
            None => {
                let e = std::io::Error::other(format!("GET_LOCK('{name}') failed on the server"));
                return Err(MigrateError::Execute(sqlx::Error::Io(e)));
            }
        }
    }
}

/// The [`NamedLock`] queries for a connection type whose executor takes them as written.
#[cfg(any(feature = "mysql", feature = "any"))]
macro_rules! named_lock_queries {
    ($conn:ty) => {
        impl NamedLock for $conn {
            fn database(&mut self) -> BoxFuture<'_, sqlx::Result<String>> {
                Box::pin(sqlx::query_scalar("SELECT DATABASE()").fetch_one(self))
            }

            fn get_lock<'a>(
                &'a mut self,
                name: &'a str,
                seconds: i64,
            ) -> BoxFuture<'a, sqlx::Result<Option<i64>>> {
                Box::pin(
                    sqlx::query_scalar("SELECT CAST(GET_LOCK(?, ?) AS SIGNED)")
                        .bind(name)
                        .bind(seconds)
                        .fetch_one(self),
                )
            }
        }
    };
}

#[cfg(feature = "mysql")]
named_lock_queries!(sqlx::MySqlConnection);

#[cfg(feature = "mysql")]
impl MigrationConn for sqlx::MySqlConnection {
    fn migrate(&mut self) -> &mut (dyn Migrate + Send) {
        self
    }

    fn lock<'a>(
        &'a mut self,
        waiting: &'a (dyn Fn() + Send + Sync),
    ) -> BoxFuture<'a, Result<(), MigrateError>> {
        Box::pin(named_lock(self, waiting))
    }

    fn unlock(&mut self) -> BoxFuture<'_, Result<(), MigrateError>> {
        Migrate::unlock(self)
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(close_within(*self))
    }
}

/// The dedicated connection of an `Any` connection to the database at `url`, for the testing
/// toolkit: on SQLite, under its database's lock file.
#[cfg(feature = "testing")]
pub(crate) fn any_connection(
    conn: sqlx::AnyConnection,
    url: Option<&crate::DatabaseUrl>,
) -> Box<dyn MigrationConn> {
    any::open(conn, url)
}

#[cfg(feature = "any")]
mod any;
// The file lock serves `Any` connections on SQLite too.
#[cfg(any(feature = "sqlite", feature = "any"))]
mod sqlite;
