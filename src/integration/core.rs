//! The web layers' core, written once for tower and actix-web: the layer's configuration, the
//! end-of-request step, the status policy, the rejection and the handler error's answers. The
//! framework modules only translate between it and their framework's types.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::tokens::TokenCarrier;
#[cfg(any(feature = "axum", feature = "actix"))]
use crate::Error;
use crate::{BindManager, Result, Scope, ScopeBuilder};

/// The status dbscope answers in place of a response when the request's scope fails (it cannot
/// be opened or joined, or its commit fails), with an empty body.
pub(crate) const FAILURE_STATUS: u16 = 500;

/// The content type of a rejection's body.
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) const REJECTION_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// An error and its sources, for a log line: `Display` of dbscope's errors leaves the driver's
/// cause to `source()`.
struct Chain<'a>(&'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

fn log_failure(what: &str, error: &dyn std::error::Error) {
    tracing::error!(error = %Chain(error), "dbscope: {what}");
}

/// Decides a request's outcome from its response status: below 400 commits, 400 and up rolls
/// back, with exceptions either way.
#[derive(Clone, Debug, Default)]
pub(crate) struct StatusPolicy {
    commit_on: Vec<u16>,
    rollback_on: Vec<u16>,
}

impl StatusPolicy {
    pub(crate) fn commit_on(&mut self, status: u16) {
        self.rollback_on.retain(|s| *s != status);
        self.commit_on.push(status);
    }

    pub(crate) fn rollback_on(&mut self, status: u16) {
        self.commit_on.retain(|s| *s != status);
        self.rollback_on.push(status);
    }

    fn is_empty(&self) -> bool {
        self.commit_on.is_empty() && self.rollback_on.is_empty()
    }

    /// Applies a nested (per-route) policy's exceptions over this one's: the route's word wins.
    fn merge(&mut self, route: &StatusPolicy) {
        for status in &route.commit_on {
            self.commit_on(*status);
        }
        for status in &route.rollback_on {
            self.rollback_on(*status);
        }
    }

    /// This policy's exception for `status`, if it makes one (the lists never share a status).
    fn exception(&self, status: u16) -> Option<bool> {
        if self.rollback_on.contains(&status) {
            Some(false)
        } else if self.commit_on.contains(&status) {
            Some(true)
        } else {
            None
        }
    }

    fn commits(&self, status: u16) -> bool {
        self.exception(status).unwrap_or(status < 400)
    }
}

/// The status exceptions that nested layers add to the request's scope, kept in the scope's
/// extension slot and read by the layer that opened the scope.
#[derive(Default)]
struct RouteExceptions(StatusPolicy);

/// Whether a request method is safe (RFC 9110): it asks for no change on the server. Such
/// requests' scopes can be made read-only ([`LayerConfig::read_only_safe_methods`]).
pub(crate) fn is_safe_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// A scope layer's configuration: how it opens scopes (binds, mode, hooks) and which statuses
/// commit. Behind `ScopeLayer` and `ScopeMiddleware`.
#[derive(Clone, Debug)]
pub(crate) struct LayerConfig {
    scope: ScopeBuilder,
    policy: StatusPolicy,
    /// Where requests bring read tokens and responses take them: opt-in.
    tokens: Option<TokenCarrier>,
    /// Whether the scopes of safe requests (GET, HEAD, OPTIONS) are read-only: `None` leaves
    /// them as an outer layer made them (or not read-only, for the layer that opens them).
    safe_methods_read_only: Option<bool>,
}

impl LayerConfig {
    pub(crate) fn new(manager: &BindManager) -> Self {
        Self {
            scope: manager.scope(),
            policy: StatusPolicy::default(),
            tokens: None,
            safe_methods_read_only: None,
        }
    }

    /// Checks the declared binds, so that a wrong route configuration fails at start-up.
    pub(crate) fn with_scope(scope: ScopeBuilder) -> Result<Self> {
        scope.validate()?;
        Ok(Self {
            scope,
            policy: StatusPolicy::default(),
            tokens: None,
            safe_methods_read_only: None,
        })
    }

    pub(crate) fn commit_on(&mut self, status: u16) {
        self.policy.commit_on(status);
    }

    pub(crate) fn rollback_on(&mut self, status: u16) {
        self.policy.rollback_on(status);
    }

    pub(crate) fn read_tokens_in(&mut self, carrier: TokenCarrier) {
        self.tokens = Some(carrier);
    }

    pub(crate) fn read_only_safe_methods(&mut self, on: bool) {
        self.safe_methods_read_only = Some(on);
    }

