//! Ambient sessions: a scope gives every piece of code it runs the same session per bind, and
//! its outcome commits or rolls them all back.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::bind::OpenBind;
use crate::error::BoxError;
use crate::{BindKey, BindManager, Error, Result};

mod atomic;
mod hooks;
mod reads;
mod slot;

pub use atomic::{Atomic, IfOpen, atomic, atomic_for};
pub(crate) use hooks::Captured;
use hooks::Hooks;
pub use reads::current_read_session;
use reads::{Reads, Written};
use slot::{Ended, ErasedSlot, Slot, by_first_use};
pub use slot::{ScopedSession, SessionLease};

tokio::task_local! {
    static CURRENT: Scope;
}

/// How the sessions of a scope run their statements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransactionMode {
    /// The first statement begins a transaction; the scope's outcome commits or rolls it back.
    #[default]
    Transactional,
    /// Statements run without BEGIN/COMMIT: each lands on its own, at once, whatever the
    /// scope's outcome. For routes that only read, it saves two round trips per request.
    /// [Atomic blocks](crate::atomic) and [`Session::begin`](crate::Session::begin) still open
    /// transactions, which the scope's outcome ends.
    Autocommit,
}

/// Runs `work` in a new [scope](Scope) on `manager`'s binds: `Ok` commits every session the
/// work used, `Err` rolls them all back. Short for `manager.scope().run(work)`.
///
/// ```
/// use sqlx::Sqlite;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dbscope::Error> {
/// # let manager = dbscope::BindManager::new(dbscope::BindConfig::new("sqlite::memory:"))?;
/// async fn add_note(body: &str) -> Result<(), dbscope::Error> {
///     let mut session = dbscope::current_session::<Sqlite>("default").await?;
///     sqlx::query("INSERT INTO notes (body) VALUES (?)").bind(body).execute(&mut session).await?;
///     Ok(())
/// }
///
/// dbscope::scope(&manager, async {
///     let mut session = dbscope::current_session::<Sqlite>("default").await?;
///     sqlx::query("CREATE TABLE notes (body TEXT)").execute(&mut session).await?;
///     add_note("one").await?; // same session, same transaction
///     add_note("two").await
/// })
/// .await?; // committed here
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// The work's own error (its sessions rolled back); or, when the work succeeded, the commit's:
/// [`ErrorKind::CommitVetoed`](crate::ErrorKind::CommitVetoed), [`ErrorKind::PartialCommit`](crate::ErrorKind::PartialCommit), or a single bind's commit error
/// ([`ErrorKind::Query`](crate::ErrorKind::Query), [`ErrorKind::TransactionAborted`](crate::ErrorKind::TransactionAborted), [`ErrorKind::Poisoned`](crate::ErrorKind::Poisoned)).
///
/// # Cancel safety
///
/// Cancelling rolls back: the scope's sessions drop, which rolls back their transactions in the
/// background and returns the connections clean; a commit cut off mid-flight leaves its
/// outcome to the server, and its connection is recovered in the background or discarded.
/// Nothing is committed by a cancelled scope, except binds whose COMMIT already reached the
/// server.
pub async fn scope<F, T, E>(manager: &BindManager, work: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    manager.scope().run(work).await
}

/// A handle to the current scope's session on bind `name`: the same session to all code of the
/// scope, at any depth and in `join!` children, created on first use, connected on its first
/// statement. Handles are cheap and never hold the session between statements (see
/// [`ScopedSession`]), so asking again while holding one never waits.
///
/// # Errors
///
/// [`ErrorKind::NoScope`](crate::ErrorKind::NoScope) outside any scope; [`ErrorKind::ScopeEnded`](crate::ErrorKind::ScopeEnded) from a task that outlived its
/// scope; [`ErrorKind::BindNotInScope`](crate::ErrorKind::BindNotInScope) when the scope declares its binds and not this one; those
/// of [`BindManager::bind`].
///
/// # Cancel safety
///
/// Cancel safe: it waits for nothing.
pub async fn current_session<DB: Backend>(name: &str) -> Result<ScopedSession<DB>> {
    Scope::current_for(name)?.session(name)
}

