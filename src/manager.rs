use crate::observe::ScopeMetrics;
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::backend::Backend;
use crate::bind::{self, OpenBind};
use crate::config::{BindConfig, Config};
use crate::hosts::{HostChoice, HostContext, HostHook};
use crate::{Bind, BindKey, BindStatus, Error, Result};

/// How often `close()` looks whether every connection is back.
const CLOSE_POLL: Duration = Duration::from_millis(10);

/// All the binds of an application, by name.
///
/// Built from a [`Config`] (code, TOML file or environment) or with [`BindManager::builder`]. It
/// opens no connection until a session runs its first statement, unless you call
/// [`connect`](BindManager::connect). `Clone` is cheap and shares the binds.
///
/// ```
/// use dbscope::{BindConfig, BindManager};
/// use sqlx::Sqlite;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dbscope::Error> {
/// let manager = BindManager::builder()
///     .bind("main", BindConfig::new("sqlite::memory:"))
///     .bind("cache", BindConfig::new("sqlite::memory:").max_connections(2))
///     .build()?;
/// let main = manager.bind::<Sqlite>("main")?;
/// let mut session = main.session();
/// sqlx::query("SELECT 1").execute(&mut session).await?;
/// session.commit().await?;
/// drop(session); // close() waits for sessions to hand their connections back
/// manager.close(std::time::Duration::from_secs(5)).await?;
/// # Ok(()) }
/// ```
///
/// # Drop behavior
///
/// Dropping the last clone closes every bind without blocking: idle connections close at once,
/// connections held by sessions close when those sessions end, and `Bind` handles still around
/// answer [`ErrorKind::Closed`](crate::ErrorKind::Closed).
#[derive(Clone)]
pub struct BindManager {
    inner: Arc<Inner>,
}

struct Inner {
    binds: BTreeMap<String, OpenBind>,
    /// The binds' other faces, opened by a higher layer on first use (the blocking one): the
    /// manager reports and closes them with its binds, knowing them only through [`Faces`].
    faces: OnceLock<(Arc<dyn Faces>, Arc<dyn Any + Send + Sync>)>,
    /// `dbscope.scopes`, by outcome.
    scope_metrics: ScopeMetrics,
    /// Where the scopes put their after-commit hooks instead of running them, once a higher
    /// layer (the testing toolkit, for a test that captures them) has set it.
    hook_sink: OnceLock<Arc<dyn Any + Send + Sync>>,
}

/// Other pools a higher layer opens on the manager's binds (the blocking faces), which the
/// manager lists in its status and closes with its binds.
pub(crate) trait Faces: Send + Sync {
    /// The faces' pools, in name order.
    fn status(&self) -> Vec<BindStatus>;
    /// Closes every face; none opens afterwards.
    fn close(&self);
}

/// Builds a [`BindManager`] bind by bind.
#[derive(Debug, Default)]
#[must_use]
pub struct BindManagerBuilder {
    binds: Vec<(String, BindConfig)>,
    hooks: Vec<(String, HostHook)>,
}

impl BindManagerBuilder {
    /// Adds the bind `name`.
    pub fn bind(mut self, name: impl Into<String>, config: BindConfig) -> Self {
        self.binds.push((name.into(), config));
        self
    }