    /// Takes a request: joins the scope an outer layer opened (adding this layer's binds, mode,
    /// hooks and status exceptions to it), or opens the request's own; then calls the inner
    /// service, through `call`, inside that scope. A scope that cannot be opened or joined
    /// refuses the request, logged, without calling the inner service. `safe`: the request's
    /// method is safe ([`is_safe_method`]), for
    /// [`read_only_safe_methods`](Self::read_only_safe_methods).
    pub(crate) fn call<Q, Fut>(
        self: &Arc<Self>,
        request: Q,
        safe: bool,
        headers: impl for<'a> Fn(&'a Q, &str) -> Vec<&'a str>,
        call: impl FnOnce(Q) -> Fut,
    ) -> Call<Q, Fut> {
        // Whether this layer says if the request's scope is read-only, and what.
        let read_only = self.safe_methods_read_only.filter(|_| safe);
        let Some(outer) = Scope::try_current() else {
            let tokens = self.tokens.as_ref().map_or_else(Vec::new, |carrier| {
                carrier.read(headers(&request, carrier.request_header()).into_iter())
            });
            let started = if tokens.is_empty() {
                self.scope.start()
            } else {
                self.scope
                    .clone()
                    .read_after_all(tokens.iter().cloned())
                    .start()
            };
            return match started {
                Ok(scope) => {
                    if read_only == Some(true) {
                        scope.read_only_by_method(true);
                    }
                    Call::Owned {
                        // Frameworks route, call nested layers and may start extracting inside
                        // `call`, before any future is polled: that runs inside the scope too.
                        inner: scope.enter(|| call(request)),
                        scope,
                        config: self.clone(),
                        given: tokens,
                    }
                }
                Err(e) => {
                    log_failure("cannot open the request's scope; answering 500", &e);
                    Call::Refused(request)
                }
            };
        };
        if let Err(e) = outer.extend(&self.scope) {
            log_failure("a nested scope layer is misconfigured; answering 500", &e);
            return Call::Refused(request);
        }
        if !self.policy.is_empty() {
            outer.extension_mut(|route: &mut RouteExceptions| route.0.merge(&self.policy));
        }
        if let Some(on) = read_only {
            outer.read_only_by_method(on); // the route's word wins
        }
        if let Some(carrier) = &self.tokens {
            // The route's carrier: the tokens the request brought in it join the scope's, and
            // the layer that opened the scope stamps the response in it too.
            let given = carrier.read(headers(&request, carrier.request_header()).into_iter());
            outer.read_after_more(given.iter().cloned());
            outer.extension_mut(|nested: &mut NestedCarriers| {
                nested.0.push((carrier.clone(), given));
            });
        }
        Call::Joined(call(request))
    }

    /// Whether a response with `status` commits the scope this layer opened: its own policy,
    /// with the exceptions of nested layers over it (the route's word wins).
    fn commits(&self, scope: &Scope, status: u16) -> bool {
        scope
            .extension(|route: &RouteExceptions| route.0.exception(status))
            .flatten()
            .unwrap_or_else(|| self.policy.commits(status))
    }
}

