use std::fmt;

use sqlx::{Execute, Executor};

use super::runtime::{Driver, refuse_in_async};
use super::{BlockingBind, BlockingSavepoint, Fetch};
use crate::backend::Backend;
use crate::config::IsolationLevel;
use crate::{Error, Result, Session};

const LIVE: &str = "a blocking session holds its session until it ends";

/// A [`Session`] for blocking code: the same state machine (lazy checkout, autobegin, commit,
/// rollback, savepoints, options, poisoning), each operation run to completion before the call
/// returns.
///
/// sqlx queries run through plain methods: [`execute`](BlockingSession::execute) takes any
/// query, [`fetch_one`](BlockingSession::fetch_one), [`fetch_optional`](BlockingSession::fetch_optional)
/// and [`fetch_all`](BlockingSession::fetch_all) take `query`, `query_as`, `query_scalar`,
/// `raw_sql` and the `query!` macros, and return what the query maps rows to.
/// [`run`](BlockingSession::run) runs any async code on the session, for the rest (streams, the
/// raw connection).
///
/// ```
/// use dbscope::{BindConfig, BindManager};
/// use sqlx::Sqlite;
///
/// # fn main() -> Result<(), dbscope::Error> {
/// let manager = BindManager::new(BindConfig::new("sqlite::memory:"))?;
/// let mut session = manager.blocking_session::<Sqlite>("default")?; // no connection yet
/// session.execute(sqlx::query("CREATE TABLE notes (body TEXT)"))?; // checkout, BEGIN, this
/// session.execute(sqlx::query("INSERT INTO notes VALUES (?)").bind("hi"))?;
/// let n: i64 = session.fetch_one(sqlx::query_scalar("SELECT COUNT(*) FROM notes"))?;
/// assert_eq!(n, 1);
/// session.commit()?;
/// # Ok(()) }
/// ```
///
/// # Drop behavior
///
/// Dropping a session with a transaction open rolls it back before the drop returns (within
/// 5 s), and the connection goes back to the pool clean; if the rollback fails or times out,
/// the connection is discarded (the server rolls back). A session whose last operation was cut
/// off mid-flight (in [`run`](BlockingSession::run), or by a panic) has its connection
/// recovered before the drop returns, as an async session's is in the background (within 2 s:
/// drained, rolled back, checked with the server; otherwise discarded). Dropped where blocking
/// is refused (in async code), the rollback or recovery runs in the background instead, as for
/// an async session (on a short-lived thread that drives the connection's socket), and the drop
/// returns at once. Dropped late in its thread's exit (kept in a thread-local that outlives
/// the runtime's own), it discards its connection instead, and the server rolls back.
///
/// # Calls from async code
///
/// Every method that talks to the database refuses with [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) when called
/// from async code on a tokio runtime (a task, or a `block_on`), without touching the session:
/// blocking there would stall the runtime. Inside `tokio::task::spawn_blocking` (or
/// `block_in_place`) the methods work.
pub struct BlockingSession<DB: Backend> {
    /// `None` only once the session has ended (in `close` and `Drop`).
    session: Option<Session<DB>>,
    bind: BlockingBind<DB>,
}

impl<DB: Backend> BlockingSession<DB> {
    pub(crate) fn new(bind: BlockingBind<DB>) -> Self {
        Self::of(bind.bind.session(), bind)
    }

    pub(crate) fn of(session: Session<DB>, bind: BlockingBind<DB>) -> Self {
        Self {
            session: Some(session),
            bind,
        }
    }

    /// The read-your-writes token of this session's last commit: see
    /// [`Session::read_token`].
    pub fn read_token(&self) -> Option<&crate::ReadToken> {
        self.inner().read_token()
    }

    /// The bind this session works on.
    pub fn bind(&self) -> &BlockingBind<DB> {
        &self.bind
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.inner().in_transaction()
    }

    /// Whether the session holds a connection (it has run a statement and not been closed).
    pub fn is_connected(&self) -> bool {
        self.inner().is_connected()
    }

