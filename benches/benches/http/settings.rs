//! What the environment asks of the HTTP benchmark: the settings every benchmark takes (with
//! rounds cut into 3 slices unless `BENCH_SLICES` says otherwise), and the load client's
//! keep-alive connections (`BENCH_CONNECTIONS`, default 16).

use dbscope_benches::settings::{SLICES_ENV, at_least_one};

const CONNECTIONS_ENV: &str = "BENCH_CONNECTIONS";

/// What the environment asks for.
pub(crate) struct Settings {
    /// The database, the rounds, their time (default 3 s per contender, in 3 slices).
    pub(crate) common: dbscope_benches::Settings,
    /// The load client's keep-alive HTTP connections.
    pub(crate) connections: usize,
}

impl Settings {
    pub(crate) fn from_env() -> Result<Self, String> {
        let mut common = dbscope_benches::Settings::from_env("http", 3.0)?;
        // Rounds of 3 s per contender run as three passes of 1 s: the layer and the handler it
        // is held to then meet the same few seconds of the machine's drift.
        common.slices = at_least_one(SLICES_ENV, 3)?;
        Ok(Self {
            common,
            connections: at_least_one(CONNECTIONS_ENV, 16)?,
        })
    }
}