/// Defines a framework's scope layer type (`ScopeLayer`, `ScopeMiddleware`) over a
/// [`LayerConfig`], with the docs given and the builder methods both frameworks share;
/// `$status` is the framework's status code type.
macro_rules! layer_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $status:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            // Shared with every service the layer makes: a router that applies its layers per
            // request (an axum `Router` still waiting for its state, say) copies nothing.
            config: std::sync::Arc<$crate::integration::core::LayerConfig>,
        }

        impl $name {
            #[doc = concat!(
                "A ", $what, " serving every bind of `manager`, transactional, with no hooks."
            )]
            pub fn new(manager: &$crate::BindManager) -> Self {
                Self {
                    config: std::sync::Arc::new($crate::integration::core::LayerConfig::new(
                        manager,
                    )),
                }
            }

            #[doc = concat!(
                "A ", $what, " opening scopes as `scope` describes (declared binds, mode, hooks)."
            )]
            ///
            /// # Errors
            ///
            /// [`ErrorKind::UnknownBind`](crate::ErrorKind::UnknownBind) and
            /// [`ErrorKind::DuplicateScopeBind`](crate::ErrorKind::DuplicateScopeBind) for the declared
            /// binds, so that a wrong route configuration fails at start-up.
            pub fn with_scope(scope: $crate::ScopeBuilder) -> $crate::Result<Self> {
                let config = $crate::integration::core::LayerConfig::with_scope(scope)?;
                Ok(Self {
                    config: std::sync::Arc::new(config),
                })
            }

            /// Commits on `status` too, though it is 400 or above (a `404` of a lookup that also
            /// logged something, say).
            pub fn commit_on(mut self, status: $status) -> Self {
                std::sync::Arc::make_mut(&mut self.config).commit_on(status.as_u16());
                self
            }

            /// Rolls back on `status` too, though it is below 400.
            pub fn rollback_on(mut self, status: $status) -> Self {
                std::sync::Arc::make_mut(&mut self.config).rollback_on(status.as_u16());
                self
            }

            /// Read-your-writes across requests, in header `name`: a response whose scope
            /// committed on binds with replicas carries the commit's
            /// [`ReadToken`](crate::ReadToken)s in it; a request bringing them back has its
            /// read sessions see those commits (a replica that replayed past them, or the
            /// primary). Off unless asked for.
            pub fn read_token_header(mut self, name: &str) -> Self {
                std::sync::Arc::make_mut(&mut self.config).read_tokens_in(
                    $crate::integration::tokens::TokenCarrier::Header(name.to_ascii_lowercase()),
                );
                self
            }

            /// Makes the scopes of safe requests (GET, HEAD and OPTIONS) read-only (`true`):
            /// their sessions are [read sessions](crate::Bind::read_session), on a replica
            /// where the bind has one, and the server refuses their writes (SQLSTATE 25006 on
            /// PostgreSQL, error 1792 on MySQL/MariaDB); on PostgreSQL at READ COMMITTED they
            /// read without BEGIN/COMMIT (see "Read-only sessions" on
            /// [`Session`](crate::Session)). Other methods are left as they are. Off unless
            /// asked for.
            ///
            /// On a layer that joins an outer one's scope (a route's), it decides for that
            /// route: `true` makes its safe requests' scopes read-only, `false` undoes what an
            /// outer layer's `read_only_safe_methods(true)` did (a GET that writes); a scope
            /// built read-only ([`ScopeBuilder::read_only`](crate::ScopeBuilder::read_only))
            /// stays so. Sessions the scope already has keep what they are.
            pub fn read_only_safe_methods(mut self, on: bool) -> Self {
                std::sync::Arc::make_mut(&mut self.config).read_only_safe_methods(on);
                self
            }

            /// As [`read_token_header`](Self::read_token_header), in cookie `name`
            /// (`Path=/; HttpOnly; SameSite=Lax`).
            pub fn read_token_cookie(mut self, name: &str) -> Self {
                std::sync::Arc::make_mut(&mut self.config).read_tokens_in(
                    $crate::integration::tokens::TokenCarrier::Cookie(name.to_owned()),
                );
                self
            }
        }
    };
}

pub(crate) use layer_type;

/// The token carriers of nested layers (a route's `read_token_header`), each with the tokens
/// the request brought in it: the layer that opened the scope stamps the response in each.
#[derive(Default)]
struct NestedCarriers(Vec<(TokenCarrier, Vec<crate::ReadToken>)>);

/// A request a layer has taken: its inner service called inside the request's scope, or refused.
pub(crate) enum Call<Q, Fut> {
    /// This layer opened the request's scope, and ends it by the response.
    Owned {
        scope: Scope,
        config: Arc<LayerConfig>,
        inner: Fut,
        /// The read tokens the request brought.
        given: Vec<crate::ReadToken>,
    },
    /// An outer layer opened the scope, and ends it.
    Joined(Fut),
    /// The scope could not be opened or joined; the request never reached the inner service.
    Refused(Q),
}

/// How a request ends, for the framework to answer.
pub(crate) enum Outcome<Q, R, E> {
    /// The inner service's result, to pass on as it is.
    Inner(Result<R, E>),
    /// Answer [`FAILURE_STATUS`] in place of this request, which never reached the inner
    /// service.
    Refused(Q),
    /// Answer [`FAILURE_STATUS`] in place of this response, whose commit failed (logged).
    CommitFailed(R),
}

