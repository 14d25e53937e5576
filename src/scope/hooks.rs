//! Code a scope runs around its commit: before it (with a veto), after it, after a rollback.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_core::future::BoxFuture;

use crate::error::BoxError;

type BeforeCommit = Arc<dyn Fn() -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;
type After = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A scope's hooks, each list in registration order.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    before_commit: Vec<BeforeCommit>,
    after_commit: Vec<After>,
    after_rollback: Vec<After>,
}

impl Hooks {
    pub(crate) fn before_commit<F, Fut>(&mut self, hook: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.before_commit.push(Arc::new(move || Box::pin(hook())));
    }

    pub(crate) fn after_commit<F, Fut>(&mut self, hook: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.after_commit.push(Arc::new(move || Box::pin(hook())));
    }

    pub(crate) fn after_rollback<F, Fut>(&mut self, hook: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.after_rollback.push(Arc::new(move || Box::pin(hook())));
    }

    #[cfg_attr(not(any(feature = "tower", feature = "actix")), allow(dead_code))]
    pub(crate) fn extend(&mut self, other: &Hooks) {
        self.before_commit
            .extend(other.before_commit.iter().cloned());
        self.after_commit.extend(other.after_commit.iter().cloned());
        self.after_rollback
            .extend(other.after_rollback.iter().cloned());
    }

    pub(crate) fn has_before_commit(&self) -> bool {
        !self.before_commit.is_empty()
    }

    /// The before-commit hook at `index` in registration order, if there is one by now.
    pub(crate) fn before_commit_at(&self, index: usize) -> Option<BeforeCommit> {
        self.before_commit.get(index).cloned()
    }

    /// Runs the after-commit (or after-rollback) hooks in order. The scope's outcome is settled
    /// by then, so they run to their end: cut off (a web request's future dropped when its
    /// client went away), the rest, the one in flight included, goes on in a task of its own.
    pub(crate) async fn run_after(&self, committed: bool) {
        let hooks = if committed {
            &self.after_commit
        } else {
            &self.after_rollback
        };
        if hooks.is_empty() {
            return;
        }
        let mut run = AfterRun {
            rest: hooks.clone().into_iter(),
            current: None,
            moves_on: true,
        };
        run.run().await;
    }
}

/// After hooks still to run: the one in flight, and those after it.
struct AfterRun {
    rest: std::vec::IntoIter<After>,
    current: Option<BoxFuture<'static, ()>>,
    /// Cut off, it goes on in a task of its own; once: that task's run, dropped (its runtime
    /// shutting down), ends there.
    moves_on: bool,
}

impl AfterRun {
    async fn run(&mut self) {
        loop {
            if let Some(current) = &mut self.current {
                current.await;
                self.current = None;
            }
            match self.rest.next() {
                Some(hook) => self.current = Some(hook()),
                None => return,
            }
        }
    }
}

impl Drop for AfterRun {
    fn drop(&mut self) {
        // A hook that panicked is not polled again, nor are the hooks after it run (as when
        // the panic unwinds through the scope's owner).
        if !self.moves_on
            || std::thread::panicking()
            || (self.current.is_none() && self.rest.len() == 0)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rest = AfterRun {
            rest: std::mem::take(&mut self.rest),
            current: self.current.take(),
            moves_on: false,
        };
        runtime.spawn(async move { rest.run().await });
    }
}

/// After-commit hooks held instead of run, for a test that captures them (see
/// [`BindManager::hook_sink`](crate::BindManager)): they run when the test says so.
#[derive(Default)]
#[cfg_attr(not(feature = "testing"), allow(dead_code))] // made by the testing toolkit alone
pub(crate) struct Captured(std::sync::Mutex<Vec<After>>);

impl Captured {
    /// Holds the after-commit hooks of `hooks`, in order.
    pub(crate) fn hold(&self, hooks: &Hooks) {
        self.lock().extend(hooks.after_commit.iter().cloned());
    }

    /// How many hooks are held.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Runs the hooks held so far, in the order their scopes committed; returns how many ran.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) async fn run(&self) -> usize {
        let hooks = std::mem::take(&mut *self.lock());
        for hook in &hooks {
            hook().await;
        }
        hooks.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<After>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl fmt::Debug for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Captured").field(&self.len()).finish()
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("before_commit", &self.before_commit.len())
            .field("after_commit", &self.after_commit.len())
            .field("after_rollback", &self.after_rollback.len())
            .finish()
    }
}