    /// Installs a host-switch hook on bind `name`: it runs before each session's first
    /// checkout and picks the session's host ([`HostChoice::Host`]), other connect options
    /// ([`HostChoice::Url`], say a rotated password: pooled apart), or leaves it to routing
    /// ([`HostChoice::Route`]).
    ///
    /// ```
    /// use dbscope::{BindConfig, BindManager, HostChoice};
    ///
    /// # fn main() -> Result<(), dbscope::Error> {
    /// let manager = BindManager::builder()
    ///     .bind("main", BindConfig::new("sqlite::memory:"))
    ///     .host_hook("main", |cx| if cx.read { HostChoice::Route } else { HostChoice::Host(0) })
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn host_hook(
        mut self,
        name: impl Into<String>,
        hook: impl Fn(&HostContext<'_>) -> HostChoice + Send + Sync + 'static,
    ) -> Self {
        self.hooks.push((name.into(), HostHook::new(hook)));
        self
    }

    /// Adds every bind of `config`.
    pub fn config(mut self, config: Config) -> Self {
        self.binds.extend(config.binds);
        self
    }

    /// Checks every bind and builds their engines. Opens no connection.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NoBinds`](crate::ErrorKind::NoBinds), [`ErrorKind::InvalidBindName`](crate::ErrorKind::InvalidBindName), [`ErrorKind::DuplicateBind`](crate::ErrorKind::DuplicateBind),
    /// [`ErrorKind::MissingUrl`](crate::ErrorKind::MissingUrl), [`ErrorKind::InvalidUrl`](crate::ErrorKind::InvalidUrl), [`ErrorKind::UnknownScheme`](crate::ErrorKind::UnknownScheme),
    /// [`ErrorKind::DriverNotEnabled`](crate::ErrorKind::DriverNotEnabled), [`ErrorKind::ZeroMaxConnections`](crate::ErrorKind::ZeroMaxConnections), [`ErrorKind::MinExceedsMax`](crate::ErrorKind::MinExceedsMax), [`ErrorKind::ZeroDuration`](crate::ErrorKind::ZeroDuration),
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported): each names the bind and says what to change.
    pub fn build(self) -> Result<BindManager> {
        if self.binds.is_empty() {
            return Err(Error::no_binds());
        }
        if let Some((name, _)) = self
            .hooks
            .iter()
            .find(|(n, _)| !self.binds.iter().any(|(b, _)| b == n))
        {
            let known = self.binds.iter().map(|(b, _)| b.clone()).collect();
            return Err(Error::unknown_bind(name, known));
        }
        let mut binds = BTreeMap::new();
        for (name, config) in self.binds {
            check_name(&name)?;
            if binds.contains_key(&name) {
                return Err(Error::duplicate_bind(&name));
            }
            check_pool(&name, &config)?;
            let hook = self
                .hooks
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, h)| h.clone());
            let open = bind::open(&name, &config, hook)?;
            binds.insert(name, open);
        }
        Ok(BindManager {
            inner: Arc::new(Inner {
                binds,
                faces: OnceLock::new(),
                scope_metrics: ScopeMetrics::new(),
                hook_sink: OnceLock::new(),
            }),
        })
    }
}

/// Bind names become config keys (`binds.<name>`) and environment variables
/// (`DBSCOPE_BINDS__<NAME>__URL`), so they keep to what both can carry.
fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        "use ASCII letters, digits, `_` and `-` only"
    } else if name.contains("__") {
        "`__` separates fields in environment variables; use a single `_`"
    } else {
        return Ok(());
    };
    Err(Error::invalid_bind_name(name, reason))
}

fn check_pool(name: &str, config: &BindConfig) -> Result<()> {
    let pool = &config.pool;
    if pool.max_connections == 0 {
        return Err(Error::zero_max_connections(name));
    }
    if pool.min_connections > pool.max_connections {
        return Err(Error::min_exceeds_max(
            name,
            pool.min_connections,
            pool.max_connections,
        ));
    }
    let zero = [
        (
            pool.acquire_timeout,
            "acquire_timeout",
            "every checkout would time out at once",
        ),
        (
            config.routing.probe_timeout,
            "routing.probe_timeout",
            "every probe of a host would fail",
        ),
        (
            config.routing.probe_interval,
            "routing.probe_interval",
            "the hosts would be probed back to back",
        ),
    ];
    if let Some((_, key, what)) = zero.into_iter().find(|(d, _, _)| d.is_zero()) {
        return Err(Error::zero_duration(name, key, what));
    }
    Ok(())
}

impl BindManager {
    /// A manager for the binds of `config` (a [`Config`], or one [`BindConfig`] for a single bind
    /// named `default`).
    ///
    /// # Errors
    ///
    /// As [`BindManagerBuilder::build`].
    pub fn new(config: impl Into<Config>) -> Result<Self> {
        Self::builder().config(config.into()).build()
    }

    /// A manager configured by the environment alone: see [`Config::from_env`].
    ///
    /// # Errors
    ///
    /// As [`Config::from_env`] and [`BindManagerBuilder::build`].
    pub fn from_env() -> Result<Self> {
        Self::new(Config::from_env()?)
    }

    /// A builder, to add binds one by one.
    pub fn builder() -> BindManagerBuilder {
        BindManagerBuilder::default()
    }

    /// The bind `name`, as database type `DB`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::UnknownBind`](crate::ErrorKind::UnknownBind) (listing the known names); [`ErrorKind::BackendMismatch`](crate::ErrorKind::BackendMismatch) when the bind
    /// is of another type; [`ErrorKind::Closed`](crate::ErrorKind::Closed) once the manager is closed.
    pub fn bind<DB: Backend>(&self, name: &str) -> Result<Bind<DB>> {
        let open = self.entry(name)?;
        if !open.erased.is_closed() {
            if let Some(bind) = open.typed() {
                return Ok(bind);
            }
            return Err(Error::backend_mismatch(
                name,
                open.erased.backend(),
                <DB as sqlx::Database>::NAME,
            ));
        }
        Err(Error::closed(name))
    }

