//! Blocking scopes: the async [`Scope`](crate::Scope) itself, on the binds' blocking faces, kept
//! on a thread-local stack instead of a task-local. Hooks, declared binds, transaction modes,
//! atomic blocks, the commit order and its partial-commit report, and handles that never wait
//! for themselves are therefore the async scope's own.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use sqlx::{Execute, Executor};

use super::Fetch;
use super::registry::BlockingFaces;
use super::runtime::{Driver, refuse_in_async};
use crate::backend::Backend;
use crate::bind::OpenBind;
use crate::scope::SessionSource;
use crate::{
    Atomic, BindKey, BindManager, Error, IfOpen, Result, Scope, ScopeBuilder, ScopedSession,
    Session,
};

thread_local! {
    /// The scopes open on this thread, innermost last, each with the runtime that drives it.
    static SCOPES: RefCell<Vec<(Scope, Arc<Driver>)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `work` in a new blocking scope on `manager`'s binds: every call to [`current_session`]
/// on this thread during `work` gets a handle to the scope's session of that bind, created on
/// first use. `Ok` commits every session the work used, in the order of their first use; `Err`,
/// or a panic, rolls them all back (and the panic goes on). Short for
/// `manager.scope().run_blocking(work)`.
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
///     add_note("one")?; // same session, same transaction, while `session` is alive
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
/// As [`ScopeBuilder::run_blocking`].
pub fn scope<T, E>(manager: &BindManager, work: impl FnOnce() -> Result<T, E>) -> Result<T, E>
where
    E: From<Error>,
{
    manager.scope().run_blocking(work)
}

impl ScopeBuilder {
    /// Runs blocking `work` in a new scope as this builder describes it (declared binds, mode,
    /// hooks), on the binds' blocking faces: the twin of [`run`](ScopeBuilder::run) for code
    /// without an async runtime. See [`scope`](crate::blocking::scope()).
    ///
    /// Hooks are the async scope's: they run on the blocking faces' runtime, and a
    /// before-commit hook may use the scope's sessions through the async
    /// [`current_session`](crate::current_session).
    ///
    /// # Errors
    ///
    /// The work's own error (its sessions rolled back); or, when the work succeeded, the
    /// commit's: [`ErrorKind::CommitVetoed`](crate::ErrorKind::CommitVetoed),
    /// [`ErrorKind::PartialCommit`](crate::ErrorKind::PartialCommit) when some binds committed
    /// before one failed, else that bind's commit error; those of
    /// [`validate`](ScopeBuilder::validate);
    /// [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code, the
    /// work not run.
    pub fn run_blocking<T, E>(self, work: impl FnOnce() -> Result<T, E>) -> Result<T, E>
    where
        E: From<Error>,
    {
        refuse_in_async(None)?;
        let faces = self.manager().blocking_faces();
        let driver = faces.driver()?;
        let scope = self.with_source(Arc::new(Faces(faces))).start()?;
        let pushed = Pushed::push(scope, driver);
        let result = work();
        match pushed.finish(result.is_ok()) {
            Ok(()) => result,
            Err(e) => Err(result.err().unwrap_or_else(|| e.into())),
        }
    }
}

/// A scope's sessions from the binds' blocking faces.
struct Faces(Arc<BlockingFaces>);

impl fmt::Debug for Faces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlockingFaces")
    }
}

impl SessionSource for Faces {
    fn open(&self, manager: &BindManager, name: &str) -> Result<OpenBind> {
        Ok(self.0.open(name, manager.entry(name)?)?.into_open())
    }
}

/// A scope pushed on this thread's stack; popped when finished, or on unwind, rolling back.
struct Pushed {
    scope: Scope,
    driver: Arc<Driver>,
    /// Its end has begun (hooks, commits).
    finishing: bool,
    /// Its end has returned.
    finished: bool,
}

impl Pushed {
    fn push(scope: Scope, driver: Arc<Driver>) -> Self {
        SCOPES.with_borrow_mut(|scopes| scopes.push((scope.clone(), driver.clone())));
        Self {
            scope,
            driver,
            finishing: false,
            finished: false,
        }
    }

    fn finish(mut self, commit: bool) -> Result<()> {
        self.pop();
        self.finishing = true;
        let outcome = self.driver.run(self.scope.finish(commit));
        self.finished = true;
        outcome
    }

    fn pop(&self) {
        let _ = SCOPES.try_with(|scopes| {
            let mut scopes = scopes.borrow_mut();
            if let Some(at) = scopes.iter().rposition(|(s, _)| s.same_scope(&self.scope)) {
                scopes.remove(at);
            }
        });
    }
}

impl Drop for Pushed {
    /// The work panicked: roll back, then let the panic go on. A panic in the scope's end (a
    /// before-commit hook's, an after-commit hook's) gives the scope up instead, as a dropped
    /// async owner does: no session is lent again, and what did not end rolls back; what
    /// committed stays, and no after-rollback hook runs for it.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.pop();
        if self.finishing {
            let scope = self.scope.clone();
            // Inside the driver's runtime, where the rollbacks it starts run.
            self.driver.run(async move { scope.abandon() });
        } else {
            let _ = self.driver.run(self.scope.finish(false));
        }
    }
}

