//! Where a test's migrations and fixtures come from.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sqlx::migrate::Migrator;

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
        let migrator = Migrator::new(path.clone()).await.map_err(|e| {
            let what = format!("cannot read the migrations in `{}`", path.display());
            Error::test_database(Some(bind), what, e)
        })?;
        let dir = Arc::new(ReadDir {
            digest: digest(&migrator),
            migrator,
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
#[derive(Debug)]
pub(super) struct ReadDir {
    migrator: Migrator,
    digest: u64,
}

/// Migrations ready to run.
#[derive(Debug)]
pub(super) enum Loaded<'a> {
    Given(&'a Migrator),
    Read(Arc<ReadDir>),
}

impl Loaded<'_> {
    pub(super) fn migrator(&self) -> &Migrator {
        match self {
            Self::Given(m) => m,
            Self::Read(dir) => &dir.migrator,
        }
    }

    /// A digest of the migrations (versions and checksums): equal sets build equal templates.
    pub(super) fn digest(&self) -> u64 {
        match self {
            Self::Given(m) => digest(m),
            Self::Read(dir) => dir.digest,
        }
    }
}

fn digest(migrator: &Migrator) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for m in migrator.iter() {
        m.version.hash(&mut hasher);
        m.checksum.hash(&mut hasher);
        m.migration_type.is_down_migration().hash(&mut hasher);
    }
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
