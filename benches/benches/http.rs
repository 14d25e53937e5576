//! Requests per second of one HTTP endpoint: dbscope's tower layer against axum-sqlx-tx and
//! hand-written handlers, under the same load from a second process.
//!
//! Run it with:
//!
//! ```text
//! DBSCOPE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench http --features postgres,axum
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
//! with statement logging off (as dbscope sets it). One dbscope bind serves the four dbscope
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
//! every contender for `BENCH_SECS`, in an order that rotates from round to round. The report
//! gives each contender's median requests/s (min–max) and costs, the ratios (of the medians,
//! round by round, and by CPU time per request), and the goals: the dbscope layer at least 1.3×
//! axum-sqlx-tx and within 5 % of the hand-written dbscope session handler (the layer costs
//! nothing); in autocommit mode, at least 0.9× the bare select on a `PgPool`. Against sqlx, each
//! goal is given for its defaults (the goal as set) and for `test_before_acquire(false)`.
//!
//! The goals are reported, not enforced: the run exits 0 either way. It exits 1 if any request
//! fails or a check finds a problem, 2 on a setup problem. Before measuring, a probe route on
//! each contender checks that its statements run inside a transaction block, or outside one for
//! the autocommit contenders (`transaction_timestamp() <> statement_timestamp()` on the server);
//! after every measurement, that none of the benchmark's connections is left idle in transaction;
//! at the end, that the server committed at least one transaction per request counted.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{ExitCode, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::serve::ListenerExt;
use axum_sqlx_tx::Tx;
use dbscope::axum::{DbError, DbSession};
use dbscope::tower::ScopeLayer;
use dbscope::{BindConfig, BindManager, DEFAULT_BIND, DefaultBind};
use hyper::body::Body as _;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, Postgres, Row as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const URL_ENV: &str = "DBSCOPE_TEST_PG_URL";
const ROUNDS_ENV: &str = "BENCH_ROUNDS";
const SECS_ENV: &str = "BENCH_SECS";
const CONNECTIONS_ENV: &str = "BENCH_CONNECTIONS";

/// The first argument that makes this binary the load client.
const CLIENT_FLAG: &str = "--dbscope-http-load-client";

const POOL_SIZE: u32 = 8;
const ROWS: i32 = 10_000;
const WARM_UP: Duration = Duration::from_secs(1);

/// The `application_name` of every pooled connection, to find them in `pg_stat_activity`.
const APP_NAME: &str = "dbscope-http-bench";
const ADMIN_APP_NAME: &str = "dbscope-http-bench-admin";

const SELECT: &str = "SELECT id, v FROM dbscope_http_bench WHERE id = $1";
/// True inside a transaction block, after its first statement: the block's timestamp is that of
/// its BEGIN, earlier than this statement's. Sent as a simple query (no parameters): outside a
/// block, the statement's implicit transaction starts with its one message, at the same time.
const PROBE_SQL: &str = "SELECT transaction_timestamp() <> statement_timestamp()";

const ROW_ROUTE: &str = "/rows/{id}";
const PROBE_ROUTE: &str = "/probe/{id}";

/// Goal: dbscope layer / best axum-sqlx-tx configuration.
const GOAL_VS_AXUM_SQLX_TX: f64 = 1.3;
/// Goal: dbscope layer / hand-written dbscope session handler (within 5 %).
const GOAL_VS_SESSION_HANDLER: f64 = 0.95;
/// Goal: dbscope layer in autocommit mode / best bare select on a `PgPool`.
const GOAL_AUTOCOMMIT_VS_BARE: f64 = 0.9;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(CLIENT_FLAG) {
        return client_main(args.collect());
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
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
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(server_main(settings))
}

async fn server_main(settings: Settings) -> ExitCode {
    let mut setup = match Setup::open(&settings).await {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("setup failed: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match setup.check_modes().await {
        Ok(()) => bench(&mut setup, &settings).await,
        Err(first) => Err(Failure {
            contender: "probe",
            problems: 1,
            first,
        }),
    };
    let requests = *outcome.as_ref().unwrap_or(&0);
    let teardown = setup.close(requests).await;
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
    connections: usize,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let Ok(url) = std::env::var(URL_ENV) else {
            return Err(format!(
                "{URL_ENV} is not set: point it at a PostgreSQL database the benchmark may create \
                 a table in, e.g.\n\n  {URL_ENV}=postgres://postgres@127.0.0.1:5432/test cargo \
                 bench --bench http --features postgres,axum"
            ));
        };
        let rounds: usize = env_or(ROUNDS_ENV, 5)?;
        if rounds == 0 {
            return Err(format!("{ROUNDS_ENV} must be at least 1"));
        }
        let secs: f64 = env_or(SECS_ENV, 3.0)?;
        let round_time = Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!("{SECS_ENV} must be a positive number of seconds, got {secs}")
            })?;
        let connections: usize = env_or(CONNECTIONS_ENV, 16)?;
        if connections == 0 {
            return Err(format!("{CONNECTIONS_ENV} must be at least 1"));
        }
        Ok(Self {
            url,
            rounds,
            round_time,
            connections,
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

/// Which sqlx pool configuration a sqlx contender uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SqlxPool {
    /// `PgPoolOptions::new()`: pings on acquire.
    Defaults,
    /// `.test_before_acquire(false)`.
    NoTest,
}

/// One way of serving the endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Layer,
    SessionHandler,
    AxumSqlxTx(SqlxPool),
    PgPoolTx(SqlxPool),
    LayerAutocommit,
    SessionAutocommit,
    PgPoolSelect(SqlxPool),
}

