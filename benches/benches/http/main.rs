//! Requests per second of one HTTP endpoint: dbscope's tower layer against axum-sqlx-tx and
//! hand-written handlers, under the same load from a second process.
//!
//! Run it with:
//!
//! ```text
//! DBSCOPE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p dbscope-benches --bench http
//! ```
//!
//! `BENCH_ROUNDS` (default 5), `BENCH_SECS` (seconds per contender per round, default 3) and
//! `BENCH_CONNECTIONS` (keep-alive HTTP connections of the load client, default 16) change the
//! run, e.g. `BENCH_ROUNDS=2 BENCH_SECS=0.5` for a quick check. Nothing else needs installing:
//! the load client is this same binary, started again as a child process.
//!
//! # The endpoint
//!
//! `GET /rows/{id}` reads one row, `SELECT id, v FROM dbscope_http_bench WHERE id = $1` (10,000
//! rows, `v = 3 * id`), in the request's session, and answers it as JSON, `{"id":…,"v":…}`. Every
//! contender is an axum 0.8 router on hyper, served by this process on its own port of
//! 127.0.0.1, on one multi-thread tokio runtime; every pool holds at most 8 connections.
//!
//! | contender                         | per request                                        | round trips |
//! |-----------------------------------|----------------------------------------------------|-------------|
//! | dbscope layer                     | `ScopeLayer` + `DbSession` extractor: BEGIN, SELECT, COMMIT | 3 |
//! | dbscope session handler           | `manager.session()`, SELECT, `commit()`, no layer  | 3           |
//! | axum-sqlx-tx (PgPool defaults)    | `Tx<Postgres>` extractor: ping, BEGIN, SELECT, COMMIT; ping on release | 4 + 1 |
//! | axum-sqlx-tx (no test)            | the same, `test_before_acquire(false)`             | 3 + 1       |
//! | PgPool tx (defaults)              | `pool.begin()`, SELECT, `tx.commit()`              | 4 + 1       |
//! | PgPool tx (no test)               | the same, `test_before_acquire(false)`             | 3 + 1       |
//! | dbscope layer, autocommit         | `ScopeLayer::with_scope(manager.scope().autocommit())`: SELECT | 1 |
//! | dbscope layer, GET read-only      | `ScopeLayer::new(..).read_only_safe_methods(true)`: the read session's SELECT, no BEGIN | 1 |
//! | dbscope session, autocommit       | `manager.session()?.autocommit(true)`, SELECT, no layer | 1      |
//! | PgPool bare select (defaults)     | SELECT on `&pool`, no transaction: ping, SELECT; ping on release | 2 + 1 |
//! | PgPool bare select (no test)      | the same, `test_before_acquire(false)`             | 1 + 1       |
//!
//! "+ 1": sqlx pings every connection it takes back (`Connection::ping`, a Sync message), in a
//! task of its own once the response is on its way; it costs CPU and holds the connection, not
//! latency. The sqlx pools use `PgPoolOptions::new().max_connections(8)` and its defaults
//! otherwise (`test_before_acquire(true)`, fair, 30 s acquire timeout, 10 min idle timeout,
//! 30 min max lifetime); the dbscope bind `BindConfig::new(url).max_connections(8)` and its
//! defaults (ping only connections idle for over 30 s). All connections use the same options,
//! with statement logging off (as dbscope sets it). One dbscope bind serves the five dbscope
//! contenders, one `PgPool` each configuration: only one contender runs at a time.
//!
//! # The load
//!
//! The load client opens `BENCH_CONNECTIONS` keep-alive HTTP/1.1 connections (hyper's
//! connection API, `TCP_NODELAY`, one tokio thread) and sends on each a request after the other,
//! ids from a per-connection xorshift over the table, for the round's time. It checks every
//! answer: a 2xx with the expected body counts; any other status, a wrong body or a transport
//! error is reported and fails the benchmark (a correct run has none).
//!
//! The machine's cores are shared by this server, the client and PostgreSQL; nothing is pinned.
//! With 16 connections on pools of 8 the machine is saturated, so requests/s is the machine's
//! CPU time over each request's, and moves with whatever else runs on it. Hence the report also
//! gives, per request, the CPU time of this server process, of the load client, and of the
//! PostgreSQL backends of the pools (from `/proc`), their sum ("ours": what the request costs,
//! whatever else runs), the other processes' CPU time, and the packets sent on loopback (the HTTP
//! request and answer, and each round trip with PostgreSQL, are two): where a gap between
//! contenders comes from. "Theirs / ours" of those sums is the requests/s ratio on a machine of
//! our own.
//!
//! # Rounds, report, checks
//!
//! Each contender is warmed up for 1 s (opening its pool's connections); then each round runs
//! every contender for `BENCH_SECS`, in `BENCH_SLICES` (default 3) passes over the contenders,
//! forwards and backwards in turn, so that neighbours in the list (the layer and the session
//! handler, say) always run back to back, and each round's figures are taken over the same few
//! seconds of the machine's drift for every contender. The
//! report gives each contender's median requests/s (min–max) and costs, the ratios (of the
//! medians, round by round, and by CPU time per request), and the goals: the dbscope layer at least 1.3×
//! axum-sqlx-tx and within 5 % of the hand-written dbscope session handler (the layer costs
//! nothing); in autocommit mode, at least 0.9× the bare select on a `PgPool`; with safe methods
//! read-only, at least 25× the Python seed's 950 requests/s (23,750). Against sqlx, each
//! goal is given for its defaults (the goal as set) and for `test_before_acquire(false)`.
//!
//! The goals are reported, not enforced: the run exits 0 either way. It exits 1 if any request
//! fails or a check finds a problem, 2 on a setup problem. Before measuring, a probe route on
//! each contender checks that its statements run inside a transaction block, or outside one for
//! the autocommit contenders (`transaction_timestamp() <> statement_timestamp()` on the server);
//! after every measurement, that none of the benchmark's connections is left idle in transaction;
//! at the end, that the server committed at least one transaction per request counted.
//!
//! # The files
//!
//! `main.rs` (this one) starts the server side or, as the child process, the load client, and
//! runs the rounds; [`settings`] reads the environment; [`contenders`] names the contenders;
//! [`routes`] holds the handlers and each contender's router; [`setup`] prepares the database,
//! serves every contender and holds the checks; [`client`] is the load client; [`measure`] runs
//! it against one contender and reads what the requests cost ([`costs`]); [`report`] prints it
//! all. The rounds, medians, `/proc` readings and server checks come from the crate's harness.

