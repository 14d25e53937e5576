//! Sessions per second on MySQL/MariaDB: dbscope against sqlx's `MySqlPool` and a hand-written
//! deadpool loop.
//!
//! The unit of work, a "session": check a connection out of a pool of 8, open a transaction,
//! one point select (`SELECT v FROM dbscope_bench_my WHERE id = ?`), COMMIT, return the
//! connection. 16 tokio tasks run sessions back to back on a multi-thread runtime.
//!
//! | contender | per session | round trips |
//! |---|---|---|
//! | dbscope session | `bind.session()`, the select, `commit()`: the connection runs `autocommit = 0`, so the select opens the transaction | 2 |
//! | dbscope session, BEGIN | the same with `.isolation(RepeatableRead)` (the server's default, asked for): `SET TRANSACTION …; START TRANSACTION` first, as every dbscope MySQL session did before | 3 |
//! | sqlx `MySqlPool` (defaults) | `pool.begin()`, the select, `tx.commit()`; a ping before checkout, and one on release | 4 + 1 |
//! | sqlx `MySqlPool` (no test) | the same, `test_before_acquire(false)` | 3 + 1 |
//! | hand-written deadpool loop | `MySqlConnection`s recycled without a ping, `BEGIN` and `COMMIT` as plain queries | 3 |
//!
//! Rounds, medians and the report are the harness's (see `dbscope_benches::rounds`). Before
//! measuring, it checks on the server that a dbscope session's select runs inside a transaction
//! (`@@in_transaction`); at the end, that the server committed a transaction per session counted
//! (`Com_commit`, the whole server's).
//!
//! ```text
//! cargo bench -p dbscope-benches --bench mysql
//! ```
//!
//! `DBSCOPE_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`), `BENCH_ROUNDS`
//! (default 5) and `BENCH_SECS` (default 2) change the run.

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbscope::{Bind, BindConfig, BindManager, IsolationLevel};
use dbscope_benches::sessions;
use dbscope_benches::sessions::{CONNECTIONS, Lines, Run};
use dbscope_benches::{
    BoxError, Failure, Rounds, Settings, exit_code, per_round, print_teardown, setup_problem,
    verdict,
};
use deadpool::managed::{self, Metrics, RecycleResult};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor, MySql, MySqlConnection};

const URL_ENV: &str = "DBSCOPE_TEST_MYSQL_URL";
const URL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test?ssl-mode=DISABLED";
const TASKS: usize = 16;
const ROWS: i32 = 1000;
const SELECT: &str = "SELECT v FROM dbscope_bench_my WHERE id = ?";

/// Goal: dbscope / sqlx's `MySqlPool` transaction (defaults).
const GOAL_VS_SQLX: f64 = 1.5;

