//! One bind's session inside a scope, and the guard that lends it to code of the scope.

use std::any::Any;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use sqlx::{Either, Execute, Executor, SqlStr};
use tokio::sync::OwnedMutexGuard;

use crate::backend::Backend;
use crate::{Error, Result, Session};

/// A bind's session in a scope. The async mutex serializes the code of the scope that uses it
/// (children of a `join!` take turns); `None` once the scope has ended.
pub(crate) struct Slot<DB: Backend> {
    name: Arc<str>,
    /// How long the scope's end waits for code still holding the session: the bind's
    /// `acquire_timeout`.
    patience: Duration,
    session: Arc<tokio::sync::Mutex<Option<Session<DB>>>>,
    /// The level of an atomic block dropped while the session was lent out: rolled back to by
    /// whoever takes the session next.
    dropped_level: Mutex<Option<u32>>,
}

/// How a slot ended with its scope.
pub(crate) enum Ended {
    /// Committed (or had nothing to commit).
    Committed,
    /// Rolled back (or had nothing to roll back).
    RolledBack,
    /// The commit failed; the transaction is rolled back.
    CommitFailed(Error),
    /// Code still held the session when the scope ended; it rolls back when that code lets go.
    StillHeld(Error),
}

/// What the scope keeps of a slot, whatever its database type.
pub(crate) trait ErasedSlot: Send + Sync {
    fn name(&self) -> &str;
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    /// Takes the session out, commits or rolls it back, and gives its connection back.
    fn end(self: Arc<Self>, commit: bool) -> BoxFuture<'static, Ended>;
}

impl<DB: Backend> Slot<DB> {
    pub(crate) fn new(name: Arc<str>, session: Session<DB>) -> Self {
        Self {
            name,
            patience: session.bind().acquire_timeout(),
            session: Arc::new(tokio::sync::Mutex::new(Some(session))),
            dropped_level: Mutex::new(None),
        }
    }

    /// Waits for the session (other code of the scope may hold it) and lends it.
    pub(crate) async fn lock(&self) -> Result<ScopedSession<DB>> {
        let guard = self.session.clone().lock_owned().await;
        self.lend(guard)
    }

    /// Lends the session if no other code of the scope holds it.
    pub(crate) fn try_lock(&self) -> Result<ScopedSession<DB>> {
        match self.session.clone().try_lock_owned() {
            Ok(guard) => self.lend(guard),
            Err(_) => Err(Error::session_busy(&self.name)),
        }
    }

    fn lend(&self, mut guard: OwnedMutexGuard<Option<Session<DB>>>) -> Result<ScopedSession<DB>> {
        let Some(session) = guard.as_mut() else {
            return Err(Error::scope_ended(&self.name));
        };
        if let Some(level) = self.take_dropped_level() {
            session.savepoint_dropped(level);
        }
        Ok(ScopedSession { guard })
    }

    /// Records that the transaction or savepoint at `level` must roll back: at once when the
    /// session is free, else by whoever takes it next. Never waits (it runs in `Drop`).
    pub(crate) fn roll_back_to(&self, level: u32) {
        if let Ok(mut guard) = self.session.try_lock()
            && let Some(session) = guard.as_mut()
        {
            session.savepoint_dropped(level);
            return;
        }
        let mut dropped = self
            .dropped_level
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *dropped = Some(dropped.map_or(level, |d| d.min(level)));
    }

    fn take_dropped_level(&self) -> Option<u32> {
        self.dropped_level
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl<DB: Backend> ErasedSlot for Slot<DB> {
    fn name(&self) -> &str {
        &self.name
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn end(self: Arc<Self>, commit: bool) -> BoxFuture<'static, Ended> {
        Box::pin(async move {
            let free = self.session.try_lock().ok();
            let guard = match free {
                Some(guard) => Ok(guard),
                None => tokio::time::timeout(self.patience, self.session.lock()).await,
            };
            let Ok(mut guard) = guard else {
                return Ended::StillHeld(Error::session_held(&self.name, self.patience));
            };
            let Some(mut session) = guard.take() else {
                return Ended::RolledBack;
            };
            if let Some(level) = self.take_dropped_level() {
                session.savepoint_dropped(level);
            }
            if commit && let Err(e) = session.commit().await {
                close_quietly(session).await;
                return Ended::CommitFailed(e);
            }
            close_quietly(session).await;
            if commit {
                Ended::Committed
            } else {
                Ended::RolledBack
            }
        })
    }
}

/// Closes a session whose outcome is settled; a failure here costs a connection, not data.
async fn close_quietly<DB: Backend>(session: Session<DB>) {
    let bind = session.bind().clone();
    if let Err(e) = session.close().await {
        tracing::warn!(bind = %bind.name(), error = %e, "closing a scope's session failed; its connection was discarded");
    }
}

/// The scope's session of one bind, lent to the code holding this guard.
///
/// Derefs to [`Session`], and sqlx queries run on `&mut guard` directly. Other code of the
/// scope asking for the same bind waits until this guard drops, so statements of one scope
/// never interleave on the wire: hold the guard for a unit of work, not for the whole request.
///
/// Asking for the same bind again while holding its guard, in the same code path, waits
/// forever: pass the guard (or `&mut Session`) down instead, or drop it first.
/// [`try_current_session`](crate::try_current_session) refuses instead of waiting.
///
/// Drop the guard before the scope's work returns: a guard still held when the scope ends (or
/// an attached task still using the session) makes the scope wait up to the bind's
/// `acquire_timeout`, then fail with [`ErrorKind::SessionHeld`](crate::ErrorKind::SessionHeld), committing nothing of that bind.
///
/// The scope, not the guard, ends the session: commit or roll back early through the guard
/// if you need to ([`Session::commit`], [`Session::rollback`],
/// [`Session::disconnect`]); the next statement begins a new transaction.
pub struct ScopedSession<DB: Backend> {
    guard: OwnedMutexGuard<Option<Session<DB>>>,
}

impl<DB: Backend> Deref for ScopedSession<DB> {
    type Target = Session<DB>;

    fn deref(&self) -> &Session<DB> {
        self.guard.as_ref().expect("a lent session is present")
    }
}

impl<DB: Backend> DerefMut for ScopedSession<DB> {
    fn deref_mut(&mut self) -> &mut Session<DB> {
        self.guard.as_mut().expect("a lent session is present")
    }
}

impl<DB: Backend> fmt::Debug for ScopedSession<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ScopedSession").field(&**self).finish()
    }
}

impl<'c, DB: Backend> Executor<'c> for &'c mut ScopedSession<DB> {
    type Database = DB;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, sqlx::Result<Either<DB::QueryResult, DB::Row>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        (&mut **self).fetch_many(query)
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Option<DB::Row>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        (&mut **self).fetch_optional(query)
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<DB::Statement>>
    where
        'c: 'e,
    {
        (&mut **self).prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, sqlx::Result<sqlx::Describe<DB>>>
    where
        'c: 'e,
    {
        (&mut **self).describe(sql)
    }
}