impl<Q, Fut, R, E> Call<Q, Fut>
where
    Fut: Future<Output = Result<R, E>>,
{
    /// Runs the inner call to its response head; when this layer opened the scope, ends it:
    /// commits when the response's `status` says so, rolls back otherwise and on an `Err`.
    ///
    /// With read tokens on, `stamp` sets the commit's tokens on the response: a header's name
    /// and value.
    pub(crate) async fn outcome(
        self,
        status: fn(&R) -> u16,
        stamp: fn(&mut R, &str, String),
    ) -> Outcome<Q, R, E> {
        let (scope, config, inner, given) = match self {
            Call::Owned {
                scope,
                config,
                inner,
                given,
            } => (scope, config, inner, given),
            Call::Joined(inner) => return Outcome::Inner(inner.await),
            Call::Refused(request) => return Outcome::Refused(request),
        };
        let owner = scope.own();
        let result = scope.attach(inner).await;
        let commit = match &result {
            Ok(response) => config.commits(&scope, status(response)),
            Err(_) => false,
        };
        match (owner.finish(commit).await, result) {
            (Err(e), Ok(response)) => {
                log_failure("the request's commit failed; answering 500", &e);
                Outcome::CommitFailed(response)
            }
            (Ok(()), Ok(mut response)) if commit => {
                let written = scope.read_tokens();
                if !written.is_empty() {
                    // This layer's carrier, then the nested layers' that differ from it.
                    let nested = scope
                        .extension(|nested: &NestedCarriers| nested.0.clone())
                        .unwrap_or_default();
                    let carriers = config.tokens.clone().map(|own| (own, given)).into_iter();
                    let nested = nested
                        .into_iter()
                        .filter(|(carrier, _)| config.tokens.as_ref() != Some(carrier));
                    for (carrier, given) in carriers.chain(nested) {
                        // The header or cookie replaces the client's: it keeps the tokens the
                        // request brought of binds it did not write.
                        let tokens = super::tokens::merged(given, written.clone());
                        let (name, value) = carrier.write(&tokens);
                        stamp(&mut response, name, value);
                    }
                }
                Outcome::Inner(Ok(response))
            }
            (_, result) => Outcome::Inner(result),
        }
    }
}

/// The status of an error response: 503 when no connection could be had (a pool timeout, a
/// closed manager), 500 otherwise.
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) fn status_for(error: &Error) -> u16 {
    if error.is_timeout() || error.is_closed() {
        503
    } else {
        500
    }
}

/// A `DbError`'s answer: logs the error, and returns the status of its empty response (the
/// error's text, a database's message included, stays in the logs).
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) fn handler_error(error: &Error) -> u16 {
    log_failure("request failed", error);
    status_for(error)
}

/// A `DbSessionRejection`'s answer: logs it, and returns its status and its plain-text body,
/// the rejection's message.
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) fn rejection(error: &Error) -> (u16, String) {
    let rejection = Rejection(error);
    log_failure("cannot extract the request's session", &rejection);
    (status_for(error), rejection.to_string())
}

/// A rejection's message: the error's, and for a route outside any scope, the likely fix.
/// dbscope's messages name binds, never URLs or passwords.
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) struct Rejection<'a>(pub(crate) &'a Error);

#[cfg(any(feature = "axum", feature = "actix"))]
impl fmt::Display for Rejection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_no_scope() {
            write!(
                f,
                "{}; did you add dbscope's ScopeLayer or ScopeMiddleware to this route?",
                self.0
            )
        } else {
            fmt::Display::fmt(self.0, f)
        }
    }
}

#[cfg(any(feature = "axum", feature = "actix"))]
impl fmt::Debug for Rejection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

#[cfg(any(feature = "axum", feature = "actix"))]
impl std::error::Error for Rejection<'_> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(self.0)
    }
}

