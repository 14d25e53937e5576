//! One bind's session inside a scope, the cheap handles code of the scope reaches it through,
//! and the leases that take it for a while.

use std::any::Any;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use sqlx::{Either, Execute, Executor, SqlStr};
use tokio::sync::OwnedMutexGuard;

use super::Written;
use crate::backend::Backend;
use crate::{Error, Result, Session};

/// A bind's session in a scope. The async mutex serializes the operations of the scope's code
/// on it (each statement, each fetch stream for its life, each lease); `None` once the scope
/// has ended.
pub(crate) struct Slot<DB: Backend> {
    name: Arc<str>,
    /// The longest any wait for the session lasts: the bind's `acquire_timeout`.
    patience: Duration,
    session: Arc<tokio::sync::Mutex<Option<Session<DB>>>>,
    /// The level of an atomic block dropped while the session was taken (0: none; levels start
    /// at 1): rolled back to by whoever takes the session next.
    dropped_level: AtomicU32,
    /// A read session's slot (a scope has at most one of each per bind).
    read: bool,
    /// When code of the scope first took the session (to run a statement on it, or a lease), on
    /// [`USES`]' count; 0 while it never has. Sticky-after-write asks whether it has; the scope
    /// commits its sessions in this order.
    first_use: AtomicU64,
    /// The scope has ended (or its owner gave it up): no more leases, whatever the session's
    /// fate.
    ended: AtomicBool,
    /// Where its commit's read token goes, on a bind with replicas.
    written: Option<Written>,
    /// A read slot's sibling: the scope's own session of the bind, once the scope has one. As
    /// soon as code has used it, the read slot lends it instead of its own (sticky after
    /// write), handles taken before the write included.
    writer: OnceLock<Arc<Slot<DB>>>,
    /// A write slot's sibling, the read slot of its bind, if the scope has one: given up when
    /// this slot is first used, since it is never lent again.
    reader: OnceLock<Weak<Slot<DB>>>,
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
    /// [`end`](ErasedSlot::end) without awaiting, when that needs no round trip (no
    /// transaction open, the session free); `None` otherwise.
    fn end_now(&self, commit: bool) -> Option<Ended>;
    /// Rolls the session back without waiting, for a scope whose owner gave it up (its future
    /// dropped, or panicking) before ending it: at once if the session is free, else when the
    /// code that holds it lets go. No lease is lent from then on.
    fn abandon(self: Arc<Self>);
    fn is_read(&self) -> bool;
    fn used(&self) -> bool;
    /// Where the session's first use falls among all first uses (0: never used).
    fn first_use(&self) -> u64;
}

/// Counts first uses of scopes' sessions, process-wide: only the order matters, and a counter
/// shared by every scope costs a slot nothing to carry. Starts at 1: 0 is "never used".
static USES: AtomicU64 = AtomicU64::new(1);

/// Puts `slots` in the order of their sessions' first use, those never used last (they commit
/// nothing, and keep the order they were made in).
pub(crate) fn by_first_use(slots: &mut [Arc<dyn ErasedSlot>]) {
    slots.sort_by_key(|slot| match slot.first_use() {
        0 => u64::MAX,
        first => first,
    });
}

impl dyn ErasedSlot {
    /// Ends the slot: at once when no round trip is needed, else through the boxed future.
    pub(crate) async fn finish(self: Arc<Self>, commit: bool) -> Ended {
        match self.end_now(commit) {
            Some(ended) => ended,
            None => self.end(commit).await,
        }
    }
}

impl<DB: Backend> Slot<DB> {
    pub(crate) fn new(name: Arc<str>, session: Session<DB>, written: Option<Written>) -> Self {
        Self {
            name,
            patience: session.bind().acquire_timeout(),
            read: session.is_read(),
            session: Arc::new(tokio::sync::Mutex::new(Some(session))),
            dropped_level: AtomicU32::new(0),
            first_use: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            written,
            writer: OnceLock::new(),
            reader: OnceLock::new(),
        }
    }