const KINDS: [Kind; 10] = [
    Kind::Layer,
    Kind::SessionHandler,
    Kind::AxumSqlxTx(SqlxPool::Defaults),
    Kind::AxumSqlxTx(SqlxPool::NoTest),
    Kind::PgPoolTx(SqlxPool::Defaults),
    Kind::PgPoolTx(SqlxPool::NoTest),
    Kind::LayerAutocommit,
    Kind::SessionAutocommit,
    Kind::PgPoolSelect(SqlxPool::Defaults),
    Kind::PgPoolSelect(SqlxPool::NoTest),
];

impl Kind {
    fn name(self) -> &'static str {
        use SqlxPool::{Defaults, NoTest};
        match self {
            Self::Layer => "dbscope layer",
            Self::SessionHandler => "dbscope session handler",
            Self::AxumSqlxTx(Defaults) => "axum-sqlx-tx (PgPool defaults)",
            Self::AxumSqlxTx(NoTest) => "axum-sqlx-tx (test_before_acquire=false)",
            Self::PgPoolTx(Defaults) => "PgPool tx handler (defaults)",
            Self::PgPoolTx(NoTest) => "PgPool tx handler (test_before_acquire=false)",
            Self::LayerAutocommit => "dbscope layer, autocommit",
            Self::SessionAutocommit => "dbscope session handler, autocommit",
            Self::PgPoolSelect(Defaults) => "PgPool bare select (defaults)",
            Self::PgPoolSelect(NoTest) => "PgPool bare select (test_before_acquire=false)",
        }
    }

    /// Whether the endpoint's select runs inside a transaction block.
    fn transactional(self) -> bool {
        matches!(
            self,
            Self::Layer | Self::SessionHandler | Self::AxumSqlxTx(_) | Self::PgPoolTx(_)
        )
    }

    /// The contender's router: the measured route, and the probe route of the same handler.
    fn router(self, pools: &Pools) -> Result<Router, dbscope::Error> {
        Ok(match self {
            Self::Layer => routes(get(scoped::<false>), get(scoped::<true>))
                .layer(ScopeLayer::new(&pools.manager)),
            Self::LayerAutocommit => routes(get(scoped::<false>), get(scoped::<true>))
                .layer(ScopeLayer::with_scope(pools.manager.scope().autocommit())?),
            Self::SessionHandler => routes(get(session_tx::<false>), get(session_tx::<true>))
                .with_state(pools.manager.clone()),
            Self::SessionAutocommit => routes(
                get(session_autocommit::<false>),
                get(session_autocommit::<true>),
            )
            .with_state(pools.manager.clone()),
            Self::AxumSqlxTx(pool) => {
                let (state, layer) = Tx::<Postgres>::setup(pools.sqlx(pool));
                routes(get(axum_sqlx_tx::<false>), get(axum_sqlx_tx::<true>))
                    .layer(layer)
                    .with_state(state)
            }
            Self::PgPoolTx(pool) => {
                routes(get(pool_tx::<false>), get(pool_tx::<true>)).with_state(pools.sqlx(pool))
            }
            Self::PgPoolSelect(pool) => routes(get(pool_select::<false>), get(pool_select::<true>))
                .with_state(pools.sqlx(pool)),
        })
    }
}

/// The measured route and the probe route, both served by `handler::<false>` and
/// `handler::<true>`.
fn routes<S: Clone + Send + Sync + 'static>(
    row: MethodRouter<S>,
    probe: MethodRouter<S>,
) -> Router<S> {
    Router::new()
        .route(ROW_ROUTE, row)
        .route(PROBE_ROUTE, probe)
}

/// The endpoint's answer; the probe route adds whether the select ran in a transaction block.
#[derive(Serialize)]
struct Reply {
    id: i32,
    v: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_transaction: Option<bool>,
}

impl Reply {
    fn new((id, v): (i32, i32), in_transaction: Option<bool>) -> Json<Self> {
        Json(Self {
            id,
            v,
            in_transaction,
        })
    }
}

async fn fetch_row<'c>(
    conn: impl Executor<'c, Database = Postgres>,
    id: i32,
) -> sqlx::Result<(i32, i32)> {
    sqlx::query_as(SELECT).bind(id).fetch_one(conn).await
}

/// With `PROBE`, whether the connection is inside a transaction block; without, nothing (and no
/// round trip).
async fn probe<'c, const PROBE: bool>(
    conn: impl Executor<'c, Database = Postgres>,
) -> sqlx::Result<Option<bool>> {
    if !PROBE {
        return Ok(None);
    }
    conn.fetch_one(PROBE_SQL).await?.try_get(0).map(Some)
}

type Db = DbSession<DefaultBind<Postgres>>;

