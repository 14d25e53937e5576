//! Sessions per second from OS threads: dbscope's blocking sessions against the `postgres` crate
//! pooled by r2d2 (`r2d2_postgres`), the usual blocking PostgreSQL stack.
//!
//! Every contender does the same unit of work, a "session": check a connection out of a pool of
//! 8, `BEGIN`, one point select (`SELECT v FROM dbscope_bench WHERE id = $1`), `COMMIT`, return
//! the connection. 16 OS threads (no async anywhere in this file) run sessions back to back.
//!
//! The contenders:
//!
//! - **dbscope blocking**: `bind.session()`, `session.fetch_one(query_scalar(..))`,
//!   `session.commit()`, drop. sqlx prepares the select once per connection and caches it.
//! - **r2d2 (defaults)**: `r2d2::Pool::builder().max_size(8)` of `PostgresConnectionManager`, as
//!   their docs show it: `pool.get()`, `conn.transaction()`, `tx.query_one(SELECT, &[&id])`,
//!   `tx.commit()`. r2d2 checks every connection on checkout (`test_on_check_out`, an empty
//!   query: one round trip), and `query_one` with a `&str` prepares the statement on each call
//!   (one more round trip): 5 round trips per session.
//! - **r2d2 (no test)**: the same with `.test_on_check_out(false)`: 4 round trips.
//! - **r2d2 (no test, prepared)**: and the statement prepared once per connection, when the
//!   pool opens it (a `ManageConnection` that keeps a `Statement` beside the `Client`): 3 round
//!   trips, as dbscope.
//!
//! Every pool is built once and warmed up (1 s each, opening its connections); then each round
//! runs every contender for a fixed time, forwards and backwards in turn (see the harness's
//! `rounds`), so drift on the machine (PostgreSQL shares it) spreads over all of them. The
//! report gives each contender's median sessions/s (min–max) and the process's CPU time per
//! session, and the ratios dbscope / other, of the medians and round by round. The goals
//! (reported, not enforced) are dbscope ≥ 1.0× r2d2 as documented (defaults), and ≥ 1.0× the
//! tuned r2d2 loop (no test, prepared), at the same round trips (dbscope issue 14).
//!
//! With more threads than connections, throughput is not the whole story: the report also gives
//! each contender's session latency (checkout to release: p50, p99, p99.9 and the slowest, over
//! all the rounds) and how evenly the threads were served (the fewest sessions a thread ran
//! against the most, in the most uneven round). dbscope's pool hands a returned connection to the
//! thread that has waited longest; r2d2's lets the returning thread take it straight back, which
//! saves a hand-over now and then and makes the waiting threads wait longer. The report prints
//! that trade as a line of its own, not as a goal.
//!
//! The run exits 1 if any session fails or the final checks find a problem, 2 on a setup
//! problem. Before measuring, it checks that a dbscope blocking session holds a server-side
//! transaction from its select to its commit; at the end, that no connection was left idle in
//! transaction and that the server committed at least one transaction per session counted.
//!
//! Run it with:
//!
//! ```text
//! DBSCOPE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p dbscope-benches --bench blocking
//! ```
//!
//! `BENCH_ROUNDS` (default 5), `BENCH_SECS` (seconds per contender per round, default 2) and
//! `BENCH_THREADS` (default 16) change the run, e.g. `BENCH_ROUNDS=2 BENCH_SECS=0.5` for a quick
//! check.

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use dbscope::BindManager;
use dbscope::blocking::BlockingBind;
use dbscope_benches::latency::{self, Latencies};
use dbscope_benches::server::{self, check_session_transaction};
use dbscope_benches::sessions::{CONNECTIONS, Lines, Run, SELECT, TABLE, bench_manager};
use dbscope_benches::settings::{URL_ENV, at_least_one};
use dbscope_benches::{
    Backends, BlockingAdmin, BoxError, Failure, Ids, Rounds, Settings, cpu, exit_code, per_round,
    print_teardown, setup_problem, verdict,
};
use hdrhistogram::Histogram;
use postgres::{Client, NoTls, Statement};
use r2d2_postgres::PostgresConnectionManager;
use sqlx::Postgres;

const THREADS_ENV: &str = "BENCH_THREADS";

