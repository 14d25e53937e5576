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
//! Three more dbscope contenders run the same select in the same interleaved run, for issue 14's
//! read-only goals, each on a bind (and pool) of its own:
//!
//! - **read-only session (no BEGIN)**: `bind.read_session()`, the select, `commit()`: at READ
//!   COMMITTED the select runs in a transaction of its own on a connection the server keeps
//!   read-only, one round trip;
//! - **autocommit session**: a bind with `autocommit = true`, the select, no transaction;
//! - **transactional read session**: `bind.read_session()` on a bind with
//!   `read_only_without_begin = false`: `BEGIN READ ONLY`, the select, `COMMIT`, as before.
//!
//! Goals: the read-only session at least 0.95× the autocommit session, and at least 2× the
//! transactional read session.
//!
//! One more pair, for issue 14's BEGIN in the first statement's message (PostgreSQL), on the
//! `bench` bind and the hand-written pool, the select sent as `raw_sql` with the id in its text
//! (no parameters: a simple query):
//!
//! - **dbscope raw_sql session**: `bind.session()`, the `raw_sql` select, `commit()`: BEGIN goes
//!   in the select's message, two round trips;
//! - **hand-written raw_sql loop**: `BEGIN`, the same `raw_sql` select, `COMMIT`: three.
//!
//! Reported: their ratio (no goal).
//!
//! Every pool is created once and warmed up (1 s each, opening its connections); then each round
//! runs every contender for a fixed time, forwards and backwards in turn (see the harness's
//! `rounds`), so drift on the machine (PostgreSQL shares it) spreads over all of them. The
//! report gives each contender's median sessions/s (and min–max) and the benchmark process's CPU time per session,
//! the ratios (of the medians, and round by round), and whether dbscope meets its goals: at
//! least 1.3× the best `PgPool` configuration, and within 3 % of the hand-written loop (issue 14; 5 % before it).
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
//! DBSCOPE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p dbscope-benches --bench sessions
//! ```
//!
//! `BENCH_ROUNDS` (default 5) and `BENCH_SECS` (seconds per contender per round, default 2) shorten
//! or lengthen the run, e.g. `BENCH_ROUNDS=2 BENCH_SECS=0.5` for a quick check.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use dbscope::{Bind, BindConfig, BindManager};
use dbscope_benches::server::{self, check_session_transaction};
use dbscope_benches::sessions;
use dbscope_benches::sessions::{CONNECTIONS, Lines, Run, SELECT, TABLE, bench_manager};
use dbscope_benches::{
    Admin, Backends, BoxError, Failure, Rounds, Settings, exit_code, per_round, print_teardown,
    setup_problem, verdict,
};
use deadpool::managed::{self, Metrics, RecycleResult};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, Executor, PgConnection, Postgres};

const TASKS: usize = 16;

/// Goal: dbscope / best `PgPool` configuration.
const GOAL_VS_SQLX: f64 = 1.3;
/// Goal: dbscope / hand-written loop (within 3 %, issue 14).
const GOAL_VS_HAND_WRITTEN: f64 = 0.97;
/// Goal: read-only session without BEGIN / autocommit session.
const GOAL_READ_ONLY_VS_AUTOCOMMIT: f64 = 0.95;
/// Goal: read-only session without BEGIN / transactional read session.
const GOAL_READ_ONLY_VS_TRANSACTIONAL: f64 = 2.0;

const LINES: Lines = Lines {
    width: 42,
    ratio_width: 45,
};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let settings = match Settings::from_env("sessions", 2.0) {
        Ok(settings) => settings,
        Err(message) => return setup_problem(message),
    };
    let mut setup = match Setup::open(&settings).await {
        Ok(setup) => setup,
        Err(e) => return setup_problem(format_args!("setup failed: {e}")),
    };
    let outcome = match setup.check_dbscope_transaction().await {
        Ok(()) => bench(&setup.contenders, &settings).await,
        Err(e) => Err(Failure::errors(
            "dbscope session",
            1,
            format!("sanity check: {e}"),
        )),
    };
    let sessions = *outcome.as_ref().unwrap_or(&0);
    let teardown = setup.close(sessions).await;
    exit_code(outcome, teardown)
}

