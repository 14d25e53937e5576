//! How statements run on a session: sqlx's `Executor` for `&mut Session`, and the tracking of
//! each operation in flight that keeps the session's state true when one fails or is cut off.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::future::Either as OneOf;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::error::BoxDynError;
use sqlx::{Either, Execute, Executor, SqlStr};
use tracing::Instrument;

use super::{Session, TxState, Wire};
use crate::Error;
use crate::backend::Backend;
use crate::error::{Op, locate};
use crate::observe::{Observer, Stopwatch, Traced, error_type};

/// An operation in flight on a session's connection: settles the session's state when it ends,
/// and tags a driver error with the session's bind before it leaves through sqlx's API.
pub(super) struct InFlight<'s> {
    pub(super) tx: &'s mut TxState,
    pub(super) aborts_on_error: bool,
    pub(super) bind: &'s str,
    pub(super) op: Op,
    /// A statement's span and timing; `None` for the session's own commands.
    pub(super) statement: Option<Statement<'s>>,
}

/// A statement run through a session: its `db.statement` span, and its duration, recorded in
/// `db.client.operation.duration` when it ends (read to its end, failed, or dropped).
pub(super) struct Statement<'s> {
    observer: &'s Observer,
    span: tracing::Span,
    watch: Stopwatch,
    failed: bool,
}

impl<'s> Statement<'s> {
    pub(super) fn new(observer: &'s Observer, session: &tracing::Span) -> Self {
        Self {
            observer,
            span: observer.statement_span(session),
            watch: Stopwatch::start(),
            failed: false,
        }
    }
}

impl Drop for Statement<'_> {
    fn drop(&mut self) {
        self.observer.metrics.operation(self.watch, self.failed);
    }
}

impl InFlight<'_> {
    pub(super) fn settle<T>(&mut self, result: &sqlx::Result<T>) {
        if let Err(e) = result {
            self.failed(e);
        }
        self.tx.settle(result, self.aborts_on_error);
    }

    /// Records a failure on the statement's span and metric.
    fn failed(&mut self, err: &sqlx::Error) {
        if let Some(statement) = &mut self.statement {
            statement.failed = true;
            error_type(&statement.span, err);
        }
    }

    /// The query, set to write its operation name (and text, if the bind asks) into the
    /// statement's span when the driver takes its SQL.
    fn trace<E>(&self, query: E) -> Traced<E> {
        match &self.statement {
            Some(s) => Traced::new(query, &s.span, s.observer.query_text()),
            None => Traced::new(query, &tracing::Span::none(), false),
        }
    }

    /// The statement's span, to enter while the driver works on it.
    fn span(&self) -> Option<&tracing::Span> {
        self.statement.as_ref().map(|s| &s.span)
    }

    /// Settles, and names the bind in the error a statement leaves sqlx with.
    pub(super) fn finish<T>(mut self, result: sqlx::Result<T>) -> sqlx::Result<T> {
        self.settle(&result);
        result.map_err(|e| locate(self.bind, self.op, e))
    }
}

/// The stream of a statement run through a session: marks the session idle again when the
/// statement's results are all read, or records how it failed.
///
/// Dropped before its end, the statement counts as cancelled (the session stays `Busy`:
/// poisoned), except for a stream handed to the caller (`lenient`) that has yielded an item,
/// inside a transaction: the statement has then run on the server, its first results were read,
/// and sqlx reads the rest before the connection's next statement, so the session stays usable
/// in the same transaction. See "Dropped streams" on [`Session`].
struct Tracked<'e, S> {
    inner: S,
    op: InFlight<'e>,
    /// The statement carries the transaction's BEGIN: the first result is BEGIN's, not the
    /// caller's, and is skipped.
    begin_result: bool,
    /// The caller reads this stream item by item (`fetch`, `fetch_many`): the items it got are
    /// results it has seen. Not so for the futures that collect a stream inside (`execute`,
    /// `fetch_all`): cancelled, their caller has seen nothing.
    lenient: bool,
    /// An item (a row, or a statement's result) came back.
    yielded: bool,
}

