//! Where a bind's migrations come from: a `Migrator` embedded with `sqlx::migrate!`, or a
//! directory read when they run.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::Figment;
use figment::providers::{Format, Toml};
use sqlx::migrate::{Migration, MigrationType, Migrator, ResolveConfig};

use crate::{Error, Result};

/// The migrations of one bind.
#[derive(Clone)]
pub enum MigrationSource {
    /// Migrations compiled into the program: `static MIGRATOR: Migrator = sqlx::migrate!("…")`.
    Embedded(&'static Migrator),
    /// Migrations built in code ([`Migrator::with_migrations`]) or resolved beforehand.
    Owned(Arc<Migrator>),
    /// A directory in sqlx's format, read each time migrations run, following the project's
    /// `sqlx.toml` where one describes it (see the README's Migrations section).
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

pub(super) fn from_migrator(migrator: &Migrator) -> Resolved {
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
    // Reading a directory (and a `sqlx.toml`) blocks.
    let read = tokio::task::spawn_blocking(move || {
        let project = SqlxToml::for_directory(&dir)?;
        let mut config = ResolveConfig::new();
        if let Some((_, toml)) = &project {
            config.ignore_chars(toml.migrate.ignored_chars.iter().copied());
        }
        // sqlx's own reader, the one `Migrator::new`, `sqlx::migrate!` and sqlx-cli use: the
        // same files, the same checksums.
        let found = sqlx::migrate::resolve_blocking_with_config(&dir, &config)
            .map_err(|e| ReadError::Directory(Box::new(e)))?;
        Ok::<_, ReadError>((found, project))
    })
    .await;
    let (found, project) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(ReadError::Directory(e))) => {
            let problem = format!(
                "cannot read the migrations directory `{shown}`; check `migrations` in the \
                 bind's config (a path relative to the working directory) and the files in it"
            );
            return Err(Error::migration_source(bind, &problem, Some(e)));
        }
        Ok(Err(ReadError::SqlxToml(path, e))) => {
            let problem = format!(
                "cannot read `{}`, the sqlx.toml describing the migrations directory \
                 `{shown}`: fix its `[migrate]` table, as `sqlx::migrate!` and sqlx-cli read it",
                path.display()
            );
            return Err(Error::migration_source(bind, &problem, Some(e)));
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
    let (table, schemas) = match project {
        Some((path, toml)) => {
            tracing::debug!(bind, sqlx_toml = %path.display(), "migrations read as sqlx.toml says");
            let table = toml
                .migrate
                .table_name
                .map_or(Cow::Borrowed(DEFAULT_TABLE), Cow::Owned);
            let schemas = toml
                .migrate
                .create_schemas
                .into_iter()
                .map(Cow::Owned)
                .collect();
            (table, Cow::Owned(schemas))
        }
        None => (Cow::Borrowed(DEFAULT_TABLE), Cow::Borrowed(&[][..])),
    };
    Ok(Resolved {
        migrations: Cow::Owned(migrations),
        files,
        table,
        schemas,
        locking: true,
        ignore_missing: false,
    })
}

/// The table sqlx records applied migrations in, unless told otherwise.
const DEFAULT_TABLE: &str = "_sqlx_migrations";

/// Why a directory source could not be read.
enum ReadError {
    /// sqlx's `ResolveError`, which sqlx does not export.
    Directory(Box<dyn std::error::Error + Send + Sync>),
    SqlxToml(PathBuf, Box<figment::Error>),
}

/// What a project's `sqlx.toml` says of its migrations: the `[migrate]` table that
/// `sqlx::migrate!` and sqlx-cli read (sqlx's `Migrator::new` reads none). A directory source
/// follows it where it describes that very directory, so dbscope records migrations in the
/// same table, with the same checksums, as the project's other tools.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct SqlxToml {
    migrate: SqlxMigrate,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct SqlxMigrate {
    table_name: Option<String>,
    migrations_dir: Option<PathBuf>,
    create_schemas: Vec<String>,
    ignored_chars: Vec<char>,
}

impl SqlxToml {
    /// The `sqlx.toml` describing `dir`, with its path: the nearest one in `dir`'s ancestors
    /// whose `migrations-dir` (by default `migrations`, relative to the file's directory, as
    /// sqlx reads it from the crate root or sqlx-cli from the working directory) is `dir`.
    /// `None` when no such file exists.
    fn for_directory(dir: &Path) -> std::result::Result<Option<(PathBuf, Self)>, ReadError> {
        // A directory that cannot be resolved fails in sqlx's reader, with its own error.
        let Ok(dir) = std::fs::canonicalize(dir) else {
            return Ok(None);
        };
        for root in dir.ancestors().skip(1) {
            let path = root.join("sqlx.toml");
            if !path.is_file() {
                continue;
            }
            let toml: Self = Figment::from(Toml::file_exact(&path))
                .extract()
                .map_err(|e| ReadError::SqlxToml(path.clone(), Box::new(e)))?;
            let described = root.join(
                toml.migrate
                    .migrations_dir
                    .as_deref()
                    .unwrap_or(Path::new("migrations")),
            );
            if std::fs::canonicalize(described).is_ok_and(|described| described == dir) {
                return Ok(Some((path, toml)));
            }
        }
        Ok(None)
    }
}
