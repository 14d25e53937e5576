//! Read-only sessions without BEGIN/COMMIT, on connections the server keeps read-only (issue 14,
//! item 1), proven from the servers:
//!
//! - PostgreSQL: a statement sent as a simple query runs in a transaction of its own exactly
//!   when `statement_timestamp() = transaction_timestamp()` (inside a transaction begun by a
//!   BEGIN sent on its own, the statement's time is later than the transaction's), and
//!   `pg_stat_activity` shows the session's backend `idle`, not `idle in transaction`, between
//!   its statements;
//! - MariaDB: the connection's own command counters (`COM_BEGIN`, `COM_COMMIT`), and its
//!   `@@autocommit` and `@@tx_read_only`;
//! - both: a write fails with the server's read-only error (SQLSTATE 25006; MariaDB's 1792), and
//!   nothing lands, as another connection sees.
//!
//! Then: the connection serves writers again, transactional and autocommit; repeatable-read and
//! serializable reads, `begin()` and a stronger server default keep their transaction; the
//! opt-out restores BEGIN; a cancellation at every await leaves the connection clean; a dead
//! connection at the first statement is replaced unseen; and the web layers' safe methods.

mod common;

use std::time::Duration;

use common::{Kind, TestDb, cancel_after, eventually, fetch_i64, fetch_string, insert, sql};
use dbscope::{BindConfig, BindManager, HealthCheck, IsolationLevel, Session};
use sqlx::{Connection, MySql, Postgres};

/// The SQLSTATE of a failed statement.
fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

/// Creates the test's table, committed.
async fn table<DB: common::Typed>(manager: &BindManager, db: &TestDb) {
    let mut session = manager.session::<DB>("main").unwrap();
    let ddl = format!(
        "CREATE TABLE {} (id BIGINT PRIMARY KEY, v VARCHAR(50))",
        db.table
    );
    sqlx::query(sql(ddl)).execute(&mut session).await.unwrap();
    session.commit().await.unwrap();
}

/// Rows of the test's table, read on a plain connection of its own: what is committed.
async fn committed(db: &TestDb) -> i64 {
    let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    let n: i64 = sqlx::query_scalar(sql(format!("SELECT COUNT(*) FROM {}", db.table)))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    n
}

// ----- PostgreSQL -----

/// Whether the statement runs in a transaction of its own. Sent as a simple query, one
/// message: the server reads the statement's time and, outside a transaction block, starts its
/// implicit transaction at once (the extended protocol's Parse, Bind and Execute are messages
/// of their own, each with its own time).
async fn own_transaction(session: &mut Session<Postgres>) -> bool {
    use sqlx::Row;
    sqlx::raw_sql("SELECT statement_timestamp() = transaction_timestamp()")
        .fetch_one(session)
        .await
        .unwrap()
        .get(0)
}

async fn setting(session: &mut Session<Postgres>, name: &str) -> String {
    fetch_string(
        &mut *session,
        sql(format!("SELECT current_setting('{name}')")),
    )
    .await
    .unwrap()
}

async fn backend_pid(session: &mut Session<Postgres>) -> i64 {
    fetch_i64(&mut *session, "SELECT CAST(pg_backend_pid() AS BIGINT)")
        .await
        .unwrap()
}

/// `pg_stat_activity`'s state of backend `pid`, seen from another connection.
async fn pg_state(db: &TestDb, pid: i64) -> String {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let state: String = sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
        .bind(i32::try_from(pid).unwrap())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    state
}

async fn pg_terminate(db: &TestDb, pid: i64) {
    db.kill_connection(pid).await;
    eventually("the killed backend is gone", || async {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(i32::try_from(pid).unwrap())
            .fetch_one(&mut conn)
            .await
            .unwrap();
        left == 0
    })
    .await;
}

