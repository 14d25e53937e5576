//! The commands: each prints its progress and result, and returns the exit code.

use std::time::{Duration, Instant};

use dbscope::{
    BindManager, BindMigrations, BindOutcome, Config, MigrateReport, MigrationState, Migrations,
};
use serde_json::{Value, json};

use crate::output::{Format, Out, chain, ms};
use crate::{EXIT_DIRTY, EXIT_FAILED, EXIT_PENDING};

/// What `check` learned of one bind.
struct Probe {
    version: String,
    round_trip: Duration,
}

/// Connects through the bind's pool, asks the server its version, and times a `SELECT 1`.
macro_rules! probe {
    ($db:ty, $manager:expr, $name:expr, $version_sql:expr) => {{
        async {
            let bind = $manager.bind::<$db>($name)?;
            // A transaction of its own, rolled back: what works behind a transaction pooler
            // too, where autocommit statements are refused.
            let mut session = bind.session();
            let version: String = sqlx::query_scalar($version_sql)
                .fetch_one(&mut session)
                .await
                .map_err(dbscope::Error::from)?;
            let started = Instant::now();
            sqlx::query("SELECT 1")
                .execute(&mut session)
                .await
                .map_err(dbscope::Error::from)?;
            let round_trip = started.elapsed();
            session.rollback().await?;
            session.close().await?;
            Ok::<_, dbscope::Error>(Probe {
                version,
                round_trip,
            })
        }
        .await
    }};
}

async fn probe(manager: &BindManager, name: &str, backend: &str) -> dbscope::Result<Probe> {
    match backend {
        "PostgreSQL" => probe!(sqlx::Postgres, manager, name, "SELECT version()"),
        "MySQL" => probe!(sqlx::MySql, manager, name, "SELECT VERSION()"),
        "SQLite" => probe!(sqlx::Sqlite, manager, name, "SELECT sqlite_version()"),
        _ => probe!(sqlx::Any, manager, name, "SELECT 'unknown (any engine)'"),
    }
}

/// `check`: every bind (or those named) connects and answers.
pub(crate) async fn check(
    manager: &BindManager,
    config: &Config,
    only: &[String],
    out: &Out,
) -> u8 {
    let mut failed = false;
    let mut rows = Vec::new();
    for status in manager.status() {
        let name = status.name.as_str();
        if status.blocking || (!only.is_empty() && !only.iter().any(|b| b == name)) {
            continue;
        }
        let pool = &config.binds[name].pool;
        let settings = format!(
            "max {}, min {}, acquire timeout {:?}",
            pool.max_connections, pool.min_connections, pool.acquire_timeout
        );
        out.progress(name, &format!("connecting ({})", status.backend));
        let result = probe(manager, name, status.backend).await;
        let (line, row) = match &result {
            Ok(p) => {
                out.progress(name, &format!("ok, round trip {}", ms(p.round_trip)));
                (
                    format!(
                        "{name:<w$}  ok      {}  {}  round trip {}  pool: {settings}",
                        status.backend,
                        p.version,
                        ms(p.round_trip),
                        w = out.width
                    ),
                    json!({
                        "bind": name, "ok": true, "backend": status.backend,
                        "server_version": p.version,
                        "round_trip_ms": p.round_trip.as_secs_f64() * 1000.0,
                        "pool": pool_json(pool),
                    }),
                )
            }
            Err(e) => {
                failed = true;
                out.progress(name, &format!("failed: {}", chain(e)));
                (
                    format!(
                        "{name:<w$}  FAILED  {}  {}",
                        status.backend,
                        e,
                        w = out.width
                    ),
                    json!({
                        "bind": name, "ok": false, "backend": status.backend,
                        "error": chain(e), "pool": pool_json(pool),
                    }),
                )
            }
        };
        rows.push((line, row));
    }
    emit(out, "check", !failed, rows);
    if failed { EXIT_FAILED } else { 0 }
}

