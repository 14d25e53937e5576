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
//! runs every contender for a fixed time, in an order that rotates from round to round, so drift
//! on the machine (PostgreSQL shares it) spreads over all of them. The report gives each
//! contender's median sessions/s (min–max) and the process's CPU time per session, and the
//! ratios dbscope / other, of the medians and round by round. The goal (reported, not enforced)
//! is dbscope ≥ 1.0× r2d2 as documented (defaults).
//!
//! The run exits 1 if any session fails or the final checks find a problem, 2 on a setup
//! problem. Before measuring, it checks that a dbscope blocking session holds a server-side
//! transaction from its select to its commit; at the end, that no connection was left idle in
//! transaction and that the server committed at least one transaction per session counted.
//!
//! Run it with:
//!
//! ```text
//! DBSCOPE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench blocking --features postgres
//! ```
//!
//! `BENCH_ROUNDS` (default 5), `BENCH_SECS` (seconds per contender per round, default 2) and
//! `BENCH_THREADS` (default 16) change the run, e.g. `BENCH_ROUNDS=2 BENCH_SECS=0.5` for a quick
//! check.

mod common;

use std::fmt;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::Summary;

use dbscope::blocking::BlockingBind;
use dbscope::{BindConfig, BindManager};
use postgres::{Client, NoTls, Statement};
use r2d2_postgres::PostgresConnectionManager;
use sqlx::Postgres;

const URL_ENV: &str = "DBSCOPE_TEST_PG_URL";
const ROUNDS_ENV: &str = "BENCH_ROUNDS";
const SECS_ENV: &str = "BENCH_SECS";
const THREADS_ENV: &str = "BENCH_THREADS";

const CONNECTIONS: u32 = 8;
const ROWS: i32 = 1000;
const WARM_UP: Duration = Duration::from_secs(1);

const SELECT: &str = "SELECT v FROM dbscope_bench WHERE id = $1";

/// Goal: dbscope / r2d2 with its defaults.
const GOAL: f64 = 1.0;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut setup = match Setup::open(&settings) {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("setup failed: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match setup.check_dbscope_transaction() {
        Ok(()) => bench(&setup.contenders, &settings),
        Err(e) => Err(Failure {
            contender: "dbscope blocking session",
            errors: 1,
            first: format!("sanity check: {e}"),
        }),
    };
    let sessions = *outcome.as_ref().unwrap_or(&0);
    let teardown = setup.close(sessions);
    match (outcome, teardown) {
        (Ok(_), Ok(())) => ExitCode::SUCCESS,
        (Err(failure), _) => {
            eprintln!("\nBENCHMARK FAILED: {failure}");
            ExitCode::from(1)
        }
        (Ok(_), Err(e)) => {
            eprintln!("\nBENCHMARK FAILED at teardown: {e}");
            ExitCode::from(1)
        }
    }
}

// ----- settings -----

/// What the environment asks for.
struct Settings {
    url: String,
    rounds: usize,
    round_time: Duration,
    threads: usize,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let Ok(url) = std::env::var(URL_ENV) else {
            return Err(format!(
                "{URL_ENV} is not set: point it at a PostgreSQL database the benchmark may create \
                 a table in, e.g.\n\n  {URL_ENV}=postgres://postgres@127.0.0.1:5432/test cargo \
                 bench --bench blocking --features postgres"
            ));
        };
        let rounds: usize = env_or(ROUNDS_ENV, 5)?;
        let threads: usize = env_or(THREADS_ENV, 16)?;
        if rounds == 0 || threads == 0 {
            return Err(format!("{ROUNDS_ENV} and {THREADS_ENV} must be at least 1"));
        }
        let secs: f64 = env_or(SECS_ENV, 2.0)?;
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
            threads,
        })
    }
}

