//! What the two session benchmarks (`sessions`, async; `blocking`, OS threads) share: the unit of
//! work, a "session" (check a connection out of a pool of [`CONNECTIONS`], `BEGIN`, [`SELECT`],
//! `COMMIT`, return the connection), its table, what a run counts, and the report's lines.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbscope::{BindConfig, BindManager};
use tokio::task::JoinSet;

use crate::{BoxError, Failure, Ids, Measured, Settings, Summary, Table, cpu, rounds};

/// Connections per pool.
pub const CONNECTIONS: u32 = 8;

/// The session's one point select.
pub const SELECT: &str = "SELECT v FROM dbscope_bench WHERE id = $1";

/// `dbscope_bench`, rows `1..=1000` with `v = id`.
pub const TABLE: Table = Table {
    create: "CREATE TABLE IF NOT EXISTS dbscope_bench (id INT PRIMARY KEY, v INT NOT NULL)",
    fill: "INSERT INTO dbscope_bench (id, v) SELECT i, i FROM generate_series(1, $1) AS i \
           ON CONFLICT (id) DO NOTHING",
    rows: 1000,
};

/// The dbscope contender's manager: one bind, `bench`, of [`CONNECTIONS`] connections.
pub fn bench_manager(settings: &Settings) -> Result<BindManager, dbscope::Error> {
    BindManager::builder()
        .bind(
            "bench",
            BindConfig::new(settings.url.as_str()).max_connections(CONNECTIONS),
        )
        .build()
}

/// What one measurement counted.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    sessions: u64,
    per_second: f64,
    /// This process's CPU time (all threads, user + system) per session, in µs; Linux only.
    cpu_us: Option<f64>,
}

impl Measured for Run {
    fn count(&self) -> u64 {
        self.sessions
    }

    fn per_second(&self) -> f64 {
        self.per_second
    }

    fn merge(&self, other: &Self) -> Self {
        let sessions = self.sessions + other.sessions;
        let secs = rounds::seconds(self) + rounds::seconds(other);
        Run {
            sessions,
            per_second: if secs > 0.0 {
                sessions as f64 / secs
            } else {
                0.0
            },
            cpu_us: self
                .cpu_us
                .zip(other.cpu_us)
                .map(|(a, b)| rounds::weighted((self, a), (other, b))),
        }
    }
}

impl Run {
    /// This process's CPU time (all threads, user + system) per session, in µs; `None` off
    /// Linux.
    pub fn cpu_us(&self) -> Option<f64> {
        self.cpu_us
    }

    /// The run of `contender`'s tasks or threads, once the last is done (sessions started before
    /// the deadline count whole): each one's count of sessions, or its error. `start` and
    /// `cpu_before` were read as they started.
    pub fn tally(
        contender: &'static str,
        outcomes: impl IntoIterator<Item = Result<u64, String>>,
        start: Instant,
        cpu_before: Option<Duration>,
    ) -> Result<Self, Failure> {
        let elapsed = start.elapsed();
        let mut sessions = 0u64;
        let mut errors = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok(done) => sessions += done,
                Err(e) => errors.push(e),
            }
        }
        if let Some(first) = errors.first() {
            return Err(Failure::errors(
                contender,
                errors.len() as u64,
                first.clone(),
            ));
        }
        let cpu = cpu_before
            .zip(cpu::process_cpu_time())
            .map(|(before, after)| after - before);
        Ok(Self {
            sessions,
            per_second: sessions as f64 / elapsed.as_secs_f64(),
            cpu_us: cpu.map(|cpu| cpu.as_secs_f64() * 1e6 / sessions.max(1) as f64),
        })
    }
}

/// The report's lines, with contender names padded to `width`.
#[derive(Clone, Copy, Debug)]
pub struct Lines {
    /// For the names in the lines of a run and of the results.
    pub width: usize,
    /// For the labels of the ratios.
    pub ratio_width: usize,
}

impl Lines {
    /// The heading: `dbscope {workers}`, the pools and rounds, what a session is, what the CPU
    /// figure is.
    pub fn heading(self, workers: &str, settings: &Settings) {
        println!(
            "dbscope {workers}, {CONNECTIONS} connections per pool, {}",
            settings.rounds_text()
        );
        println!("session = checkout, BEGIN, `{SELECT}`, COMMIT, release");
        println!("(client CPU = this process, all threads, per session)\n");
    }

    /// One measurement.
    pub fn run(self, name: &str, run: &Run) {
        println!(
            "  {name:<width$} {:>8.0} sessions/s   {}",
            run.per_second,
            cpu_text(run.cpu_us),
            width = self.width
        );
    }

    /// The results table: each contender's sessions/s and CPU per session over the rounds.
    /// Returns the median sessions/s, by contender.
    pub fn results<'a>(
        self,
        names: impl IntoIterator<Item = &'a str>,
        runs: &[Vec<Run>],
    ) -> Vec<f64> {
        println!("\nresults: sessions/s, median over the rounds (min–max); client CPU per session");
        let mut medians = Vec::with_capacity(runs.len());
        for (name, runs) in names.into_iter().zip(runs) {
            let rate = Summary::of(runs.iter().map(|run| run.per_second));
            let cpu = runs
                .iter()
                .map(|run| run.cpu_us)
                .collect::<Option<Vec<f64>>>();
            println!(
                "  {name:<width$} {:<24} {}",
                rate.to_string(),
                cpu_text(cpu.map(|cpu| Summary::of(cpu).median)),
                width = self.width
            );
            medians.push(rate.median);
        }
        medians
    }

    /// The ratios' heading.
    pub fn ratios_heading(self) {
        println!("\nratios: dbscope / other, of the medians; and round by round: median (min–max)");
    }

    /// One ratio: dbscope / `label`, of the medians and round by round.
    pub fn ratio(self, label: &str, of_medians: f64, per_round: Summary) {
        println!(
            "  dbscope / {label:<width$} {of_medians:>5.2}x   {per_round:.2}",
            width = self.ratio_width
        );
    }
}

fn cpu_text(cpu_us: Option<f64>) -> String {
    cpu_us.map_or_else(
        || "client CPU n/a".to_owned(),
        |us| format!("client CPU {us:5.1} µs"),
    )
}

/// A contender of a benchmark whose tasks run sessions back to back.
pub trait Contender: Send + Sync + 'static {
    /// Its name in the report.
    fn name(&self) -> &'static str;

    /// One session, on row `id`.
    fn run_once(&self, id: i32) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Runs `tasks` tokio tasks doing `contender`'s sessions back to back, on ids spread over
/// `1..=rows`, for `duration`. A task stops at its first error; any error fails the measurement.
pub async fn measure_tasks<C: Contender>(
    contender: &Arc<C>,
    tasks: usize,
    rows: i32,
    duration: Duration,
) -> Result<Run, Failure> {
    let cpu_before = cpu::process_cpu_time();
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = JoinSet::new();
    for task in 0..tasks {
        let contender = Arc::clone(contender);
        set.spawn(async move {
            let mut ids = Ids::new(task as u64, rows);
            let mut done = 0u64;
            while Instant::now() < deadline {
                contender
                    .run_once(ids.next_id())
                    .await
                    .map_err(|e| e.to_string())?;
                done += 1;
            }
            Ok::<u64, String>(done)
        });
    }
    let mut outcomes = Vec::with_capacity(tasks);
    while let Some(joined) = set.join_next().await {
        outcomes
            .push(joined.unwrap_or_else(|e| Err(format!("task panicked or was cancelled: {e}"))));
    }
    Run::tally(contender.name(), outcomes, start, cpu_before)
}
