//! Where a test's migrations and fixtures come from.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sqlx::migrate::{Migration, Migrator};

use crate::migrate::Resolved;

use crate::{Error, Result};

/// A bind's migrations, in sqlx's format: a [`Migrator`] (from `sqlx::migrate!()`, with the
/// migrations compiled in), or a directory read when the test starts.
#[derive(Debug)]
pub enum Migrations {
    /// Migrations already loaded.
    Migrator(Migrator),
    /// A directory of sqlx migrations (`<version>_<name>.sql`, or `.up.sql` / `.down.sql`).
    Dir(PathBuf),
}

impl From<Migrator> for Migrations {
    fn from(migrator: Migrator) -> Self {
        Self::Migrator(migrator)
    }
}

impl From<&str> for Migrations {
    fn from(path: &str) -> Self {
        Self::Dir(path.into())
    }
}

impl From<PathBuf> for Migrations {
    fn from(path: PathBuf) -> Self {
        Self::Dir(path)
    }
}

impl From<&std::path::Path> for Migrations {
    fn from(path: &std::path::Path) -> Self {
        Self::Dir(path.into())
    }
}

impl Migrations {
    /// The migrations, loaded. A directory is read once per process (every test of a binary
    /// runs the same migrations; the once-per-binary migration and the templates assume so),
    /// then shared: not re-read and re-hashed file by file for each test.
    pub(super) async fn load(&self, bind: &str) -> Result<Loaded<'_>> {
        static READ: Mutex<Option<HashMap<PathBuf, Arc<ReadDir>>>> = Mutex::new(None);
        let path = match self {
            Self::Migrator(m) => return Ok(Loaded::Given(m)),
            Self::Dir(path) => path,
        };
        let cached =
            |read: &mut Option<HashMap<_, _>>| read.get_or_insert_default().get(path).cloned();
        if let Some(dir) = cached(&mut READ.lock().expect("not poisoned")) {
            return Ok(Loaded::Read(dir));
        }
        // Read as `migrate_all` reads a directory: sqlx's reader, and the project's
        // `sqlx.toml` (its table, its checksums), so that the two agree on what is applied.
        let resolved = crate::migrate::resolve_directory(bind, path)
            .await
            .map_err(|e| {
                let what = format!("cannot read the migrations in `{}`", path.display());
                Error::test_database(Some(bind), what, e)
            })?;
        let dir = Arc::new(ReadDir {
            digest: digest(resolved.migrations.iter(), &resolved.table),
            resolved,
        });
        let mut read = READ.lock().expect("not poisoned");
        // Two tests reading it at once keep the first: both read the same files.
        let dir = read
            .get_or_insert_default()
            .entry(path.clone())
            .or_insert(dir);
        Ok(Loaded::Read(dir.clone()))
    }
}

/// A directory of migrations as read, and its digest.
pub(super) struct ReadDir {
    resolved: Resolved,
    digest: u64,
}

/// Migrations ready to run.
pub(super) enum Loaded<'a> {
    Given(&'a Migrator),
    Read(Arc<ReadDir>),
}

impl Loaded<'_> {
    /// Applies the migrations on `conn`, a connection to the database at `url`, as
    /// `migrate_all` applies a bind's: under the migration lock of its backend (the one
    /// sqlx-cli takes), in the table the source names; closes the connection after.
    pub(super) async fn apply(
        &self,
        bind: &str,
        conn: sqlx::AnyConnection,
        url: &str,
    ) -> Result<()> {
        match self {
            Self::Given(m) => {
                let resolved = crate::migrate::resolved_from(m);
                crate::migrate::apply_on(bind, conn, url, &resolved).await
            }
            Self::Read(dir) => crate::migrate::apply_on(bind, conn, url, &dir.resolved).await,
        }
    }

    /// A digest of the migrations (versions and checksums) and their table: equal sets build
    /// equal templates.
    pub(super) fn digest(&self) -> u64 {
        match self {
            Self::Given(m) => digest(m.iter(), &m.table_name),
            Self::Read(dir) => dir.digest,
        }
    }
}

fn digest<'a>(migrations: impl Iterator<Item = &'a Migration>, table: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for m in migrations {
        m.version.hash(&mut hasher);
        m.checksum.hash(&mut hasher);
        m.migration_type.is_down_migration().hash(&mut hasher);
    }
    table.hash(&mut hasher);
    hasher.finish()
}

/// A fixture as the builder got it.
#[derive(Debug)]
pub(super) enum Fixture {
    Sql(String),
    File(PathBuf),
}

/// The SQL of a bind's fixtures, files read.
pub(super) async fn read_fixtures(
    bind: &str,
    fixtures: Option<&Vec<Fixture>>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for fixture in fixtures.into_iter().flatten() {
        match fixture {
            Fixture::Sql(sql) => out.push(sql.clone()),
            Fixture::File(path) => {
                let sql = std::fs::read_to_string(path).map_err(|e| {
                    let what = format!("cannot read the fixture `{}`", path.display());
                    Error::test_database(Some(bind), what, e)
                })?;
                out.push(sql);
            }
        }
    }
    Ok(out)
}
