//! Atomic blocks: a part of a scope's work that commits or rolls back on its own outcome.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use super::{Scope, Slot};
use crate::backend::Backend;
use crate::{BindKey, Error, Result};

/// What an atomic block does when the scope's session already has a transaction open.
///
/// The policies of the library dbscope replaces, context-async-sqlalchemy ("the seed" below),
/// given to its `atomic_db_session(connect, current_transaction)`, map one to one, with the
/// same outcomes:
///
/// | seed's policy | `IfOpen` | the transaction already open | the block's end |
/// |---|---|---|---|
/// | `"commit"` (its default) | [`Commit`](IfOpen::Commit) | committed first | the block's own transaction: `Ok` commits, `Err` rolls back |
/// | `"rollback"` | [`Rollback`](IfOpen::Rollback) | rolled back first | as for `Commit` |
/// | `"append"` | [`Join`](IfOpen::Join) | the block runs in it | `Ok` commits it, `Err` rolls it back, the work before the block included |
/// | `"raise"` | [`Fail`](IfOpen::Fail) | left as it is | the block does not run |
/// | (none) | [`Savepoint`](IfOpen::Savepoint), the default | goes on | a savepoint: `Ok` releases it, `Err` rolls back to it |
/// | (none) | [`LeaveOpen`](IfOpen::LeaveOpen) | the block runs in it | nothing: the transaction's opener ends it |
///
/// With no transaction open, every policy does the same: the block begins a transaction and
/// ends it, `Ok` committing, `Err` rolling back.
///
/// **The default differs from the seed's, on purpose.** The seed's default, `"commit"`, commits
/// whatever the request did before the block, so a helper that wraps its work in an atomic block
/// makes its caller's half-done work permanent, and the request is no longer all or nothing.
/// dbscope's default nests the block in a savepoint instead: the block still fails alone, and
/// the scope's outcome still decides the rest. Port the seed's `atomic_db_session(connect)` as
/// `.if_open(IfOpen::Commit)` where its early commit of the earlier work matters (with no
/// transaction open, as in most of its examples, both do the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IfOpen {
    /// Nest: the block runs in a savepoint, released on `Ok`, rolled back to on `Err`; the
    /// outer transaction goes on either way, ended by whoever opened it.
    #[default]
    Savepoint,
    /// Commit the open transaction, then run the block in a transaction of its own (the seed's
    /// `"commit"`).
    Commit,
    /// Roll the open transaction back, then run the block in a transaction of its own (the
    /// seed's `"rollback"`).
    Rollback,
    /// Run the block in the open transaction and end that transaction with the block (the
    /// seed's `"append"`): `Ok` commits it, `Err` rolls it back, with everything it held
    /// before the block. Inside an enclosing atomic block, that is the enclosing block's
    /// transaction too: it ends here, and the enclosing block finds nothing left to end.
    Join,
    /// Run the block in the open transaction and leave its end to whoever opened it (the scope,
    /// or an enclosing block): neither `Ok` nor `Err` ends anything. An `Err` that the caller
    /// swallows leaves the block's statements in that transaction, to be committed with it;
    /// use [`Savepoint`](IfOpen::Savepoint) to undo the block alone. The seed has no such
    /// policy.
    LeaveOpen,
    /// Refuse with [`ErrorKind::TransactionOpen`](crate::ErrorKind::TransactionOpen) (the
    /// seed's `"raise"`); the open transaction is left as it is.
    Fail,
}

