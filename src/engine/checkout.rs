//! deadpool's `get`, owned by the checkout that awaits it, so that a connection still being
//! opened (or pinged) when the checkout is cancelled is not thrown away.
//!
//! Under short client deadlines, many cancelled checkouts are cut off while their connection
//! is being opened (TCP, TLS, authentication: the slow part). Dropping the half-open connection
//! there means the pool never fills: every deadline pays for a connect and keeps nothing. The
//! same goes for a pooled connection cut off in its health-check ping. So a checkout dropped in
//! either phase hands its `get` to a background task, which lets it finish (within the
//! checkout's own deadline) and returns the connection to the pool, unused and clean. The
//! `get` keeps its slot meanwhile, so `max_connections` holds. A checkout dropped while it
//! waits for a slot ends there, as before: nothing is left to finish.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use deadpool::managed::{self, PoolError};
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;

use super::conn_manager::ConnManager;
use super::{Conn, Held};
use crate::backend::Backend;

tokio::task_local! {
    /// Set by [`mark_worth_finishing`] when the `get` that polls it starts opening or pinging a
    /// connection.
    static WORTH_FINISHING: Cell<bool>;
}

/// Called as a connection starts opening, or a pooled one being pinged: marks the checkout
/// that asked, if any (the in-memory SQLite keeper opens its connection outside any checkout).
pub(super) fn mark_worth_finishing() {
    let _ = WORTH_FINISHING.try_with(|worth| worth.set(true));
}

type Object<DB> = managed::Object<ConnManager<DB>>;
type GetResult<DB> = Result<Object<DB>, PoolError<sqlx::Error>>;
/// A `get` in the scope that lets `create` mark it.
type Marked<F> = Pin<Box<TaskLocalFuture<Cell<bool>, F>>>;

/// A pending `get` on a bind's pool; see the module's docs for what its drop does.
pub(super) struct Get<DB, F>
where
    DB: Backend,
    F: Future<Output = GetResult<DB>> + Send + 'static,
{
    pending: Option<Marked<F>>,
    /// The checkout's deadline: a connect finished in the background gets no more time.
    deadline: Instant,
}

/// A `get` on `pool` that may outlive its checkout until `deadline`.
pub(super) fn get<DB: Backend>(
    pool: &managed::Pool<ConnManager<DB>>,
    deadline: Instant,
) -> Get<DB, impl Future<Output = GetResult<DB>> + Send + 'static + use<DB>> {
    let pool = pool.clone();
    let get = async move { pool.get().await };
    Get {
        pending: Some(Box::pin(WORTH_FINISHING.scope(Cell::new(false), get))),
        deadline,
    }
}

impl<DB, F> Future for Get<DB, F>
where
    DB: Backend,
    F: Future<Output = GetResult<DB>> + Send + 'static,
{
    type Output = GetResult<DB>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let pending = this
            .pending
            .as_mut()
            .expect("a checkout is not polled once done");
        let result = ready!(pending.as_mut().poll(cx));
        this.pending = None;
        Poll::Ready(result)
    }
}

impl<DB, F> Drop for Get<DB, F>
where
    DB: Backend,
    F: Future<Output = GetResult<DB>> + Send + 'static,
{
    fn drop(&mut self) {
        let Some(mut pending) = self.pending.take() else {
            return;
        };
        let worth_finishing = pending.as_mut().take_value().is_some_and(Cell::into_inner);
        if !worth_finishing {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let deadline = self.deadline;
        runtime.spawn(async move {
            if let Ok(Ok(object)) = tokio::time::timeout_at(deadline, pending).await {
                // Opened or checked for a checkout that went away: nothing ran on it.
                Conn(Held::Pooled(object)).give_back();
            }
        });
    }
}
