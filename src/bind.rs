use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool::managed::{Manager as _, PoolError};
use futures_core::future::BoxFuture;

use crate::backend::{Backend, Dialect, TxSql};
use crate::config::{BindConfig, PoolConfig, SessionConfig};
use crate::engine::{self, ConnManager, Counters, Object, Pool, PooledConn};
use crate::{DatabaseUrl, Error, Result, Session};

/// One named database: its engine (a pool of sqlx connections) and its session defaults.
///
/// A cheap handle (`Clone` is an `Arc` clone): keep one where your code opens sessions, rather
/// than asking the [`BindManager`](crate::BindManager) each time. `DB` is the sqlx database type
/// (`Postgres`, `MySql`, `Sqlite` or `Any`).
pub struct Bind<DB: Backend> {
    pub(crate) shared: Arc<BindShared<DB>>,
}

pub(crate) struct BindShared<DB: Backend> {
    pub(crate) name: Arc<str>,
    url: DatabaseUrl,
    pub(crate) dialect: Dialect,
    pub(crate) pool: Pool<DB>,
    pub(crate) acquire_timeout: Duration,
    pub(crate) session: SessionConfig,
    /// The transaction SQL for the bind's session defaults, built once.
    pub(crate) tx_sql: TxSql,
    min_connections: usize,
    /// How often the maintenance task runs; `None` when there is nothing to maintain.
    maintenance_period: Option<Duration>,
    maintenance_started: AtomicBool,
    /// For in-memory SQLite: a connection held aside from the pool while the bind is open, so
    /// that discarding or expiring pooled connections never takes the database with them.
    keeper: Option<Keeper<DB>>,
    counters: Arc<Counters>,
}

struct Keeper<DB: Backend> {
    held: AtomicBool,
    conn: tokio::sync::Mutex<Option<PooledConn<DB>>>,
}

impl<DB: Backend> Default for Keeper<DB> {
    fn default() -> Self {
        Self {
            held: AtomicBool::new(false),
            conn: tokio::sync::Mutex::new(None),
        }
    }
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
    /// Sessions waiting for a connection.
    pub waiting: usize,
    /// Connections opened since the bind was built (for an in-memory SQLite bind, including the
    /// one it holds aside to keep the database alive).
    pub opened: u64,
    /// Connections thrown away because their state was unknown or a check failed.
    pub discarded: u64,
    /// Checkouts that ran out of `acquire_timeout`.
    pub timeouts: u64,
    /// Failed attempts to open a connection.
    pub connect_errors: u64,
    /// The manager was closed or dropped.
    pub closed: bool,
    /// This is the bind's blocking face: the pool of its
    /// [`BlockingBind`](crate::blocking::BlockingBind), apart from the async one.
    pub blocking: bool,
}

/// What the manager keeps of a bind: a type-erased view, and the typed one to downcast to.
pub(crate) struct OpenBind {
    pub(crate) erased: Arc<dyn ErasedBind>,
    pub(crate) typed: Arc<dyn Any + Send + Sync>,
}

/// The operations the manager runs on every bind, whatever its database type.
pub(crate) trait ErasedBind: Send + Sync {
    fn backend(&self) -> &'static str;
    fn status(&self) -> BindStatus;
    fn is_closed(&self) -> bool;
    fn connect(self: Arc<Self>) -> BoxFuture<'static, Result<()>>;
    /// Stops handing out connections and closes the idle ones.
    fn close(&self);
    /// A second engine on the same database, with the same connect options and a pool of its
    /// own: the bind's blocking face.
    fn twin(&self, config: &BindConfig) -> OpenBind;
}

/// Builds a bind of database type `DB`; no connection is opened.
pub(crate) fn open<DB: Backend>(
    name: &str,
    url: &DatabaseUrl,
    dialect: Dialect,
    config: &BindConfig,
) -> Result<OpenBind> {
    let options = DB::connect_options(name, url, config)?;
    let shared = Arc::new(build::<DB>(name, url, dialect, config, options)?);
    Ok(OpenBind {
        erased: shared.clone(),
        typed: shared,
    })
}

