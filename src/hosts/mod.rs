//! The hosts of a bind with replicas: a pool per host, a background prober that learns each
//! host's role and position, and the routing of sessions among them.
//!
//! Routing reads only atomics the prober writes (role, health, fitness, LSN), so a checkout
//! never waits for the prober nor contends with it; a bind without replicas or hook has no
//! `Hosts` at all and keeps the plain pool's path.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::Either;

use crate::backend::replication::Position;
use crate::backend::{Backend, Dialect};
use crate::config::{BindConfig, Fallback, RoutingConfig};
use crate::engine::{Conn, HostRole, HostStatus, Pool};
use crate::observe::Observer;
use crate::{DatabaseUrl, Error, Result, RoutingFailure};

mod hook;
mod prober;
mod token;

pub(crate) use hook::HostHook;
pub use hook::{HostChoice, HostContext};
pub use token::ReadToken;

const UNKNOWN: u8 = 0;
const PRIMARY: u8 = 1;
const REPLICA: u8 = 2;

/// How many primary positions the lag estimate remembers (one per probe round).
const HISTORY: usize = 128;

/// What a session asks of routing, and the host it was given: chosen at its first checkout
/// and kept for its life (a read session), or the primary of the moment (a write session).
#[derive(Clone, Debug, Default)]
pub(crate) struct Route {
    pub(crate) read: bool,
    pub(crate) token: Option<ReadToken>,
    host: Option<usize>,
    /// A write session's host was the primary when routing gave it.
    pub(crate) primary: bool,
}

impl Route {
    pub(crate) fn read(token: Option<ReadToken>) -> Self {
        Self {
            read: true,
            token,
            host: None,
            primary: false,
        }
    }
}

/// The hosts of one bind. A cheap handle.
pub(crate) struct Hosts<DB: Backend>(Arc<Inner<DB>>);

struct Inner<DB: Backend> {
    bind: Arc<str>,
    config: BindConfig,
    routing: RoutingConfig,
    /// The bind's `url` first, then its replicas.
    hosts: Vec<Host<DB>>,
    /// Whether there are replicas to probe (a bind with a hook alone has none).
    probing: bool,
    hook: Option<HostHook>,
    /// Pools a hook asked for by URL (a rotated password, another host), keyed by that URL.
    extra: Mutex<HashMap<String, Pool<DB>>>,
    /// Whether a prober runs (it clears this when it ends, with its runtime, say).
    started: AtomicBool,
    /// Tasks waiting for a primary or for a replica past a token: the prober probes fast.
    hurry: AtomicUsize,
    /// The count of probe rounds done, for waiters.
    rounds: tokio::sync::watch::Sender<u64>,
    wake: tokio::sync::Notify,
    closed: AtomicBool,
    /// The primary's positions at recent probe rounds, oldest first: what the lag estimate
    /// measures replicas against.
    history: Mutex<VecDeque<(Instant, Position)>>,
}

struct Host<DB: Backend> {
    address: String,
    pool: Pool<DB>,
    role: AtomicU8,
    healthy: AtomicBool,
    /// A healthy replica within `max_lag`.
    fit: AtomicBool,
    /// The PostgreSQL position (0 elsewhere), for token checks without a lock.
    lsn: AtomicU64,
    timeline: AtomicU32,
    detail: Mutex<HostDetail>,
}