/// As [`current_session`], for the bind a [`BindKey`] names.
///
/// # Errors
///
/// As [`current_session`].
///
/// # Cancel safety
///
/// Cancel safe.
pub async fn current_session_for<K: BindKey>() -> Result<ScopedSession<K::Database>> {
    current_session(K::NAME).await
}

/// As [`current_session`], for code that cannot await: the same handle.
///
/// # Errors
///
/// As [`current_session`].
pub fn try_current_session<DB: Backend>(name: &str) -> Result<ScopedSession<DB>> {
    Scope::current_for(name)?.session(name)
}

/// How to open a scope: its binds, transaction mode and hooks. From [`BindManager::scope`].
///
/// Cheap to clone; one builder serves any number of scopes (a web layer keeps one and starts a
/// scope per request from it).
#[derive(Clone, Debug)]
#[must_use]
pub struct ScopeBuilder {
    manager: BindManager,
    mode: Option<TransactionMode>,
    binds: Vec<(String, Option<TransactionMode>)>,
    /// Serves every bind, the declared ones with their modes (a new scope of one that does).
    every_bind: bool,
    hooks: Hooks,
    source: Option<Arc<dyn SessionSource>>,
    reads: Reads,
}

/// Where a scope's sessions come from when not from the manager's binds themselves: another
/// face of them, which a higher layer provides (the blocking one).
pub(crate) trait SessionSource: fmt::Debug + Send + Sync {
    /// This face of bind `name`; the scope checks its type.
    fn open(&self, manager: &BindManager, name: &str) -> Result<OpenBind>;
}

impl BindManager {
    /// A [`ScopeBuilder`] on this manager's binds: every bind, transactional, no hooks.
    pub fn scope(&self) -> ScopeBuilder {
        ScopeBuilder {
            manager: self.clone(),
            mode: None,
            binds: Vec::new(),
            every_bind: false,
            hooks: Hooks::default(),
            source: None,
            reads: Reads::default(),
        }
    }
}

impl ScopeBuilder {
    /// The transaction mode of the scope's sessions (default: transactional).
    pub fn mode(mut self, mode: TransactionMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Shorthand for `mode(TransactionMode::Autocommit)`.
    pub fn autocommit(self) -> Self {
        self.mode(TransactionMode::Autocommit)
    }

    /// Declares a bind the scope serves. A scope with declared binds serves only those
    /// ([`ErrorKind::BindNotInScope`](crate::ErrorKind::BindNotInScope) for the rest); without any, it serves every bind.
    pub fn bind(mut self, name: impl Into<String>) -> Self {
        self.binds.push((name.into(), None));
        self
    }

    /// Declares a bind with its own transaction mode.
    pub fn bind_with_mode(mut self, name: impl Into<String>, mode: TransactionMode) -> Self {
        self.binds.push((name.into(), Some(mode)));
        self
    }

    /// Runs `hook` inside the scope after its work succeeded, before anything commits; it may
    /// use the scope's sessions. An `Err` vetoes the commit: every session rolls back and the
    /// scope fails with [`ErrorKind::CommitVetoed`](crate::ErrorKind::CommitVetoed). Hooks run in the order they were added.
    pub fn before_commit<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.hooks.before_commit(hook);
        self
    }

