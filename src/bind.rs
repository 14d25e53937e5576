//! A bind: one named database, its engine and its session defaults.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_util::future::Either;

use crate::backend::{self, Backend, Dialect, TxSql};
use crate::config::{BindConfig, Engine, SessionConfig};
use crate::engine::{BindStatus, Conn, PinCounts, Pool, Setup};
use crate::hosts::{HostHook, Hosts, Route};
use crate::observe::Observer;
use crate::{DatabaseUrl, Error, Result};

/// One named database: its engine (a pool of sqlx connections) and its session defaults.
///
/// A cheap handle (`Clone` is an `Arc` clone): keep one where your code opens sessions, rather
/// than asking the [`BindManager`](crate::BindManager) each time. `DB` is the sqlx database type
/// (`Postgres`, `MySql`, `Sqlite` or `Any`).
pub struct Bind<DB: Backend> {
    shared: Arc<Shared<DB>>,
}

struct Shared<DB: Backend> {
    name: Arc<str>,
    /// The bind's own config: what its blocking twin is built from.
    config: BindConfig,
    url: DatabaseUrl,
    dialect: Dialect,
    pool: Pool<DB>,
    /// The transaction SQL for the bind's session defaults, built once.
    tx_sql: TxSql,
    /// The same, READ ONLY: for read sessions.
    read_tx_sql: TxSql,
    /// The bind's hosts, when it has replicas or a host-switch hook; `None` keeps sessions on
    /// `pool` with nothing in between.
    hosts: Option<Hosts<DB>>,
    /// The host-switch hook, for the blocking face's hosts.
    hook: Option<HostHook>,
}

/// What the manager keeps of a bind: a type-erased view, and the typed one to downcast to.
#[derive(Clone)]
pub(crate) struct OpenBind {
    pub(crate) erased: Arc<dyn ErasedBind>,
    typed: Arc<dyn Any + Send + Sync>,
}

impl OpenBind {
    fn new<DB: Backend>(shared: Shared<DB>) -> Self {
        let shared = Arc::new(shared);
        Self {
            erased: shared.clone(),
            typed: shared,
        }
    }

    /// The bind as database type `DB`, if it is of that type.
    pub(crate) fn typed<DB: Backend>(&self) -> Option<Bind<DB>> {
        let shared = self.typed.clone().downcast::<Shared<DB>>().ok()?;
        Some(Bind { shared })
    }
}

/// The operations the manager runs on every bind, whatever its database type.
pub(crate) trait ErasedBind: Send + Sync {
    fn backend(&self) -> &'static str;
    /// The bind's config, as it was built.
    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    fn config(&self) -> &BindConfig;
    fn status(&self) -> BindStatus;
    fn is_closed(&self) -> bool;
    fn connect(self: Arc<Self>) -> BoxFuture<'static, Result<()>>;
    /// Stops handing out connections and closes the idle ones.
    fn close(&self);
    /// A second engine on the same database, with the same connect options and a pool of its
    /// own: the bind's blocking face.
    fn twin(&self) -> OpenBind;
    /// Pins the bind's pool to one connection inside an outer transaction, `setup` run in it
    /// first (the `testing` feature's transaction mode; see `engine::pin`).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    fn pin(self: Arc<Self>, setup: Vec<String>) -> BoxFuture<'static, Result<()>>;
    /// Ends the pin, rolling everything back; `None` when the bind was not pinned.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    fn unpin(self: Arc<Self>) -> BoxFuture<'static, Option<Result<PinCounts>>>;
    /// How the sessions on the pinned connection have ended so far.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    fn pin_counts(&self) -> Option<PinCounts>;
}

/// Builds the bind `name` from `config`: picks its database type by URL scheme and engine;
/// opens no connection.
pub(crate) fn open(name: &str, config: &BindConfig, hook: Option<HostHook>) -> Result<OpenBind> {
    let (url, dialect) = backend::resolve(name, config)?;
    check_pooler(name, config, dialect)?;
    // Every arm `resolve` can lead to is compiled in; the last one stands for the rest.
    #[allow(unreachable_patterns)]
    match (config.engine, dialect) {
        #[cfg(feature = "any")]
        (Engine::Any, _) => open_as::<sqlx::Any>(name, url, dialect, config, hook),
        #[cfg(feature = "postgres")]
        (Engine::Native, Dialect::Postgres) => {
            open_as::<sqlx::Postgres>(name, url, dialect, config, hook)
        }
        #[cfg(feature = "mysql")]
        (Engine::Native, Dialect::MySql) => {
            open_as::<sqlx::MySql>(name, url, dialect, config, hook)
        }
        #[cfg(feature = "sqlite")]
        (Engine::Native, Dialect::Sqlite) => {
            open_as::<sqlx::Sqlite>(name, url, dialect, config, hook)
        }
        (engine, dialect) => {
            unreachable!("resolve refuses drivers not compiled in: {engine:?} {dialect:?}")
        }
    }
}

