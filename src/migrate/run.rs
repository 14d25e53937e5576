//! One bind's migrations, on its dedicated connection: apply, revert, status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sqlx::migrate::{AppliedMigration, Migrate, MigrateError, Migration};

use super::conn::MigrationConn;
use super::report::{Direction, MigrateEvent, MigrationInfo, MigrationState, MigrationStatus};
use super::source::Resolved;
use crate::error::Op;
use crate::{Error, Result};

/// The progress callback of a run.
pub(crate) type Events = Option<Arc<dyn Fn(&MigrateEvent<'_>) + Send + Sync>>;

/// What a run asks of one bind.
pub(crate) struct Step<'a> {
    pub(crate) bind: &'a str,
    pub(crate) events: &'a Events,
    pub(crate) dry_run: bool,
    pub(crate) target: Option<i64>,
}

impl Step<'_> {
    pub(crate) fn emit(&self, event: MigrateEvent<'_>) {
        if let Some(events) = self.events {
            events(&event);
        }
    }
}

/// What a bind's run did, kept as it goes so that a failure still reports the rest.
#[derive(Default)]
pub(crate) struct Progress {
    pub(crate) done: Vec<MigrationInfo>,
    pub(crate) already_applied: usize,
    pub(crate) pending: Vec<MigrationInfo>,
}

fn info(resolved: &Resolved, m: &Migration) -> MigrationInfo {
    MigrationInfo {
        version: m.version,
        description: m.description.to_string(),
        file: resolved.file(m.version, m.migration_type.is_down_migration()),
        elapsed: None,
    }
}

/// A bookkeeping step (`what`: "reading _sqlx_migrations" …) that failed.
fn bookkeeping<'a>(bind: &'a str, what: &'static str) -> impl FnOnce(MigrateError) -> Error + 'a {
    move |e| match e {
        MigrateError::Execute(e) => Error::query(Some(bind), Op::new(what), e),
        MigrateError::Dirty(version) => Error::migration_dirty(bind, version),
        other => Error::migration_source(bind, &other.to_string(), None),
    }
}

/// The applied migrations and the dirty one, as `_sqlx_migrations` records them; `None` when
/// the table does not exist yet (nothing was ever applied).
async fn recorded(
    conn: &mut (dyn Migrate + Send),
    table: &str,
) -> Result<Option<(Option<i64>, Vec<AppliedMigration>)>, MigrateError> {
    let dirty = match conn.dirty_version(table).await {
        Err(MigrateError::Execute(sqlx::Error::Database(db))) if is_missing_table(&*db) => {
            return Ok(None);
        }
        other => other?,
    };
    Ok(Some((dirty, conn.list_applied_migrations(table).await?)))
}

/// "No such table": PostgreSQL's 42P01, MySQL's 42S02, SQLite's message.
fn is_missing_table(db: &dyn sqlx::error::DatabaseError) -> bool {
    matches!(db.code().as_deref(), Some("42P01" | "42S02"))
        || db.message().contains("no such table")
}

/// Refuses to go on when the recorded state does not match the source: a dirty migration, an
/// applied one gone from the source, an applied one edited since.
fn validate(
    bind: &str,
    resolved: &Resolved,
    dirty: Option<i64>,
    applied: &HashMap<i64, AppliedMigration>,
) -> Result<()> {
    if let Some(version) = dirty {
        return Err(Error::migration_dirty(bind, version));
    }
    if !resolved.ignore_missing {
        let mut versions: Vec<i64> = applied.keys().copied().collect();
        versions.sort_unstable();
        if let Some(v) = versions
            .into_iter()
            .find(|v| !resolved.ups().any(|m| m.version == *v))
        {
            return Err(Error::migration_missing(bind, v));
        }
    }
    for m in resolved.ups() {
        if let Some(recorded) = applied.get(&m.version)
            && recorded.checksum != m.checksum
        {
            let file = resolved.file(m.version, false);
            return Err(Error::migration_edited(
                bind,
                m.version,
                &m.description,
                file,
            ));
        }
    }
    Ok(())
}

