//! PostgreSQL: a transaction's BEGIN goes in the same message as its first statement when that
//! statement has no parameters (issue 14, item 3), proven from the server:
//!
//! - one message: in it, `statement_timestamp() = transaction_timestamp()` (both are the time
//!   the message arrived), inside a transaction that `pg_stat_activity` shows open afterwards;
//!   with a BEGIN sent on its own, the statement's time is later than the transaction's;
//! - what the backend last received is `pg_stat_activity.query`: a statement the session
//!   refuses, or a BEGIN it has not sent, leaves it unchanged;
//! - a failed first message (a syntax error: BEGIN never ran; a missing table: it ran, and the
//!   transaction is aborted) leaves the session refusing statements until it rolls back, and
//!   nothing of it lands;
//! - the BEGIN's result is not the caller's: `fetch_many` yields what an autocommit session
//!   yields for the same SQL;
//! - a cancellation while the message waits on a lock leaves nothing open on the server.

mod common;

use std::time::Duration;

use common::{Kind, TestDb, eventually, sql};
use dbscope::{BindManager, Session};
use futures_util::TryStreamExt;
use sqlx::{Connection, Either, Postgres, Row};

/// Creates the test's table, committed.
async fn table(manager: &BindManager, db: &TestDb) {
    let mut session = manager.session::<Postgres>("main").unwrap();
    let ddl = format!(
        "CREATE TABLE {} (id BIGINT PRIMARY KEY, v VARCHAR(50))",
        db.table
    );
    sqlx::query(sql(ddl)).execute(&mut session).await.unwrap();
    session.commit().await.unwrap();
}

/// Rows of the test's table, read on a connection of its own: what is committed.
async fn committed(db: &TestDb) -> i64 {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let n: i64 = sqlx::query_scalar(sql(format!("SELECT COUNT(*) FROM {}", db.table)))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    n
}

/// `INSERT` of row `id` as a simple query (no parameters: it can carry a BEGIN).
fn raw_insert(db: &TestDb, id: i64) -> sqlx::RawSql {
    sqlx::raw_sql(sql(format!(
        "INSERT INTO {} (id, v) VALUES ({id}, 'row {id}')",
        db.table
    )))
}

/// The same `INSERT` with a parameter (the extended protocol: BEGIN goes first, alone).
async fn bound_insert(session: &mut Session<Postgres>, db: &TestDb, id: i64) -> sqlx::Result<()> {
    let stmt = format!("INSERT INTO {} (id, v) VALUES ($1, 'row')", db.table);
    sqlx::query(sql(stmt))
        .bind(id)
        .execute(session)
        .await
        .map(drop)
}

/// `pg_stat_activity`'s state and last query of the test's one connection, from another.
async fn activity(db: &TestDb) -> (String, String) {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let row: (String, String) = sqlx::query_as(
        "SELECT state, query FROM pg_stat_activity WHERE application_name = $1 \
         AND pid <> pg_backend_pid()",
    )
    .bind(&db.tag)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.ok();
    row
}

