//! The engine: deadpool managing sqlx connections.
//!
//! A connection is handed out *dirty* and goes back to the idle list only when the session that
//! held it marks it clean (no transaction open, no operation cut off mid-flight). Whatever path
//! forgets, panics or is cancelled therefore leaves a dirty connection, which `recycle` refuses:
//! the safe outcome is the default one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use sqlx::{ConnectOptions, Connection};

use crate::backend::{Backend, Options};
use crate::config::HealthCheck;

/// A pooled sqlx connection and what the pool needs to know about it.
pub(crate) struct PooledConn<DB: Backend> {
    pub(crate) raw: DB::Connection,
    /// Set by the session that releases it: no transaction, nothing in flight.
    clean: bool,
    idle_since: Instant,
}

impl<DB: Backend> PooledConn<DB> {
    /// Marks the connection clean and idle from now: it may go back to the idle list.
    pub(crate) fn mark_clean(&mut self) {
        self.clean = true;
        self.idle_since = Instant::now();
    }

    pub(crate) fn idle_for(&self) -> Duration {
        self.idle_since.elapsed()
    }
}

/// Counters a bind keeps for its status snapshot.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) created: AtomicU64,
    pub(crate) discarded: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens, checks and expires the connections of one bind.
pub(crate) struct ConnManager<DB: Backend> {
    pub(crate) bind: Arc<str>,
    /// Also the options of the bind's blocking twin, which must reach the same database (a second
    /// parse of `sqlite::memory:` would name another one).
    pub(crate) options: Options<DB>,
    health_check: HealthCheck,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    pub(crate) counters: Arc<Counters>,
}

impl<DB: Backend> ConnManager<DB> {
    pub(crate) fn new(
        bind: Arc<str>,
        options: Options<DB>,
        pool: &crate::config::PoolConfig,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            bind,
            options,
            health_check: pool.health_check,
            idle_timeout: pool.idle_timeout,
            max_lifetime: pool.max_lifetime,
            counters,
        }
    }

    /// Past its lifetime: close it, whatever `min_connections` says (a fresh one replaces it).
    pub(crate) fn is_expired(&self, metrics: &Metrics) -> bool {
        self.max_lifetime.is_some_and(|max| metrics.age() >= max)
    }

    /// Idle for longer than `idle_timeout`.
    pub(crate) fn is_idle_too_long(&self, conn: &PooledConn<DB>) -> bool {
        self.idle_timeout.is_some_and(|max| conn.idle_for() >= max)
    }
}

impl<DB: Backend> managed::Manager for ConnManager<DB> {
    type Type = PooledConn<DB>;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PooledConn<DB>, sqlx::Error> {
        let raw = self.options.connect().await.inspect_err(|_| {
            Counters::bump(&self.counters.connect_errors);
        })?;
        Counters::bump(&self.counters.created);
        tracing::debug!(bind = %self.bind, "opened a connection");
        Ok(PooledConn {
            raw,
            clean: false,
            idle_since: Instant::now(),
        })
    }

    async fn recycle(
        &self,
        conn: &mut PooledConn<DB>,
        metrics: &Metrics,
    ) -> RecycleResult<sqlx::Error> {
        if !conn.clean {
            // Unreachable through sessions (they discard dirty connections themselves); kept as
            // the last line of defence against reusing one.
            Counters::bump(&self.counters.discarded);
            return Err(RecycleError::message("connection was not released clean"));
        }
        if self.is_expired(metrics) || self.is_idle_too_long(conn) {
            return Err(RecycleError::message("connection expired"));
        }
        if self.health_check.should_ping(conn.idle_for()) {
            conn.raw.ping().await.map_err(|e| {
                tracing::debug!(bind = %self.bind, error = %e, "ping failed; opening another connection");
                RecycleError::Backend(e)
            })?;
        }
        conn.clean = false;
        Ok(())
    }
}

/// The pool of one bind.
pub(crate) type Pool<DB> = managed::Pool<ConnManager<DB>>;

/// A connection checked out of a bind's pool.
pub(crate) type Object<DB> = managed::Object<ConnManager<DB>>;

/// Returns a connection its holder knows is clean: to the idle list, or, once the pool is
/// closed, to the server with a polite goodbye.
pub(crate) fn release<DB: Backend>(mut obj: Object<DB>) {
    obj.mark_clean();
    match managed::Object::pool(&obj) {
        Some(pool) if !pool.is_closed() => drop(obj),
        _ => close_gracefully(managed::Object::take(obj)),
    }
}

/// Takes a connection out of the pool for good and closes it without a goodbye: for connections
/// whose state is unknown, where the server must see the socket close and roll back.
pub(crate) fn discard<DB: Backend>(obj: Object<DB>) {
    if let Some(pool) = managed::Object::pool(&obj) {
        Counters::bump(&pool.manager().counters.discarded);
    }
    drop(managed::Object::take(obj));
}

/// Closes a healthy connection politely (a Terminate message), in the background when a runtime
/// is there, so the server logs no broken connection.
pub(crate) fn close_gracefully<DB: Backend>(conn: PooledConn<DB>) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.raw.close()).await;
        });
    }
}