#[tokio::test]
async fn pg_read_session_runs_each_statement_in_a_transaction_of_its_own() {
    common::within_limit("pg_read_session_runs_each_statement", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1));
        table::<Postgres>(&manager, &db).await;
        let mut read = manager.read_session::<Postgres>("main").unwrap();
        assert!(own_transaction(&mut read).await, "the first statement");
        assert!(own_transaction(&mut read).await, "the second statement");
        let pid = backend_pid(&mut read).await;
        assert_eq!(
            pg_state(&db, pid).await,
            "idle",
            "no transaction is open between the session's statements"
        );
        assert!(!read.in_transaction());
        assert_eq!(setting(&mut read, "transaction_read_only").await, "on");
        assert_eq!(
            setting(&mut read, "default_transaction_read_only").await,
            "on"
        );
        let source = fetch_string(
            &mut read,
            "SELECT source FROM pg_settings WHERE name = 'default_transaction_read_only'",
        )
        .await
        .unwrap();
        assert_eq!(source, "session", "set on the connection, by a SET");
        read.commit().await.unwrap(); // nothing to end
        read.rollback().await.unwrap();
        assert_eq!(backend_pid(&mut read).await, pid, "the same connection");
        drop(read);
        manager.close(Duration::from_secs(5)).await.unwrap();
        assert_eq!(db.open_transactions().await, Some(0));
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn pg_a_write_in_a_read_session_fails_on_the_server_and_nothing_lands() {
    common::within_limit("pg_a_write_in_a_read_session_fails", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1));
        table::<Postgres>(&manager, &db).await;
        let mut read = manager.read_session::<Postgres>("main").unwrap();
        let err = insert(&mut read, &db, 1).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err}");
        // Nothing was aborted: the session reads on.
        assert!(own_transaction(&mut read).await);
        read.commit().await.unwrap();
        drop(read);
        // An autocommit read-only session runs on a read-only connection too.
        let mut auto = manager
            .session::<Postgres>("main")
            .unwrap()
            .autocommit(true)
            .read_only(true);
        let err = insert(&mut auto, &db, 2).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err}");
        drop(auto);
        assert_eq!(committed(&db).await, 0, "nothing landed");
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn pg_a_connection_made_read_only_serves_writers_again() {
    common::within_limit("pg_a_connection_made_read_only_serves_writers", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1));
        table::<Postgres>(&manager, &db).await;
        let mut read = manager.read_session::<Postgres>("main").unwrap();
        let pid = backend_pid(&mut read).await;
        drop(read);

        // A transactional writer on the (only) connection: its BEGIN says READ WRITE, and the
        // connection stays read-only for the next reader.
        let mut write = manager.session::<Postgres>("main").unwrap();
        insert(&mut write, &db, 1).await.unwrap();
        assert_eq!(backend_pid(&mut write).await, pid, "the same connection");
        assert_eq!(setting(&mut write, "transaction_read_only").await, "off");
        assert_eq!(
            setting(&mut write, "default_transaction_read_only").await,
            "on"
        );
        write.commit().await.unwrap();
        drop(write);
        assert_eq!(committed(&db).await, 1);

        // An autocommit writer turns the connection read-write.
        let mut auto = manager
            .session::<Postgres>("main")
            .unwrap()
            .autocommit(true);
        insert(&mut auto, &db, 2).await.unwrap();
        assert_eq!(backend_pid(&mut auto).await, pid);
        assert_eq!(
            setting(&mut auto, "default_transaction_read_only").await,
            "off"
        );
        drop(auto);
        assert_eq!(committed(&db).await, 2);

        // And the next reader makes it read-only again.
        let mut read = manager.read_session::<Postgres>("main").unwrap();
        let err = insert(&mut read, &db, 3).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err}");
        assert!(own_transaction(&mut read).await);
        assert_eq!(backend_pid(&mut read).await, pid);
        drop(read);
        assert_eq!(committed(&db).await, 2);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

/// Two statements of `session` share one transaction: its time, and the second is not in a
/// transaction of its own.
async fn one_transaction(session: &mut Session<Postgres>) -> bool {
    let first: String = fetch_string(&mut *session, "SELECT transaction_timestamp()::text")
        .await
        .unwrap();
    let second: String = fetch_string(&mut *session, "SELECT transaction_timestamp()::text")
        .await
        .unwrap();
    first == second && !own_transaction(session).await
}

