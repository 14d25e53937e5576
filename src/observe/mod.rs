//! What a bind tells the outside world: the OpenTelemetry database client metrics through the
//! `metrics` facade (feature `metrics`), and tracing spans per session and per statement with
//! the OpenTelemetry attributes.
//!
//! Everything a bind records goes through one [`Observer`], built with the bind: its metric
//! handles (registered once, with their labels, so that the hot path builds no key and
//! allocates nothing) and the attributes its spans carry.

use std::sync::Arc;

use crate::DatabaseUrl;
use crate::backend::Dialect;
use crate::config::BindConfig;

#[cfg(feature = "metrics")]
mod meters;
#[cfg(not(feature = "metrics"))]
#[path = "no_meters.rs"]
mod meters;
mod spans;
mod target;

pub(crate) use meters::{Discard, PoolMetrics, ScopeMetrics, Stopwatch};
pub(crate) use spans::{Traced, error_type};
pub(crate) use target::{Target, host_and_port};

/// The metric handles and span attributes of one bind's pool.
pub(crate) struct Observer {
    pub(crate) metrics: PoolMetrics,
    target: Target,
    /// `db.query.text` on statement spans ([`BindConfig::trace_query_text`]).
    query_text: bool,
}

impl Observer {
    /// The observer of the pool `pool_name` of bind `bind` (the blocking face has a pool name of
    /// its own, so that the two pools' gauges never overwrite each other).
    pub(crate) fn new(
        bind: &Arc<str>,
        pool_name: &str,
        url: &DatabaseUrl,
        dialect: Dialect,
        config: &BindConfig,
    ) -> Self {
        let target = Target::new(bind, pool_name, url, dialect);
        let metrics = PoolMetrics::new(
            &target,
            config.pool.max_connections,
            config.pool.min_connections,
        );
        Self {
            metrics,
            target,
            query_text: config.trace_query_text,
        }
    }

    /// A span for a new session, a child of the current span: disabled (and nearly free) when
    /// no subscriber wants `dbscope` spans at INFO.
    ///
    /// Before any subscriber is set, not even built: tracing's `log` feature (which sqlx turns
    /// on) would otherwise hand each disabled span's fields to the `log` crate, a few hundred
    /// instructions per span for records nobody reads.
    pub(crate) fn session_span(&self) -> tracing::Span {
        if !tracing::dispatcher::has_been_set() {
            return tracing::Span::none();
        }
        spans::session(&self.target)
    }

    /// A span for one statement of the session whose span is `parent` (none when `parent` is
    /// none: see [`session_span`](Self::session_span)).
    pub(crate) fn statement_span(&self, parent: &tracing::Span) -> tracing::Span {
        if parent.is_none() {
            return tracing::Span::none();
        }
        spans::statement(parent, &self.target)
    }

    /// Whether statement spans record the query text.
    pub(crate) fn query_text(&self) -> bool {
        self.query_text
    }
}