fn build<DB: Backend>(
    name: &str,
    url: &DatabaseUrl,
    dialect: Dialect,
    config: &BindConfig,
    options: crate::backend::Options<DB>,
) -> Result<BindShared<DB>> {
    let tx_sql = dialect
        .tx_sql(config.session.isolation, config.session.read_only)
        .map_err(|what| Error::unsupported(name, &what))?;
    let pool_config = &config.pool;
    let name: Arc<str> = Arc::from(name);
    let counters = Arc::new(Counters::default());
    let manager = ConnManager::<DB>::new(name.clone(), options, pool_config, counters.clone());
    // deadpool's build fails only for timeouts without a runtime; dbscope applies its own
    // deadline around checkout and sets none of deadpool's.
    let pool = Pool::<DB>::builder(manager)
        .max_size(config.pool.max_connections as usize)
        .build()
        .expect("a pool without deadpool timeouts always builds");
    Ok(BindShared {
        name,
        url: url.clone(),
        dialect,
        pool,
        acquire_timeout: config.pool.acquire_timeout,
        session: config.session,
        tx_sql,
        min_connections: pool_config.min_connections as usize,
        maintenance_period: maintenance_period(pool_config),
        keeper: is_in_memory_sqlite(url).then(Keeper::default),
        maintenance_started: AtomicBool::new(false),
        counters,
    })
}

/// An in-memory SQLite database lives only as long as one of its connections.
fn is_in_memory_sqlite(url: &DatabaseUrl) -> bool {
    let raw = url.expose();
    raw.starts_with("sqlite:") && (raw.contains(":memory:") || raw.contains("mode=memory"))
}

/// A quarter of the shortest expiry, so a connection outlives its limit by 25 % at most; between
/// 50 ms and 30 s. With no expiry the task runs only to keep `min_connections` open.
fn maintenance_period(pool: &PoolConfig) -> Option<Duration> {
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

impl<DB: Backend> Bind<DB> {
    /// The bind's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A new session with the bind's defaults. Opens nothing: the session checks a connection
    /// out on its first statement.
    pub fn session(&self) -> Session<DB> {
        Session::new(self.clone())
    }

    /// A snapshot of the bind's pool.
    pub fn status(&self) -> BindStatus {
        self.shared.status()
    }

    /// Opens a connection now (and `min_connections` in the background), to fail fast at start-up
    /// rather than on the first request.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Connect`](crate::ErrorKind::Connect) when the server cannot be reached or refuses the credentials;
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) when that takes longer than `acquire_timeout`; [`ErrorKind::Closed`](crate::ErrorKind::Closed).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a connection being opened when the future is dropped is closed.
    pub async fn connect(&self) -> Result<()> {
        self.shared.connect_now().await
    }

    pub(crate) async fn checkout(&self) -> Result<Object<DB>> {
        self.shared.checkout().await
    }
}

impl<DB: Backend> BindShared<DB> {
    /// Checks a connection out within `acquire_timeout`, creation and health check included.
    ///
    /// Cancel safe: deadpool returns a slot or half-made connection when its future is dropped.
    pub(crate) async fn checkout(self: &Arc<Self>) -> Result<Object<DB>> {
        self.start_maintenance();
        if let Some(keeper) = &self.keeper {
            self.hold_database(keeper).await?;
        }
        match tokio::time::timeout(self.acquire_timeout, self.pool.get()).await {
            Ok(Ok(obj)) => Ok(obj),
            Ok(Err(PoolError::Closed)) => Err(Error::closed(&self.name)),
            Ok(Err(PoolError::Backend(source))) => {
                Err(Error::connect(&self.name, &self.url.redacted(), source))
            }
            Ok(Err(other)) => unreachable!(
                "deadpool reports only Closed and Backend without its own timeouts or hooks: {other}"
            ),
            Err(_elapsed) => {
                Counters::bump(&self.counters.timeouts);
                Err(Error::timeout(&self.name, self.acquire_timeout))
            }
        }
    }

