//! A connection's own I/O driver, so that the thread using a connection waits for its socket
//! itself, as the `postgres` crate's blocking client does (dbscope issue 14, item 4).
//!
//! A pool opened with reactors (a bind's blocking face, on PostgreSQL and MySQL) gives each
//! connection a current-thread tokio runtime of its own, its [`Reactor`]: the connection is
//! opened inside it, so its socket is registered with that runtime's I/O driver, which only a
//! thread in the runtime's `block_on` runs. Two ways in:
//!
//! - **In the foreground**, [`block_on`] polls an operation on the calling thread. Each time the
//!   operation reaches for a connection ([`Reactor::touch`], from `Conn::raw`), the connection's
//!   reactor is noted; while the operation waits, the calling thread runs that reactor's driver
//!   (its `epoll`), so the socket's readiness wakes the operation right there: no other thread
//!   wakes up for a round trip. With no reactor noted (a pool wait, a connection of a pool
//!   without reactors), the thread sleeps until its waker is called, from wherever.
//! - **In the background**, [`Reactor::spawn`] and [`Reactor::run_apart`] run work on a thread
//!   of its own inside the reactor: opening the connection, and whatever touches it outside a
//!   caller's operation (a dropped session's rollback where the dropping thread may not block,
//!   recovery, a polite close). A connection is held by one party at a time, so such a thread
//!   never competes with a caller for the reactor.
//!
//! Timers and spawned tasks of the foreground go to the runtime whose context the caller
//! entered (the blocking faces' `Driver`); only sockets belong to reactors.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use futures_util::future::{Either, select};
use futures_util::task::AtomicWaker;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// How many times a thread waiting without a socket yields before it sleeps (see
/// `Signal::wait`); `parking_lot` yields up to 7 times after 3 spins.
const YIELDS_BEFORE_SLEEP: u32 = 10;

/// The name of the threads that run a connection's background work.
const THREAD_NAME: &str = "dbscope-conn";

/// A connection's own current-thread tokio runtime: its socket's I/O driver and its timers. A
/// cheap handle.
#[derive(Clone)]
pub(crate) struct Reactor(Arc<Owned>);

/// The runtime, shut down without waiting when the last handle goes: a connection may be
/// dropped anywhere, async code included, where dropping a runtime the usual way panics.
struct Owned(Option<Runtime>);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Reactor {
    /// A new reactor, for one connection.
    pub(crate) fn new() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self(Arc::new(Owned(Some(runtime)))))
    }

    fn runtime(&self) -> &Runtime {
        self.0.0.as_ref().expect("shut down only when dropped")
    }

    fn is(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Runs `work` inside this reactor, on the calling thread, until it ends.
    fn block_on<F: Future>(&self, work: F) -> F::Output {
        self.runtime().block_on(work)
    }

    /// Notes that the operation [`block_on`] is polling on this thread uses this reactor's
    /// connection, so that its waits drive this reactor. `false` outside [`block_on`]: then no
    /// thread drives this reactor for the caller.
    pub(crate) fn touch(&self) -> bool {
        let noted = TOUCHED.try_with(|touched| {
            let mut touched = touched.borrow_mut();
            let Some(touched) = touched.as_mut() else {
                return false;
            };
            if !touched.last().is_some_and(|last| last.is(self)) {
                touched.retain(|r| !r.is(self));
                touched.push(self.clone());
            }
            true
        });
        noted.unwrap_or(false)
    }

    /// Notes that the operation polled on this thread is done with this reactor's connection
    /// (given back, discarded, handed to background work).
    pub(crate) fn forget(&self) {
        let _ = TOUCHED.try_with(|touched| {
            if let Some(touched) = touched.borrow_mut().as_mut() {
                touched.retain(|r| !r.is(self));
            }
        });
    }

    /// Runs `work` to its end in the background, on a thread of its own inside this reactor.
    /// If the thread cannot start, `work` is dropped unpolled: its guards decide what becomes of
    /// the connection it holds.
    pub(crate) fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let reactor = self.clone();
        let started = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || reactor.block_on(work));
        if let Err(e) = started {
            tracing::debug!(error = %e, "could not start a thread for a connection's background work");
        }
    }

    /// Runs `work` on a thread of its own inside this reactor and waits for its output, from any
    /// context; `None` when the thread could not start. Dropped before the end, it stops `work`
    /// at its next wait (and drops what it made).
    pub(crate) async fn run_apart<F>(&self, work: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.spawn(async move {
            let mut tx = tx;
            let output = match select(pin!(work), pin!(tx.closed())).await {
                Either::Left((output, _)) => output,
                Either::Right(((), _)) => return, // nobody waits any more
            };
            let _ = tx.send(output);
        });
        rx.await.ok()
    }
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor").finish_non_exhaustive()
    }
}

