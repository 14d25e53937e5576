use std::fmt;
use std::sync::Arc;

use super::BlockingSession;
use super::runtime::{Driver, refuse_in_async};
use crate::backend::Backend;
use crate::{Bind, BindStatus, ReadToken, Result};

/// A bind for blocking code: the same database, options and session defaults as the async
/// [`Bind`] of the same name, on a pool of its own. From [`BindManager::blocking_bind`].
///
/// A cheap handle (`Clone` is two `Arc` clones), `Send` and `Sync`: keep one where your threads
/// open sessions, rather than asking the manager each time.
///
/// [`BindManager::blocking_bind`]: crate::BindManager::blocking_bind
pub struct BlockingBind<DB: Backend> {
    pub(crate) bind: Bind<DB>,
    pub(crate) driver: Arc<Driver>,
}

impl<DB: Backend> BlockingBind<DB> {
    /// The bind's name.
    pub fn name(&self) -> &str {
        self.bind.name()
    }

    /// A new session with the bind's defaults. Opens nothing: the session checks a connection
    /// out on its first statement.
    pub fn session(&self) -> BlockingSession<DB> {
        BlockingSession::new(self.clone())
    }

    /// A new read session: see [`Bind::read_session`]. This face has hosts (and a prober) of its
    /// own.
    pub fn read_session(&self) -> BlockingSession<DB> {
        BlockingSession::of(self.bind.read_session(), self.clone())
    }

    /// A read session that sees the commit `token` stands for: see
    /// [`Bind::read_session_after`].
    pub fn read_session_after(&self, token: Option<ReadToken>) -> BlockingSession<DB> {
        BlockingSession::of(self.bind.read_session_after(token), self.clone())
    }

    /// A snapshot of this face's pool (`blocking: true`).
    pub fn status(&self) -> BindStatus {
        BindStatus {
            blocking: true,
            ..self.bind.status()
        }
    }

    /// Opens a connection now (and `min_connections` in the background), to fail fast at start-up
    /// rather than on the first statement.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Connect`](crate::ErrorKind::Connect) when the server cannot be reached or refuses the
    /// credentials; [`ErrorKind::Tls`](crate::ErrorKind::Tls) when a TLS check fails;
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) when that takes longer than
    /// `acquire_timeout`; [`ErrorKind::Closed`](crate::ErrorKind::Closed);
    /// [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code.
    pub fn connect(&self) -> Result<()> {
        refuse_in_async(Some(self.name()))?;
        self.driver.run(self.bind.connect())
    }
}

impl<DB: Backend> Clone for BlockingBind<DB> {
    fn clone(&self) -> Self {
        Self {
            bind: self.bind.clone(),
            driver: self.driver.clone(),
        }
    }
}

impl<DB: Backend> fmt::Debug for BlockingBind<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BlockingBind").field(&self.bind).finish()
    }
}
