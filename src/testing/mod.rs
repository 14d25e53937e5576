//! A testing toolkit for apps built on dbscope: per-test copies of every bind of the app's own
//! config, in a transaction that rolls back or in a database of their own, migrated and seeded.
//!
//! [`TestDb::builder`] sets a test up; [`#[dbscope::test]`](crate::test) is sugar over it. The
//! test gets a [`TestContext`], whose [`manager`](TestContext::manager) it hands to the app.
//!
//! - **[`Mode::Transaction`]** (the default on PostgreSQL and MySQL/MariaDB): each bind's pool is
//!   pinned to one connection inside a test transaction. Every session, scope, atomic block and
//!   blocking session of the app takes its turn on that connection (waiting at most the bind's
//!   `acquire_timeout`), and its BEGIN, COMMIT and ROLLBACK become SAVEPOINT, RELEASE and
//!   ROLLBACK TO. The pin belongs to the manager, so an HTTP server the test starts in another
//!   task runs in the same transaction. At the end everything rolls back; a test that lost the
//!   transaction on the way (an implicit commit by DDL on MariaDB) fails, saying so. On
//!   PostgreSQL each statement of an autocommit session runs in a savepoint of its own, so that
//!   its failure undoes only itself, as outside the test. A PostgreSQL connection whose test
//!   ended cleanly is rolled back, cleared and kept for the next test of the binary, which then
//!   opens none (see [`runtime`]).
//! - **[`Mode::Database`]** (the default on SQLite): a database of the test's own, dropped at the
//!   end, failed test or not. PostgreSQL builds a template once per migration set (and configured database) and leases
//!   the test one of its slots, a database a test before it used, reset to the template's state
//!   and verified so (see [`reuse`](TestDbBuilder::reuse), on by default; off, each test gets a
//!   clone of the template); MySQL/MariaDB creates and migrates it; SQLite uses a fresh file in
//!   the temp dir. Each run marks the PostgreSQL templates it uses (their comment: `dbscope test
//!   template, last used at …`), and the first test of a run on a server drops those of its
//!   configured database that no test has used for a week (a migration set since changed, a
//!   project gone), with their slots.
//!
//! After-commit hooks run when the app's scope commits, unless the test
//! [captures them](TestDbBuilder::capture_after_commit) to run them itself.
//!
//! Migrations are sqlx's ([`sqlx::migrate::Migrator`], or a directory in its format); in
//! transaction mode they run once per test binary, on the configured database, under sqlx's
//! advisory lock. Fixtures are SQL scripts run after the migrations, inside the test
//! transaction or the test's database.

mod context;
mod database;
#[cfg(feature = "postgres")]
mod reset;
#[cfg(feature = "postgres")]
mod slot;
mod source;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

pub use context::{TestContext, TestOutcome};
pub use source::Migrations;

use crate::backend::Dialect;
use crate::config::Config;
use crate::{BindManager, Result};
use context::{BindCopy, Cleanup};
use database::ServerDb;

/// Set to `1` (or `true`) to keep every test database of database mode instead of dropping it;
/// each test then prints where its databases are.
pub const KEEP_ENV: &str = "DBSCOPE_TEST_KEEP";

/// How a test gets its copy of a bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// One connection per bind, inside a test transaction that rolls back at the end.
    Transaction,
    /// A database per bind and test, dropped at the end (on PostgreSQL, by default, a reused
    /// database reset to the template's: see [`TestDbBuilder::reuse`]).
    Database,
}

/// Sets up one test's binds: see [the module docs](self).
#[derive(Debug)]
pub struct TestDb;

impl TestDb {
    /// A builder: the binds from the environment (as [`Config::from_env`]) unless told
    /// otherwise, each in its backend's default mode.
    pub fn builder() -> TestDbBuilder {
        TestDbBuilder::default()
    }
}

/// Where a test's config comes from.
#[derive(Debug, Default)]
enum ConfigSource {
    #[default]
    Env,
    FileAndEnv(PathBuf),
    Given(Config),
}

/// Builds one test's binds; [`start`](TestDbBuilder::start) sets them up.
#[derive(Debug, Default)]
#[must_use]
pub struct TestDbBuilder {
    config: ConfigSource,
    mode: Option<Mode>,
    migrations: BTreeMap<String, Migrations>,
    fixtures: BTreeMap<String, Vec<source::Fixture>>,
    keep: bool,
    capture_after_commit: bool,
    no_reuse: bool,
}

impl TestDbBuilder {
    /// The app's binds, as given.
    pub fn config(mut self, config: Config) -> Self {
        self.config = ConfigSource::Given(config);
        self
    }

