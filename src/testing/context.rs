//! What a test gets: its manager, helpers to look at what the app did, and the clean-up.

use std::fmt;
use std::sync::{Arc, Mutex};

use sqlx::Execute;

use super::Mode;
use super::database::MadeDb;
use crate::backend::Backend;
use crate::{BindManager, Error, Result};

/// How long the clean-up waits for the app's sessions to hand their connections back.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One bind of the test, as set up.
#[derive(Debug)]
pub(super) struct BindCopy {
    pub(super) name: String,
    pub(super) mode: Mode,
    /// Transaction mode: the fixtures, run inside the test transaction.
    pub(super) fixtures: Vec<String>,
    /// Database mode: the test's database (its name; on SQLite, its file's path).
    pub(super) database: Option<String>,
}

/// A running test's binds, from [`TestDbBuilder::start`](super::TestDbBuilder::start): hand
/// [`manager`](TestContext::manager) to the app, and call [`finish`](TestContext::finish) at the
/// end (`#[dbscope::test]` does).
///
/// `Clone` is cheap and shares the test.
///
/// # Drop behavior
///
/// Dropped without `finish` (a test that panicked), the test's databases are dropped all the
/// same, on a thread of their own (a leased slot goes back with its lease's connection), and a
/// pinned connection closes with the manager, so the server rolls its transaction back.
#[derive(Clone)]
pub struct TestContext {
    inner: Arc<Inner>,
}