const LINES: Lines = Lines {
    width: 42,
    ratio_width: 45,
};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let url = std::env::var(URL_ENV).unwrap_or_else(|_| URL_DEFAULT.to_owned());
    let settings = match Settings::with_url(url, 2.0) {
        Ok(settings) => settings,
        Err(message) => return setup_problem(message),
    };
    let setup = match Setup::open(&settings).await {
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

enum Contender {
    Dbscope {
        name: &'static str,
        bind: Bind<MySql>,
        explicit: bool,
    },
    SqlxPool {
        name: &'static str,
        pool: MySqlPool,
    },
    HandWritten(managed::Pool<MyManager>),
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
            Self::Dbscope { name, .. } | Self::SqlxPool { name, .. } => name,
            Self::HandWritten(_) => "hand-written deadpool loop",
        }
    }

    async fn run_once(&self, id: i32) -> Result<(), BoxError> {
        let v = match self {
            Self::Dbscope { bind, explicit, .. } => {
                let mut session = bind.session();
                if *explicit {
                    session = session.isolation(IsolationLevel::RepeatableRead);
                }
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
                match hand_written(&mut conn, id).await {
                    Ok(v) => v,
                    Err(e) => {
                        drop(managed::Object::take(conn)); // its state is unknown
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

async fn hand_written(conn: &mut MySqlConnection, id: i32) -> sqlx::Result<i32> {
    conn.execute("BEGIN").await?;
    let v: i32 = sqlx::query_scalar(SELECT)
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    conn.execute("COMMIT").await?;
    Ok(v)
}

struct MyManager {
    options: MySqlConnectOptions,
}

impl managed::Manager for MyManager {
    type Type = MySqlConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<MySqlConnection, sqlx::Error> {
        MySqlConnection::connect_with(&self.options).await
    }

    async fn recycle(&self, _: &mut MySqlConnection, _: &Metrics) -> RecycleResult<sqlx::Error> {
        Ok(())
    }
}

// ----- setup, checks, teardown -----

struct Setup {
    admin: MySqlConnection,
    commits_before: i64,
    manager: BindManager,
    bind: Bind<MySql>,
    contenders: Vec<Arc<Contender>>,
}

/// The server's `Com_commit`: COMMITs run on it, every connection's.
async fn server_commits(admin: &mut MySqlConnection) -> sqlx::Result<i64> {
    let (_, value): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_commit'")
        .fetch_one(&mut *admin)
        .await?;
    Ok(value.parse().unwrap_or(0))
}

impl Setup {
    async fn open(settings: &Settings) -> Result<Self, BoxError> {
        // Statement logging off, as dbscope sets it.
        let options = MySqlConnectOptions::from_str(&settings.url)?.disable_statement_logging();
        let mut admin = MySqlConnection::connect_with(&options).await?;
        admin
            .execute(
                "CREATE TABLE IF NOT EXISTS dbscope_bench_my (id INT PRIMARY KEY, v INT NOT NULL) \
                 ENGINE = InnoDB",
            )
            .await?;
        let values: Vec<String> = (1..=ROWS).map(|i| format!("({i}, {i})")).collect();
        admin
            .execute(AssertSqlSafe(format!(
                "INSERT IGNORE INTO dbscope_bench_my (id, v) VALUES {}",
                values.join(", ")
            )))
            .await?;
        let commits_before = server_commits(&mut admin).await?;

        let manager = BindManager::builder()
            .bind(
                "bench",
                BindConfig::new(settings.url.as_str()).max_connections(CONNECTIONS),
            )
            .build()?;
        let bind = manager.bind::<MySql>("bench")?;
        let pool = |test: bool| {
            MySqlPoolOptions::new()
                .max_connections(CONNECTIONS)
                .test_before_acquire(test)
                .connect_lazy_with(options.clone())
        };
        let hand_written = managed::Pool::builder(MyManager {
            options: options.clone(),
        })
        .max_size(CONNECTIONS as usize)
        .build()?;
        let contenders = [
            Contender::Dbscope {
                name: "dbscope session",
                bind: bind.clone(),
                explicit: false,
            },
            Contender::Dbscope {
                name: "dbscope session, BEGIN",
                bind: bind.clone(),
                explicit: true,
            },
            Contender::SqlxPool {
                name: "sqlx MySqlPool (defaults)",
                pool: pool(true),
            },
            Contender::SqlxPool {
                name: "sqlx MySqlPool (test_before_acquire=false)",
                pool: pool(false),
            },
            Contender::HandWritten(hand_written),
        ];
        Ok(Self {
            admin,
            commits_before,
            manager,
            bind,
            contenders: contenders.into_iter().map(Arc::new).collect(),
        })
    }

    /// Checks that a dbscope session's select runs inside a transaction, as the other
    /// contenders' do, though no BEGIN preceded it.
    async fn check_dbscope_transaction(&self) -> Result<(), BoxError> {
        let mut session = self.bind.session();
        let _: i32 = sqlx::query_scalar(SELECT)
            .bind(1)
            .fetch_one(&mut session)
            .await?;
        let open: i64 = sqlx::query_scalar("SELECT CAST(@@in_transaction AS SIGNED)")
            .fetch_one(&mut session)
            .await?;
        session.commit().await?;
        if open != 1 {
            return Err("a dbscope session's select ran outside a transaction".into());
        }
        Ok(())
    }

    async fn close(mut self, sessions: u64) -> Result<(), BoxError> {
        print_teardown("dbscope bind", &[self.bind.status()]);
        for contender in &self.contenders {
            match &**contender {
                Contender::Dbscope { .. } => {}
                Contender::SqlxPool { pool, .. } => pool.close().await,
                Contender::HandWritten(pool) => pool.close(),
            }
        }
        self.manager.close(Duration::from_secs(5)).await?;
        // A closed connection's counters reach the server's totals once its thread ends, just
        // after the close: wait for them, a bounded while.
        let wanted = i64::try_from(sessions).unwrap_or(i64::MAX);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut commits = server_commits(&mut self.admin).await? - self.commits_before;
        while commits < wanted && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            commits = server_commits(&mut self.admin).await? - self.commits_before;
        }
        self.admin.close().await?;
        println!("  server commits during the run: {commits}, for {sessions} sessions counted");
        if commits < wanted {
            return Err(format!(
                "the server committed {commits} transactions for {sessions} sessions"
            )
            .into());
        }
        Ok(())
    }
}

// ----- measuring and the report -----

/// Runs `TASKS` tasks doing sessions back to back for `duration`.
async fn measure(contender: &Arc<Contender>, duration: Duration) -> Result<Run, Failure> {
    sessions::measure_tasks(contender, TASKS, ROWS, duration).await
}

async fn bench(contenders: &[Arc<Contender>], settings: &Settings) -> Result<u64, Failure> {
    println!(
        "dbscope MySQL/MariaDB sessions benchmark: {TASKS} tasks, {CONNECTIONS} connections per \
         pool, {}",
        settings.rounds_text()
    );
    println!("session = checkout, a transaction around `{SELECT}`, COMMIT, release");
    println!("(client CPU = this process, all threads, per session)\n");
    let mut rounds = Rounds::new(contenders.len(), settings);
    while let Some(step) = rounds.next_step() {
        let contender = &contenders[step.contender];
        let run = measure(contender, step.duration).await?;
        LINES.run(contender.name(), &run);
        rounds.record(step, run);
    }
    let runs = rounds.runs();
    let medians = LINES.results(contenders.iter().map(|c| c.name()), runs);
    LINES.ratios_heading();
    for other in 1..contenders.len() {
        LINES.ratio(
            contenders[other].name(),
            medians[0] / medians[other],
            per_round(runs, 0, other),
        );
    }
    let vs_sqlx = medians[0] / medians[2];
    println!("\ngoals (on the ratios of the medians)");
    println!(
        "  {}  dbscope >= {GOAL_VS_SQLX}x sqlx's MySqlPool transaction (defaults): {vs_sqlx:.2}x",
        verdict(vs_sqlx >= GOAL_VS_SQLX)
    );
    Ok(rounds.total())
}