fn pool_json(pool: &dbscope::PoolConfig) -> Value {
    json!({
        "max_connections": pool.max_connections,
        "min_connections": pool.min_connections,
        "acquire_timeout_ms": pool.acquire_timeout.as_millis() as u64,
    })
}

/// Prints the result rows: their text lines, or one JSON document.
fn emit(out: &Out, command: &str, ok: bool, rows: Vec<(String, Value)>) {
    match out.format {
        Format::Text => rows.iter().for_each(|(line, _)| out.line(line)),
        Format::Json => {
            let binds: Vec<Value> = rows.into_iter().map(|(_, v)| v).collect();
            out.json(&json!({ "command": command, "ok": ok, "binds": binds }));
        }
    }
}

fn state_name(state: MigrationState) -> &'static str {
    match state {
        MigrationState::Applied => "applied",
        MigrationState::Pending => "pending",
        MigrationState::Dirty => "dirty",
        MigrationState::Edited => "edited",
        MigrationState::Missing => "missing",
        _ => "unknown",
    }
}

/// `status`: where each migration of each bind stands.
pub(crate) async fn status(manager: &BindManager, plan: &Migrations, out: &Out) -> u8 {
    let binds = match plan.status(manager).await {
        Ok(binds) => binds,
        Err(e) => {
            out.error(&chain(&e));
            return EXIT_FAILED;
        }
    };
    let (mut failed, mut pending, mut dirty) = (false, false, false);
    let mut rows = Vec::new();
    for b in &binds {
        failed |= b.error.is_some();
        pending |= b.count(MigrationState::Pending) > 0;
        dirty |= [
            MigrationState::Dirty,
            MigrationState::Edited,
            MigrationState::Missing,
        ]
        .into_iter()
        .any(|s| b.count(s) > 0);
        rows.push(status_row(b, out));
    }
    emit(out, "status", !failed && !dirty, rows);
    match (failed, dirty, pending) {
        (true, _, _) => EXIT_FAILED,
        (_, true, _) => EXIT_DIRTY,
        (_, _, true) => EXIT_PENDING,
        _ => 0,
    }
}

fn status_row(b: &BindMigrations, out: &Out) -> (String, Value) {
    let w = out.width;
    let name = &b.bind;
    let source = b.source.as_deref().unwrap_or("no migrations");
    let mut text = match &b.error {
        Some(e) => format!("{name:<w$}  FAILED  {}", chain(e)),
        None => format!(
            "{name:<w$}  {} applied, {} pending  ({source})",
            b.count(MigrationState::Applied),
            b.count(MigrationState::Pending)
        ),
    };
    for m in &b.migrations {
        let info = &m.migration;
        text.push_str(&format!(
            "\n{:<w$}    {:>4} {:<30} {}",
            "",
            info.version,
            info.description,
            state_name(m.state)
        ));
    }
    let migrations: Vec<Value> = b
        .migrations
        .iter()
        .map(|m| {
            json!({
                "version": m.migration.version,
                "description": m.migration.description,
                "state": state_name(m.state),
                "reversible": m.reversible,
                "file": m.migration.file.as_ref().map(|f| f.display().to_string()),
            })
        })
        .collect();
    let row = json!({
        "bind": name, "backend": b.backend, "source": b.source,
        "ok": b.error.is_none(), "error": b.error.as_ref().map(|e| chain(e)),
        "applied": b.count(MigrationState::Applied),
        "pending": b.count(MigrationState::Pending),
        "migrations": migrations,
    });
    (text, row)
}

/// `migrate` and `revert`.
pub(crate) async fn migrate(
    manager: &BindManager,
    plan: &Migrations,
    revert: bool,
    out: &Out,
) -> u8 {
    let run = if revert {
        plan.revert(manager).await
    } else {
        plan.apply(manager).await
    };
    let report = match run {
        Ok(report) => report,
        Err(e) => {
            out.error(&chain(&e));
            return EXIT_FAILED;
        }
    };
    let failed = report.failed().is_some();
    let rows = report_rows(&report, revert, out);
    emit(
        out,
        if revert { "revert" } else { "migrate" },
        !failed,
        rows,
    );
    if failed { EXIT_FAILED } else { 0 }
}

