//! Sessions per second: dbscope against sqlx's `PgPool` and a hand-written deadpool loop.
//!
//! Every contender does exactly the same unit of work, a "session": check a connection out of a
//! pool of 8, `BEGIN`, one point select (`SELECT v FROM dbscope_bench WHERE id = $1`), `COMMIT`,
//! return the connection. 16 tokio tasks run sessions back to back on a multi-thread runtime.
//!
//! The contenders:
//!
//! - **dbscope**: `bind.session()`, `query_scalar(..).fetch_one(&mut session)`, `session.commit()`;
//! - **sqlx (defaults)**: `PgPoolOptions::new().max_connections(8)`, which pings a connection
//!   before handing it out and again when it comes back; `pool.begin()`, the select, `tx.commit()`;
//! - **sqlx (no test)**: the same with `.test_before_acquire(false)` (it still pings on release);
//! - **hand-written**: a minimal `deadpool::managed::Manager` of `PgConnection`s that recycles
//!   without a ping, `BEGIN` and `COMMIT` sent as plain simple queries, as dbscope sends them.
//!
//! Every pool is created once and warmed up (1 s each, opening its connections); then each round
//! runs every contender for a fixed time, in an order that rotates from round to round, so drift
//! on the machine (PostgreSQL shares it) spreads over all of them. The report gives each
//! contender's median sessions/s (and min–max) and the benchmark process's CPU time per session,
//! the ratios (of the medians, and round by round), and whether dbscope meets its goals: at
//! least 1.3× the best `PgPool` configuration, and within 5 % of the hand-written loop.
//!
//! The goals are reported, not enforced: the run exits 0 either way. It exits 1 if any session
//! fails or the final checks find a problem (a correct run has none), 2 on a setup problem.
//! Before measuring, it checks that a dbscope session holds a server-side transaction from its
//! select to its commit; at the end, that no connection was left idle in transaction and that the
//! server committed at least one transaction per session counted.
//!
//! All connections use the same options, with statement logging off (as dbscope sets it).
//!
//! Run it with:
//!
//! ```text
//! DBSCOPE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench sessions --features postgres
//! ```
//!
//! `BENCH_ROUNDS` (default 5) and `BENCH_SECS` (seconds per contender per round, default 2) shorten
//! or lengthen the run, e.g. `BENCH_ROUNDS=2 BENCH_SECS=0.5` for a quick check.

mod common;

use std::fmt;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Summary;

use dbscope::{Bind, BindConfig, BindManager};
use deadpool::managed::{self, Metrics, RecycleResult};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, Postgres};
use tokio::task::JoinSet;

const URL_ENV: &str = "DBSCOPE_TEST_PG_URL";
const ROUNDS_ENV: &str = "BENCH_ROUNDS";
const SECS_ENV: &str = "BENCH_SECS";

const TASKS: usize = 16;
const CONNECTIONS: u32 = 8;
const ROWS: i32 = 1000;
const WARM_UP: Duration = Duration::from_secs(1);

const SELECT: &str = "SELECT v FROM dbscope_bench WHERE id = $1";

