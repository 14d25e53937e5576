//! The cost of observing: dbscope sessions with no metrics recorder and no tracing subscriber,
//! against the same sessions with a Prometheus recorder, with a tracing subscriber at INFO
//! (which turns on dbscope's `db.session` and `db.statement` spans), and with both.
//!
//! The unit of work is the sessions benchmark's (`sessions.rs`): checkout from a pool of 8,
//! `BEGIN`, one point select, `COMMIT`, 16 tokio tasks back to back, each contender measured in
//! the same interleaved rounds. Each contender has its own bind (so its own pool and its own
//! metric handles): the "metrics" binds were built with the recorder in force, the others with
//! none. The subscriber is set per task (`WithSubscriber`), a registry with a fmt layer at INFO
//! writing to a sink: spans are built, entered and closed, and nothing is printed. The Prometheus
//! recorder's upkeep runs every 5 s, as `PrometheusBuilder::install` has it run.
//!
//! Goal, reported and not enforced: each observed contender within 3 % of the plain one.
//!
//! ```text
//! DBSCOPE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p dbscope-benches --bench observe
//! ```
//!
//! `BENCH_ROUNDS` and `BENCH_SECS` as for the sessions benchmark. Exits 1 if a session fails
//! or the final checks find a problem, 2 on a setup problem.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbscope::{Bind, BindConfig, BindManager};
use dbscope_benches::server;
use dbscope_benches::sessions::{CONNECTIONS, Lines, Run, SELECT, TABLE};
use dbscope_benches::{
    Admin, Backends, BoxError, Failure, Ids, Rounds, Settings, cpu, exit_code, per_round,
    print_teardown, setup_problem, verdict,
};
use sqlx::Postgres;
use tokio::task::JoinSet;
use tracing::Dispatch;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

const TASKS: usize = 16;

/// The Prometheus exporter's default upkeep period.
const UPKEEP: Duration = Duration::from_secs(5);

/// Goal: observed / plain sessions per second (within 3 %).
const GOAL: f64 = 0.97;

const LINES: Lines = Lines {
    width: 34,
    ratio_width: 34,
};

struct Contender {
    name: &'static str,
    bind: Bind<Postgres>,
    subscriber: Option<Dispatch>,
}

impl Contender {
    async fn run_once(&self, id: i32) -> Result<(), BoxError> {
        let mut session = self.bind.session();
        let v: i32 = sqlx::query_scalar(SELECT)
            .bind(id)
            .fetch_one(&mut session)
            .await?;
        session.commit().await?;
        if v != id {
            return Err(format!("{}: id {id} read v = {v}", self.name).into());
        }
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let settings = match Settings::from_env("observe", 2.0) {
        Ok(settings) => settings,
        Err(message) => return setup_problem(message),
    };
    let setup = match Setup::open(&settings).await {
        Ok(setup) => setup,
        Err(e) => return setup_problem(format_args!("setup failed: {e}")),
    };
    let outcome = bench(&setup.contenders, &settings).await;
    let sessions = *outcome.as_ref().unwrap_or(&0);
    let teardown = setup.close(sessions).await;
    exit_code(outcome, teardown)
}

struct Setup {
    admin: Admin,
    managers: Vec<BindManager>,
    contenders: Vec<Arc<Contender>>,
    /// What the metrics contenders recorded, rendered at the end as a check that they did.
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
}

fn manager(settings: &Settings) -> Result<BindManager, dbscope::Error> {
    let config = BindConfig::new(settings.url.as_str()).max_connections(CONNECTIONS);
    BindManager::builder().bind("bench", config).build()
}

fn info_subscriber() -> Dispatch {
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::sink);
    let subscriber = tracing_subscriber::registry()
        .with(fmt)
        .with(LevelFilter::INFO);
    Dispatch::new(subscriber)
}