    /// Opens the keeper connection of an in-memory SQLite bind, once.
    async fn hold_database(&self, keeper: &Keeper<DB>) -> Result<()> {
        if keeper.held.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut slot = keeper.conn.lock().await;
        if slot.is_none() && !self.pool.is_closed() {
            let conn = self
                .pool
                .manager()
                .create()
                .await
                .map_err(|source| Error::connect(&self.name, &self.url.redacted(), source))?;
            *slot = Some(conn);
            keeper.held.store(true, Ordering::Release);
        }
        Ok(())
    }

    async fn connect_now(self: &Arc<Self>) -> Result<()> {
        engine::release(self.checkout().await?);
        Ok(())
    }

    fn status(&self) -> BindStatus {
        let status = self.pool.status();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        BindStatus {
            name: self.name.to_string(),
            backend: <DB as sqlx::Database>::NAME,
            max_connections: status.max_size,
            connections: status.size,
            idle: status.available,
            in_use: status.size - status.available,
            waiting: status.waiting,
            opened: load(&self.counters.created),
            discarded: load(&self.counters.discarded),
            timeouts: load(&self.counters.timeouts),
            connect_errors: load(&self.counters.connect_errors),
            closed: self.pool.is_closed(),
            blocking: false,
        }
    }

    /// Starts the task that expires idle and old connections and keeps `min_connections` open,
    /// once, on first use: a bind nobody uses costs nothing, not even a timer.
    fn start_maintenance(self: &Arc<Self>) {
        if self.maintenance_started.load(Ordering::Relaxed)
            || self.maintenance_started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let Some(period) = self.maintenance_period else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        handle.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(bind) = weak.upgrade() else { break };
                if bind.pool.is_closed() {
                    break;
                }
                bind.maintain().await;
            }
        });
    }

    /// One maintenance pass: close expired connections, then top up to `min_connections`.
    async fn maintain(self: &Arc<Self>) {
        let manager = self.pool.manager();
        let mut removable = self.pool.status().size.saturating_sub(self.min_connections);
        let removed = self.pool.retain(|conn, metrics| {
            if manager.is_expired(&metrics) {
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
            engine::close_gracefully(conn);
        }
        self.top_up().await;
    }

    async fn top_up(self: &Arc<Self>) {
        let missing = self.min_connections.saturating_sub(self.pool.status().size);
        let mut held = Vec::with_capacity(missing);
        for _ in 0..missing {
            match self.checkout().await {
                Ok(conn) => held.push(conn),
                Err(e) if e.is_closed() => break,
                Err(e) => {
                    tracing::warn!(bind = %self.name, error = %e, "could not open min_connections");
                    break;
                }
            }
        }
        held.into_iter().for_each(engine::release);
    }
}

impl<DB: Backend> ErasedBind for BindShared<DB> {
    fn backend(&self) -> &'static str {
        <DB as sqlx::Database>::NAME
    }

    fn status(&self) -> BindStatus {
        BindShared::status(self)
    }

    fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    fn connect(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.connect_now().await })
    }

    fn close(&self) {
        // Take the idle connections first so they get a polite goodbye; closing the pool then
        // makes every waiter and every later checkout fail with `Closed`, and drops connections
        // still held by sessions when those return them.
        let idle = self.pool.retain(|_, _| false);
        self.pool.close();
        for conn in idle.removed {
            engine::close_gracefully(conn);
        }
        let keeper = self
            .keeper
            .as_ref()
            .and_then(|k| k.conn.try_lock().ok()?.take());
        if let Some(conn) = keeper {
            engine::close_gracefully(conn);
        }
    }

    fn twin(&self, config: &BindConfig) -> OpenBind {
        let options = self.pool.manager().options.clone();
        // Everything that could fail already succeeded for this bind with the same config.
        let shared = Arc::new(
            build::<DB>(&self.name, &self.url, self.dialect, config, options)
                .expect("a bind's twin builds as the bind did"),
        );
        OpenBind {
            erased: shared.clone(),
            typed: shared,
        }
    }
}

impl<DB: Backend> Clone for Bind<DB> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<DB: Backend> fmt::Debug for Bind<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bind")
            .field("name", &self.shared.name)
            .field("backend", &<DB as sqlx::Database>::NAME)
            .field("url", &self.shared.url)
            .finish_non_exhaustive()
    }
}