    /// Links `reader`, a read slot, to `writer`, the scope's own session of the same bind:
    /// once code has used `writer`, `reader` lends it instead of its own session (sticky after
    /// write), and gives its own up.
    pub(crate) fn link(reader: &Arc<Self>, writer: &Arc<Self>) {
        debug_assert!(
            reader.read && !writer.read,
            "a read slot sticks to a write slot"
        );
        let _ = reader.writer.set(writer.clone());
        let _ = writer.reader.set(Arc::downgrade(reader));
    }

    /// The slot whose session a lease takes: this one, or for a read slot, the scope's own
    /// session of the bind once code has used it (see [`link`](Slot::link)).
    fn lender(&self) -> &Self {
        match self.writer.get() {
            Some(writer) if writer.used() => writer,
            _ => self,
        }
    }

    /// Takes the session for as long as the lease lives, waiting at most the bind's
    /// `acquire_timeout` for code that has it.
    pub(crate) async fn lock(&self) -> Result<SessionLease<DB>> {
        let mut slot = self.lender();
        loop {
            let guard = match slot.session.clone().try_lock_owned() {
                Ok(guard) => guard,
                Err(_) => tokio::time::timeout(slot.patience, slot.session.clone().lock_owned())
                    .await
                    .map_err(|_| Error::session_locked(&slot.name, slot.patience))?,
            };
            match self.moved_on(slot, &guard) {
                Some(writer) => slot = writer,
                None => return slot.lend(guard),
            }
        }
    }

    /// Takes the session if no other code of the scope has it.
    pub(crate) fn try_lock(&self) -> Result<SessionLease<DB>> {
        let mut slot = self.lender();
        loop {
            let Ok(guard) = slot.session.clone().try_lock_owned() else {
                return Err(Error::session_busy(&slot.name));
            };
            match self.moved_on(slot, &guard) {
                Some(writer) => slot = writer,
                None => return slot.lend(guard),
            }
        }
    }

    /// The write slot to take instead, when `slot` is this read slot and its session was given
    /// up for the write slot's between the choice and the lock (see
    /// [`retire_reader`](Slot::retire_reader)); at most once, the write slot lending its own.
    fn moved_on(&self, slot: &Self, guard: &Option<Session<DB>>) -> Option<&Self> {
        if guard.is_some() || !std::ptr::eq(slot, self) {
            return None;
        }
        Some(self.lender()).filter(|lender| !std::ptr::eq(*lender, self))
    }

    fn lend(&self, mut guard: OwnedMutexGuard<Option<Session<DB>>>) -> Result<SessionLease<DB>> {
        if self.ended.load(Ordering::Acquire) {
            return Err(Error::scope_ended(&self.name));
        }
        let Some(session) = guard.as_mut() else {
            return Err(Error::scope_ended(&self.name));
        };
        if let Some(level) = self.take_dropped_level() {
            session.savepoint_dropped(level);
        }
        if self.first_use.load(Ordering::Relaxed) == 0 {
            let now = USES.fetch_add(1, Ordering::Relaxed);
            let _ = self
                .first_use
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            self.retire_reader();
        }
        Ok(SessionLease { guard })
    }

