//! Per-test cost of the testing toolkit on PostgreSQL, with a 60-table schema: transaction
//! mode, template-database mode (reusing a slot, reset on each lease), template-database mode
//! cloning afresh for each test (`reuse(false)`), and `#[sqlx::test]`'s way, in one interleaved
//! run. Each test's body writes a little, the same for all: a row into two tables and a
//! sequence bumped, so that the reset of a reused slot has real work.
//!
//! sqlx's test support (`sqlx::testing`) is internal to sqlx's macros, so its way is replicated:
//! per test, create a database, connect, run the migrator on it, and drop the database
//! (`DROP DATABASE … WITH (FORCE)`), as `#[sqlx::test]` does with its migrations. The
//! sqlx-style contender reads the migration directory each time; dbscope's modes read it once
//! per process, as the toolkit does for a test binary (`#[sqlx::test]` embeds its migrations at
//! compile time, so neither pays for reading in a real run).
//!
//! Transaction mode runs its tests on one runtime, as `#[dbscope::test]` does
//! (`dbscope::testing::runtime()`), so each test takes the PostgreSQL connection the one before
//! it kept. The same mode with a runtime per test (`#[tokio::test]` around the builder) shows
//! what that saves: it connects each time.
//!
//! Goals: transaction mode under 5 ms per test; template mode at least 2x faster than sqlx's.
//! The fresh-clone contender shows what reuse buys.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dbscope::testing::{Mode, TestContext, TestDb};
use dbscope::{BindConfig, Config};
use dbscope_benches::{Settings, setup_problem, verdict};
use sqlx::{AssertSqlSafe, Connection};

const TABLES: usize = 60;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let settings = match Settings::from_env("testing", 2.0) {
        Ok(s) => s,
        Err(e) => return setup_problem(e),
    };
    let dir = migrations();
    let scratch = format!("dbscope_bench_tx_{}", std::process::id());
    if let Err(e) = admin(&settings.url, &format!("CREATE DATABASE {scratch}")).await {
        return setup_problem(format!("cannot create the scratch database: {e}"));
    }
    let scratch_url = with_database(&settings.url, &scratch);
    println!(
        "testing: per-test set-up on PostgreSQL, {TABLES} tables, {}",
        settings.rounds_text()
    );
    let names = [
        "transaction mode",
        "transaction mode, runtime per test",
        "template mode (reused slot)",
        "template mode, fresh clone",
        "sqlx-style (create + migrate)",
    ];
    let mut per_test: [Vec<f64>; 5] = Default::default();
    let mut failed = None;
    for round in 0..=settings.rounds {
        for (i, slot) in per_test.iter_mut().enumerate() {
            let result = match i {
                0 => measure(settings.round_time, || transaction(&scratch_url, &dir)).await,
                1 => {
                    let (url, dir) = (&scratch_url, &dir);
                    measure(settings.round_time, || own_runtime(url, dir)).await
                }
                2 => measure(settings.round_time, || template(&settings.url, &dir, true)).await,
                3 => measure(settings.round_time, || template(&settings.url, &dir, false)).await,
                _ => measure(settings.round_time, || sqlx_style(&settings.url, &dir)).await,
            };
            match result {
                // Round 0 warms up (the template, the once-per-binary migrations).
                Ok(ms) if round > 0 => slot.push(ms),
                Ok(_) => {}
                Err(e) => failed = Some(format!("{}: {e}", names[i])),
            }
        }
        if failed.is_some() {
            break;
        }
    }
    let _ = admin(
        &settings.url,
        &format!("DROP DATABASE {scratch} WITH (FORCE)"),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(e) = failed {
        eprintln!("\nBENCHMARK FAILED: {e}");
        return ExitCode::from(1);
    }
    let medians: Vec<f64> = per_test.iter_mut().map(|v| median(v)).collect();
    for (name, ms) in names.iter().zip(&medians) {
        println!("  {name:<32} {ms:>8.2} ms per test (median of rounds)");
    }
    let speedup = medians[4] / medians[2];
    println!(
        "\n  transaction mode: the kept connection {:.1}x faster than a runtime per test",
        medians[1] / medians[0],
    );
    println!(
        "  template mode: reused slot {:.1}x faster than a fresh clone; a fresh clone {:.1}x \
         faster than sqlx's",
        medians[3] / medians[2],
        medians[4] / medians[3],
    );
    println!(
        "\n  goal: transaction mode under 5 ms .............. {} ({:.2} ms)",
        verdict(medians[0] < 5.0),
        medians[0]
    );
    println!(
        "  goal: template mode >= 2x faster than sqlx's ..... {} ({speedup:.1}x)",
        verdict(speedup >= 2.0)
    );
    ExitCode::SUCCESS
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `setup` back to back for `time` (at least once); the mean milliseconds per run.
async fn measure<F, Fut>(time: Duration, mut setup: F) -> Result<f64, BoxError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let start = Instant::now();
    let mut runs = 0u32;
    while runs == 0 || start.elapsed() < time {
        setup().await?;
        runs += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e3 / f64::from(runs))
}