thread_local! {
    /// Inside [`block_on`]: the reactors of the connections the operation has touched and not
    /// yet let go, the one touched last at the end. `None` outside.
    static TOUCHED: RefCell<Option<Vec<Reactor>>> = const { RefCell::new(None) };
    static SIGNAL: Arc<Signal> = Arc::new(Signal::current());
}

/// Whether this thread's own thread-locals of [`block_on`] are gone: it is exiting, and
/// nothing may block on it any more (tokio's may outlive them, by the order they were made in).
pub(crate) fn thread_locals_gone() -> bool {
    TOUCHED.try_with(|_| ()).is_err() || SIGNAL.try_with(|_| ()).is_err()
}

/// Runs `future` to completion on the calling thread: polls it, and while it waits, runs the
/// I/O driver of the connection it last touched ([`Reactor::touch`]) until its waker is called,
/// or sleeps when it touched none. The caller makes sure the thread may block, and pins the
/// future where it builds it (no copy of it on the way in).
pub(crate) fn block_on<F: Future + ?Sized>(mut future: Pin<&mut F>) -> F::Output {
    let signal = SIGNAL
        .try_with(Arc::clone)
        .unwrap_or_else(|_| Arc::new(Signal::current()));
    let waker = Waker::from(Arc::clone(&signal));
    let mut cx = Context::from_waker(&waker);
    let _touched = Touched::start();
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        wait(&signal);
    }
}

/// Waits until `signal` is raised, running meanwhile the driver of the reactor touched last on
/// this thread; in the rare operation that holds several connections at once, the others' each
/// on a thread of its own for the length of this wait.
fn wait(signal: &Arc<Signal>) {
    let (last, several) = TOUCHED.with_borrow(|touched| {
        let touched = touched.as_deref().unwrap_or_default();
        (touched.last().cloned(), touched.len() > 1)
    });
    match last {
        None => signal.wait(),
        Some(last) if !several => last.block_on(signal.raised()),
        Some(last) => {
            let others = TOUCHED.with_borrow(|touched| {
                let touched = touched.as_deref().unwrap_or_default();
                touched[..touched.len() - 1].to_vec()
            });
            std::thread::scope(|scope| {
                // Raised when this wait ends, however (a panic too): the helpers return, and
                // the scope, which joins them, never waits for one that waits for nothing.
                let mut helpers = RaiseOnDrop(Vec::with_capacity(others.len()));
                let mut undriven = Vec::new();
                for reactor in &others {
                    let done = Arc::new(Signal::current());
                    let raised = Arc::clone(&done);
                    let helper = spawn_helper(scope, move || reactor.block_on(raised.raised()));
                    match helper {
                        Ok(()) => helpers.0.push(done),
                        Err(e) => {
                            tracing::debug!(error = %e, "could not start a thread to drive a connection's socket; driving it in turn");
                            undriven.push(reactor);
                        }
                    }
                }
                if undriven.is_empty() {
                    last.block_on(signal.raised());
                } else {
                    drive_in_turn(signal, last, &undriven);
                }
            });
        }
    }
}

/// Starts a helper thread of [`wait`] (made to fail in the tests of the fallback).
fn spawn_helper<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    work: impl FnOnce() + Send + 'scope,
) -> io::Result<()> {
    #[cfg(test)]
    if tests::FAIL_HELPERS.get() {
        return Err(io::Error::other("helpers made to fail"));
    }
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn_scoped(scope, work)
        .map(drop)
}

/// Without a thread for some connections' drivers (the system would start no more): runs them
/// from this thread, in turn with the last one's, a slice of [`SLICE`] at a time, until
/// `signal` is raised. Slower, never stuck.
fn drive_in_turn(signal: &Arc<Signal>, last: Reactor, undriven: &[&Reactor]) {
    loop {
        let raised =
            last.block_on(async { tokio::time::timeout(SLICE, signal.raised()).await.is_ok() });
        if raised {
            return;
        }
        for reactor in undriven {
            // One turn of its driver: what is ready wakes the operation (and raises `signal`).
            reactor.block_on(tokio::task::yield_now());
        }
    }
}