/// Goal: dbscope / r2d2 with its defaults.
const GOAL: f64 = 1.0;

const LINES: Lines = Lines {
    width: 28,
    ratio_width: 28,
};

fn main() -> ExitCode {
    let settings = match Settings::from_env("blocking", 2.0) {
        Ok(settings) => settings,
        Err(message) => return setup_problem(message),
    };
    let threads = match at_least_one(THREADS_ENV, 16) {
        Ok(threads) => threads,
        Err(message) => return setup_problem(message),
    };
    let mut setup = match Setup::open(&settings) {
        Ok(setup) => setup,
        Err(e) => return setup_problem(format_args!("setup failed: {e}")),
    };
    let outcome = match setup.check_dbscope_transaction() {
        Ok(()) => bench(&setup.contenders, &settings, threads),
        Err(e) => Err(Failure::errors(
            "dbscope blocking session",
            1,
            format!("sanity check: {e}"),
        )),
    };
    let sessions = *outcome.as_ref().unwrap_or(&0);
    let teardown = setup.close(sessions);
    exit_code(outcome, teardown)
}

// ----- the contenders -----

type R2d2Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// One way of running a session.
enum Contender {
    Dbscope(BlockingBind<Postgres>),
    R2d2 { name: &'static str, pool: R2d2Pool },
    R2d2Prepared(r2d2::Pool<PreparedManager>),
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Self::Dbscope(_) => "dbscope blocking session",
            Self::R2d2 { name, .. } => name,
            Self::R2d2Prepared(_) => "r2d2 (no test, prepared)",
        }
    }

    /// One session: checkout, BEGIN, the select, COMMIT, connection returned.
    fn run_once(&self, id: i32) -> Result<(), BoxError> {
        let v = match self {
            Self::Dbscope(bind) => {
                let mut session = bind.session();
                let v: i32 = session.fetch_one(sqlx::query_scalar(SELECT).bind(id))?;
                session.commit()?;
                v
            }
            Self::R2d2 { pool, .. } => {
                let mut conn = pool.get()?;
                let mut tx = conn.transaction()?;
                let v: i32 = tx.query_one(SELECT, &[&id])?.get(0);
                tx.commit()?;
                v
            }
            Self::R2d2Prepared(pool) => {
                let mut conn = pool.get()?;
                let Prepared { client, select } = &mut *conn;
                let mut tx = client.transaction()?;
                let v: i32 = tx.query_one(&*select, &[&id])?.get(0);
                tx.commit()?;
                v
            }
        };
        if v != id {
            return Err(format!("{}: id {id} read v = {v}", self.name()).into());
        }
        Ok(())
    }
}

/// A pooled `postgres::Client` with the benchmark's select prepared on it once.
struct Prepared {
    client: Client,
    select: Statement,
}

/// `PostgresConnectionManager`, preparing the select on each connection it opens.
struct PreparedManager(PostgresConnectionManager<NoTls>);

impl r2d2::ManageConnection for PreparedManager {
    type Connection = Prepared;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Prepared, postgres::Error> {
        let mut client = self.0.connect()?;
        let select = client.prepare(SELECT)?;
        Ok(Prepared { client, select })
    }

    fn is_valid(&self, conn: &mut Prepared) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut Prepared) -> bool {
        self.0.has_broken(&mut conn.client)
    }
}

// ----- setup, sanity checks, teardown -----

/// The database prepared, and every contender's pool built.
struct Setup {
    /// For setup queries and the checks; not part of any pool.
    admin: BlockingAdmin,
    manager: BindManager,
    bind: BlockingBind<Postgres>,
    contenders: Vec<Contender>,
}