    /// The app's binds from a TOML file with the environment on top, as
    /// [`Config::from_file_and_env`] loads them.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = ConfigSource::FileAndEnv(path.into());
        self
    }

    /// The mode of every bind; by default, [`Mode::Transaction`] on PostgreSQL and
    /// MySQL/MariaDB, [`Mode::Database`] on SQLite.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// The migrations of bind `bind`: a [`sqlx::migrate::Migrator`] (`sqlx::migrate!()`) or the
    /// path of a directory of sqlx migrations.
    pub fn migrations(
        mut self,
        bind: impl Into<String>,
        migrations: impl Into<Migrations>,
    ) -> Self {
        self.migrations.insert(bind.into(), migrations.into());
        self
    }

    /// A fixture for bind `bind`: SQL run after its migrations, in the order given.
    pub fn fixture(mut self, bind: impl Into<String>, sql: impl Into<String>) -> Self {
        let fixture = source::Fixture::Sql(sql.into());
        self.fixtures.entry(bind.into()).or_default().push(fixture);
        self
    }

    /// A fixture file for bind `bind`, read when the test starts.
    pub fn fixture_file(mut self, bind: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        let fixture = source::Fixture::File(path.into());
        self.fixtures.entry(bind.into()).or_default().push(fixture);
        self
    }

    /// Keeps the test's databases (database mode) instead of dropping them, and prints where
    /// they are; also on with [`KEEP_ENV`].
    pub fn keep(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// Database mode on PostgreSQL with migrations: whether a test may get a database a test
    /// before it used, reset to the template's state (on by default), or always a fresh clone
    /// of the template (`false`), dropped at the end. [`keep`](Self::keep) turns reuse off.
    ///
    /// A template has up to 16 such databases ("slots", `dbscope_test_slot_<hash>_<n>`), which
    /// stay on the server between runs; a test leases a free one for its life (a session
    /// advisory lock, so a crashed process's lease goes with its connection), and finding all
    /// 16 leased it gets a fresh clone. On each lease, before the fixtures run:
    ///
    /// - the schema is verified unchanged since the slot's last reset, from the server: no row
    ///   of any of the database's own catalogs (`pg_class`, `pg_attribute`, `pg_proc`,
    ///   `pg_constraint`, `pg_depend`, `pg_largeobject_metadata`, … all but the statistics) was
    ///   written since, and each has the template's row count; nor the database's row in
    ///   `pg_database`, nor any `ALTER DATABASE … SET`. Any DDL (CREATE, ALTER, DROP, GRANT,
    ///   COMMENT, a function, a view, an extension, a large object, TRUNCATE, REFRESH
    ///   MATERIALIZED VIEW, VACUUM FULL), or a slot that cannot be verified, is dropped and
    ///   cloned afresh from the template, as without reuse;
    /// - the slot is closed to connections until its reset is done, and other connections
    ///   still on it (a previous test's leaked pool) are terminated;
    /// - the data goes back to the template's, in one transaction, with no trigger of the
    ///   app's firing (`session_replication_role = replica`): tables empty in the template are
    ///   emptied if they have rows (DELETE up to 10,000 rows, TRUNCATE beyond); tables with rows
    ///   in the template (seed data of the migrations) are emptied and refilled with the
    ///   template's rows when a row of theirs was written or deleted; every sequence that moved
    ///   is set back to the template's value.
    ///
    /// Not reset, as they are not the database's: roles, tablespaces and other cluster-wide
    /// objects (a role a test creates outlives it, reuse or not), and the statistics counters
    /// (`pg_stat_*`). Fixtures that run DDL make every lease clone afresh: put DDL in the
    /// migrations. Resetting rows in place needs the right to set `session_replication_role`
    /// (superusers have it; `GRANT SET ON PARAMETER` on PostgreSQL 15+ gives it); without it
    /// tables are truncated, and a lease that must refill seed rows (or whose schema has
    /// triggers) clones afresh. PostgreSQL 14 or later; older servers always clone.
    pub fn reuse(mut self, reuse: bool) -> Self {
        self.no_reuse = !reuse;
        self
    }

    /// Holds the after-commit hooks of the app's scopes instead of running them when their
    /// scope commits: the test sees how many there are with
    /// [`captured_after_commit`](TestContext::captured_after_commit) and runs them, if it
    /// wants, with [`run_captured`](TestContext::run_captured). After-rollback hooks still run.
    /// Off by default: the hooks run as they would outside the test.
    pub fn capture_after_commit(mut self, capture: bool) -> Self {
        self.capture_after_commit = capture;
        self
    }

    /// Sets the test's binds up: loads the config, makes each bind's copy (migrated, seeded),
    /// and builds the manager the test hands to the app.
    ///
    /// # Errors
    ///
    /// As [`Config::from_env`] / [`Config::from_file_and_env`] and
    /// [`BindManagerBuilder::build`](crate::BindManagerBuilder::build);
    /// [`ErrorKind::TestDatabase`](crate::ErrorKind::TestDatabase) when a database cannot be
    /// reached, created, migrated or seeded; [`ErrorKind::UnknownBind`](crate::ErrorKind::UnknownBind)
    /// for migrations or fixtures of a bind the config lacks. What was created is dropped (a
    /// leased slot given back).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in effect: databases created so far are dropped when the future is dropped,
    /// and a slot being leased or reset is given back with its connection (the next lease
    /// verifies it, whatever state it was left in).
    pub async fn start(self) -> Result<TestContext> {
        let config = match self.config {
            ConfigSource::Env => Config::from_env()?,
            ConfigSource::FileAndEnv(path) => Config::from_file_and_env(path)?,
            ConfigSource::Given(config) => config,
        };
        for bind in self.migrations.keys().chain(self.fixtures.keys()) {
            if !config.binds.contains_key(bind) {
                let known = config.binds.keys().cloned().collect();
                return Err(crate::Error::unknown_bind(bind, known));
            }
        }
        let keep = self.keep || env_flag(KEEP_ENV);
        let reuse = !self.no_reuse && !keep;
        let mut cleanup = Cleanup::new(keep);
        let mut copies = Vec::new();
        let mut test_config = Config::default();
        for (name, mut bind) in config.binds {
            let (url, dialect) = crate::backend::resolve(&name, &bind)?;
            let url = url.clone();
            let mode = self.mode.unwrap_or(match dialect {
                Dialect::Sqlite => Mode::Database,
                Dialect::Postgres | Dialect::MySql => Mode::Transaction,
            });
            let migrations = match self.migrations.get(&name) {
                Some(m) => Some(m.load(&name).await?),
                None => None,
            };
            let fixtures = source::read_fixtures(&name, self.fixtures.get(&name)).await?;
            // The test's copy is one database: a bind's replicas (the real database's, or none
            // of the copy's) would take its reads outside the test transaction, or to data the
            // test never wrote. Its reads run on the copy, as its writes do.
            bind.replicas.clear();
            let server = ServerDb::new(&name, url.expose(), dialect);
            let mut database = None;
            match mode {
                Mode::Transaction => {
                    if let Some(migrator) = &migrations {
                        server.migrate_once(migrator).await?;
                    }
                }
                Mode::Database => {
                    let made = server.create(migrations.as_ref(), &fixtures, reuse).await?;
                    bind.url = Some(made.url().into());
                    database = Some(made.name());
                    cleanup.add(made);
                }
            }
            copies.push(BindCopy {
                name: name.clone(),
                mode,
                fixtures: if mode == Mode::Transaction {
                    fixtures
                } else {
                    Vec::new()
                },
                database,
            });
            test_config.binds.insert(name, bind);
        }
        let manager = BindManager::new(test_config)?;
        if self.capture_after_commit {
            manager.set_hook_sink(Arc::new(crate::scope::Captured::default()));
        }
        let context = TestContext::new(manager, copies, cleanup);
        context.set_up().await?;
        Ok(context)
    }
}