/// The value of `name`, parsed, or `default` when it is unset.
fn env_or<T: FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(raw) => raw
            .trim()
            .parse()
            .map_err(|_| format!("{name}={raw:?} is not a valid value")),
        Err(_) => Ok(default),
    }
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
    admin: Client,
    /// The database's committed-transaction count before the benchmark.
    commits_before: i64,
    manager: BindManager,
    bind: BlockingBind<Postgres>,
    contenders: Vec<Contender>,
}

impl Setup {
    fn open(settings: &Settings) -> Result<Self, BoxError> {
        let config = postgres::Config::from_str(&settings.url)
            .map_err(|e| format!("{URL_ENV} is not a valid PostgreSQL URL: {e}"))?;
        let mut admin = config
            .connect(NoTls)
            .map_err(|e| format!("cannot connect to {URL_ENV}: {e}"))?;
        prepare_table(&mut admin)?;
        let commits_before = committed_transactions(&mut admin)?;

        let manager = BindManager::builder()
            .bind(
                "bench",
                BindConfig::new(settings.url.as_str()).max_connections(CONNECTIONS),
            )
            .build()?;
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
            commits_before,
            manager,
            bind,
            contenders,
        })
    }

    /// Checks that a dbscope blocking session holds a server-side transaction from its first
    /// statement until it commits: that it does the same work as the other contenders.
    fn check_dbscope_transaction(&mut self) -> Result<(), BoxError> {
        let before = idle_in_transaction(&mut self.admin)?;
        let mut session = self.bind.session();
        let _: i32 = session.fetch_one(sqlx::query_scalar(SELECT).bind(1))?;
        let during = idle_in_transaction(&mut self.admin)?;
        session.commit()?;
        let after = idle_in_transaction(&mut self.admin)?;
        drop(session);
        if during != before + 1 || after != before {
            return Err(format!(
                "expected the session's connection to be idle in transaction after its select and \
                 idle after its commit; connections idle in transaction on the server: before \
                 {before}, after the select {during}, after the commit {after}"
            )
            .into());
        }
        Ok(())
    }

    /// Closes every pool, then checks that no connection was left inside a transaction and that
    /// the server committed a transaction per session counted.
    fn close(mut self, sessions: u64) -> Result<(), BoxError> {
        println!("\nteardown");
        let status = self.bind.status();
        println!(
            "  dbscope blocking bind: opened {} connections, discarded {}, checkout timeouts {}",
            status.opened, status.discarded, status.timeouts
        );
        drop(self.contenders); // r2d2 closes its connections as its pools drop
        self.manager.close_blocking(Duration::from_secs(5))?;
        // Closed connections leave the server asynchronously, and report their statistics as
        // they exit: wait for them.
        let others = wait_for_other_backends(&mut self.admin, Duration::from_secs(5))?;
        let in_tx = idle_in_transaction(&mut self.admin)?;
        let commits = committed_transactions(&mut self.admin)? - self.commits_before;
        println!("  connections idle in transaction (whole server): {in_tx}");
        println!("  other connections to this database still open: {others}");
        println!(
            "  server commits during the run: {commits}, for {sessions} sessions counted (the \
             rest: the benchmark's own checks)"
        );
        if in_tx > 0 {
            return Err(format!("{in_tx} connection(s) left idle in transaction").into());
        }
        if commits < i64::try_from(sessions)? {
            return Err(format!(
                "the server committed {commits} transactions, fewer than the {sessions} sessions \
                 counted"
            )
            .into());
        }
        Ok(())
    }
}

/// Creates `dbscope_bench` with rows 1..=1000 (`v = id`), if not there yet.
fn prepare_table(admin: &mut Client) -> Result<(), postgres::Error> {
    admin.batch_execute(
        "CREATE TABLE IF NOT EXISTS dbscope_bench (id INT PRIMARY KEY, v INT NOT NULL)",
    )?;
    admin.execute(
        "INSERT INTO dbscope_bench (id, v) SELECT i, i FROM generate_series(1, $1) AS i \
         ON CONFLICT (id) DO NOTHING",
        &[&ROWS],
    )?;
    Ok(())
}