impl Setup {
    fn open(settings: &Settings) -> Result<Self, BoxError> {
        let config = postgres::Config::from_str(&settings.url)
            .map_err(|e| format!("{URL_ENV} is not a valid PostgreSQL URL: {e}"))?;
        let options = server::connect_options(&settings.url)?;
        let admin = BlockingAdmin::open(&options, Backends::Others, TABLE)?;

        let manager = bench_manager(settings)?;
        let bind = manager.blocking_bind::<Postgres>("bench")?;
        let r2d2_defaults = r2d2::Pool::builder()
            .max_size(CONNECTIONS)
            .build(PostgresConnectionManager::new(config.clone(), NoTls))?;
        let r2d2_no_test = r2d2::Pool::builder()
            .max_size(CONNECTIONS)
            .test_on_check_out(false)
            .build(PostgresConnectionManager::new(config.clone(), NoTls))?;
        let r2d2_prepared = r2d2::Pool::builder()
            .max_size(CONNECTIONS)
            .test_on_check_out(false)
            .build(PreparedManager(PostgresConnectionManager::new(
                config, NoTls,
            )))?;

        let contenders = vec![
            Contender::Dbscope(bind.clone()),
            Contender::R2d2 {
                name: "r2d2 (defaults)",
                pool: r2d2_defaults,
            },
            Contender::R2d2 {
                name: "r2d2 (no test)",
                pool: r2d2_no_test,
            },
            Contender::R2d2Prepared(r2d2_prepared),
        ];
        Ok(Self {
            admin,
            manager,
            bind,
            contenders,
        })
    }

    /// Checks that a dbscope blocking session holds a server-side transaction from its first
    /// statement until it commits: that it does the same work as the other contenders.
    fn check_dbscope_transaction(&mut self) -> Result<(), BoxError> {
        let before = self.admin.idle_in_transaction()?;
        let mut session = self.bind.session();
        let _: i32 = session.fetch_one(sqlx::query_scalar(SELECT).bind(1))?;
        let during = self.admin.idle_in_transaction()?;
        session.commit()?;
        let after = self.admin.idle_in_transaction()?;
        drop(session);
        check_session_transaction(before, during, after)
    }

    /// Closes every pool, then checks that no connection was left inside a transaction and that
    /// the server committed a transaction per session counted.
    fn close(self, sessions: u64) -> Result<(), BoxError> {
        print_teardown("dbscope blocking bind", &[self.bind.status()]);
        drop(self.contenders); // r2d2 closes its connections as its pools drop
        self.manager.close_blocking(Duration::from_secs(5))?;
        self.admin.final_checks(sessions, "sessions")
    }
}

// ----- measuring -----

/// What one measurement saw beyond its [`Run`].
struct Seen {
    /// Every session's latency, checkout to release.
    latency: Histogram<u64>,
    /// The fewest sessions a thread ran, over the most.
    evenness: f64,
}

/// Runs `threads` OS threads doing sessions back to back for `duration`. A thread stops at its
/// first error; any error fails the measurement.
fn measure(
    contender: &Contender,
    threads: usize,
    duration: Duration,
) -> Result<(Run, Seen), Failure> {
    // Allocated before the clock starts: their memory is no contender's cost.
    let histograms: Vec<Histogram<u64>> = (0..threads).map(|_| latency::histogram()).collect();
    let start_line = Barrier::new(threads + 1);
    let (outcomes, start, cpu_before) = std::thread::scope(|scope| {
        let workers: Vec<_> = histograms
            .into_iter()
            .enumerate()
            .map(|(thread, mut histogram)| {
                let start_line = &start_line;
                scope.spawn(move || {
                    let mut ids = Ids::new(thread as u64, TABLE.rows);
                    let mut done = 0u64;
                    start_line.wait();
                    let mut began = Instant::now();
                    let deadline = began + duration;
                    while began < deadline {
                        contender
                            .run_once(ids.next_id())
                            .map_err(|e| e.to_string())?;
                        let ended = Instant::now();
                        latency::record(&mut histogram, ended - began);
                        began = ended;
                        done += 1;
                    }
                    Ok::<_, String>((done, histogram))
                })
            })
            .collect();
        let cpu_before = cpu::process_cpu_time();
        let start = Instant::now();
        start_line.wait();
        let outcomes: Vec<_> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect();
        (outcomes, start, cpu_before)
    });
    let (counts, histograms) = latency::split(outcomes);
    // The clock stops here, before the histograms are merged.
    let run = Run::tally(contender.name(), counts.iter().cloned(), start, cpu_before)?;
    let merged = latency::merged(&histograms);
    let counts: Vec<u64> = counts.into_iter().flatten().collect();
    let fewest = counts.iter().copied().min().unwrap_or(0);
    let most = counts.iter().copied().max().unwrap_or(0);
    let seen = Seen {
        latency: merged,
        evenness: if most == 0 {
            1.0
        } else {
            fewest as f64 / most as f64
        },
    };
    Ok((run, seen))
}

