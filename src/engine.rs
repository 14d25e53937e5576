//! The engine: deadpool managing sqlx connections, with the counters and upkeep of one bind.
//!
//! A connection is handed out *dirty* and goes back to the idle list only when the session that
//! held it gives it back clean ([`Conn::give_back`]: no transaction open, no operation cut off
//! mid-flight). Whatever path forgets, panics or is cancelled therefore leaves a dirty
//! connection, which `recycle` refuses: the safe outcome is the default one.
//!
//! Two kinds of connection that would otherwise be thrown away come back: one whose session was
//! cut off mid-operation ([`recovery`]), and one still being opened when its checkout was
//! cancelled ([`checkout`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{self, PoolError};
use sqlx::{Connection, SqlStr};

use crate::backend::{Backend, Dialect, Options};
use crate::config::{IsolationLevel, PoolConfig};
use crate::error::is_connection_lost;
use crate::observe::{Discard, Observer, Stopwatch};
use crate::{DatabaseUrl, Error, Result};

mod checkout;
mod conn_manager;
mod host_status;
mod kept;
mod pin;
mod reactor;
mod recovery;
mod runtime_life;

pub use host_status::{HostRole, HostStatus};
pub(crate) use pin::{
    PIN_AUTOCOMMIT, PIN_BEGIN, PIN_COMMIT, PIN_ROLLBACK, PinCounts, pin_autocommit_end,
    pin_autocommit_next,
};

use conn_manager::{ConnManager, PooledConn};
use reactor::Reactor;
pub(crate) use reactor::{block_on, thread_locals_gone};

/// The connection is dead: the network or the server closed it (an I/O error, a crashed
/// SQLite worker, or the goodbye a server sends as it closes one). Unlike a protocol error (the
/// driver lost track of the conversation, as a cut-off MySQL read can leave it), this says
/// something about the bind's other connections: what killed this one may have killed them.
pub(crate) fn is_dead(err: &sqlx::Error) -> bool {
    is_connection_lost(err) && !matches!(err, sqlx::Error::Protocol(_))
}

/// What dbscope knows of a connection's default access mode, which read-only sessions that run
/// without BEGIN need the server to enforce (see "Read-only sessions" on
/// [`Session`](crate::Session)): set once per connection, changed only when the next session
/// needs the other mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Access {
    /// As the connection opened: dbscope has not changed it.
    #[default]
    AsOpened,
    /// Read-only, enforced by the server (PostgreSQL's `default_transaction_read_only`, MySQL's
    /// session access mode, with autocommit on): set by a read session, or by the connect
    /// options of a replica's pool. A read-write transaction on it says READ WRITE.
    ReadOnly,
    /// Unknown: a change was cut off before its answer, or the raw connection was lent since
    /// one. The next session states the mode it needs.
    Unknown,
}

/// What a pool's new connections are made as they open.
#[derive(Clone, Debug, Default)]
pub(crate) struct Setup {
    /// Run once by each, before its first checkout (see `Dialect::connection_setup`).
    pub(crate) sql: Option<SqlStr>,
    /// The default isolation level `sql` gives the connection, when it sets one.
    pub(crate) isolation: Option<IsolationLevel>,
    /// The connect options open it read-only (`Backend::read_only_at_connect`).
    pub(crate) read_only: bool,
}

