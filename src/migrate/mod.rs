//! Migrations for every bind, in sqlx's format, so that sqlx-cli and `sqlx::migrate!` stay
//! interchangeable with dbscope (the same files, the same `_sqlx_migrations` table, the same
//! lock).
//!
//! A bind's migrations are a directory named in its config (`migrations = "migrations/main"`),
//! or a `Migrator` embedded with `sqlx::migrate!` and handed to a [`Migrations`] plan. The
//! manager migrates every bind in name order, or after the binds its `migrate_after` names,
//! each on a connection opened for it alone, outside its pool.
//!
//! **Nothing is atomic across binds**, as for a scope's commits
//! ([`ErrorKind::PartialCommit`](crate::ErrorKind::PartialCommit)): binds migrated before a
//! failure stay migrated, and the failed bind keeps the migrations it applied before the
//! failing one. Within a bind, each migration runs in its own transaction where the backend
//! allows (PostgreSQL, SQLite; MySQL/MariaDB commit DDL at once, and mark a migration that
//! failed part-way as dirty).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sqlx::migrate::Migrator;

use crate::{BindManager, Result};

mod conn;
mod database;
mod order;
mod report;
mod run;
mod source;

pub use report::{
    BindMigrations, BindOutcome, BindReport, Direction, MigrateEvent, MigrateReport, MigrationInfo,
    MigrationState, MigrationStatus,
};
pub use source::MigrationSource;

use run::{Events, Progress, Step};

/// Migrations read for the testing toolkit, as `migrate_all` reads a bind's.
#[cfg(feature = "testing")]
pub(crate) use source::Resolved;

/// Reads the migrations of `bind` in `dir`, as a directory source reads them (`sqlx.toml`
/// included), for the testing toolkit.
#[cfg(feature = "testing")]
pub(crate) async fn resolve_directory(bind: &str, dir: &std::path::Path) -> Result<Resolved> {
    source::resolve(bind, &MigrationSource::Directory(dir.to_owned())).await
}

/// `migrator`'s migrations and settings, for the testing toolkit.
#[cfg(feature = "testing")]
pub(crate) fn resolved_from(migrator: &Migrator) -> Resolved {
    source::from_migrator(migrator)
}

/// Applies `resolved` on `conn`, a connection to the database at `url`, under the database's
/// migration lock, as `migrate_all` applies a bind's (the lock sqlx-cli takes, which on
/// MariaDB sqlx's own `Any` migrator does not get); closes the connection after, or drops it
/// after a failure. For the testing toolkit's test and template databases.
///
/// # Errors
///
/// As [`BindManager::migrate_all`], for `bind`.
///
/// # Cancel safety
///
/// As [`Migrations::apply`].
#[cfg(feature = "testing")]
pub(crate) async fn apply_on(
    bind: &str,
    conn: sqlx::AnyConnection,
    url: &str,
    resolved: &Resolved,
) -> Result<()> {
    let url = crate::DatabaseUrl::new(url);
    let mut conn = conn::any_connection(conn, Some(&url));
    let step = Step {
        bind,
        events: &None,
        dry_run: false,
        target: None,
    };
    let result = run::apply(&mut *conn, &step, resolved, &mut Progress::default()).await;
    if result.is_ok() {
        conn.close().await;
    }
    result
}

/// What to migrate and how: the sources handed in code, the binds, a target version, a dry
/// run, a progress callback. The binds' config gives the rest (`migrations`, `migrate_after`).
///
/// ```
/// use dbscope::{BindConfig, BindManager, Migrations};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dbscope::Error> {
/// # let dir = std::env::temp_dir().join(format!("dbscope-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// # std::fs::write(dir.join("1_notes.sql"), "CREATE TABLE notes (body TEXT)").unwrap();
/// let manager = BindManager::new(BindConfig::new("sqlite::memory:").migrations(&dir))?;
/// let plan = Migrations::new().on_event(|event| eprintln!("{event:?}"));
/// let report = manager.migrate_all(&plan).await?;
/// assert_eq!(report.done(), 1);
/// let again = manager.migrate_all(&plan).await?;
/// assert_eq!((again.done(), again.binds[0].already_applied), (0, 1));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct Migrations {
    sources: BTreeMap<String, MigrationSource>,
    only: Vec<String>,
    target: Option<i64>,
    dry_run: bool,
    events: Events,
}

