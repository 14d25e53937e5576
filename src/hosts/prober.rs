//! The background prober: each round asks every host its role and position (a connection of
//! its own per host, under a short timeout), then updates what routing reads.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use sqlx::ConnectOptions;

use super::{HISTORY, Host, Inner, PRIMARY, REPLICA, UNKNOWN, lock};
use crate::backend::Backend;
use crate::backend::replication::{Probe, ProbedRole};

/// Probe interval while no primary is known or someone waits for a round.
const FAST: Duration = Duration::from_millis(50);

/// Starts the prober of `inner`'s hosts, on the current runtime; it ends when they are closed
/// or dropped. It also ends with its runtime (a test's, a request's `Runtime` built and dropped):
/// it then says so in `started`, and the next routed checkout starts another on its own runtime,
/// so that routing never goes on reading what a dead prober last wrote.
pub(super) fn spawn<DB: Backend>(inner: Weak<Inner<DB>>) {
    let running = Running(inner);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return; // `running` dropped: not started
    };
    runtime.spawn(async move {
        let running = running;
        let mut conns: Vec<Option<DB::Connection>> = Vec::new();
        loop {
            let Some(hosts) = running.0.upgrade() else {
                break;
            };
            if hosts.closed.load(Ordering::Acquire) {
                break;
            }
            let began = tokio::time::Instant::now();
            conns.resize_with(hosts.hosts.len(), || None);
            hosts.round(&mut conns).await;
            let pause = hosts.next_pause();
            let woken = async { hosts.wake.notified().await };
            let _ = tokio::time::timeout(pause, woken).await;
            // However often waiters wake it, rounds begin `FAST` apart at least: checkouts
            // waiting through a failover must not turn the prober into a loop reconnecting to
            // hosts that refuse at once.
            tokio::time::sleep_until(began + FAST).await;
        }
    });
}

/// Held by the prober's task: when the task ends, however (its hosts closed or dropped, its
/// runtime shut down), the hosts learn that no prober runs.
struct Running<DB: Backend>(Weak<Inner<DB>>);

impl<DB: Backend> Drop for Running<DB> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.started.store(false, Ordering::Release);
        }
    }
}

impl<DB: Backend> Inner<DB> {
    /// One round: the hosts last seen as primary (or unknown) first, then the replicas, so
    /// that each replica is measured against a primary position taken just before.
    async fn round(&self, conns: &mut [Option<DB::Connection>]) {
        let timeout = self.routing.probe_timeout;
        let (first, then): (Vec<_>, Vec<_>) = self
            .hosts
            .iter()
            .zip(conns.iter_mut())
            .partition(|(host, _)| host.role.load(Ordering::Acquire) != REPLICA);
        let mut results = probe_group(first, timeout).await;
        self.record_primary(&results);
        results.extend(probe_group(then, timeout).await);
        let now = Instant::now();
        for (host, result) in results {
            self.apply(host, result, now);
        }
        self.rounds.send_modify(|n| *n += 1);
    }

    /// Remembers the primary's position, when exactly one host claims the role.
    fn record_primary(&self, results: &[(&Host<DB>, Result<Probe, String>)]) {
        let mut primaries = results.iter().filter_map(|(_, r)| match r {
            Ok(p) if p.role == ProbedRole::Primary => Some(p),
            _ => None,
        });
        if let (Some(primary), None) = (primaries.next(), primaries.next()) {
            let mut history = lock(&self.history);
            let now = Instant::now();
            match history.back_mut() {
                // Still there: when the primary was last seen at a position is what bounds the
                // lag of a replica that has it, and the history keeps distinct positions only
                // (a quiet primary probed in quick succession would push the older ones out).
                Some((seen, at)) if *at == primary.position => *seen = now,
                _ => {
                    history.push_back((now, primary.position.clone()));
                    if history.len() > HISTORY {
                        history.pop_front();
                    }
                }
            }
        }
    }

