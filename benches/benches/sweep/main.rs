//! A concurrency sweep: sessions per second and each session's latency (p50, p99) of dbscope and
//! its peers, at 8, 16, 32, 128 and 256 tasks on pools of 8 connections, on PostgreSQL and
//! SQLite.
//!
//! Run it with:
//!
//! ```text
//! DBSCOPE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p dbscope-benches --bench sweep
//! ```
//!
//! The default run takes about 2.5 minutes: 40 cells (8 contenders × 5 task counts), 3 rounds of
//! 1 s each, and 8 warm-ups of 1 s. `BENCH_ROUNDS` (default 3), `BENCH_SECS` (seconds per cell per
//! round, default 1), `BENCH_SLICES` (see the harness's `rounds`) and `BENCH_TASKS` (the task
//! counts, comma-separated, default `8,16,32,128,256`) change it; `BENCH_ROUNDS=1 BENCH_SECS=0.2`
//! is a smoke run. The SQLite database is a file in the temp directory, removed at the end.
//!
//! # The session
//!
//! Every contender does the same unit of work: check a connection out of a pool of 8, `BEGIN`,
//! one point select (`SELECT v FROM dbscope_bench WHERE id = $1`, 1,000 rows, `v = id`, checked),
//! `COMMIT`, return the connection. N tokio tasks on the multi-thread runtime run sessions back
//! to back; a session's latency runs from the start of its checkout (waiting for a connection
//! included: at 256 tasks on 8 connections that wait is most of it) to the connection's return.
//!
//! | contender | per session | round trips |
//! |---|---|---|
//! | dbscope session | `bind.session()`, the select, `commit()` | 3 |
//! | hand-written deadpool+sqlx | `PgConnection`s on a deadpool recycled without a ping, `BEGIN` and `COMMIT` as plain queries | 3 |
//! | tokio-postgres + deadpool-postgres | `client.transaction()`, `prepare_cached` + `query_one`, `commit()`; `RecyclingMethod::Fast` | 3 |
//! | sqlx PgPool (test_before_acquire=false) | `pool.begin()`, the select, `tx.commit()`; ping on release | 3 + 1 |
//! | sqlx PgPool (defaults) | the same, with a ping before checkout too | 4 + 1 |
//! | dbscope session (SQLite) | as on PostgreSQL, `?` for the parameter | - |
//! | sqlx SqlitePool (test_before_acquire=false), (defaults) | as the `PgPool`s | - |
//!
//! SQLite is a file database in WAL mode (checked on every pool's connection), deferred `BEGIN`,
//! 8 connections per pool; each connection is driven by sqlx's worker thread of its own.
//!
//! # The run
//!
//! One interleaved run of the harness's `Rounds`, whose contender list is the cells: every
//! (task count, contender) pair, task count by task count, so the contenders at one task count
//! are neighbours and run back to back in every round (forwards, then backwards). Each pool
//! warms up once (1 s, at the first task count, opening its connections): it serves all its
//! cells. Per cell the report gives the median sessions/s over the rounds (min–max), this
//! process's CPU time per session, and the p50 and p99 latency of all the rounds' sessions
//! (each task records into an HDR histogram of its own, merged after the run), with the spread
//! of the per-round p99; then the ratios of dbscope to each peer per task count (of the medians,
//! and round by round), two markdown tables of the sweep, and the goals of issue 14 this
//! benchmark can judge:
//!
//! - at 256 tasks on 8 connections, no contender's throughput above dbscope's and dbscope's p99
//!   no worse than sqlx's (the best of sqlx's pools; judged on PostgreSQL and on SQLite);
//! - at 16 and 32 tasks, dbscope within 3 % of the hand-written loop and ≥ 1.3× the best
//!   `PgPool` configuration.
//!
//! The goals are reported, not enforced: the run exits 0 either way; 1 if any session fails, a
//! measurement stalls or a check finds a problem (a correct run has none); 2 on a setup problem.
//! Before measuring, it checks that dbscope's sessions hold a transaction from their select to
//! their commit (on PostgreSQL, seen in `pg_stat_activity`; on SQLite, a row committed between
//! two reads of a session is not seen by the second); at the end, that none of the benchmark's
//! PostgreSQL connections was left idle in transaction, and that the server committed at least a
//! transaction per PostgreSQL session counted.