    /// On a write slot's first use: its bind's read slot lends this slot's session from now
    /// on, so its own session goes, with what it holds (a replica's connection, a snapshot,
    /// and on SQLite the read lock that would make this slot's first write wait for it
    /// forever). Rolled back at once, or in the background when a transaction is open. Left to
    /// the scope's end while code still holds it (a fetch stream being read).
    fn retire_reader(&self) {
        let Some(reader) = self.reader.get().and_then(Weak::upgrade) else {
            return;
        };
        if let Ok(mut own) = reader.session.try_lock() {
            drop(own.take());
        }
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
        // The outermost level wins: rolling back to it undoes the inner ones too.
        let _ = self
            .dropped_level
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |dropped| {
                Some(if dropped == 0 {
                    level
                } else {
                    dropped.min(level)
                })
            });
    }

    /// Sends the session's read token, if it committed on a bind with replicas, where the
    /// scope collects them.
    fn keep_read_token(&self, session: &Session<DB>) {
        if let (Some(written), Some(token)) = (&self.written, session.read_token()) {
            lock_written(written).push(token.clone());
        }
    }

    /// Takes the session out once no code holds it, and drops it (rolling back what is open,
    /// its connection back clean): at once when it is free, else in the background, when the
    /// code that holds it lets go. No lease is lent from then on.
    fn give_up(self: Arc<Self>) {
        self.ended.store(true, Ordering::Release);
        if let Ok(mut guard) = self.session.try_lock() {
            drop(guard.take());
            return;
        }
        // Without a runtime, the session goes with the slot's last handle. The task's wait is
        // for one event, the holder's lease dropping (the holder is other code: this task
        // holds nothing), and nobody waits on the task; a lease kept forever keeps its session
        // forever with or without it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                drop(self.session.lock().await.take());
            });
        }
    }

    fn take_dropped_level(&self) -> Option<u32> {
        match self.dropped_level.swap(0, Ordering::AcqRel) {
            0 => None,
            level => Some(level),
        }
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
            self.ended.store(true, Ordering::Release);
            let free = self.session.try_lock().ok();
            let guard = match free {
                Some(guard) => Ok(guard),
                None => tokio::time::timeout(self.patience, self.session.lock()).await,
            };
            let Ok(mut guard) = guard else {
                // Rolled back when the code that holds it lets go; it gets no lease again.
                Arc::clone(&self).give_up();
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
            self.keep_read_token(&session);
            close_quietly(session).await;
            ended(commit)
        })
    }

    fn is_read(&self) -> bool {
        self.read
    }

    fn used(&self) -> bool {
        self.first_use() != 0
    }

    fn first_use(&self) -> u64 {
        self.first_use.load(Ordering::Relaxed)
    }

    fn abandon(self: Arc<Self>) {
        self.give_up();
    }

    fn end_now(&self, commit: bool) -> Option<Ended> {
        let mut guard = self.session.try_lock().ok()?;
        if self.dropped_level.load(Ordering::Acquire) != 0 {
            return None;
        }
        match guard.as_ref() {
            None => Some(Ended::RolledBack),
            Some(session) if session.ends_without_round_trip() => {
                // An early commit's read token counts as the scope's last one would.
                self.keep_read_token(session);
                self.ended.store(true, Ordering::Release);
                drop(guard.take()); // gives its connection back clean
                Some(ended(commit))
            }
            Some(_) => None,
        }
    }
}

fn lock_written(written: &Written) -> std::sync::MutexGuard<'_, Vec<crate::ReadToken>> {
    written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a slot reports when it ended as asked.
fn ended(commit: bool) -> Ended {
    if commit {
        Ended::Committed
    } else {
        Ended::RolledBack
    }
}

/// Closes a session whose outcome is settled; a failure here costs a connection, not data.
async fn close_quietly<DB: Backend>(session: Session<DB>) {
    let bind = session.bind().clone();
    if let Err(e) = session.close().await {
        tracing::warn!(bind = %bind.name(), error = %e, "closing a scope's session failed; its connection was recovered or discarded");
    }
}