fn aborted(err: sqlx::Error) -> bool {
    dbscope::Error::from(err).is_transaction_aborted()
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

const SAME_TIME: &str = "SELECT statement_timestamp() = transaction_timestamp(), \
                         transaction_timestamp()::text";

#[tokio::test]
async fn pg_the_first_statement_without_parameters_carries_begin() {
    common::within_limit("pg_the_first_statement_carries_begin", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1));
        table(&manager, &db).await;
        let mut session = manager.session::<Postgres>("main").unwrap();

        // One message: BEGIN and the statement arrived together.
        let row = sqlx::raw_sql(SAME_TIME)
            .fetch_one(&mut session)
            .await
            .unwrap();
        let (one_message, started): (bool, String) = (row.get(0), row.get(1));
        assert!(one_message, "BEGIN and the first statement in one message");
        assert!(session.in_transaction());
        let (state, query) = activity(&db).await;
        assert_eq!(state, "idle in transaction");
        assert!(query.starts_with("BEGIN; SELECT"), "{query}");
        // The next statements are in the same transaction, later than its start.
        let row = sqlx::raw_sql(SAME_TIME)
            .fetch_one(&mut session)
            .await
            .unwrap();
        assert!(!row.get::<bool, _>(0), "a second message");
        assert_eq!(row.get::<String, _>(1), started);
        let now: String = sqlx::query_scalar("SELECT now()::text")
            .fetch_one(&mut session)
            .await
            .unwrap();
        assert_eq!(now, started);
        // A write in it gets the transaction's id, kept until the commit.
        raw_insert(&db, 1).execute(&mut session).await.unwrap();
        let xid: Option<i64> = sqlx::query_scalar("SELECT txid_current_if_assigned()")
            .fetch_one(&mut session)
            .await
            .unwrap();
        assert!(xid.is_some());
        assert_eq!(committed(&db).await, 0);
        session.commit().await.unwrap();
        assert_eq!(committed(&db).await, 1);
        assert_eq!(activity(&db).await.0, "idle");

        // A first statement with a parameter: BEGIN alone, then the statement, in it.
        let row = sqlx::query(SAME_TIME)
            .fetch_one(&mut session)
            .await
            .unwrap();
        assert!(!row.get::<bool, _>(0), "sqlx::query: the extended protocol");
        assert_eq!(activity(&db).await.0, "idle in transaction");
        session.rollback().await.unwrap();
        bound_insert(&mut session, &db, 2).await.unwrap();
        assert_eq!(activity(&db).await.0, "idle in transaction");
        let row = sqlx::raw_sql(SAME_TIME)
            .fetch_one(&mut session)
            .await
            .unwrap();
        assert!(!row.get::<bool, _>(0));
        session.rollback().await.unwrap();
        assert_eq!(committed(&db).await, 1, "the rollback undid row 2");

        // Commit after a piggybacked write lands; a rollback undoes one.
        raw_insert(&db, 3).execute(&mut session).await.unwrap();
        session.commit().await.unwrap();
        assert_eq!(committed(&db).await, 2);
        let done = raw_insert(&db, 4).execute(&mut session).await.unwrap();
        assert_eq!(done.rows_affected(), 1);
        session.rollback().await.unwrap();
        assert_eq!(committed(&db).await, 2);

        drop(session);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn pg_a_syntax_error_in_the_first_message_refuses_what_follows() {
    common::within_limit("pg_a_syntax_error_refuses_what_follows", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1));
        table(&manager, &db).await;
        let mut session = manager.session::<Postgres>("main").unwrap();
        let failed = format!(
            "INSERT INTO {} (id, v) VALUES (1, 'one'); SELEC oops",
            db.table
        );
        let err = sqlx::raw_sql(sql(failed))
            .execute(&mut session)
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("42601"), "{err}");
        // Nothing ran: no transaction is open on the server.
        let (state, sent) = activity(&db).await;
        assert_eq!(state, "idle");
        // Refused, unsent: without that, this would run in autocommit and land.
        let err = raw_insert(&db, 2).execute(&mut session).await.unwrap_err();
        assert!(aborted(err));
        let err = bound_insert(&mut session, &db, 3).await.unwrap_err();
        assert!(aborted(err));
        assert!(
            session
                .savepoint()
                .await
                .unwrap_err()
                .is_transaction_aborted()
        );
        assert!(
            session
                .connection()
                .await
                .unwrap_err()
                .is_transaction_aborted()
        );
        assert_eq!(
            activity(&db).await.1,
            sent,
            "nothing more reached the server"
        );
        assert_eq!(committed(&db).await, 0);
        // COMMIT rolls back and says so; the next transaction works.
        assert!(session.commit().await.unwrap_err().is_transaction_aborted());
        assert!(!session.in_transaction());
        raw_insert(&db, 4).execute(&mut session).await.unwrap();
        session.commit().await.unwrap();
        assert_eq!(committed(&db).await, 1);

        // Again, ended by a rollback this time.
        let failed = format!("SELEC 1; INSERT INTO {} VALUES (5, 'five')", db.table);
        sqlx::raw_sql(sql(failed))
            .fetch_all(&mut session)
            .await
            .unwrap_err();
        let err = raw_insert(&db, 6).execute(&mut session).await.unwrap_err();
        assert!(aborted(err));
        session.rollback().await.unwrap();
        raw_insert(&db, 7).execute(&mut session).await.unwrap();
        session.commit().await.unwrap();
        assert_eq!(committed(&db).await, 2);

        drop(session);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn pg_a_failed_first_statement_that_began_refuses_what_follows() {
    common::within_limit("pg_a_failed_first_statement_that_began", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1));
        table(&manager, &db).await;
        let mut session = manager.session::<Postgres>("main").unwrap();
        let err = sqlx::raw_sql("SELECT * FROM dbscope_no_such_table")
            .fetch_optional(&mut session)
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("42P01"), "{err}");
        // BEGIN ran: the transaction is open, aborted.
        let (state, sent) = activity(&db).await;
        assert_eq!(state, "idle in transaction (aborted)");
        let err = raw_insert(&db, 1).execute(&mut session).await.unwrap_err();
        assert!(aborted(err));
        let err = sqlx::raw_sql("SELECT 1")
            .fetch_many(&mut session)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert!(aborted(err));
        assert_eq!(
            activity(&db).await.1,
            sent,
            "nothing more reached the server"
        );
        assert!(session.commit().await.unwrap_err().is_transaction_aborted());
        assert_eq!(activity(&db).await.0, "idle", "rolled back");
        raw_insert(&db, 2).execute(&mut session).await.unwrap();
        session.commit().await.unwrap();
        assert_eq!(committed(&db).await, 1);

        // Dropped in that state: rolled back, nothing left open.
        sqlx::raw_sql("SELECT * FROM dbscope_no_such_table")
            .execute(&mut session)
            .await
            .unwrap_err();
        assert_eq!(db.open_transactions().await, Some(1));
        drop(session);
        eventually(
            "the dropped session's transaction is rolled back",
            || async { db.open_transactions().await == Some(0) },
        )
        .await;
        assert_eq!(committed(&db).await, 1);

        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

