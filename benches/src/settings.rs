//! What the environment asks of a benchmark: the database, the rounds, and a few counts.

use std::str::FromStr;
use std::time::Duration;

/// The PostgreSQL database the benchmarks run on (they create a table in it).
pub const URL_ENV: &str = "DBSCOPE_TEST_PG_URL";
/// How many rounds to run.
pub const ROUNDS_ENV: &str = "BENCH_ROUNDS";
/// Seconds per contender per round.
pub const SECS_ENV: &str = "BENCH_SECS";
/// How many slices a round's time per contender is cut into (see [`crate::Rounds`]).
pub const SLICES_ENV: &str = "BENCH_SLICES";

/// The settings every benchmark takes.
#[derive(Debug)]
pub struct Settings {
    /// The database, from [`URL_ENV`].
    pub url: String,
    /// From [`ROUNDS_ENV`], default 5.
    pub rounds: usize,
    /// From [`SECS_ENV`].
    pub round_time: Duration,
    /// From [`SLICES_ENV`], default 1 (a benchmark may choose another default).
    pub slices: usize,
}

impl Settings {
    /// Reads the environment for the benchmark `bench` (its name in `cargo bench --bench`),
    /// whose rounds last `default_secs` per contender unless [`SECS_ENV`] says otherwise.
    pub fn from_env(bench: &str, default_secs: f64) -> Result<Self, String> {
        let Ok(url) = std::env::var(URL_ENV) else {
            return Err(format!(
                "{URL_ENV} is not set: point it at a PostgreSQL database the benchmark may create \
                 a table in, e.g.\n\n  {URL_ENV}=postgres://postgres@127.0.0.1:5432/test cargo \
                 bench -p dbscope-benches --bench {bench}"
            ));
        };
        Self::with_url(url, default_secs)
    }

    /// The settings of a benchmark on the database at `url`, whose rounds last `default_secs`
    /// per contender unless [`SECS_ENV`] says otherwise.
    pub fn with_url(url: String, default_secs: f64) -> Result<Self, String> {
        let rounds = at_least_one(ROUNDS_ENV, 5)?;
        let secs: f64 = env_or(SECS_ENV, default_secs)?;
        let round_time = Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!("{SECS_ENV} must be a positive number of seconds, got {secs}")
            })?;
        Ok(Self {
            url,
            rounds,
            round_time,
            slices: at_least_one(SLICES_ENV, 1)?,
        })
    }
}

impl Settings {
    /// For a report's heading: `5 round(s) of 2.0 s per contender, 2 CPU(s)`.
    pub fn rounds_text(&self) -> String {
        let slices = match self.slices {
            1 => String::new(),
            n => format!(" in {n} interleaved slices"),
        };
        format!(
            "{} round(s) of {:.1} s per contender{slices}, {} CPU(s)",
            self.rounds,
            self.round_time.as_secs_f64(),
            std::thread::available_parallelism().map_or(0, usize::from),
        )
    }
}

/// The count `name` asks for, or `default` when it is unset; at least 1.
pub fn at_least_one(name: &str, default: usize) -> Result<usize, String> {
    let n = env_or(name, default)?;
    if n == 0 {
        return Err(format!("{name} must be at least 1"));
    }
    Ok(n)
}

/// The value of `name`, parsed, or `default` when it is unset.
pub fn env_or<T: FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(raw) => raw
            .trim()
            .parse()
            .map_err(|_| format!("{name}={raw:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}
