//! Replicas of a bind, and how its sessions are routed among its hosts.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::DatabaseUrl;

/// How a bind with replicas routes its sessions: how far behind a replica may be, how often
/// hosts are probed, and what happens when no host fits.
///
/// In TOML: `routing = { max_lag = "2s", fallback = "fail" }` on the bind.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RoutingConfig {
    /// A replica further behind the primary than this (estimated on the client, see the README)
    /// gets no read sessions until it catches up. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// How often each host is probed for its role and position, jittered by ±20 %; probes run
    /// every 50 ms while no primary is known or a read waits for a token. Default: 1 s.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// The longest a probe may take (connect included) before the host is set aside as failed.
    /// Default: 500 ms.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// What a read session does when no replica fits. Default: [`Fallback::Primary`].
    pub fallback: Fallback,
    /// How long a read with a [`ReadToken`](crate::ReadToken) waits for a replica to replay past
    /// it before it goes to the primary. Default: 200 ms.
    #[serde(with = "humantime_serde")]
    pub token_wait: Duration,
    /// How long a write session waits for a primary (during a failover) before failing with
    /// [`ErrorKind::Routing`](crate::ErrorKind::Routing). Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub failover_wait: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            max_lag: Duration::from_secs(5),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            fallback: Fallback::Primary,
            token_wait: Duration::from_millis(200),
            failover_wait: Duration::from_secs(5),
        }
    }
}

/// Where a read session goes when no replica fits (all down, too far behind, or none past its
/// token).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Fallback {
    /// To the primary, in a READ ONLY transaction.
    #[default]
    Primary,
    /// Fail with [`ErrorKind::Routing`](crate::ErrorKind::Routing)
    /// ([`RoutingFailure::NoReplica`](crate::RoutingFailure::NoReplica)).
    Fail,
}

/// `replicas = ["postgres://…", …]` in a file, or `url1,url2` in one environment variable.
pub(super) fn replicas<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DatabaseUrl>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<DatabaseUrl>),
        Joined(String),
    }
    Ok(match Form::deserialize(d)? {
        Form::List(urls) => urls,
        Form::Joined(joined) => split_urls(&joined).map(DatabaseUrl::new).collect(),
    })
}

/// `url1,url2` split where a comma begins another URL (`,postgres://…`): a comma is legal
/// inside a URL too, in a query (`options=-csearch_path%3Dapp,public`) or a password. Each
/// trimmed, a trailing comma dropped, empty ones left out.
fn split_urls(joined: &str) -> impl Iterator<Item = &str> {
    let mut urls = Vec::new();
    let mut start = 0;
    for (at, _) in joined.match_indices(',') {
        if begins_with_scheme(joined[at + 1..].trim_start()) {
            urls.push(&joined[start..at]);
            start = at + 1;
        }
    }
    urls.push(&joined[start..]);
    urls.into_iter()
        .map(|url| url.trim().trim_end_matches(',').trim_end())
        .filter(|url| !url.is_empty())
}

/// Whether `text` begins with `<scheme>://`, a scheme as [`DatabaseUrl::scheme`] reads one.
fn begins_with_scheme(text: &str) -> bool {
    DatabaseUrl::new(text)
        .scheme()
        .is_some_and(|scheme| text[scheme.len()..].starts_with("://"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_replicas_split_only_where_a_url_begins() {
        fn split(text: &str) -> Vec<&str> {
            split_urls(text).collect()
        }
        assert_eq!(
            split("postgres://a/db, postgres://b/db,mariadb://c/db"),
            ["postgres://a/db", "postgres://b/db", "mariadb://c/db"]
        );
        assert_eq!(
            split("postgres://a/db?options=-csearch_path%3Dapp,public,postgres://b/db"),
            [
                "postgres://a/db?options=-csearch_path%3Dapp,public",
                "postgres://b/db"
            ]
        );
        assert_eq!(
            split("postgres://u:pa,ss@a/db"),
            ["postgres://u:pa,ss@a/db"],
            "a comma in a password"
        );
        assert_eq!(split("postgres://a/db, "), ["postgres://a/db"]);
        assert!(split(" , ").is_empty());
    }
}