/// What the rounds saw of one contender beyond its runs.
struct Served {
    latencies: Latencies,
    /// The lowest [`Seen::evenness`] of its measured runs.
    evenness: f64,
}

/// Warm-up, then the interleaved rounds, then the report; returns how many sessions ran in all.
fn bench(contenders: &[Contender], settings: &Settings, threads: usize) -> Result<u64, Failure> {
    LINES.heading(
        &format!("blocking benchmark: {threads} OS threads"),
        settings,
    );
    let mut rounds = Rounds::new(contenders.len(), settings);
    let mut served: Vec<Served> = contenders
        .iter()
        .map(|_| Served {
            latencies: Latencies::new(),
            evenness: 1.0,
        })
        .collect();
    while let Some(step) = rounds.next_step() {
        let contender = &contenders[step.contender];
        let (run, seen) = measure(contender, threads, step.duration)?;
        LINES.run(contender.name(), &run);
        let served = &mut served[step.contender];
        if !step.is_warm_up() {
            served.latencies.add(&seen.latency);
            served.evenness = served.evenness.min(seen.evenness);
        }
        if rounds.record(step, run).is_some() {
            served.latencies.end_round();
        }
    }
    report(contenders, rounds.runs(), &served);
    Ok(rounds.total())
}

// ----- the report -----

fn report(contenders: &[Contender], runs: &[Vec<Run>], served: &[Served]) {
    let medians = LINES.results(contenders.iter().map(Contender::name), runs);
    let dbscope = contenders
        .iter()
        .position(|c| matches!(c, Contender::Dbscope(_)))
        .expect("dbscope is a contender");

    let ratio = |other: usize| medians[dbscope] / medians[other];
    LINES.ratios_heading();
    for (i, contender) in contenders.iter().enumerate() {
        if i != dbscope {
            LINES.ratio(contender.name(), ratio(i), per_round(runs, dbscope, i));
        }
    }

    println!(
        "\nlatency: each session, checkout to release, over all the rounds, in ms; evenness: the \
         fewest sessions a thread ran / the most, in the most uneven measurement"
    );
    for (contender, served) in contenders.iter().zip(served) {
        let q = |q: f64| served.latencies.quantile(q);
        println!(
            "  {:<w$} p50 {:>7.3}  p99 {:>7.3}  p99.9 {:>7.3}  slowest {:>8.3}  evenness {:.2}",
            contender.name(),
            q(0.5),
            q(0.99),
            q(0.999),
            q(1.0),
            served.evenness,
            w = LINES.width,
        );
    }

    let defaults = contenders
        .iter()
        .position(|c| matches!(c, Contender::R2d2 { name, .. } if name.contains("defaults")))
        .expect("r2d2 with its defaults is a contender");
    let tuned = contenders
        .iter()
        .position(|c| matches!(c, Contender::R2d2Prepared(_)))
        .expect("the tuned r2d2 loop is a contender");
    println!("\ngoals (on the ratio of the medians)");
    println!(
        "  {}  dbscope >= {GOAL:.1}x r2d2_postgres as documented (defaults): {:.2}x",
        verdict(ratio(defaults) >= GOAL),
        ratio(defaults)
    );
    println!(
        "  {}  dbscope >= {GOAL:.1}x the tuned r2d2_postgres loop, {} (issue 14): {:.2}x",
        verdict(ratio(tuned) >= GOAL),
        contenders[tuned].name(),
        ratio(tuned)
    );
    let tail = |c: usize, q: f64| served[c].latencies.quantile(q);
    println!(
        "\ntrade-off (not a goal): dbscope / {}, of p99 {:.2}x, of the slowest session {:.2}x, \
         of evenness {:.2}x",
        contenders[tuned].name(),
        tail(dbscope, 0.99) / tail(tuned, 0.99),
        tail(dbscope, 1.0) / tail(tuned, 1.0),
        served[dbscope].evenness / served[tuned].evenness,
    );
}