    /// Runs `hook` after every session committed and gave its connection back. It runs outside
    /// the scope: use [`BindManager::session`] for database work there.
    ///
    /// The commit is settled by then, so the hooks run to their end: if the scope's owner is
    /// dropped while they run (a web request whose client went away), the hook in flight and
    /// those after it go on in a task of their own. A hook that panics ends the run.
    pub fn after_commit<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.after_commit(hook);
        self
    }

    /// Runs `hook` after the scope rolled back (its work failed, a hook vetoed, or a commit
    /// failed), outside the scope.
    pub fn after_rollback<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.after_rollback(hook);
        self
    }

    /// Takes the scope's sessions from another face of the binds.
    pub(crate) fn with_source(mut self, source: Arc<dyn SessionSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// The manager the scope opens sessions on.
    pub(crate) fn manager(&self) -> &BindManager {
        &self.manager
    }

    /// Checks the declared binds: each exists, none is declared twice.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::UnknownBind`](crate::ErrorKind::UnknownBind), [`ErrorKind::DuplicateScopeBind`](crate::ErrorKind::DuplicateScopeBind).
    pub fn validate(&self) -> Result<()> {
        if self.binds.is_empty() {
            return Ok(());
        }
        let known: Vec<&str> = self.manager.names().collect();
        for (i, (name, _)) in self.binds.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                let known = known.iter().map(|k| (*k).to_owned()).collect();
                return Err(Error::unknown_bind(name, known));
            }
            if self.binds[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::duplicate_scope_bind(name));
            }
        }
        Ok(())
    }

    /// Runs `work` in a new scope: `Ok` commits every session it used (in the order of their
    /// first use), `Err` rolls them back. See [`scope`].
    ///
    /// # Errors
    ///
    /// As [`scope`], and those of [`validate`](ScopeBuilder::validate).
    ///
    /// # Cancel safety
    ///
    /// As [`scope`].
    pub async fn run<F, T, E>(self, work: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let scope = self.start()?;
        let owner = scope.own();
        let result = scope.attach(work).await;
        match owner.finish(result.is_ok()).await {
            Ok(()) => result,
            Err(e) => Err(result.err().unwrap_or_else(|| e.into())),
        }
    }

    /// Runs `work` in a new scope on a task of its own (the seeds' `run_in_new_ctx`): its
    /// sessions are its own, committed or rolled back by its own outcome, whatever the
    /// spawning code's scope does.
    pub fn spawn<F, T, E>(self, work: F) -> JoinHandle<Result<T, E>>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        tokio::spawn(self.run(work))
    }

    /// Opens the scope, not yet entered.
    pub(crate) fn start(&self) -> Result<Scope> {
        self.validate()?;
        Ok(Scope {
            inner: Arc::new(Inner {
                manager: self.manager.clone(),
                state: Mutex::new(State {
                    mode: self.mode.unwrap_or_default(),
                    every_bind: self.every_bind || self.binds.is_empty(),
                    declared: self.binds.clone(),
                    slots: Vec::new(),
                    ended: false,
                    reads: self.reads.clone(),
                }),
                hooks: Mutex::new(self.hooks.clone()),
                extensions: Mutex::new(Vec::new()),
                source: self.source.clone(),
                written: std::sync::OnceLock::new(),
            }),
        })
    }
}

/// A scope of sessions: one per bind, shared by all the code that runs in it.
///
/// A scope is a tokio task-local: code polled inside it (nested async fns, `join!`, `select!`)
/// sees it, and [`current_session`] gives all of it the same session per bind. **Tasks
/// started with `tokio::spawn` inherit nothing**: pass them [`Scope::attach`] to share the
/// scope, or give them their own with [`ScopeBuilder::spawn`].
///
/// `Scope` is a cheap handle on the running scope, from [`Scope::current`]; scopes are opened
/// by [`scope`], [`ScopeBuilder::run`] or a web layer.
#[derive(Clone)]
pub struct Scope {
    inner: Arc<Inner>,
}

struct Inner {
    manager: BindManager,
    state: Mutex<State>,
    hooks: Mutex<Hooks>,
    /// Data the layers above the scope keep per scope, one value per type (a web layer's
    /// status exceptions from nested layers): the scope holds it and never reads it.
    extensions: Mutex<Vec<Box<dyn Any + Send>>>,
    /// Where the sessions come from; `None`: the manager's binds.
    source: Option<Arc<dyn SessionSource>>,
    /// The tokens of the scope's commits, made on first use by a bind with replicas.
    written: std::sync::OnceLock<Written>,
}

