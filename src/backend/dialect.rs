//! The transaction SQL of each database.

use sqlx::{AssertSqlSafe, SqlStr};

use crate::config::IsolationLevel;

/// The SQL flavour of a bind, from its URL (an `Any` bind speaks its URL's dialect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

/// The statements that begin and end a session's transactions, fixed when its options are.
#[derive(Clone, Debug)]
pub(crate) struct TxSql {
    pub(crate) begin: SqlStr,
    pub(crate) commit: &'static str,
    pub(crate) rollback: &'static str,
}

impl Dialect {
    /// PostgreSQL refuses every statement after an error until the transaction (or savepoint)
    /// is rolled back, and answers COMMIT of such a transaction by rolling it back.
    pub(crate) fn aborts_on_error(self) -> bool {
        self == Self::Postgres
    }

    /// COMMIT, and in the same message the position a replica must reach to see it: the WAL
    /// insert position (PostgreSQL) or the session's last GTID (MariaDB).
    pub(crate) fn commit_with_position(self) -> Option<&'static str> {
        match self {
            Self::Postgres => Some("COMMIT; SELECT pg_current_wal_insert_lsn()::text"),
            Self::MySql => Some("COMMIT; SELECT @@last_gtid"),
            Self::Sqlite => None,
        }
    }

    /// The transaction statements for these options, or why this database cannot honour them.
    pub(crate) fn tx_sql(
        self,
        isolation: Option<IsolationLevel>,
        read_only: bool,
    ) -> Result<TxSql, String> {
        match self {
            Self::Postgres => Ok(pg_tx_sql(isolation, read_only)),
            Self::MySql => Ok(mysql_tx_sql(isolation, read_only)),
            Self::Sqlite => sqlite_tx_sql(isolation, read_only),
        }
    }
}

const COMMIT: &str = "COMMIT";
const ROLLBACK: &str = "ROLLBACK";

fn plain(begin: &'static str) -> TxSql {
    TxSql {
        begin: SqlStr::from_static(begin),
        commit: COMMIT,
        rollback: ROLLBACK,
    }
}

fn pg_tx_sql(isolation: Option<IsolationLevel>, read_only: bool) -> TxSql {
    if isolation.is_none() && !read_only {
        return plain("BEGIN");
    }
    let mut begin = String::from("BEGIN");
    if let Some(level) = isolation {
        begin.push_str(" ISOLATION LEVEL ");
        begin.push_str(level.sql());
    }
    if read_only {
        begin.push_str(" READ ONLY");
    }
    TxSql {
        begin: dynamic(begin),
        commit: COMMIT,
        rollback: ROLLBACK,
    }
}

/// MySQL sets the isolation of the next transaction with its own statement; both go in one
/// round trip.
fn mysql_tx_sql(isolation: Option<IsolationLevel>, read_only: bool) -> TxSql {
    if isolation.is_none() && !read_only {
        return plain("BEGIN");
    }
    let mut begin = String::new();
    if let Some(level) = isolation {
        begin.push_str("SET TRANSACTION ISOLATION LEVEL ");
        begin.push_str(level.sql());
        begin.push_str("; ");
    }
    begin.push_str("START TRANSACTION");
    if read_only {
        begin.push_str(" READ ONLY");
    }
    TxSql {
        begin: dynamic(begin),
        commit: COMMIT,
        rollback: ROLLBACK,
    }
}

/// SQLite transactions are always serializable. Read-only is `PRAGMA query_only`, switched off
/// *before* COMMIT or ROLLBACK so that a failing end still leaves the connection writable.
fn sqlite_tx_sql(isolation: Option<IsolationLevel>, read_only: bool) -> Result<TxSql, String> {
    if let Some(level) = isolation.filter(|l| *l != IsolationLevel::Serializable) {
        return Err(format!(
            "SQLite transactions are always SERIALIZABLE and cannot run at {}; drop the \
             isolation setting or set it to serializable",
            level.sql()
        ));
    }
    if !read_only {
        return Ok(plain("BEGIN"));
    }
    Ok(TxSql {
        begin: SqlStr::from_static("PRAGMA query_only = ON; BEGIN"),
        commit: "PRAGMA query_only = OFF; COMMIT",
        rollback: "PRAGMA query_only = OFF; ROLLBACK",
    })
}