    /// Runs the session's next transactions at this isolation level.
    pub fn isolation(self, level: IsolationLevel) -> Self {
        self.map(|s| s.isolation(level))
    }

    /// Makes the session's next transactions read-only (or not).
    pub fn read_only(self, on: bool) -> Self {
        self.map(|s| s.read_only(on))
    }

    /// Autocommit mode: statements run without BEGIN/COMMIT, each landing on its own;
    /// [`begin`](BlockingSession::begin) and [`savepoint`](BlockingSession::savepoint) still open
    /// transactions.
    pub fn autocommit(self, on: bool) -> Self {
        self.map(|s| s.autocommit(on))
    }

    /// Opens a transaction now, checking a connection out if needed; a no-op when one is open.
    /// See [`Session::begin`].
    ///
    /// # Errors
    ///
    /// As [`Session::begin`]; [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code.
    pub fn begin(&mut self) -> Result<()> {
        let (session, driver) = self.parts()?;
        driver.run(session.begin())
    }

    /// Commits the open transaction, if any; the next statement begins a new one. See
    /// [`Session::commit`].
    ///
    /// # Errors
    ///
    /// As [`Session::commit`]; [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code.
    pub fn commit(&mut self) -> Result<()> {
        let (session, driver) = self.parts()?;
        driver.run(session.commit())
    }

    /// Rolls back the open transaction, if any. The session keeps its connection.
    ///
    /// # Errors
    ///
    /// As [`Session::rollback`]; [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code.
    pub fn rollback(&mut self) -> Result<()> {
        let (session, driver) = self.parts()?;
        driver.run(session.rollback())
    }