// ----- the contenders -----

/// One way of running a session.
enum Contender {
    Dbscope(Bind<Postgres>),
    SqlxPool {
        name: &'static str,
        pool: PgPool,
    },
    HandWritten(managed::Pool<PgManager>),
    /// A dbscope session of another kind, on a bind of its own: the read-only goals.
    Reads {
        kind: Reads,
        bind: Bind<Postgres>,
    },
    /// A dbscope session whose select is a `raw_sql`: its BEGIN goes in the select's message.
    RawSql(Bind<Postgres>),
    /// The hand-written loop with the `raw_sql` select: BEGIN, select, COMMIT.
    HandWrittenRawSql(managed::Pool<PgManager>),
}

/// The read-only goals' dbscope sessions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// `bind.read_session()`: no BEGIN.
    WithoutBegin,
    /// A session of an autocommit bind.
    Autocommit,
    /// `bind.read_session()` on a bind with `read_only_without_begin = false`.
    Transactional,
}

impl sessions::Contender for Contender {
    fn name(&self) -> &'static str {
        Self::name(self)
    }

    fn run_once(&self, id: i32) -> impl Future<Output = Result<(), BoxError>> + Send {
        Self::run_once(self, id)
    }
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Self::Dbscope(_) => "dbscope session",
            Self::SqlxPool { name, .. } => name,
            Self::HandWritten(_) => "hand-written deadpool loop",
            Self::Reads { kind, .. } => match kind {
                Reads::WithoutBegin => "dbscope read-only session (no BEGIN)",
                Reads::Autocommit => "dbscope autocommit session",
                Reads::Transactional => "dbscope transactional read session",
            },
            Self::RawSql(_) => "dbscope raw_sql session (BEGIN in it)",
            Self::HandWrittenRawSql(_) => "hand-written loop, raw_sql select",
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
            Self::Reads { kind, bind } => {
                let mut session = match kind {
                    Reads::WithoutBegin | Reads::Transactional => bind.read_session(),
                    Reads::Autocommit => bind.session(),
                };
                let v: i32 = sqlx::query_scalar(SELECT)
                    .bind(id)
                    .fetch_one(&mut session)
                    .await?;
                session.commit().await?;
                v
            }
            Self::RawSql(bind) => {
                let mut session = bind.session();
                let row = raw_select(id).fetch_one(&mut session).await?;
                session.commit().await?;
                sqlx::Row::try_get(&row, 0)?
            }
            Self::HandWrittenRawSql(pool) => {
                let mut conn = pool.get().await?;
                match hand_written_raw_sql(&mut conn, id).await {
                    Ok(v) => v,
                    Err(e) => {
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

/// The point select without parameters: sqlx sends it as a simple query.
fn raw_select(id: i32) -> sqlx::RawSql {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SELECT v FROM dbscope_bench WHERE id = {id}"
    )))
}

async fn hand_written_raw_sql(conn: &mut PgConnection, id: i32) -> sqlx::Result<i32> {
    conn.execute("BEGIN").await?;
    let row = raw_select(id).fetch_one(&mut *conn).await?;
    conn.execute("COMMIT").await?;
    sqlx::Row::try_get(&row, 0)
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
    admin: Admin,
    manager: BindManager,
    bind: Bind<Postgres>,
    /// The read-only goals' binds.
    reads: BindManager,
    contenders: Vec<Arc<Contender>>,
}