struct State {
    mode: TransactionMode,
    /// Whether the scope serves every bind (it declared none), not only the declared ones.
    every_bind: bool,
    /// The binds the scope declares, each with its own mode if it has one.
    declared: Vec<(String, Option<TransactionMode>)>,
    /// The sessions in the order they were made in; they commit in the order of their first
    /// use (see [`by_first_use`]).
    slots: Vec<Arc<dyn ErasedSlot>>,
    ended: bool,
    reads: Reads,
}

impl State {
    fn binds_in_use(&self) -> Vec<String> {
        let mut slots = self.slots.clone();
        by_first_use(&mut slots);
        let mut names: Vec<String> = Vec::with_capacity(slots.len());
        for slot in slots {
            // A bind's read session and its own session are one bind in use.
            if !names.iter().any(|n| n == slot.name()) {
                names.push(slot.name().to_owned());
            }
        }
        names
    }

    fn mode_for(&self, name: &str) -> Result<TransactionMode> {
        match self.declared.iter().find(|(n, _)| n == name) {
            Some((_, mode)) => Ok(mode.unwrap_or(self.mode)),
            None if self.every_bind => Ok(self.mode),
            None => {
                let declared = self.declared.iter().map(|(n, _)| n.clone()).collect();
                Err(Error::bind_not_in_scope(name, declared))
            }
        }
    }
}

impl Scope {
    /// The scope the calling code runs in.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NoScope`](crate::ErrorKind::NoScope) outside any scope.
    pub fn current() -> Result<Scope> {
        CURRENT
            .try_with(Scope::clone)
            .map_err(|_| Error::no_scope(None))
    }

    /// The scope the calling code runs in, if any: for a web layer, which asks on every request
    /// and needs no error for the common answer.
    #[cfg_attr(not(any(feature = "tower", feature = "actix")), allow(dead_code))]
    pub(crate) fn try_current() -> Option<Scope> {
        CURRENT.try_with(Scope::clone).ok()
    }

    fn current_for(name: &str) -> Result<Scope> {
        CURRENT
            .try_with(Scope::clone)
            .map_err(|_| Error::no_scope(Some(name)))
    }

    /// The manager whose binds the scope serves: for sessions independent of the scope
    /// ([`BindManager::session`]), such as background work that must commit on its own.
    pub fn manager(&self) -> &BindManager {
        &self.inner.manager
    }

    /// A handle to this scope's session on bind `name`; see [`current_session`].
    ///
    /// # Errors
    ///
    /// As [`current_session`].
    pub fn session<DB: Backend>(&self, name: &str) -> Result<ScopedSession<DB>> {
        Ok(ScopedSession::new(
            self.slot::<DB>(name, self.is_read_only())?,
        ))
    }

    /// Whether every session of the scope is a read session.
    pub(crate) fn is_read_only(&self) -> bool {
        self.state().reads.all()
    }

    /// Runs `work` inside this scope, sharing its sessions, without ending the scope when
    /// `work` ends: the scope's owner commits or rolls back. This is how a task started with
    /// `tokio::spawn` joins the scope of the code that spawned it:
    ///
    /// ```
    /// # async fn demo() -> Result<(), dbscope::Error> {
    /// let scope = dbscope::Scope::current()?;
    /// let task = tokio::spawn(scope.attach(async {
    ///     let _session = dbscope::current_session::<sqlx::Sqlite>("default").await?;
    ///     Ok::<_, dbscope::Error>(())
    /// }));
    /// task.await.expect("task ran")?; // finish before the scope ends
    /// # Ok(()) }
    /// ```
    ///
    /// A task still running when the scope ends gets [`ErrorKind::ScopeEnded`](crate::ErrorKind::ScopeEnded) from then on; the
    /// scope's commit waits for a session such a task holds.
    pub fn attach<F: Future>(&self, work: F) -> impl Future<Output = F::Output> + use<F> {
        CURRENT.scope(self.clone(), work)
    }

    /// Whether `other` is a handle on this same scope.
    pub(crate) fn same_scope(&self, other: &Scope) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Runs synchronous `f` inside this scope (for a framework whose `call` does work before
    /// returning its future).
    #[cfg_attr(not(any(feature = "tower", feature = "actix")), allow(dead_code))]
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }

    /// A builder for a new, separate scope on the same manager, with this scope's transaction
    /// mode and declared binds, but none of its sessions or hooks: for concurrent queries,
    /// each in its own scope (`Scope::current()?.new_scope().spawn(work)`). Its read sessions
    /// read after this scope's read tokens (those it was given, a request's, and those of the
    /// commits it made so far), as this scope's own do.
    pub fn new_scope(&self) -> ScopeBuilder {
        let own = self.read_tokens();
        let state = self.state();
        let mut tokens = state.reads.tokens.clone();
        tokens.extend(own);
        ScopeBuilder {
            manager: self.inner.manager.clone(),
            mode: Some(state.mode),
            binds: state.declared.clone(),
            every_bind: state.every_bind,
            hooks: Hooks::default(),
            source: self.inner.source.clone(),
            reads: Reads {
                read_only: state.reads.all(),
                by_method: false,
                tokens,
            },
        }
    }

    /// Adds a before-commit hook to this scope; see [`ScopeBuilder::before_commit`].
    pub fn before_commit<F, Fut>(&self, hook: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.hooks().before_commit(hook);
    }

    /// Adds an after-commit hook to this scope (to send an email once the order is stored, for
    /// instance); see [`ScopeBuilder::after_commit`].
    pub fn after_commit<F, Fut>(&self, hook: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks().after_commit(hook);
    }

    /// Adds an after-rollback hook to this scope; see [`ScopeBuilder::after_rollback`].
    pub fn after_rollback<F, Fut>(&self, hook: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks().after_rollback(hook);
    }

    /// The names of the binds whose sessions the scope has created, in the order of first use
    /// (the order they commit in), those whose handles ran nothing yet last.
    pub fn binds_in_use(&self) -> Vec<String> {
        self.state().binds_in_use()
    }

    /// Gives the scope's read sessions from now on more read tokens to read after (a nested
    /// web layer's, from the request).
    #[cfg_attr(not(any(feature = "tower", feature = "actix")), allow(dead_code))]
    pub(crate) fn read_after_more(&self, tokens: impl IntoIterator<Item = crate::ReadToken>) {
        self.state().reads.tokens.extend(tokens);
    }

    /// Adds a nested layer's binds, mode and hooks to this scope (one scope per request, however
    /// many layers declare binds for it).
    #[cfg_attr(not(any(feature = "tower", feature = "actix")), allow(dead_code))]
    pub(crate) fn extend(&self, builder: &ScopeBuilder) -> Result<()> {
        builder.validate()?;
        let mut state = self.state();
        if let Some(mode) = builder.mode {
            state.mode = mode;
        }
        // A read-only route makes the request's sessions read sessions from then on; its
        // tokens join the request's.
        state.reads.read_only |= builder.reads.read_only;
        state
            .reads
            .tokens
            .extend(builder.reads.tokens.iter().cloned());
        // The layer's binds join the scope's: a scope that serves every bind still does (the
        // layer's binds with their modes), one that declares its binds serves the layer's too.
        let declared = &mut state.declared;
        if let Some((dup, _)) = builder
            .binds
            .iter()
            .find(|(n, _)| declared.iter().any(|(d, _)| d == n))
        {
            return Err(Error::duplicate_scope_bind(dup));
        }
        declared.extend(builder.binds.iter().cloned());
        drop(state);
        self.hooks().extend(&builder.hooks);
        Ok(())
    }

    /// Runs `f` on this scope's extension of type `T`, created by `T::default()` on first use.
    #[cfg_attr(not(any(feature = "tower", feature = "actix")), allow(dead_code))]
    pub(crate) fn extension_mut<T: Any + Send + Default, R>(
        &self,
        f: impl FnOnce(&mut T) -> R,
    ) -> R {
        let mut extensions = lock(&self.inner.extensions);
        if let Some(value) = extensions.iter_mut().find_map(|e| e.downcast_mut::<T>()) {
            return f(value);
        }
        let mut value = T::default();
        let result = f(&mut value);
        extensions.push(Box::new(value));
        result
    }