struct Inner {
    manager: BindManager,
    binds: Vec<BindCopy>,
    cleanup: Mutex<Cleanup>,
    #[cfg(feature = "testing-axum")]
    servers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl TestContext {
    pub(super) fn new(manager: BindManager, binds: Vec<BindCopy>, cleanup: Cleanup) -> Self {
        Self {
            inner: Arc::new(Inner {
                manager,
                binds,
                cleanup: Mutex::new(cleanup),
                #[cfg(feature = "testing-axum")]
                servers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Pins the binds in transaction mode, fixtures run inside their transaction.
    pub(super) async fn set_up(&self) -> Result<()> {
        for copy in &self.inner.binds {
            if copy.mode == Mode::Transaction {
                let open = self.inner.manager.entry(&copy.name)?;
                open.erased.clone().pin(copy.fixtures.clone()).await?;
            }
        }
        Ok(())
    }

    /// The manager of the test's binds: hand it to the app.
    pub fn manager(&self) -> &BindManager {
        &self.inner.manager
    }

    /// Database mode: the name of bind `bind`'s test database (on SQLite, its file's path; on
    /// PostgreSQL with reuse, its slot, `dbscope_test_slot_<hash>_<n>`); `None` in transaction
    /// mode.
    pub fn database(&self, bind: &str) -> Option<&str> {
        self.copy(bind)?.database.as_deref()
    }

    /// The mode of bind `bind`, if the test has it.
    pub fn mode(&self, bind: &str) -> Option<Mode> {
        self.copy(bind).map(|c| c.mode)
    }

    /// Runs `query` on bind `bind` and returns its first row: in transaction mode inside the
    /// test transaction (so it sees what the app wrote and has not rolled back), in database
    /// mode on the test's database. Outside any session of the app's: it waits for the pinned
    /// connection like any session, and counts as neither a commit nor a rollback.
    ///
    /// # Errors
    ///
    /// As [`BindManager::bind`]; [`ErrorKind::Query`](crate::ErrorKind::Query) when the query
    /// fails or returns no row; [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) when an app
    /// session holds the pinned connection past `acquire_timeout`.
    ///
    /// # Cancel safety
    ///
    /// As a session's statement: cancelled mid-flight, the connection is recovered (in
    /// transaction mode, rolled back to before the query, or the test transaction is marked
    /// lost).
    pub async fn fetch_one<'q, DB, E>(&self, bind: &str, query: E) -> Result<DB::Row>
    where
        DB: Backend,
        E: 'q + Execute<'q, DB>,
    {
        // Autocommit: not a transaction of the app's, so the app's commit and rollback counts
        // stay the app's (on PostgreSQL it runs in an uncounted savepoint, so that a failing
        // query leaves the test transaction usable).
        let mut session = self.inner.manager.session::<DB>(bind)?.autocommit(true);
        let row = sqlx::Executor::fetch_one(&mut session, query).await?;
        session.close().await?;
        Ok(row)
    }

    /// The transactions the app's sessions committed on bind `bind` (savepoints released on
    /// the pinned connection); `None` unless the bind is in transaction mode.
    pub fn commits(&self, bind: &str) -> Option<u64> {
        self.counts(bind).map(|c| c.commits)
    }

    /// The transactions the app's sessions rolled back on bind `bind`; `None` unless the bind
    /// is in transaction mode.
    pub fn rollbacks(&self, bind: &str) -> Option<u64> {
        self.counts(bind).map(|c| c.rollbacks)
    }

    /// The after-commit hooks the app's committed scopes left, held and not run yet: always 0
    /// unless the test [captures them](super::TestDbBuilder::capture_after_commit).
    pub fn captured_after_commit(&self) -> usize {
        self.captured().map_or(0, |c| c.len())
    }

    /// Runs the after-commit hooks held so far, in the order their scopes committed, and
    /// returns how many ran; 0 unless the test
    /// [captures them](super::TestDbBuilder::capture_after_commit). Hooks held later wait for
    /// the next call.
    ///
    /// # Errors
    ///
    /// None: a hook returns nothing to report.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: cancelled mid-way, the hooks not run yet are dropped.
    pub async fn run_captured(&self) -> usize {
        match self.captured() {
            Some(captured) => captured.run().await,
            None => 0,
        }
    }

    fn captured(&self) -> Option<Arc<crate::scope::Captured>> {
        self.inner.manager.hook_sink()
    }

    fn counts(&self, bind: &str) -> Option<crate::engine::PinCounts> {
        self.inner.manager.entry(bind).ok()?.erased.pin_counts()
    }

    fn copy(&self, bind: &str) -> Option<&BindCopy> {
        self.inner.binds.iter().find(|c| c.name == bind)
    }

    /// Serves `router` on 127.0.0.1 on a free port, in a task of its own, until the test
    /// finishes; returns its base URL (`http://127.0.0.1:<port>`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::TestDatabase`](crate::ErrorKind::TestDatabase) when no port can be bound.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is served until it returns.
    #[cfg(feature = "testing-axum")]
    pub async fn serve(&self, router: ::axum::Router) -> Result<String> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| Error::test_database(None, "cannot listen on 127.0.0.1".into(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::test_database(None, "cannot listen on 127.0.0.1".into(), e))?;
        let server = tokio::spawn(async move {
            let _ = ::axum::serve(listener, router).await;
        });
        self.inner
            .servers
            .lock()
            .expect("not poisoned")
            .push(server);
        Ok(format!("http://{addr}"))
    }

    /// Ends the test: stops the servers it started, checks each pinned transaction is still
    /// the test's and rolls it back, closes the manager, and drops the test's databases (gives
    /// its slots back for the next test, which resets them; or keeps them, saying where, with
    /// `keep`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::TestIsolation`](crate::ErrorKind::TestIsolation) when a bind's test
    /// transaction was lost (committed by DDL on MySQL/MariaDB, say), or an app session still
    /// held the pinned connection; [`ErrorKind::TestDatabase`](crate::ErrorKind::TestDatabase)
    /// when a database cannot be dropped. Every step runs whatever the ones before returned;
    /// the first error is returned.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in effect: databases not dropped yet are dropped when the last clone of the
    /// context is.
    pub async fn finish(self) -> Result<()> {
        #[cfg(feature = "testing-axum")]
        for server in self.inner.servers.lock().expect("not poisoned").drain(..) {
            server.abort();
        }
        let mut first: Option<Error> = None;
        for copy in &self.inner.binds {
            let Ok(open) = self.inner.manager.entry(&copy.name) else {
                continue;
            };
            if let Some(Err(e)) = open.erased.clone().unpin().await {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.inner.manager.close(CLOSE_WAIT).await {
            first.get_or_insert(e);
        }
        let made = self.inner.cleanup.lock().expect("not poisoned").take();
        if let Err(e) = made.run().await {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }
}

impl fmt::Debug for TestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestContext")
            .field("binds", &self.inner.binds)
            .field("manager", &self.inner.manager)
            .finish_non_exhaustive()
    }
}

/// The databases a test made, and what to do with them at the end.
#[derive(Debug, Default)]
pub(super) struct Cleanup {
    keep: bool,
    made: Vec<MadeDb>,
}

impl Cleanup {
    pub(super) fn new(keep: bool) -> Self {
        Self {
            keep,
            made: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, made: MadeDb) {
        self.made.push(made);
    }

    /// Moves the databases out, leaving nothing for the drop to do.
    fn take(&mut self) -> Self {
        std::mem::take(self)
    }

    /// Drops the databases (gives leased slots back), or says where they are when kept. One
    /// at a time, each taken out once its end has returned: cut off (a cancelled `finish`),
    /// the ones not dropped yet are still here, and the drop ends them.
    async fn run(mut self) -> Result<()> {
        if self.keep {
            // A kept database is never a slot (keep turns reuse off), so none is reused.
            for db in std::mem::take(&mut self.made) {
                eprintln!("dbscope: kept the test database of {}", db.describe());
            }
            return Ok(());
        }
        let mut first = None;
        while let Some(db) = self.made.first_mut() {
            let ended = db.end_in_place().await;
            self.made.remove(0);
            if let Err(e) = ended {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Leased slots go back with their connections, dropped here: their next lease resets
        // them. Nothing to await, so nothing waits on the runtime this may be dropped on.
        self.made.retain(|db| !db.is_leased());
        if self.made.is_empty() {
            return;
        }
        // A test that never finished (it panicked, or its runtime is going away): drop the
        // databases on a thread and a runtime of their own, waiting for them.
        let rest = Cleanup {
            keep: self.keep,
            made: std::mem::take(&mut self.made),
        };
        let dropping = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(rest.run()),
                Err(e) => Err(Error::test_database(
                    None,
                    "cannot start a runtime to drop the test databases".into(),
                    e,
                )),
            }
        });
        match dropping.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("dbscope: {e}"),
            Err(_) => eprintln!("dbscope: dropping the test databases panicked"),
        }
    }
}

/// What a test body may return: `()`, or a `Result` whose error is `Debug` (an `Err` fails the
/// test).
pub trait TestOutcome {
    /// Panics when the outcome is a failure.
    fn check(self);
}

impl TestOutcome for () {
    fn check(self) {}
}

impl<E: fmt::Debug> TestOutcome for std::result::Result<(), E> {
    fn check(self) {
        if let Err(e) = self {
            panic!("the test returned an error: {e:?}");
        }
    }
}