impl Setup {
    async fn open(settings: &Settings) -> Result<Self, BoxError> {
        let options = server::connect_options(&settings.url)?;
        let admin = Admin::open(&options, Backends::Others, TABLE).await?;

        let manager = bench_manager(settings)?;
        let bind = manager.bind::<Postgres>("bench")?;
        let reads = BindManager::builder()
            .bind("reads", read_bind(settings))
            .bind("autocommit", read_bind(settings).autocommit(true))
            .bind(
                "transactional_reads",
                read_bind(settings).read_only_without_begin(false),
            )
            .build()?;
        let read = |kind, name| {
            Ok::<_, dbscope::Error>(Contender::Reads {
                kind,
                bind: reads.bind::<Postgres>(name)?,
            })
        };
        let (sqlx_defaults, sqlx_no_test) = server::sqlx_pools(CONNECTIONS, &options);
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
            Contender::HandWritten(hand_written.clone()),
            read(Reads::WithoutBegin, "reads")?,
            read(Reads::Autocommit, "autocommit")?,
            read(Reads::Transactional, "transactional_reads")?,
            Contender::RawSql(bind.clone()),
            Contender::HandWrittenRawSql(hand_written),
        ];
        let contenders = contenders.into_iter().map(Arc::new).collect();
        Ok(Self {
            admin,
            manager,
            bind,
            reads,
            contenders,
        })
    }

    /// Checks that a dbscope session holds a server-side transaction from its first statement
    /// until it commits: that it does the same work as the other contenders.
    async fn check_dbscope_transaction(&mut self) -> Result<(), BoxError> {
        let before = self.admin.idle_in_transaction().await?;
        let mut session = self.bind.session();
        let _: i32 = sqlx::query_scalar(SELECT)
            .bind(1)
            .fetch_one(&mut session)
            .await?;
        let during = self.admin.idle_in_transaction().await?;
        session.commit().await?;
        let after = self.admin.idle_in_transaction().await?;
        drop(session);
        check_session_transaction(before, during, after)?;
        // And that the read-only session runs without one, on a connection that refuses writes.
        let Some(Contender::Reads { bind, .. }) = self.contenders.iter().map(|c| &**c).find(|c| {
            matches!(
                c,
                Contender::Reads {
                    kind: Reads::WithoutBegin,
                    ..
                }
            )
        }) else {
            return Err("no read-only contender".into());
        };
        let mut read = bind.read_session();
        let _: i32 = sqlx::query_scalar(SELECT)
            .bind(1)
            .fetch_one(&mut read)
            .await?;
        let during = self.admin.idle_in_transaction().await?;
        let write = sqlx::query("UPDATE dbscope_bench SET v = v WHERE id = 1")
            .execute(&mut read)
            .await;
        drop(read);
        if during != before {
            return Err("the read-only session left its connection idle in transaction".into());
        }
        match write {
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("25006") => {
                Ok(())
            }
            other => Err(format!(
                "a write in the read-only session did not fail as read-only: {other:?}"
            )
            .into()),
        }
    }

    /// Closes every pool, then checks that no connection was left inside a transaction and that
    /// the server committed a transaction per session counted.
    async fn close(self, sessions: u64) -> Result<(), BoxError> {
        print_teardown("dbscope bind", &[self.bind.status()]);
        for bind in self.reads.status() {
            println!(
                "  dbscope bind `{}`: opened {} connections, discarded {}, checkout timeouts {}",
                bind.name, bind.opened, bind.discarded, bind.timeouts
            );
        }
        for contender in &self.contenders {
            match &**contender {
                Contender::Dbscope(_) => {}
                Contender::SqlxPool { pool, .. } => pool.close().await,
                Contender::HandWritten(pool) | Contender::HandWrittenRawSql(pool) => pool.close(),
                Contender::Reads { .. } | Contender::RawSql(_) => {}
            }
        }
        self.manager.close(Duration::from_secs(5)).await?;
        self.reads.close(Duration::from_secs(5)).await?;
        self.admin.final_checks(sessions, "sessions").await
    }
}

// ----- measuring -----

/// Runs `TASKS` tasks doing sessions back to back for `duration`.
async fn measure(contender: &Arc<Contender>, duration: Duration) -> Result<Run, Failure> {
    sessions::measure_tasks(contender, TASKS, TABLE.rows, duration).await
}

