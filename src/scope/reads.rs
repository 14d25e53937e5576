//! Read sessions in a scope: read-only scopes, sticky-after-write, and read-your-writes tokens
//! in and out.

use std::sync::{Arc, Mutex, PoisonError};

use super::{Scope, ScopeBuilder, ScopedSession};
use crate::backend::Backend;
use crate::{ReadToken, Result};

/// What a scope knows of reads: whether all its sessions are read sessions, and the tokens its
/// read sessions must see.
#[derive(Clone, Debug, Default)]
pub(super) struct Reads {
    /// Asked for: `ScopeBuilder::read_only`, or a read-only route.
    pub(super) read_only: bool,
    /// A web layer made the request's scope read-only for its safe method (GET, HEAD,
    /// OPTIONS); a route's layer may say otherwise.
    pub(super) by_method: bool,
    pub(super) tokens: Vec<ReadToken>,
}

impl Reads {
    /// Whether the scope's sessions are read sessions.
    pub(super) fn all(&self) -> bool {
        self.read_only || self.by_method
    }

    /// The token a read session of bind `name` is given.
    pub(super) fn token_for(&self, name: &str) -> Option<ReadToken> {
        self.tokens
            .iter()
            .filter(|t| t.bind() == name)
            .cloned()
            .reduce(ReadToken::later)
    }
}

/// Where the sessions of a scope leave the tokens of their commits.
pub(super) type Written = Arc<Mutex<Vec<ReadToken>>>;

impl ScopeBuilder {
    /// Makes every session of the scope a [read session](crate::Bind::read_session):
    /// read-only (without BEGIN where that reads alike: see "Read-only sessions" on
    /// [`Session`](crate::Session)), and on a bind with replicas, on a replica.
    pub fn read_only(mut self) -> Self {
        self.reads.read_only = true;
        self
    }

    /// Gives the scope's read sessions of `token`'s bind a token to see: they go to a replica
    /// that has replayed past it, wait for one up to `token_wait`, or go to the primary. Several
    /// tokens of one bind: the latest counts.
    pub fn read_after(mut self, token: ReadToken) -> Self {
        self.reads.tokens.push(token);
        self
    }

    /// [`read_after`](ScopeBuilder::read_after) for each token.
    pub fn read_after_all(mut self, tokens: impl IntoIterator<Item = ReadToken>) -> Self {
        self.reads.tokens.extend(tokens);
        self
    }
}

impl Scope {
    /// Makes the scope's sessions read sessions from now on (or, `false`, undoes that), for a
    /// web layer that does so for safe request methods: sessions the scope already has keep
    /// what they are.
    #[cfg_attr(not(any(feature = "tower", feature = "actix")), allow(dead_code))]
    pub(crate) fn read_only_by_method(&self, on: bool) {
        self.state().reads.by_method = on;
    }

    /// A handle to this scope's read session on bind `name`: see [`current_read_session`].
    ///
    /// # Errors
    ///
    /// As [`current_session`](crate::current_session).
    pub fn read_session<DB: Backend>(&self, name: &str) -> Result<ScopedSession<DB>> {
        Ok(ScopedSession::new(self.read_slot::<DB>(name)?))
    }

    /// The read-your-writes tokens of the sessions this scope has committed, one per bind with
    /// replicas that committed: after the scope ends, those of its commit. Hand them to the
    /// client (the web layers can: see their `read_token_header`), and give them back to the
    /// next request's scope with [`ScopeBuilder::read_after`].
    pub fn read_tokens(&self) -> Vec<ReadToken> {
        self.inner
            .written
            .get()
            .map(|w| w.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default()
    }

    /// The sink a slot of a bind with replicas leaves its token in.
    pub(super) fn written(&self) -> Written {
        self.inner.written.get_or_init(Written::default).clone()
    }
}

/// A handle to the current scope's read session on bind `name`.
///
/// A read session goes to a replica within the bind's `max_lag` (past the scope's token for the
/// bind, if it was given one), read-only (see "Read-only sessions" on
/// [`Session`](crate::Session)). **Sticky after write:** once the
/// scope's own session of that bind has been used, the read session *is* that session, on the
/// primary, so reads see the scope's own writes: handles taken before the write too, from their
/// next statement on (the read session they ran on until then ends at the write, its connection
/// back in the pool; or, if code is still reading a fetch stream of it, when the scope ends). In a [read-only](ScopeBuilder::read_only)
/// scope, [`current_session`](crate::current_session) returns the read session too.
///
/// # Errors
///
/// As [`current_session`](crate::current_session).
///
/// # Cancel safety
///
/// Cancel safe: it waits for nothing.
pub async fn current_read_session<DB: Backend>(name: &str) -> Result<ScopedSession<DB>> {
    Scope::current_for(name)?.read_session(name)
}
