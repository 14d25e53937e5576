//! Blocking scopes: the same session per bind for all code a scope runs on its thread, committed
//! or rolled back by the scope's outcome (the twin of the task-local [`crate::scope()`]).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;

use super::BlockingSession;
use super::runtime::refuse_in_async;
use crate::backend::Backend;
use crate::{BindKey, BindManager, Error, Result};

thread_local! {
    /// The scopes open on this thread, innermost last.
    static SCOPES: RefCell<Vec<Rc<ThreadScope>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `work` in a new blocking scope on `manager`'s binds: every call to [`current_session`]
/// on this thread during `work` gets the scope's session of that bind, created on first use.
/// `Ok` commits every session the work used, in the order of their first use; `Err`, or a panic,
/// rolls them all back (and the panic goes on).
///
/// ```
/// use dbscope::blocking;
/// use sqlx::Sqlite;
///
/// # fn main() -> Result<(), dbscope::Error> {
/// # let manager = dbscope::BindManager::new(dbscope::BindConfig::new("sqlite::memory:"))?;
/// fn add_note(body: &str) -> Result<(), dbscope::Error> {
///     let mut session = blocking::current_session::<Sqlite>("default")?;
///     session.execute(sqlx::query("INSERT INTO notes (body) VALUES (?)").bind(body))?;
///     Ok(())
/// }
///
/// blocking::scope(&manager, || {
///     let mut session = blocking::current_session::<Sqlite>("default")?;
///     session.execute(sqlx::query("CREATE TABLE notes (body TEXT)"))?;
///     drop(session); // let other code of the scope have it
///     add_note("one")?; // same session, same transaction
///     add_note("two")
/// })?; // committed here
/// # Ok(()) }
/// ```
///
/// A scope inside a scope is a new, separate scope with sessions of its own. Threads started by
/// the work inherit no scope.
///
/// # Errors
///
/// The work's own error (its sessions rolled back); or, when the work succeeded, the commit's:
/// [`ErrorKind::PartialCommit`](crate::ErrorKind::PartialCommit) when some binds committed before one failed, else that bind's
/// commit error ([`ErrorKind::Query`](crate::ErrorKind::Query), [`ErrorKind::TransactionAborted`](crate::ErrorKind::TransactionAborted), [`ErrorKind::Poisoned`](crate::ErrorKind::Poisoned), or
/// [`ErrorKind::SessionBusy`](crate::ErrorKind::SessionBusy) for a session whose guard the work returned instead of dropping);
/// [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code, the work not run.
pub fn scope<T, E>(manager: &BindManager, work: impl FnOnce() -> Result<T, E>) -> Result<T, E>
where
    E: From<Error>,
{
    refuse_in_async(None)?;
    let open = Open::push(manager);
    let result = work();
    match open.finish(result.is_ok()) {
        Ok(()) => result,
        Err(e) => Err(result.err().unwrap_or_else(|| e.into())),
    }
}

/// The current blocking scope's session on bind `name`: the same session to all code the scope
/// runs on this thread, created on first use, connected on its first statement.
///
/// # Errors
///
/// [`ErrorKind::NoBlockingScope`](crate::ErrorKind::NoBlockingScope) outside any blocking scope on this thread (its predicate is
/// [`Error::is_no_scope`]); [`ErrorKind::SessionBusy`](crate::ErrorKind::SessionBusy) while another guard of the same session is
/// alive (on one thread, waiting for it would wait forever: pass the guard down instead);
/// those of [`BindManager::blocking_bind`].
pub fn current_session<DB: Backend>(name: &str) -> Result<BlockingScopedSession<DB>> {
    let scope = SCOPES
        .with_borrow(|scopes| scopes.last().cloned())
        .ok_or_else(|| Error::no_blocking_scope(Some(name)))?;
    scope.session(name)
}

/// As [`current_session`], for the bind a [`BindKey`] names.
///
/// # Errors
///
/// As [`current_session`].
pub fn current_session_for<K: BindKey>() -> Result<BlockingScopedSession<K::Database>> {
    current_session(K::NAME)
}

/// A blocking scope's session of one bind, lent to the code holding this guard; from
/// [`current_session`].
///
/// Derefs to [`BlockingSession`]. The scope, not the guard, ends the session: dropping the guard
/// gives the session back to the scope, transaction and all. Commit or roll back early through
/// the guard if you need to; the next statement begins a new transaction.
///
/// Tied to its thread (not `Send`), as the scope is.
pub struct BlockingScopedSession<DB: Backend> {
    session: Option<BlockingSession<DB>>,
    slot: Rc<Slot<DB>>,
}

impl<DB: Backend> Deref for BlockingScopedSession<DB> {
    type Target = BlockingSession<DB>;

    fn deref(&self) -> &BlockingSession<DB> {
        self.session.as_ref().expect("a lent session is present")
    }
}

impl<DB: Backend> DerefMut for BlockingScopedSession<DB> {
    fn deref_mut(&mut self) -> &mut BlockingSession<DB> {
        self.session.as_mut().expect("a lent session is present")
    }
}

impl<DB: Backend> Drop for BlockingScopedSession<DB> {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if self.slot.ended.get() {
            drop(session); // the scope is over: this rolls back
        } else {
            *self.slot.session.borrow_mut() = Some(session);
        }
    }
}