/// Warm-up, then the interleaved rounds, then the report; returns how many sessions ran in all.
async fn bench(contenders: &[Arc<Contender>], settings: &Settings) -> Result<u64, Failure> {
    LINES.heading(&format!("sessions benchmark: {TASKS} tasks"), settings);
    let mut rounds = Rounds::new(contenders.len(), settings);
    while let Some(step) = rounds.next_step() {
        let contender = &contenders[step.contender];
        let run = measure(contender, step.duration).await?;
        LINES.run(contender.name(), &run);
        rounds.record(step, run);
    }
    report(contenders, rounds.runs());
    Ok(rounds.total())
}

// ----- the report -----

fn report(contenders: &[Arc<Contender>], runs: &[Vec<Run>]) {
    let medians = LINES.results(contenders.iter().map(|c| c.name()), runs);

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

    let ratio = |other: usize| medians[dbscope] / medians[other];
    LINES.ratios_heading();
    let print_ratio = |label: &str, other: usize| {
        LINES.ratio(label, ratio(other), per_round(runs, dbscope, other));
    };
    print_ratio(
        &format!("best: {}", contenders[best_sqlx].name()),
        best_sqlx,
    );
    for &i in &sqlx {
        print_ratio(contenders[i].name(), i);
    }
    print_ratio(contenders[hand_written].name(), hand_written);

    let reads = |kind: Reads| {
        contenders
            .iter()
            .position(|c| matches!(**c, Contender::Reads { kind: k, .. } if k == kind))
            .expect("every kind of read contender is present")
    };
    let (read_only, autocommit, transactional) = (
        reads(Reads::WithoutBegin),
        reads(Reads::Autocommit),
        reads(Reads::Transactional),
    );
    let read_ratio = |other: usize| medians[read_only] / medians[other];
    println!("\nratios: read-only session (no BEGIN) / other, of the medians; and round by round");
    for other in [autocommit, transactional, dbscope] {
        println!(
            "  read-only (no BEGIN) / {:<36} {:>5.2}x   {:.2}",
            contenders[other].name(),
            read_ratio(other),
            per_round(runs, read_only, other)
        );
    }

    let raw_sql = position(|c| matches!(c, Contender::RawSql(_)));
    let raw_hand = position(|c| matches!(c, Contender::HandWrittenRawSql(_)));
    println!(
        "\nratio: {} / {}, of the medians; and round by round\n  {:>5.2}x   {:.2}",
        contenders[raw_sql].name(),
        contenders[raw_hand].name(),
        medians[raw_sql] / medians[raw_hand],
        per_round(runs, raw_sql, raw_hand)
    );

    let vs_sqlx = ratio(best_sqlx);
    let vs_hand = ratio(hand_written);
    println!("\ngoals (on the ratios of the medians)");
    println!(
        "  {}  dbscope >= {GOAL_VS_SQLX}x the best sqlx PgPool configuration: {vs_sqlx:.2}x",
        verdict(vs_sqlx >= GOAL_VS_SQLX)
    );
    println!(
        "  {}  dbscope within 3% of the hand-written loop: {vs_hand:.2}x ({:+.1}%)",
        verdict(vs_hand >= GOAL_VS_HAND_WRITTEN),
        (vs_hand - 1.0) * 100.0
    );
    let (vs_auto, vs_tx) = (read_ratio(autocommit), read_ratio(transactional));
    println!(
        "  {}  read-only session (no BEGIN) >= {GOAL_READ_ONLY_VS_AUTOCOMMIT}x the autocommit \
         session: {vs_auto:.2}x",
        verdict(vs_auto >= GOAL_READ_ONLY_VS_AUTOCOMMIT)
    );
    println!(
        "  {}  read-only session (no BEGIN) >= {GOAL_READ_ONLY_VS_TRANSACTIONAL}x the \
         transactional read session: {vs_tx:.2}x",
        verdict(vs_tx >= GOAL_READ_ONLY_VS_TRANSACTIONAL)
    );
}

/// A bind of the read-only goals: as the `bench` bind.
fn read_bind(settings: &Settings) -> BindConfig {
    BindConfig::new(settings.url.as_str()).max_connections(CONNECTIONS)
}
