//! What deadpool calls to open, check and expire the connections of one bind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use futures_util::TryStreamExt;
use sqlx::{ConnectOptions, Connection, SqlStr};

use super::checkout;
use super::reactor::Reactor;
use super::runtime_life::RuntimeLife;
use super::{Access, Counters, Setup, bump, is_dead};
use crate::backend::{Backend, Dialect, Options};
use crate::config::{HealthCheck, IsolationLevel};
use crate::observe::{Discard, Observer, Stopwatch};

/// A pooled sqlx connection and what the pool needs to know about it.
pub(super) struct PooledConn<DB: Backend> {
    pub(super) raw: DB::Connection,
    /// Set when its session gives it back clean: no transaction, nothing in flight.
    pub(super) clean: bool,
    pub(super) idle_since: Instant,
    /// The bind's [death count](ConnManager::deaths) when this connection was last known
    /// alive (opened, or answered a ping).
    alive_at: u64,
    /// The connection ran the bind's [setup](ConnManager::setup) and still has it: its
    /// statements open transactions themselves (MySQL's `autocommit = 0`).
    pub(super) implicit_transactions: bool,
    /// Counted as used in the pool's connection gauges (from its checkout until it is given
    /// back, or leaves the pool); otherwise counted as idle.
    pub(super) counted_used: bool,
    /// Its default access mode, as far as dbscope knows.
    pub(super) access: Access,
    /// Its default isolation level, once known: from the setup, or asked of the server.
    pub(super) isolation: Option<IsolationLevel>,
    /// The runtime the connection's socket is registered with, in a pool opened with
    /// [reactors](ConnManager::reactors). Declared after `raw`, so that the socket goes first.
    pub(super) reactor: Option<Reactor>,
    /// The life of the tokio runtime the connection's socket belongs to, in a pool without
    /// reactors, on backends with sockets: once it is gone, so is the socket (see
    /// [`runtime_life`](super::runtime_life)).
    runtime: Option<RuntimeLife>,
}

impl<DB: Backend> PooledConn<DB> {
    /// Moves the connection to the used count, when a session takes it.
    pub(super) fn count_used(&mut self, observer: &Observer) {
        if !self.counted_used {
            self.counted_used = true;
            observer.metrics.now_used();
        }
    }

    /// Moves the connection back to the idle count, when it is given back.
    pub(super) fn count_idle(&mut self, observer: &Observer) {
        if self.counted_used {
            self.counted_used = false;
            observer.metrics.now_idle();
        }
    }
}

/// Opens, checks and expires the connections of one bind, for deadpool.
pub(super) struct ConnManager<DB: Backend> {
    pub(super) bind: Arc<str>,
    pub(super) options: Options<DB>,
    pub(super) dialect: Dialect,
    pub(super) health_check: HealthCheck,
    pub(super) idle_timeout: Option<Duration>,
    /// `min_connections` is above 0: the upkeep alone applies `idle_timeout`, above the minimum
    /// (a checkout cannot tell a connection kept for the minimum from one above it).
    keeps_minimum: bool,
    pub(super) max_lifetime: Option<Duration>,
    pub(super) counters: Counters,
    pub(super) observer: Arc<Observer>,
    /// What each new connection is made as it opens (a failure of its SQL fails the connect).
    pub(super) setup: Setup,
    /// Dead connections seen on this bind so far. A server restart (or a firewall's purge) kills
    /// every connection at once, so when one is found dead, the others last known alive before
    /// that are suspect: each is pinged on its next checkout, whatever `health_check` says.
    deaths: AtomicU64,
    /// Each connection opens inside a [`Reactor`] of its own, which the thread using it drives
    /// (see [`reactor`](super::reactor)); set for a bind's blocking face, on backends with
    /// sockets.
    pub(super) reactors: bool,
    /// Set once the pool is pinned for a test: its connection is [kept](super::kept) for the
    /// next test when the test ends cleanly, and taken from there instead of opened.
    pub(super) kept_across_tests: AtomicBool,
}

impl<DB: Backend> ConnManager<DB> {
    pub(super) fn new(
        bind: Arc<str>,
        options: Options<DB>,
        dialect: Dialect,
        pool: &crate::config::PoolConfig,
        setup: Setup,
        observer: Arc<Observer>,
        reactors: bool,
    ) -> Self {
        Self {
            reactors,
            bind,
            options,
            dialect,
            setup,
            health_check: pool.health_check,
            idle_timeout: pool.idle_timeout,
            keeps_minimum: pool.min_connections > 0,
            max_lifetime: pool.max_lifetime,
            counters: Counters::default(),
            observer,
            deaths: AtomicU64::new(0),
            kept_across_tests: AtomicBool::new(false),
        }
    }