fn bind(url: &str) -> Config {
    let mut config = Config::default();
    config.binds.insert("main".into(), BindConfig::new(url));
    config
}

/// The test body every contender runs: a row into two tables, a sequence bumped.
const BODY: [&str; 3] = [
    "INSERT INTO t1 (name) VALUES ('a note') RETURNING id",
    "INSERT INTO t2 (name, ref_id) VALUES ('another', 1) RETURNING id",
    "SELECT nextval('t3_id_seq')",
];

async fn body(t: &TestContext) -> Result<(), BoxError> {
    for statement in BODY {
        t.fetch_one::<sqlx::Postgres, _>("main", sqlx::query(statement))
            .await?;
    }
    Ok(())
}

async fn transaction(url: &str, dir: &Path) -> Result<(), BoxError> {
    let t = TestDb::builder()
        .config(bind(url))
        .mode(Mode::Transaction)
        .migrations("main", dir.to_path_buf())
        .start()
        .await?;
    body(&t).await?;
    t.finish().await?;
    Ok(())
}

/// Transaction mode as under `#[tokio::test]`: on a runtime of the test's own, on a thread of
/// its own, so no connection outlives the test.
async fn own_runtime(url: &str, dir: &Path) -> Result<(), BoxError> {
    let (url, dir) = (url.to_owned(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(transaction(&url, &dir))
    })
    .await?
}

async fn template(url: &str, dir: &Path, reuse: bool) -> Result<(), BoxError> {
    let t = TestDb::builder()
        .config(bind(url))
        .mode(Mode::Database)
        .reuse(reuse)
        .migrations("main", dir.to_path_buf())
        .start()
        .await?;
    body(&t).await?;
    t.finish().await?;
    Ok(())
}

async fn sqlx_style(url: &str, dir: &Path) -> Result<(), BoxError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "dbscope_bench_sqlx_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    admin(url, &format!("CREATE DATABASE {name}")).await?;
    let mut conn = sqlx::PgConnection::connect(&with_database(url, &name)).await?;
    sqlx::migrate::Migrator::new(dir.to_path_buf())
        .await?
        .run(&mut conn)
        .await?;
    for statement in BODY {
        sqlx::query(statement).fetch_one(&mut conn).await?;
    }
    conn.close().await?;
    admin(url, &format!("DROP DATABASE {name} WITH (FORCE)")).await?;
    Ok(())
}

async fn admin(url: &str, statement: &str) -> Result<(), BoxError> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(AssertSqlSafe(statement.to_owned()))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

fn with_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("a PostgreSQL URL");
    parsed.set_path(&format!("/{name}"));
    parsed.into()
}

/// The 60-table schema, one migration per table and its index, in a temp dir.
fn migrations() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dbscope_bench_migrations_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the migrations directory");
    for i in 1..=TABLES {
        let sql = format!(
            "CREATE TABLE t{i} (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, \
             created_at TIMESTAMPTZ NOT NULL DEFAULT now(), ref_id BIGINT);\n\
             CREATE INDEX t{i}_ref ON t{i} (ref_id);\n"
        );
        std::fs::write(dir.join(format!("{i}_table_{i}.sql")), sql).expect("a migration");
    }
    dir
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