/// A handle to the scope's session of one bind: what [`current_session`](crate::current_session)
/// returns, to any number of callers at once.
///
/// Cheap (`Clone` is an `Arc` clone), and never holds the session between operations: each
/// statement run on `&mut handle` (and each fetch stream, for as long as it is read), each
/// [`commit`](ScopedSession::commit) or [`rollback`](ScopedSession::rollback) takes the session
/// for that operation only. So statements of one scope never interleave on the wire, and nested
/// code (a handler, the service it calls, the repository that calls) asking for the same bind
/// gets the same session without waiting for itself, in `join!` children too.
///
/// ```
/// use sqlx::Sqlite;
///
/// async fn insert(body: &str) -> Result<(), dbscope::Error> {
///     let mut db = dbscope::current_session::<Sqlite>("default").await?; // the same session
///     sqlx::query("INSERT INTO notes (body) VALUES (?)").bind(body).execute(&mut db).await?;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dbscope::Error> {
/// # let manager = dbscope::BindManager::new(dbscope::BindConfig::new("sqlite::memory:"))?;
/// dbscope::scope(&manager, async {
///     let mut db = dbscope::current_session::<Sqlite>("default").await?;
///     sqlx::query("CREATE TABLE notes (body TEXT)").execute(&mut db).await?;
///     insert("one").await?; // nested code, while `db` is alive: no wait
///     tokio::try_join!(insert("two"), insert("three"))?; // siblings take turns
///     let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes").fetch_one(&mut db).await?;
///     assert_eq!(n, 3);
///     Ok::<_, dbscope::Error>(())
/// })
/// .await?; // one transaction, committed here
/// # Ok(()) }
/// ```
///
/// Work that must not let other code's statements in between (a read then a write that depends
/// on it, the raw connection for `COPY`, a savepoint) takes a [lease](ScopedSession::lock).
/// Every wait for the session is bounded by the bind's `acquire_timeout`: code that needs the
/// session while a lease (or a fetch stream) higher up in its own path holds it fails with
/// [`ErrorKind::SessionLocked`](crate::ErrorKind::SessionLocked) instead of hanging.
///
/// The scope, not the handle, ends the session: commit or roll back early through the handle
/// if you need to; the next statement begins a new transaction. A handle used after its scope
/// ended fails with [`ErrorKind::ScopeEnded`](crate::ErrorKind::ScopeEnded).
pub struct ScopedSession<DB: Backend> {
    slot: Arc<Slot<DB>>,
}

impl<DB: Backend> ScopedSession<DB> {
    pub(crate) fn new(slot: Arc<Slot<DB>>) -> Self {
        Self { slot }
    }

    /// The bind's name.
    pub fn bind_name(&self) -> &str {
        &self.slot.name
    }

    /// Takes the session for as long as the returned lease lives: other code of the scope
    /// asking for it waits meanwhile (at most `acquire_timeout`). The lease derefs to
    /// [`Session`] (savepoints, the raw connection, options), and sqlx queries run on
    /// `&mut lease`. Keep it for one unit of work, and drop it before calling code that uses the
    /// same bind.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::SessionLocked`](crate::ErrorKind::SessionLocked) when other code kept the
    /// session past `acquire_timeout` (a lease higher up in this code path, a fetch stream
    /// still being read); [`ErrorKind::ScopeEnded`](crate::ErrorKind::ScopeEnded).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: cancelled while waiting, nothing is taken.
    pub async fn lock(&self) -> Result<SessionLease<DB>> {
        self.slot.lock().await
    }

    /// As [`lock`](ScopedSession::lock), but refuses with
    /// [`ErrorKind::SessionBusy`](crate::ErrorKind::SessionBusy) instead of waiting when other
    /// code has the session.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::SessionBusy`](crate::ErrorKind::SessionBusy),
    /// [`ErrorKind::ScopeEnded`](crate::ErrorKind::ScopeEnded).
    pub fn try_lock(&self) -> Result<SessionLease<DB>> {
        self.slot.try_lock()
    }

    /// Commits the session's open transaction now: [`Session::commit`] under a lease for the
    /// commit's length.
    ///
    /// # Errors
    ///
    /// As [`lock`](ScopedSession::lock) and [`Session::commit`].
    ///
    /// # Cancel safety
    ///
    /// As [`Session::commit`]: cancelled during COMMIT, the session is poisoned.
    pub async fn commit(&self) -> Result<()> {
        self.lock().await?.commit().await
    }

    /// Rolls back the session's open transaction now: [`Session::rollback`] under a lease.
    ///
    /// # Errors
    ///
    /// As [`lock`](ScopedSession::lock) and [`Session::rollback`].
    ///
    /// # Cancel safety
    ///
    /// As [`Session::rollback`].
    pub async fn rollback(&self) -> Result<()> {
        self.lock().await?.rollback().await
    }

    /// Ends the session's work and gives its connection back; the next statement checks out a
    /// fresh one: [`Session::disconnect`] under a lease.
    ///
    /// # Errors
    ///
    /// As [`lock`](ScopedSession::lock) and [`Session::disconnect`].
    ///
    /// # Cancel safety
    ///
    /// As [`Session::disconnect`].
    pub async fn disconnect(&self) -> Result<()> {
        self.lock().await?.disconnect().await
    }

