//! What a host says of its replication: its role and how far it has written or replayed, and
//! the positions read-your-writes tokens compare.

use std::cmp::Ordering;
use std::fmt;

/// A point in a database's history: a PostgreSQL WAL position (LSN) or a MariaDB GTID set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Position {
    /// PostgreSQL: a WAL byte position.
    Lsn(u64),
    /// MariaDB: the last sequence number per replication domain, `(domain, server, seq)`, sorted
    /// by domain.
    Gtid(Vec<(u32, u32, u64)>),
}

impl Position {
    /// `16/B374D848` (PostgreSQL) or `0-1-42,1-2-7` (MariaDB; empty for none yet).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some((hi, lo)) = text.split_once('/') {
            let hi = u64::from_str_radix(hi, 16).ok()?;
            let lo = u64::from_str_radix(lo, 16).ok()?;
            return (hi <= u32::MAX.into() && lo <= u32::MAX.into())
                .then_some(Self::Lsn(hi << 32 | lo));
        }
        let mut gtids = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut fields = part.split('-');
            let (Some(d), Some(s), Some(n), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return None;
            };
            gtids.push((d.parse().ok()?, s.parse().ok()?, n.parse().ok()?));
        }
        gtids.sort_unstable();
        gtids.dedup_by_key(|g| g.0);
        Some(Self::Gtid(gtids))
    }

    /// The least position that has reached both: the later LSN, or per domain the higher
    /// sequence number (two writes in different domains: a host must have both).
    pub(crate) fn join(self, other: Position) -> Position {
        match (self, other) {
            (Self::Lsn(a), Self::Lsn(b)) => Self::Lsn(a.max(b)),
            (Self::Gtid(mut a), Self::Gtid(b)) => {
                for gtid in b {
                    match a.iter_mut().find(|g| g.0 == gtid.0) {
                        Some(kept) if kept.2 < gtid.2 => *kept = gtid,
                        Some(_) => {}
                        None => a.push(gtid),
                    }
                }
                a.sort_unstable();
                Self::Gtid(a)
            }
            (mine, _) => mine,
        }
    }

    /// Whether a host at `self` has everything up to `other`: a later or equal LSN, or, in every
    /// domain of `other`, a sequence number at least as high. As MariaDB's own `MASTER_GTID_WAIT`
    /// does, it compares sequence numbers within a domain whatever server wrote them (they go
    /// on rising across a switchover in a domain).
    pub(crate) fn has_reached(&self, other: &Position) -> bool {
        match (self, other) {
            (Self::Lsn(a), Self::Lsn(b)) => a >= b,
            (Self::Gtid(a), Self::Gtid(b)) => b.iter().all(|(domain, _, seq)| {
                a.iter()
                    .find(|(d, _, _)| d == domain)
                    .is_some_and(|(_, _, s)| s >= seq)
            }),
            _ => false,
        }
    }

    /// Bytes from `self` up to `ahead` (PostgreSQL), or transactions (MariaDB, summed over
    /// domains); 0 when `self` is not behind.
    pub(crate) fn distance_to(&self, ahead: &Position) -> u64 {
        match (self, ahead) {
            (Self::Lsn(a), Self::Lsn(b)) => b.saturating_sub(*a),
            (Self::Gtid(a), Self::Gtid(b)) => b
                .iter()
                .map(|(domain, _, seq)| {
                    let have = a.iter().find(|(d, _, _)| d == domain).map_or(0, |g| g.2);
                    seq.saturating_sub(have)
                })
                .sum(),
            _ => 0,
        }
    }

    /// The LSN, for lock-free comparison on the routing path.
    pub(crate) fn lsn(&self) -> Option<u64> {
        match self {
            Self::Lsn(lsn) => Some(*lsn),
            Self::Gtid(_) => None,
        }
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self.has_reached(other), other.has_reached(self)) {
            (true, true) => Some(Ordering::Equal),
            (true, false) => Some(Ordering::Greater),
            (false, true) => Some(Ordering::Less),
            (false, false) => None,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lsn(lsn) => write!(f, "{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF),
            Self::Gtid(gtids) => {
                for (i, (d, s, n)) in gtids.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{d}-{s}-{n}")?;
                }
                Ok(())
            }
        }
    }
}

/// A host's role, as its last probe found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
pub(crate) enum ProbedRole {
    /// Takes writes: PostgreSQL not in recovery, MariaDB not `read_only`.
    Primary,
    /// Replays another host's changes: PostgreSQL in recovery, MariaDB `read_only`.
    Replica,
}

/// What one probe of a host found.
#[derive(Clone, Debug)]
pub(crate) struct Probe {
    pub(crate) role: ProbedRole,
    /// Written (primary) or replayed (replica) up to here.
    pub(crate) position: Position,
    /// PostgreSQL's timeline; `0` on MariaDB, which has none.
    pub(crate) timeline: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parses_formats_and_orders() {
        let a = Position::parse("16/B374D848").unwrap();
        assert_eq!(a, Position::Lsn(0x16_B374_D848));
        assert_eq!(a.to_string(), "16/B374D848");
        let b = Position::parse("17/0").unwrap();
        assert!(b.has_reached(&a) && !a.has_reached(&b));
        assert_eq!(a.distance_to(&b), 0x17_0000_0000 - 0x16_B374_D848);
        assert!(Position::parse("zz/1").is_none());
    }

    #[test]
    fn gtid_sets_compare_per_domain() {
        let replica = Position::parse("0-1-42,1-2-7").unwrap();
        assert!(replica.has_reached(&Position::parse("0-1-40").unwrap()));
        assert!(!replica.has_reached(&Position::parse("0-1-43").unwrap()));
        assert!(!replica.has_reached(&Position::parse("2-1-1").unwrap()));
        assert!(replica.has_reached(&Position::parse("").unwrap()));
        assert_eq!(replica.to_string(), "0-1-42,1-2-7");
        assert_eq!(replica.distance_to(&Position::parse("0-1-45").unwrap()), 3);
        assert!(Position::parse("0-1").is_none());
    }

    #[test]
    fn joined_positions_have_reached_both() {
        let a = Position::parse("0-1-42,1-2-7").unwrap();
        let b = Position::parse("0-1-40,2-3-5").unwrap();
        let both = a.clone().join(b.clone());
        assert_eq!(both.to_string(), "0-1-42,1-2-7,2-3-5");
        assert!(both.has_reached(&a) && both.has_reached(&b));
        let lsn = Position::Lsn(5).join(Position::Lsn(9));
        assert_eq!(lsn, Position::Lsn(9));
    }
}
