use std::fmt;
use std::ops::{Deref, DerefMut};

use super::BlockingSession;
use crate::Result;
use crate::backend::Backend;

/// A savepoint of a [`BlockingSession`], from [`BlockingSession::savepoint`]: a nested
/// transaction that commits (`RELEASE`) or rolls back on its own.
///
/// Derefs to the session, so statements run on the guard and savepoints nest.
///
/// ```
/// # fn main() -> Result<(), dbscope::Error> {
/// # let manager = dbscope::BindManager::new(dbscope::BindConfig::new("sqlite::memory:"))?;
/// let mut session = manager.blocking_session::<sqlx::Sqlite>("default")?;
/// session.execute(sqlx::query("CREATE TABLE notes (body TEXT UNIQUE)"))?;
/// session.execute(sqlx::query("INSERT INTO notes VALUES ('first')"))?;
/// let mut sp = session.savepoint()?;
/// match sp.execute(sqlx::query("INSERT INTO notes VALUES ('first')")) {
///     Ok(_) => sp.commit()?,    // keep it
///     Err(_) => sp.rollback()?, // undo it; the session's transaction goes on
/// }
/// session.commit()?;
/// # Ok(()) }
/// ```
///
/// # Drop behavior
///
/// Dropping the guard without [`commit`](BlockingSavepoint::commit) rolls back to the savepoint:
/// the rollback is sent before the session's next operation, as for an async
/// [`Savepoint`](crate::Savepoint).
#[must_use = "a savepoint dropped at once rolls back at once"]
pub struct BlockingSavepoint<'s, DB: Backend> {
    session: &'s mut BlockingSession<DB>,
    level: u32,
    done: bool,
}

impl<'s, DB: Backend> BlockingSavepoint<'s, DB> {
    pub(crate) fn new(session: &'s mut BlockingSession<DB>, level: u32) -> Self {
        Self {
            session,
            level,
            done: false,
        }
    }

    /// Keeps the savepoint's work (`RELEASE SAVEPOINT`; `COMMIT` for the outermost guard of an
    /// autocommit session).
    ///
    /// # Errors
    ///
    /// As [`Savepoint::commit`](crate::Savepoint::commit);
    /// [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code (the guard then
    /// drops, which rolls back to the savepoint).
    pub fn commit(mut self) -> Result<()> {
        let level = self.level;
        let (session, driver) = self.session.parts()?;
        self.done = true;
        driver.run(session.release_savepoint(level))
    }

    /// Undoes the savepoint's work (`ROLLBACK TO SAVEPOINT`); the transaction around it goes on.
    ///
    /// # Errors
    ///
    /// As [`Savepoint::rollback`](crate::Savepoint::rollback);
    /// [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code (the rollback
    /// is then sent before the session's next operation).
    pub fn rollback(mut self) -> Result<()> {
        let level = self.level;
        let (session, driver) = self.session.parts()?;
        self.done = true;
        driver.run(session.rollback_savepoint(level))
    }
}

impl<DB: Backend> Deref for BlockingSavepoint<'_, DB> {
    type Target = BlockingSession<DB>;

    fn deref(&self) -> &BlockingSession<DB> {
        self.session
    }
}

impl<DB: Backend> DerefMut for BlockingSavepoint<'_, DB> {
    fn deref_mut(&mut self) -> &mut BlockingSession<DB> {
        self.session
    }
}

impl<DB: Backend> Drop for BlockingSavepoint<'_, DB> {
    fn drop(&mut self) {
        if !self.done {
            self.session.inner_mut().savepoint_dropped(self.level);
        }
    }
}

impl<DB: Backend> fmt::Debug for BlockingSavepoint<'_, DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingSavepoint")
            .field("level", &self.level)
            .field("session", &self.session)
            .finish()
    }
}