fn idle_in_transaction(admin: &mut Client) -> Result<i64, postgres::Error> {
    Ok(admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
            &[],
        )?
        .get(0))
}

fn committed_transactions(admin: &mut Client) -> Result<i64, postgres::Error> {
    Ok(admin
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )?
        .get(0))
}

/// Waits until `admin` is the only connection to its database, or `limit` passes; returns how
/// many others are left.
fn wait_for_other_backends(admin: &mut Client, limit: Duration) -> Result<i64, postgres::Error> {
    let give_up = Instant::now() + limit;
    loop {
        let others: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )?
            .get(0);
        if others == 0 || Instant::now() >= give_up {
            return Ok(others);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ----- measuring -----

/// What went wrong in a measured run.
struct Failure {
    contender: &'static str,
    errors: usize,
    first: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} error(s); first: {}",
            self.contender, self.errors, self.first
        )
    }
}

/// What one measurement counted.
#[derive(Clone, Copy)]
struct Run {
    sessions: u64,
    per_second: f64,
    /// This process's CPU time (all threads, user + system) per session, in µs; Linux only.
    cpu_us: Option<f64>,
}

/// Runs `threads` OS threads doing sessions back to back for `duration`. A thread stops at its
/// first error; any error fails the measurement.
fn measure(contender: &Contender, threads: usize, duration: Duration) -> Result<Run, Failure> {
    let start_line = Barrier::new(threads + 1);
    let (outcomes, start, cpu_before) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let start_line = &start_line;
                scope.spawn(move || {
                    let mut ids = Ids::new(thread as u64);
                    let mut done = 0u64;
                    start_line.wait();
                    let deadline = Instant::now() + duration;
                    while Instant::now() < deadline {
                        contender
                            .run_once(ids.next_id())
                            .map_err(|e| e.to_string())?;
                        done += 1;
                    }
                    Ok::<u64, String>(done)
                })
            })
            .collect();
        let cpu_before = process_cpu_time();
        let start = Instant::now();
        start_line.wait();
        let outcomes: Vec<_> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect();
        (outcomes, start, cpu_before)
    });
    // Until the last thread is done: sessions started before the deadline count whole.
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
        return Err(Failure {
            contender: contender.name(),
            errors: errors.len(),
            first: first.clone(),
        });
    }
    let cpu = cpu_before
        .zip(process_cpu_time())
        .map(|(before, after)| after - before);
    Ok(Run {
        sessions,
        per_second: sessions as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu.map(|cpu| cpu.as_secs_f64() * 1e6 / sessions.max(1) as f64),
    })
}

/// CPU time this process has used so far, user + system, from `/proc/self/stat` (Linux; 10 ms
/// ticks, plenty over a round); `None` elsewhere.
fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (in parentheses, which may hold spaces) come fields 3, 4, …;
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(Duration::from_millis((ticks(14)? + ticks(15)?) * 10)) // USER_HZ is 100 on Linux
}

/// A cheap xorshift over 1..=ROWS, one stream per thread.
struct Ids(u64);

impl Ids {
    fn new(thread: u64) -> Self {
        Self(0x9E37_79B9_7F4A_7C15 ^ (thread + 1).wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn next_id(&mut self) -> i32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % ROWS as u64) as i32 + 1
    }
}

