//! What a migration run tells: progress events as it goes, a report per bind at the end, and
//! the status of each migration.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

/// Which way a migration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Direction {
    /// Applying it (`migrate`).
    Up,
    /// Undoing it with its down migration (`revert`).
    Down,
}

/// A step of a migration run, as it happens, for a progress display or a log.
#[derive(Debug)]
#[non_exhaustive]
pub enum MigrateEvent<'a> {
    /// The bind's turn came (to migrate, or to read its status): its connection is being
    /// opened.
    BindStarted {
        /// The bind.
        bind: &'a str,
        /// `PostgreSQL`, `MySQL`, `SQLite` or `Any`.
        backend: &'static str,
    },
    /// Another migrator (another process, another manager, sqlx-cli) holds the database's
    /// migration lock: this one waits for it, then applies what is still pending.
    WaitingForLock {
        /// The bind.
        bind: &'a str,
    },
    /// A migration starts.
    MigrationStarted {
        /// The bind.
        bind: &'a str,
        /// The migration's version.
        version: i64,
        /// Its description (from its file name).
        description: &'a str,
        /// Applied or reverted.
        direction: Direction,
    },
    /// A migration finished and is recorded in `_sqlx_migrations`.
    MigrationFinished {
        /// The bind.
        bind: &'a str,
        /// The migration's version.
        version: i64,
        /// Its description.
        description: &'a str,
        /// Applied or reverted.
        direction: Direction,
        /// How long it took.
        elapsed: Duration,
    },
    /// The bind is done, or failed (for a status: its migrations are read, or could not be).
    BindFinished {
        /// The bind.
        bind: &'a str,
        /// Migrations applied (or reverted) by this run; 0 for a status.
        done: usize,
        /// How long the bind took, connection included.
        elapsed: Duration,
        /// Why it failed, if it did.
        error: Option<&'a Error>,
    },
}

/// One migration, as a report or a status lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationInfo {
    /// Its version.
    pub version: i64,
    /// Its description.
    pub description: String,
    /// Its file, when read from a directory.
    pub file: Option<PathBuf>,
    /// How long it took, when this run applied or reverted it.
    pub elapsed: Option<Duration>,
}

/// How one bind's part of a run ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum BindOutcome {
    /// Done: everything asked for is applied (or reverted, or, in a dry run, listed).
    Done,
    /// The bind has no migrations (no `migrations` directory, none handed in code).
    NoMigrations,
    /// It failed; what it applied before the failure stays applied.
    Failed(Error),
    /// Not run: a bind it migrates after (or an earlier one) failed.
    NotRun,
}

/// One bind's part of a migration run.
#[derive(Debug)]
#[non_exhaustive]
pub struct BindReport {
    /// The bind.
    pub bind: String,
    /// `PostgreSQL`, `MySQL`, `SQLite` or `Any`.
    pub backend: &'static str,
    /// Where its migrations came from: `embedded` or the directory.
    pub source: Option<String>,
    /// Migrations this run applied (reverted, for a revert; would apply, for a dry run).
    pub done: Vec<MigrationInfo>,
    /// Migrations that were applied before this run.
    pub already_applied: usize,
    /// Migrations left pending: those beyond the target version.
    pub pending: Vec<MigrationInfo>,
    /// How long the bind took.
    pub elapsed: Duration,
    /// How it ended.
    pub outcome: BindOutcome,
}

impl BindReport {
    /// The error the bind failed with, if it failed.
    pub fn error(&self) -> Option<&Error> {
        match &self.outcome {
            BindOutcome::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// The outcome of a migration run over several binds, in the order they ran.
///
/// Each bind migrates on its own: **nothing is atomic across binds.** A failure stops the run
/// at that bind; the binds before it stay migrated, the failed one keeps the migrations it
/// applied before the failing one, and the binds after it are [not run](BindOutcome::NotRun).
#[derive(Debug)]
#[non_exhaustive]
pub struct MigrateReport {
    /// One report per bind, in the order they ran (or would have).
    pub binds: Vec<BindReport>,
    /// Whether this was a dry run, which changed nothing.
    pub dry_run: bool,
}

impl MigrateReport {
    /// The report of bind `name`.
    pub fn bind(&self, name: &str) -> Option<&BindReport> {
        self.binds.iter().find(|b| b.bind == name)
    }

    /// The bind that failed, if one did.
    pub fn failed(&self) -> Option<&BindReport> {
        self.binds.iter().find(|b| b.error().is_some())
    }

    /// Migrations applied (or reverted) by this run, all binds together.
    pub fn done(&self) -> usize {
        self.binds.iter().map(|b| b.done.len()).sum()
    }

    /// The report, or the error of the bind that failed.
    ///
    /// # Errors
    ///
    /// The failed bind's error (it names the bind).
    pub fn into_result(mut self) -> Result<Self> {
        let failed = self
            .binds
            .iter_mut()
            .find(|b| matches!(b.outcome, BindOutcome::Failed(_)));
        if let Some(report) = failed
            && let BindOutcome::Failed(e) =
                std::mem::replace(&mut report.outcome, BindOutcome::NotRun)
        {
            return Err(e);
        }
        Ok(self)
    }
}

/// Where one migration stands on its database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationState {
    /// Applied, with the checksum it has now.
    Applied,
    /// Not applied yet.
    Pending,
    /// Failed part-way (MySQL/MariaDB, which cannot roll DDL back) and marked unfinished.
    Dirty,
    /// Applied, but edited since: its checksum differs from the recorded one. Migrating refuses
    /// to run until it is restored.
    Edited,
    /// Recorded as applied, but not among the bind's migrations any more.
    Missing,
}

/// One migration and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationStatus {
    /// The migration.
    pub migration: MigrationInfo,
    /// Where it stands.
    pub state: MigrationState,
    /// It has a down migration, so `revert` can undo it.
    pub reversible: bool,
}

/// The migrations of one bind and where each stands, in version order.
#[derive(Debug)]
#[non_exhaustive]
pub struct BindMigrations {
    /// The bind.
    pub bind: String,
    /// `PostgreSQL`, `MySQL`, `SQLite` or `Any`.
    pub backend: &'static str,
    /// Where its migrations come from: `embedded` or the directory; `None` when it has none.
    pub source: Option<String>,
    /// Each migration, in version order.
    pub migrations: Vec<MigrationStatus>,
    /// Why the status could not be read (the database could not be reached …).
    pub error: Option<Error>,
}

impl BindMigrations {
    /// How many migrations are in `state`.
    pub fn count(&self, state: MigrationState) -> usize {
        self.migrations.iter().filter(|m| m.state == state).count()
    }
}