/// The current blocking scope's session on bind `name`: a handle to the same session for all
/// code the scope runs on this thread, at any depth, created on first use, connected on its
/// first statement.
///
/// # Errors
///
/// [`ErrorKind::NoBlockingScope`](crate::ErrorKind::NoBlockingScope) outside any blocking scope
/// on this thread (its predicate is [`Error::is_no_scope`]); those of
/// [`current_session`](crate::current_session).
pub fn current_session<DB: Backend>(name: &str) -> Result<BlockingScopedSession<DB>> {
    let (scope, driver) = SCOPES
        .with_borrow(|scopes| scopes.last().cloned())
        .ok_or_else(|| Error::no_blocking_scope(Some(name)))?;
    Ok(BlockingScopedSession {
        handle: scope.session(name)?,
        driver,
    })
}

/// As [`current_session`], for the bind a [`BindKey`] names.
///
/// # Errors
///
/// As [`current_session`].
pub fn current_session_for<K: BindKey>() -> Result<BlockingScopedSession<K::Database>> {
    current_session(K::NAME)
}

/// A handle to a blocking scope's session of one bind, from [`current_session`]: the blocking
/// twin of [`ScopedSession`], as cheap and as shareable.
///
/// It holds nothing between calls: each call takes the session for itself only, so nested
/// code asking for the same bind gets the same session without waiting. Work that must not
/// let other code's statements in between runs in [`run`](BlockingScopedSession::run), which
/// takes the session for the closure's length; the closure is async, and blocking calls in it
/// are refused ([`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync)), so no code
/// on the thread can wait for a session it holds itself. Another thread sharing a clone of the
/// handle waits at most the bind's `acquire_timeout`
/// ([`ErrorKind::SessionLocked`](crate::ErrorKind::SessionLocked)).
///
/// The scope, not the handle, ends the session; commit or roll back early through the handle
/// if you need to.
pub struct BlockingScopedSession<DB: Backend> {
    handle: ScopedSession<DB>,
    driver: Arc<Driver>,
}

impl<DB: Backend> BlockingScopedSession<DB> {
    /// Runs a statement and returns what the database reports; see
    /// [`BlockingSession::execute`](super::BlockingSession::execute).
    ///
    /// # Errors
    ///
    /// As [`BlockingSession::execute`](super::BlockingSession::execute), and
    /// [`ErrorKind::SessionLocked`](crate::ErrorKind::SessionLocked).
    pub fn execute<'q, Q>(&mut self, query: Q) -> Result<DB::QueryResult>
    where
        Q: Execute<'q, DB> + 'q,
    {
        self.with_session(async |session| {
            session.ready().await?;
            Ok(session.execute(query).await?)
        })
    }

    /// Runs a query and returns its first row; see
    /// [`BlockingSession::fetch_one`](super::BlockingSession::fetch_one).
    ///
    /// # Errors
    ///
    /// As [`execute`](BlockingScopedSession::execute), and
    /// [`ErrorKind::Query`](crate::ErrorKind::Query) with `sqlx::Error::RowNotFound` when there
    /// is no row.
    pub fn fetch_one<'q, Q: Fetch<'q, DB>>(&mut self, query: Q) -> Result<Q::Output> {
        match self.fetch_optional(query)? {
            Some(row) => Ok(row),
            None => Err(Error::from(sqlx::Error::RowNotFound).or_bind(self.handle.bind_name())),
        }
    }

    /// Runs a query and returns its first row, if any.
    ///
    /// # Errors
    ///
    /// As [`execute`](BlockingScopedSession::execute).
    pub fn fetch_optional<'q, Q: Fetch<'q, DB>>(&mut self, query: Q) -> Result<Option<Q::Output>> {
        self.with_session(async |session| {
            session.ready().await?;
            Ok(query.fetch_optional(session).await?)
        })
    }

    /// Runs a query and returns all its rows.
    ///
    /// # Errors
    ///
    /// As [`execute`](BlockingScopedSession::execute).
    pub fn fetch_all<'q, Q: Fetch<'q, DB>>(&mut self, query: Q) -> Result<Vec<Q::Output>> {
        self.with_session(async |session| {
            session.ready().await?;
            Ok(query.fetch_all(session).await?)
        })
    }

    /// Commits the session's open transaction now.
    ///
    /// # Errors
    ///
    /// As [`Session::commit`], and [`ErrorKind::SessionLocked`](crate::ErrorKind::SessionLocked).
    pub fn commit(&mut self) -> Result<()> {
        self.with_session(async |session| session.commit().await)
    }

    /// Rolls back the session's open transaction now.
    ///
    /// # Errors
    ///
    /// As [`Session::rollback`], and
    /// [`ErrorKind::SessionLocked`](crate::ErrorKind::SessionLocked).
    pub fn rollback(&mut self) -> Result<()> {
        self.with_session(async |session| session.rollback().await)
    }