    /// Whether a transaction is open on the session, waiting at most `acquire_timeout` for
    /// code that has it.
    ///
    /// # Errors
    ///
    /// As [`lock`](ScopedSession::lock).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn in_transaction(&self) -> Result<bool> {
        Ok(self.lock().await?.in_transaction())
    }
}

impl<DB: Backend> Clone for ScopedSession<DB> {
    fn clone(&self) -> Self {
        Self {
            slot: self.slot.clone(),
        }
    }
}

impl<DB: Backend> fmt::Debug for ScopedSession<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedSession")
            .field("bind", &self.slot.name)
            .finish_non_exhaustive()
    }
}

/// Each operation takes the session for itself: a statement until its result is in, a fetch
/// stream until it ends or is dropped. `execute` and `fetch_all` are the session's own, so
/// cancelled part-way they count as cancelled, as on a [`Session`].
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
        let slot = &*self.slot;
        Box::pin(async_stream::stream! {
            match slot.lock().await {
                Ok(mut lease) => {
                    let mut rows = (&mut *lease).fetch_many(query);
                    while let Some(item) = rows.next().await {
                        yield item;
                    }
                }
                Err(e) => yield Err(e.into_sqlx()),
            }
        })
    }

    fn execute<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<DB::QueryResult>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        let slot = &*self.slot;
        Box::pin(async move {
            let mut lease = slot.lock().await.map_err(Error::into_sqlx)?;
            lease.run_execute(query).await
        })
    }

    fn fetch_all<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Vec<DB::Row>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        let slot = &*self.slot;
        Box::pin(async move {
            let mut lease = slot.lock().await.map_err(Error::into_sqlx)?;
            lease.run_fetch_all(query).await
        })
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Option<DB::Row>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        let slot = &*self.slot;
        Box::pin(async move {
            let mut lease = slot.lock().await.map_err(Error::into_sqlx)?;
            lease.run_fetch_optional(query).await
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<DB::Statement>>
    where
        'c: 'e,
    {
        let slot = &*self.slot;
        Box::pin(async move {
            let mut lease = slot.lock().await.map_err(Error::into_sqlx)?;
            (&mut *lease).prepare_with(sql, parameters).await
        })
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, sqlx::Result<sqlx::Describe<DB>>>
    where
        'c: 'e,
    {
        let slot = &*self.slot;
        Box::pin(async move {
            let mut lease = slot.lock().await.map_err(Error::into_sqlx)?;
            (&mut *lease).describe(sql).await
        })
    }
}

/// The scope's session of one bind, taken by the code holding this lease, from
/// [`ScopedSession::lock`].
///
/// Derefs to [`Session`], and sqlx queries run on `&mut lease`. Other code of the scope waits
/// for the session until the lease drops (at most the bind's `acquire_timeout`, then it fails
/// with [`ErrorKind::SessionLocked`](crate::ErrorKind::SessionLocked)): hold a lease for a unit
/// of work that must not let other statements in, not for the whole request, and drop it
/// before calling code that uses the same bind. A lease still held when the scope ends makes
/// the scope wait up to `acquire_timeout`, then fail with
/// [`ErrorKind::SessionHeld`](crate::ErrorKind::SessionHeld), committing nothing of that bind.
pub struct SessionLease<DB: Backend> {
    guard: OwnedMutexGuard<Option<Session<DB>>>,
}

impl<DB: Backend> Deref for SessionLease<DB> {
    type Target = Session<DB>;

    fn deref(&self) -> &Session<DB> {
        self.guard.as_ref().expect("a leased session is present")
    }
}

impl<DB: Backend> DerefMut for SessionLease<DB> {
    fn deref_mut(&mut self) -> &mut Session<DB> {
        self.guard.as_mut().expect("a leased session is present")
    }
}

impl<DB: Backend> fmt::Debug for SessionLease<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SessionLease").field(&**self).finish()
    }
}

impl<'c, DB: Backend> Executor<'c> for &'c mut SessionLease<DB> {
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

    fn execute<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<DB::QueryResult>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        (&mut **self).execute(query)
    }

    fn fetch_all<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Vec<DB::Row>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        (&mut **self).fetch_all(query)
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
