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
//! the database must open its own session ([`BindManager::session`]).
//!
//! # Nesting
//!
//! A `ScopeLayer` that finds a scope already open (an app-wide layer around a
//! `route_layer`) joins it instead of opening a second one: its declared binds, mode, hooks and
//! extra commit or rollback statuses are added to the request's scope (the route's statuses
//! win over the app's), and the outer layer ends it. A bind declared by both is
//! an error ([`ErrorKind::DuplicateScopeBind`](crate::ErrorKind::DuplicateScopeBind)): the request is answered 500 and the error logged.
//! Errors a layer can find alone (an unknown bind, a duplicate in one layer) are found at
//! start-up by [`ScopeLayer::with_scope`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use http::{Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::integration::{Chain, StatusPolicy};
use crate::{BindManager, Error, Result, Scope, ScopeBuilder};

/// Opens a [scope](crate::Scope) per request, ended by the response status before the response
/// is returned. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ScopeLayer {
    scope: ScopeBuilder,
    policy: StatusPolicy,
}

impl ScopeLayer {
    /// A layer serving every bind of `manager`, transactional, with no hooks.
    pub fn new(manager: &BindManager) -> Self {
        Self {
            scope: manager.scope(),
            policy: StatusPolicy::default(),
        }
    }

    /// A layer opening scopes as `scope` describes (declared binds, mode, hooks).
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

impl<S> Layer<S> for ScopeLayer {
    type Service = ScopeService<S>;

    fn layer(&self, inner: S) -> ScopeService<S> {
        ScopeService {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

/// The service [`ScopeLayer`] wraps around an inner service.
#[derive(Clone, Debug)]
pub struct ScopeService<S> {
    inner: S,
    layer: Arc<ScopeLayer>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ScopeService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
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
        // Call the service that was driven to readiness, inside the scope (so that layers and
        // handlers it calls see it); leave a clone for the next request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let work = match Scope::current() {
            Ok(outer) => {
                Box::pin(join_outer(outer, layer, inner, request)) as BoxFuture<'static, _>
            }
            Err(_) => Box::pin(own_scope(layer, inner, request)),
        };
        ResponseFuture { work }
    }
}

/// The request opens the scope, and ends it by its response.
async fn own_scope<S, ReqBody, ResBody>(
    layer: Arc<ScopeLayer>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    let scope = match layer.scope.start() {
        Ok(scope) => scope,
        Err(e) => return Ok(failure("cannot open the request's scope", &e)),
    };
    // `call` runs inside the scope too: nested layers look for it there.
    let outcome = scope.attach(async move { inner.call(request).await }).await;
    let commit = match &outcome {
        Ok(response) => scope.commits(&layer.policy, response.status().as_u16()),
        Err(_) => false,
    };
    match (scope.finish(commit).await, outcome) {
        (Ok(()), outcome) => outcome,
        (Err(e), Ok(_)) => Ok(failure("the request's commit failed; answering 500", &e)),
        (Err(_), Err(service_error)) => Err(service_error),
    }
}

/// An outer layer opened the scope: add this layer's binds to it and leave its end to that
/// layer.
async fn join_outer<S, ReqBody, ResBody>(
    outer: Scope,
    layer: Arc<ScopeLayer>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    if let Err(e) = outer.extend(&layer.scope) {
        return Ok(failure("nested ScopeLayer misconfigured", &e));
    }
    outer.add_route_policy(&layer.policy);
    inner.call(request).await
}

fn failure<B: Default>(what: &str, error: &Error) -> Response<B> {
    tracing::error!(error = %Chain(error), "dbscope: {what}");
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
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