    /// What a connection of this pool is [kept](super::kept) under from one test to the next:
    /// all its connect options and setup. `None` where connections are not kept: backends other
    /// than PostgreSQL (MySQL's session variables outlive a rollback, and sqlx cannot reset a
    /// MySQL session), and blocking faces (each connection has a runtime of its own).
    pub(super) fn kept_key(&self) -> Option<String> {
        self.keeps_connections().then(|| {
            format!(
                "{}\u{0}{:?}\u{0}{:?}",
                self.bind,
                self.options,
                self.setup.sql.as_ref().map(SqlStr::as_str)
            )
        })
    }

    /// Whether this pool's pinned connection is [kept](super::kept) for the next test.
    pub(super) fn keeps_connections(&self) -> bool {
        self.dialect == Dialect::Postgres && !self.reactors && DB::NAME == "PostgreSQL"
    }

    /// A connection kept from an earlier test of the same runtime and options, alive (pinged);
    /// dead ones on the way are dropped.
    async fn take_kept(&self) -> Option<PooledConn<DB>> {
        if !self.kept_across_tests.load(Ordering::Relaxed) {
            return None;
        }
        let key = self.kept_key()?;
        while let Some(mut conn) = super::kept::take::<PooledConn<DB>>(&key) {
            if conn.raw.ping().await.is_ok() {
                conn.clean = false;
                conn.idle_since = Instant::now();
                conn.alive_at = self.deaths.load(Ordering::Relaxed);
                conn.counted_used = false;
                conn.isolation = self.setup.isolation;
                self.observer.metrics.opened();
                tracing::debug!(bind = %self.bind, "took a connection kept from an earlier test");
                return Some(conn);
            }
        }
        None
    }

    /// Records a connection found dead: the connections last seen alive before now are suspect.
    pub(super) fn saw_dead(&self) {
        self.deaths.fetch_add(1, Ordering::Relaxed);
    }

    /// Past its lifetime: close it, whatever `min_connections` says (a fresh one replaces it).
    pub(super) fn is_expired(&self, metrics: &Metrics) -> bool {
        self.max_lifetime.is_some_and(|max| metrics.age() >= max)
    }

    /// Whether `conn`'s socket died with the tokio runtime it opened in (see
    /// [`runtime_life`](super::runtime_life)); such a connection is counted as discarded here.
    pub(super) fn lost_with_its_runtime(&self, conn: &PooledConn<DB>) -> bool {
        if !conn.runtime.as_ref().is_some_and(RuntimeLife::is_gone) {
            return false;
        }
        bump(&self.counters.discarded);
        self.observer.metrics.discarded(Discard::Dead);
        tracing::debug!(bind = %self.bind, "a connection's socket ended with the tokio runtime it opened in; throwing it away");
        true
    }

    /// Idle for longer than `idle_timeout`.
    pub(super) fn is_idle_too_long(&self, conn: &PooledConn<DB>) -> bool {
        self.idle_timeout
            .is_some_and(|max| conn.idle_since.elapsed() >= max)
    }

    /// Pings a connection about to be handed out; a failure throws it away, and counts it.
    /// A connection with a reactor is pinged only by a thread that drives it.
    async fn check(&self, conn: &mut PooledConn<DB>) -> RecycleResult<sqlx::Error> {
        if let Some(reactor) = conn.reactor.clone() {
            if !reactor.touch() {
                // No thread drives this connection's socket here (the pool's upkeep, which
                // gives it back unused): the checkout that uses it pings it.
                return Ok(());
            }
            // Not marked worth finishing: a checkout cut off here (a routed one, rerouted
            // away from a silent host) could only finish the ping on a runtime that does not
            // drive this socket, holding the slot until the deadline for nothing. Dropped, the
            // ping costs the connection at once instead.
            let pinged = self.ping(conn).await;
            reactor.forget();
            return pinged;
        }
        // A checkout cancelled from here on lets the ping finish in the background.
        checkout::mark_worth_finishing();
        self.ping(conn).await
    }

    async fn ping(&self, conn: &mut PooledConn<DB>) -> RecycleResult<sqlx::Error> {
        let deaths = self.deaths.load(Ordering::Relaxed);
        let cut_off = CountOnDrop(Some((&self.counters.discarded, &self.observer)));
        let result = conn.raw.ping().await;
        cut_off.disarm();
        match result {
            Ok(()) => {
                conn.alive_at = deaths;
                Ok(())
            }
            Err(e) => {
                bump(&self.counters.discarded);
                self.observer.metrics.discarded(Discard::FailedPing);
                if is_dead(&e) {
                    self.saw_dead();
                }
                tracing::debug!(bind = %self.bind, error = %e, "ping failed; opening another connection");
                Err(RecycleError::Backend(e))
            }
        }
    }
}

impl<DB: Backend> managed::Manager for ConnManager<DB> {
    type Type = PooledConn<DB>;
    type Error = sqlx::Error;

    fn create(&self) -> impl Future<Output = Result<PooledConn<DB>, sqlx::Error>> + Send {
        // Boxed: deadpool's `get` holds this future, and every checkout's box holds that one;
        // inline, the rare connect would make the box of every checkout half as large again
        // (1,448 bytes against 920: past 1 KiB, too large for glibc's per-thread cache of freed
        // blocks).
        Box::pin(self.create_pooled())
    }