impl<'e, S> Tracked<'e, S> {
    fn new(inner: S, op: InFlight<'e>, lenient: bool, begin_result: bool) -> Self {
        Self {
            inner,
            op,
            begin_result,
            lenient,
            yielded: false,
        }
    }
}

impl<A, B, S> Stream for Tracked<'_, S>
where
    S: Stream<Item = sqlx::Result<Either<A, B>>> + Unpin,
{
    type Item = sqlx::Result<Either<A, B>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let mut item = {
            let _entered = this.op.span().map(tracing::Span::enter);
            ready!(this.inner.poll_next_unpin(cx))
        };
        if this.begin_result && matches!(item, Some(Ok(Either::Left(_)))) {
            this.begin_result = false;
            let _entered = this.op.span().map(tracing::Span::enter);
            item = ready!(this.inner.poll_next_unpin(cx));
        }
        let item = match item {
            Some(Ok(row)) => {
                this.yielded = true;
                this.op.tx.unproven = false;
                Some(Ok(row))
            }
            Some(Err(e)) => {
                this.op.failed(&e);
                this.op.tx.settle_err(&e, this.op.aborts_on_error);
                Some(Err(locate(this.op.bind, this.op.op, e)))
            }
            None => {
                if this.op.tx.wire == Wire::Busy {
                    this.op.tx.wire = Wire::Idle;
                    this.op.tx.unread = false;
                    this.op.tx.piggybacked = false;
                }
                None
            }
        };
        Poll::Ready(item)
    }
}

impl<S> Drop for Tracked<'_, S> {
    fn drop(&mut self) {
        let tx = &mut *self.op.tx;
        if tx.wire == Wire::Busy && self.lenient && self.yielded && (tx.depth > 0 || tx.bare) {
            tx.wire = Wire::Idle;
            tx.unread = true;
            // BEGIN's result came before the caller's: the transaction is open, and the server
            // refuses what follows an error left unread.
            tx.piggybacked = false;
        }
    }
}

/// A statement run as given, or unnamed (`persistent() == false`) on a bind behind a
/// transaction pooler: sqlx then parses it into the unnamed statement, which lives only until
/// the transaction's next statement, instead of a named one that would stay on a server
/// connection the pooler hands to another client next.
struct PoolerSafe<E> {
    inner: E,
    unnamed: bool,
}

impl<'q, DB: Backend, E: Execute<'q, DB>> Execute<'q, DB> for PoolerSafe<E> {
    fn sql(self) -> SqlStr {
        self.inner.sql()
    }

    fn statement(&self) -> Option<&DB::Statement> {
        self.inner.statement()
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<<DB as sqlx::Database>::Arguments>, sqlx::error::BoxDynError> {
        self.inner.take_arguments()
    }

    fn persistent(&self) -> bool {
        !self.unnamed && self.inner.persistent()
    }
}

/// What `fetch_many` yields: a statement's results and rows.
type Results<'e, DB> = BoxStream<
    'e,
    sqlx::Result<Either<<DB as sqlx::Database>::QueryResult, <DB as sqlx::Database>::Row>>,
>;

/// A statement taken apart: to be sent a second time (what the first statement of a
/// transaction begun without BEGIN becomes, in case its connection turns out dead: see
/// [`Session::may_resend`]), or to see whether it has arguments (whether it can carry a pending
/// BEGIN).
struct Resend<DB: Backend> {
    sql: SqlStr,
    arguments: Option<DB::Arguments>,
    persistent: bool,
}

