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
//!
//! # Rejections and errors
//!
//! A [`DbSession`] that cannot be had rejects the request with a [`DbSessionRejection`]: a
//! `500 Internal Server Error` (`503 Service Unavailable` when the pool timed out or the
//! manager is closed) whose `text/plain` body is the reason, logged too. On a route without
//! the layer, that is the message of [`ErrorKind::NoScope`](crate::ErrorKind::NoScope), then the likely
//! fix:
//!
//! ```text
//! bind `main`: no dbscope scope is active on this task; …; did you add dbscope's ScopeLayer or ScopeMiddleware to this route?
//! ```
//!
//! dbscope's messages name binds, never URLs or passwords. A handler's [`DbError`] answers 500
//! or 503 with an **empty** body: its text (a database's message, say) stays in the logs. The
//! extractors share their core with actix-web's (`dbscope::actix`, feature `actix`): both
//! frameworks answer alike, bodies included.

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::request::Parts;

use super::core::{self, REJECTION_CONTENT_TYPE};
use super::tower::status;

core::extractor_types! {
    /// The request scope's session of the bind `K` names (a [`BindKey`](crate::BindKey);
    /// `DefaultBind<Sqlite>` for a single-database app): a [handle](crate::ScopedSession) to
    /// it. Run queries on `&mut db`.
    ///
    /// The extractor holds nothing between statements: code the handler calls may ask the
    /// scope for the same bind ([`current_session`](crate::current_session)) and gets the same
    /// session and transaction, without waiting.
    DbSession;

    /// Why a [`DbSession`] could not be extracted. Answers 500 (503 when the pool is exhausted
    /// or closed) with the reason as a plain-text body, and logs it; the most common one is a
    /// route without a `ScopeLayer`. dbscope's messages name binds, never URLs' passwords.
    DbSessionRejection;

    /// A handler error from dbscope or sqlx, for `?` in handlers: answers 500 (503 when no
    /// connection could be had) and logs the error, never sending its text to the client.
    /// Any error response rolls the request's scope back.
    DbError;
}

impl<K: crate::BindKey, S: Send + Sync> FromRequestParts<S> for DbSession<K> {
    type Rejection = DbSessionRejection;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::current().await
    }
}

impl IntoResponse for DbSessionRejection {
    fn into_response(self) -> Response {
        let (code, body) = core::rejection(&self.0);
        (status(code), [(CONTENT_TYPE, REJECTION_CONTENT_TYPE)], body).into_response()
    }
}

impl IntoResponse for DbError {
    fn into_response(self) -> Response {
        status(core::handler_error(&self.0)).into_response()
    }
}