impl fmt::Debug for Migrations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrations")
            .field("sources", &self.sources)
            .field("only", &self.only)
            .field("target", &self.target)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

impl Migrations {
    /// A plan with the binds' config alone: every bind with a `migrations` directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bind `bind` migrates with `migrator`, embedded with `sqlx::migrate!` (over any
    /// `migrations` directory in its config).
    pub fn embedded(self, bind: impl Into<String>, migrator: &'static Migrator) -> Self {
        self.source(bind, MigrationSource::Embedded(migrator))
    }

    /// Bind `bind` migrates from `dir` (over its config's).
    pub fn directory(self, bind: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        self.source(bind, MigrationSource::Directory(dir.into()))
    }

    /// Bind `bind` migrates from `source`.
    pub fn source(mut self, bind: impl Into<String>, source: MigrationSource) -> Self {
        self.sources.insert(bind.into(), source);
        self
    }

    /// Only these binds (called once per bind); default: all. Their `migrate_after` still
    /// orders them, but the binds named there are not migrated unless listed too.
    pub fn bind(mut self, bind: impl Into<String>) -> Self {
        self.only.push(bind.into());
        self
    }

    /// Migrate up to and including `version` (revert: down to it, keeping it); `0` reverts
    /// everything. Meant for one bind ([`bind`](Migrations::bind)): each bind of the run must
    /// have a migration of that version.
    pub fn target(mut self, version: i64) -> Self {
        self.target = Some(version);
        self
    }

    /// Report what would be applied or reverted, and change nothing: no lock, no
    /// `_sqlx_migrations` table created.
    pub fn dry_run(mut self, on: bool) -> Self {
        self.dry_run = on;
        self
    }

