//! Routed read sessions against plain sessions: the cost of dbscope's replica routing on the
//! hot path.
//!
//! Both contenders do the same unit of work on the same server, a read-only "session": check a
//! connection out of a pool of 8, `BEGIN READ ONLY`, one point select, `COMMIT`, return the
//! connection; 16 tokio tasks run them back to back.
//!
//! - **plain read-only session**: a bind without replicas, `bind.session().read_only(true)`;
//! - **routed read session**: `bind.read_session()` on a bind with replicas, whose routing reads
//!   the prober's atomics and picks a host at checkout.
//!
//! Without `BENCH_REPLICA_URL`, the routed bind's one replica is an address nothing listens on
//! (127.0.0.1:9): the prober finds it down, and every read takes routing's longest path (no fit
//! replica, then the fallback to the one primary) to the same server as the plain contender.
//! With `BENCH_REPLICA_URL` pointing at a streaming replica of `DBSCOPE_TEST_PG_URL`, reads go
//! there instead (then the two contenders run on different servers).
//!
//! Goal, reported not enforced: routed / plain ≥ 0.95 (the probe is off the hot path; routing
//! adds no round trip). Run it with:
//!
//! ```text
//! DBSCOPE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p dbscope-benches --bench replicas
//! ```
//!
//! `BENCH_ROUNDS` and `BENCH_SECS` as for the other benchmarks.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use dbscope::{Bind, BindConfig, BindManager, HostRole};
use dbscope_benches::sessions;
use dbscope_benches::sessions::{CONNECTIONS, Lines, Run, SELECT, TABLE};
use dbscope_benches::{
    Admin, Backends, BoxError, Failure, Rounds, Settings, exit_code, per_round, print_teardown,
    server, setup_problem, verdict,
};
use sqlx::Postgres;

const TASKS: usize = 16;
/// Goal: routed / plain.
const GOAL: f64 = 0.95;
/// A replica elsewhere, instead of the unreachable one.
const REPLICA_ENV: &str = "BENCH_REPLICA_URL";
/// Where nothing listens: the routed bind's replica when none is given.
const NOWHERE: &str = "postgres://postgres@127.0.0.1:9/test";

const LINES: Lines = Lines {
    width: 28,
    ratio_width: 28,
};

#[derive(Clone)]
enum Contender {
    Plain(Bind<Postgres>),
    Routed(Bind<Postgres>),
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
            Self::Plain(_) => "plain read-only session",
            Self::Routed(_) => "routed read session",
        }
    }

    async fn run_once(&self, id: i32) -> Result<(), BoxError> {
        let mut session = match self {
            Self::Plain(bind) => bind.session().read_only(true),
            Self::Routed(bind) => bind.read_session(),
        };
        let v: i32 = sqlx::query_scalar(SELECT)
            .bind(id)
            .fetch_one(&mut session)
            .await?;
        session.commit().await?;
        if v != id {
            return Err(format!("{}: id {id} read v = {v}", self.name()).into());
        }
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let settings = match Settings::from_env("replicas", 2.0) {
        Ok(settings) => settings,
        Err(message) => return setup_problem(message),
    };
    let (admin, manager) = match open(&settings).await {
        Ok(opened) => opened,
        Err(e) => return setup_problem(format_args!("setup failed: {e}")),
    };
    let contenders = [
        Arc::new(Contender::Plain(manager.bind("plain").expect("bind plain"))),
        Arc::new(Contender::Routed(
            manager.bind("routed").expect("bind routed"),
        )),
    ];
    let outcome = bench(&contenders, &settings).await;
    let sessions = *outcome.as_ref().unwrap_or(&0);
    print_teardown("dbscope bind", &manager.status());
    let teardown = async {
        manager.close(Duration::from_secs(5)).await?;
        admin.final_checks(sessions, "sessions").await
    };
    exit_code(outcome, teardown.await)
}

async fn open(settings: &Settings) -> Result<(Admin, BindManager), BoxError> {
    let options = server::connect_options(&settings.url)?;
    let admin = Admin::open(&options, Backends::Others, TABLE).await?;
    let replica = std::env::var(REPLICA_ENV).unwrap_or_else(|_| NOWHERE.to_owned());
    let manager = BindManager::builder()
        .bind(
            "plain",
            BindConfig::new(settings.url.as_str()).max_connections(CONNECTIONS),
        )
        .bind(
            "routed",
            BindConfig::new(settings.url.as_str())
                .replica(replica.as_str())
                .max_connections(CONNECTIONS),
        )
        .build()?;
    // The first routed session starts the prober and waits for its first round.
    manager.read_session::<Postgres>("routed")?.begin().await?;
    let hosts = &manager
        .status()
        .into_iter()
        .find(|s| s.name == "routed")
        .unwrap()
        .hosts;
    let primary = hosts.iter().filter(|h| h.role == HostRole::Primary).count();
    if primary != 1 {
        return Err(format!("the routed bind sees {primary} primaries: {hosts:?}").into());
    }
    println!("routed bind's hosts: {hosts:?}\n");
    Ok((admin, manager))
}

/// Runs `TASKS` tasks doing sessions back to back for `duration`.
async fn measure(contender: &Arc<Contender>, duration: Duration) -> Result<Run, Failure> {
    sessions::measure_tasks(contender, TASKS, TABLE.rows, duration).await
}

async fn bench(contenders: &[Arc<Contender>], settings: &Settings) -> Result<u64, Failure> {
    LINES.heading(&format!("replicas benchmark: {TASKS} tasks"), settings);
    let mut rounds = Rounds::new(contenders.len(), settings);
    while let Some(step) = rounds.next_step() {
        let contender = &contenders[step.contender];
        let run = measure(contender, step.duration).await?;
        LINES.run(contender.name(), &run);
        rounds.record(step, run);
    }
    let runs = rounds.runs();
    let medians = LINES.results(contenders.iter().map(|c| c.name()), runs);
    let ratio = medians[1] / medians[0];
    LINES.ratios_heading();
    LINES.ratio("plain read-only session", ratio, per_round(runs, 1, 0));
    println!("\ngoals (on the ratio of the medians)");
    println!(
        "  {}  routed read sessions >= {GOAL}x plain ones: {ratio:.2}x",
        verdict(ratio >= GOAL)
    );
    Ok(rounds.total())
}