/// An atomic block on the current scope's session of one bind, from [`atomic`] or
/// [`atomic_for`].
///
/// The block's work uses the scope's session as any code of the scope does
/// ([`current_session`](crate::current_session)); what the block adds is a transaction (or a
/// savepoint) that ends with the block: `Ok` commits it, `Err` rolls it back. [`IfOpen`] says
/// what happens to a transaction already open.
///
/// # Other code of the scope while a block is open
///
/// A block has no session of its own: it opens its transaction or savepoint on the scope's
/// session, and **every statement that session runs while the block is open is part of the
/// block**, whichever code of the scope runs it. A `join!` sibling's statement, run between
/// two of the block's, commits or rolls back with the block, as with the library dbscope
/// replaces, where all code of a request shares one session. Work that must not be part of
/// the block (concurrent work that commits or fails on its own) needs a session of its own:
/// run it in a new scope, `Scope::current()?.new_scope().run(work)`
/// ([`Scope::new_scope`](crate::Scope::new_scope)).
///
/// Blocks that overlap on one session without nesting (two `join!` siblings, each running a
/// block) nest in the order they opened: if the one opened first ends first, it ends the
/// other's savepoint with its own, keeping (`Ok`) or undoing (`Err`) the other's work whatever
/// the other's outcome. Give each of them a new scope instead.
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
    /// and `Err` rolls back; under [`IfOpen::Join`] that is the transaction that was already
    /// open, with its earlier work; under [`IfOpen::LeaveOpen`], with a transaction open, the
    /// block ends nothing. Early commits inside the work are the work's business: if it ended
    /// the block's transaction itself, there is nothing left to end.
    ///
    /// # Errors
    ///
    /// The work's error; those of [`current_session`](crate::current_session);
    /// [`ErrorKind::TransactionOpen`](crate::ErrorKind::TransactionOpen) under [`IfOpen::Fail`];
    /// the errors of BEGIN, SAVEPOINT, COMMIT, RELEASE or ROLLBACK.
    ///
    /// # Cancel safety
    ///
    /// Cancelled while the work runs, the block's transaction or savepoint (under
    /// [`IfOpen::Join`], the joined transaction) is rolled back before the session's next use;
    /// cancelled during BEGIN or COMMIT, the session is poisoned and the scope fails.
    pub async fn run<F, T, E>(self, work: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let scope = Scope::current_for(&self.bind)?;
        let block = self.enter(&scope).await?;
        let result = work.await;
        block.end(result.is_ok()).await?;
        result
    }

    /// Opens the block on `scope`'s session: the first half of [`run`](Atomic::run), for
    /// scopes whose work is not a future (the blocking ones).
    pub(crate) async fn enter(&self, scope: &Scope) -> Result<Block<DB>> {
        let slot = scope.slot::<DB>(&self.bind, scope.is_read_only())?;
        let level = self.open(&slot).await?;
        Ok(Block {
            // `None`: the block runs in the open transaction, which its opener ends.
            guard: level.map(|level| RollbackOnDrop {
                slot: Some(slot),
                level,
            }),
        })
    }

    /// Opens the block's transaction or savepoint, per the policy, and returns the level the
    /// block ends; `None` leaves the open transaction to its opener.
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
            // The transaction itself, whatever savepoints are open inside it: the seed's
            // "append" commits (or rolls back) the whole of it.
            IfOpen::Join => Ok(Some(1)),
            IfOpen::LeaveOpen => Ok(None),
            IfOpen::Fail => Err(Error::transaction_open(&self.bind)),
        }
    }
}

/// An open atomic block: [`end`](Block::end) commits or rolls it back; dropped unended (its
/// work cancelled or panicking), it rolls back before the session's next use.
pub(crate) struct Block<DB: Backend> {
    guard: Option<RollbackOnDrop<DB>>,
}

impl<DB: Backend> Block<DB> {
    /// Ends the block by its work's outcome: releases (or commits) it on `ok`, rolls it back
    /// otherwise; nothing when the work already ended the block's transaction itself.
    pub(crate) async fn end(mut self, ok: bool) -> Result<()> {
        let Some(mut guard) = self.guard.take() else {
            return Ok(());
        };
        let slot = Arc::clone(guard.slot.as_ref().expect("the guard holds its slot"));
        let level = guard.level;
        // Armed until the session is taken: a wait for it that fails (other code of the scope
        // holds it past `acquire_timeout`) or is cancelled leaves the block to roll back before
        // the session's next use, whatever the work's outcome was. Disarmed with the session
        // in hand, what follows is the session's own to track.
        let mut session = slot.lock().await?;
        guard.slot = None;
        if session.depth() < level {
            return Ok(()); // the work ended the block's transaction itself
        }
        if ok {
            session.release_savepoint(level).await
        } else {
            session.rollback_savepoint(level).await
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
