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
    /// `begin`, saying READ WRITE: for a read-write transaction on a connection made read-only
    /// for read sessions (see [`Dialect::read_only_sql`]), in the same round trip.
    pub(crate) begin_read_write: SqlStr,
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

    /// The primary's position alone, for the token of statements that committed on their own
    /// (what [`commit_with_position`](Self::commit_with_position) adds to a COMMIT).
    pub(crate) fn position_sql(self) -> Option<&'static str> {
        self.commit_with_position()
            .and_then(|sql| sql.strip_prefix("COMMIT; "))
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

fn plain(begin: &'static str, begin_read_write: &'static str) -> TxSql {
    TxSql {
        begin: SqlStr::from_static(begin),
        begin_read_write: SqlStr::from_static(begin_read_write),
        commit: COMMIT,
        rollback: ROLLBACK,
    }
}

/// A transaction begun by `begin` and its access mode: READ ONLY, else READ WRITE for
/// `begin_read_write`.
fn with_access(begin: String, read_only: bool) -> TxSql {
    let access = if read_only {
        " READ ONLY"
    } else {
        " READ WRITE"
    };
    let stated = dynamic(format!("{begin}{access}"));
    TxSql {
        begin: if read_only {
            stated.clone()
        } else {
            dynamic(begin)
        },
        begin_read_write: stated,
        commit: COMMIT,
        rollback: ROLLBACK,
    }
}

fn pg_tx_sql(isolation: Option<IsolationLevel>, read_only: bool) -> TxSql {
    if isolation.is_none() && !read_only {
        return plain("BEGIN", "BEGIN READ WRITE");
    }
    let mut begin = String::from("BEGIN");
    if let Some(level) = isolation {
        begin.push_str(" ISOLATION LEVEL ");
        begin.push_str(level.sql());
    }
    with_access(begin, read_only)
}

