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
//! database must open its own session ([`BindManager::session`]); there,
//! [`current_session`](crate::current_session) fails with [`ErrorKind::NoScope`](crate::ErrorKind::NoScope).
//!
//! # Nesting: per-route binds and modes
//!
//! `.wrap()` a `ScopeMiddleware` around a `web::resource` or `web::scope` to declare that
//! route's binds, mode and hooks. A `ScopeMiddleware` that finds a scope already open (an
//! app-wide one around it) joins it instead of opening a second: its declared binds, mode and
//! hooks are added to the request's scope, and so are its `commit_on` and `rollback_on`
//! exceptions (the route's word wins over the app's); the outer middleware ends the scope. A
//! bind declared by both is an error ([`ErrorKind::DuplicateScopeBind`](crate::ErrorKind::DuplicateScopeBind)): the request is answered
//! an empty 500 before any handler runs, and the error logged. Errors a middleware can find alone (an unknown bind, a
//! duplicate in one middleware) are found at start-up by [`ScopeMiddleware::with_scope`].
//!
//! # The scope, actix and `!Send` futures
//!
//! actix-web runs each worker on a single-threaded tokio runtime and lets services return
//! futures that are not `Send`. A scope is a tokio task-local, which works there as anywhere:
//! the middleware sets it around the inner service's `call` (in which actix routes, calls
//! nested middleware and creates the handler's future) and around every poll of the future
//! that `call` returns, so nested middleware, extractors, the handler and the code it calls all
//! see the request's scope. The middleware's own future is not `Send` either; the scope's
//! sessions are (they come from the [`BindManager`], whose pools every worker shares).
//!
//! A future handed to `actix_web::rt::spawn` or `tokio::spawn` leaves the scope: pass it
//! through [`Scope::attach`](crate::Scope::attach), and let it end before the handler does.
//! The background rollback of a cancelled or panicked request runs on its worker's runtime; if
//! the server stops first, the connection is discarded, never reused.

use std::fmt;
use std::future::{Future, Ready, ready};
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError};
use futures_core::future::{BoxFuture, LocalBoxFuture};

use crate::integration::{Chain, StatusPolicy};
use crate::{
    BindKey, BindManager, Error, Result, Scope, ScopeBuilder, ScopedSession, current_session_for,
};

/// Opens a [scope](crate::Scope) per request, ended by the response status before the response
/// is returned: an actix-web middleware for `App::wrap`, `Resource::wrap` and `Scope::wrap`. See
/// the [module docs](self).
#[derive(Clone, Debug)]
pub struct ScopeMiddleware {
    scope: ScopeBuilder,
    policy: StatusPolicy,
}

impl ScopeMiddleware {
    /// A middleware serving every bind of `manager`, transactional, with no hooks.
    pub fn new(manager: &BindManager) -> Self {
        Self {
            scope: manager.scope(),
            policy: StatusPolicy::default(),
        }
    }

    /// A middleware opening scopes as `scope` describes (declared binds, mode, hooks).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::UnknownBind`](crate::ErrorKind::UnknownBind) and [`ErrorKind::DuplicateScopeBind`](crate::ErrorKind::DuplicateScopeBind) for the declared binds, so that
    /// a wrong route configuration fails at start-up.
    pub fn with_scope(scope: ScopeBuilder) -> Result<Self> {
        scope.validate()?;
        Ok(Self {
            scope,
            policy: StatusPolicy::default(),
        })
    }

    /// Commits on `status` too, though it is 400 or above (a `404` of a lookup that also logged
    /// something, say).
    pub fn commit_on(mut self, status: StatusCode) -> Self {
        self.policy.commit_on(status.as_u16());
        self
    }

    /// Rolls back on `status` too, though it is below 400.
    pub fn rollback_on(mut self, status: StatusCode) -> Self {
        self.policy.rollback_on(status.as_u16());
        self
    }
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
            middleware: self.clone(),
        }))
    }
}

/// The service [`ScopeMiddleware`] wraps around an inner service.
pub struct ScopeService<S> {
    service: S,
    middleware: ScopeMiddleware,
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
        let work = match Scope::current() {
            Ok(outer) => self.join_outer(&outer, request),
            Err(_) => self.own_scope(request),
        };
        ResponseFuture { work }
    }
}

type Work<B> = LocalBoxFuture<'static, Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>;

