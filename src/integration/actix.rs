//! actix-web middleware that runs each request in a [scope](crate::Scope), and an extractor for
//! the scope's sessions.
//!
//! ```
//! use actix_web::{App, HttpResponse, test, web};
//! use dbscope::actix::{DbError, DbSession, ScopeMiddleware};
//! use dbscope::{BindConfig, BindManager, DefaultBind};
//! use sqlx::Sqlite;
//!
//! type Db = DbSession<DefaultBind<Sqlite>>;
//!
//! async fn create(mut db: Db, body: String) -> Result<HttpResponse, DbError> {
//!     sqlx::query("INSERT INTO notes (body) VALUES (?)")
//!         .bind(body)
//!         .execute(&mut *db)
//!         .await?;
//!     Ok(HttpResponse::Created().finish()) // sent only once the insert has committed
//! }
//!
//! async fn count(mut db: Db) -> Result<String, DbError> {
//!     let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes").fetch_one(&mut *db).await?;
//!     Ok(n.to_string())
//! }
//!
//! # #[actix_web::main]
//! # async fn main() -> Result<(), dbscope::Error> {
//! let manager = BindManager::new(BindConfig::new("sqlite::memory:"))?;
//! # let mut s = manager.session::<Sqlite>("default")?;
//! # sqlx::query("CREATE TABLE notes (body TEXT)").execute(&mut s).await?;
//! # s.commit().await?;
//! # drop(s);
//! let app = App::new()
//!     .route("/notes", web::post().to(create))
//!     // A route of its own mode: reads in autocommit, with no BEGIN/COMMIT round trips.
//!     .service(
//!         web::resource("/notes/count")
//!             .wrap(ScopeMiddleware::with_scope(manager.scope().autocommit())?)
//!             .get(count),
//!     )
//!     .wrap(ScopeMiddleware::new(&manager)); // one scope per request, for every route
//!
//! // In-process here; `HttpServer::new(move || App::new()…)` in an application.
//! let app = test::init_service(app).await;
//! let post = test::TestRequest::post().uri("/notes").set_payload("hello");
//! assert_eq!(test::call_service(&app, post.to_request()).await.status(), 201);
//! let get = test::TestRequest::get().uri("/notes/count");
//! assert_eq!(test::call_and_read_body(&app, get.to_request()).await, "1");
//! # Ok(()) }
//! ```
//!
//! The semantics are those of the [tower layer](crate::tower), in actix-web's terms.
//!
//! # The outcome of a request
//!
//! The scope's work is the inner service's call (routing, inner middleware, extractors, the
//! handler) up to its response head. Then:
//!
//! - a status below 400 commits, 400 and up rolls back (change either with
//!   [`ScopeMiddleware::commit_on`] and [`ScopeMiddleware::rollback_on`]). A handler's `Err`
//!   becomes its error's response (500 for most errors; [`DbError`] answers 500 or 503), so it
//!   rolls back by its status. An `Err` from the inner service (an inner middleware's) rolls
//!   back, whatever it carries;
//! - **the commit completes before the response goes back to actix**, so a client never sees a
//!   2xx for a write that did not commit: when the commit fails (a before-commit hook vetoes, a
//!   deferred constraint fails, the connection dies), the response is replaced by an empty
//!   `500 Internal Server Error` and the failure is logged through `tracing`;
//! - a **panic** in the handler rolls back. actix-web catches no panic: the worker's runtime
//!   does, and drops the connection's task with the request's scope in it; the scope's
//!   sessions roll back in the background and return their connections clean. The client gets
//!   no response (its connection closes: "connection closed before message completed"), and
//!   the worker goes on serving other connections;
//! - a **client that disconnects** mid-request rolls back *when actix cancels the request*,
//!   which depends on the server's configuration. With
//!   [`HttpServer::h1_allow_half_closed(false)`](actix_web::HttpServer::h1_allow_half_closed),
//!   a client closing its connection makes actix drop the request's future: the scope rolls
//!   back and no connection is left inside a transaction. **By default actix-web allows
//!   half-closed connections**: a client that closes its socket is taken to have only finished
//!   sending, the handler runs to completion and its status decides (a 2xx commits, though
//!   nobody reads the response); only a reset connection cancels the request. Turn half-close
//!   off where a vanished client must not commit. (Both behaviours are tested, with
//!   actix-web 4.18.)
//!
//! **Streaming bodies** are produced after the commit, outside the scope: the middleware ends
//! the scope on the response head, before actix polls the body. A body stream that reads the
//! database must open its own session ([`BindManager::session`](crate::BindManager::session));
//! there, [`current_session`](crate::current_session) fails with
//! [`ErrorKind::NoScope`](crate::ErrorKind::NoScope).
//!
//! # Nesting: per-route binds and modes
//!
//! `.wrap()` a `ScopeMiddleware` around a `web::resource` or `web::scope` to declare that
//! route's binds, mode and hooks. A `ScopeMiddleware` that finds a scope already open (an
//! app-wide one around it) joins it instead of opening a second: its declared binds, mode and
//! hooks are added to the request's scope, and so are its `commit_on` and `rollback_on`
//! exceptions (the route's word wins over the app's); the outer middleware ends the scope. A
//! bind declared by both is an error
//! ([`ErrorKind::DuplicateScopeBind`](crate::ErrorKind::DuplicateScopeBind)): the request is answered
//! an empty 500 before any handler runs, and the error logged. Errors a middleware can find
//! alone (an unknown bind, a duplicate in one middleware) are found at start-up by
//! [`ScopeMiddleware::with_scope`].
//!
//! # Rejections and errors
//!
//! A [`DbSession`] that cannot be had rejects the request with a [`DbSessionRejection`]: a
//! `500 Internal Server Error` (`503 Service Unavailable` when the pool timed out or the
//! manager is closed) whose `text/plain` body is the reason, logged too. On a route no
//! `ScopeMiddleware` wraps, that is the message of [`ErrorKind::NoScope`](crate::ErrorKind::NoScope),
//! then the likely fix:
//!
//! ```text
//! bind `main`: no dbscope scope is active on this task; …; did you add dbscope's ScopeLayer or ScopeMiddleware to this route?
//! ```
//!
//! dbscope's messages name binds, never URLs or passwords. A handler's [`DbError`] answers 500
//! or 503 with an **empty** body: its text (a database's message, say) stays in the logs. The
//! middleware and extractor share their core with the tower layer and the axum extractors
//! (`dbscope::tower`, `dbscope::axum`): both frameworks answer alike, bodies included.
//!
//! # The scope, actix and `!Send` futures
//!
//! actix-web runs each worker on a single-threaded tokio runtime and lets services return
//! futures that are not `Send`. A scope is a tokio task-local, which works there as anywhere:
//! the middleware sets it around the inner service's `call` (in which actix routes, calls
//! nested middleware and creates the handler's future) and around every poll of the future
//! that `call` returns, so nested middleware, extractors, the handler and the code it calls all
//! see the request's scope. The middleware's own future is not `Send` either; the scope's
//! sessions are (they come from the [`BindManager`](crate::BindManager), whose pools every
//! worker shares).
//!
//! A future handed to `actix_web::rt::spawn` or `tokio::spawn` leaves the scope: pass it
//! through [`Scope::attach`](crate::Scope::attach), and let it end before the handler does.
//! The background rollback of a cancelled or panicked request runs on its worker's runtime; if
//! the server stops first, the connection is discarded, never reused.