fn report_rows(report: &MigrateReport, revert: bool, out: &Out) -> Vec<(String, Value)> {
    let verb = match (revert, report.dry_run) {
        (false, false) => "applied",
        (true, false) => "reverted",
        (false, true) => "would apply",
        (true, true) => "would revert",
    };
    let w = out.width;
    report
        .binds
        .iter()
        .map(|b| {
            let name = &b.bind;
            let versions: Vec<String> = b.done.iter().map(|m| m.version.to_string()).collect();
            let (outcome, text) = match &b.outcome {
                BindOutcome::Done => (
                    "done",
                    format!(
                        "{name:<w$}  {verb} {} [{}], {} already applied, {} pending",
                        b.done.len(),
                        versions.join(", "),
                        b.already_applied,
                        b.pending.len()
                    ),
                ),
                BindOutcome::NoMigrations => {
                    ("no_migrations", format!("{name:<w$}  no migrations"))
                }
                BindOutcome::Failed(e) => (
                    "failed",
                    format!(
                        "{name:<w$}  FAILED after {verb} {}: {}",
                        b.done.len(),
                        chain(e)
                    ),
                ),
                _ => (
                    "not_run",
                    format!("{name:<w$}  not run (an earlier bind failed)"),
                ),
            };
            let done: Vec<Value> = b
                .done
                .iter()
                .map(|m| {
                    json!({
                        "version": m.version, "description": m.description,
                        "elapsed_ms": m.elapsed.map(|d| d.as_secs_f64() * 1000.0),
                    })
                })
                .collect();
            let row = json!({
                "bind": name, "backend": b.backend, "source": b.source,
                "outcome": outcome, "error": b.error().map(|e| chain(e)),
                "done": done, "already_applied": b.already_applied,
                "pending": b.pending.iter().map(|m| m.version).collect::<Vec<_>>(),
                "dry_run": report.dry_run,
            });
            (text, row)
        })
        .collect()
}

/// What `database` does to each bind's database.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Db {
    Create,
    Drop,
    /// Drop then create (the caller migrates after).
    Reset,
}

/// `database create|drop|reset`.
pub(crate) async fn database(manager: &BindManager, only: &[String], action: Db, out: &Out) -> u8 {
    let mut failed = false;
    let mut rows = Vec::new();
    let names: Vec<String> = manager
        .names()
        .filter(|n| only.is_empty() || only.iter().any(|b| b == n))
        .map(str::to_owned)
        .collect();
    for name in names {
        let w = out.width;
        let result = async {
            let mut said = Vec::new();
            if matches!(action, Db::Drop | Db::Reset) {
                out.progress(&name, "dropping the database");
                let dropped = manager.drop_database(&name).await?;
                said.push(if dropped { "dropped" } else { "did not exist" });
            }
            if matches!(action, Db::Create | Db::Reset) {
                out.progress(&name, "creating the database");
                let created = manager.create_database(&name).await?;
                said.push(if created { "created" } else { "already exists" });
            }
            Ok::<_, dbscope::Error>(said.join(", then "))
        }
        .await;
        let row = match result {
            Ok(said) => (
                format!("{name:<w$}  {said}"),
                json!({ "bind": name, "ok": true, "result": said }),
            ),
            Err(e) => {
                failed = true;
                (
                    format!("{name:<w$}  FAILED  {}", chain(&e)),
                    json!({ "bind": name, "ok": false, "error": chain(&e) }),
                )
            }
        };
        rows.push(row);
    }
    if action != Db::Reset || failed {
        emit(out, "database", !failed, rows);
    } else {
        rows.iter().for_each(|(line, _)| {
            if out.format == Format::Text {
                out.line(line);
            }
        });
    }
    if failed { EXIT_FAILED } else { 0 }
}