/// Behind a `ScopeLayer` (transactional or autocommit): the request's session.
async fn scoped<const PROBE: bool>(
    Path(id): Path<i32>,
    mut db: Db,
) -> Result<Json<Reply>, DbError> {
    let row = fetch_row(&mut *db, id).await?;
    let in_transaction = probe::<PROBE>(&mut *db).await?;
    Ok(Reply::new(row, in_transaction))
}

/// A dbscope session of the handler's own, committed by the handler.
async fn session_tx<const PROBE: bool>(
    State(manager): State<BindManager>,
    Path(id): Path<i32>,
) -> Result<Json<Reply>, DbError> {
    let mut session = manager.session::<Postgres>(DEFAULT_BIND)?;
    let row = fetch_row(&mut session, id).await?;
    let in_transaction = probe::<PROBE>(&mut session).await?;
    session.commit().await?;
    Ok(Reply::new(row, in_transaction))
}

/// A dbscope session of the handler's own, in autocommit mode.
async fn session_autocommit<const PROBE: bool>(
    State(manager): State<BindManager>,
    Path(id): Path<i32>,
) -> Result<Json<Reply>, DbError> {
    let mut session = manager.session::<Postgres>(DEFAULT_BIND)?.autocommit(true);
    let row = fetch_row(&mut session, id).await?;
    let in_transaction = probe::<PROBE>(&mut session).await?;
    Ok(Reply::new(row, in_transaction))
}

/// axum-sqlx-tx's request transaction, committed by its layer.
async fn axum_sqlx_tx<const PROBE: bool>(
    Path(id): Path<i32>,
    mut tx: Tx<Postgres>,
) -> Result<Json<Reply>, axum_sqlx_tx::Error> {
    let row = fetch_row(&mut tx, id).await?;
    let in_transaction = probe::<PROBE>(&mut tx).await?;
    Ok(Reply::new(row, in_transaction))
}

/// A `PgPool` transaction, begun and committed by the handler.
async fn pool_tx<const PROBE: bool>(
    State(pool): State<PgPool>,
    Path(id): Path<i32>,
) -> Result<Json<Reply>, Fail> {
    let mut tx = pool.begin().await?;
    let row = fetch_row(&mut *tx, id).await?;
    let in_transaction = probe::<PROBE>(&mut *tx).await?;
    tx.commit().await?;
    Ok(Reply::new(row, in_transaction))
}

/// The select on the `PgPool` itself: no transaction.
async fn pool_select<const PROBE: bool>(
    State(pool): State<PgPool>,
    Path(id): Path<i32>,
) -> Result<Json<Reply>, Fail> {
    let row = fetch_row(&pool, id).await?;
    let in_transaction = probe::<PROBE>(&pool).await?;
    Ok(Reply::new(row, in_transaction))
}

/// A hand-written handler's error: 500, with the error as the body.
struct Fail(String);

impl From<sqlx::Error> for Fail {
    fn from(error: sqlx::Error) -> Self {
        Self(error.to_string())
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.0).into_response()
    }
}

