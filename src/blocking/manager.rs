//! The manager's blocking door: each bind's blocking face, and closing from blocking code.

use std::time::Duration;

use std::sync::Arc;

use super::registry::BlockingFaces;
use super::runtime::refuse_in_async;
use super::{BlockingBind, BlockingSession};
use crate::backend::Backend;
use crate::{BindKey, BindManager, Result};

impl BindManager {
    /// The bind `name` for blocking code, as database type `DB`: the same database, connect
    /// options and session defaults as [`BindManager::bind`], on a pool of its own (sized by the
    /// same `max_connections`), opened on first use. The manager's [`status`](Self::status)
    /// lists that pool, and closing or dropping the manager closes it.
    ///
    /// ```
    /// # fn main() -> Result<(), dbscope::Error> {
    /// let manager = dbscope::BindManager::new(dbscope::BindConfig::new("sqlite::memory:"))?;
    /// let bind = manager.blocking_bind::<sqlx::Sqlite>("default")?; // keep this handle
    /// let mut session = bind.session();
    /// session.execute(sqlx::query("CREATE TABLE t (x INT)"))?;
    /// session.commit()?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`BindManager::bind`]; [`ErrorKind::BlockingRuntime`](crate::ErrorKind::BlockingRuntime) when
    /// the runtime that drives blocking binds cannot start (first use only).
    pub fn blocking_bind<DB: Backend>(&self, name: &str) -> Result<BlockingBind<DB>> {
        self.bind::<DB>(name)?; // the async face's checks: name, type, closed
        let face = self.blocking_faces().open(name, self.entry(name)?)?;
        Ok(BlockingBind {
            bind: face.bind(),
            driver: face.driver,
        })
    }

    /// The bind a [`BindKey`] names, for blocking code.
    ///
    /// # Errors
    ///
    /// As [`BindManager::blocking_bind`].
    pub fn blocking_bind_for<K: BindKey>(&self) -> Result<BlockingBind<K::Database>> {
        self.blocking_bind(K::NAME)
    }

    /// A new blocking session on the bind `name`. Opens nothing until its first statement.
    ///
    /// # Errors
    ///
    /// As [`BindManager::blocking_bind`].
    pub fn blocking_session<DB: Backend>(&self, name: &str) -> Result<BlockingSession<DB>> {
        Ok(self.blocking_bind::<DB>(name)?.session())
    }

    /// A new blocking session on the bind a [`BindKey`] names.
    ///
    /// # Errors
    ///
    /// As [`BindManager::blocking_bind`].
    pub fn blocking_session_for<K: BindKey>(&self) -> Result<BlockingSession<K::Database>> {
        self.blocking_session(K::NAME)
    }

    /// Opens one connection per bind on its blocking face now (and `min_connections` in the
    /// background), so that a wrong URL or a down server fails at start-up.
    ///
    /// # Errors
    ///
    /// The first bind that fails, by name: [`ErrorKind::Connect`](crate::ErrorKind::Connect),
    /// [`ErrorKind::Tls`](crate::ErrorKind::Tls), [`ErrorKind::Timeout`](crate::ErrorKind::Timeout), [`ErrorKind::Closed`](crate::ErrorKind::Closed);
    /// [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code.
    pub fn connect_blocking(&self) -> Result<()> {
        refuse_in_async(None)?;
        for name in self.names() {
            let face = self.blocking_faces().open(name, self.entry(name)?)?;
            face.driver.run(face.erased().clone().connect())?;
        }
        Ok(())
    }

    /// [`close`](BindManager::close) for blocking code: closes every bind, async and blocking
    /// faces alike, and waits up to `deadline` for sessions to return their connections.
    ///
    /// # Errors
    ///
    /// As [`BindManager::close`]; [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from
    /// async code (use `close().await` there).
    pub fn close_blocking(&self, deadline: Duration) -> Result<()> {
        refuse_in_async(None)?;
        let driver = self.blocking_faces().driver()?;
        driver.run(self.close(deadline))
    }
}

impl BindManager {
    /// This manager's blocking faces, kept with it and opened on first blocking use.
    pub(super) fn blocking_faces(&self) -> Arc<BlockingFaces> {
        self.faces(BlockingFaces::default)
    }
}
