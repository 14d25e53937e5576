//! Read-your-writes tokens: where a committed write is in the database's history.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::backend::replication::Position;
use crate::{Error, Result};

/// Where a committed write sits in its bind's history: a read session given this token goes
/// to a replica that has replayed past it, or waits for one up to the bind's `token_wait`, or
/// goes to the primary. So a client that wrote in one request reads its write in the next.
///
/// Opaque; its text form (`Display`, `FromStr`) fits an HTTP header or a cookie value
/// (`main.1.0/3000148` on PostgreSQL: bind, timeline, WAL position; `main.0.0-1-42` on MariaDB:
/// bind, none, GTIDs). A token from another timeline than a replica's (a failover happened
/// since) never sends a read to that replica.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ReadToken {
    bind: Arc<str>,
    timeline: u32,
    position: Position,
}

impl ReadToken {
    pub(crate) fn new(bind: Arc<str>, timeline: u32, position: Position) -> Self {
        Self {
            bind,
            timeline,
            position,
        }
    }

    /// The bind whose write this token stands for.
    pub fn bind(&self) -> &str {
        &self.bind
    }

    pub(crate) fn timeline(&self) -> u32 {
        self.timeline
    }

    pub(crate) fn position(&self) -> &Position {
        &self.position
    }

    /// A token that sees the writes of both tokens of one bind: on one timeline, the position
    /// that has reached both (the later LSN; on MariaDB, each domain's latest GTID, so that
    /// writes in two domains are both seen); else the one on the later timeline (a failover
    /// happened between them).
    pub(crate) fn later(self, other: Self) -> Self {
        if self.bind == other.bind && self.timeline == other.timeline {
            let position = self.position.join(other.position);
            return Self { position, ..self };
        }
        if self.timeline < other.timeline {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for ReadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `,` may not appear in a cookie value: GTID sets join with `+`.
        let position = self.position.to_string().replace(',', "+");
        write!(f, "{}.{}.{}", self.bind, self.timeline, position)
    }
}

impl fmt::Debug for ReadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadToken({self})")
    }
}

impl FromStr for ReadToken {
    type Err = Error;

    /// Reads a token's text form back.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Routing`](crate::ErrorKind::Routing) with
    /// [`RoutingFailure::InvalidToken`](crate::RoutingFailure::InvalidToken) when it is not one.
    fn from_str(text: &str) -> Result<Self> {
        let mut parts = text.trim().splitn(3, '.');
        let (Some(bind), Some(timeline), Some(position)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::invalid_token(
                "?",
                "it is not `bind.timeline.position`",
            ));
        };
        let timeline = timeline
            .parse()
            .map_err(|_| Error::invalid_token(bind, "its timeline is not a number"))?;
        let position = Position::parse(&position.replace('+', ",")).ok_or_else(|| {
            Error::invalid_token(bind, "its position is neither an LSN nor GTIDs")
        })?;
        Ok(Self::new(Arc::from(bind), timeline, position))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_text() {
        for text in ["main.1.16/B374D848", "db.0.0-1-42+1-2-7", "db.0."] {
            let token: ReadToken = text.parse().unwrap();
            assert_eq!(token.to_string(), text);
        }
        assert!(
            "main.x.0/1"
                .parse::<ReadToken>()
                .unwrap_err()
                .routing_failure()
                .is_some()
        );
        assert!("nonsense".parse::<ReadToken>().is_err());
    }

    #[test]
    fn the_later_token_keeps_every_domain() {
        let parse = |t: &str| t.parse::<ReadToken>().unwrap();
        let later = parse("db.0.0-1-42").later(parse("db.0.1-2-7"));
        assert_eq!(later.to_string(), "db.0.0-1-42+1-2-7");
        let after_failover = parse("main.1.0/90").later(parse("main.2.0/10"));
        assert_eq!(after_failover.to_string(), "main.2.0/10");
    }
}