    /// Runs `f` on this scope's extension of type `T`, if it has one.
    #[cfg_attr(not(any(feature = "tower", feature = "actix")), allow(dead_code))]
    pub(crate) fn extension<T: Any + Send, R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        let extensions = lock(&self.inner.extensions);
        extensions.iter().find_map(|e| e.downcast_ref::<T>()).map(f)
    }

    /// Ends the scope: with `commit`, runs the before-commit hooks, then commits every session
    /// in the order of first use; otherwise (or on a veto or failure) rolls them all back.
    /// Connections go back to the pool; then the after-commit or after-rollback hooks run.
    pub(crate) async fn finish(&self, commit: bool) -> Result<()> {
        let mut outcome = Ok(());
        let before_commit = commit && self.hooks().has_before_commit();
        if before_commit && let Err(veto) = self.attach(self.run_before_commit()).await {
            outcome = Err(Error::commit_vetoed(veto));
        }
        // Read after the before-commit hooks: the after-commit and after-rollback hooks they
        // added run too.
        let hooks = self.hooks().clone();
        let slots = {
            let mut state = self.state();
            state.ended = true;
            // Left in the state too: an owner cut off from here on gives up what is not ended.
            let mut slots = state.slots.clone();
            by_first_use(&mut slots);
            slots
        };
        if outcome.is_ok() {
            outcome = if commit {
                commit_in_order(slots).await
            } else {
                roll_back_all(slots).await;
                Ok(())
            };
        } else {
            roll_back_all(slots).await;
        }
        let partial = outcome.as_ref().is_err_and(Error::is_partial_commit);
        let committed = commit && outcome.is_ok();
        self.inner.manager.scope_metrics().ended(committed, partial);
        match self.inner.manager.hook_sink::<Captured>() {
            Some(sink) if committed => sink.hold(&hooks),
            _ => hooks.run_after(committed).await,
        }
        outcome
    }

    /// The scope's owner, which ends it with [`Owner::finish`]; dropped before that has
    /// finished, it gives the scope up.
    pub(crate) fn own(&self) -> Owner {
        Owner {
            scope: self.clone(),
            finished: false,
        }
    }

    /// Gives up a scope its owner did not finish: no session is lent again, and each rolls
    /// back, at once where no code holds it, else when that code lets go.
    pub(crate) fn abandon(&self) {
        let slots = {
            let mut state = self.state();
            state.ended = true;
            state.slots.clone()
        };
        for slot in slots {
            slot.abandon();
        }
    }

    /// The read slot of bind `name`, or its write slot once that has been used (sticky after
    /// write).
    fn read_slot<DB: Backend>(&self, name: &str) -> Result<Arc<Slot<DB>>> {
        let written = {
            let state = self.state();
            !state.reads.all()
                && state
                    .slots
                    .iter()
                    .any(|s| s.name() == name && !s.is_read() && s.used())
        };
        self.slot::<DB>(name, !written)
    }

    fn slot<DB: Backend>(&self, name: &str, read: bool) -> Result<Arc<Slot<DB>>> {
        let mut state = self.state();
        if state.ended {
            return Err(Error::scope_ended(name));
        }
        if let Some(slot) = state
            .slots
            .iter()
            .find(|s| s.name() == name && s.is_read() == read)
        {
            return match slot.clone().into_any().downcast::<Slot<DB>>() {
                Ok(slot) => Ok(slot),
                // Asked for as another type: the manager names the mismatch.
                Err(_) => Err(self
                    .inner
                    .manager
                    .bind::<DB>(name)
                    .err()
                    .unwrap_or_else(|| Error::scope_ended(name))),
            };
        }
        let mode = state.mode_for(name)?;
        let bind = match &self.inner.source {
            None => self.inner.manager.bind::<DB>(name)?,
            Some(source) => {
                self.inner.manager.bind::<DB>(name)?; // the name, type and closed checks
                let face = source.open(&self.inner.manager, name)?;
                face.typed::<DB>()
                    .expect("a bind's other face has the bind's type")
            }
        };
        let mut session = if read {
            bind.read_session_after(state.reads.token_for(name))
        } else {
            bind.session()
        };
        let autocommit = mode == TransactionMode::Autocommit;
        if session.is_autocommit() != autocommit {
            session = session.autocommit(autocommit); // builds per-session options: only if needed
        }
        let written = session.bind().hosts().is_some().then(|| self.written());
        let slot = Arc::new(Slot::new(session.bind().shared_name(), session, written));
        // Sticky after write for read handles whichever came first: a read slot lends the
        // scope's own session of the bind once code has used it.
        let sibling = state
            .slots
            .iter()
            .find(|s| s.name() == name && s.is_read() != read)
            .and_then(|s| s.clone().into_any().downcast::<Slot<DB>>().ok());
        match sibling {
            Some(writer) if read => Slot::link(&slot, &writer),
            Some(reader) => Slot::link(&reader, &slot),
            None => {}
        }
        state.slots.push(slot.clone());
        Ok(slot)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    fn hooks(&self) -> MutexGuard<'_, Hooks> {
        lock(&self.inner.hooks)
    }

    /// Runs the before-commit hooks in the order they were added, those added by a
    /// before-commit hook included (after the others); the first error vetoes the commit and
    /// stops the rest.
    async fn run_before_commit(&self) -> std::result::Result<(), BoxError> {
        let mut next = 0;
        loop {
            let hook = self.hooks().before_commit_at(next);
            let Some(hook) = hook else {
                return Ok(());
            };
            hook().await?;
            next += 1;
        }
    }
}