    /// Opens a savepoint: a nested transaction that commits or rolls back on its own, beginning
    /// the transaction first if none is open. See [`Session::savepoint`].
    ///
    /// Statements run on the guard (it derefs to this session); dropping it without
    /// [`BlockingSavepoint::commit`] rolls back to the savepoint, before the session's next
    /// operation.
    ///
    /// # Errors
    ///
    /// As [`Session::savepoint`]; [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code.
    pub fn savepoint(&mut self) -> Result<BlockingSavepoint<'_, DB>> {
        let (session, driver) = self.parts()?;
        let level = driver.run(session.open_savepoint())?;
        Ok(BlockingSavepoint::new(self, level))
    }

    /// Ends the session: rolls back an open transaction and returns the connection to the pool,
    /// reporting what a plain drop would only log.
    ///
    /// # Errors
    ///
    /// As [`Session::close`]; [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code (the session is then
    /// dropped, which rolls back in the background).
    pub fn close(mut self) -> Result<()> {
        refuse_in_async(Some(self.bind.name()))?;
        let session = self.session.take().expect(LIVE);
        self.bind.driver.run(session.close_recovering())
    }

    /// Runs a statement (any sqlx query: `query`, `query_as`, `raw_sql`, the `query!` macros …)
    /// and returns what the database reports, such as the number of rows affected.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Query`](crate::ErrorKind::Query) when the statement fails; those of [`Session::begin`] for the checkout and
    /// BEGIN before a first statement (typed: [`ErrorKind::Timeout`](crate::ErrorKind::Timeout), [`ErrorKind::Closed`](crate::ErrorKind::Closed) …, not folded
    /// into sqlx's errors as through sqlx's own API); [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) from async code.
    pub fn execute<'q, Q>(&mut self, query: Q) -> Result<DB::QueryResult>
    where
        Q: Execute<'q, DB> + 'q,
    {
        let (session, driver) = self.parts()?;
        let result = driver.run(async {
            session.ready().await?;
            Ok(session.execute(query).await?)
        });
        result.map_err(|e| self.named(e))
    }

    /// Runs a query and returns its first row, mapped as the query maps rows (a `DB::Row`, the
    /// type of `query_as` or `query_scalar`, the record of `query!`).
    ///
    /// # Errors
    ///
    /// As [`execute`](BlockingSession::execute), and [`ErrorKind::Query`](crate::ErrorKind::Query) with
    /// `sqlx::Error::RowNotFound` when there is no row.
    pub fn fetch_one<'q, Q: Fetch<'q, DB>>(&mut self, query: Q) -> Result<Q::Output> {
        match self.fetch_optional(query)? {
            Some(row) => Ok(row),
            None => Err(self.named(sqlx::Error::RowNotFound.into())),
        }
    }

    /// Runs a query and returns its first row, if any, mapped as the query maps rows.
    ///
    /// # Errors
    ///
    /// As [`execute`](BlockingSession::execute).
    pub fn fetch_optional<'q, Q: Fetch<'q, DB>>(&mut self, query: Q) -> Result<Option<Q::Output>> {
        let (session, driver) = self.parts()?;
        let result = driver.run(async {
            session.ready().await?;
            Ok(query.fetch_optional(session).await?)
        });
        result.map_err(|e| self.named(e))
    }

    /// Runs a query and returns all its rows, mapped as the query maps rows.
    ///
    /// # Errors
    ///
    /// As [`execute`](BlockingSession::execute).
    pub fn fetch_all<'q, Q: Fetch<'q, DB>>(&mut self, query: Q) -> Result<Vec<Q::Output>> {
        let (session, driver) = self.parts()?;
        let result = driver.run(async {
            session.ready().await?;
            Ok(query.fetch_all(session).await?)
        });
        result.map_err(|e| self.named(e))
    }

    /// Runs async code on the session and returns its result: for what the plain methods do not
    /// cover (a stream of rows, the raw connection, a sqlx API that wants an executor). The code
    /// runs on the calling thread; it must not call blocking dbscope methods itself (they refuse
    /// with [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync)).
    ///
    /// ```
    /// use futures_util::TryStreamExt;
    /// # fn main() -> Result<(), dbscope::Error> {
    /// # let manager = dbscope::BindManager::new(dbscope::BindConfig::new("sqlite::memory:"))?;
    /// let mut session = manager.blocking_session::<sqlx::Sqlite>("default")?;
    /// let mut total = 0_i64;
    /// session.run(async |s| {
    ///     let mut rows = sqlx::query_scalar::<_, i64>("SELECT 1 UNION ALL SELECT 2").fetch(s);
    ///     while let Some(n) = rows.try_next().await? {
    ///         total += n;
    ///     }
    ///     Ok::<_, sqlx::Error>(())
    /// })?;
    /// assert_eq!(total, 3);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The code's own error; [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) (converted into `E`) from async code, the
    /// code not run.
    pub fn run<T, E>(
        &mut self,
        work: impl AsyncFnOnce(&mut Session<DB>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<Error>,
    {
        let (session, driver) = self.parts()?;
        driver.run(work(session))
    }

    /// The async session inside, for the plumbing of savepoints and scopes.
    pub(crate) fn inner_mut(&mut self) -> &mut Session<DB> {
        self.session.as_mut().expect(LIVE)
    }

    fn inner(&self) -> &Session<DB> {
        self.session.as_ref().expect(LIVE)
    }

    /// The session and the runtime to drive it, if this thread may block.
    pub(crate) fn parts(&mut self) -> Result<(&mut Session<DB>, &Driver)> {
        refuse_in_async(Some(self.bind.name()))?;
        Ok((self.session.as_mut().expect(LIVE), &self.bind.driver))
    }

    fn map(mut self, change: impl FnOnce(Session<DB>) -> Session<DB>) -> Self {
        let session = self.session.take().expect(LIVE);
        self.session = Some(change(session));
        self
    }

    /// An error with this session's bind named when sqlx left it out.
    fn named(&self, err: Error) -> Error {
        err.or_bind(self.bind.name())
    }
}

impl<DB: Backend> Drop for BlockingSession<DB> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.bind.driver.end(session);
        }
    }
}

impl<DB: Backend> fmt::Debug for BlockingSession<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.session {
            Some(session) => f.debug_tuple("BlockingSession").field(session).finish(),
            None => f.write_str("BlockingSession(ended)"),
        }
    }
}