impl<DB: Backend> Resend<DB> {
    fn take<'q>(mut query: impl Execute<'q, DB>) -> sqlx::Result<Self> {
        let persistent = query.persistent();
        let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
        Ok(Self {
            sql: query.sql(),
            arguments,
            persistent,
        })
    }

    /// A copy, for a second try.
    fn copy(&self) -> Self {
        let arguments = self.arguments.as_ref().map(|arguments| {
            DB::copy_arguments(arguments)
                .expect("a backend that resends statements copies their arguments")
        });
        Self {
            sql: self.sql.clone(),
            arguments,
            persistent: self.persistent,
        }
    }
}

impl<'q, DB: Backend> Execute<'q, DB> for Resend<DB> {
    fn sql(self) -> SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&DB::Statement> {
        None
    }

    fn take_arguments(&mut self) -> Result<Option<DB::Arguments>, BoxDynError> {
        Ok(self.arguments.take())
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

/// A statement, after the transaction's pending BEGIN in the same simple-query message when
/// there is one (`begin`): the statement has no arguments, so sqlx sends its text as it is.
struct Piggyback<E> {
    inner: E,
    begin: Option<SqlStr>,
}

impl<'q, DB: Backend, E: Execute<'q, DB>> Execute<'q, DB> for Piggyback<E> {
    fn sql(self) -> SqlStr {
        let sql = self.inner.sql();
        match &self.begin {
            Some(begin) => crate::backend::dialect::piggybacked(begin, sql.as_str()),
            None => sql,
        }
    }

    fn statement(&self) -> Option<&DB::Statement> {
        self.inner.statement()
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<<DB as sqlx::Database>::Arguments>, sqlx::error::BoxDynError> {
        let arguments = self.inner.take_arguments()?;
        debug_assert!(
            self.begin.is_none() || arguments.is_none(),
            "only a statement without arguments carries a BEGIN"
        );
        Ok(arguments)
    }

    fn persistent(&self) -> bool {
        self.inner.persistent()
    }
}

/// The bodies of the `Executor` methods, unboxed, so that a scope's handle runs them inside its
/// own boxed future (one allocation per statement, not two).
///
/// Each sends the first statement of a transaction begun without BEGIN a second time, on
/// another connection, when the first connection turns out dead before it answered anything
/// ([`Session::may_resend`]). With a BEGIN pending (PostgreSQL), a statement without arguments
/// carries it; one with arguments sends it first, alone.
impl<DB: Backend> Session<DB> {
    fn statement<E>(&self, query: E) -> PoolerSafe<E> {
        PoolerSafe {
            inner: query,
            unnamed: self.bind.pools_transactions(),
        }
    }

    /// Whether the statement goes as given: nothing to resend, no BEGIN pending.
    fn goes_as_given(&self) -> bool {
        !self.may_resend() && self.tx.pending_begin.is_none()
    }

    /// Sends a pending BEGIN alone before the first statement of a transaction (one that may
    /// be resent or has a BEGIN pending, taken apart) when that statement has arguments: it
    /// cannot carry the BEGIN. (The caller takes the statement apart, not this future: holding
    /// the statement here too would make every statement's future larger.)
    async fn begin_before(&mut self, first_has_arguments: bool) -> sqlx::Result<()> {
        if first_has_arguments {
            self.send_begin(None).await.map_err(Error::into_sqlx)?;
        }
        Ok(())
    }

    pub(crate) async fn run_execute<'q, E>(&mut self, query: E) -> sqlx::Result<DB::QueryResult>
    where
        E: 'q + Execute<'q, DB>,
    {
        self.ready().await.map_err(Error::into_sqlx)?;
        if self.goes_as_given() {
            return self.collect_results(query).await;
        }
        let first = Resend::take(query)?;
        self.begin_before(first.arguments.is_some()).await?;
        if !self.may_resend() {
            return self.collect_results(first).await;
        }
        let again = first.copy();
        match self.collect_results(first).await {
            Err(e) if self.lost_before_answering(&e) => {
                self.start_again().await.map_err(Error::into_sqlx)?;
                self.collect_results(again).await
            }
            other => other,
        }
    }

    pub(crate) async fn run_fetch_all<'q, E>(&mut self, query: E) -> sqlx::Result<Vec<DB::Row>>
    where
        E: 'q + Execute<'q, DB>,
    {
        self.ready().await.map_err(Error::into_sqlx)?;
        if self.goes_as_given() {
            return self.collect_rows(query).await;
        }
        let first = Resend::take(query)?;
        self.begin_before(first.arguments.is_some()).await?;
        if !self.may_resend() {
            return self.collect_rows(first).await;
        }
        let again = first.copy();
        match self.collect_rows(first).await {
            Err(e) if self.lost_before_answering(&e) => {
                self.start_again().await.map_err(Error::into_sqlx)?;
                self.collect_rows(again).await
            }
            other => other,
        }
    }

    pub(crate) async fn run_fetch_optional<'q, E>(
        &mut self,
        query: E,
    ) -> sqlx::Result<Option<DB::Row>>
    where
        E: 'q + Execute<'q, DB>,
    {
        self.ready().await.map_err(Error::into_sqlx)?;
        if self.goes_as_given() {
            return self.fetch_one_row(query).await;
        }
        let first = Resend::take(query)?;
        self.begin_before(first.arguments.is_some()).await?;
        if !self.may_resend() {
            return self.fetch_one_row(first).await;
        }
        let again = first.copy();
        match self.fetch_one_row(first).await {
            Err(e) if self.lost_before_answering(&e) => {
                self.start_again().await.map_err(Error::into_sqlx)?;
                self.fetch_one_row(again).await
            }
            other => other,
        }
    }

    /// Starts a statement, the session ready for it, carrying the pending BEGIN if there is
    /// one (the statement then has no arguments: see `begin_before`).
    fn send<'e, 'q: 'e, E>(
        &'e mut self,
        query: E,
    ) -> (
        &'e mut DB::Connection,
        InFlight<'e>,
        Piggyback<Traced<PoolerSafe<E>>>,
    )
    where
        E: 'q + Execute<'q, DB>,
    {
        let query = self.statement(query);
        let begin = self.tx.pending_begin.take();
        let (raw, op) = self.start_statement(true);
        op.tx.piggybacked = begin.is_some();
        let inner = op.trace(query);
        (raw, op, Piggyback { inner, begin })
    }