    /// The bind a [`BindKey`] names, with the database type it declares.
    ///
    /// # Errors
    ///
    /// As [`BindManager::bind`].
    pub fn bind_for<K: BindKey>(&self) -> Result<Bind<K::Database>> {
        self.bind(K::NAME)
    }

    /// The names of the binds, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.binds.keys().map(String::as_str)
    }

    /// A snapshot of every bind's pool, in name order; a bind used from blocking code has a second
    /// pool, its [blocking face](crate::blocking), listed right after it (`blocking: true`).
    pub fn status(&self) -> Vec<BindStatus> {
        let mut all: Vec<BindStatus> = self
            .inner
            .binds
            .values()
            .map(|b| b.erased.status())
            .collect();
        if let Some((faces, _)) = self.inner.faces.get() {
            all.extend(faces.status());
        }
        all.sort_by(|a, b| (&a.name, a.blocking).cmp(&(&b.name, b.blocking)));
        all
    }

    /// Whether [`close`](BindManager::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.binds.values().any(|b| b.erased.is_closed())
    }

    /// Opens one connection per bind now (and `min_connections` in the background), so that a
    /// wrong URL or a down server fails at start-up rather than on the first request.
    ///
    /// # Errors
    ///
    /// The first bind that fails, by name: [`ErrorKind::Connect`](crate::ErrorKind::Connect), [`ErrorKind::Tls`](crate::ErrorKind::Tls), [`ErrorKind::Timeout`](crate::ErrorKind::Timeout),
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: connections being opened when the future is dropped are closed.
    pub async fn connect(&self) -> Result<()> {
        for open in self.inner.binds.values() {
            open.erased.clone().connect().await?;
        }
        Ok(())
    }

    /// Closes every bind: stops handing out connections (new sessions get [`ErrorKind::Closed`](crate::ErrorKind::Closed)),
    /// closes idle connections, waits up to `deadline` for sessions to return theirs, which are
    /// closed as they come back.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::CloseTimedOut`](crate::ErrorKind::CloseTimedOut) when sessions still hold connections at the deadline, naming the
    /// binds; those connections close when their sessions end.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the binds are closed from the first poll; only the waiting stops.
    pub async fn close(&self, deadline: Duration) -> Result<()> {
        self.inner.close();
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            let busy: Vec<(String, usize)> = self
                .status()
                .into_iter()
                .filter(|s| s.connections > 0)
                .map(|s| {
                    let name = if s.blocking {
                        format!("{} (blocking)", s.name)
                    } else {
                        s.name
                    };
                    (name, s.connections)
                })
                .collect();
            if busy.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(Error::close_timed_out(busy));
            }
            tokio::time::sleep(CLOSE_POLL).await;
        }
    }

    /// The counters of the scopes' outcomes.
    pub(crate) fn scope_metrics(&self) -> &ScopeMetrics {
        &self.inner.scope_metrics
    }

    /// The sink of type `T` the scopes' after-commit hooks go to, if a higher layer set one.
    pub(crate) fn hook_sink<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.inner.hook_sink.get()?.clone().downcast().ok()
    }

    /// Sets the sink of the scopes' after-commit hooks; `false` when one was set already.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn set_hook_sink(&self, sink: Arc<dyn Any + Send + Sync>) -> bool {
        self.inner.hook_sink.set(sink).is_ok()
    }

    /// The faces a higher layer keeps on this manager's binds, made by `init` on first use.
    pub(crate) fn faces<F: Faces + 'static>(&self, init: impl FnOnce() -> F) -> Arc<F> {
        let (_, any) = self.inner.faces.get_or_init(|| {
            let faces = Arc::new(init());
            (faces.clone(), faces)
        });
        any.clone()
            .downcast()
            .expect("one layer keeps faces on a manager")
    }

    pub(crate) fn entry(&self, name: &str) -> Result<&OpenBind> {
        self.inner
            .binds
            .get(name)
            .ok_or_else(|| Error::unknown_bind(name, self.inner.binds.keys().cloned().collect()))
    }
}

impl Inner {
    fn close(&self) {
        for open in self.binds.values() {
            open.erased.close();
        }
        if let Some((faces, _)) = self.faces.get() {
            faces.close();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for BindManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BindManager")
            .field("binds", &self.status())
            .finish()
    }
}