/// Warm-up, then the interleaved rounds, then the report; returns how many sessions ran in all.
fn bench(contenders: &[Contender], settings: &Settings) -> Result<u64, Failure> {
    println!(
        "dbscope blocking benchmark: {} OS threads, {CONNECTIONS} connections per pool, {} \
         round(s) of {:.1} s per contender, {} CPU(s)",
        settings.threads,
        settings.rounds,
        settings.round_time.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!("session = checkout, BEGIN, `{SELECT}`, COMMIT, release");
    println!("(client CPU = this process, all threads, per session)\n");
    let mut total = 0;

    println!("warm-up ({:.1} s each)", WARM_UP.as_secs_f64());
    for contender in contenders {
        let run = measure(contender, settings.threads, WARM_UP)?;
        print_run(contender.name(), &run);
        total += run.sessions;
    }

    // runs[contender][round]
    let mut runs: Vec<Vec<Run>> = vec![Vec::with_capacity(settings.rounds); contenders.len()];
    for round in 0..settings.rounds {
        println!("round {}/{}", round + 1, settings.rounds);
        for k in 0..contenders.len() {
            let index = (round + k) % contenders.len();
            let run = measure(&contenders[index], settings.threads, settings.round_time)?;
            print_run(contenders[index].name(), &run);
            runs[index].push(run);
            total += run.sessions;
        }
    }

    report(contenders, &runs);
    Ok(total)
}

fn print_run(name: &str, run: &Run) {
    println!(
        "  {name:<28} {:>8.0} sessions/s   {}",
        run.per_second,
        cpu_text(run.cpu_us)
    );
}

fn cpu_text(cpu_us: Option<f64>) -> String {
    cpu_us.map_or_else(
        || "client CPU n/a".to_owned(),
        |us| format!("client CPU {us:5.1} µs"),
    )
}

// ----- the report -----

fn report(contenders: &[Contender], runs: &[Vec<Run>]) {
    println!("\nresults: sessions/s, median over the rounds (min–max); client CPU per session");
    let rates: Vec<Summary> = runs
        .iter()
        .map(|r| Summary::of(r.iter().map(|run| run.per_second)))
        .collect();
    for ((contender, runs), rate) in contenders.iter().zip(runs).zip(&rates) {
        let cpu = runs
            .iter()
            .map(|run| run.cpu_us)
            .collect::<Option<Vec<f64>>>();
        println!(
            "  {:<28} {:<24} {}",
            contender.name(),
            rate.to_string(),
            cpu_text(cpu.map(|cpu| Summary::of(cpu).median))
        );
    }
    let medians: Vec<f64> = rates.iter().map(|rate| rate.median).collect();
    let dbscope = contenders
        .iter()
        .position(|c| matches!(c, Contender::Dbscope(_)))
        .expect("dbscope is a contender");

    // The ratio of the medians, and the same ratio taken round by round (each round runs the
    // contenders close together in time, so it shows how much of a gap is noise).
    let ratio = |other: usize| medians[dbscope] / medians[other];
    let per_round = |other: usize| {
        Summary::of(
            runs[dbscope]
                .iter()
                .zip(&runs[other])
                .map(|(d, o)| d.per_second / o.per_second),
        )
    };
    println!("\nratios: dbscope / other, of the medians; and round by round: median (min–max)");
    for (i, contender) in contenders.iter().enumerate() {
        if i != dbscope {
            println!(
                "  dbscope / {:<28} {:>5.2}x   {:.2}",
                contender.name(),
                ratio(i),
                per_round(i)
            );
        }
    }

    let defaults = contenders
        .iter()
        .position(|c| matches!(c, Contender::R2d2 { name, .. } if name.contains("defaults")))
        .expect("r2d2 with its defaults is a contender");
    let best = (0..contenders.len())
        .filter(|&i| i != dbscope)
        .max_by(|&a, &b| medians[a].total_cmp(&medians[b]))
        .expect("there are other contenders");
    println!("\ngoal (on the ratio of the medians)");
    println!(
        "  {}  dbscope >= {GOAL:.1}x r2d2_postgres as documented (defaults): {:.2}x",
        verdict(ratio(defaults) >= GOAL),
        ratio(defaults)
    );
    println!(
        "  (info) dbscope / the fastest r2d2 configuration, {}: {:.2}x",
        contenders[best].name(),
        ratio(best)
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "PASS" } else { "MISS" }
}