    /// [`send`](Self::send), as a stream of its results (the BEGIN's skipped).
    fn send_tracked<'e, 'q: 'e, E>(
        &'e mut self,
        query: E,
        lenient: bool,
    ) -> Tracked<'e, Results<'e, DB>>
    where
        E: 'q + Execute<'q, DB>,
    {
        let (raw, op, query) = self.send(query);
        let begin_result = query.begin.is_some();
        Tracked::new(DB::fetch_many(raw, query), op, lenient, begin_result)
    }

    /// Runs a statement, the session ready for it, and collects its results.
    async fn collect_results<'q, E>(&mut self, query: E) -> sqlx::Result<DB::QueryResult>
    where
        E: 'q + Execute<'q, DB>,
    {
        self.send_tracked(query, false)
            .try_filter_map(|step| std::future::ready(Ok(step.left())))
            .try_collect()
            .await
    }

    /// Runs a statement, the session ready for it, and collects its rows.
    async fn collect_rows<'q, E>(&mut self, query: E) -> sqlx::Result<Vec<DB::Row>>
    where
        E: 'q + Execute<'q, DB>,
    {
        self.send_tracked(query, false)
            .try_filter_map(|step| std::future::ready(Ok(step.right())))
            .try_collect()
            .await
    }

    /// Runs a statement, the session ready for it, for its first row.
    async fn fetch_one_row<'q, E>(&mut self, query: E) -> sqlx::Result<Option<DB::Row>>
    where
        E: 'q + Execute<'q, DB>,
    {
        let drains = self.bind.dialect() == crate::backend::Dialect::MySql;
        let (raw, op, query) = self.send(query);
        let span = op.span().cloned().unwrap_or_else(tracing::Span::none);
        if drains {
            // sqlx-mysql's `fetch_optional` stops reading at the first row: the rest of the
            // results (a later statement's error among them) would stay on the wire for
            // whoever uses the connection next. Read to the end, as PostgreSQL's does.
            let first = async {
                let mut results = DB::fetch_many(raw, query);
                let mut first = None;
                while let Some(result) = results.try_next().await? {
                    if let (Either::Right(row), None) = (result, &first) {
                        first = Some(row);
                    }
                }
                Ok(first)
            };
            return op.finish(first.instrument(span).await);
        }
        op.finish(DB::fetch_optional(raw, query).instrument(span).await)
    }
}