/// A contender, served.
struct Contender {
    kind: Kind,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

// ----- setup, sanity checks, teardown -----

/// The pools the contenders share: one contender runs at a time.
struct Pools {
    manager: BindManager,
    sqlx_defaults: PgPool,
    sqlx_no_test: PgPool,
}

impl Pools {
    fn sqlx(&self, pool: SqlxPool) -> PgPool {
        match pool {
            SqlxPool::Defaults => self.sqlx_defaults.clone(),
            SqlxPool::NoTest => self.sqlx_no_test.clone(),
        }
    }
}

/// The database prepared, the pools built (no connection opened yet), every contender serving.
struct Setup {
    /// For setup queries and the checks; not part of any pool.
    admin: PgConnection,
    /// The database's committed-transaction count before the benchmark.
    commits_before: i64,
    pools: Pools,
    contenders: Vec<Contender>,
}

impl Setup {
    async fn open(settings: &Settings) -> Result<Self, BoxError> {
        let options = PgConnectOptions::from_str(&settings.url)
            .map_err(|e| format!("{URL_ENV} is not a valid PostgreSQL URL: {e}"))?
            .disable_statement_logging();
        let mut admin =
            PgConnection::connect_with(&options.clone().application_name(ADMIN_APP_NAME))
                .await
                .map_err(|e| format!("cannot connect to {URL_ENV}: {e}"))?;
        prepare_table(&mut admin).await?;
        let commits_before = committed_transactions(&mut admin).await?;

        let manager = BindManager::builder()
            .bind(
                DEFAULT_BIND,
                BindConfig::new(settings.url.as_str())
                    .max_connections(POOL_SIZE)
                    .application_name(APP_NAME),
            )
            .build()?;
        let options = options.application_name(APP_NAME);
        let sqlx_defaults = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_lazy_with(options.clone());
        let sqlx_no_test = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .test_before_acquire(false)
            .connect_lazy_with(options);
        let pools = Pools {
            manager,
            sqlx_defaults,
            sqlx_no_test,
        };

        let mut contenders = Vec::with_capacity(KINDS.len());
        for kind in KINDS {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    eprintln!("cannot set TCP_NODELAY: {e}");
                }
            });
            let router = kind.router(&pools)?;
            let server = tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    eprintln!("{}: server failed: {e}", kind.name());
                }
            });
            contenders.push(Contender { kind, addr, server });
        }
        Ok(Self {
            admin,
            commits_before,
            pools,
            contenders,
        })
    }

    /// Checks, through each contender's probe route, that its select runs inside a transaction
    /// block (or outside one, for the autocommit contenders): that it does the work it claims.
    async fn check_modes(&mut self) -> Result<(), String> {
        for contender in &self.contenders {
            let name = contender.kind.name();
            let id = 42;
            let mut conn = Conn::open(contender.addr)
                .await
                .map_err(|e| format!("{name}: cannot connect: {e}"))?;
            let status = conn
                .get(&format!("/probe/{id}"))
                .await
                .map_err(|e| format!("{name}: probe failed: {e}"))?;
            let expected = format!(
                "{{\"id\":{id},\"v\":{},\"in_transaction\":{}}}",
                3 * id,
                contender.kind.transactional()
            );
            if !status.is_success() || conn.body != expected.as_bytes() {
                return Err(format!(
                    "{name}: the probe answered {status} {:?}, expected {expected}",
                    String::from_utf8_lossy(&conn.body)
                ));
            }
        }
        self.check_no_open_transaction().await
    }

    /// None of the benchmark's pooled connections may be idle in transaction once the client
    /// has all its answers.
    async fn check_no_open_transaction(&mut self) -> Result<(), String> {
        match idle_in_transaction(&mut self.admin).await {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!(
                "{n} of the benchmark's connections idle in transaction after the answers"
            )),
            Err(e) => Err(format!("cannot read pg_stat_activity: {e}")),
        }
    }

    /// Stops the servers, closes every pool, then checks that no connection was left inside a
    /// transaction and that the server committed a transaction per request counted.
    async fn close(mut self, requests: u64) -> Result<(), BoxError> {
        println!("\nteardown");
        let status = self.pools.manager.status();
        for bind in &status {
            println!(
                "  dbscope bind: opened {} connections, discarded {}, checkout timeouts {}",
                bind.opened, bind.discarded, bind.timeouts
            );
        }
        for contender in &self.contenders {
            contender.server.abort();
        }
        self.pools.sqlx_defaults.close().await;
        self.pools.sqlx_no_test.close().await;
        self.pools.manager.close(Duration::from_secs(5)).await?;
        // Closed connections leave the server asynchronously: wait for them.
        let left = wait_for_pooled_backends(&mut self.admin, Duration::from_secs(5)).await?;
        let in_tx = idle_in_transaction(&mut self.admin).await?;
        let commits = committed_transactions(&mut self.admin).await? - self.commits_before;
        println!("  benchmark connections idle in transaction: {in_tx}");
        println!("  benchmark connections still open after closing the pools: {left}");
        println!(
            "  server commits during the run (whole database): {commits}, for {requests} \
             requests counted"
        );
        self.admin.close().await?;
        if in_tx > 0 {
            return Err(format!("{in_tx} connection(s) left idle in transaction").into());
        }
        if commits < i64::try_from(requests)? {
            return Err(format!(
                "the server committed {commits} transactions, fewer than the {requests} requests \
                 counted"
            )
            .into());
        }
        Ok(())
    }
}

/// Creates `dbscope_http_bench` with rows 1..=10,000 (`v = 3 * id`), if not there yet.
async fn prepare_table(admin: &mut PgConnection) -> sqlx::Result<()> {
    admin
        .execute(
            "CREATE TABLE IF NOT EXISTS dbscope_http_bench (id INT PRIMARY KEY, v INT NOT NULL)",
        )
        .await?;
    sqlx::query(
        "INSERT INTO dbscope_http_bench (id, v) SELECT i, 3 * i FROM generate_series(1, $1) AS i \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(ROWS)
    .execute(&mut *admin)
    .await?;
    Ok(())
}

/// The benchmark's pooled connections that are idle inside a transaction.
async fn idle_in_transaction(admin: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
    )
    .bind(APP_NAME)
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

/// Waits until none of the benchmark's pooled connections is open, or `limit` passes; returns
/// how many are left.
async fn wait_for_pooled_backends(admin: &mut PgConnection, limit: Duration) -> sqlx::Result<i64> {
    let give_up = Instant::now() + limit;
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(APP_NAME)
                .fetch_one(&mut *admin)
                .await?;
        if left == 0 || Instant::now() >= give_up {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ----- the load client (a child process) -----

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    sender: SendRequest<String>,
    /// The last answer's body.
    body: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection); // drives the connection; ends with it
        Ok(Self {
            sender,
            body: Vec::new(),
        })
    }

    /// Sends `GET path` and reads the whole answer: its status, its body in `self.body`.
    async fn get(&mut self, path: &str) -> Result<StatusCode, BoxError> {
        let request = hyper::Request::get(path)
            .header(HOST, HeaderValue::from_static("127.0.0.1"))
            .body(String::new())?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        self.body.clear();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if let Ok(data) = frame?.into_data() {
                self.body.extend_from_slice(&data);
            }
        }
        Ok(status)
    }
}

/// What the load client counted.
#[derive(Default)]
struct Tally {
    /// 2xx answers with the expected body.
    ok: u64,
    /// Answers of another status.
    non_2xx: u64,
    /// Wrong bodies, transport errors.
    errors: u64,
    first_problem: Option<String>,
    elapsed: Duration,
    /// The client process's CPU time (Linux).
    cpu: Option<Duration>,
}