    async fn recycle(
        &self,
        conn: &mut PooledConn<DB>,
        metrics: &Metrics,
    ) -> RecycleResult<sqlx::Error> {
        if self.lost_with_its_runtime(conn) {
            return Err(RecycleError::message(
                "the tokio runtime the connection opened in has ended",
            ));
        }
        if !conn.clean {
            // Unreachable through sessions (they discard dirty connections themselves); kept as
            // the last line of defence against reusing one.
            bump(&self.counters.discarded);
            self.observer.metrics.discarded(Discard::UnknownState);
            return Err(RecycleError::message("connection was not released clean"));
        }
        // One clock reading for the three ages.
        let now = Instant::now();
        let idle = now.saturating_duration_since(conn.idle_since);
        let age = now.saturating_duration_since(metrics.created);
        if self.max_lifetime.is_some_and(|max| age >= max)
            || (!self.keeps_minimum && self.idle_timeout.is_some_and(|max| idle >= max))
        {
            return Err(RecycleError::message("connection expired"));
        }
        let suspect = conn.alive_at < self.deaths.load(Ordering::Relaxed);
        if suspect || self.health_check.should_ping(idle) {
            // Boxed: the ping is the rare path; inline, it would make every checkout's future
            // (deadpool's `get`, which holds this one) several times larger.
            Box::pin(self.check(conn)).await?;
        }
        conn.clean = false;
        Ok(())
    }

    /// Every way out of the pool passes here (taken, expired, failed, over the size), so the
    /// connection gauges stay exact.
    fn detach(&self, conn: &mut PooledConn<DB>) {
        self.observer.metrics.gone(conn.counted_used);
    }
}

impl<DB: Backend> ConnManager<DB> {
    /// A new connection for the pool: one kept from an earlier test, or a fresh one.
    async fn create_pooled(&self) -> Result<PooledConn<DB>, sqlx::Error> {
        // A checkout cancelled from here on lets the connect finish in the background.
        checkout::mark_worth_finishing();
        if let Some(kept) = self.take_kept().await {
            return Ok(kept);
        }
        let alive_at = self.deaths.load(Ordering::Relaxed);
        let watch = Stopwatch::start();
        let (raw, reactor, runtime) = self
            .open()
            .await
            .inspect_err(|_| bump(&self.counters.connect_errors))?;
        bump(&self.counters.created);
        self.observer.metrics.created(watch);
        self.observer.metrics.opened();
        tracing::debug!(bind = %self.bind, "opened a connection");
        Ok(PooledConn {
            raw,
            clean: false,
            idle_since: Instant::now(),
            alive_at,
            counted_used: false,
            implicit_transactions: self.setup.sql.is_some(),
            access: if self.setup.read_only {
                Access::ReadOnly
            } else {
                Access::AsOpened
            },
            isolation: self.setup.isolation,
            reactor,
            runtime,
        })
    }

    /// Connects and runs the setup; in a pool with reactors, inside a new reactor, on a thread
    /// of its own (the socket registers with the runtime it opens in), from wherever the
    /// checkout runs; otherwise in the caller's runtime, whose life it returns on backends with
    /// sockets.
    async fn open(
        &self,
    ) -> Result<(DB::Connection, Option<Reactor>, Option<RuntimeLife>), sqlx::Error> {
        let connect = connect::<DB>(self.options.clone(), self.setup.sql.clone());
        if !self.reactors {
            let runtime = if self.dialect == Dialect::Sqlite {
                // A thread of its own per connection, no socket: it outlives any runtime.
                None
            } else {
                RuntimeLife::current()
            };
            return Ok((connect.await?, None, runtime));
        }
        let reactor = Reactor::new()?;
        let raw = reactor.run_apart(connect).await.unwrap_or_else(|| {
            Err(sqlx::Error::Io(std::io::Error::other(
                "could not start the thread that opens the connection",
            )))
        })?;
        Ok((raw, Some(reactor), None))
    }
}

/// Opens a connection with `options` and runs `setup` on it.
async fn connect<DB: Backend>(
    options: Options<DB>,
    setup: Option<SqlStr>,
) -> Result<DB::Connection, sqlx::Error> {
    let mut raw = options.connect().await?;
    if let Some(setup) = setup {
        DB::fetch_many(&mut raw, setup)
            .try_for_each(|_| std::future::ready(Ok(())))
            .await?;
    }
    Ok(raw)
}

/// Bumps a counter when dropped armed: a ping cut off (its checkout cancelled, and the time to
/// finish it in the background up) leaves its connection in an unknown state, and deadpool
/// throws it away.
struct CountOnDrop<'a>(Option<(&'a AtomicU64, &'a Observer)>);

impl CountOnDrop<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        if let Some((counter, observer)) = self.0 {
            bump(counter);
            observer.metrics.discarded(Discard::FailedPing);
        }
    }
}
