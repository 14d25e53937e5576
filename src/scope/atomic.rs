//! Atomic blocks: a part of a scope's work that commits or rolls back on its own outcome.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use super::{Scope, Slot};
use crate::backend::Backend;
use crate::{BindKey, Error, Result};

/// What an atomic block does when the scope's session already has a transaction open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IfOpen {
    /// Nest: the block runs in a savepoint, released on `Ok`, rolled back to on `Err`; the
    /// outer transaction goes on either way.
    #[default]
    Savepoint,
    /// Commit the open transaction, then run the block in a transaction of its own.
    Commit,
    /// Roll the open transaction back, then run the block in a transaction of its own.
    Rollback,
    /// Run the block in the open transaction and leave its end to the scope (the seeds'
    /// "append").
    Join,
    /// Refuse with [`ErrorKind::TransactionOpen`](crate::ErrorKind::TransactionOpen).
    Fail,
}

/// An atomic block on the current scope's session of one bind, from [`atomic`] or
/// [`atomic_for`].
///
/// The block's work uses the scope's session as any code of the scope does
/// ([`current_session`](crate::current_session)); what the block adds is a transaction (or a
/// savepoint) that ends with the block: `Ok` commits it, `Err` rolls it back.
#[must_use = "an atomic block does nothing until run"]
pub struct Atomic<DB: Backend> {
    bind: String,
    if_open: IfOpen,
    db: PhantomData<fn() -> DB>,
}

/// An atomic block on the current scope's session of bind `name`.
///
/// ```
/// use sqlx::Sqlite;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dbscope::Error> {
/// # let manager = dbscope::BindManager::new(dbscope::BindConfig::new("sqlite::memory:"))?;
/// dbscope::scope(&manager, async {
///     let mut s = dbscope::current_session::<Sqlite>("default").await?;
///     sqlx::query("CREATE TABLE notes (body TEXT)").execute(&mut s).await?;
///     drop(s);
///     // A savepoint inside the scope's transaction: undone alone when it fails.
///     let failed: Result<(), dbscope::Error> = dbscope::atomic::<Sqlite>("default")
///         .run(async {
///             let mut s = dbscope::current_session::<Sqlite>("default").await?;
///             sqlx::query("INSERT INTO notes VALUES ('draft')").execute(&mut s).await?;
///             Err(sqlx::Error::RowNotFound.into()) // any error: the insert is rolled back
///         })
///         .await;
///     assert!(failed.is_err());
///     let mut s = dbscope::current_session::<Sqlite>("default").await?;
///     let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes").fetch_one(&mut s).await?;
///     assert_eq!(n, 0);
///     Ok::<_, dbscope::Error>(())
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub fn atomic<DB: Backend>(name: &str) -> Atomic<DB> {
    Atomic {
        bind: name.to_owned(),
        if_open: IfOpen::default(),
        db: PhantomData,
    }
}

/// An atomic block on the current scope's session of the bind a [`BindKey`] names.
pub fn atomic_for<K: BindKey>() -> Atomic<K::Database> {
    atomic(K::NAME)
}

impl<DB: Backend> Atomic<DB> {
    /// What to do when a transaction is already open (default: [`IfOpen::Savepoint`]).
    pub fn if_open(mut self, policy: IfOpen) -> Self {
        self.if_open = policy;
        self
    }

    /// Runs `work` in the block's transaction or savepoint, which `Ok` commits (or releases)
    /// and `Err` rolls back. Early commits inside the work are the work's business: if it
    /// ended the block's transaction itself, there is nothing left to end.
    ///
    /// # Errors
    ///
    /// The work's error; those of [`current_session`](crate::current_session);
    /// [`ErrorKind::TransactionOpen`](crate::ErrorKind::TransactionOpen) under [`IfOpen::Fail`]; the errors of BEGIN, SAVEPOINT,
    /// COMMIT, RELEASE or ROLLBACK.
    ///
    /// # Cancel safety
    ///
    /// Cancelled while the work runs, the block's transaction or savepoint is rolled back
    /// before the session's next use; cancelled during BEGIN or COMMIT, the session is
    /// poisoned and the scope fails.
    pub async fn run<F, T, E>(self, work: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let scope = Scope::current_for(&self.bind)?;
        let slot = scope.slot::<DB>(&self.bind)?;
        let Some(level) = self.open(&slot).await? else {
            return work.await; // joined the open transaction
        };
        let mut guard = RollbackOnDrop {
            slot: Some(slot),
            level,
        };
        let result = work.await;
        let slot = guard.slot.take().expect("the guard holds its slot");
        let mut session = slot.lock().await?;
        if session.depth() < level {
            return result; // the work ended the block's transaction itself
        }
        match &result {
            Ok(_) => session.release_savepoint(level).await?,
            Err(_) => session.rollback_savepoint(level).await?,
        }
        result
    }

    /// Opens the block's transaction or savepoint, per the policy; `None` joins the open one.
    async fn open(&self, slot: &Slot<DB>) -> Result<Option<u32>> {
        let mut session = slot.lock().await?;
        if !session.in_transaction() {
            session.begin().await?;
            return Ok(Some(1));
        }
        match self.if_open {
            IfOpen::Savepoint => Ok(Some(session.open_savepoint().await?)),
            IfOpen::Commit => {
                session.commit().await?;
                session.begin().await?;
                Ok(Some(1))
            }
            IfOpen::Rollback => {
                session.rollback().await?;
                session.begin().await?;
                Ok(Some(1))
            }
            IfOpen::Join => Ok(None),
            IfOpen::Fail => Err(Error::transaction_open(&self.bind)),
        }
    }
}

/// Rolls the block back if its work is dropped before it ends.
struct RollbackOnDrop<DB: Backend> {
    slot: Option<Arc<Slot<DB>>>,
    level: u32,
}

impl<DB: Backend> Drop for RollbackOnDrop<DB> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.roll_back_to(self.level);
        }
    }
}

impl<DB: Backend> fmt::Debug for Atomic<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Atomic")
            .field("bind", &self.bind)
            .field("if_open", &self.if_open)
            .finish()
    }
}