impl Tally {
    fn problem(&mut self, what: String) {
        self.first_problem.get_or_insert(what);
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        if let Some(what) = other.first_problem {
            self.problem(what);
        }
    }

    /// One line for the parent: `key=value` pairs, the first problem last (it may hold spaces).
    fn to_line(&self) -> String {
        let mut line = format!(
            "ok={} non_2xx={} errors={} elapsed_us={} cpu_us={}",
            self.ok,
            self.non_2xx,
            self.errors,
            self.elapsed.as_micros(),
            self.cpu.map_or(-1, |cpu| cpu.as_micros() as i64)
        );
        if let Some(what) = &self.first_problem {
            let _ = write!(line, " first_problem={}", what.replace('\n', " "));
        }
        line
    }

    fn from_line(line: &str) -> Result<Self, String> {
        let (fields, first_problem) = match line.split_once(" first_problem=") {
            Some((fields, what)) => (fields, Some(what.to_owned())),
            None => (line, None),
        };
        let mut tally = Tally {
            first_problem,
            ..Tally::default()
        };
        for field in fields.split_whitespace() {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("bad field {field:?}"))?;
            let number: i64 = value
                .parse()
                .map_err(|_| format!("bad value in {field:?}"))?;
            let count = u64::try_from(number).ok();
            match key {
                "ok" => tally.ok = count.unwrap_or(0),
                "non_2xx" => tally.non_2xx = count.unwrap_or(0),
                "errors" => tally.errors = count.unwrap_or(0),
                "elapsed_us" => tally.elapsed = Duration::from_micros(count.unwrap_or(0)),
                "cpu_us" => tally.cpu = count.map(Duration::from_micros),
                _ => return Err(format!("unknown field {field:?}")),
            }
        }
        Ok(tally)
    }
}

/// The child process: `CLIENT_FLAG <addr> <seconds> <connections>`; prints its tally.
fn client_main(args: Vec<String>) -> ExitCode {
    let parsed = match &args[..] {
        [addr, secs, connections] => addr
            .parse::<SocketAddr>()
            .ok()
            .zip(
                secs.parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok()),
            )
            .zip(connections.parse::<usize>().ok()),
        _ => None,
    };
    let Some(((addr, duration), connections)) = parsed else {
        eprintln!("usage: {CLIENT_FLAG} <addr> <seconds> <connections>, got {args:?}");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("load client: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let mut tally = runtime.block_on(load(addr, duration, connections));
    tally.cpu = cpu_time("/proc/self/stat");
    println!("{}", tally.to_line());
    ExitCode::SUCCESS
}

/// `connections` connections sending requests back to back until `duration` has passed; a
/// request started before then counts whole.
async fn load(addr: SocketAddr, duration: Duration, connections: usize) -> Tally {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for connection in 0..connections {
        tasks.spawn(load_one(addr, deadline, connection as u64));
    }
    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(one) => tally.add(one),
            Err(e) => {
                tally.errors += 1;
                tally.problem(format!("a connection's task failed: {e}"));
            }
        }
    }
    tally.elapsed = start.elapsed();
    tally
}

async fn load_one(addr: SocketAddr, deadline: Instant, seed: u64) -> Tally {
    let mut tally = Tally::default();
    let mut conn = match Conn::open(addr).await {
        Ok(conn) => conn,
        Err(e) => {
            tally.errors += 1;
            tally.problem(format!("cannot connect to {addr}: {e}"));
            return tally;
        }
    };
    let mut ids = Ids::new(seed);
    let (mut path, mut expected) = (String::new(), String::new());
    while Instant::now() < deadline {
        let id = ids.next_id();
        path.clear();
        let _ = write!(path, "/rows/{id}");
        match conn.get(&path).await {
            Ok(status) if status.is_success() => {
                expected.clear();
                let _ = write!(expected, "{{\"id\":{id},\"v\":{}}}", 3 * id);
                if conn.body == expected.as_bytes() {
                    tally.ok += 1;
                } else {
                    tally.errors += 1;
                    tally.problem(format!(
                        "GET {path}: answered {:?}, expected {expected}",
                        String::from_utf8_lossy(&conn.body)
                    ));
                }
            }
            Ok(status) => {
                tally.non_2xx += 1;
                tally.problem(format!(
                    "GET {path}: {status} {:?}",
                    String::from_utf8_lossy(&conn.body)
                ));
            }
            Err(e) => {
                tally.errors += 1;
                tally.problem(format!("GET {path}: {e}"));
                break; // the connection is gone
            }
        }
    }
    tally
}

/// A cheap xorshift over 1..=ROWS, one stream per connection.
struct Ids(u64);

impl Ids {
    fn new(seed: u64) -> Self {
        Self(0x9E37_79B9_7F4A_7C15 ^ (seed + 1).wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn next_id(&mut self) -> i32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % ROWS as u64) as i32 + 1
    }
}

// ----- measuring -----

/// What went wrong in a measured run.
struct Failure {
    contender: &'static str,
    problems: u64,
    first: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} problem(s); first: {}",
            self.contender, self.problems, self.first
        )
    }
}