mod client;
mod contenders;
mod costs;
mod measure;
mod report;
mod routes;
mod settings;
mod setup;

use std::process::ExitCode;

use dbscope_benches::{Failure, Rounds, Table, exit_code, setup_problem};

use crate::measure::measure;
use crate::routes::SELECT;
use crate::settings::Settings;
use crate::setup::Setup;

/// The first argument that makes this binary the load client.
const CLIENT_FLAG: &str = "--dbscope-http-load-client";

/// Connections per pool.
const POOL_SIZE: u32 = 8;

/// `dbscope_http_bench`, rows `1..=10,000` with `v = 3 * id`.
const TABLE: Table = Table {
    create: "CREATE TABLE IF NOT EXISTS dbscope_http_bench (id INT PRIMARY KEY, v INT NOT NULL)",
    fill: "INSERT INTO dbscope_http_bench (id, v) SELECT i, 3 * i FROM generate_series(1, $1) AS i \
           ON CONFLICT (id) DO NOTHING",
    rows: 10_000,
};

/// The `application_name` of every pooled connection, to find them in `pg_stat_activity`.
const APP_NAME: &str = "dbscope-http-bench";
const ADMIN_APP_NAME: &str = "dbscope-http-bench-admin";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(CLIENT_FLAG) {
        return client::client_main(args.collect());
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => return setup_problem(message),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return setup_problem(format_args!("cannot start the tokio runtime: {e}")),
    };
    runtime.block_on(server_main(settings))
}

async fn server_main(settings: Settings) -> ExitCode {
    let mut setup = match Setup::open(&settings).await {
        Ok(setup) => setup,
        Err(e) => return setup_problem(format_args!("setup failed: {e}")),
    };
    let outcome = match setup.check_modes().await {
        Ok(()) => bench(&mut setup, &settings).await,
        Err(first) => Err(Failure::problems("probe", 1, first)),
    };
    let requests = *outcome.as_ref().unwrap_or(&0);
    let teardown = setup.close(requests).await;
    exit_code(outcome, teardown)
}

/// Warm-up, then the interleaved rounds, then the report; returns how many requests ran in all.
async fn bench(setup: &mut Setup, settings: &Settings) -> Result<u64, Failure> {
    println!(
        "dbscope HTTP benchmark: {} keep-alive connections from a second process, {POOL_SIZE} \
         connections per pool, {}, nothing pinned",
        settings.connections,
        settings.common.rounds_text(),
    );
    println!("endpoint: GET /rows/{{id}} -> `{SELECT}` -> JSON");
    println!(
        "sqlx pools: PgPoolOptions::new().max_connections({POOL_SIZE}) (test_before_acquire \
         true, fair, acquire 30 s, idle 10 min, lifetime 30 min), and the same with \
         test_before_acquire(false); dbscope: BindConfig::new(url).max_connections({POOL_SIZE}) \
         (ping if idle > 30 s)"
    );
    println!(
        "per request: CPU µs of srv = this server process, cli = the load client, pg = the \
         PostgreSQL backends of the pools, and their sum; others = other processes' CPU µs; \
         busy = machine CPU busy; lo = loopback packets\n"
    );
    let mut rounds = Rounds::new(setup.contenders.len(), &settings.common);
    while let Some(step) = rounds.next_step() {
        let contender = &setup.contenders[step.contender];
        let name = contender.kind.name();
        let run = measure(
            &mut setup.admin,
            contender,
            step.duration,
            settings.connections,
        )
        .await?;
        if step.is_warm_up() {
            report::print_run(name, &run);
        }
        if let Some(round) = rounds.record(step, run) {
            report::print_run(name, &round);
        }
        if !step.is_warm_up() {
            setup
                .check_no_open_transaction()
                .await
                .map_err(|first| Failure::problems(name, 1, first))?;
        }
    }
    report::report(&setup.contenders, rounds.runs());
    Ok(rounds.total())
}