/// Every item of `fetch_many` over `sql`, as text.
async fn items(session: &mut Session<Postgres>, text: &'static str) -> Vec<String> {
    sqlx::raw_sql(text)
        .fetch_many(session)
        .map_ok(|item| match item {
            Either::Left(done) => format!("done {}", done.rows_affected()),
            Either::Right(row) => format!("row {}", row.get::<i32, _>(0)),
        })
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn pg_the_begin_result_is_not_the_callers() {
    common::within_limit("pg_the_begin_result_is_not_the_callers", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1));
        let text = "SELECT 1; SELECT 2 UNION ALL SELECT 3";
        let mut autocommit = manager
            .session::<Postgres>("main")
            .unwrap()
            .autocommit(true);
        let expected = items(&mut autocommit, text).await;
        assert_eq!(expected, ["row 1", "done 1", "row 2", "row 3", "done 2"]);
        drop(autocommit);
        let mut session = manager.session::<Postgres>("main").unwrap();
        assert_eq!(items(&mut session, text).await, expected);
        assert_eq!(activity(&db).await.0, "idle in transaction");
        // fetch_all and fetch_optional see the statement's rows only.
        session.rollback().await.unwrap();
        let rows = sqlx::raw_sql(text).fetch_all(&mut session).await.unwrap();
        assert_eq!(rows.len(), 3);
        session.rollback().await.unwrap();
        let row = sqlx::raw_sql(text)
            .fetch_optional(&mut session)
            .await
            .unwrap();
        assert_eq!(row.unwrap().get::<i32, _>(0), 1);
        session.commit().await.unwrap();

        drop(session);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn pg_savepoints_and_empty_transactions() {
    common::within_limit("pg_savepoints_and_empty_transactions", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1));
        table(&manager, &db).await;
        let mut session = manager.session::<Postgres>("main").unwrap();

        // A savepoint first: BEGIN and SAVEPOINT in one message.
        {
            let mut outer = session.savepoint().await.unwrap();
            assert_eq!(
                activity(&db).await,
                (
                    "idle in transaction".into(),
                    "BEGIN; SAVEPOINT dbscope_2".into()
                )
            );
            raw_insert(&db, 1).execute(&mut *outer).await.unwrap();
            {
                let mut inner = outer.savepoint().await.unwrap();
                raw_insert(&db, 2).execute(&mut *inner).await.unwrap();
                inner.rollback().await.unwrap();
            }
            outer.commit().await.unwrap();
        }
        session.commit().await.unwrap();
        assert_eq!(committed(&db).await, 1);

        // begin() leaves BEGIN to the first statement; a transaction in which nothing ran ends
        // with nothing sent.
        raw_insert(&db, 3).execute(&mut session).await.unwrap();
        session.commit().await.unwrap();
        let before = activity(&db).await;
        assert_eq!(before, ("idle".into(), "COMMIT".into()));
        session.begin().await.unwrap();
        assert!(session.in_transaction());
        session.commit().await.unwrap();
        session.begin().await.unwrap();
        session.rollback().await.unwrap();
        assert_eq!(activity(&db).await, before, "nothing was sent");
        // A first statement after begin() carries it.
        session.begin().await.unwrap();
        let row = sqlx::raw_sql(SAME_TIME)
            .fetch_one(&mut session)
            .await
            .unwrap();
        assert!(row.get::<bool, _>(0));
        session.commit().await.unwrap();

        // An autocommit session's begin(), too.
        let mut autocommit = session.autocommit(true);
        sqlx::raw_sql("SELECT 'autocommit marker'")
            .execute(&mut autocommit)
            .await
            .unwrap();
        autocommit.begin().await.unwrap();
        autocommit.commit().await.unwrap();
        assert_eq!(
            activity(&db).await,
            ("idle".into(), "SELECT 'autocommit marker'".into())
        );
        autocommit.begin().await.unwrap();
        raw_insert(&db, 4).execute(&mut autocommit).await.unwrap();
        assert_eq!(activity(&db).await.0, "idle in transaction");
        autocommit.rollback().await.unwrap();
        assert_eq!(committed(&db).await, 2);

        drop(autocommit);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn pg_a_piggybacked_statement_cancelled_in_flight_leaves_nothing_open() {
    common::within_limit("pg_a_piggybacked_statement_cancelled", async {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = db.manager(|c| c.max_connections(1));
        table(&manager, &db).await;
        // Another connection holds the lock the statement waits for.
        let key: i64 = 0x5069_6767 + i64::from(std::process::id());
        let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut holder)
            .await
            .unwrap();
        let mut session = manager.session::<Postgres>("main").unwrap();
        let stmt = format!(
            "INSERT INTO {} (id, v) SELECT 1, 'one' FROM pg_advisory_xact_lock({key})",
            db.table
        );
        {
            let blocked = sqlx::raw_sql(sql(stmt)).execute(&mut session);
            let mut blocked = std::pin::pin!(blocked);
            let waiting = eventually("the statement waits on the lock, in a transaction", || {
                let db = &db;
                async move {
                    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
                    let waiting: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1 \
                         AND wait_event_type = 'Lock' AND xact_start IS NOT NULL \
                         AND query LIKE 'BEGIN; INSERT%'",
                    )
                    .bind(&db.tag)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                    conn.close().await.ok();
                    waiting == 1
                }
            });
            tokio::select! {
                done = &mut blocked => panic!("the statement finished under the lock: {done:?}"),
                () = waiting => {}
            }
        } // the future is dropped here, the statement in flight
        assert!(session.commit().await.unwrap_err().is_poisoned());
        drop(session);
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut holder)
            .await
            .unwrap();
        eventually(
            "nothing of the session is left in a transaction",
            || async {
                let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
                let locks: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE a.application_name = $1 AND l.locktype = 'advisory'",
                )
                .bind(&db.tag)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                conn.close().await.ok();
                locks == 0 && db.open_transactions().await == Some(0)
            },
        )
        .await;
        assert_eq!(
            committed(&db).await,
            0,
            "the cancelled insert was rolled back"
        );
        // The connection was recovered or replaced: the bind works, and its next transaction
        // piggybacks again.
        let mut session = manager.session::<Postgres>("main").unwrap();
        let row = sqlx::raw_sql(SAME_TIME)
            .fetch_one(&mut session)
            .await
            .unwrap();
        assert!(row.get::<bool, _>(0));
        session.rollback().await.unwrap();
        holder.close().await.ok();
        drop(session);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}
