//! deadpool's `get`, owned by the checkout that awaits it, so that a connection still being
//! opened when the checkout is cancelled is not thrown away.
//!
//! Under short client deadlines, most cancelled checkouts are cut off while their connection
//! is being opened (TCP, TLS, authentication: the slow part). Dropping the half-open connection
//! there means the pool never fills: every deadline pays for a connect and keeps nothing. So a
//! checkout dropped in that phase hands its `get` to a background task, which lets the connect
//! finish (within the checkout's own deadline) and returns the connection to the pool, unused
//! and clean. The `get` keeps its slot meanwhile, so `max_connections` holds. A checkout
//! dropped while it waits for a slot, or while a pooled connection is being pinged, ends there
//! as before: nothing is left to finish.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use deadpool::managed::{self, PoolError};
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;

use super::Conn;
use super::conn_manager::ConnManager;
use crate::backend::Backend;

tokio::task_local! {
    /// Set by [`mark_creating`] when the `get` that polls it starts opening a connection.
    static CREATING: Cell<bool>;
}

/// Called as a connection starts opening: marks the checkout that asked for it, if any (the
/// in-memory SQLite keeper opens its connection outside any checkout).
pub(super) fn mark_creating() {
    let _ = CREATING.try_with(|creating| creating.set(true));
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
        pending: Some(Box::pin(CREATING.scope(Cell::new(false), get))),
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
        let creating = pending.as_mut().take_value().is_some_and(Cell::into_inner);
        if !creating {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let deadline = self.deadline;
        runtime.spawn(async move {
            if let Ok(Ok(object)) = tokio::time::timeout_at(deadline, pending).await {
                // Opened for a checkout that went away: nothing ran on it.
                Conn(object).give_back();
            }
        });
    }
}