fn check_target(bind: &str, resolved: &Resolved, target: Option<i64>) -> Result<()> {
    match target {
        Some(t) if t != 0 && !resolved.ups().any(|m| m.version == t) => {
            Err(Error::migration_source(
                bind,
                &format!(
                    "target version {t} is not among the bind's migrations; pick one of {}",
                    resolved
                        .ups()
                        .map(|m| m.version.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None,
            ))
        }
        _ => Ok(()),
    }
}

/// Takes the lock, unless the source turns it off or this is a dry run; says whether it did.
/// After a failure the caller drops the connection, which releases the lock on the server.
async fn take_lock(
    conn: &mut dyn MigrationConn,
    step: &Step<'_>,
    resolved: &Resolved,
) -> Result<bool> {
    if !resolved.locking || step.dry_run {
        return Ok(false);
    }
    let waiting = || step.emit(MigrateEvent::WaitingForLock { bind: step.bind });
    conn.lock(&waiting)
        .await
        .map_err(bookkeeping(step.bind, "taking the migration lock"))?;
    Ok(true)
}

async fn release_lock(conn: &mut dyn MigrationConn, step: &Step<'_>, locked: bool) -> Result<()> {
    if locked {
        conn.unlock()
            .await
            .map_err(bookkeeping(step.bind, "releasing the migration lock"))?;
    }
    Ok(())
}

/// The recorded state, creating `_sqlx_migrations` unless this is a dry run.
async fn state(
    conn: &mut (dyn Migrate + Send),
    step: &Step<'_>,
    resolved: &Resolved,
) -> Result<HashMap<i64, AppliedMigration>> {
    if !step.dry_run {
        for schema in resolved.schemas.iter() {
            conn.create_schema_if_not_exists(schema)
                .await
                .map_err(bookkeeping(step.bind, "creating the migrator's schemas"))?;
        }
        conn.ensure_migrations_table(&resolved.table)
            .await
            .map_err(bookkeeping(step.bind, "creating _sqlx_migrations"))?;
    }
    let (dirty, applied) = recorded(conn, &resolved.table)
        .await
        .map_err(bookkeeping(step.bind, "reading _sqlx_migrations"))?
        .unwrap_or_default();
    let applied = applied.into_iter().map(|m| (m.version, m)).collect();
    validate(step.bind, resolved, dirty, &applied)?;
    Ok(applied)
}

/// Applies the bind's pending migrations up to the target, in version order.
pub(crate) async fn apply(
    conn: &mut dyn MigrationConn,
    step: &Step<'_>,
    resolved: &Resolved,
    progress: &mut Progress,
) -> Result<()> {
    check_target(step.bind, resolved, step.target)?;
    let locked = take_lock(conn, step, resolved).await?;
    apply_locked(conn.migrate(), step, resolved, progress).await?;
    release_lock(conn, step, locked).await
}

async fn apply_locked(
    conn: &mut (dyn Migrate + Send),
    step: &Step<'_>,
    resolved: &Resolved,
    progress: &mut Progress,
) -> Result<()> {
    {
        let applied = state(conn, step, resolved).await?;
        for m in resolved.ups() {
            if applied.contains_key(&m.version) {
                progress.already_applied += 1;
            } else if step.target.is_some_and(|t| m.version > t) {
                progress.pending.push(info(resolved, m));
            } else if step.dry_run {
                progress.done.push(info(resolved, m));
            } else {
                let elapsed = run_one(conn, step, resolved, m, Direction::Up).await?;
                progress.done.push(MigrationInfo {
                    elapsed: Some(elapsed),
                    ..info(resolved, m)
                });
            }
        }
        Ok(())
    }
}

/// Reverts the latest applied migration, or, with a target, every applied one above it, newest
/// first; each must have a down migration, checked before any is reverted.
pub(crate) async fn revert(
    conn: &mut dyn MigrationConn,
    step: &Step<'_>,
    resolved: &Resolved,
    progress: &mut Progress,
) -> Result<()> {
    check_target(step.bind, resolved, step.target)?;
    let locked = take_lock(conn, step, resolved).await?;
    revert_locked(conn.migrate(), step, resolved, progress).await?;
    release_lock(conn, step, locked).await
}

async fn revert_locked(
    conn: &mut (dyn Migrate + Send),
    step: &Step<'_>,
    resolved: &Resolved,
    progress: &mut Progress,
) -> Result<()> {
    {
        let applied = state(conn, step, resolved).await?;
        let mut versions: Vec<i64> = applied.keys().copied().collect();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        let undo: Vec<i64> = match step.target {
            Some(t) => versions.into_iter().filter(|v| *v > t).collect(),
            None => versions.into_iter().take(1).collect(),
        };
        progress.already_applied = applied.len() - undo.len();
        let mut downs = Vec::with_capacity(undo.len());
        for v in &undo {
            let down = resolved.down(*v).ok_or_else(|| {
                let problem = format!(
                    "migration {v} has no down migration (`{v}_<description>.down.sql`), so it \
                     cannot be reverted; nothing was reverted"
                );
                Error::migration_source(step.bind, &problem, None)
            })?;
            downs.push(down);
        }
        for down in downs {
            if step.dry_run {
                progress.done.push(info(resolved, down));
                continue;
            }
            let elapsed = run_one(conn, step, resolved, down, Direction::Down).await?;
            progress.done.push(MigrationInfo {
                elapsed: Some(elapsed),
                ..info(resolved, down)
            });
        }
        Ok(())
    }
}

async fn run_one(
    conn: &mut (dyn Migrate + Send),
    step: &Step<'_>,
    resolved: &Resolved,
    m: &Migration,
    direction: Direction,
) -> Result<std::time::Duration> {
    let (bind, version, description) = (step.bind, m.version, &*m.description);
    step.emit(MigrateEvent::MigrationStarted {
        bind,
        version,
        description,
        direction,
    });
    let started = Instant::now();
    let result = match direction {
        Direction::Up => conn.apply(&resolved.table, m).await,
        Direction::Down => conn.revert(&resolved.table, m).await,
    };
    if let Err(e) = result {
        let what = match direction {
            Direction::Up => "applying",
            Direction::Down => "reverting",
        };
        let file = resolved.file(version, direction == Direction::Down);
        let source: crate::BoxError = match e {
            MigrateError::ExecuteMigration(e, _) | MigrateError::Execute(e) => Box::new(e),
            other => Box::new(other),
        };
        return Err(Error::migration_failed(
            bind,
            what,
            version,
            description,
            file,
            source,
        ));
    }
    let elapsed = started.elapsed();
    step.emit(MigrateEvent::MigrationFinished {
        bind,
        version,
        description,
        direction,
        elapsed,
    });
    Ok(elapsed)
}

/// Where each migration of the bind stands, read without the lock and changing nothing.
pub(crate) async fn status(
    conn: &mut dyn MigrationConn,
    bind: &str,
    resolved: &Resolved,
) -> Result<Vec<MigrationStatus>> {
    let (dirty, applied) = recorded(conn.migrate(), &resolved.table)
        .await
        .map_err(bookkeeping(bind, "reading _sqlx_migrations"))?
        .unwrap_or_default();
    let applied: HashMap<i64, AppliedMigration> =
        applied.into_iter().map(|m| (m.version, m)).collect();
    let mut out: Vec<MigrationStatus> = resolved
        .ups()
        .map(|m| {
            let state = match applied.get(&m.version) {
                _ if dirty == Some(m.version) => MigrationState::Dirty,
                Some(r) if r.checksum != m.checksum => MigrationState::Edited,
                Some(_) => MigrationState::Applied,
                None => MigrationState::Pending,
            };
            MigrationStatus {
                migration: info(resolved, m),
                state,
                reversible: resolved.down(m.version).is_some(),
            }
        })
        .collect();
    let mut gone: Vec<&i64> = applied
        .keys()
        .filter(|v| !resolved.ups().any(|m| m.version == **v))
        .collect();
    gone.sort_unstable();
    for v in gone {
        out.push(MigrationStatus {
            migration: MigrationInfo {
                version: *v,
                description: String::new(),
                file: None,
                elapsed: None,
            },
            state: if dirty == Some(*v) {
                MigrationState::Dirty
            } else {
                MigrationState::Missing
            },
            reversible: false,
        });
    }
    out.sort_by_key(|s| s.migration.version);
    Ok(out)
}