    /// Whether a transaction is open on the session.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::SessionLocked`](crate::ErrorKind::SessionLocked),
    /// [`ErrorKind::ScopeEnded`](crate::ErrorKind::ScopeEnded),
    /// [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync).
    pub fn in_transaction(&mut self) -> Result<bool> {
        self.with_session(async |session| Ok(session.in_transaction()))
    }

    /// Runs async code on the session, taken for the code's length (other code of the scope
    /// waits meanwhile): for what the plain methods do not cover (a stream of rows, the raw
    /// connection, a read then a write that must not let other statements in between). See
    /// [`BlockingSession::run`](super::BlockingSession::run).
    ///
    /// # Errors
    ///
    /// The code's own error; [`ErrorKind::SessionLocked`](crate::ErrorKind::SessionLocked),
    /// [`ErrorKind::ScopeEnded`](crate::ErrorKind::ScopeEnded) and
    /// [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync), converted into `E`.
    pub fn run<T, E>(
        &mut self,
        work: impl AsyncFnOnce(&mut Session<DB>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<Error>,
    {
        refuse_in_async(Some(self.handle.bind_name()))?;
        let handle = &self.handle;
        self.driver.run(async move {
            let mut lease = handle.lock().await?;
            work(&mut lease).await
        })
    }

    /// Runs `work` under a lease, naming the bind in errors sqlx left without one.
    fn with_session<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut Session<DB>) -> Result<T>,
    ) -> Result<T> {
        let bind = self.handle.bind_name().to_owned();
        self.run(work).map_err(|e| e.or_bind(&bind))
    }
}

impl<DB: Backend> Clone for BlockingScopedSession<DB> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            driver: self.driver.clone(),
        }
    }
}

impl<DB: Backend> fmt::Debug for BlockingScopedSession<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingScopedSession")
            .field("bind", &self.handle.bind_name())
            .finish_non_exhaustive()
    }
}

/// An atomic block on the current blocking scope's session of bind `name`: the twin of
/// [`atomic`](crate::atomic()), with the same policies ([`IfOpen`]) and the same rule for other
/// statements on the session while it is open (they are part of it).
///
/// ```
/// use dbscope::blocking;
/// use sqlx::Sqlite;
///
/// # fn main() -> Result<(), dbscope::Error> {
/// # let manager = dbscope::BindManager::new(dbscope::BindConfig::new("sqlite::memory:"))?;
/// blocking::scope(&manager, || {
///     let mut s = blocking::current_session::<Sqlite>("default")?;
///     s.execute(sqlx::query("CREATE TABLE notes (body TEXT)"))?;
///     s.execute(sqlx::query("INSERT INTO notes VALUES ('kept')"))?;
///     // A savepoint inside the scope's transaction: undone alone when it fails.
///     let failed: Result<(), dbscope::Error> = blocking::atomic::<Sqlite>("default").run(|| {
///         let mut s = blocking::current_session::<Sqlite>("default")?;
///         s.execute(sqlx::query("INSERT INTO notes VALUES ('draft')"))?;
///         Err(sqlx::Error::RowNotFound.into()) // any error: the insert is rolled back
///     });
///     assert!(failed.is_err());
///     let n: i64 = s.fetch_one(sqlx::query_scalar("SELECT COUNT(*) FROM notes"))?;
///     assert_eq!(n, 1);
///     Ok::<_, dbscope::Error>(())
/// })?;
/// # Ok(()) }
/// ```
pub fn atomic<DB: Backend>(name: &str) -> BlockingAtomic<DB> {
    BlockingAtomic(crate::atomic(name))
}

/// As [`atomic`], for the bind a [`BindKey`] names.
pub fn atomic_for<K: BindKey>() -> BlockingAtomic<K::Database> {
    atomic(K::NAME)
}

/// An atomic block for blocking code, from [`atomic`].
#[must_use = "an atomic block does nothing until run"]
pub struct BlockingAtomic<DB: Backend>(Atomic<DB>);

impl<DB: Backend> BlockingAtomic<DB> {
    /// What to do when a transaction is already open (default: [`IfOpen::Savepoint`]).
    pub fn if_open(self, policy: IfOpen) -> Self {
        Self(self.0.if_open(policy))
    }

    /// Runs `work` in the block's transaction or savepoint, which `Ok` commits (or releases)
    /// and `Err` or a panic rolls back; see [`Atomic::run`].
    ///
    /// # Errors
    ///
    /// The work's error; those of [`Atomic::run`];
    /// [`ErrorKind::NoBlockingScope`](crate::ErrorKind::NoBlockingScope) outside a blocking
    /// scope; [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code.
    pub fn run<T, E>(self, work: impl FnOnce() -> Result<T, E>) -> Result<T, E>
    where
        E: From<Error>,
    {
        refuse_in_async(None)?;
        let (scope, driver) = SCOPES
            .with_borrow(|scopes| scopes.last().cloned())
            .ok_or_else(|| Error::no_blocking_scope(None))?;
        let block = driver.run(self.0.enter(&scope))?;
        let result = work();
        driver.run(block.end(result.is_ok()))?;
        result
    }
}

impl<DB: Backend> fmt::Debug for BlockingAtomic<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BlockingAtomic").field(&self.0).finish()
    }
}
