//! A bind's metrics through the `metrics` facade, with the names of OpenTelemetry's database
//! client semantic conventions (`db.client.connection.*`, `db.client.operation.duration`) and
//! dbscope's own (`dbscope.*`).
//!
//! Every handle is registered once, when the bind is built, against the recorder in force then
//! (the global one, or a local one around the build): recording is then a call on a handle,
//! with no key to build, no label to allocate and no lookup.

use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, Label, Unit};

use super::Target;

const POOL: &str = "db.client.connection.pool.name";

/// The handles of one pool.
pub(crate) struct PoolMetrics {
    idle: Gauge,
    used: Gauge,
    pending: Gauge,
    timeouts: Counter,
    create_time: Histogram,
    wait_time: Histogram,
    use_time: Histogram,
    operation_ok: Histogram,
    operation_failed: Histogram,
    discarded_dead: Counter,
    discarded_failed_ping: Counter,
    discarded_unknown_state: Counter,
    recovered: Counter,
    committed: Counter,
    rolled_back: Counter,
}

/// Why a connection was thrown away (`reason` on `dbscope.connection.discarded`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Discard {
    /// The server or the network closed it, or its socket ended with its tokio runtime.
    Dead,
    /// A health check or a suspect's ping failed, or was cut off.
    FailedPing,
    /// Left in a state nothing could prove clean (a cut-off operation recovery could not
    /// clear, a failed rollback, a protocol error).
    UnknownState,
}

impl PoolMetrics {
    pub(crate) fn new(target: &Target, max: u32, min: u32) -> Self {
        describe();
        let pool = || vec![Label::new(POOL, target.pool.to_string())];
        let with = |key: &'static str, value: &'static str| {
            let mut labels = pool();
            labels.push(Label::new(key, value));
            labels
        };
        let mut op = pool();
        op.push(Label::new("db.system.name", target.system));
        if let Some(namespace) = &target.namespace {
            op.push(Label::new("db.namespace", namespace.clone()));
        }
        if let Some(address) = &target.address {
            op.push(Label::new("server.address", address.clone()));
        }
        if let Some(port) = target.port {
            op.push(Label::new("server.port", port.to_string()));
        }
        let mut op_failed = op.clone();
        op_failed.push(Label::new("error.type", "_OTHER"));
        metrics::gauge!("db.client.connection.max", pool()).set(max);
        metrics::gauge!("db.client.connection.idle.min", pool()).set(min);
        let this = Self {
            idle: metrics::gauge!(
                "db.client.connection.count",
                with("db.client.connection.state", "idle")
            ),
            used: metrics::gauge!(
                "db.client.connection.count",
                with("db.client.connection.state", "used")
            ),
            pending: metrics::gauge!("db.client.connection.pending_requests", pool()),
            timeouts: metrics::counter!("db.client.connection.timeouts", pool()),
            create_time: metrics::histogram!("db.client.connection.create_time", pool()),
            wait_time: metrics::histogram!("db.client.connection.wait_time", pool()),
            use_time: metrics::histogram!("db.client.connection.use_time", pool()),
            operation_ok: metrics::histogram!("db.client.operation.duration", op),
            operation_failed: metrics::histogram!("db.client.operation.duration", op_failed),
            discarded_dead: metrics::counter!(
                "dbscope.connection.discarded",
                with("reason", "dead")
            ),
            discarded_failed_ping: metrics::counter!(
                "dbscope.connection.discarded",
                with("reason", "failed_ping")
            ),
            discarded_unknown_state: metrics::counter!(
                "dbscope.connection.discarded",
                with("reason", "unknown_state")
            ),
            recovered: metrics::counter!("dbscope.connection.recovered", pool()),
            committed: metrics::counter!("dbscope.transactions", with("outcome", "committed")),
            rolled_back: metrics::counter!("dbscope.transactions", with("outcome", "rolled_back")),
        };
        this.idle.set(0.0);
        this.used.set(0.0);
        this.pending.set(0);
        this
    }

    // The connection counts move by increments, never by a status read: no lock of the pool's,
    // and concurrent moves add up in any order (a `set` from two threads could land stale).

    /// A connection opened: idle until it is handed out.
    pub(crate) fn opened(&self) {
        self.idle.increment(1.0);
    }

    /// An idle connection handed out to a session.
    pub(crate) fn now_used(&self) {
        self.idle.decrement(1.0);
        self.used.increment(1.0);
    }

    /// A session's connection back in the idle list.
    pub(crate) fn now_idle(&self) {
        self.used.decrement(1.0);
        self.idle.increment(1.0);
    }

    /// A connection gone from the pool, from the state it was counted in.
    pub(crate) fn gone(&self, used: bool) {
        if used {
            self.used.decrement(1.0);
        } else {
            self.idle.decrement(1.0);
        }
    }