#[tokio::test]
async fn pg_stronger_isolation_and_begin_keep_the_transaction() {
    common::within_limit(
        "pg_stronger_isolation_and_begin_keep_the_transaction",
        async {
            let db = TestDb::new(Kind::Postgres).await;
            let manager = db.manager(|c| c.max_connections(1));
            for level in [IsolationLevel::RepeatableRead, IsolationLevel::Serializable] {
                let mut read = manager
                    .read_session::<Postgres>("main")
                    .unwrap()
                    .isolation(level);
                assert!(one_transaction(&mut read).await, "{level:?}");
                let pid = backend_pid(&mut read).await;
                assert_eq!(pg_state(&db, pid).await, "idle in transaction");
                assert_eq!(setting(&mut read, "transaction_read_only").await, "on");
                read.commit().await.unwrap();
            }
            // A transaction opened on purpose, and a savepoint.
            let mut read = manager.read_session::<Postgres>("main").unwrap();
            assert!(own_transaction(&mut read).await);
            read.begin().await.unwrap();
            assert!(read.in_transaction());
            assert!(one_transaction(&mut read).await, "begin()");
            assert_eq!(setting(&mut read, "transaction_read_only").await, "on");
            read.commit().await.unwrap();
            assert!(
                own_transaction(&mut read).await,
                "after the commit, none again"
            );
            {
                let mut savepoint = read.savepoint().await.unwrap();
                assert!(savepoint.in_transaction());
                assert!(one_transaction(&mut savepoint).await, "a savepoint");
                savepoint.commit().await.unwrap();
            }
            read.commit().await.unwrap();
            drop(read);
            manager.close(Duration::from_secs(5)).await.unwrap();
            db.finish().await;
        },
    )
    .await;
}

#[tokio::test]
async fn pg_a_stronger_server_default_is_learned_not_guessed() {
    common::within_limit("pg_a_stronger_server_default_is_learned", async {
        let db = TestDb::new(Kind::Postgres).await;
        // The connections' default, as a role's or a database's setting would make it.
        let separator = if db.url.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{separator}options=-c%20default_transaction_isolation%3Dserializable",
            db.url
        );
        let config = BindConfig::new(url.as_str())
            .application_name(db.tag.as_str())
            .acquire_timeout(Duration::from_secs(10))
            .max_connections(1);
        let manager = BindManager::builder().bind("main", config).build().unwrap();
        let mut read = manager.read_session::<Postgres>("main").unwrap();
        assert!(one_transaction(&mut read).await, "the server's default");
        assert_eq!(
            setting(&mut read, "transaction_isolation").await,
            "serializable"
        );
        read.commit().await.unwrap();
        drop(read);
        // Asking for READ COMMITTED on such a connection: its statements would run at the
        // server's SERIALIZABLE without a BEGIN that says otherwise.
        let mut read = manager
            .read_session::<Postgres>("main")
            .unwrap()
            .isolation(IsolationLevel::ReadCommitted);
        assert!(one_transaction(&mut read).await, "read committed asked for");
        assert_eq!(
            setting(&mut read, "transaction_isolation").await,
            "read committed"
        );
        drop(read);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn pg_the_opt_out_restores_begin_and_leaves_the_connection_alone() {
    common::within_limit("pg_the_opt_out_restores_begin", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1).read_only_without_begin(false));
        table::<Postgres>(&manager, &db).await;
        let mut read = manager.read_session::<Postgres>("main").unwrap();
        assert!(one_transaction(&mut read).await);
        let pid = backend_pid(&mut read).await;
        assert_eq!(pg_state(&db, pid).await, "idle in transaction");
        assert_eq!(setting(&mut read, "transaction_read_only").await, "on");
        assert_eq!(
            setting(&mut read, "default_transaction_read_only").await,
            "off"
        );
        let err = insert(&mut read, &db, 1).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err}");
        drop(read);
        assert_eq!(committed(&db).await, 0);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn pg_a_read_session_cancelled_at_every_await_leaves_its_connection_clean() {
    common::within_limit("pg_a_read_session_cancelled_at_every_await", async {
        let db = TestDb::new(Kind::Postgres).await;
        let setup = db.manager(|c| c);
        table::<Postgres>(&setup, &db).await;
        setup.close(Duration::from_secs(5)).await.unwrap();
        let (mut finished, mut polls) = (false, 1);
        while !finished {
            // A new connection each time: the cut may fall in the SET that makes it read-only.
            let manager = db.manager(|c| c.max_connections(1));
            let mut read = manager.read_session::<Postgres>("main").unwrap();
            finished = cancel_after(own_transaction(&mut read), polls)
                .await
                .is_some();
            drop(read);
            // Whatever the cut left, the connection serves a writer and then a reader.
            let mut write = manager.session::<Postgres>("main").unwrap();
            insert(&mut write, &db, polls as i64).await.unwrap();
            write.commit().await.unwrap();
            drop(write);
            let mut read = manager.read_session::<Postgres>("main").unwrap();
            let err = insert(&mut read, &db, -1).await.unwrap_err();
            assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err}");
            assert!(own_transaction(&mut read).await);
            drop(read);
            manager.close(Duration::from_secs(5)).await.unwrap();
            assert_eq!(committed(&db).await, polls as i64, "after {polls} polls");
            polls += 1;
            assert!(polls < 200, "the read never finished");
        }
        assert_eq!(db.open_transactions().await, Some(0));
        db.finish().await;
    })
    .await;
}