impl<DB: Backend> fmt::Debug for BlockingScopedSession<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BlockingScopedSession")
            .field(&**self)
            .finish()
    }
}

/// A scope open on this thread: its manager, and its sessions in the order of first use (the
/// order they commit in).
struct ThreadScope {
    manager: BindManager,
    slots: RefCell<Vec<Rc<dyn ErasedSlot>>>,
}

impl ThreadScope {
    fn session<DB: Backend>(&self, name: &str) -> Result<BlockingScopedSession<DB>> {
        let slot = self.slot::<DB>(name)?;
        let Some(session) = slot.session.borrow_mut().take() else {
            return Err(Error::session_busy(name));
        };
        Ok(BlockingScopedSession {
            session: Some(session),
            slot,
        })
    }

    fn slot<DB: Backend>(&self, name: &str) -> Result<Rc<Slot<DB>>> {
        let existing = self
            .slots
            .borrow()
            .iter()
            .find(|slot| slot.name() == name)
            .cloned();
        if let Some(slot) = existing {
            // Asked for as another type: the manager names the mismatch.
            return slot.into_any().downcast::<Slot<DB>>().map_err(|_| {
                match self.manager.bind::<DB>(name) {
                    Err(e) => e,
                    Ok(_) => unreachable!("a slot has its bind's type"),
                }
            });
        }
        let slot = Rc::new(Slot {
            name: name.to_owned(),
            session: RefCell::new(Some(self.manager.blocking_session::<DB>(name)?)),
            ended: Cell::new(false),
        });
        self.slots.borrow_mut().push(slot.clone());
        Ok(slot)
    }

    /// Ends every session: commits them in order, or rolls them all back.
    fn end(&self, commit: bool) -> Result<()> {
        let slots = std::mem::take(&mut *self.slots.borrow_mut());
        if commit {
            return commit_in_order(slots);
        }
        for slot in slots {
            let _ = slot.end(false);
        }
        Ok(())
    }
}

/// Commits each session in turn; after a failure, rolls back the rest and reports which binds
/// committed (as the async scope does).
fn commit_in_order(slots: Vec<Rc<dyn ErasedSlot>>) -> Result<()> {
    let mut committed = Vec::new();
    let mut slots = slots.into_iter();
    while let Some(slot) = slots.next() {
        let Err(source) = slot.end(true) else {
            committed.push(slot.name().to_owned());
            continue;
        };
        let rolled_back = slots
            .as_slice()
            .iter()
            .map(|s| s.name().to_owned())
            .collect();
        for rest in slots {
            let _ = rest.end(false);
        }
        return Err(Error::commit_failed(
            committed,
            slot.name(),
            rolled_back,
            source,
        ));
    }
    Ok(())
}

/// One bind's session in a scope; `None` while lent to a guard.
struct Slot<DB: Backend> {
    name: String,
    session: RefCell<Option<BlockingSession<DB>>>,
    /// The scope has ended: a guard still out drops its session instead of giving it back.
    ended: Cell<bool>,
}

trait ErasedSlot {
    fn name(&self) -> &str;
    fn into_any(self: Rc<Self>) -> Rc<dyn Any>;
    /// Commits (or not), then closes the session; a commit failure is the error.
    fn end(&self, commit: bool) -> Result<()>;
}

impl<DB: Backend> ErasedSlot for Slot<DB> {
    fn name(&self) -> &str {
        &self.name
    }

    fn into_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }

    fn end(&self, commit: bool) -> Result<()> {
        self.ended.set(true);
        let Some(mut session) = self.session.borrow_mut().take() else {
            // Lent to a guard that outlived the work: it rolls back when the guard drops.
            if commit {
                return Err(Error::session_busy(&self.name));
            }
            return Ok(());
        };
        let outcome = if commit { session.commit() } else { Ok(()) };
        if let Err(e) = session.close() {
            tracing::warn!(bind = %self.name, error = %e, "closing a blocking scope's session failed; its connection was discarded");
        }
        outcome
    }
}

/// A scope pushed on this thread's stack; popped when finished, or on unwind, rolling back.
struct Open {
    scope: Rc<ThreadScope>,
    finished: bool,
}

impl Open {
    fn push(manager: &BindManager) -> Self {
        let scope = Rc::new(ThreadScope {
            manager: manager.clone(),
            slots: RefCell::default(),
        });
        SCOPES.with_borrow_mut(|scopes| scopes.push(scope.clone()));
        Self {
            scope,
            finished: false,
        }
    }

    fn finish(mut self, commit: bool) -> Result<()> {
        self.finished = true;
        self.pop();
        self.scope.end(commit)
    }

    fn pop(&self) {
        let _ = SCOPES.try_with(|scopes| {
            let mut scopes = scopes.borrow_mut();
            if let Some(at) = scopes.iter().rposition(|s| Rc::ptr_eq(s, &self.scope)) {
                scopes.remove(at);
            }
        });
    }
}

impl Drop for Open {
    /// The work panicked: roll back, then let the panic go on.
    fn drop(&mut self) {
        if !self.finished {
            self.pop();
            let _ = self.scope.end(false);
        }
    }
}