/// The code that opened a scope and ends it. Dropped before [`finish`](Owner::finish) has
/// finished (the owner's future cancelled, a panic), it gives the scope up: tasks attached to it
/// get [`ErrorKind::ScopeEnded`](crate::ErrorKind::ScopeEnded) from then on, and every session
/// rolls back, at once where no code holds it, else when that code lets go. Without it, a task
/// attached to the scope would keep its sessions, and could commit what the owner never did.
pub(crate) struct Owner {
    scope: Scope,
    finished: bool,
}

impl Owner {
    /// Ends the scope: see [`Scope::finish`].
    pub(crate) async fn finish(mut self, commit: bool) -> Result<()> {
        let outcome = self.scope.finish(commit).await;
        self.finished = true;
        outcome
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if !self.finished {
            self.scope.abandon();
        }
    }
}

/// Locks a mutex of the scope; a panic elsewhere while holding one leaves data that is still
/// consistent (every update is a single push or take).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Commits each session in turn; after a failure, rolls back the rest and reports which binds
/// committed.
async fn commit_in_order(slots: Vec<Arc<dyn ErasedSlot>>) -> Result<()> {
    for (i, slot) in slots.iter().enumerate() {
        let source = match slot.clone().finish(true).await {
            Ended::Committed | Ended::RolledBack => continue,
            Ended::CommitFailed(source) | Ended::StillHeld(source) => source,
        };
        // Names are built on the failure path only: the common path allocates nothing. Only
        // sessions that ran something outside a read slot can have written: a handle never
        // used, or a read, commits (or rolls back) nothing of note.
        let names = |slots: &[Arc<dyn ErasedSlot>]| -> Vec<String> {
            slots
                .iter()
                .filter(|s| s.used() && !s.is_read())
                .map(|s| s.name().to_owned())
                .collect()
        };
        let committed = names(&slots[..i]);
        let rolled_back = names(&slots[i + 1..]);
        roll_back_all(slots[i + 1..].to_vec()).await;
        return Err(Error::commit_failed(
            committed,
            slot.name(),
            rolled_back,
            source,
        ));
    }
    Ok(())
}

async fn roll_back_all(slots: Vec<Arc<dyn ErasedSlot>>) {
    for slot in slots {
        slot.finish(false).await;
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Scope")
            .field("mode", &state.mode)
            .field("binds_in_use", &state.binds_in_use())
            .field("ended", &state.ended)
            .finish_non_exhaustive()
    }
}