/// The runtime [`#[dbscope::test]`](crate::test) runs every test of a binary on: multi-thread,
/// with two workers, made on first use.
///
/// One runtime for all the tests lets transaction mode keep a PostgreSQL connection from one
/// test to the next: a socket belongs to the runtime it was opened in and dies with it. A test
/// whose transaction ended cleanly leaves its connection rolled back, its session advisory
/// locks released, its sequences' `currval` forgotten (`DISCARD SEQUENCES`) and sqlx's
/// prepared statements closed (a statement prepared on a table the test changed must not meet
/// the next test's), for the next
/// test of the same bind options on this runtime; one where the test ran SQL's `PREPARE` is
/// closed instead. Opening a PostgreSQL connection costs the server a process, which is most of
/// what a transaction-mode test costs otherwise.
///
/// Tests written with the builder under `#[tokio::test]` get a runtime each, so each connects;
/// to share, run them here:
///
/// ```no_run
/// # use dbscope::testing::TestDb;
/// #[test]
/// fn a_test() {
///     dbscope::testing::runtime().block_on(async {
///         let t = TestDb::builder().start().await.unwrap();
///         // … the test, on t.manager() …
///         t.finish().await.unwrap();
///     })
/// }
/// ```
///
/// # Panics
///
/// When the runtime cannot be made (the OS refuses its threads).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dbscope-test")
            .enable_all()
            .build()
            .expect("the tests' runtime")
    })
}

/// Runs a test body on a context from `builder`: what [`#[dbscope::test]`](crate::test)
/// expands to, on [`runtime`]. The body's panic or `Err` fails the test after the clean-up has run; so does a
/// failed clean-up (a lost test transaction).
///
/// # Panics
///
/// When the set-up fails, the body panics or returns an error, or the clean-up fails.
///
/// # Cancel safety
///
/// Not meant to be cancelled: it is a test's whole body. Dropped, its databases are dropped all
/// the same (on a thread of their own), its slots given back.
pub async fn run_test<F, Fut>(builder: TestDbBuilder, body: F)
where
    F: FnOnce(TestContext) -> Fut,
    Fut: Future<Output: TestOutcome>,
{
    use futures_util::FutureExt;
    let context = match builder.start().await {
        Ok(context) => context,
        Err(e) => panic!("setting the test's databases up failed: {e}"),
    };
    let handle = context.clone();
    let outcome = std::panic::AssertUnwindSafe(body(context))
        .catch_unwind()
        .await;
    let finished = handle.finish().await;
    match outcome {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(outcome) => outcome.check(),
    }
    if let Err(e) = finished {
        panic!("the test's clean-up failed: {e}");
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}
