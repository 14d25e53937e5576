//! Why a session of a bind with replicas found no host to go to.

use std::fmt;
use std::time::Duration;

use super::{Detail, Error, ErrorKind};

/// What went wrong routing a session among a bind's hosts ([`Error::routing_failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RoutingFailure {
    /// No host answered as primary within the bind's `failover_wait`: the primary is down and no
    /// replica has been promoted (yet).
    NoPrimary,
    /// Two or more hosts answered as primary: dbscope will not guess which one takes writes.
    SplitBrain,
    /// A read session found no replica fit for it (healthy, within `max_lag`, past its token)
    /// and the bind's `fallback` is `fail`.
    NoReplica,
    /// A read with a token found no replica that had replayed past it within `token_wait`,
    /// and the bind's `fallback` is `fail`.
    TokenNotReached,
    /// A [`ReadToken`](crate::ReadToken) names another bind, or could not be read.
    InvalidToken,
    /// A host-switch hook chose a host the bind does not have.
    UnknownHost,
}

impl fmt::Display for RoutingFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoPrimary => "no primary",
            Self::SplitBrain => "split brain",
            Self::NoReplica => "no replica fit",
            Self::TokenNotReached => "token not reached",
            Self::InvalidToken => "invalid token",
            Self::UnknownHost => "unknown host",
        })
    }
}

impl Error {
    /// For [`ErrorKind::Routing`], what failed.
    pub fn routing_failure(&self) -> Option<RoutingFailure> {
        match self.0.detail {
            Detail::Routing(failure) => Some(failure),
            _ => None,
        }
    }

    /// A write found no primary within `waited`.
    pub(crate) fn no_primary(bind: &str, waited: Duration, hosts: &[String]) -> Self {
        Self::routing(
            bind,
            RoutingFailure::NoPrimary,
            format!(
                "bind `{bind}`: no host answered as primary within {waited:?} (failover_wait) \
                 among {}; promote a replica, bring the primary back, or raise failover_wait",
                hosts.join(", ")
            ),
        )
    }

    pub(crate) fn split_brain(bind: &str, primaries: &[String]) -> Self {
        Self::routing(
            bind,
            RoutingFailure::SplitBrain,
            format!(
                "bind `{bind}`: {} all answer as primary; writes stop until only one does \
                 (demote or stop the stale one)",
                primaries.join(" and ")
            ),
        )
    }

    pub(crate) fn no_replica(bind: &str, failure: RoutingFailure) -> Self {
        let why = match failure {
            RoutingFailure::TokenNotReached => {
                "no replica replayed past the read token within token_wait"
            }
            _ => "no replica is healthy and within max_lag",
        };
        Self::routing(
            bind,
            failure,
            format!(
                "bind `{bind}`: {why}, and routing.fallback is `fail`; set fallback = \"primary\" \
                 to read from the primary then"
            ),
        )
    }

    pub(crate) fn invalid_token(bind: &str, why: &str) -> Self {
        Self::routing(
            bind,
            RoutingFailure::InvalidToken,
            format!("bind `{bind}`: read token refused: {why}"),
        )
    }

    pub(crate) fn unknown_host(bind: &str, index: usize, hosts: usize) -> Self {
        Self::routing(
            bind,
            RoutingFailure::UnknownHost,
            format!(
                "bind `{bind}`: the host-switch hook chose host {index}, but the bind has {hosts} \
                 (its url is 0, its replicas 1 and up)"
            ),
        )
    }

    fn routing(bind: &str, failure: RoutingFailure, message: String) -> Self {
        Self::new(ErrorKind::Routing, Some(bind), message).with_detail(Detail::Routing(failure))
    }
}