    /// A checkout starts waiting; it stops when the guard drops.
    pub(crate) fn pending(&self) -> PendingGuard<'_> {
        self.pending.increment(1);
        PendingGuard(&self.pending)
    }

    pub(crate) fn timed_out(&self) {
        self.timeouts.increment(1);
    }

    pub(crate) fn created(&self, watch: Stopwatch) {
        self.create_time.record(watch.seconds());
    }

    pub(crate) fn waited(&self, watch: Stopwatch) {
        self.wait_time.record(watch.seconds());
    }

    /// A connection checked out at `since` came back (or was thrown away).
    pub(crate) fn used_since(&self, since: Instant) {
        self.used_from_to(since, Instant::now());
    }

    /// A connection checked out at `since` came back at `now`.
    pub(crate) fn used_from_to(&self, since: Instant, now: Instant) {
        self.use_time
            .record(now.saturating_duration_since(since).as_secs_f64());
    }

    pub(crate) fn operation(&self, watch: Stopwatch, failed: bool) {
        let histogram = if failed {
            &self.operation_failed
        } else {
            &self.operation_ok
        };
        histogram.record(watch.seconds());
    }

    pub(crate) fn discarded(&self, reason: Discard) {
        match reason {
            Discard::Dead => &self.discarded_dead,
            Discard::FailedPing => &self.discarded_failed_ping,
            Discard::UnknownState => &self.discarded_unknown_state,
        }
        .increment(1);
    }

    pub(crate) fn recovered(&self) {
        self.recovered.increment(1);
    }

    /// A transaction ended: committed, or rolled back.
    pub(crate) fn transaction(&self, committed: bool) {
        if committed {
            self.committed.increment(1)
        } else {
            self.rolled_back.increment(1)
        }
    }
}

/// Counts a checkout among `db.client.connection.pending_requests` while it lives.
pub(crate) struct PendingGuard<'a>(&'a Gauge);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.decrement(1);
    }
}

/// The outcomes of a manager's scopes (`dbscope.scopes`, by `outcome`).
pub(crate) struct ScopeMetrics {
    committed: Counter,
    rolled_back: Counter,
    partial: Counter,
}

impl ScopeMetrics {
    pub(crate) fn new() -> Self {
        describe();
        Self {
            committed: metrics::counter!("dbscope.scopes", "outcome" => "committed"),
            rolled_back: metrics::counter!("dbscope.scopes", "outcome" => "rolled_back"),
            partial: metrics::counter!("dbscope.scopes", "outcome" => "partial"),
        }
    }

    /// A scope ended: committed everything, rolled everything back, or committed some binds
    /// and not others ([`ErrorKind::PartialCommit`](crate::ErrorKind::PartialCommit)).
    pub(crate) fn ended(&self, committed: bool, partial: bool) {
        match (committed, partial) {
            (_, true) => &self.partial,
            (true, false) => &self.committed,
            (false, false) => &self.rolled_back,
        }
        .increment(1);
    }
}

/// When something started, for a duration metric.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stopwatch(Instant);

impl Stopwatch {
    pub(crate) fn start() -> Self {
        Self(Instant::now())
    }

    fn seconds(self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// Units and descriptions, for the recorder in force (exporters print them as `# HELP`).
fn describe() {
    use metrics::{
        describe_counter as counter, describe_gauge as gauge, describe_histogram as histogram,
    };
    gauge!(
        "db.client.connection.count",
        Unit::Count,
        "Connections open, by state (idle, used)."
    );
    gauge!(
        "db.client.connection.max",
        Unit::Count,
        "The most connections the pool may open."
    );
    gauge!(
        "db.client.connection.idle.min",
        Unit::Count,
        "The fewest idle connections the pool keeps open."
    );
    gauge!(
        "db.client.connection.pending_requests",
        Unit::Count,
        "Checkouts waiting for a connection."
    );
    counter!(
        "db.client.connection.timeouts",
        Unit::Count,
        "Checkouts that ran out of acquire_timeout."
    );
    histogram!(
        "db.client.connection.create_time",
        Unit::Seconds,
        "Time to open a connection."
    );
    histogram!(
        "db.client.connection.wait_time",
        Unit::Seconds,
        "Time to obtain a connection from the pool."
    );
    histogram!(
        "db.client.connection.use_time",
        Unit::Seconds,
        "Time from checking a connection out to its return."
    );
    histogram!(
        "db.client.operation.duration",
        Unit::Seconds,
        "Duration of statements run through sessions."
    );
    counter!(
        "dbscope.connection.discarded",
        Unit::Count,
        "Connections thrown away, by reason."
    );
    counter!(
        "dbscope.connection.recovered",
        Unit::Count,
        "Cut-off connections recovered and pooled again."
    );
    counter!(
        "dbscope.transactions",
        Unit::Count,
        "Session transactions, by outcome."
    );
    counter!(
        "dbscope.scopes",
        Unit::Count,
        "Scopes, by outcome (committed, rolled_back, partial)."
    );
}
