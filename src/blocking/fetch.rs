//! The sqlx queries whose rows a blocking session fetches, each with the type it maps rows to.

use std::future::Future;

use sqlx::query::{Map, Query, QueryAs, QueryScalar};
use sqlx::{FromRow, IntoArguments, RawSql};

use crate::Session;
use crate::backend::Backend;

mod sealed {
    pub trait Sealed {}
}

/// A sqlx query that [`BlockingSession::fetch_one`](super::BlockingSession::fetch_one),
/// [`fetch_optional`](super::BlockingSession::fetch_optional) and
/// [`fetch_all`](super::BlockingSession::fetch_all) run: `sqlx::query` (rows as `DB::Row`),
/// `query_as` and `query_scalar` (rows as the type asked for), the `query!` family and
/// `Query::map`/`try_map` (rows as the macro's record or the closure's output), and `raw_sql`.
///
/// Sealed: its methods are dbscope's plumbing, hidden from the docs.
pub trait Fetch<'q, DB: Backend>: Sized + sealed::Sealed {
    /// What the query maps each row to.
    type Output;

    #[doc(hidden)]
    fn fetch_optional<'c>(
        self,
        session: &'c mut Session<DB>,
    ) -> impl Future<Output = sqlx::Result<Option<Self::Output>>> + 'c
    where
        'q: 'c,
        Self: 'c,
        Self::Output: 'c;

    #[doc(hidden)]
    fn fetch_all<'c>(
        self,
        session: &'c mut Session<DB>,
    ) -> impl Future<Output = sqlx::Result<Vec<Self::Output>>> + 'c
    where
        'q: 'c,
        Self: 'c,
        Self::Output: 'c;
}

/// Implements [`Fetch`] by calling the query type's own `fetch_optional` and `fetch_all` with the
/// session as executor.
macro_rules! fetch_through_executor {
    ($query:ident) => {
        fn fetch_optional<'c>(
            self,
            session: &'c mut Session<DB>,
        ) -> impl Future<Output = sqlx::Result<Option<Self::Output>>> + 'c
        where
            'q: 'c,
            Self: 'c,
            Self::Output: 'c,
        {
            $query::fetch_optional(self, session)
        }

        fn fetch_all<'c>(
            self,
            session: &'c mut Session<DB>,
        ) -> impl Future<Output = sqlx::Result<Vec<Self::Output>>> + 'c
        where
            'q: 'c,
            Self: 'c,
            Self::Output: 'c,
        {
            $query::fetch_all(self, session)
        }
    };
}

impl<DB: Backend, A> sealed::Sealed for Query<'_, DB, A> {}

impl<'q, DB: Backend, A> Fetch<'q, DB> for Query<'q, DB, A>
where
    A: 'q + Send + IntoArguments<DB>,
{
    type Output = DB::Row;

    fetch_through_executor!(Query);
}

impl<DB: Backend, O, A> sealed::Sealed for QueryAs<'_, DB, O, A> {}

impl<'q, DB: Backend, O, A> Fetch<'q, DB> for QueryAs<'q, DB, O, A>
where
    A: 'q + Send + IntoArguments<DB>,
    O: Send + Unpin + for<'r> FromRow<'r, DB::Row>,
{
    type Output = O;

    fetch_through_executor!(QueryAs);
}

impl<DB: Backend, O, A> sealed::Sealed for QueryScalar<'_, DB, O, A> {}

impl<'q, DB: Backend, O, A> Fetch<'q, DB> for QueryScalar<'q, DB, O, A>
where
    A: 'q + Send + IntoArguments<DB>,
    O: Send + Unpin,
    (O,): Send + Unpin + for<'r> FromRow<'r, DB::Row>,
{
    type Output = O;

    fetch_through_executor!(QueryScalar);
}

impl<DB: Backend, F, A> sealed::Sealed for Map<'_, DB, F, A> {}

impl<'q, DB: Backend, F, O, A> Fetch<'q, DB> for Map<'q, DB, F, A>
where
    F: FnMut(DB::Row) -> sqlx::Result<O> + Send,
    O: Send + Unpin,
    A: 'q + Send + IntoArguments<DB>,
{
    type Output = O;

    fetch_through_executor!(Map);
}

impl sealed::Sealed for RawSql {}

impl<'q, DB: Backend> Fetch<'q, DB> for RawSql {
    type Output = DB::Row;

    fetch_through_executor!(RawSql);
}