use std::fmt;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError};
use futures_core::future::{BoxFuture, LocalBoxFuture};

use super::core::{self, FAILURE_STATUS, LayerConfig, Outcome, REJECTION_CONTENT_TYPE};
use crate::BindKey;

core::layer_type! {
    /// Opens a [scope](crate::Scope) per request, ended by the response status before the
    /// response is returned: an actix-web middleware for `App::wrap`, `Resource::wrap` and
    /// `Scope::wrap`. See the [module docs](self).
    ScopeMiddleware, "middleware", StatusCode
}

impl<S, B> Transform<S, ServiceRequest> for ScopeMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = ScopeService<S>;
    type InitError = ();
    type Future = Ready<Result<ScopeService<S>, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ScopeService {
            service,
            config: self.config.clone(),
        }))
    }
}

/// The service [`ScopeMiddleware`] wraps around an inner service.
pub struct ScopeService<S> {
    service: S,
    config: Arc<LayerConfig>,
}

impl<S, B> Service<ServiceRequest> for ScopeService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = ResponseFuture<B>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        // actix routes, calls nested middleware and may start extracting in `call`: now, in
        // the request's scope.
        let safe = core::is_safe_method(request.method().as_str());
        let call = self.config.call(request, safe, request_headers, |request| {
            self.service.call(request)
        });
        let work = Box::pin(async move {
            let failure = || HttpResponse::new(status(FAILURE_STATUS));
            match call
                .outcome(|response| response.status().as_u16(), stamp)
                .await
            {
                Outcome::Inner(result) => result.map(ServiceResponse::map_into_left_body),
                Outcome::Refused(request) => {
                    Ok(request.into_response(failure()).map_into_right_body())
                }
                Outcome::CommitFailed(response) => {
                    Ok(response.into_response(failure()).map_into_right_body())
                }
            }
        });
        ResponseFuture { work }
    }
}