/// What one measurement counted.
#[derive(Clone, Copy)]
struct Run {
    requests: u64,
    per_second: f64,
    /// Where the machine's time went (Linux).
    costs: Option<Costs>,
}

/// Per request: CPU time in µs, and loopback packets.
#[derive(Clone, Copy)]
struct Costs {
    /// This process: the HTTP server, the handlers, the pools.
    server: f64,
    /// The load client.
    client: f64,
    /// The PostgreSQL backends of the benchmark's pooled connections.
    postgres: f64,
    /// The whole machine (every process, the kernel).
    machine: f64,
    /// The share of the machine's CPU time that was busy.
    busy: f64,
    /// Packets sent on the loopback interface (the whole machine's): the HTTP request and
    /// answer, and each round trip with PostgreSQL, are two.
    loopback: f64,
}

impl Costs {
    /// The CPU time of the benchmark's own work: server, client, PostgreSQL backends. On a
    /// saturated machine, requests/s = cores / this; unlike requests/s, it does not move with
    /// other processes' load.
    fn ours(&self) -> f64 {
        self.server + self.client + self.postgres
    }

    /// Other processes' CPU time (and what the kernel does for no process in particular).
    fn others(&self) -> f64 {
        self.machine - self.ours()
    }

    /// The medians, field by field.
    fn median(all: &[Costs]) -> Costs {
        let median = |field: fn(&Costs) -> f64| Summary::of(all.iter().map(field)).median;
        Costs {
            server: median(|c| c.server),
            client: median(|c| c.client),
            postgres: median(|c| c.postgres),
            machine: median(|c| c.machine),
            busy: median(|c| c.busy),
            loopback: median(|c| c.loopback),
        }
    }
}

impl fmt::Display for Costs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "srv {:5.1} cli {:5.1} pg {:5.1} = {:5.1} | others {:5.1} busy {:3.0}% | lo {:4.1}",
            self.server,
            self.client,
            self.postgres,
            self.ours(),
            self.others(),
            self.busy * 100.0,
            self.loopback
        )
    }
}

/// The counters `Costs` come from, read before and after a measurement (Linux).
struct Counters {
    server: Duration,
    postgres: HashMap<i32, Duration>,
    machine: MachineCpu,
    loopback: u64,
}

impl Counters {
    async fn read(admin: &mut PgConnection) -> Option<Self> {
        let pids: Vec<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
                .bind(APP_NAME)
                .fetch_all(admin)
                .await
                .ok()?;
        let postgres = pids
            .into_iter()
            .filter_map(|pid| Some((pid, cpu_time(&format!("/proc/{pid}/stat"))?)))
            .collect();
        Some(Self {
            server: cpu_time("/proc/self/stat")?,
            postgres,
            machine: machine_cpu()?,
            loopback: loopback_packets()?,
        })
    }

    /// The costs per request of the `requests` served between `before` and `self`.
    fn since(&self, before: &Counters, requests: u64, client: Option<Duration>) -> Option<Costs> {
        let per_request = |time: Duration| time.as_secs_f64() * 1e6 / requests.max(1) as f64;
        // A backend that started during the measurement counts whole.
        let postgres = self
            .postgres
            .iter()
            .map(|(pid, after)| {
                after.saturating_sub(*before.postgres.get(pid).unwrap_or(&Duration::ZERO))
            })
            .sum();
        let (busy, total) = self.machine.since(before.machine);
        Some(Costs {
            server: per_request(self.server.saturating_sub(before.server)),
            client: per_request(client?),
            postgres: per_request(postgres),
            machine: per_request(busy),
            busy: busy.as_secs_f64() / total.as_secs_f64().max(1e-9),
            loopback: (self.loopback - before.loopback) as f64 / requests.max(1) as f64,
        })
    }
}

/// Runs the load client against `contender` for `duration`, and counts.
async fn measure(
    admin: &mut PgConnection,
    contender: &Contender,
    duration: Duration,
    connections: usize,
) -> Result<Run, Failure> {
    let name = contender.kind.name();
    let before = Counters::read(admin).await;
    let tally = run_client(contender.addr, duration, connections)
        .await
        .map_err(|first| Failure {
            contender: name,
            problems: 1,
            first,
        })?;
    let after = Counters::read(admin).await;

    let problems = tally.non_2xx + tally.errors;
    if problems > 0 {
        return Err(Failure {
            contender: name,
            problems,
            first: format!(
                "{} non-2xx, {} errors; {}",
                tally.non_2xx,
                tally.errors,
                tally.first_problem.unwrap_or_default()
            ),
        });
    }
    let requests = tally.ok;
    let costs = before
        .zip(after)
        .and_then(|(before, after)| after.since(&before, requests, tally.cpu));
    Ok(Run {
        requests,
        per_second: requests as f64 / tally.elapsed.as_secs_f64(),
        costs,
    })
}