/// How long [`drive_in_turn`] waits in one driver before turning to the others.
const SLICE: std::time::Duration = std::time::Duration::from_millis(1);

/// Raises each signal when dropped.
struct RaiseOnDrop(Vec<Arc<Signal>>);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(|done| done.wake_by_ref());
    }
}

/// Marks this thread as inside [`block_on`], with nothing touched yet, until dropped (on unwind
/// too); restores what was there before.
struct Touched(Option<Vec<Reactor>>);

impl Touched {
    fn start() -> Self {
        Self(TOUCHED.replace(Some(Vec::new())))
    }
}

impl Drop for Touched {
    fn drop(&mut self) {
        let before = self.0.take();
        let _ = TOUCHED.try_with(|touched| touched.replace(before));
    }
}

/// Wakes a thread waiting in [`block_on`], sleeping or inside a reactor. The flag makes wake-ups
/// sticky and tells them from stray `unpark`s of other code on the thread.
struct Signal {
    thread: Thread,
    raised: AtomicBool,
    /// The waker of the reactor the thread waits in, if it does.
    reactor: AtomicWaker,
}

impl Signal {
    fn current() -> Self {
        Self {
            thread: std::thread::current(),
            raised: AtomicBool::new(false),
            reactor: AtomicWaker::new(),
        }
    }

    /// Sleeps until raised, then lowers it.
    ///
    /// Yields the processor a few times first, as `parking_lot`'s `SpinWait` does before it
    /// parks. A wait without a socket is mostly a pool wait, and under load it often ends while
    /// the thread yields: the connection's holder runs meanwhile, and a thread that never slept
    /// costs no wake-up (a futex round and, as often as not, a move to the other processor).
    /// With 16 threads on 8 connections (`--bench blocking`) this took dbscope from about 0.60x
    /// to 0.68x the tuned r2d2 loop, whose pool lock (a `parking_lot` mutex) yields the same way
    /// before it parks. Yielding to nobody returns at once, so the cost is bounded: a few system
    /// calls before the sleep.
    fn wait(&self) {
        for _ in 0..YIELDS_BEFORE_SLEEP {
            if self.raised.swap(false, Ordering::Acquire) {
                return;
            }
            std::thread::yield_now();
        }
        while !self.raised.swap(false, Ordering::Acquire) {
            std::thread::park();
        }
    }

    /// Ready once raised (lowering it), for a wait inside a reactor.
    fn raised(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            self.reactor.register(cx.waker());
            if self.raised.swap(false, Ordering::Acquire) {
                self.reactor.take(); // a later raise must not wake a reactor nobody waits in
                return Poll::Ready(());
            }
            Poll::Pending
        })
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.raised.swap(true, Ordering::Release) {
            self.thread.unpark();
            self.reactor.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::Write;

    use super::*;

    thread_local! {
        /// Makes [`spawn_helper`] fail on this thread, as when the system starts no more.
        pub(super) static FAIL_HELPERS: Cell<bool> = const { Cell::new(false) };
    }

    /// An operation holding three connections waits for the first one's socket, and no helper
    /// thread can start to drive it: the calling thread drives it in turn, and the wait ends
    /// when the data is there, instead of never.
    #[test]
    fn a_wait_on_several_connections_ends_without_helper_threads() {
        let reactors: Vec<Reactor> = (0..3).map(|_| Reactor::new().unwrap()).collect();
        let (mine, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        mine.set_nonblocking(true).unwrap();
        // Registered with the first reactor's driver, as a connection opened inside it is.
        let stream = reactors[0].block_on(async { tokio::net::UnixStream::from_std(mine) });
        let stream = stream.unwrap();
        peer.write_all(b"x").unwrap();
        FAIL_HELPERS.set(true);
        let read = pin!(async {
            for reactor in &reactors {
                assert!(reactor.touch(), "inside block_on");
            }
            // The driver has not seen the socket's readiness yet: this waits, on three
            // connections, the one it waits for not the last touched.
            stream.readable().await.unwrap();
            let mut byte = [0_u8; 1];
            stream.try_read(&mut byte).unwrap()
        });
        let read = block_on(read);
        FAIL_HELPERS.set(false);
        assert_eq!(read, 1);
    }
}