/// A point-in-time view of a bind's pool.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BindStatus {
    /// The bind's name.
    pub name: String,
    /// `PostgreSQL`, `MySQL`, `SQLite` or `Any`.
    pub backend: &'static str,
    /// `max_connections` (0 once closed).
    pub max_connections: usize,
    /// Connections open, idle or in use.
    pub connections: usize,
    /// Open connections waiting in the pool.
    pub idle: usize,
    /// Connections held by sessions.
    pub in_use: usize,
    /// Sessions waiting for a connection (and connects finishing in the background for
    /// checkouts that were cancelled while their connection was being opened).
    pub waiting: usize,
    /// Connections opened since the bind was built (for an in-memory SQLite bind, including the
    /// one it holds aside to keep the database alive), a connection finished in the background
    /// for a cancelled checkout included.
    pub opened: u64,
    /// Connections thrown away: found dead (their socket's tokio runtime ended included),
    /// failing a health check or a ping (a ping cut off by a cancelled checkout included), or
    /// left in an unknown state that recovery could not clear. Connections closed at the end of
    /// their life (`idle_timeout`, `max_lifetime`, the manager's close) are not counted.
    pub discarded: u64,
    /// Connections of sessions cut off mid-operation (cancelled, or broken off by an error
    /// whose effect was unknown) that background recovery drained, rolled back, checked with
    /// the server and returned to the pool, instead of discarding them.
    pub recovered: u64,
    /// Checkouts that ran out of `acquire_timeout`.
    pub timeouts: u64,
    /// Failed attempts to open a connection.
    pub connect_errors: u64,
    /// The manager was closed or dropped.
    pub closed: bool,
    /// This is the bind's blocking face: the pool of its
    /// [`BlockingBind`](crate::blocking::BlockingBind), apart from the async one.
    pub blocking: bool,
    /// A bind with replicas: each host (its `url` first, then its `replicas`), its role, lag
    /// and health; the counts above are then those of the `url`'s pool. Empty for a plain bind.
    pub hosts: Vec<HostStatus>,
}

/// The pool of one bind: its connections, its counters, and the task that keeps them fresh.
/// A cheap handle.
pub(crate) struct Pool<DB: Backend>(Arc<Shared<DB>>);

struct Shared<DB: Backend> {
    bind: Arc<str>,
    url: DatabaseUrl,
    deadpool: managed::Pool<ConnManager<DB>>,
    acquire_timeout: Duration,
    min_connections: usize,
    /// How often the upkeep task runs; `None` when there is nothing to keep up.
    upkeep_period: Option<Duration>,
    /// An upkeep task runs (see [`UpkeepRunning`]).
    upkeep_started: AtomicBool,
    /// For in-memory SQLite: a connection held aside from the pool while the bind is open, so
    /// that discarding or expiring pooled connections never takes the database with them.
    keeper: Option<Keeper<DB>>,
    /// Set once the pool is [pinned](Pool::pin): every checkout gets this connection in turn.
    pin: std::sync::OnceLock<Arc<pin::Pin<DB>>>,
}

struct Keeper<DB: Backend> {
    held: AtomicBool,
    conn: tokio::sync::Mutex<Option<PooledConn<DB>>>,
}