/// Starts the load client (this binary, again) and reads its tally.
async fn run_client(
    addr: SocketAddr,
    duration: Duration,
    connections: usize,
) -> Result<Tally, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg(CLIENT_FLAG)
        .arg(addr.to_string())
        .arg(duration.as_secs_f64().to_string())
        .arg(connections.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    // Waiting for the child blocks a thread: not one of the runtime's workers, which serve.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|e| format!("waiting for the load client failed: {e}"))?
        .map_err(|e| format!("cannot start the load client: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "the load client failed ({}): {stdout}",
            output.status
        ));
    }
    Tally::from_line(stdout.trim()).map_err(|e| format!("load client said {stdout:?}: {e}"))
}

/// The CPU time a process has used so far, user + system, from its `/proc/<pid>/stat` (Linux;
/// 10 ms ticks, plenty over a round).
fn cpu_time(stat_path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // After the command name (in parentheses, which may hold spaces) come fields 3, 4, …;
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(Duration::from_millis((ticks(14)? + ticks(15)?) * 10)) // USER_HZ is 100 on Linux
}

/// The machine's CPU time so far, all cores, from `/proc/stat`, in ticks of 10 ms.
#[derive(Clone, Copy)]
struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    /// Busy and total time between `before` and `self`.
    fn since(self, before: MachineCpu) -> (Duration, Duration) {
        let ticks = |n: u64| Duration::from_millis(n * 10);
        (
            ticks(self.busy.saturating_sub(before.busy)),
            ticks(self.total.saturating_sub(before.total)),
        )
    }
}

fn machine_cpu() -> Option<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is inside user already)
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let idle = n.get(3)? + n.get(4)?;
    let total: u64 = n.iter().sum();
    Some(MachineCpu {
        busy: total - idle,
        total,
    })
}

/// Packets sent so far on the loopback interface, from `/proc/net/dev` (Linux).
fn loopback_packets() -> Option<u64> {
    let dev = std::fs::read_to_string("/proc/net/dev").ok()?;
    let line = dev.lines().find(|l| l.trim_start().starts_with("lo:"))?;
    // lo: rx bytes, packets, errs, drop, fifo, frame, compressed, multicast; tx bytes, packets …
    let fields: Vec<&str> = line.split_once(':')?.1.split_whitespace().collect();
    fields.get(9)?.parse().ok()
}

/// Warm-up, then the interleaved rounds, then the report; returns how many requests ran in all.
async fn bench(setup: &mut Setup, settings: &Settings) -> Result<u64, Failure> {
    println!(
        "dbscope HTTP benchmark: {} keep-alive connections from a second process, {POOL_SIZE} \
         connections per pool, {} round(s) of {:.1} s per contender, {} CPU(s), nothing pinned",
        settings.connections,
        settings.rounds,
        settings.round_time.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, usize::from),
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
    let mut total = 0;
    let count = setup.contenders.len();

    println!("warm-up ({:.1} s each)", WARM_UP.as_secs_f64());
    for contender in &setup.contenders {
        let run = measure(&mut setup.admin, contender, WARM_UP, settings.connections).await?;
        print_run(contender.kind.name(), &run);
        total += run.requests;
    }

    // runs[contender][round]
    let mut runs: Vec<Vec<Run>> = vec![Vec::with_capacity(settings.rounds); count];
    for round in 0..settings.rounds {
        println!("round {}/{}", round + 1, settings.rounds);
        for k in 0..count {
            let index = (round + k) % count;
            let contender = &setup.contenders[index];
            let name = contender.kind.name();
            let run = measure(
                &mut setup.admin,
                contender,
                settings.round_time,
                settings.connections,
            )
            .await?;
            print_run(name, &run);
            runs[index].push(run);
            total += run.requests;
            setup
                .check_no_open_transaction()
                .await
                .map_err(|first| Failure {
                    contender: name,
                    problems: 1,
                    first,
                })?;
        }
    }

    report(&setup.contenders, &runs);
    Ok(total)
}

fn print_run(name: &str, run: &Run) {
    println!(
        "  {name:<48} {:>8.0} req/s   {}",
        run.per_second,
        costs_text(run.costs)
    );
}

fn costs_text(costs: Option<Costs>) -> String {
    costs.map_or_else(|| "costs n/a".to_owned(), |costs| costs.to_string())
}

// ----- the report -----

/// Median, min and max of a few figures.
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

impl Summary {
    fn of(figures: impl IntoIterator<Item = f64>) -> Self {
        let mut sorted: Vec<f64> = figures.into_iter().collect();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        Self {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }
}

impl fmt::Display for Summary {
    /// `median (min–max)`, with the precision asked for.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = f.precision().unwrap_or(0);
        write!(f, "{:.p$} ({:.p$}–{:.p$})", self.median, self.min, self.max)
    }
}

/// The figures of the report, per contender.
struct Figures<'a> {
    contenders: &'a [Contender],
    runs: &'a [Vec<Run>],
    /// Median requests/s.
    rates: Vec<f64>,
    /// Median costs, when measured.
    costs: Vec<Option<Costs>>,
}

