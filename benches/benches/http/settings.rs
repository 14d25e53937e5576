//! What the environment asks of the HTTP benchmark: the settings every benchmark takes, and the
//! load client's keep-alive connections (`BENCH_CONNECTIONS`, default 16).

use dbscope_benches::settings::at_least_one;

const CONNECTIONS_ENV: &str = "BENCH_CONNECTIONS";

/// What the environment asks for.
pub(crate) struct Settings {
    /// The database, the rounds, their time (default 3 s per contender).
    pub(crate) common: dbscope_benches::Settings,
    /// The load client's keep-alive HTTP connections.
    pub(crate) connections: usize,
}

impl Settings {
    pub(crate) fn from_env() -> Result<Self, String> {
        Ok(Self {
            common: dbscope_benches::Settings::from_env("http", 3.0)?,
            connections: at_least_one(CONNECTIONS_ENV, 16)?,
        })
    }
}
