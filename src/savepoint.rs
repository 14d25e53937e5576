use std::fmt;
use std::ops::{Deref, DerefMut};

use crate::backend::Backend;
use crate::{Result, Session};

/// A savepoint: a nested transaction inside a [`Session`], from [`Session::savepoint`].
///
/// Derefs to the session, so statements run on `&mut *savepoint`, and savepoints nest
/// (`savepoint.savepoint().await?`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dbscope::Error> {
/// # let manager = dbscope::BindManager::new(dbscope::BindConfig::new("sqlite::memory:"))?;
/// # let mut session = manager.session::<sqlx::Sqlite>("default")?;
/// sqlx::query("CREATE TABLE notes (body TEXT UNIQUE)").execute(&mut session).await?;
/// sqlx::query("INSERT INTO notes VALUES ('first')").execute(&mut session).await?;
/// let mut sp = session.savepoint().await?;
/// match sqlx::query("INSERT INTO notes VALUES ('first')").execute(&mut *sp).await {
///     Ok(_) => sp.commit().await?,    // keep it
///     Err(_) => sp.rollback().await?, // undo it; the session's transaction goes on
/// }
/// session.commit().await?;
/// # Ok(()) }
/// ```
///
/// # Drop behavior
///
/// Dropping the guard without [`commit`](Savepoint::commit) rolls back to the savepoint: the
/// rollback is sent before the session's next operation (a drop cannot await).
#[must_use = "a savepoint dropped at once rolls back at once"]
pub struct Savepoint<'s, DB: Backend> {
    session: &'s mut Session<DB>,
    level: u32,
    done: bool,
}

impl<DB: Backend> Session<DB> {
    /// Opens a savepoint: a nested transaction that commits (`RELEASE`) or rolls back on its own.
    /// Without a transaction open, it begins one first (in autocommit mode, the guard *is* that
    /// transaction: committing it commits).
    ///
    /// Run statements on the guard (`&mut *savepoint` is the session). Dropping the guard
    /// without [`Savepoint::commit`] rolls back to the savepoint, before the session's next
    /// operation.
    ///
    /// # Errors
    ///
    /// As [`Session::begin`], and [`ErrorKind::Query`](crate::ErrorKind::Query) when SAVEPOINT (or
    /// the BEGIN sent with it) fails; [`ErrorKind::TransactionAborted`](crate::ErrorKind::TransactionAborted)
    /// after the transaction's first statement failed (see "Round trips" on [`Session`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in effect: cancelled mid-flight, the session is poisoned, and its connection
    /// is recovered or discarded when it drops.
    pub async fn savepoint(&mut self) -> Result<Savepoint<'_, DB>> {
        let level = self.open_savepoint().await?;
        Ok(Savepoint::new(self, level))
    }
}

impl<'s, DB: Backend> Savepoint<'s, DB> {
    pub(crate) fn new(session: &'s mut Session<DB>, level: u32) -> Self {
        Self {
            session,
            level,
            done: false,
        }
    }

    /// Keeps the savepoint's work (`RELEASE SAVEPOINT`; `COMMIT` for the outermost guard of an
    /// autocommit session). After the code ended the whole transaction through the guard (a
    /// commit or rollback of the session), there is nothing left to release: `Ok`, and nothing
    /// is sent; so too a guard dropped then rolls nothing back.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Query`](crate::ErrorKind::Query) when the statement fails;
    /// [`ErrorKind::Poisoned`](crate::ErrorKind::Poisoned) after a cancelled operation.
    ///
    /// # Cancel safety
    ///
    /// Cancelled mid-flight, the outcome is unknown: the session is poisoned, and its connection
    /// is recovered or discarded when it drops.
    pub async fn commit(mut self) -> Result<()> {
        self.done = true;
        self.session.release_savepoint(self.level).await
    }

    /// Undoes the savepoint's work (`ROLLBACK TO SAVEPOINT`); the transaction around it goes on.
    ///
    /// # Errors
    ///
    /// As [`Savepoint::commit`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in effect: cancelled before it is sent, the rollback is sent before the
    /// session's next operation; cancelled mid-flight, the session is poisoned.
    pub async fn rollback(mut self) -> Result<()> {
        self.done = true;
        self.session.rollback_savepoint(self.level).await
    }
}

impl<DB: Backend> Deref for Savepoint<'_, DB> {
    type Target = Session<DB>;

    fn deref(&self) -> &Session<DB> {
        self.session
    }
}

impl<DB: Backend> DerefMut for Savepoint<'_, DB> {
    fn deref_mut(&mut self) -> &mut Session<DB> {
        self.session
    }
}

impl<DB: Backend> Drop for Savepoint<'_, DB> {
    fn drop(&mut self) {
        if !self.done {
            self.session.savepoint_dropped(self.level);
        }
    }
}

impl<DB: Backend> fmt::Debug for Savepoint<'_, DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Savepoint")
            .field("level", &self.level)
            .field("session", &self.session)
            .finish()
    }
}