/// Refuses what cannot work behind the bind's connection pooler (`connect.pooler`).
fn check_pooler(name: &str, config: &BindConfig, dialect: Dialect) -> Result<()> {
    if !config.connect.pooler.pools_transactions() {
        return Ok(());
    }
    let refused = if dialect != Dialect::Postgres || config.engine != Engine::Native {
        "`connect.pooler = \"pgbouncer_transaction\"` is for PostgreSQL binds on the native \
         engine; remove it from this bind"
    } else if config.session.autocommit {
        "autocommit sessions cannot work behind PgBouncer in transaction pooling mode (a \
         statement's parse and its execution may reach two different server connections); set \
         `session.autocommit = false`, or point the bind at a session-mode pool"
    } else if config
        .connect
        .statement_cache_capacity
        .is_some_and(|n| n > 0)
    {
        "a statement cache cannot work behind PgBouncer in transaction pooling mode (its named \
         statements live on one server connection, and the next transaction may get another); \
         remove `connect.statement_cache_capacity` or set it to 0"
    } else {
        return Ok(());
    };
    Err(Error::unsupported(name, refused))
}

fn open_as<DB: Backend>(
    name: &str,
    url: &DatabaseUrl,
    dialect: Dialect,
    config: &BindConfig,
    hook: Option<HostHook>,
) -> Result<OpenBind> {
    let options = DB::connect_options(name, url, config)?;
    let tx_sql = dialect
        .tx_sql(config.session.isolation, config.session.read_only)
        .map_err(|what| Error::unsupported(name, &what))?;
    let read_tx_sql = dialect
        .tx_sql(config.session.isolation, true)
        .map_err(|what| Error::unsupported(name, &what))?;
    let name: Arc<str> = Arc::from(name);
    // Only where a first statement met on a dead connection can be sent again (see
    // `Session`'s "Dead connections").
    let session = &config.session;
    let sql = (DB::RESENDS_STATEMENTS && dialect == Dialect::MySql)
        .then(|| dialect.connection_setup(session.isolation, session.read_only, session.autocommit))
        .flatten();
    let setup = Setup {
        // The setup makes the bind's isolation the connection's default.
        isolation: sql.as_ref().and(session.isolation),
        sql,
        read_only: false,
    };
    let observer = Arc::new(Observer::new(&name, &name, url, dialect, config));
    let pool = Pool::<DB>::new(
        name.clone(),
        url,
        options,
        dialect,
        &config.pool,
        setup,
        observer,
    );
    let hosts = if config.replicas.is_empty() && hook.is_none() {
        None
    } else {
        if config.engine == Engine::Any {
            return Err(Error::unsupported(
                &name,
                "an `engine = \"any\"` bind cannot have replicas or a host-switch hook; use the native engine",
            ));
        }
        Some(Hosts::new(&name, config, dialect, &pool, hook.clone())?)
    };
    Ok(OpenBind::new(Shared {
        name,
        config: config.clone(),
        url: url.clone(),
        dialect,
        pool,
        tx_sql,
        read_tx_sql,
        hosts,
        hook,
    }))
}

impl<DB: Backend> Bind<DB> {
    /// The bind's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A snapshot of the bind's pool (and, with replicas, of each host).
    pub fn status(&self) -> BindStatus {
        self.shared.status()
    }

    /// Opens a connection now (and `min_connections` in the background), to fail fast at start-up
    /// rather than on the first request.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Connect`](crate::ErrorKind::Connect) when the server cannot be reached or
    /// refuses the credentials; [`ErrorKind::Tls`](crate::ErrorKind::Tls) when a TLS check fails
    /// (see [`Error::tls_check`](crate::Error::tls_check)); [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) when that takes
    /// longer than `acquire_timeout`; [`ErrorKind::Closed`](crate::ErrorKind::Closed).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a connection being opened when the future is dropped finishes opening in
    /// the background (within `acquire_timeout`) and is pooled.
    pub async fn connect(&self) -> Result<()> {
        self.shared.connect_now().await
    }