/// Counters a pool keeps for its status snapshot.
#[derive(Debug, Default)]
struct Counters {
    created: AtomicU64,
    discarded: AtomicU64,
    recovered: AtomicU64,
    timeouts: AtomicU64,
    connect_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl<DB: Backend> Pool<DB> {
    /// A pool for `bind` that opens connections with `options`, each made as `setup` says as it
    /// opens; opens none yet.
    pub(crate) fn new(
        bind: Arc<str>,
        url: &DatabaseUrl,
        options: Options<DB>,
        dialect: Dialect,
        config: &PoolConfig,
        setup: Setup,
        observer: Arc<Observer>,
    ) -> Self {
        Self::build(
            bind,
            url,
            (options, dialect, setup),
            config,
            observer,
            false,
        )
    }

    /// [`new`](Pool::new), with connections that each open inside a [`Reactor`] of their own
    /// when `reactors` is set (and the backend has sockets).
    fn build(
        bind: Arc<str>,
        url: &DatabaseUrl,
        (options, dialect, setup): (Options<DB>, Dialect, Setup),
        config: &PoolConfig,
        observer: Arc<Observer>,
        reactors: bool,
    ) -> Self {
        let reactors = reactors && dialect != Dialect::Sqlite;
        let manager = ConnManager::new(
            bind.clone(),
            options,
            dialect,
            config,
            setup,
            observer,
            reactors,
        );
        // deadpool's build fails only for timeouts without a runtime; the pool applies its own
        // deadline around checkout and sets none of deadpool's.
        let deadpool = managed::Pool::builder(manager)
            .max_size(config.max_connections as usize)
            .build()
            .expect("a pool without deadpool timeouts always builds");
        Self(Arc::new(Shared {
            bind,
            url: url.clone(),
            deadpool,
            acquire_timeout: config.acquire_timeout,
            min_connections: config.min_connections as usize,
            upkeep_period: upkeep_period(config),
            upkeep_started: AtomicBool::new(false),
            keeper: is_in_memory_sqlite(url).then(|| Keeper {
                held: AtomicBool::new(false),
                conn: tokio::sync::Mutex::new(None),
            }),
            pin: std::sync::OnceLock::new(),
        }))
    }

    /// A second pool on the same database, with the same connect options (a second parse of
    /// `sqlite::memory:` would name another database) and a life of its own, for callers that
    /// wait on their own threads (a bind's blocking face): its connections each open inside a
    /// [`Reactor`] of their own, driven by the thread that uses them (see [`block_on`]), on
    /// backends with sockets.
    pub(crate) fn twin(&self, config: &PoolConfig, observer: Arc<Observer>) -> Self {
        let manager = self.0.deadpool.manager();
        let connect = (
            manager.options.clone(),
            manager.dialect,
            manager.setup.clone(),
        );
        let twin = Self::build(
            self.0.bind.clone(),
            &self.0.url,
            connect,
            config,
            observer,
            true,
        );
        // A pinned bind's blocking face runs on the same pinned connection.
        if let Some(pin) = self.0.pin.get() {
            let _ = twin.0.pin.set(pin.clone());
        }
        twin
    }

    /// A pool of the same bind on another host (a replica, a host a hook chose), with the same
    /// connection setup (reactors included), `options` for that host (which open connections
    /// read-only when `read_only`), and an observer of its own (its metrics are that host's).
    /// Opens nothing.
    pub(crate) fn sibling(
        &self,
        url: &DatabaseUrl,
        options: Options<DB>,
        read_only: bool,
        config: &PoolConfig,
        observer: Arc<Observer>,
    ) -> Self {
        let manager = self.0.deadpool.manager();
        let setup = Setup {
            read_only,
            ..manager.setup.clone()
        };
        let connect = (options, manager.dialect, setup);
        Self::build(
            self.0.bind.clone(),
            url,
            connect,
            config,
            observer,
            manager.reactors,
        )
    }

    /// The pool's metric handles and span attributes.
    pub(crate) fn observer(&self) -> &Observer {
        &self.0.deadpool.manager().observer
    }

    /// Pins the pool: checks a connection out, begins the outer transaction on it, and from now
    /// on hands that connection, in turn, to every checkout. See [`pin`](self::pin).
    /// `setup` runs inside the outer transaction, first (a test's fixtures).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) async fn pin(&self, setup: Vec<String>) -> Result<()> {
        // The connection may be one an earlier test kept, and is kept for the next one.
        let manager = self.0.deadpool.manager();
        manager.kept_across_tests.store(true, Ordering::Relaxed);
        let conn = self.checkout().await?;
        let Held::Pooled(object) = conn.0 else {
            return Err(Error::test_isolation(
                &self.0.bind,
                "the bind was pinned twice",
            ));
        };
        let dialect = self.0.deadpool.manager().dialect;
        // The outer transaction is read-write, whatever a read session made the connection.
        let reset = (object.access != Access::AsOpened).then(|| dialect.read_write_sql());
        let pinned = pin::Pin::begin(self.0.bind.clone(), dialect, object, reset, setup).await?;
        self.0
            .pin
            .set(Arc::new(pinned))
            .map_err(|_| Error::test_isolation(&self.0.bind, "the bind was pinned twice"))
    }

