//! The host-switch hook: code of the application's that picks a session's host before its
//! first checkout, or gives it other connect options (a rotated password).

use std::fmt;
use std::sync::Arc;

use crate::DatabaseUrl;
use crate::engine::HostStatus;

/// What a host-switch hook decides for one session.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum HostChoice {
    /// dbscope's own routing: the primary for a write, a fit replica for a read.
    Route,
    /// This host of the bind: 0 is its `url`, 1 and up its `replicas`, in order.
    Host(usize),
    /// Another URL (other credentials, another host): its connections get a pool of their own,
    /// kept by URL, so they never mix with the bind's.
    Url(DatabaseUrl),
}

/// What a host-switch hook knows when it chooses.
#[derive(Debug)]
#[non_exhaustive]
pub struct HostContext<'a> {
    /// The bind.
    pub bind: &'a str,
    /// The session is a read session.
    pub read: bool,
    /// The bind's hosts, in order (`url` first), with their role, lag and health.
    pub hosts: Vec<HostStatus>,
}

impl<'a> HostContext<'a> {
    pub(crate) fn new(bind: &'a str, read: bool, hosts: Vec<HostStatus>) -> Self {
        Self { bind, read, hosts }
    }
}

/// A hook, shared by the bind's sessions.
#[derive(Clone)]
pub(crate) struct HostHook(Arc<dyn Fn(&HostContext<'_>) -> HostChoice + Send + Sync>);

impl HostHook {
    pub(crate) fn new(f: impl Fn(&HostContext<'_>) -> HostChoice + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn choose(&self, context: &HostContext<'_>) -> HostChoice {
        (self.0)(context)
    }
}

impl fmt::Debug for HostHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HostHook")
    }
}