impl<S, B> ScopeService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    /// The request opens the scope, and ends it by its response.
    fn own_scope(&self, request: ServiceRequest) -> Work<B> {
        let scope = match self.middleware.scope.start() {
            Ok(scope) => scope,
            Err(e) => return answer_500(request, "cannot open the request's scope", &e),
        };
        // actix routes, calls nested middleware and may start extracting inside `call`, before
        // any future is polled: that runs inside the scope too.
        let inner = scope.enter(|| self.service.call(request));
        let policy = self.middleware.policy.clone();
        Box::pin(async move {
            let outcome = scope.attach(inner).await;
            let commit = match &outcome {
                Ok(response) => scope.commits(&policy, response.status().as_u16()),
                Err(_) => false,
            };
            match (scope.finish(commit).await, outcome) {
                (Ok(()), outcome) => outcome.map(ServiceResponse::map_into_left_body),
                (Err(e), Ok(response)) => {
                    log_failure("the request's commit failed; answering 500", &e);
                    Ok(response
                        .into_response(HttpResponse::InternalServerError().finish())
                        .map_into_right_body())
                }
                (Err(_), Err(service_error)) => Err(service_error),
            }
        })
    }

    /// An outer middleware opened the scope: add this one's binds to it and leave its end to
    /// that middleware.
    fn join_outer(&self, outer: &Scope, request: ServiceRequest) -> Work<B> {
        if let Err(e) = outer.extend(&self.middleware.scope) {
            return answer_500(request, "nested ScopeMiddleware misconfigured", &e);
        }
        outer.add_route_policy(&self.middleware.policy);
        let inner = self.service.call(request);
        Box::pin(async move { inner.await.map(ServiceResponse::map_into_left_body) })
    }
}

/// Answers an empty 500 without calling the inner service.
fn answer_500<B: 'static>(request: ServiceRequest, what: &str, error: &Error) -> Work<B> {
    log_failure(what, error);
    let response = request
        .into_response(HttpResponse::InternalServerError().finish())
        .map_into_right_body();
    Box::pin(ready(Ok(response)))
}

fn log_failure(what: &str, error: &Error) {
    tracing::error!(error = %Chain(error), "dbscope: {what}");
}

impl<S> fmt::Debug for ScopeService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeService")
            .field("middleware", &self.middleware)
            .finish_non_exhaustive()
    }
}

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

/// The request scope's session of the bind `K` names (a [`BindKey`]; `DefaultBind<Sqlite>` for
/// a single-database app), as an actix-web extractor. Derefs to [`Session`](crate::Session): run
/// queries on `&mut *db`.
///
/// The extractor holds the session for the whole handler. Code the handler calls must take the
/// session from it (`&mut db`), or the handler must drop it first: asking the scope again for
/// the same bind meanwhile waits for the handler to finish, that is forever (see
/// [`ScopedSession`]). Hence **one `DbSession` per bind in a handler's arguments**, and mind
/// their order: actix polls a handler's extractors together, in argument order, so another
/// extractor that uses the same bind's session (one that loads the current user, say) must
/// come *before* the `DbSession` and give the session back when done. The two then share the
/// request's session and transaction; after the `DbSession`, it would wait forever.
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

impl<K: BindKey> FromRequest for DbSession<K> {
    type Error = DbSessionRejection;
    type Future = BoxFuture<'static, Result<Self, DbSessionRejection>>;

    /// Takes the request scope's session of `K`'s bind, waiting while other code of the
    /// request holds it.
    ///
    /// # Errors
    ///
    /// A [`DbSessionRejection`] carrying [`ErrorKind::NoScope`](crate::ErrorKind::NoScope) when no [`ScopeMiddleware`] wraps
    /// the route, [`ErrorKind::BindNotInScope`](crate::ErrorKind::BindNotInScope) when the request's scope declares its binds and not
    /// this one, or those of [`BindManager::bind`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: cancelled while waiting, nothing changes.
    fn from_request(_request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        Box::pin(async {
            current_session_for::<K>()
                .await
                .map(DbSession)
                .map_err(DbSessionRejection)
        })
    }
}

/// Why a [`DbSession`] could not be extracted. Answers an empty 500 (503 when the pool is
/// exhausted or closed) and logs the cause; the most common one is a route without a
/// [`ScopeMiddleware`].
#[derive(Debug)]
pub struct DbSessionRejection(pub Error);

impl fmt::Display for DbSessionRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_no_scope() {
            write!(
                f,
                "{}; did you add dbscope's ScopeMiddleware (`.wrap(…)`) to this app or route?",
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

impl ResponseError for DbSessionRejection {
    fn status_code(&self) -> StatusCode {
        status_for(&self.0)
    }

    fn error_response(&self) -> HttpResponse {
        tracing::error!(error = %Chain(self), "dbscope: cannot extract the request's session");
        HttpResponse::new(self.status_code())
    }
}

/// A handler error from dbscope or sqlx, for `?` in handlers: answers an empty 500 (503 when no
/// connection could be had) and logs the error, never sending its text to the client. Any
/// error response rolls the request's scope back.
#[derive(Debug)]
pub struct DbError(pub Error);

impl<E: Into<Error>> From<E> for DbError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl ResponseError for DbError {
    fn status_code(&self) -> StatusCode {
        status_for(&self.0)
    }

    fn error_response(&self) -> HttpResponse {
        tracing::error!(error = %Chain(&self.0), "dbscope: request failed");
        HttpResponse::new(self.status_code())
    }
}

fn status_for(error: &Error) -> StatusCode {
    if error.is_timeout() || error.is_closed() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}