    /// Checks a connection out for a session's `route`, within `budget`: from the bind's pool,
    /// or, for a bind with replicas or a hook, from the host routing picks. A plain bind's
    /// checkout is the pool's own future, with nothing wrapped around it.
    pub(crate) fn checkout_routed<'a>(
        &'a self,
        route: &'a mut Route,
        budget: Duration,
    ) -> impl Future<Output = Result<Conn<DB>>> + Send + 'a {
        match &self.shared.hosts {
            None => Either::Left(self.shared.pool.checkout_within(budget)),
            // Boxed: the routed path keeps the plain one's future small.
            Some(hosts) => Either::Right(Box::pin(hosts.checkout(route, budget))),
        }
    }

    /// The bind's hosts, when it has replicas or a hook.
    pub(crate) fn hosts(&self) -> Option<&Hosts<DB>> {
        self.shared.hosts.as_ref()
    }

    /// The transaction SQL of the bind's session defaults, READ ONLY.
    pub(crate) fn read_tx_sql(&self) -> &TxSql {
        &self.shared.read_tx_sql
    }

    /// The bind's name, shared.
    pub(crate) fn shared_name(&self) -> Arc<str> {
        self.shared.name.clone()
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.shared.dialect
    }

    /// Whether server connections change hands between transactions (a transaction pooler):
    /// statements must then be unnamed, and sessions transactional.
    pub(crate) fn pools_transactions(&self) -> bool {
        self.shared.config.connect.pooler.pools_transactions()
    }

    /// Whether the bind's connections can be made read-only on the server for its read-only
    /// sessions, which then need no BEGIN (see "Read-only sessions" on [`Session`](crate::Session)):
    /// PostgreSQL and MySQL/MariaDB on the native engine (which sends a first statement met by a
    /// dead connection again), not behind a transaction pooler (where a connection's settings
    /// do not stick).
    pub(crate) fn makes_connections_read_only(&self) -> bool {
        backend::read_only_connections::<DB>(self.shared.dialect, &self.shared.config)
    }

    /// The session options the bind's config sets.
    pub(crate) fn session_defaults(&self) -> SessionConfig {
        self.shared.config.session
    }

    /// The transaction SQL of the bind's session defaults.
    pub(crate) fn tx_sql(&self) -> &TxSql {
        &self.shared.tx_sql
    }

    pub(crate) fn acquire_timeout(&self) -> Duration {
        self.shared.pool.acquire_timeout()
    }

    /// A connection of this bind's own, outside its pool (see `Pool::connect_unpooled`);
    /// without `create`, to a database that exists only. On a bind with replicas, to the
    /// primary of the moment (after a failover, the promoted host), as writes go.
    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    pub(crate) async fn connect_unpooled(&self, create: bool) -> Result<DB::Connection> {
        match &self.shared.hosts {
            Some(hosts) => hosts.primary_pool().await?.connect_unpooled(create).await,
            None => self.shared.pool.connect_unpooled(create).await,
        }
    }

    /// The bind's metric handles and span attributes.
    pub(crate) fn observer(&self) -> &Observer {
        self.shared.pool.observer()
    }
}

impl<DB: Backend> Shared<DB> {
    fn status(&self) -> BindStatus {
        let mut status = self.pool.status();
        if let Some(hosts) = &self.hosts {
            status.hosts = hosts.status();
        }
        status
    }

    async fn connect_now(&self) -> Result<()> {
        self.pool.checkout().await?.give_back();
        Ok(())
    }
}

impl<DB: Backend> ErasedBind for Shared<DB> {
    fn backend(&self) -> &'static str {
        <DB as sqlx::Database>::NAME
    }

    fn config(&self) -> &BindConfig {
        &self.config
    }

    fn status(&self) -> BindStatus {
        Shared::status(self)
    }

    fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    fn connect(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.connect_now().await })
    }

    fn close(&self) {
        self.pool.close();
        if let Some(hosts) = &self.hosts {
            hosts.close();
        }
    }

    fn pin(self: Arc<Self>, setup: Vec<String>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.pool.pin(setup).await })
    }

    fn unpin(self: Arc<Self>) -> BoxFuture<'static, Option<Result<PinCounts>>> {
        Box::pin(async move { self.pool.unpin().await })
    }

    fn pin_counts(&self) -> Option<PinCounts> {
        self.pool.pin_counts()
    }

    fn twin(&self) -> OpenBind {
        // Its own pool name: the two pools' gauges must not overwrite each other.
        let pool_name = format!("{}/blocking", self.name);
        let observer = Observer::new(
            &self.name,
            &pool_name,
            &self.url,
            self.dialect,
            &self.config,
        );
        let pool = self.pool.twin(&self.config.pool, Arc::new(observer));
        // Hosts of its own (pools, and a prober on the blocking runtime): built from the config
        // that built this bind's, so it cannot fail where that did not.
        let hosts = self.hosts.as_ref().and_then(|_| {
            let hook = self.hook.clone();
            Hosts::new(&self.name, &self.config, self.dialect, &pool, hook).ok()
        });
        OpenBind::new(Shared {
            name: self.name.clone(),
            config: self.config.clone(),
            url: self.url.clone(),
            dialect: self.dialect,
            pool,
            tx_sql: self.tx_sql.clone(),
            read_tx_sql: self.read_tx_sql.clone(),
            hosts,
            hook: self.hook.clone(),
        })
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
