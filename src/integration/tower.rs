//! A tower layer that runs each request in a [scope](crate::Scope): axum, tonic, hyper.
//!
//! ```
//! use axum::{Router, routing::{get, post}};
//! use dbscope::tower::ScopeLayer;
//!
//! # fn app(manager: dbscope::BindManager) -> Result<Router, dbscope::Error> {
//! # async fn create() {}
//! # async fn list() {}
//! # async fn report() {}
//! let app = Router::new()
//!     .route("/notes", post(create).get(list))
//!     // A route with its own bind, read in autocommit mode: no BEGIN/COMMIT round trips.
//!     .route(
//!         "/report",
//!         get(report).route_layer(ScopeLayer::with_scope(
//!             manager.scope().bind_with_mode("analytics", dbscope::TransactionMode::Autocommit),
//!         )?),
//!     )
//!     .layer(ScopeLayer::new(&manager)); // one scope per request, for every route
//! # Ok(app) }
//! ```
//!
//! # The outcome of a request
//!
//! The scope's work is the inner service's call, up to its response head. Then:
//!
//! - a status below 400 commits, 400 and up rolls back (change either with
//!   [`ScopeLayer::commit_on`] and [`ScopeLayer::rollback_on`]); an `Err` from the inner
//!   service rolls back;
//! - **the commit completes before the response goes back to the server**, so a client never
//!   sees a 2xx for a write that did not commit: when the commit fails, the response is
//!   replaced by an empty `500 Internal Server Error` (the failure is logged through `tracing`);
//! - a panic in the handler rolls back (the scope's sessions drop as it unwinds); put a
//!   `CatchPanicLayer` outside this layer to answer 500 rather than drop the connection;
//! - a client that disconnects mid-request makes the server drop the request's future: the
//!   scope is cancelled and rolls back, and no connection is left inside a transaction.
//!
//! **Streaming bodies** are produced after the commit, outside the scope: a body that reads
//! the database must open its own session
//! ([`BindManager::session`](crate::BindManager::session)).
//!
//! # Nesting
//!
//! A `ScopeLayer` that finds a scope already open (an app-wide layer around a
//! `route_layer`) joins it instead of opening a second one: its declared binds, mode, hooks and
//! extra commit or rollback statuses are added to the request's scope (the route's statuses
//! win over the app's), and the outer layer ends it. A bind declared by both is an error
//! ([`ErrorKind::DuplicateScopeBind`](crate::ErrorKind::DuplicateScopeBind)): the request is answered
//! an empty 500 before the inner service is called, and the error logged. Errors a layer can
//! find alone (an unknown bind, a duplicate in one layer) are found at start-up by
//! [`ScopeLayer::with_scope`].
//!
//! The layer shares its core with actix-web's `ScopeMiddleware` (feature `actix`) and answers
//! as it does; the axum extractors' docs (feature `axum`) say what a route without the layer
//! answers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use http::{Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::core::{self, FAILURE_STATUS, LayerConfig, Outcome};

core::layer_type! {
    /// Opens a [scope](crate::Scope) per request, ended by the response status before the
    /// response is returned. See the [module docs](self).
    ScopeLayer, "layer", StatusCode
}

impl<S> Layer<S> for ScopeLayer {
    type Service = ScopeService<S>;

    fn layer(&self, inner: S) -> ScopeService<S> {
        ScopeService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`ScopeLayer`] wraps around an inner service.
#[derive(Clone, Debug)]
pub struct ScopeService<S> {
    inner: S,
    config: Arc<LayerConfig>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ScopeService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service driven to readiness is called now, inside the request's scope.
        let safe = core::is_safe_method(request.method().as_str());
        let call = self.config.call(request, safe, request_headers, |request| {
            self.inner.call(request)
        });
        let work = Box::pin(async move {
            match call
                .outcome(|response| response.status().as_u16(), stamp)
                .await
            {
                Outcome::Inner(result) => result,
                Outcome::Refused(_) | Outcome::CommitFailed(_) => {
                    let mut response = Response::new(ResBody::default());
                    *response.status_mut() = status(FAILURE_STATUS);
                    Ok(response)
                }
            }
        });
        ResponseFuture { work }
    }
}

/// The values of a request's header `name`, for the read tokens it brings.
fn request_headers<'a, B>(request: &'a Request<B>, name: &str) -> Vec<&'a str> {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// Sets a response header carrying the commit's read tokens.
fn stamp<B>(response: &mut Response<B>, name: &str, value: String) {
    let name = http::HeaderName::from_bytes(name.as_bytes());
    let value = http::HeaderValue::try_from(value);
    if let (Ok(name), Ok(value)) = (name, value) {
        response.headers_mut().append(name, value);
    }
}

/// The `http` status of a status dbscope's core chose.
pub(super) fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The response future of [`ScopeService`]: the inner call inside the request's scope, then the
/// scope's commit or rollback.
pub struct ResponseFuture<B, E> {
    work: BoxFuture<'static, Result<Response<B>, E>>,
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.work.as_mut().poll(cx)
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