mod contenders;
mod report;
mod setup;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbscope_benches::sessions::{CONNECTIONS, Run, SELECT, TABLE};
use dbscope_benches::settings::{ROUNDS_ENV, env_or};
use dbscope_benches::{Failure, Ids, Measured, Rounds, Settings, cpu, exit_code, setup_problem};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::contenders::{Contender, Db};
use crate::setup::Setup;
use dbscope_benches::latency::{self, Latencies};

/// The task counts, comma-separated.
const TASKS_ENV: &str = "BENCH_TASKS";
const TASKS_DEFAULT: &str = "8,16,32,128,256";
const ROUNDS_DEFAULT: usize = 3;
/// How long a measurement's sessions may run past its end before it counts as stalled.
const STALL_LIMIT: Duration = Duration::from_secs(60);

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let (settings, tasks) = match settings() {
        Ok(settings) => settings,
        Err(message) => return setup_problem(message),
    };
    let mut setup = match Setup::open(&settings).await {
        Ok(setup) => setup,
        Err(e) => return setup_problem(format_args!("setup failed: {e}")),
    };
    let outcome = match setup.check_dbscope_sessions().await {
        Ok(()) => bench(&setup.contenders, &tasks, &settings).await,
        Err(e) => Err(Failure::errors(
            "dbscope session",
            1,
            format!("sanity check: {e}"),
        )),
    };
    let pg_sessions = *outcome.as_ref().unwrap_or(&0);
    let teardown = setup.close(pg_sessions).await;
    exit_code(outcome, teardown)
}

/// The harness's settings (3 rounds of 1 s unless the environment says otherwise), and the task
/// counts, ascending.
fn settings() -> Result<(Settings, Vec<usize>), String> {
    let mut settings = Settings::from_env("sweep", 1.0)?;
    if std::env::var_os(ROUNDS_ENV).is_none() {
        settings.rounds = ROUNDS_DEFAULT;
    }
    let raw: String = env_or(TASKS_ENV, TASKS_DEFAULT.to_owned())?;
    let mut tasks = raw
        .split(',')
        .map(|n| match n.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "{TASKS_ENV}={raw:?}: expected task counts separated by commas, e.g. \
                 {TASKS_DEFAULT}"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    tasks.sort_unstable();
    tasks.dedup();
    Ok((settings, tasks))
}

/// One contender at one task count: an entry of the rounds' contender list.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cell {
    /// The contender's index.
    pub(crate) contender: usize,
    /// The index of its task count.
    pub(crate) tasks: usize,
}

/// Every cell, task count by task count, contender by contender within one.
fn cells(contenders: usize, task_counts: usize) -> Vec<Cell> {
    (0..task_counts)
        .flat_map(|tasks| (0..contenders).map(move |contender| Cell { contender, tasks }))
        .collect()
}