/// Defines, in a framework's module, the extractor types both frameworks name alike
/// (`DbSession`, `DbSessionRejection`, `DbError`) with the docs given, and the impls they share;
/// the module adds its framework's traits.
#[cfg(any(feature = "axum", feature = "actix"))]
macro_rules! extractor_types {
    (
        $(#[$session_doc:meta])* DbSession;
        $(#[$rejection_doc:meta])* DbSessionRejection;
        $(#[$error_doc:meta])* DbError;
    ) => {
        $(#[$session_doc])*
        pub struct DbSession<K: $crate::BindKey>(pub $crate::ScopedSession<K::Database>);

        impl<K: $crate::BindKey> DbSession<K> {
            /// The scope's session handle inside.
            pub fn into_inner(self) -> $crate::ScopedSession<K::Database> {
                self.0
            }

            /// The request scope's session of `K`'s bind, or the rejection.
            async fn current() -> Result<Self, DbSessionRejection> {
                $crate::current_session_for::<K>()
                    .await
                    .map(DbSession)
                    .map_err(DbSessionRejection)
            }
        }

        impl<K: $crate::BindKey> std::ops::Deref for DbSession<K> {
            type Target = $crate::ScopedSession<K::Database>;

            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl<K: $crate::BindKey> std::ops::DerefMut for DbSession<K> {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.0
            }
        }

        /// Statements run on `&mut db` as on the handle inside.
        impl<'c, K: $crate::BindKey> sqlx::Executor<'c> for &'c mut DbSession<K> {
            type Database = K::Database;

            fn fetch_many<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> futures_core::stream::BoxStream<
                'e,
                sqlx::Result<
                    sqlx::Either<
                        <K::Database as sqlx::Database>::QueryResult,
                        <K::Database as sqlx::Database>::Row,
                    >,
                >,
            >
            where
                'c: 'e,
                E: 'q + sqlx::Execute<'q, K::Database>,
            {
                (&mut self.0).fetch_many(query)
            }

            fn execute<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> futures_core::future::BoxFuture<
                'e,
                sqlx::Result<<K::Database as sqlx::Database>::QueryResult>,
            >
            where
                'c: 'e,
                E: 'q + sqlx::Execute<'q, K::Database>,
            {
                (&mut self.0).execute(query)
            }

            fn fetch_all<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> futures_core::future::BoxFuture<
                'e,
                sqlx::Result<Vec<<K::Database as sqlx::Database>::Row>>,
            >
            where
                'c: 'e,
                E: 'q + sqlx::Execute<'q, K::Database>,
            {
                (&mut self.0).fetch_all(query)
            }

            fn fetch_optional<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> futures_core::future::BoxFuture<
                'e,
                sqlx::Result<Option<<K::Database as sqlx::Database>::Row>>,
            >
            where
                'c: 'e,
                E: 'q + sqlx::Execute<'q, K::Database>,
            {
                (&mut self.0).fetch_optional(query)
            }

            fn prepare_with<'e>(
                self,
                sql: sqlx::SqlStr,
                parameters: &'e [<K::Database as sqlx::Database>::TypeInfo],
            ) -> futures_core::future::BoxFuture<
                'e,
                sqlx::Result<<K::Database as sqlx::Database>::Statement>,
            >
            where
                'c: 'e,
            {
                (&mut self.0).prepare_with(sql, parameters)
            }

            fn describe<'e>(
                self,
                sql: sqlx::SqlStr,
            ) -> futures_core::future::BoxFuture<'e, sqlx::Result<sqlx::Describe<K::Database>>>
            where
                'c: 'e,
            {
                (&mut self.0).describe(sql)
            }
        }

        impl<K: $crate::BindKey> std::fmt::Debug for DbSession<K> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple("DbSession").field(&self.0).finish()
            }
        }

        $(#[$rejection_doc])*
        #[derive(Debug)]
        pub struct DbSessionRejection(pub $crate::Error);

        impl std::fmt::Display for DbSessionRejection {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&$crate::integration::core::Rejection(&self.0), f)
            }
        }

        impl std::error::Error for DbSessionRejection {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                std::error::Error::source(&self.0)
            }
        }

        $(#[$error_doc])*
        #[derive(Debug)]
        pub struct DbError(pub $crate::Error);

        impl<E: Into<$crate::Error>> From<E> for DbError {
            fn from(error: E) -> Self {
                Self(error.into())
            }
        }

        impl std::fmt::Display for DbError {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl std::error::Error for DbError {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                std::error::Error::source(&self.0)
            }
        }
    };
}

#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) use extractor_types;

#[cfg(test)]
mod tests {
    use super::StatusPolicy;

    #[test]
    fn get_head_and_options_are_safe() {
        use super::is_safe_method;
        assert!(is_safe_method("GET") && is_safe_method("HEAD") && is_safe_method("OPTIONS"));
        for method in ["POST", "PUT", "PATCH", "DELETE", "get", "CONNECT"] {
            assert!(!is_safe_method(method), "{method}");
        }
    }

    #[test]
    fn below_400_commits_unless_listed() {
        let mut policy = StatusPolicy::default();
        assert!(policy.commits(200) && policy.commits(302));
        assert!(!policy.commits(400) && !policy.commits(500));
        policy.commit_on(409);
        policy.rollback_on(202);
        assert!(policy.commits(409) && !policy.commits(202) && policy.commits(201));
        policy.rollback_on(409); // the last word wins
        assert!(!policy.commits(409));
        let mut route = StatusPolicy::default();
        route.commit_on(202);
        policy.merge(&route);
        assert!(policy.commits(202) && !policy.commits(409));
        // A route's exception, read over the policy without merging, says the same.
        assert_eq!(route.exception(202), Some(true));
        assert_eq!(route.exception(409), None);
    }
}
