//! Metrics without the `metrics` feature: the same calls, doing nothing, at no cost.

use std::time::Instant;

use super::Target;

/// Nothing to record.
pub(crate) struct PoolMetrics;

/// Why a connection was thrown away.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Discard {
    Dead,
    FailedPing,
    UnknownState,
}

impl PoolMetrics {
    pub(crate) fn new(_target: &Target, _max: u32, _min: u32) -> Self {
        Self
    }
    pub(crate) fn opened(&self) {}
    pub(crate) fn now_used(&self) {}
    pub(crate) fn now_idle(&self) {}
    pub(crate) fn gone(&self, _used: bool) {}
    pub(crate) fn pending(&self) -> PendingGuard<'_> {
        PendingGuard(std::marker::PhantomData)
    }
    pub(crate) fn timed_out(&self) {}
    pub(crate) fn created(&self, _watch: Stopwatch) {}
    pub(crate) fn waited(&self, _watch: Stopwatch) {}
    pub(crate) fn used_since(&self, _since: Instant) {}
    pub(crate) fn used_from_to(&self, _since: Instant, _now: Instant) {}
    pub(crate) fn operation(&self, _watch: Stopwatch, _failed: bool) {}
    pub(crate) fn discarded(&self, _reason: Discard) {}
    pub(crate) fn recovered(&self) {}
    pub(crate) fn transaction(&self, _committed: bool) {}
}

/// Nothing to count.
pub(crate) struct PendingGuard<'a>(std::marker::PhantomData<&'a ()>);

/// Nothing to record.
pub(crate) struct ScopeMetrics;

impl ScopeMetrics {
    pub(crate) fn new() -> Self {
        Self
    }
    pub(crate) fn ended(&self, _committed: bool, _partial: bool) {}
}

/// No clock read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stopwatch;

impl Stopwatch {
    pub(crate) fn start() -> Self {
        Self
    }
}
