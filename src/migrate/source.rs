//! Where a bind's migrations come from: a `Migrator` embedded with `sqlx::migrate!`, or a
//! directory read when they run.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::{Error, Result};

/// The migrations of one bind.
#[derive(Clone)]
pub enum MigrationSource {
    /// Migrations compiled into the program: `static MIGRATOR: Migrator = sqlx::migrate!("…")`.
    Embedded(&'static Migrator),
    /// Migrations built in code ([`Migrator::with_migrations`]) or resolved beforehand.
    Owned(Arc<Migrator>),
    /// A directory in sqlx's format, read each time migrations run.
    Directory(PathBuf),
}

impl fmt::Debug for MigrationSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded(m) => write!(f, "Embedded({} migrations)", m.iter().count()),
            Self::Owned(m) => write!(f, "Owned({} migrations)", m.iter().count()),
            Self::Directory(dir) => f.debug_tuple("Directory").field(dir).finish(),
        }
    }
}

impl MigrationSource {
    /// How the source is shown in reports: `embedded` or the directory.
    pub fn describe(&self) -> String {
        match self {
            Self::Embedded(_) | Self::Owned(_) => "embedded".to_owned(),
            Self::Directory(dir) => dir.display().to_string(),
        }
    }
}

/// A source read: its migrations in version order, and what sqlx's migrator would do with them.
pub(crate) struct Resolved {
    pub(crate) migrations: Cow<'static, [Migration]>,
    /// The file of each migration read from a directory, by version and direction.
    files: HashMap<(i64, bool), PathBuf>,
    pub(crate) table: Cow<'static, str>,
    /// Schemas made before anything else, as sqlx's `Migrator::run` makes them (an embedded
    /// migrator's `create_schema`: its table or its migrations may live there).
    pub(crate) schemas: Cow<'static, [Cow<'static, str>]>,
    pub(crate) locking: bool,
    pub(crate) ignore_missing: bool,
}

impl Resolved {
    /// The file of migration `version`, its down migration when `down`.
    pub(crate) fn file(&self, version: i64, down: bool) -> Option<PathBuf> {
        self.files.get(&(version, down)).cloned()
    }

    /// The migrations that apply (simple and up), in version order.
    pub(crate) fn ups(&self) -> impl Iterator<Item = &Migration> {
        self.migrations
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
    }

    /// The down migration of `version`, if there is one.
    pub(crate) fn down(&self, version: i64) -> Option<&Migration> {
        self.migrations
            .iter()
            .find(|m| m.version == version && m.migration_type == MigrationType::ReversibleDown)
    }
}

/// Reads the migrations of `bind` from `source`.
pub(crate) async fn resolve(bind: &str, source: &MigrationSource) -> Result<Resolved> {
    match source {
        MigrationSource::Embedded(migrator) => Ok(from_migrator(migrator)),
        MigrationSource::Owned(migrator) => Ok(from_migrator(migrator)),
        MigrationSource::Directory(dir) => read_dir(bind, dir.clone()).await,
    }
}

fn from_migrator(migrator: &Migrator) -> Resolved {
    Resolved {
        migrations: Cow::Owned(migrator.iter().cloned().collect()),
        files: HashMap::new(),
        table: migrator.table_name.clone(),
        schemas: migrator.create_schemas.clone(),
        locking: migrator.locking,
        ignore_missing: migrator.ignore_missing,
    }
}

async fn read_dir(bind: &str, dir: PathBuf) -> Result<Resolved> {
    let shown = dir.display().to_string();
    // sqlx's own reader, the one `Migrator::new` and sqlx-cli use: the same files, the same
    // checksums. Reading a directory blocks.
    let read = tokio::task::spawn_blocking(move || sqlx::migrate::resolve_blocking(&dir)).await;
    let found = match read {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            let problem = format!(
                "cannot read the migrations directory `{shown}`; check `migrations` in the \
                 bind's config (a path relative to the working directory) and the files in it"
            );
            return Err(Error::migration_source(bind, &problem, Some(Box::new(e))));
        }
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    };
    let mut migrations = Vec::with_capacity(found.len());
    let mut files = HashMap::new();
    for (migration, path) in found {
        let down = migration.migration_type.is_down_migration();
        files.insert((migration.version, down), path);
        migrations.push(migration);
    }
    migrations.sort();
    Ok(Resolved {
        migrations: Cow::Owned(migrations),
        files,
        table: Cow::Borrowed("_sqlx_migrations"),
        schemas: Cow::Borrowed(&[]),
        locking: true,
        ignore_missing: false,
    })
}