impl Dialect {
    /// What a connection of a bind runs once, as it opens, so that its sessions' transactions
    /// need no BEGIN round trip: MySQL/MariaDB's `autocommit = 0`, under which the first
    /// statement opens the transaction itself and COMMIT or ROLLBACK ends it (a disconnect
    /// rolls it back), with the bind's default isolation made the connection's. `None` where
    /// that does not apply: other databases, binds whose sessions default to autocommit, and
    /// read-only binds (their transactions keep `START TRANSACTION READ ONLY`).
    pub(crate) fn connection_setup(
        self,
        isolation: Option<IsolationLevel>,
        read_only: bool,
        autocommit: bool,
    ) -> Option<SqlStr> {
        if self != Self::MySql || read_only || autocommit {
            return None;
        }
        Some(match isolation {
            None => SqlStr::from_static(IMPLICIT_TRANSACTIONS),
            Some(level) => dynamic(format!(
                "{IMPLICIT_TRANSACTIONS}; SET SESSION TRANSACTION ISOLATION LEVEL {}",
                level.sql()
            )),
        })
    }
}

/// A MySQL connection's statements open its transactions.
const IMPLICIT_TRANSACTIONS: &str = "SET autocommit = 0";

/// Back to one transaction per statement, for an autocommit session on a connection that was
/// set up with [`Dialect::connection_setup`].
pub(crate) const AUTOCOMMIT_ON: &str = "SET autocommit = 1";

/// Built as `Arc<str>`, the one owned form `SqlStr` clones without copying.
fn dynamic(sql: String) -> SqlStr {
    sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(std::sync::Arc::<str>::from(sql)))
}

/// `SAVEPOINT` for the level `depth` (2 and up: level 1 is the transaction itself).
pub(crate) fn savepoint(depth: u32) -> SqlStr {
    dynamic(format!("SAVEPOINT dbscope_{depth}"))
}

/// `RELEASE SAVEPOINT` for level `depth`.
pub(crate) fn release_savepoint(depth: u32) -> SqlStr {
    dynamic(format!("RELEASE SAVEPOINT dbscope_{depth}"))
}

/// Rolls back to level `depth` and releases it, in one round trip.
pub(crate) fn rollback_to(depth: u32) -> SqlStr {
    dynamic(format!(
        "ROLLBACK TO SAVEPOINT dbscope_{depth}; RELEASE SAVEPOINT dbscope_{depth}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_begin_carries_isolation_and_read_only() {
        let sql = Dialect::Postgres
            .tx_sql(Some(IsolationLevel::Serializable), true)
            .unwrap();
        assert_eq!(
            sql.begin.as_str(),
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY"
        );
        assert_eq!(
            Dialect::Postgres
                .tx_sql(None, false)
                .unwrap()
                .begin
                .as_str(),
            "BEGIN"
        );
    }

    #[test]
    fn mysql_sets_isolation_before_starting() {
        let sql = Dialect::MySql
            .tx_sql(Some(IsolationLevel::ReadCommitted), true)
            .unwrap();
        assert_eq!(
            sql.begin.as_str(),
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION READ ONLY"
        );
    }

    #[test]
    fn only_transactional_read_write_mysql_binds_set_their_connections_up() {
        let setup = |dialect: Dialect, isolation, read_only, autocommit| {
            dialect
                .connection_setup(isolation, read_only, autocommit)
                .map(|sql| sql.as_str().to_owned())
        };
        assert_eq!(
            setup(Dialect::MySql, None, false, false).as_deref(),
            Some("SET autocommit = 0")
        );
        assert_eq!(
            setup(
                Dialect::MySql,
                Some(IsolationLevel::ReadCommitted),
                false,
                false
            )
            .as_deref(),
            Some("SET autocommit = 0; SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        );
        assert_eq!(setup(Dialect::MySql, None, true, false), None);
        assert_eq!(setup(Dialect::MySql, None, false, true), None);
        assert_eq!(setup(Dialect::Postgres, None, false, false), None);
        assert_eq!(setup(Dialect::Sqlite, None, false, false), None);
    }

    #[test]
    fn sqlite_refuses_weaker_isolation_and_maps_read_only() {
        let err = Dialect::Sqlite
            .tx_sql(Some(IsolationLevel::ReadCommitted), false)
            .unwrap_err();
        assert!(err.contains("SERIALIZABLE"), "{err}");
        let sql = Dialect::Sqlite
            .tx_sql(Some(IsolationLevel::Serializable), true)
            .unwrap();
        assert!(sql.begin.as_str().contains("query_only = ON"));
        assert!(sql.rollback.starts_with("PRAGMA query_only = OFF"));
    }
}