    fn apply(&self, host: &Host<DB>, result: Result<Probe, String>, now: Instant) {
        let was = host.role.load(Ordering::Acquire);
        let probe = match result {
            Ok(probe) => probe,
            Err(error) => {
                if host.healthy.swap(false, Ordering::AcqRel) {
                    tracing::warn!(bind = %self.bind, host = %host.address, %error, "host set aside: its probe failed");
                }
                host.fit.store(false, Ordering::Release);
                host.role.store(UNKNOWN, Ordering::Release);
                if was == PRIMARY {
                    host.pool.drain_idle();
                }
                return;
            }
        };
        let role = match probe.role {
            ProbedRole::Primary => PRIMARY,
            ProbedRole::Replica => REPLICA,
        };
        if was == PRIMARY && role != PRIMARY {
            // Never write through connections opened to a primary that is one no more.
            tracing::warn!(bind = %self.bind, host = %host.address, "host is no longer the primary");
            host.pool.drain_idle();
        }
        host.timeline.store(probe.timeline, Ordering::Release);
        host.lsn
            .store(probe.position.lsn().unwrap_or(0), Ordering::Release);
        let (lag_bytes, lag, bounded) = match probe.role {
            ProbedRole::Primary => (None, None, false),
            ProbedRole::Replica => self.lag_of(&probe, now),
        };
        // A lag known only from below (the replica is behind every position remembered) may be
        // any length: such a replica is not fit, however short the history is.
        let fit = role == REPLICA && bounded && lag.is_some_and(|lag| lag <= self.routing.max_lag);
        if !fit && host.fit.load(Ordering::Acquire) {
            tracing::info!(bind = %self.bind, host = %host.address, ?lag, "replica set aside: too far behind");
        }
        {
            let mut detail = lock(&host.detail);
            detail.position = Some(probe.position);
            detail.lag_bytes = lag_bytes;
            detail.lag = lag;
        }
        host.role.store(role, Ordering::Release);
        host.fit.store(fit, Ordering::Release);
        host.healthy.store(true, Ordering::Release);
    }

    /// How far a replica is behind: positions to the newest primary position, the time since
    /// the primary was last seen at a position the replica has (0 when it has the newest one),
    /// and whether that time bounds the lag: not when the replica is behind every position
    /// remembered (a history that starts after the replica stalled, or a busy primary's, which
    /// rounds in quick succession have made short), where it is only the least the lag can be.
    fn lag_of(&self, probe: &Probe, now: Instant) -> (Option<u64>, Option<Duration>, bool) {
        let history = lock(&self.history);
        let Some((_, newest)) = history.back() else {
            return (None, None, false);
        };
        let bytes = probe.position.distance_to(newest);
        let reached = history
            .iter()
            .rev()
            .position(|(_, at)| probe.position.has_reached(at));
        let lag = match reached {
            Some(0) => Duration::ZERO,
            Some(back) => now - history[history.len() - 1 - back].0,
            // Behind everything remembered: at least that long.
            None => now - history.front().map_or(now, |(t, _)| *t),
        };
        (Some(bytes), Some(lag), reached.is_some())
    }

    /// The pause before the next round: fast while no primary is known or someone waits,
    /// else the probe interval, jittered by ±20 % so many processes do not probe in step.
    fn next_pause(&self) -> Duration {
        let no_primary = !self.hosts.iter().any(Host::is_primary);
        if no_primary || self.hurry.load(Ordering::Acquire) > 0 {
            return FAST;
        }
        let base = self.routing.probe_interval;
        base.mul_f64(0.8 + 0.4 * fastrand::f64())
    }
}

/// Probes a group of hosts at once.
async fn probe_group<'a, DB: Backend>(
    group: Vec<(&'a Host<DB>, &'a mut Option<DB::Connection>)>,
    timeout: Duration,
) -> Vec<(&'a Host<DB>, Result<Probe, String>)> {
    join_all(group.into_iter().map(|(host, conn)| async move {
        let result = probe(host, conn, timeout).await;
        (host, result)
    }))
    .await
}

/// Probes one host on its own connection, opening it if needed; a failure drops it.
async fn probe<DB: Backend>(
    host: &Host<DB>,
    conn: &mut Option<DB::Connection>,
    timeout: Duration,
) -> Result<Probe, String> {
    let work = async {
        if conn.is_none() {
            let options = host
                .pool
                .connect_options()
                .clone()
                .log_statements(log::LevelFilter::Off);
            *conn = Some(options.connect().await?);
        }
        DB::probe(conn.as_mut().expect("connected above")).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(probe)) => Ok(probe),
        Ok(Err(e)) => {
            *conn = None;
            Err(e.to_string())
        }
        Err(_) => {
            *conn = None;
            Err(format!("no answer within {timeout:?} (probe_timeout)"))
        }
    }
}