/// The values of a request's header `name`, for the read tokens it brings.
fn request_headers<'a>(request: &'a ServiceRequest, name: &str) -> Vec<&'a str> {
    request
        .headers()
        .get_all(name)
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// Sets a response header carrying the commit's read tokens.
fn stamp<B>(response: &mut ServiceResponse<B>, name: &str, value: String) {
    use actix_web::http::header::{HeaderName, HeaderValue};
    let name = HeaderName::from_bytes(name.as_bytes());
    let value = HeaderValue::try_from(value);
    if let (Ok(name), Ok(value)) = (name, value) {
        response.headers_mut().append(name, value);
    }
}

impl<S> fmt::Debug for ScopeService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

type Work<B> = LocalBoxFuture<'static, Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>;

/// The response future of [`ScopeService`]: the inner call inside the request's scope, then the
/// scope's commit or rollback. Not `Send`, as actix's futures need not be.
pub struct ResponseFuture<B> {
    work: Work<B>,
}

impl<B> Future for ResponseFuture<B> {
    type Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.work.as_mut().poll(cx)
    }
}

impl<B> fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

core::extractor_types! {
    /// The request scope's session of the bind `K` names (a [`BindKey`]; `DefaultBind<Sqlite>`
    /// for a single-database app), as an actix-web extractor: a
    /// [handle](crate::ScopedSession) to it. Run queries on `&mut db`.
    ///
    /// The extractor holds nothing between statements: code the handler calls, and other
    /// extractors of the same handler (one that loads the current user, say), may ask the scope
    /// for the same bind and get the same session and transaction, without waiting, in any
    /// order.
    DbSession;

    /// Why a [`DbSession`] could not be extracted. Answers 500 (503 when the pool is exhausted
    /// or closed) with the reason as a plain-text body, and logs it; the most common one is a
    /// route without a [`ScopeMiddleware`]. dbscope's messages name binds, never URLs'
    /// passwords.
    DbSessionRejection;

    /// A handler error from dbscope or sqlx, for `?` in handlers: answers an empty 500 (503 when
    /// no connection could be had) and logs the error, never sending its text to the client.
    /// Any error response rolls the request's scope back.
    DbError;
}

impl<K: BindKey> FromRequest for DbSession<K> {
    type Error = DbSessionRejection;
    type Future = BoxFuture<'static, Result<Self, DbSessionRejection>>;

    /// Takes the request scope's session of `K`'s bind, waiting while other code of the
    /// request holds it.
    ///
    /// # Errors
    ///
    /// A [`DbSessionRejection`] carrying [`ErrorKind::NoScope`](crate::ErrorKind::NoScope) when no
    /// [`ScopeMiddleware`] wraps the route,
    /// [`ErrorKind::BindNotInScope`](crate::ErrorKind::BindNotInScope) when the request's scope
    /// declares its binds and not this one, or those of
    /// [`BindManager::bind`](crate::BindManager::bind).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: cancelled while waiting, nothing changes.
    fn from_request(_request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        Box::pin(Self::current())
    }
}

impl ResponseError for DbSessionRejection {
    fn status_code(&self) -> StatusCode {
        status(core::status_for(&self.0))
    }

    fn error_response(&self) -> HttpResponse {
        let (code, body) = core::rejection(&self.0);
        HttpResponse::build(status(code))
            .insert_header((CONTENT_TYPE, REJECTION_CONTENT_TYPE))
            .body(body)
    }
}

impl ResponseError for DbError {
    fn status_code(&self) -> StatusCode {
        status(core::status_for(&self.0))
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::new(status(core::handler_error(&self.0)))
    }
}

/// The actix-web status of a status dbscope's core chose.
fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