/// Goal: dbscope / best `PgPool` configuration.
const GOAL_VS_SQLX: f64 = 1.3;
/// Goal: dbscope / hand-written loop (within 5 %).
const GOAL_VS_HAND_WRITTEN: f64 = 0.95;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut setup = match Setup::open(&settings).await {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("setup failed: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match setup.check_dbscope_transaction().await {
        Ok(()) => bench(&setup.contenders, &settings).await,
        Err(e) => Err(Failure {
            contender: "dbscope session",
            errors: 1,
            first: format!("sanity check: {e}"),
        }),
    };
    let sessions = *outcome.as_ref().unwrap_or(&0);
    let teardown = setup.close(sessions).await;
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
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let Ok(url) = std::env::var(URL_ENV) else {
            return Err(format!(
                "{URL_ENV} is not set: point it at a PostgreSQL database the benchmark may create \
                 a table in, e.g.\n\n  {URL_ENV}=postgres://postgres@127.0.0.1:5432/test cargo \
                 bench --bench sessions --features postgres"
            ));
        };
        let rounds: usize = env_or(ROUNDS_ENV, 5)?;
        if rounds == 0 {
            return Err(format!("{ROUNDS_ENV} must be at least 1"));
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

/// One way of running a session.
enum Contender {
    Dbscope(Bind<Postgres>),
    SqlxPool { name: &'static str, pool: PgPool },
    HandWritten(managed::Pool<PgManager>),
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Self::Dbscope(_) => "dbscope session",
            Self::SqlxPool { name, .. } => name,
            Self::HandWritten(_) => "hand-written deadpool loop",
        }
    }

    /// One session: checkout, BEGIN, the select, COMMIT, connection returned.
    async fn run_once(&self, id: i32) -> Result<(), BoxError> {
        let v = match self {
            Self::Dbscope(bind) => {
                let mut session = bind.session();
                let v: i32 = sqlx::query_scalar(SELECT)
                    .bind(id)
                    .fetch_one(&mut session)
                    .await?;
                session.commit().await?;
                v
            }
            Self::SqlxPool { pool, .. } => {
                let mut tx = pool.begin().await?;
                let v: i32 = sqlx::query_scalar(SELECT)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                v
            }
            Self::HandWritten(pool) => {
                let mut conn = pool.get().await?;
                match hand_written_transaction(&mut conn, id).await {
                    Ok(v) => v,
                    Err(e) => {
                        // Its state is unknown: keep it out of the pool.
                        drop(managed::Object::take(conn));
                        return Err(e.into());
                    }
                }
            }
        };
        if v != id {
            return Err(format!("{}: id {id} read v = {v}", self.name()).into());
        }
        Ok(())
    }
}

async fn hand_written_transaction(conn: &mut PgConnection, id: i32) -> sqlx::Result<i32> {
    conn.execute("BEGIN").await?;
    let v: i32 = sqlx::query_scalar(SELECT)
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    conn.execute("COMMIT").await?;
    Ok(v)
}

/// The hand-written loop's pool manager: connects, and recycles without any check.
struct PgManager {
    options: PgConnectOptions,
}

impl managed::Manager for PgManager {
    type Type = PgConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.options).await
    }

    async fn recycle(&self, _: &mut PgConnection, _: &Metrics) -> RecycleResult<sqlx::Error> {
        Ok(())
    }
}

// ----- setup, sanity checks, teardown -----

/// The database prepared, and every contender's pool built (no connection opened yet).
struct Setup {
    /// For setup queries and the checks; not part of any pool.
    admin: PgConnection,
    /// The database's committed-transaction count before the benchmark.
    commits_before: i64,
    manager: BindManager,
    bind: Bind<Postgres>,
    contenders: Vec<Arc<Contender>>,
}

impl Setup {
    async fn open(settings: &Settings) -> Result<Self, BoxError> {
        let options = PgConnectOptions::from_str(&settings.url)
            .map_err(|e| format!("{URL_ENV} is not a valid PostgreSQL URL: {e}"))?
            .disable_statement_logging();
        let mut admin = PgConnection::connect_with(&options)
            .await
            .map_err(|e| format!("cannot connect to {URL_ENV}: {e}"))?;
        prepare_table(&mut admin).await?;
        let commits_before = committed_transactions(&mut admin).await?;

        let manager = BindManager::builder()
            .bind(
                "bench",
                BindConfig::new(settings.url.as_str()).max_connections(CONNECTIONS),
            )
            .build()?;
        let bind = manager.bind::<Postgres>("bench")?;
        let sqlx_defaults = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .connect_lazy_with(options.clone());
        let sqlx_no_test = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .test_before_acquire(false)
            .connect_lazy_with(options.clone());
        let hand_written = managed::Pool::builder(PgManager { options })
            .max_size(CONNECTIONS as usize)
            .build()?;

        let contenders = [
            Contender::Dbscope(bind.clone()),
            Contender::SqlxPool {
                name: "sqlx PgPool (defaults)",
                pool: sqlx_defaults,
            },
            Contender::SqlxPool {
                name: "sqlx PgPool (test_before_acquire=false)",
                pool: sqlx_no_test,
            },
            Contender::HandWritten(hand_written),
        ];
        let contenders = contenders.into_iter().map(Arc::new).collect();
        Ok(Self {
            admin,
            commits_before,
            manager,
            bind,
            contenders,
        })
    }

