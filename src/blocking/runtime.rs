//! The runtime behind blocking binds, the loop in which a calling thread waits for it, and the
//! check that the calling thread may wait at all.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::runtime::{EnterGuard, Handle, Runtime};
use tokio::task::coop;

use crate::backend::Backend;
use crate::engine::{block_on, thread_locals_gone};
use crate::{Error, Result, Session};

/// How long a dropped blocking session may take to roll back before its connection is discarded
/// (as for async sessions).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Twice tokio's cooperative budget per poll (128): spending this much tells a budgeted thread
/// from an unbudgeted one (see [`under_coop_budget`]). Should tokio raise its budget past this,
/// the tests of calls from async code fail.
const BUDGET_PROBE: usize = 256;

/// The tokio runtime of a manager's blocking binds.
///
/// Each operation runs on the calling thread, which polls it inside this runtime's context. A
/// PostgreSQL or MySQL connection of a blocking face has an I/O driver of its own (see
/// `engine::reactor`), which the calling thread runs while the operation waits for the server:
/// the socket's readiness wakes the caller itself, and this runtime's worker thread sleeps
/// through every round trip. The worker drives the timers (`acquire_timeout` and the other
/// deadlines), the replicas' prober and its sockets, and the background work of connections
/// without a driver of their own (SQLite's, a test's pinned connection) or of none (pool
/// upkeep, tasks spawned by scope hooks).
pub(crate) struct Driver {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Driver {
    pub(crate) fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dbscope-blocking")
            .enable_all()
            .build()
            .map_err(Error::blocking_runtime)?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Runs `future` to completion on the calling thread, inside this runtime's context (its
    /// timers and spawned tasks belong to this runtime; the sockets of connections with a
    /// reactor of their own are driven by this thread while it waits). Check [`may_block`]
    /// first.
    ///
    /// Pinned here, small enough to be inlined into each caller, the future is built in its
    /// final place: a statement's future is about 2 KiB, and moving it on into `block_on` cost a
    /// copy of it per statement (a sixth of the blocking session's `memcpy`s under callgrind).
    /// Pinned after the guards, it is dropped before them: what a future cut off short still
    /// holds (a session inside a timeout, a connect) is dropped inside this runtime's context,
    /// where it can hand its cleanup to the runtime, as it would in async code.
    #[inline]
    pub(crate) fn run<F: Future>(&self, future: F) -> F::Output {
        let _context = self.handle.enter();
        let _polling = Polling::start();
        let future = std::pin::pin!(future);
        block_on(future)
    }

    /// Enters this runtime's context without blocking: what is spawned meanwhile runs on it.
    pub(crate) fn enter(&self) -> EnterGuard<'_> {
        self.handle.enter()
    }

    /// Ends a session given up by blocking code: rolled back and its connection returned before
    /// this returns; or, where the thread may not block, in the background (on a thread of the
    /// connection's own, or on this runtime for a connection without a reactor).
    pub(crate) fn end<DB: Backend>(&self, session: Session<DB>) {
        if !session.is_connected() || thread_exiting() {
            // Exiting, no runtime can be entered: dropped here, the session discards its
            // connection, and the server rolls back.
            return;
        }
        if session.ends_without_round_trip() || !may_block() {
            // Nothing to send (committed, say): the drop gives the connection back at once.
            // Or the thread may not block: the drop hands the rollback to the connection's
            // reactor, on a thread of its own; a connection without one (SQLite, a test's
            // pinned connection) to this runtime, as a polite close after the pool closed.
            let _context = self.enter();
            drop(session);
            return;
        }
        let bind = session.bind().name().to_owned();
        let outcome = self
            .run(async { tokio::time::timeout(CLEANUP_TIMEOUT, session.close_recovering()).await });
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(bind = %bind, error = %e, "a dropped blocking session's rollback failed; its connection was recovered or discarded");
            }
            Err(_elapsed) => {
                tracing::debug!(bind = %bind, "a dropped blocking session's rollback timed out; its connection was discarded");
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Never blocks, so the last handle may go anywhere, async code included; the worker
        // thread finishes on its own.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

/// Refuses with [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) when the calling thread may not block.
pub(crate) fn refuse_in_async(bind: Option<&str>) -> Result<()> {
    if may_block() {
        return Ok(());
    }
    Err(Error::blocking_in_async(bind))
}

/// Whether the calling thread may block: it is not polling async code, neither for a tokio
/// runtime (a task, a `block_on`) nor inside one of our own waits. `spawn_blocking` closures,
/// `block_in_place` and plain threads may, even with a runtime's context entered.
pub(crate) fn may_block() -> bool {
    if POLLING.get() {
        return false;
    }
    if Handle::try_current().is_err() {
        return true;
    }
    !under_coop_budget()
}

/// Whether this thread is tearing down its thread-locals (a session dropped by one of them):
/// tokio's, or dbscope's own, whichever went first.
fn thread_exiting() -> bool {
    matches!(Handle::try_current(), Err(e) if e.is_thread_local_destroyed()) || thread_locals_gone()
}

/// Whether tokio is polling async code on this thread.
///
/// tokio polls every task and every `block_on` future under a cooperative budget (128 units per
/// poll), and runs `spawn_blocking` closures and `block_in_place` under none; the flag that says
/// so is private, and `block_on` panics on it. So spend the budget: a limited one runs out, an
/// unlimited one never does. Dropping the first guard unspent restores the budget as it was.
fn under_coop_budget() -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(first) = coop::poll_proceed(&mut cx) else {
        return true;
    };
    let limited = (0..BUDGET_PROBE).any(|_| match coop::poll_proceed(&mut cx) {
        Poll::Ready(step) => {
            step.made_progress();
            false
        }
        Poll::Pending => true,
    });
    drop(first);
    limited
}

thread_local! {
    /// Set while this thread polls one of our futures: a blocking call from inside it (in a
    /// closure given to `BlockingSession::run`) would wait on itself.
    static POLLING: Cell<bool> = const { Cell::new(false) };
}

/// Marks the thread as polling until dropped (on unwind too).
struct Polling {
    was: bool,
}

impl Polling {
    fn start() -> Self {
        Self {
            was: POLLING.replace(true),
        }
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.set(self.was);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records whether a tokio runtime's context was entered where it is dropped.
    struct SeesRuntime(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Drop for SeesRuntime {
        fn drop(&mut self) {
            let entered = Handle::try_current().is_ok();
            self.0.store(entered, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn what_a_cut_off_future_holds_is_dropped_inside_the_runtime() {
        let driver = Driver::start().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let guard = SeesRuntime(seen.clone());
        // The timeout, which drops what it cut off only when it is dropped itself, is the
        // future `run` drops.
        let cut_off = {
            let _context = driver.enter();
            tokio::time::timeout(Duration::ZERO, async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            })
        };
        let outcome = driver.run(cut_off);
        assert!(outcome.is_err(), "cut off by its timeout");
        assert!(
            seen.load(std::sync::atomic::Ordering::SeqCst),
            "dropped inside the runtime's context"
        );
        assert!(Handle::try_current().is_err(), "and left after");
    }
}