/// The warm-ups, then the interleaved rounds, then the report; returns how many PostgreSQL
/// sessions ran in all.
async fn bench(
    contenders: &[Arc<Contender>],
    tasks: &[usize],
    settings: &Settings,
) -> Result<u64, Failure> {
    println!(
        "dbscope concurrency sweep: {:?} tasks, {CONNECTIONS} connections per pool, {}",
        tasks,
        settings.rounds_text()
    );
    println!("session = checkout, BEGIN, `{SELECT}` (SQLite: `?`), COMMIT, release");
    println!("latency = checkout to release; client CPU = this process, all threads, per session");
    println!("(each pool warms up once, at the first task count; it serves all its cells)\n");
    let cells = cells(contenders.len(), tasks.len());
    let mut rounds = Rounds::new(cells.len(), settings);
    let mut latencies: Vec<Latencies> = cells.iter().map(|_| Latencies::new()).collect();
    let mut pg_sessions = 0u64;
    while let Some(step) = rounds.next_step() {
        let cell = cells[step.contender];
        if step.is_warm_up() && cell.tasks > 0 {
            continue;
        }
        let contender = &contenders[cell.contender];
        let (run, histogram) = measure(contender, tasks[cell.tasks], step.duration).await?;
        if contender.db() == Db::Postgres {
            pg_sessions += run.count();
        }
        print_run(contender, tasks[cell.tasks], &run, &histogram);
        if !step.is_warm_up() {
            latencies[step.contender].add(&histogram);
        }
        if rounds.record(step, run).is_some() {
            latencies[step.contender].end_round();
        }
    }
    report::Report {
        contenders,
        tasks,
        runs: rounds.runs(),
        latencies: &latencies,
    }
    .print();
    Ok(pg_sessions)
}

fn print_run(contender: &Contender, tasks: usize, run: &Run, histogram: &Histogram<u64>) {
    let (p50, p99) = latency::p50_p99(histogram);
    println!(
        "  {tasks:>3} tasks  {:<44} {:>8.0} sessions/s   p50 {p50:>7.3} ms   p99 {p99:>7.3} ms",
        contender.name(),
        run.per_second(),
    );
}

/// What one task did: its sessions and their latencies, or its first error.
type TaskOutcome = Result<(u64, Histogram<u64>), String>;

/// Runs `tasks` tasks doing sessions back to back for `duration` (sessions started before the
/// end count whole). A task stops at its first error; any error fails the measurement, and so
/// do sessions still running [`STALL_LIMIT`] after the end.
async fn measure(
    contender: &Arc<Contender>,
    tasks: usize,
    duration: Duration,
) -> Result<(Run, Histogram<u64>), Failure> {
    // Allocated before the clock starts: their memory is no contender's cost.
    let histograms: Vec<Histogram<u64>> = (0..tasks).map(|_| latency::histogram()).collect();
    let cpu_before = cpu::process_cpu_time();
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = JoinSet::new();
    for (task, mut histogram) in histograms.into_iter().enumerate() {
        let contender = Arc::clone(contender);
        set.spawn(async move {
            let mut ids = Ids::new(task as u64, TABLE.rows);
            let mut done = 0u64;
            let mut began = Instant::now();
            while began < deadline {
                contender
                    .run_once(ids.next_id())
                    .await
                    .map_err(|e| e.to_string())?;
                let ended = Instant::now();
                latency::record(&mut histogram, ended - began);
                began = ended;
                done += 1;
            }
            Ok((done, histogram))
        });
    }
    let outcomes = join_all(&mut set, deadline + STALL_LIMIT)
        .await
        .map_err(|stalled| {
            Failure::problems(
                contender.name(),
                stalled as u64,
                format!(
                    "task(s) still in a session {} s after the measurement's end: a stalled pool",
                    STALL_LIMIT.as_secs()
                ),
            )
        })?;
    let (counts, histograms) = latency::split(outcomes);
    // The clock stops here, before the histograms are merged.
    let run = Run::tally(contender.name(), counts, start, cpu_before)?;
    Ok((run, latency::merged(&histograms)))
}

/// Every task's outcome, or, if some are still running at `limit`, how many (they are
/// aborted).
async fn join_all(
    set: &mut JoinSet<TaskOutcome>,
    limit: Instant,
) -> Result<Vec<TaskOutcome>, usize> {
    let mut outcomes = Vec::with_capacity(set.len());
    let joined = tokio::time::timeout_at(limit.into(), async {
        while let Some(joined) = set.join_next().await {
            outcomes.push(
                joined.unwrap_or_else(|e| Err(format!("task panicked or was cancelled: {e}"))),
            );
        }
    })
    .await;
    match joined {
        Ok(()) => Ok(outcomes),
        Err(_) => {
            let stalled = set.len();
            set.abort_all();
            Err(stalled)
        }
    }
}