    /// Checks that a dbscope session holds a server-side transaction from its first statement
    /// until it commits: that it does the same work as the other contenders.
    async fn check_dbscope_transaction(&mut self) -> Result<(), BoxError> {
        let before = idle_in_transaction(&mut self.admin).await?;
        let mut session = self.bind.session();
        let _: i32 = sqlx::query_scalar(SELECT)
            .bind(1)
            .fetch_one(&mut session)
            .await?;
        let during = idle_in_transaction(&mut self.admin).await?;
        session.commit().await?;
        let after = idle_in_transaction(&mut self.admin).await?;
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
    async fn close(mut self, sessions: u64) -> Result<(), BoxError> {
        println!("\nteardown");
        let status = self.bind.status();
        println!(
            "  dbscope bind: opened {} connections, discarded {}, checkout timeouts {}",
            status.opened, status.discarded, status.timeouts
        );
        for contender in &self.contenders {
            match &**contender {
                Contender::Dbscope(_) => {}
                Contender::SqlxPool { pool, .. } => pool.close().await,
                Contender::HandWritten(pool) => pool.close(),
            }
        }
        self.manager.close(Duration::from_secs(5)).await?;
        // Closed connections leave the server asynchronously, and report their statistics as
        // they exit: wait for them.
        let others = wait_for_other_backends(&mut self.admin, Duration::from_secs(5)).await?;
        let in_tx = idle_in_transaction(&mut self.admin).await?;
        let commits = committed_transactions(&mut self.admin).await? - self.commits_before;
        println!("  connections idle in transaction (whole server): {in_tx}");
        println!("  other connections to this database still open: {others}");
        println!(
            "  server commits during the run: {commits}, for {sessions} sessions counted (the \
             rest: the benchmark's own checks)"
        );
        self.admin.close().await?;
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
async fn prepare_table(admin: &mut PgConnection) -> sqlx::Result<()> {
    admin
        .execute("CREATE TABLE IF NOT EXISTS dbscope_bench (id INT PRIMARY KEY, v INT NOT NULL)")
        .await?;
    sqlx::query(
        "INSERT INTO dbscope_bench (id, v) SELECT i, i FROM generate_series(1, $1) AS i \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(ROWS)
    .execute(&mut *admin)
    .await?;
    Ok(())
}

async fn idle_in_transaction(admin: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
    )
    .fetch_one(admin)
    .await
}

async fn committed_transactions(admin: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(admin)
    .await
}

/// Waits until `admin` is the only connection to its database, or `limit` passes; returns how
/// many others are left.
async fn wait_for_other_backends(admin: &mut PgConnection, limit: Duration) -> sqlx::Result<i64> {
    let give_up = Instant::now() + limit;
    loop {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut *admin)
        .await?;
        if others == 0 || Instant::now() >= give_up {
            return Ok(others);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// Runs `TASKS` tasks doing sessions back to back for `duration`. A task stops at its first
/// error; any error fails the measurement.
async fn measure(contender: &Arc<Contender>, duration: Duration) -> Result<Run, Failure> {
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let contender = Arc::clone(contender);
        tasks.spawn(async move {
            let mut ids = Ids::new(task as u64);
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
    let mut sessions = 0u64;
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(done)) => sessions += done,
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("task panicked or was cancelled: {e}")),
        }
    }
    // Until the last task is done: sessions started before the deadline count whole.
    let elapsed = start.elapsed();
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

/// A cheap xorshift over 1..=ROWS, one stream per task.
struct Ids(u64);

impl Ids {
    fn new(task: u64) -> Self {
        Self(0x9E37_79B9_7F4A_7C15 ^ (task + 1).wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn next_id(&mut self) -> i32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % ROWS as u64) as i32 + 1
    }
}

/// Warm-up, then the interleaved rounds, then the report; returns how many sessions ran in all.
async fn bench(contenders: &[Arc<Contender>], settings: &Settings) -> Result<u64, Failure> {
    println!(
        "dbscope sessions benchmark: {TASKS} tasks, {CONNECTIONS} connections per pool, {} \
         round(s) of {:.1} s per contender, {} CPU(s)",
        settings.rounds,
        settings.round_time.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!("session = checkout, BEGIN, `{SELECT}`, COMMIT, release");
    println!("(client CPU = this process, all threads, per session)\n");
    let mut total = 0;

    println!("warm-up ({:.1} s each)", WARM_UP.as_secs_f64());
    for contender in contenders {
        let run = measure(contender, WARM_UP).await?;
        print_run(contender.name(), &run);
        total += run.sessions;
    }

    // runs[contender][round]
    let mut runs: Vec<Vec<Run>> = vec![Vec::with_capacity(settings.rounds); contenders.len()];
    for round in 0..settings.rounds {
        println!("round {}/{}", round + 1, settings.rounds);
        for k in 0..contenders.len() {
            let index = (round + k) % contenders.len();
            let run = measure(&contenders[index], settings.round_time).await?;
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
        "  {name:<42} {:>8.0} sessions/s   {}",
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

fn report(contenders: &[Arc<Contender>], runs: &[Vec<Run>]) {
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
            "  {:<42} {:<24} {}",
            contender.name(),
            rate.to_string(),
            cpu_text(cpu.map(|cpu| Summary::of(cpu).median))
        );
    }
    let medians: Vec<f64> = rates.iter().map(|rate| rate.median).collect();

    let position = |wanted: fn(&Contender) -> bool| {
        contenders
            .iter()
            .position(|c| wanted(c))
            .expect("every kind of contender is present")
    };
    let dbscope = position(|c| matches!(c, Contender::Dbscope(_)));
    let hand_written = position(|c| matches!(c, Contender::HandWritten(_)));
    let sqlx: Vec<usize> = (0..contenders.len())
        .filter(|&i| matches!(*contenders[i], Contender::SqlxPool { .. }))
        .collect();
    let best_sqlx = sqlx
        .iter()
        .copied()
        .max_by(|&a, &b| medians[a].total_cmp(&medians[b]))
        .expect("there are sqlx contenders");

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
    let print_ratio = |label: &str, other: usize| {
        println!(
            "  dbscope / {label:<45} {:>5.2}x   {:.2}",
            ratio(other),
            per_round(other)
        );
    };
    print_ratio(
        &format!("best: {}", contenders[best_sqlx].name()),
        best_sqlx,
    );
    for &i in &sqlx {
        print_ratio(contenders[i].name(), i);
    }
    print_ratio(contenders[hand_written].name(), hand_written);

    let vs_sqlx = ratio(best_sqlx);
    let vs_hand = ratio(hand_written);
    println!("\ngoals (on the ratios of the medians)");
    println!(
        "  {}  dbscope >= {GOAL_VS_SQLX}x the best sqlx PgPool configuration: {vs_sqlx:.2}x",
        verdict(vs_sqlx >= GOAL_VS_SQLX)
    );
    println!(
        "  {}  dbscope within 5% of the hand-written loop: {vs_hand:.2}x ({:+.1}%)",
        verdict(vs_hand >= GOAL_VS_HAND_WRITTEN),
        (vs_hand - 1.0) * 100.0
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "PASS" } else { "MISS" }
}