impl Figures<'_> {
    fn index(&self, kind: Kind) -> usize {
        self.contenders
            .iter()
            .position(|c| c.kind == kind)
            .expect("every contender is present")
    }

    fn name(&self, i: usize) -> &'static str {
        self.contenders[i].kind.name()
    }

    /// `ours / other` of the median requests/s.
    fn ratio(&self, ours: usize, other: usize) -> f64 {
        self.rates[ours] / self.rates[other]
    }

    /// The same ratio taken round by round: each round runs the contenders close together in
    /// time, so it shows how much of a gap is noise.
    fn per_round(&self, ours: usize, other: usize) -> Summary {
        Summary::of(
            self.runs[ours]
                .iter()
                .zip(&self.runs[other])
                .map(|(o, t)| o.per_second / t.per_second),
        )
    }

    /// The requests/s ratio on a machine of our own: `other`'s CPU time per request over ours.
    fn cpu_ratio(&self, ours: usize, other: usize) -> Option<f64> {
        let (ours, other) = (self.costs[ours]?, self.costs[other]?);
        Some(other.ours() / ours.ours())
    }

    fn print_ratio(&self, ours: usize, other: usize) {
        let label = format!("{} / {}", self.name(ours), self.name(other));
        println!(
            "  {label:<84} {:>5.2}x   {:<18} {}",
            self.ratio(ours, other),
            format!("{:.2}", self.per_round(ours, other)),
            self.cpu_ratio(ours, other)
                .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}x"))
        );
    }

    fn print_goal(&self, goal: &str, ours: usize, other: usize, at_least: f64) {
        let ratio = self.ratio(ours, other);
        let by_cpu = self.cpu_ratio(ours, other).map_or_else(String::new, |r| {
            format!("; by CPU per request {r:.2}x, {}", verdict(r >= at_least))
        });
        println!(
            "  {}  {goal}: {ratio:.2}x ({:+.1}%){by_cpu}",
            verdict(ratio >= at_least),
            (ratio - 1.0) * 100.0
        );
    }
}

fn report(contenders: &[Contender], runs: &[Vec<Run>]) {
    let figures = Figures {
        contenders,
        runs,
        rates: runs
            .iter()
            .map(|r| Summary::of(r.iter().map(|run| run.per_second)).median)
            .collect(),
        costs: runs
            .iter()
            .map(|r| {
                let all: Option<Vec<Costs>> = r.iter().map(|run| run.costs).collect();
                all.map(|all| Costs::median(&all))
            })
            .collect(),
    };
    println!(
        "\nresults: requests/s, median over the rounds (min–max); per request, medians: CPU µs \
         and loopback packets"
    );
    for (i, runs) in runs.iter().enumerate() {
        let rate = Summary::of(runs.iter().map(|run| run.per_second));
        println!(
            "  {:<48} {:<22} {}",
            figures.name(i),
            rate.to_string(),
            costs_text(figures.costs[i])
        );
    }

    let noise = figures
        .costs
        .iter()
        .flatten()
        .map(|c| c.others() / c.ours())
        .fold(0.0, f64::max);
    if noise > 0.1 {
        println!(
            "\nNOTE: other processes used up to {:.0}% of the CPU time these requests did: the \
             requests/s figures measure the machine's load as much as the contenders; the CPU \
             ratios below do not",
            noise * 100.0
        );
    }

    let layer = figures.index(Kind::Layer);
    let autocommit = figures.index(Kind::LayerAutocommit);
    let session = figures.index(Kind::SessionHandler);
    println!(
        "\nratios: of the median requests/s; round by round: median (min–max); by CPU per \
         request (theirs / ours: the ratio on a machine of our own)"
    );
    for other in [
        Kind::AxumSqlxTx(SqlxPool::Defaults),
        Kind::AxumSqlxTx(SqlxPool::NoTest),
        Kind::PgPoolTx(SqlxPool::Defaults),
        Kind::PgPoolTx(SqlxPool::NoTest),
        Kind::SessionHandler,
    ] {
        figures.print_ratio(layer, figures.index(other));
    }
    for other in [
        Kind::PgPoolSelect(SqlxPool::Defaults),
        Kind::PgPoolSelect(SqlxPool::NoTest),
        Kind::SessionAutocommit,
    ] {
        figures.print_ratio(autocommit, figures.index(other));
    }
    figures.print_ratio(autocommit, layer);

    // Against sqlx, the goals name its defaults; the stricter line is against the configuration
    // without a ping on acquire (the way dbscope's default health check runs in steady use).
    println!("\ngoals (on the median requests/s, and on the CPU time per request)");
    for pool in [SqlxPool::Defaults, SqlxPool::NoTest] {
        let other = figures.index(Kind::AxumSqlxTx(pool));
        figures.print_goal(
            &format!(
                "dbscope layer >= {GOAL_VS_AXUM_SQLX_TX}x {}",
                figures.name(other)
            ),
            layer,
            other,
            GOAL_VS_AXUM_SQLX_TX,
        );
    }
    figures.print_goal(
        "dbscope layer within 5% of the dbscope session handler",
        layer,
        session,
        GOAL_VS_SESSION_HANDLER,
    );
    for pool in [SqlxPool::Defaults, SqlxPool::NoTest] {
        let other = figures.index(Kind::PgPoolSelect(pool));
        figures.print_goal(
            &format!(
                "dbscope layer, autocommit >= {GOAL_AUTOCOMMIT_VS_BARE}x {}",
                figures.name(other)
            ),
            autocommit,
            other,
            GOAL_AUTOCOMMIT_VS_BARE,
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "PASS" } else { "MISS" }
}