impl<DB: Backend> Session<DB> {
    /// The stream of a statement that does not go as given (it may be resent, or a BEGIN is
    /// pending), the session ready for it: sent again on another connection when the first
    /// turns out dead before it answered anything, within what is left of `acquire_timeout`
    /// since the first connection's checkout began.
    fn resending<'e, 'q: 'e, E>(
        &'e mut self,
        query: E,
    ) -> BoxStream<'e, sqlx::Result<Either<DB::QueryResult, DB::Row>>>
    where
        E: 'q + Execute<'q, DB>,
    {
        Box::pin(async_stream::stream! {
            let first = match Resend::take(query) {
                Ok(first) => first,
                Err(e) => {
                    yield Err(e);
                    return;
                }
            };
            if let Err(e) = self.begin_before(first.arguments.is_some()).await {
                yield Err(e);
                return;
            }
            let again = self.may_resend().then(|| first.copy());
            let mut lost = false;
            {
                let mut rows = self.send_tracked(first, true);
                while let Some(item) = rows.next().await {
                    if let Err(e) = &item
                        && again.is_some()
                        && !rows.yielded
                        && rows.op.tx.unproven
                        && crate::engine::is_dead(e)
                    {
                        lost = true;
                        break;
                    }
                    yield item;
                }
            }
            if lost && let Some(again) = again {
                if let Err(e) = self.start_again().await {
                    yield Err(e.into_sqlx());
                    return;
                }
                let mut rows = self.send_tracked(again, true);
                while let Some(item) = rows.next().await {
                    yield item;
                }
            }
        })
    }
}

impl<'c, DB: Backend> Executor<'c> for &'c mut Session<DB> {
    type Database = DB;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, sqlx::Result<Either<DB::QueryResult, DB::Row>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        let start = async move {
            self.ready().await.map_err(Error::into_sqlx)?;
            if !self.goes_as_given() {
                return Ok(OneOf::Right(self.resending(query)));
            }
            Ok::<_, sqlx::Error>(OneOf::Left(self.send_tracked(query, true)))
        };
        Box::pin(futures_util::stream::once(start).try_flatten())
    }

    // `execute` and `fetch_all` collect the stream inside their future: cancelled part-way,
    // their caller has seen no result, so they count as cancelled whatever sqlx had read.

    fn execute<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<DB::QueryResult>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        Box::pin(self.run_execute(query))
    }

    fn fetch_all<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Vec<DB::Row>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        Box::pin(self.run_fetch_all(query))
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Option<DB::Row>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        Box::pin(self.run_fetch_optional(query))
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<DB::Statement>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            self.attach().await.map_err(Error::into_sqlx)?;
            let (raw, op) = self.start_statement(self.aborts_if_refused());
            op.finish(DB::prepare_with(raw, sql, parameters).await)
        })
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, sqlx::Result<sqlx::Describe<DB>>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            self.attach().await.map_err(Error::into_sqlx)?;
            let (raw, op) = self.start_statement(self.aborts_if_refused());
            op.finish(DB::describe(raw, sql).await)
        })
    }
}