/// SQLite's read-only transactions are `PRAGMA query_only = ON; BEGIN`: a read session cut off
/// at any await, recovered in the background, gives its connection back writable.
#[tokio::test]
async fn sqlite_a_read_session_cancelled_at_every_await_leaves_its_connection_writable() {
    common::within_limit("sqlite_a_read_session_cancelled_at_every_await", async {
        let db = TestDb::new(Kind::SqliteFile).await;
        let manager = db.manager(|c| c.max_connections(1));
        table::<sqlx::Sqlite>(&manager, &db).await;
        let count = format!("SELECT COUNT(*) FROM {}", db.table);
        let (mut finished, mut polls) = (false, 1);
        while !finished {
            let mut read = manager.read_session::<sqlx::Sqlite>("main").unwrap();
            finished = cancel_after(fetch_i64(&mut read, sql(count.clone())), polls)
                .await
                .is_some();
            drop(read);
            // The one connection, recovered or replaced, takes a write.
            let mut write = manager.session::<sqlx::Sqlite>("main").unwrap();
            insert(&mut write, &db, polls as i64)
                .await
                .unwrap_or_else(|e| panic!("a write after a read cut at {polls} polls: {e}"));
            write.commit().await.unwrap();
            drop(write);
            // Past the first few, half again as many polls each time: however slow a loaded
            // machine makes the read, the loop ends (`within_limit` bounds the whole).
            polls = if polls < 32 { polls + 1 } else { polls * 3 / 2 };
        }
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn pg_a_dead_connection_at_the_first_statement_is_replaced_unseen() {
    common::within_limit("pg_a_dead_connection_is_replaced", async {
        use futures_util::TryStreamExt;
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1).health_check(HealthCheck::Never));
        table::<Postgres>(&manager, &db).await;
        let mut read = manager.read_session::<Postgres>("main").unwrap();
        let first = backend_pid(&mut read).await; // the connection is read-only now
        drop(read);
        pg_terminate(&db, first).await;

        // fetch_one: the statement goes again on a new connection.
        let mut read = manager.read_session::<Postgres>("main").unwrap();
        let second = backend_pid(&mut read).await;
        assert_ne!(second, first);
        assert!(own_transaction(&mut read).await, "it ran without BEGIN");
        drop(read);
        pg_terminate(&db, second).await;

        // A stream, which `query_as(..).fetch_all` reads: the same.
        let mut read = manager.read_session::<Postgres>("main").unwrap();
        let pids: Vec<(i32,)> = sqlx::query_as::<_, (i32,)>("SELECT pg_backend_pid()")
            .fetch(&mut read)
            .try_collect()
            .await
            .unwrap();
        let third = i64::from(pids[0].0);
        assert!(third != first && third != second);
        drop(read);
        let status = manager.status();
        assert_eq!(status[0].discarded, 2, "the two dead connections");
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

// ----- MariaDB -----

/// One of the server's command counters for the session's own connection.
async fn counter(session: &mut Session<MySql>, name: &str) -> i64 {
    fetch_i64(
        &mut *session,
        sql(format!(
            "SELECT CAST(VARIABLE_VALUE AS SIGNED) FROM information_schema.SESSION_STATUS \
             WHERE VARIABLE_NAME = '{name}'"
        )),
    )
    .await
    .unwrap()
}

async fn my_variable(session: &mut Session<MySql>, name: &str) -> i64 {
    fetch_i64(
        &mut *session,
        sql(format!("SELECT CAST(@@{name} AS SIGNED)")),
    )
    .await
    .unwrap()
}

/// MariaDB's read-only error: SQLSTATE 25006, error 1792.
fn refused_as_read_only(err: &sqlx::Error) -> bool {
    let number = err
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .map(|e| e.number());
    sqlstate(err).as_deref() == Some("25006") && number == Some(1792)
}

#[tokio::test]
async fn mariadb_read_sessions_at_repeatable_read_keep_their_transaction() {
    common::within_limit("mariadb_read_sessions_at_repeatable_read", async {
        let db = TestDb::new(Kind::MySql).await;
        let manager = db.manager(|c| c.max_connections(1));
        let mut read = manager.read_session::<MySql>("main").unwrap();
        let begins = counter(&mut read, "COM_BEGIN").await;
        read.commit().await.unwrap();
        let again = counter(&mut read, "COM_BEGIN").await;
        assert_eq!(again, begins + 1, "START TRANSACTION READ ONLY, as before");
        assert_eq!(my_variable(&mut read, "autocommit").await, 0, "untouched");
        drop(read);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn mariadb_read_sessions_at_read_committed_send_no_begin() {
    common::within_limit("mariadb_read_sessions_at_read_committed", async {
        let db = TestDb::new(Kind::MySql).await;
        let manager = db.manager(|c| {
            c.max_connections(1)
                .isolation(IsolationLevel::ReadCommitted)
        });
        table::<MySql>(&manager, &db).await;
        let mut read = manager.read_session::<MySql>("main").unwrap();
        let (begins, commits) = (
            counter(&mut read, "COM_BEGIN").await,
            counter(&mut read, "COM_COMMIT").await,
        );
        read.commit().await.unwrap();
        let n = fetch_i64(&mut read, sql(format!("SELECT COUNT(*) FROM {}", db.table)))
            .await
            .unwrap();
        assert_eq!(n, 0);
        read.commit().await.unwrap();
        assert_eq!(counter(&mut read, "COM_BEGIN").await, begins, "no BEGIN");
        assert_eq!(counter(&mut read, "COM_COMMIT").await, commits, "no COMMIT");
        assert_eq!(my_variable(&mut read, "autocommit").await, 1);
        assert_eq!(my_variable(&mut read, "tx_read_only").await, 1);
        let err = insert(&mut read, &db, 1).await.unwrap_err();
        assert!(refused_as_read_only(&err), "{err}");
        assert_eq!(my_variable(&mut read, "autocommit").await, 1, "reads on");
        drop(read);
        assert_eq!(committed(&db).await, 0, "nothing landed");

        // A transactional writer on the (only) connection: START TRANSACTION READ WRITE.
        let mut write = manager.session::<MySql>("main").unwrap();
        let begins = counter(&mut write, "COM_BEGIN").await;
        write.commit().await.unwrap();
        insert(&mut write, &db, 1).await.unwrap();
        write.commit().await.unwrap();
        assert_eq!(counter(&mut write, "COM_BEGIN").await, begins + 2);
        write.commit().await.unwrap();
        drop(write);
        assert_eq!(committed(&db).await, 1);

        // An autocommit writer turns the connection read-write.
        let mut auto = manager.session::<MySql>("main").unwrap().autocommit(true);
        insert(&mut auto, &db, 2).await.unwrap();
        assert_eq!(my_variable(&mut auto, "tx_read_only").await, 0);
        drop(auto);
        assert_eq!(committed(&db).await, 2);

        // The opt-out: BEGIN again, the connection left alone.
        let opted_out = db.manager(|c| {
            c.max_connections(1)
                .isolation(IsolationLevel::ReadCommitted)
                .read_only_without_begin(false)
        });
        let mut read = opted_out.read_session::<MySql>("main").unwrap();
        let begins = counter(&mut read, "COM_BEGIN").await;
        read.commit().await.unwrap();
        assert_eq!(counter(&mut read, "COM_BEGIN").await, begins + 1);
        assert_eq!(my_variable(&mut read, "autocommit").await, 0, "untouched");
        let err = insert(&mut read, &db, 3).await.unwrap_err();
        assert!(refused_as_read_only(&err), "{err}");
        drop(read);
        assert_eq!(committed(&db).await, 2);
        opted_out.close(Duration::from_secs(5)).await.unwrap();
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn mariadb_an_autocommit_read_session_cannot_write() {
    common::within_limit("mariadb_an_autocommit_read_session_cannot_write", async {
        let db = TestDb::new(Kind::MySql).await;
        let manager = db.manager(|c| c.max_connections(1));
        table::<MySql>(&manager, &db).await;
        let mut auto = manager
            .read_session::<MySql>("main")
            .unwrap()
            .autocommit(true);
        let err = insert(&mut auto, &db, 1).await.unwrap_err();
        assert!(refused_as_read_only(&err), "{err}");
        drop(auto);
        // The next writer, transactional, on the same connection.
        let mut write = manager.session::<MySql>("main").unwrap();
        insert(&mut write, &db, 2).await.unwrap();
        write.commit().await.unwrap();
        drop(write);
        assert_eq!(committed(&db).await, 1);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn mariadb_a_dead_connection_at_the_first_statement_is_replaced_unseen() {
    common::within_limit("mariadb_a_dead_connection_is_replaced", async {
        let db = TestDb::new(Kind::MySql).await;
        let manager = db.manager(|c| {
            c.max_connections(1)
                .health_check(HealthCheck::Never)
                .isolation(IsolationLevel::ReadCommitted)
        });
        let mut read = manager.read_session::<MySql>("main").unwrap();
        let first = fetch_i64(&mut read, db.connection_id_query())
            .await
            .unwrap();
        assert_eq!(my_variable(&mut read, "tx_read_only").await, 1);
        drop(read);
        db.kill_connection(first).await;
        eventually("the killed connection is gone", || async {
            let mut conn = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
            let left: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?",
            )
            .bind(first)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            conn.close().await.ok();
            left == 0
        })
        .await;
        let mut read = manager.read_session::<MySql>("main").unwrap();
        let second = fetch_i64(&mut read, db.connection_id_query())
            .await
            .unwrap();
        assert_ne!(second, first);
        drop(read);
        assert_eq!(manager.status()[0].discarded, 1);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

// ----- the web layers: safe methods read-only, opt-in -----

/// Whether the request's session runs its statements in transactions of their own: "true" or
/// "false" (see [`own_transaction`]). Asked by its second statement: a transaction's first one
/// without parameters carries its BEGIN, in one message (tests/piggyback.rs).
async fn web_own_transaction(session: &mut dbscope::ScopedSession<Postgres>) -> String {
    use sqlx::Row;
    sqlx::raw_sql("SELECT 1")
        .execute(&mut *session)
        .await
        .unwrap();
    let row = sqlx::raw_sql("SELECT statement_timestamp() = transaction_timestamp()")
        .fetch_one(session)
        .await
        .unwrap();
    row.get::<bool, _>(0).to_string()
}

/// Inserts row `id` in the request's session: 201, or 500 with the statement's SQLSTATE.
async fn web_write(
    session: &mut dbscope::ScopedSession<Postgres>,
    table: &str,
    id: i64,
) -> (u16, String) {
    let stmt = format!("INSERT INTO {table} (id, v) VALUES ({id}, 'web')");
    match sqlx::query(sql(stmt)).execute(session).await {
        Ok(_) => (201, "written".to_owned()),
        Err(e) => (500, sqlstate(&e).unwrap_or_else(|| e.to_string())),
    }
}

async fn request(client: &reqwest::Client, method: reqwest::Method, url: String) -> (u16, String) {
    let response = client.request(method, url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The routes both frameworks serve, and what each answers: `/rows/{id}` under a layer with
/// safe methods read-only; `/side-effect/{id}` turning it off for its route; `/plain/{id}` and
/// `/route-only/{id}` under a layer without it, the latter turning it on for its route.
async fn check_safe_methods(db: &TestDb, base: &str) {
    use reqwest::Method;
    let client = reqwest::Client::new();
    let at = |path: &str| format!("{base}{path}");
    assert_eq!(
        request(&client, Method::GET, at("/rows/1")).await,
        (500, "25006".to_owned()),
        "a GET that writes gets the server's read-only error"
    );
    assert_eq!(
        request(&client, Method::POST, at("/rows/2")).await,
        (201, "written".to_owned()),
        "a POST writes"
    );
    assert_eq!(
        request(&client, Method::GET, at("/own")).await,
        (200, "true".to_owned()),
        "a GET's read session runs without BEGIN"
    );
    assert_eq!(
        request(&client, Method::POST, at("/own")).await,
        (200, "false".to_owned()),
        "a POST's session is in a transaction"
    );
    assert_eq!(
        request(&client, Method::GET, at("/side-effect/3")).await,
        (201, "written".to_owned()),
        "a route that turns it off"
    );
    assert_eq!(
        request(&client, Method::GET, at("/plain/4")).await,
        (201, "written".to_owned()),
        "off by default"
    );
    assert_eq!(
        request(&client, Method::GET, at("/route-only/5")).await,
        (500, "25006".to_owned()),
        "a route that turns it on"
    );
    assert_eq!(
        request(&client, Method::DELETE, at("/route-only/6")).await,
        (201, "written".to_owned()),
        "other methods are left alone"
    );
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let ids: Vec<i64> = sqlx::query_scalar(sql(format!("SELECT id FROM {} ORDER BY id", db.table)))
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(ids, [2, 3, 4, 6], "only the writes that could land did");
    conn.close().await.ok();
}

#[tokio::test]
async fn axum_safe_methods_read_only_through_a_real_server() {
    use axum::Router;
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::get;
    use dbscope::axum::DbSession;
    use dbscope::tower::ScopeLayer;

    type Db = DbSession<common::PgMain>;

    async fn own(mut db: Db) -> String {
        web_own_transaction(&mut db).await
    }

    async fn write(
        State(table): State<std::sync::Arc<str>>,
        Path(id): Path<i64>,
        mut db: Db,
    ) -> (StatusCode, String) {
        let (status, body) = web_write(&mut db, &table, id).await;
        (StatusCode::from_u16(status).unwrap(), body)
    }

    common::within_limit("axum_safe_methods_read_only", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c);
        table::<Postgres>(&manager, &db).await;
        let table: std::sync::Arc<str> = db.table.as_str().into();
        let reads = Router::new()
            .route("/rows/{id}", get(write).post(write))
            .route("/own", get(own).post(own))
            .route(
                "/side-effect/{id}",
                get(write).route_layer(ScopeLayer::new(&manager).read_only_safe_methods(false)),
            )
            .layer(ScopeLayer::new(&manager).read_only_safe_methods(true));
        let plain = Router::new()
            .route("/plain/{id}", get(write))
            .route(
                "/route-only/{id}",
                get(write)
                    .delete(write)
                    .route_layer(ScopeLayer::new(&manager).read_only_safe_methods(true)),
            )
            .layer(ScopeLayer::new(&manager));
        let app = reads.merge(plain).with_state(table);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        check_safe_methods(&db, &base).await;
        server.abort();
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn actix_safe_methods_read_only_through_a_real_server() {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use dbscope::actix::{DbSession, ScopeMiddleware};

    type Db = DbSession<common::PgMain>;

    async fn own(mut db: Db) -> String {
        web_own_transaction(&mut db).await
    }

    async fn write(table: web::Data<String>, id: web::Path<i64>, mut db: Db) -> HttpResponse {
        let (status, body) = web_write(&mut db, &table, *id).await;
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).body(body)
    }

    common::within_limit("actix_safe_methods_read_only", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c);
        table::<Postgres>(&manager, &db).await;
        let (app_manager, table) = (manager.clone(), db.table.clone());
        let server = HttpServer::new(move || {
            let m = &app_manager;
            App::new()
                .app_data(web::Data::new(table.clone()))
                .service(
                    web::scope("/rows")
                        .wrap(ScopeMiddleware::new(m).read_only_safe_methods(true))
                        .route("/{id}", web::get().to(write))
                        .route("/{id}", web::post().to(write)),
                )
                .service(
                    web::resource("/own")
                        .wrap(ScopeMiddleware::new(m).read_only_safe_methods(true))
                        .get(own)
                        .post(own),
                )
                .service(
                    web::scope("/side-effect")
                        .wrap(ScopeMiddleware::new(m).read_only_safe_methods(false))
                        .wrap(ScopeMiddleware::new(m).read_only_safe_methods(true))
                        .route("/{id}", web::get().to(write)),
                )
                .service(
                    web::scope("/plain")
                        .wrap(ScopeMiddleware::new(m))
                        .route("/{id}", web::get().to(write)),
                )
                .service(
                    web::scope("/route-only")
                        .wrap(ScopeMiddleware::new(m).read_only_safe_methods(true))
                        .wrap(ScopeMiddleware::new(m))
                        .route("/{id}", web::get().to(write))
                        .route("/{id}", web::delete().to(write)),
                )
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let base = format!("http://{}", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        check_safe_methods(&db, &base).await;
        handle.stop(true).await;
        task.await.unwrap().unwrap();
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn pg_a_stream_dropped_after_its_first_row_leaves_a_read_session_usable() {
    common::within_limit("pg_a_stream_dropped_in_a_read_session", async {
        use futures_util::TryStreamExt;
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1));
        let mut read = manager.read_session::<Postgres>("main").unwrap();
        let first: Option<i32> = sqlx::query_scalar("SELECT generate_series(1, 10000)")
            .fetch(&mut read)
            .try_next()
            .await
            .unwrap();
        assert_eq!(first, Some(1));
        // Not a cancellation: the session goes on, on the same connection, with nothing open.
        assert!(own_transaction(&mut read).await);
        let pid = backend_pid(&mut read).await;
        assert_eq!(pg_state(&db, pid).await, "idle");
        drop(read);
        let status = manager.status();
        assert_eq!((status[0].discarded, status[0].recovered), (0, 0));
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn mariadb_a_read_session_cancelled_at_every_await_leaves_its_connection_clean() {
    common::within_limit("mariadb_a_read_session_cancelled_at_every_await", async {
        let db = TestDb::new(Kind::MySql).await;
        let rc = |c: BindConfig| c.isolation(IsolationLevel::ReadCommitted);
        let setup = db.manager(rc);
        table::<MySql>(&setup, &db).await;
        setup.close(Duration::from_secs(5)).await.unwrap();
        let (mut finished, mut polls) = (false, 1);
        while !finished {
            // A new connection each time (`autocommit = 0` from its setup): the cut may fall in
            // the SET that turns autocommit on and makes it read-only.
            let manager = db.manager(|c| rc(c).max_connections(1));
            let mut read = manager.read_session::<MySql>("main").unwrap();
            let count = format!("SELECT COUNT(*) FROM {}", db.table);
            finished = cancel_after(fetch_i64(&mut read, sql(count)), polls)
                .await
                .is_some();
            drop(read);
            // Whatever the cut left, the connection (or its replacement) serves a writer, whose
            // work commits, and then a reader, which cannot write.
            let mut write = manager.session::<MySql>("main").unwrap();
            insert(&mut write, &db, polls as i64).await.unwrap();
            write.commit().await.unwrap();
            drop(write);
            let mut read = manager.read_session::<MySql>("main").unwrap();
            let err = insert(&mut read, &db, -1).await.unwrap_err();
            assert!(refused_as_read_only(&err), "{err}");
            assert_eq!(my_variable(&mut read, "autocommit").await, 1);
            drop(read);
            manager.close(Duration::from_secs(5)).await.unwrap();
            assert_eq!(committed(&db).await, polls as i64, "after {polls} polls");
            polls += 1;
            assert!(polls < 200, "the read never finished");
        }
        assert_eq!(db.open_transactions().await, Some(0));
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn pg_after_lending_the_raw_connection_the_next_session_states_its_mode() {
    common::within_limit("pg_after_lending_the_raw_connection", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1));
        table::<Postgres>(&manager, &db).await;
        let mut read = manager.read_session::<Postgres>("main").unwrap();
        assert!(own_transaction(&mut read).await);
        // Code on the raw connection may change what dbscope set.
        let raw = read.connection().await.unwrap();
        sqlx::raw_sql("SET default_transaction_read_only = off")
            .execute(raw)
            .await
            .unwrap();
        drop(read);
        // The next read session makes the connection read-only again.
        let mut read = manager.read_session::<Postgres>("main").unwrap();
        let err = insert(&mut read, &db, 1).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err}");
        drop(read);
        assert_eq!(committed(&db).await, 0);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}