#[derive(Default)]
struct HostDetail {
    position: Option<Position>,
    lag_bytes: Option<u64>,
    lag: Option<Duration>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<DB: Backend> Hosts<DB> {
    /// The hosts of bind `name`: `primary_pool` is the bind's own (its `url`'s); a pool for each
    /// replica. Opens nothing.
    pub(crate) fn new(
        name: &Arc<str>,
        config: &BindConfig,
        dialect: Dialect,
        primary_pool: &Pool<DB>,
        hook: Option<HostHook>,
    ) -> Result<Self> {
        if !config.replicas.is_empty() && dialect == Dialect::Sqlite {
            return Err(Error::unsupported(
                name,
                "SQLite has no replicas; remove `replicas` from this bind",
            ));
        }
        let url = config.url.as_ref().expect("resolved binds have a URL");
        let mut hosts = vec![Host::new(url, primary_pool.clone())];
        // A replica's connections open read-only where the driver can say so at connect: its
        // read sessions then need no SET to run without BEGIN (see "Read-only sessions" on
        // `Session`), and a write there, after a promotion, says READ WRITE.
        let read_only = config.session.read_only_without_begin
            && crate::backend::read_only_connections::<DB>(dialect, config);
        for replica in &config.replicas {
            let options = DB::connect_options(name, replica, config)?;
            let (options, read_only) = match DB::read_only_at_connect(&options) {
                Some(read_only_options) if read_only => (read_only_options, true),
                _ => (options, false),
            };
            let observer = host_observer(name, replica, dialect, config);
            let pool = primary_pool.sibling(replica, options, read_only, &config.pool, observer);
            hosts.push(Host::new(replica, pool));
        }
        Ok(Self(Arc::new(Inner {
            bind: name.clone(),
            config: config.clone(),
            routing: config.routing,
            probing: hosts.len() > 1,
            hosts,
            hook,
            extra: Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
            hurry: AtomicUsize::new(0),
            rounds: tokio::sync::watch::Sender::new(0),
            wake: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            history: Mutex::new(VecDeque::new()),
        })))
    }

    /// Checks a connection out for `route`: the primary for a write, a fit replica (or the
    /// fallback) for a read; `budget` bounds the pool's part, as `acquire_timeout` does.
    pub(crate) async fn checkout(&self, route: &mut Route, budget: Duration) -> Result<Conn<DB>> {
        let inner = &*self.0;
        route.primary = false;
        if let Some(hook) = &inner.hook {
            match hook.choose(&HostContext::new(&inner.bind, route.read, self.status())) {
                HostChoice::Route => {}
                HostChoice::Host(index) => {
                    let host = inner.hosts.get(index).ok_or_else(|| {
                        Error::unknown_host(&inner.bind, index, inner.hosts.len())
                    })?;
                    route.host = Some(index);
                    return host.pool.checkout_within(budget).await;
                }
                HostChoice::Url(url) => {
                    return self.extra_pool(&url)?.checkout_within(budget).await;
                }
            }
        }
        if !inner.probing {
            return inner.hosts[0].pool.checkout_within(budget).await;
        }
        self.start().await;
        if route.read {
            let index = self.pick_read(route).await?;
            route.host = Some(index);
            return inner.hosts[index].pool.checkout_within(budget).await;
        }
        // A host demoted between the pick and the checkout is not written to: look again. The
        // budget is the whole checkout's, however many hosts it tries.
        let deadline = tokio::time::Instant::now() + budget;
        for _ in 0..3 {
            let index = self.pick_primary().await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(conn) = self.checkout_while_primary(index, left).await? else {
                continue; // it stopped answering as the primary while we waited for it
            };
            if inner.hosts[index].role.load(Ordering::Acquire) == PRIMARY {
                route.host = Some(index);
                route.primary = true;
                return Ok(conn);
            }
            conn.give_back();
        }
        Err(Error::no_primary(
            &inner.bind,
            inner.routing.failover_wait,
            &self.addresses(),
        ))
    }

    /// The pool of the primary of the moment, for work that must reach it outside any
    /// session (a migration's own connection): as a write's checkout finds it, waiting up to
    /// `failover_wait` during a failover, refusing a split brain; the `url`'s without
    /// replicas. A host hook is not asked: it chooses for sessions.
    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    pub(crate) async fn primary_pool(&self) -> Result<Pool<DB>> {
        let inner = &*self.0;
        if !inner.probing {
            return Ok(inner.hosts[0].pool.clone());
        }
        self.start().await;
        let index = self.pick_primary().await?;
        Ok(inner.hosts[index].pool.clone())
    }

    /// A checkout from host `index`'s pool, given up (`None`) when a probe round finds the host
    /// demoted, or another host the primary (this one having gone silent, its connects hanging):
    /// the write goes to the primary of the moment instead of waiting out its budget. A probe
    /// that merely failed (a busy primary's timeout) gives nothing up.
    async fn checkout_while_primary(
        &self,
        index: usize,
        budget: Duration,
    ) -> Result<Option<Conn<DB>>> {
        let host = &self.0.hosts[index];
        let mut rounds = self.0.rounds.subscribe();
        let mut checkout = std::pin::pin!(host.pool.checkout_within(budget));
        loop {
            let round = std::pin::pin!(rounds.changed());
            match futures_util::future::select(checkout.as_mut(), round).await {
                Either::Left((conn, _)) => return conn.map(Some),
                Either::Right((changed, _)) => {
                    let demoted = host.role.load(Ordering::Acquire) == REPLICA;
                    let elsewhere = self
                        .0
                        .hosts
                        .iter()
                        .enumerate()
                        .any(|(i, other)| i != index && other.is_primary());
                    if changed.is_err() || demoted || elsewhere {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Whether commits make read tokens: the bind has replicas (a bind with a hook alone does
    /// not, nor asks its server for positions it may not have, as MySQL has no `@@last_gtid`).
    pub(crate) fn makes_tokens(&self) -> bool {
        self.0.probing
    }

    /// The timeline of the host a session wrote on, for its token.
    pub(crate) fn timeline(&self, route: &Route) -> u32 {
        route
            .host
            .map_or(0, |i| self.0.hosts[i].timeline.load(Ordering::Acquire))
    }

    /// Whether the session's host was a replica when it was chosen (else it is the primary,
    /// or a host a hook chose).
    pub(crate) fn on_replica(&self, route: &Route) -> bool {
        route
            .host
            .is_some_and(|i| self.0.hosts[i].role.load(Ordering::Acquire) == REPLICA)
    }

    /// Each host's role, lag and health.
    pub(crate) fn status(&self) -> Vec<HostStatus> {
        self.0.hosts.iter().map(Host::status).collect()
    }

    /// Stops the prober and closes every host's pool.
    pub(crate) fn close(&self) {
        let inner = &*self.0;
        inner.closed.store(true, Ordering::Release);
        inner.wake.notify_one();
        inner.hosts.iter().for_each(|h| h.pool.close());
        lock(&inner.extra).values().for_each(Pool::close);
    }

    fn addresses(&self) -> Vec<String> {
        self.0.hosts.iter().map(|h| h.address.clone()).collect()
    }

    fn extra_pool(&self, url: &DatabaseUrl) -> Result<Pool<DB>> {
        let inner = &*self.0;
        let mut extra = lock(&inner.extra);
        if let Some(pool) = extra.get(url.expose()) {
            return Ok(pool.clone());
        }
        let (_, dialect) = crate::backend::resolve(&inner.bind, &inner.config)?;
        let options = DB::connect_options(&inner.bind, url, &inner.config)?;
        let observer = host_observer(&inner.bind, url, dialect, &inner.config);
        let primary = &inner.hosts[0].pool;
        let pool = primary.sibling(url, options, false, &inner.config.pool, observer);
        extra.insert(url.expose().to_owned(), pool.clone());
        Ok(pool)
    }

    /// Starts the prober on first use, or again when the last one ended with its runtime, and
    /// waits for its first round (bounded by the probe timeout): routing needs to know the
    /// roles, and what a prober saw before it ended may be old.
    async fn start(&self) {
        let inner = &*self.0;
        if inner.closed.load(Ordering::Acquire) {
            return; // no prober any more: the pool's checkout says `Closed` at once
        }
        let spawned =
            !inner.started.load(Ordering::Acquire) && !inner.started.swap(true, Ordering::AcqRel);
        if spawned {
            prober::spawn(Arc::downgrade(&self.0));
        }
        if spawned || *inner.rounds.borrow() == 0 {
            let deadline =
                Instant::now() + inner.routing.probe_timeout * 2 + Duration::from_millis(100);
            self.wait_round(deadline.into()).await;
        }
    }

    /// Waits for the next probe round (probing fast meanwhile), or the deadline.
    async fn wait_round(&self, deadline: tokio::time::Instant) {
        let inner = &*self.0;
        let mut rounds = inner.rounds.subscribe();
        rounds.mark_unchanged();
        let _hurry = Hurry::new(&inner.hurry);
        inner.wake.notify_one();
        let _ = tokio::time::timeout_at(deadline, rounds.changed()).await;
    }

    async fn pick_primary(&self) -> Result<usize> {
        let inner = &*self.0;
        let deadline = tokio::time::Instant::now() + inner.routing.failover_wait;
        loop {
            let mut primaries = inner
                .hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| h.is_primary())
                .map(|(i, _)| i);
            match (primaries.next(), primaries.next()) {
                (Some(index), None) => return Ok(index),
                (Some(_), Some(_)) => {
                    let claim: Vec<String> = inner
                        .hosts
                        .iter()
                        .filter(|h| h.is_primary())
                        .map(|h| h.address.clone())
                        .collect();
                    return Err(Error::split_brain(&inner.bind, &claim));
                }
                (None, _) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::no_primary(
                    &inner.bind,
                    inner.routing.failover_wait,
                    &self.addresses(),
                ));
            }
            self.wait_round(deadline).await;
        }
    }

    async fn pick_read(&self, route: &Route) -> Result<usize> {
        let inner = &*self.0;
        if let Some(index) = route.host
            && inner.hosts[index].healthy.load(Ordering::Acquire)
        {
            return Ok(index); // a session keeps its host
        }
        let token = route.token.as_ref();
        if let Some(token) = token
            && token.bind() != &*inner.bind
        {
            return Err(Error::invalid_token(
                &inner.bind,
                &format!("it is bind `{}`'s", token.bind()),
            ));
        }
        let deadline = tokio::time::Instant::now() + inner.routing.token_wait;
        loop {
            if let Some(index) = self.choose_replica(token) {
                return Ok(index);
            }
            if token.is_none() || tokio::time::Instant::now() >= deadline {
                break;
            }
            self.wait_round(deadline).await;
        }
        match inner.routing.fallback {
            Fallback::Primary => self.pick_primary().await,
            Fallback::Fail if token.is_some() && self.choose_replica(None).is_some() => Err(
                Error::no_replica(&inner.bind, RoutingFailure::TokenNotReached),
            ),
            Fallback::Fail => Err(Error::no_replica(&inner.bind, RoutingFailure::NoReplica)),
        }
    }

    /// Power of two choices among the fit replicas (past the token, if any): the one of two at
    /// random with fewer connections in use.
    fn choose_replica(&self, token: Option<&ReadToken>) -> Option<usize> {
        let hosts = &self.0.hosts;
        let fits = |i: &usize| hosts[*i].fits(token);
        let count = (0..hosts.len()).filter(fits).count();
        let nth = |n: usize| (0..hosts.len()).filter(fits).nth(n);
        match count {
            0 => None,
            1 => nth(0),
            _ => {
                let a = fastrand::usize(..count);
                let b = (a + 1 + fastrand::usize(..count - 1)) % count;
                let (a, b) = (nth(a)?, nth(b)?);
                let load = |i: usize| hosts[i].pool.load().0;
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }
}

/// The metrics and span attributes of a bind's pool on another host than its `url`'s: labelled
/// `<bind>@<host>` (the address without its password), so that each host's gauges stand apart.
fn host_observer(
    bind: &Arc<str>,
    url: &DatabaseUrl,
    dialect: Dialect,
    config: &BindConfig,
) -> Arc<Observer> {
    let host = crate::observe::host_and_port(url).unwrap_or_else(|| url.redacted());
    Arc::new(Observer::new(
        bind,
        &format!("{bind}@{host}"),
        url,
        dialect,
        config,
    ))
}

impl<DB: Backend> Host<DB> {
    fn new(url: &DatabaseUrl, pool: Pool<DB>) -> Self {
        Self {
            address: url.redacted(),
            pool,
            role: AtomicU8::new(UNKNOWN),
            healthy: AtomicBool::new(false),
            fit: AtomicBool::new(false),
            lsn: AtomicU64::new(0),
            timeline: AtomicU32::new(0),
            detail: Mutex::new(HostDetail::default()),
        }
    }

    fn is_primary(&self) -> bool {
        self.role.load(Ordering::Acquire) == PRIMARY && self.healthy.load(Ordering::Acquire)
    }

    fn fits(&self, token: Option<&ReadToken>) -> bool {
        if self.role.load(Ordering::Acquire) != REPLICA || !self.fit.load(Ordering::Acquire) {
            return false;
        }
        let Some(token) = token else { return true };
        if self.timeline.load(Ordering::Acquire) != token.timeline() {
            return false; // a failover since: this replica's history may not hold the write
        }
        match token.position().lsn() {
            Some(lsn) => self.lsn.load(Ordering::Acquire) >= lsn,
            None => lock(&self.detail)
                .position
                .as_ref()
                .is_some_and(|p| p.has_reached(token.position())),
        }
    }

    fn status(&self) -> HostStatus {
        let detail = lock(&self.detail);
        let role = match self.role.load(Ordering::Acquire) {
            PRIMARY => HostRole::Primary,
            REPLICA => HostRole::Replica,
            _ => HostRole::Unknown,
        };
        let timeline = self.timeline.load(Ordering::Acquire);
        let (in_use, connections) = self.pool.load();
        HostStatus {
            address: self.address.clone(),
            role,
            healthy: self.healthy.load(Ordering::Acquire),
            fit_for_reads: role == HostRole::Replica && self.fit.load(Ordering::Acquire),
            lag_bytes: detail.lag_bytes,
            lag: detail.lag,
            position: detail.position.as_ref().map(Position::to_string),
            timeline: (timeline > 0).then_some(timeline),
            in_use,
            connections,
        }
    }
}

/// Counts a waiter for as long as it waits, cancelled or not.
struct Hurry<'a>(&'a AtomicUsize);

impl<'a> Hurry<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Hurry<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<DB: Backend> Clone for Hosts<DB> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<DB: Backend> fmt::Debug for Hosts<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.addresses()).finish()
    }
}