impl Setup {
    async fn open(settings: &Settings) -> Result<Self, BoxError> {
        let options = server::connect_options(&settings.url)?;
        let admin = Admin::open(&options, Backends::Others, TABLE).await?;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let prometheus = recorder.handle();
        // What `PrometheusBuilder::install` runs beside the recorder: every 5 s (its default
        // `upkeep_timeout`), the histograms' recorded samples are drained into their summaries.
        // Without it they pile up in memory for the whole run, which no application does.
        let upkeep = prometheus.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(UPKEEP).await;
                upkeep.run_upkeep();
            }
        });
        let mut managers = Vec::new();
        let mut contenders = Vec::new();
        for (name, metrics, tracing) in [
            ("plain", false, false),
            ("metrics recorder", true, false),
            ("tracing at INFO", false, true),
            ("metrics and tracing", true, true),
        ] {
            let manager = if metrics {
                metrics::with_local_recorder(&recorder, || manager(settings))?
            } else {
                manager(settings)?
            };
            contenders.push(Arc::new(Contender {
                name,
                bind: manager.bind::<Postgres>("bench")?,
                subscriber: tracing.then(info_subscriber),
            }));
            managers.push(manager);
        }
        Ok(Self {
            admin,
            managers,
            contenders,
            prometheus,
        })
    }

    async fn close(self, sessions: u64) -> Result<(), BoxError> {
        let statuses: Vec<_> = self.managers.iter().flat_map(|m| m.status()).collect();
        print_teardown("dbscope binds", &statuses);
        let rendered = self.prometheus.render();
        if !rendered.contains("db_client_operation_duration") {
            return Err("the metrics contenders recorded nothing".into());
        }
        for manager in &self.managers {
            manager.close(Duration::from_secs(5)).await?;
        }
        self.admin.final_checks(sessions, "sessions").await
    }
}

async fn measure(contender: &Arc<Contender>, duration: Duration) -> Result<Run, Failure> {
    let cpu_before = cpu::process_cpu_time();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let contender = Arc::clone(contender);
        let subscriber = contender.subscriber.clone();
        let work = async move {
            let mut ids = Ids::new(task as u64, TABLE.rows);
            let mut done = 0u64;
            while Instant::now() < deadline {
                contender
                    .run_once(ids.next_id())
                    .await
                    .map_err(|e| e.to_string())?;
                done += 1;
            }
            Ok::<u64, String>(done)
        };
        match subscriber {
            Some(dispatch) => tasks.spawn(work.with_subscriber(dispatch)),
            None => tasks.spawn(work),
        };
    }
    let mut outcomes = Vec::with_capacity(TASKS);
    while let Some(joined) = tasks.join_next().await {
        outcomes
            .push(joined.unwrap_or_else(|e| Err(format!("task panicked or was cancelled: {e}"))));
    }
    Run::tally(contender.name, outcomes, start, cpu_before)
}

async fn bench(contenders: &[Arc<Contender>], settings: &Settings) -> Result<u64, Failure> {
    LINES.heading(&format!("observe benchmark: {TASKS} tasks"), settings);
    let mut rounds = Rounds::new(contenders.len(), settings);
    while let Some(step) = rounds.next_step() {
        let contender = &contenders[step.contender];
        let run = measure(contender, step.duration).await?;
        LINES.run(contender.name, &run);
        rounds.record(step, run);
    }
    let runs = rounds.runs();
    let medians = LINES.results(contenders.iter().map(|c| c.name), runs);
    println!("\nround by round: observed / plain, median (min–max)");
    for (i, contender) in contenders.iter().enumerate().skip(1) {
        println!("  {:<24} {:.3}", contender.name, per_round(runs, i, 0));
    }
    println!("\ngoals (on the ratios of the medians)");
    for (contender, median) in contenders.iter().zip(&medians).skip(1) {
        let ratio = median / medians[0];
        println!(
            "  {}  {} within 3% of plain: {ratio:.3}x ({:+.1}%)",
            verdict(ratio >= GOAL),
            contender.name,
            (ratio - 1.0) * 100.0
        );
    }
    Ok(rounds.total())
}
