//! What a bind's status says of each of its hosts, when it has replicas.

use std::time::Duration;

/// A host's role, as the last probe found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HostRole {
    /// Takes writes (PostgreSQL not in recovery; MariaDB/MySQL not `read_only`).
    Primary,
    /// Replays the primary's changes: takes read sessions.
    Replica,
    /// Not probed yet, or the last probe failed.
    Unknown,
}

/// One host of a bind with replicas: the bind's `url` or one of its `replicas`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostStatus {
    /// The host's URL, its password masked.
    pub address: String,
    /// Its role, learned by probing.
    pub role: HostRole,
    /// The last probe answered in time.
    pub healthy: bool,
    /// A healthy replica within the bind's `max_lag`, replaying: read sessions may go there.
    pub fit_for_reads: bool,
    /// How far behind the primary's position, at the last probe: WAL bytes (PostgreSQL), or
    /// transactions summed over GTID domains (MariaDB); `None` for the primary and when unknown.
    pub lag_bytes: Option<u64>,
    /// How long since this replica last had everything the primary had written (as the probes
    /// saw both), estimated on the client; `None` for the primary and when unknown.
    pub lag: Option<Duration>,
    /// Written (primary) or replayed (replica) up to here: an LSN or a GTID set.
    pub position: Option<String>,
    /// PostgreSQL's timeline; `None` elsewhere or when unknown.
    pub timeline: Option<u32>,
    /// Connections of this host held by sessions.
    pub in_use: usize,
    /// Connections of this host open.
    pub connections: usize,
}
