//! axum extractors for the sessions of the request's scope, opened by
//! [`ScopeLayer`](crate::tower::ScopeLayer).
//!
//! ```
//! use axum::{Router, extract::Path, routing::get};
//! use dbscope::{DefaultBind, axum::DbSession, tower::ScopeLayer};
//! use sqlx::Sqlite;
//!
//! type Db = DbSession<DefaultBind<Sqlite>>;
//!
//! async fn note(Path(id): Path<i64>, mut db: Db) -> Result<String, dbscope::axum::DbError> {
//!     let body: String = sqlx::query_scalar("SELECT body FROM notes WHERE id = ?")
//!         .bind(id)
//!         .fetch_one(&mut *db)
//!         .await?;
//!     Ok(body)
//! }
//!
//! # fn app(manager: dbscope::BindManager) -> Router {
//! Router::new()
//!     .route("/notes/{id}", get(note))
//!     .layer(ScopeLayer::new(&manager))
//! # }
//! ```

use std::fmt;
use std::ops::{Deref, DerefMut};

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::integration::Chain;
use crate::{BindKey, Error, ScopedSession, current_session_for};

/// The request scope's session of the bind `K` names (a [`BindKey`]; `DefaultBind<Sqlite>` for
/// a single-database app). Derefs to [`Session`](crate::Session): run queries on `&mut *db`.
///
/// The extractor holds the session for the whole handler: code the handler calls must take
/// the session from it (`&mut db`), not ask the scope again for the same bind, which would
/// wait for the handler to finish (see [`ScopedSession`]).
pub struct DbSession<K: BindKey>(pub ScopedSession<K::Database>);

impl<K: BindKey> DbSession<K> {
    /// The scope's session guard inside.
    pub fn into_inner(self) -> ScopedSession<K::Database> {
        self.0
    }
}

impl<K: BindKey> Deref for DbSession<K> {
    type Target = ScopedSession<K::Database>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<K: BindKey> DerefMut for DbSession<K> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<K: BindKey> fmt::Debug for DbSession<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DbSession").field(&self.0).finish()
    }
}

impl<K: BindKey, S: Send + Sync> FromRequestParts<S> for DbSession<K> {
    type Rejection = DbSessionRejection;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        current_session_for::<K>()
            .await
            .map(DbSession)
            .map_err(DbSessionRejection)
    }
}

/// Why a [`DbSession`] could not be extracted. Answers 500 (503 when the pool is exhausted or
/// closed) with the reason as a plain-text body, and logs it; the most common one is a route
/// without a `ScopeLayer`. dbscope's messages name binds, never URLs' passwords.
#[derive(Debug)]
pub struct DbSessionRejection(pub Error);

impl fmt::Display for DbSessionRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_no_scope() {
            write!(
                f,
                "{}; did you add dbscope's ScopeLayer to this route?",
                self.0
            )
        } else {
            self.0.fmt(f)
        }
    }
}

impl std::error::Error for DbSessionRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl IntoResponse for DbSessionRejection {
    fn into_response(self) -> Response {
        tracing::error!(error = %Chain(&self), "dbscope: cannot extract the request's session");
        (status_for(&self.0), self.to_string()).into_response()
    }
}

/// A handler error from dbscope or sqlx, for `?` in handlers: answers 500 (503 when no
/// connection could be had) and logs the error, never sending its text to the client.
/// Any error response rolls the request's scope back.
#[derive(Debug)]
pub struct DbError(pub Error);

impl<E: Into<Error>> From<E> for DbError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for DbError {
    fn into_response(self) -> Response {
        tracing::error!(error = %Chain(&self.0), "dbscope: request failed");
        status_for(&self.0).into_response()
    }
}

fn status_for(error: &Error) -> StatusCode {
    if error.is_timeout() || error.is_closed() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}