/// MySQL sets the isolation of the next transaction with its own statement; both go in one
/// round trip.
fn mysql_tx_sql(isolation: Option<IsolationLevel>, read_only: bool) -> TxSql {
    if isolation.is_none() && !read_only {
        return plain("BEGIN", "START TRANSACTION READ WRITE");
    }
    let mut begin = String::new();
    if let Some(level) = isolation {
        begin.push_str("SET TRANSACTION ISOLATION LEVEL ");
        begin.push_str(level.sql());
        begin.push_str("; ");
    }
    begin.push_str("START TRANSACTION");
    with_access(begin, read_only)
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
        return Ok(plain("BEGIN", "BEGIN"));
    }
    Ok(TxSql {
        begin: SqlStr::from_static("PRAGMA query_only = ON; BEGIN"),
        // SQLite connections are never made read-only for read sessions.
        begin_read_write: SqlStr::from_static("PRAGMA query_only = ON; BEGIN"),
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

impl Dialect {
    /// Makes the connection read-only, enforced by the server, for the read sessions that run
    /// without BEGIN: every later transaction of it is READ ONLY unless it says READ WRITE
    /// ([`TxSql::begin_read_write`]). MySQL's also turns autocommit on, so that each statement
    /// is a transaction of its own. `None` for SQLite, whose read sessions keep their
    /// transaction.
    pub(crate) fn read_only_sql(self) -> Option<&'static str> {
        match self {
            Self::Postgres => Some("SET default_transaction_read_only = on"),
            Self::MySql => Some("SET autocommit = 1; SET SESSION TRANSACTION READ ONLY"),
            Self::Sqlite => None,
        }
    }

    /// Undoes [`read_only_sql`](Self::read_only_sql)'s access mode, for an autocommit session
    /// that writes (MySQL's autocommit stays on).
    pub(crate) fn read_write_sql(self) -> &'static str {
        match self {
            Self::Postgres => "SET default_transaction_read_only = off",
            Self::MySql | Self::Sqlite => "SET SESSION TRANSACTION READ WRITE",
        }
    }

    /// Asks the server the connection's default isolation level, in the last column of the last
    /// row (PostgreSQL: first making the connection read-only when `and_read_only`, in the same
    /// round trip). MySQL 8 and MariaDB 11.1 name it `transaction_isolation`, older servers
    /// `tx_isolation`: `SHOW` answers for whichever the server has.
    pub(crate) fn isolation_query(self, and_read_only: bool) -> &'static str {
        match (self, and_read_only) {
            (Self::Postgres, false) => "SHOW default_transaction_isolation",
            (Self::Postgres, true) => {
                "SET default_transaction_read_only = on; SHOW default_transaction_isolation"
            }
            (Self::MySql | Self::Sqlite, _) => {
                "SHOW SESSION VARIABLES WHERE Variable_name IN ('transaction_isolation', 'tx_isolation')"
            }
        }
    }

    /// Whether a read-only session that asks for isolation `wanted` (`None`: the connection's
    /// default) sees the same running without BEGIN, each statement in a transaction of its own
    /// at the connection's default level `default`: only at READ COMMITTED (or lower), where
    /// every statement takes its own snapshot inside a transaction too, and only when its
    /// statements run at the level it asked for (PostgreSQL runs READ UNCOMMITTED as READ
    /// COMMITTED).
    pub(crate) fn reads_alike_without_begin(
        self,
        wanted: Option<IsolationLevel>,
        default: IsolationLevel,
    ) -> bool {
        let class = |level: IsolationLevel| match (self, level) {
            (Self::Postgres, IsolationLevel::ReadUncommitted) => IsolationLevel::ReadCommitted,
            (_, level) => level,
        };
        let wanted = class(wanted.unwrap_or(default));
        let lenient = matches!(
            wanted,
            IsolationLevel::ReadCommitted | IsolationLevel::ReadUncommitted
        );
        self != Self::Sqlite && lenient && wanted == class(default)
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

/// A transaction's `begin` and its first statement `then`, in one simple-query message: the
/// server parses it all before it runs any, and runs BEGIN first (see "Round trips" on
/// `Session`).
pub(crate) fn piggybacked(begin: &SqlStr, then: &str) -> SqlStr {
    dynamic(format!("{}; {then}", begin.as_str()))
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
    fn read_write_begins_say_so_and_read_only_ones_keep_their_mode() {
        let pg = |isolation, read_only| Dialect::Postgres.tx_sql(isolation, read_only).unwrap();
        assert_eq!(
            pg(None, false).begin_read_write.as_str(),
            "BEGIN READ WRITE"
        );
        assert_eq!(
            pg(Some(IsolationLevel::ReadCommitted), false)
                .begin_read_write
                .as_str(),
            "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE"
        );
        assert_eq!(
            pg(Some(IsolationLevel::ReadCommitted), false)
                .begin
                .as_str(),
            "BEGIN ISOLATION LEVEL READ COMMITTED"
        );
        assert_eq!(pg(None, true).begin.as_str(), "BEGIN READ ONLY");
        let my = |isolation, read_only| Dialect::MySql.tx_sql(isolation, read_only).unwrap();
        assert_eq!(
            my(None, false).begin_read_write.as_str(),
            "START TRANSACTION READ WRITE"
        );
        assert_eq!(
            my(Some(IsolationLevel::Serializable), false)
                .begin_read_write
                .as_str(),
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION READ WRITE"
        );
        assert_eq!(my(None, true).begin.as_str(), "START TRANSACTION READ ONLY");
    }

    #[test]
    fn only_read_committed_reads_run_without_begin() {
        use IsolationLevel::*;
        let pg = |wanted, default| Dialect::Postgres.reads_alike_without_begin(wanted, default);
        assert!(pg(None, ReadCommitted));
        assert!(pg(Some(ReadCommitted), ReadCommitted));
        assert!(
            pg(Some(ReadUncommitted), ReadCommitted),
            "the same level on PostgreSQL"
        );
        assert!(pg(None, ReadUncommitted));
        assert!(
            !pg(None, RepeatableRead),
            "the server's default is stronger"
        );
        assert!(!pg(Some(RepeatableRead), ReadCommitted));
        assert!(!pg(Some(Serializable), ReadCommitted));
        assert!(
            !pg(Some(ReadCommitted), Serializable),
            "its statements would run at the server's level"
        );
        let my = |wanted, default| Dialect::MySql.reads_alike_without_begin(wanted, default);
        assert!(my(None, ReadCommitted));
        assert!(my(Some(ReadCommitted), ReadCommitted));
        assert!(my(None, ReadUncommitted));
        assert!(
            !my(None, RepeatableRead),
            "MySQL's default keeps its transaction"
        );
        assert!(!my(Some(ReadUncommitted), ReadCommitted));
        assert!(!my(Some(ReadCommitted), RepeatableRead));
        assert!(!Dialect::Sqlite.reads_alike_without_begin(None, ReadCommitted));
    }

    #[test]
    fn server_isolation_names_parse() {
        assert_eq!(
            IsolationLevel::from_server("read committed"),
            Some(IsolationLevel::ReadCommitted)
        );
        assert_eq!(
            IsolationLevel::from_server("REPEATABLE-READ"),
            Some(IsolationLevel::RepeatableRead)
        );
        assert_eq!(
            IsolationLevel::from_server("READ-UNCOMMITTED"),
            Some(IsolationLevel::ReadUncommitted)
        );
        assert_eq!(IsolationLevel::from_server("snapshot"), None);
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