    /// Calls `f` with each step as it happens (from the task running the migrations; keep it
    /// quick).
    pub fn on_event(mut self, f: impl Fn(&MigrateEvent<'_>) + Send + Sync + 'static) -> Self {
        self.events = Some(Arc::new(f));
        self
    }

    /// Applies the pending migrations of every bind of the plan, in order (see
    /// [`BindManager::migrate_all`]), and reports on each, failed or not.
    ///
    /// # Errors
    ///
    /// Only for a plan that cannot start, before anything runs: an unknown bind
    /// ([`ErrorKind::UnknownBind`](crate::ErrorKind::UnknownBind)), a `migrate_after` cycle
    /// ([`ErrorKind::MigrationOrder`](crate::ErrorKind::MigrationOrder)). A bind's failure is in
    /// its report ([`MigrateReport::into_result`] turns it into an error).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the running bind's dedicated connection: the server rolls back
    /// the migration in flight (where DDL is transactional) and frees the lock. Migrations
    /// finished before stay applied.
    pub async fn apply(&self, manager: &BindManager) -> Result<MigrateReport> {
        self.run(manager, Direction::Up).await
    }

    /// Reverts, bind by bind in reverse order: the latest applied migration of each, or with a
    /// [`target`](Migrations::target), every applied migration above it.
    ///
    /// # Errors
    ///
    /// As [`Migrations::apply`].
    ///
    /// # Cancel safety
    ///
    /// As [`Migrations::apply`].
    pub async fn revert(&self, manager: &BindManager) -> Result<MigrateReport> {
        self.run(manager, Direction::Down).await
    }

    /// Where each migration of each bind of the plan stands, read without taking the lock and
    /// changing nothing. A bind that cannot be read has its error in its entry. The progress
    /// callback hears [`MigrateEvent::BindStarted`] and [`MigrateEvent::BindFinished`] (with
    /// `done: 0`) for each bind that has migrations.
    ///
    /// # Errors
    ///
    /// As [`Migrations::apply`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads, on connections of its own, dropped with the future.
    pub async fn status(&self, manager: &BindManager) -> Result<Vec<BindMigrations>> {
        let mut out = Vec::new();
        for bind in self.order(manager)? {
            out.push(self.bind_status(manager, &bind).await);
        }
        Ok(out)
    }

    async fn bind_status(&self, manager: &BindManager, bind: &str) -> BindMigrations {
        let backend = manager.entry(bind).map_or("", |e| e.erased.backend());
        let source = self.source_of(manager, bind);
        let mut entry = BindMigrations {
            bind: bind.to_owned(),
            backend,
            source: source.as_ref().map(MigrationSource::describe),
            migrations: Vec::new(),
            error: None,
        };
        let Some(source) = source else {
            return entry;
        };
        self.emit(MigrateEvent::BindStarted { bind, backend });
        let started = Instant::now();
        let read = async {
            let resolved = source::resolve(bind, &source).await?;
            let mut conn = conn::open(manager, bind, false).await?;
            let status = run::status(&mut *conn, bind, &resolved).await;
            if status.is_ok() {
                conn.close().await;
            }
            status
        };
        match read.await {
            Ok(migrations) => entry.migrations = migrations,
            Err(e) => entry.error = Some(e),
        }
        self.emit(MigrateEvent::BindFinished {
            bind,
            done: 0,
            elapsed: started.elapsed(),
            error: entry.error.as_ref(),
        });
        entry
    }

    fn emit(&self, event: MigrateEvent<'_>) {
        if let Some(events) = &self.events {
            events(&event);
        }
    }

    /// The binds of the plan in migration order.
    fn order(&self, manager: &BindManager) -> Result<Vec<String>> {
        for name in self.only.iter().chain(self.sources.keys()) {
            manager.entry(name)?;
        }
        let graph: BTreeMap<String, Vec<String>> = manager
            .names()
            .map(|name| {
                let after = manager
                    .entry(name)
                    .map(|e| e.erased.config().migrate_after.clone())
                    .unwrap_or_default();
                (name.to_owned(), after)
            })
            .collect();
        let all = order::order(&graph)?;
        Ok(all
            .into_iter()
            .filter(|b| self.only.is_empty() || self.only.contains(b))
            .collect())
    }

    fn source_of(&self, manager: &BindManager, bind: &str) -> Option<MigrationSource> {
        if let Some(source) = self.sources.get(bind) {
            return Some(source.clone());
        }
        let config = manager.entry(bind).ok()?.erased.config();
        config.migrations.clone().map(MigrationSource::Directory)
    }

    async fn run(&self, manager: &BindManager, direction: Direction) -> Result<MigrateReport> {
        let mut order = self.order(manager)?;
        if direction == Direction::Down {
            order.reverse();
        }
        let mut binds = Vec::with_capacity(order.len());
        let mut failed = false;
        for bind in order {
            let report = if failed {
                self.not_run(manager, &bind)
            } else {
                self.run_bind(manager, &bind, direction).await
            };
            failed |= report.error().is_some();
            binds.push(report);
        }
        Ok(MigrateReport {
            binds,
            dry_run: self.dry_run,
        })
    }

    fn not_run(&self, manager: &BindManager, bind: &str) -> BindReport {
        BindReport {
            bind: bind.to_owned(),
            backend: manager.entry(bind).map_or("", |e| e.erased.backend()),
            source: self.source_of(manager, bind).map(|s| s.describe()),
            done: Vec::new(),
            already_applied: 0,
            pending: Vec::new(),
            elapsed: std::time::Duration::ZERO,
            outcome: BindOutcome::NotRun,
        }
    }

    async fn run_bind(
        &self,
        manager: &BindManager,
        bind: &str,
        direction: Direction,
    ) -> BindReport {
        let mut report = self.not_run(manager, bind);
        let Some(source) = self.source_of(manager, bind) else {
            report.outcome = BindOutcome::NoMigrations;
            return report;
        };
        // A bind pinned to a test's outer transaction (the `testing` feature's transaction
        // mode) migrates on a connection of its own, whose changes no rollback undoes: there the
        // run only checks that nothing is left to do, and refuses what would outlive the test.
        let pinned = manager
            .entry(bind)
            .is_ok_and(|e| e.erased.pin_counts().is_some());
        let step = Step {
            bind,
            events: &self.events,
            dry_run: self.dry_run || pinned,
            target: self.target,
        };
        let started = Instant::now();
        step.emit(MigrateEvent::BindStarted {
            bind,
            backend: report.backend,
        });
        let mut progress = Progress::default();
        let result = async {
            let resolved = source::resolve(bind, &source).await?;
            let creates = matches!(direction, Direction::Up) && !step.dry_run;
            let mut conn = conn::open(manager, bind, creates).await?;
            let result = match direction {
                Direction::Up => run::apply(&mut *conn, &step, &resolved, &mut progress).await,
                Direction::Down => run::revert(&mut *conn, &step, &resolved, &mut progress).await,
            };
            // After a failure the connection is dropped, not closed: the server ends its
            // session, and with it any lock or transaction it held.
            if result.is_ok() {
                conn.close().await;
            }
            match result {
                // A dry run lists in `done` what it would run.
                Ok(()) if pinned && !self.dry_run && !progress.done.is_empty() => Err(
                    crate::Error::migration_in_pinned_test(bind, progress.done.len()),
                ),
                other => other,
            }
        }
        .await;
        if pinned && !self.dry_run {
            // Checked, not run: nothing was done.
            progress.done.clear();
        }
        report.elapsed = started.elapsed();
        report.done = progress.done;
        report.already_applied = progress.already_applied;
        report.pending = progress.pending;
        step.emit(MigrateEvent::BindFinished {
            bind,
            done: report.done.len(),
            elapsed: report.elapsed,
            error: result.as_ref().err(),
        });
        report.outcome = match result {
            Ok(()) => BindOutcome::Done,
            Err(e) => BindOutcome::Failed(e),
        };
        report
    }
}

impl BindManager {
    /// Applies every bind's pending migrations: in name order, each after the binds its
    /// `migrate_after` names, each on a connection of its own (outside its pool) under the
    /// database's migration lock, so that of two processes migrating at once, one applies and
    /// the other waits, then finds nothing left to do. Binds with no migrations are skipped.
    ///
    /// The first failure stops the run. **Nothing is atomic across binds**: see
    /// [`MigrateReport`]; [`Migrations::apply`] reports on every bind instead of failing.
    ///
    /// # Errors
    ///
    /// As [`Migrations::apply`], and the failed bind's error: [`ErrorKind::MigrationFailed`],
    /// [`ErrorKind::MigrationEdited`], [`ErrorKind::MigrationDirty`],
    /// [`ErrorKind::MigrationMissing`], [`ErrorKind::MigrationSource`],
    /// [`ErrorKind::Connect`], [`ErrorKind::Query`] …, each naming the bind.
    ///
    /// [`ErrorKind::MigrationFailed`]: crate::ErrorKind::MigrationFailed
    /// [`ErrorKind::MigrationEdited`]: crate::ErrorKind::MigrationEdited
    /// [`ErrorKind::MigrationDirty`]: crate::ErrorKind::MigrationDirty
    /// [`ErrorKind::MigrationMissing`]: crate::ErrorKind::MigrationMissing
    /// [`ErrorKind::MigrationSource`]: crate::ErrorKind::MigrationSource
    /// [`ErrorKind::Connect`]: crate::ErrorKind::Connect
    /// [`ErrorKind::Query`]: crate::ErrorKind::Query
    ///
    /// # Cancel safety
    ///
    /// As [`Migrations::apply`].
    pub async fn migrate_all(&self, plan: &Migrations) -> Result<MigrateReport> {
        plan.apply(self).await?.into_result()
    }

    /// Where each migration of each bind stands: see [`Migrations::status`].
    ///
    /// # Errors
    ///
    /// As [`Migrations::status`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Migrations::status`].
    pub async fn migration_status(&self, plan: &Migrations) -> Result<Vec<BindMigrations>> {
        plan.status(self).await
    }

    /// Reverts migrations: see [`Migrations::revert`].
    ///
    /// # Errors
    ///
    /// As [`BindManager::migrate_all`].
    ///
    /// # Cancel safety
    ///
    /// As [`Migrations::apply`].
    pub async fn revert_migrations(&self, plan: &Migrations) -> Result<MigrateReport> {
        plan.revert(self).await?.into_result()
    }
}