    /// Ends the pin: checks the outer transaction was never committed, rolls it back and
    /// returns the connection; waits up to `acquire_timeout` for the session holding it. `None`
    /// when the pool was never pinned.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) async fn unpin(&self) -> Option<Result<PinCounts>> {
        let pin = self.0.pin.get()?;
        Some(pin.end(self.0.acquire_timeout).await)
    }

    /// How the sessions on the pinned connection have ended so far; `None` when not pinned.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn pin_counts(&self) -> Option<PinCounts> {
        self.0.pin.get().map(|pin| pin.counts())
    }

    /// How long a checkout may wait.
    pub(crate) fn acquire_timeout(&self) -> Duration {
        self.0.acquire_timeout
    }

    /// Checks a connection out within `acquire_timeout`, creation and health check included.
    ///
    /// Cancel safe: dropped while waiting, it gives up its place; while a connection is being
    /// opened for it, the connect finishes in the background and the connection is pooled.
    pub(crate) fn checkout(&self) -> impl Future<Output = Result<Conn<DB>>> + Send + '_ {
        self.checkout_within(self.0.acquire_timeout)
    }

    /// [`checkout`](Pool::checkout) with what is left of an `acquire_timeout` already partly
    /// spent; a timeout still reports `acquire_timeout`.
    pub(crate) async fn checkout_within(&self, budget: Duration) -> Result<Conn<DB>> {
        let shared = &*self.0;
        let watch = Stopwatch::start();
        // tokio's clock, not the stopwatch's: a test runtime's paused clock must govern it.
        let deadline = tokio::time::Instant::now() + budget;
        if let Some(pin) = shared.pin.get() {
            return pin.checkout(deadline, shared.acquire_timeout).await;
        }
        self.start_upkeep();
        // One deadline for all of it: the SQLite keeper's first connection included.
        let get = async {
            if let Some(keeper) = &shared.keeper
                && !keeper.held.load(Ordering::Acquire)
            {
                // Boxed, like deadpool's `get` below: what a session's statement future holds
                // of a checkout is then a few words, not the kilobytes these rare paths take.
                Box::pin(shared.hold_database(keeper)).await?;
            }
            let get = checkout::get(&shared.deadpool, deadline);
            if shared.deadpool.status().available > 0 {
                // An idle connection to take: deadpool hands it over at once (a ping at most).
                return Ok(get.await);
            }
            let _pending = shared.metrics().pending();
            Ok(get.await)
        };
        match tokio::time::timeout_at(deadline, get).await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(Ok(mut obj))) => {
                shared.metrics().waited(watch);
                obj.count_used(&shared.deadpool.manager().observer);
                Ok(Conn(Held::Pooled(obj)))
            }
            Ok(Ok(Err(PoolError::Closed))) => Err(Error::closed(&shared.bind)),
            Ok(Ok(Err(PoolError::Backend(source)))) => Err(shared.connect_error(source)),
            Ok(Ok(Err(other))) => unreachable!(
                "deadpool reports only Closed and Backend without its own timeouts or hooks: {other}"
            ),
            Err(_elapsed) => {
                bump(&shared.counters().timeouts);
                shared.metrics().timed_out();
                Err(Error::timeout(&shared.bind, shared.acquire_timeout))
            }
        }
    }

    /// Opens a connection outside the pool, with the pool's connect options, within
    /// `acquire_timeout`: for work that must leave nothing on a pooled connection (a
    /// migration's advisory lock). For in-memory SQLite the keeper holds the database first, so
    /// that closing this connection does not take the database with it.
    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    ///
    /// Without `create`, it opens only a database that exists (SQLite makes none).
    pub(crate) async fn connect_unpooled(&self, create: bool) -> Result<DB::Connection> {
        let shared = &*self.0;
        if shared.deadpool.is_closed() {
            return Err(Error::closed(&shared.bind));
        }
        let connect = async {
            if let Some(keeper) = &shared.keeper {
                shared.hold_database(keeper).await?;
            }
            let options = &shared.deadpool.manager().options;
            let existing;
            let options = if create {
                options
            } else {
                existing = DB::without_creating(options);
                &existing
            };
            let mut conn = sqlx::ConnectOptions::connect(options)
                .await
                .map_err(|source| shared.connect_error(source))?;
            let manager = shared.deadpool.manager();
            if manager.setup.read_only {
                // A replica's pool opens its connections read-only; this one is for work that
                // writes (a migration on the host promoted since).
                let sql = SqlStr::from_static(manager.dialect.read_write_sql());
                let answers = DB::fetch_many(&mut conn, sql);
                futures_util::TryStreamExt::try_for_each(answers, |_| std::future::ready(Ok(())))
                    .await
                    .map_err(|source| shared.connect_error(source))?;
            }
            Ok(conn)
        };
        tokio::time::timeout(shared.acquire_timeout, connect)
            .await
            .unwrap_or_else(|_elapsed| Err(Error::timeout(&shared.bind, shared.acquire_timeout)))
    }

    /// A snapshot of the pool.
    pub(crate) fn status(&self) -> BindStatus {
        let shared = &*self.0;
        let status = shared.deadpool.status();
        let counters = shared.counters();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BindStatus {
            name: shared.bind.to_string(),
            backend: <DB as sqlx::Database>::NAME,
            max_connections: status.max_size,
            connections: status.size,
            idle: status.available,
            in_use: status.size - status.available,
            waiting: status.waiting,
            opened: load(&counters.created),
            discarded: load(&counters.discarded),
            recovered: load(&counters.recovered),
            timeouts: load(&counters.timeouts),
            connect_errors: load(&counters.connect_errors),
            closed: shared.deadpool.is_closed(),
            blocking: false,
            hosts: Vec::new(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.0.deadpool.is_closed()
    }

    /// The options this pool opens connections with: for a probe's own connection.
    pub(crate) fn connect_options(&self) -> &Options<DB> {
        &self.0.deadpool.manager().options
    }

    /// Connections of this pool held by sessions, and open: cheap enough for every routed
    /// checkout.
    pub(crate) fn load(&self) -> (usize, usize) {
        let status = self.0.deadpool.status();
        (status.size - status.available, status.size)
    }

    /// Closes the idle connections (those held by sessions stay theirs): the host is no longer
    /// what they were opened for, a primary that became a replica.
    pub(crate) fn drain_idle(&self) {
        for conn in self.0.deadpool.retain(|_, _| false).removed {
            close_gracefully(conn);
        }
    }

    /// Stops handing out connections and closes the idle ones politely; connections still held
    /// by sessions close when those give them back.
    pub(crate) fn close(&self) {
        let shared = &*self.0;
        // Take the idle connections first so they get a polite goodbye; closing the pool then
        // makes every waiter and every later checkout fail with `Closed`.
        let idle = shared.deadpool.retain(|_, _| false);
        shared.deadpool.close();
        for conn in idle.removed {
            close_gracefully(conn);
        }
        let keeper = shared
            .keeper
            .as_ref()
            .and_then(|k| k.conn.try_lock().ok()?.take());
        if let Some(conn) = keeper {
            close_gracefully(conn);
        }
    }

    /// Starts the task that expires idle and old connections and keeps `min_connections` open,
    /// on first use: a bind nobody uses costs nothing, not even a timer. Once; again on a later
    /// checkout's runtime if the runtime it ran on has ended.
    fn start_upkeep(&self) {
        let shared = &*self.0;
        if shared.upkeep_started.load(Ordering::Relaxed)
            || shared.upkeep_started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let Some(period) = shared.upkeep_period else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let running = UpkeepRunning(Arc::downgrade(&self.0));
        handle.spawn(async move {
            let running = running;
            loop {
                tokio::time::sleep(period).await;
                let Some(shared) = running.0.upgrade() else {
                    break;
                };
                if shared.deadpool.is_closed() {
                    break;
                }
                Pool(shared).upkeep().await;
            }
        });
    }

    /// One upkeep pass: close expired connections (and those whose runtime ended), then top up
    /// to `min_connections`.
    async fn upkeep(&self) {
        let shared = &*self.0;
        let manager = shared.deadpool.manager();
        let status = shared.deadpool.status();
        let mut removable = status.size.saturating_sub(shared.min_connections);
        let removed = shared.deadpool.retain(|conn, metrics| {
            if manager.lost_with_its_runtime(conn) || manager.is_expired(&metrics) {
                removable = removable.saturating_sub(1);
                return false;
            }
            if removable > 0 && manager.is_idle_too_long(conn) {
                removable -= 1;
                return false;
            }
            true
        });
        for conn in removed.removed {
            close_gracefully(conn);
        }
        // deadpool hands out its idle connections before it opens one, so the upkeep takes
        // every idle connection and, beside them, one per connection missing, all at once: the
        // missing ones open side by side, and the idle ones are held (from sessions, which may
        // wait meanwhile) for one connect's time. Each take is deadpool's non-blocking one: with
        // no slot free (sessions hold them all) it takes nothing rather than wait behind them,
        // and it stays out of the sessions' metrics (waits, pending, timeouts, use time).
        let status = shared.deadpool.status();
        let missing = shared.min_connections.saturating_sub(status.size);
        if missing == 0 {
            return;
        }
        if let Some(keeper) = &shared.keeper
            && shared.hold_database(keeper).await.is_err()
        {
            return;
        }
        let at_once = managed::Timeouts {
            wait: Some(Duration::ZERO),
            create: None,
            recycle: None,
        };
        let takes = (0..missing + status.available).map(|_| {
            tokio::time::timeout(
                shared.acquire_timeout,
                shared.deadpool.timeout_get(&at_once),
            )
        });
        for taken in futures_util::future::join_all(takes).await {
            match taken {
                Ok(Ok(mut obj)) => {
                    obj.clean = true; // nothing ran on it
                    drop(obj); // back to the idle list, its idle clock untouched
                }
                Ok(Err(PoolError::Timeout(_) | PoolError::Closed)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(bind = %shared.bind, error = %e, "could not open min_connections");
                }
                Err(_elapsed) => {
                    tracing::warn!(bind = %shared.bind, "could not open min_connections within acquire_timeout");
                }
            }
        }
    }
}

impl<DB: Backend> Clone for Pool<DB> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<DB: Backend> Shared<DB> {
    fn counters(&self) -> &Counters {
        &self.deadpool.manager().counters
    }

    fn metrics(&self) -> &crate::observe::PoolMetrics {
        &self.deadpool.manager().observer.metrics
    }

    fn connect_error(&self, source: sqlx::Error) -> Error {
        Error::connect(&self.bind, &self.url.redacted(), source)
    }

    /// Opens the keeper connection of an in-memory SQLite bind, once.
    async fn hold_database(&self, keeper: &Keeper<DB>) -> Result<()> {
        if keeper.held.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut slot = keeper.conn.lock().await;
        if slot.is_none() && !self.deadpool.is_closed() {
            let conn = managed::Manager::create(self.deadpool.manager())
                .await
                .map_err(|source| self.connect_error(source))?;
            // Counted idle as it opened, like a pool connection; it never enters the pool, so
            // nothing would count it gone: `db.client.connection.count` shows the pool's alone.
            self.metrics().gone(false);
            *slot = Some(conn);
            keeper.held.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// An in-memory SQLite database lives only as long as one of its connections.
fn is_in_memory_sqlite(url: &DatabaseUrl) -> bool {
    let raw = url.expose();
    raw.starts_with("sqlite:") && (raw.contains(":memory:") || raw.contains("mode=memory"))
}

/// A quarter of the shortest expiry, so a connection outlives its limit by 25 % at most; between
/// 50 ms and 30 s. With no expiry the task runs only to keep `min_connections` open.
fn upkeep_period(pool: &PoolConfig) -> Option<Duration> {
    let shortest = [pool.idle_timeout, pool.max_lifetime]
        .into_iter()
        .flatten()
        .min();
    if shortest.is_none() && pool.min_connections == 0 {
        return None;
    }
    let period = shortest.map_or(Duration::from_secs(30), |d| d / 4);
    Some(period.clamp(Duration::from_millis(50), Duration::from_secs(30)))
}

/// When a pooled connection was handed out: deadpool's last recycle, or its creation.
fn checked_out_at<DB: Backend>(obj: &managed::Object<ConnManager<DB>>) -> Instant {
    let metrics = managed::Object::metrics(obj);
    metrics.recycled.unwrap_or(metrics.created)
}

/// A connection checked out of a bind's pool, dirty until [given back](Conn::give_back); or,
/// on a pinned pool, its turn on the pinned connection.
pub(crate) struct Conn<DB: Backend>(Held<DB>);

enum Held<DB: Backend> {
    Pooled(managed::Object<ConnManager<DB>>),
    Pinned(pin::PinGuard<DB>),
}

impl<DB: Backend> Conn<DB> {
    /// The sqlx connection, for an operation. A connection with a [`Reactor`] is noted as the
    /// one whose socket the operation polled by [`block_on`] on this thread waits on.
    pub(crate) fn raw(&mut self) -> &mut DB::Connection {
        match &mut self.0 {
            Held::Pooled(obj) => {
                if let Some(reactor) = &obj.reactor {
                    reactor.touch();
                }
                &mut obj.raw
            }
            Held::Pinned(pin) => pin.raw(),
        }
    }

    /// The reactor the connection's socket is registered with, if it has one of its own.
    fn reactor(&self) -> Option<&Reactor> {
        match &self.0 {
            Held::Pooled(obj) => obj.reactor.as_ref(),
            Held::Pinned(_) => None,
        }
    }

    /// The operation polled on this thread is done with this connection: its waits need not
    /// drive the connection's reactor any more.
    fn stop_driving(&self) {
        if let Some(reactor) = self.reactor() {
            reactor.forget();
        }
    }

    /// Runs `work` on this connection in the background, where its socket is driven: a
    /// connection with a [`Reactor`] on a thread of its own inside it, any other on the current
    /// tokio runtime. With neither (no runtime), or late in the thread's exit (its thread-locals
    /// going), `work` never runs and the connection is discarded: the server rolls back.
    pub(crate) fn in_background<F>(self, work: impl FnOnce(Self) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.stop_driving();
        let runtime = tokio::runtime::Handle::try_current();
        if matches!(&runtime, Err(e) if e.is_thread_local_destroyed()) {
            return self.discard();
        }
        if let Some(reactor) = self.reactor().cloned() {
            return reactor.spawn(work(self));
        }
        match runtime {
            Ok(runtime) => drop(runtime.spawn(work(self))),
            Err(_) => self.discard(),
        }
    }

    /// Whether this is a pinned connection, inside a test's outer transaction: its sessions
    /// begin and end savepoints ([`PIN_BEGIN`] …) instead of transactions.
    pub(crate) fn is_pinned(&self) -> bool {
        matches!(self.0, Held::Pinned(_))
    }

    /// Counts how a session's transaction ended on a pinned connection; nothing otherwise.
    pub(crate) fn ended(&self, committed: bool) {
        if let Held::Pinned(pin) = &self.0 {
            pin.ended(committed);
        }
    }

    /// Whether the connection's statements open transactions themselves (MySQL's
    /// `autocommit = 0`, from the bind's connection setup): a transaction then needs no BEGIN.
    /// Never a test's pinned connection: its sessions' transactions are savepoints.
    pub(crate) fn has_implicit_transactions(&self) -> bool {
        match &self.0 {
            Held::Pooled(obj) => obj.implicit_transactions,
            Held::Pinned(_) => false,
        }
    }

    /// Records that the connection is back to one transaction per statement (`autocommit = 1`),
    /// for as long as it lives.
    pub(crate) fn lost_implicit_transactions(&mut self) {
        if let Held::Pooled(obj) = &mut self.0 {
            obj.implicit_transactions = false;
        }
    }

    /// The connection's default access mode, as far as dbscope knows. A test's pinned
    /// connection is never changed: always [`Access::AsOpened`].
    pub(crate) fn access(&self) -> Access {
        match &self.0 {
            Held::Pooled(obj) => obj.access,
            Held::Pinned(_) => Access::AsOpened,
        }
    }

    /// Records the connection's default access mode: [`Access::Unknown`] before a change is
    /// sent, the new mode once the server has answered it.
    pub(crate) fn set_access(&mut self, access: Access) {
        if let Held::Pooled(obj) = &mut self.0 {
            obj.access = access;
        }
    }

    /// The connection's default isolation level, once known.
    pub(crate) fn default_isolation(&self) -> Option<IsolationLevel> {
        match &self.0 {
            Held::Pooled(obj) => obj.isolation,
            Held::Pinned(_) => None,
        }
    }

    /// Records the connection's default isolation level, as the server named it.
    pub(crate) fn learned_isolation(&mut self, level: IsolationLevel) {
        if let Held::Pooled(obj) = &mut self.0 {
            obj.isolation = Some(level);
        }
    }

    /// The raw connection is lent out: what its borrower may change with a `SET` (the access
    /// mode dbscope set, the default isolation) is known no more.
    pub(crate) fn lent(&mut self) {
        if let Held::Pooled(obj) = &mut self.0 {
            if obj.access != Access::AsOpened {
                obj.access = Access::Unknown;
            }
            obj.isolation = None;
        }
    }

    /// Returns a connection its holder knows is clean: to the idle list, or, once the pool is
    /// closed, to the server with a polite goodbye. A pinned one goes to the next in line.
    pub(crate) fn give_back(self) {
        self.stop_driving();
        let mut obj = match self.0 {
            Held::Pooled(obj) => obj,
            Held::Pinned(pin) => return drop(pin),
        };
        obj.clean = true;
        let now = Instant::now();
        obj.idle_since = now;
        let since = checked_out_at(&obj);
        match managed::Object::pool(&obj) {
            Some(pool) if !pool.is_closed() => {
                let observer = &pool.manager().observer;
                observer.metrics.used_from_to(since, now);
                obj.count_idle(observer);
                drop(obj);
            }
            _ => close_gracefully(managed::Object::take(obj)),
        }
    }

    /// Takes a pinned connection whose outer transaction ended cleanly out of the pool, and
    /// [keeps](kept) it for the next test of the same options on this runtime; gives it back
    /// where connections are not kept.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn keep_for_next_test(self) {
        let Held::Pooled(mut obj) = self.0 else {
            return self.give_back();
        };
        let Some(pool) = managed::Object::pool(&obj) else {
            return Conn(Held::Pooled(obj)).give_back();
        };
        let manager = pool.manager();
        let (Some(key), None) = (manager.kept_key(), &obj.reactor) else {
            return Conn(Held::Pooled(obj)).give_back();
        };
        manager.observer.metrics.used_since(checked_out_at(&obj));
        // As the rollback left it: read-write, as the pin made it; its level learned again.
        obj.access = Access::AsOpened;
        obj.isolation = manager.setup.isolation;
        kept::keep(key, managed::Object::take(obj));
    }

    /// Takes the connection out of the pool for good and closes it without a goodbye: for
    /// connections whose state is unknown, where the server must see the socket close and roll
    /// back. A pinned one cannot go: the pin breaks instead.
    pub(crate) fn discard(self) {
        self.discard_because(Discard::UnknownState);
    }

    /// [`discard`](Conn::discard), counted under `reason`; a pinned connection breaks its pin.
    fn discard_because(self, reason: Discard) {
        self.stop_driving();
        let obj = match self.0 {
            Held::Pooled(obj) => obj,
            Held::Pinned(pin) => {
                return pin.break_with(match reason {
                    Discard::Dead => {
                        "the connection was lost (the server or the network closed it)"
                    }
                    _ => "a session left the connection in an unknown state",
                });
            }
        };
        let since = checked_out_at(&obj);
        let pool = managed::Object::pool(&obj);
        drop(managed::Object::take(obj));
        if let Some(pool) = pool {
            let manager = pool.manager();
            bump(&manager.counters.discarded);
            manager.observer.metrics.discarded(reason);
            manager.observer.metrics.used_since(since);
        }
    }

    /// [`discard`](Conn::discard) for a connection found dead (the server or the network closed
    /// it): the bind's other connections last seen alive before now are pinged before reuse,
    /// since whatever killed this one (a restart, a failover) likely killed them too.
    pub(crate) fn discard_dead(self) {
        if let Some(manager) = self.manager() {
            manager.saw_dead();
        }
        self.discard_because(Discard::Dead);
    }

    /// The bind's connection manager, while its pool lives (never for a pinned connection).
    fn manager(&self) -> Option<ManagerRef<DB>> {
        match &self.0 {
            Held::Pooled(obj) => managed::Object::pool(obj).map(ManagerRef),
            Held::Pinned(_) => None,
        }
    }

    /// The dialect of the connection's bind, while its pool lives.
    fn dialect(&self) -> Option<Dialect> {
        match &self.0 {
            Held::Pooled(_) => self.manager().map(|m| m.dialect),
            Held::Pinned(pin) => Some(pin.dialect()),
        }
    }
}

/// A connection's pool, seen as its manager.
struct ManagerRef<DB: Backend>(managed::Pool<ConnManager<DB>>);

impl<DB: Backend> std::ops::Deref for ManagerRef<DB> {
    type Target = ConnManager<DB>;

    fn deref(&self) -> &ConnManager<DB> {
        self.0.manager()
    }
}

/// Held by the upkeep's task: when the task ends, however (the pool closed or dropped, or the
/// runtime it ran on shut down: a test's, a job's), the pool learns that no upkeep runs, and
/// the next checkout starts another on its own runtime.
struct UpkeepRunning<DB: Backend>(std::sync::Weak<Shared<DB>>);

impl<DB: Backend> Drop for UpkeepRunning<DB> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.upkeep_started.store(false, Ordering::Relaxed);
        }
    }
}

/// Closes a healthy connection politely (a Terminate message), in the background, so the server
/// logs no broken connection: a connection with a [`Reactor`] on a thread of its own inside it,
/// any other on the current runtime when there is one (without, it is dropped: the socket
/// closes).
fn close_gracefully<DB: Backend>(conn: PooledConn<DB>) {
    let reactor = conn.reactor.clone();
    let close = async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.raw.close()).await;
    };
    if let Some(reactor) = reactor {
        return reactor.spawn(close);
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(close);
    }
}
