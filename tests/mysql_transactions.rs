//! MySQL/MariaDB transactions without a BEGIN round trip: a transactional bind's connections run
//! `autocommit = 0`, so a transaction's first statement opens it. Every claim is checked on the
//! server: its per-connection command counters (`information_schema.SESSION_STATUS`), what other
//! connections see, and `information_schema.innodb_trx`.

mod common;

use std::time::Duration;

use common::{Kind, TestDb, eventually, fetch_i64, insert, sql, within_limit};
use dbscope::{BindManager, HealthCheck, IsolationLevel, Session};
use futures_util::TryStreamExt;
use sqlx::MySql;

/// Creates the test's table, committed.
async fn table(manager: &BindManager, db: &TestDb) {
    let mut session = manager.session::<MySql>("main").unwrap();
    let ddl = format!(
        "CREATE TABLE {} (id BIGINT PRIMARY KEY, v VARCHAR(50))",
        db.table
    );
    sqlx::query(sql(ddl)).execute(&mut session).await.unwrap();
    session.commit().await.unwrap();
}

/// One of the server's command counters for the session's own connection (`COM_BEGIN`,
/// `COM_COMMIT`): how many it has run since the connection opened. Reading it is a statement of
/// the session.
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

/// Rows of the test's table, read by a connection of its own (autocommit): what is committed.
async fn committed(manager: &BindManager, db: &TestDb) -> i64 {
    let mut reader = manager
        .session::<MySql>("main")
        .unwrap()
        .isolation(IsolationLevel::ReadCommitted);
    let n = fetch_i64(
        &mut reader,
        sql(format!("SELECT COUNT(*) FROM {}", db.table)),
    )
    .await
    .unwrap();
    reader.commit().await.unwrap();
    n
}

/// A second manager on the same database: its connections are not the first one's.
fn observer(db: &TestDb) -> BindManager {
    db.manager(|c| c.max_connections(1))
}

/// A statement MariaDB interrupts (`max_statement_time`: error 1969, SQLSTATE 70100, which a
/// killed connection's error 1927 shares) leaves a live connection: it is not sent again on
/// another, nor is its connection thrown away.
#[tokio::test]
async fn an_interrupted_statement_is_not_a_lost_connection() {
    within_limit("an_interrupted_statement_is_not_a_lost_connection", async {
        let db = TestDb::new(Kind::MySql).await;
        let manager = db.manager(|c| c.max_connections(2));
        let mut session = manager.session::<MySql>("main").unwrap();
        let err = sqlx::query(
            "SET STATEMENT max_statement_time = 0.001 FOR \
             SELECT SUM(seq % 7) FROM seq_1_to_1000000000",
        )
        .execute(&mut session)
        .await
        .unwrap_err();
        let code = err.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("70100"), "{err}");
        let err = dbscope::Error::from(err);
        assert!(!err.is_connection_lost(), "{err}");
        // The session and its connection go on.
        assert_eq!(fetch_i64(&mut session, "SELECT 1").await.unwrap(), 1);
        session.rollback().await.unwrap();
        drop(session);
        let status = manager.status();
        assert_eq!(
            (status[0].opened, status[0].discarded),
            (1, 0),
            "one connection, kept: {:?}",
            status[0]
        );
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn transactions_send_no_begin() {
    within_limit("transactions_send_no_begin", async {
        let db = TestDb::new(Kind::MySql).await;
        let manager = db.manager(|c| c.max_connections(1));
        table(&manager, &db).await;
        let mut session = manager.session::<MySql>("main").unwrap();
        let (begins, commits) = (
            counter(&mut session, "COM_BEGIN").await,
            counter(&mut session, "COM_COMMIT").await,
        );
        session.commit().await.unwrap(); // ends the transaction the counters' reads opened
        for id in 1..=3 {
            insert(&mut session, &db, id).await.unwrap();
            session.commit().await.unwrap();
        }
        assert_eq!(
            counter(&mut session, "COM_BEGIN").await,
            begins,
            "no BEGIN sent"
        );
        assert_eq!(
            counter(&mut session, "COM_COMMIT").await,
            commits + 4,
            "the counters' transaction and the three inserts' were committed"
        );
        session.rollback().await.unwrap();
        drop(session);
        assert_eq!(committed(&observer(&db), &db).await, 3);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn the_first_statement_opens_a_real_transaction() {
    within_limit("the_first_statement_opens_a_real_transaction", async {
        let db = TestDb::new(Kind::MySql).await;
        let manager = db.manager(|c| c);
        table(&manager, &db).await;
        let others = observer(&db);

        let mut session = manager.session::<MySql>("main").unwrap();
        insert(&mut session, &db, 1).await.unwrap();
        let id = fetch_i64(&mut session, db.connection_id_query())
            .await
            .unwrap();
        assert_eq!(
            committed(&others, &db).await,
            0,
            "not visible before COMMIT"
        );
        // MariaDB's innodb_trx is a snapshot refreshed when idle (another test process may
        // have just read it): wait for one with ours, which stays open until the commit.
        eventually("the server shows the session's transaction", || async {
            db.innodb_transactions()
                .await
                .iter()
                .any(|(conn, _)| *conn == id)
        })
        .await;
        session.commit().await.unwrap();
        assert_eq!(committed(&others, &db).await, 1);

        // Rolled back, and dropped: neither lands, and nothing stays open.
        insert(&mut session, &db, 2).await.unwrap();
        session.rollback().await.unwrap();
        insert(&mut session, &db, 3).await.unwrap();
        drop(session);
        eventually(
            "the dropped session's transaction is rolled back",
            || async {
                !db.innodb_transactions()
                    .await
                    .iter()
                    .any(|(conn, _)| *conn == id)
            },
        )
        .await;
        assert_eq!(committed(&others, &db).await, 1);

        others.close(Duration::from_secs(5)).await.unwrap();
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn an_empty_transaction_ends_without_a_round_trip() {
    within_limit("an_empty_transaction_ends_without_a_round_trip", async {
        let db = TestDb::new(Kind::MySql).await;
        let manager = db.manager(|c| c.max_connections(1));
        let mut session = manager.session::<MySql>("main").unwrap();
        let commits = counter(&mut session, "COM_COMMIT").await;
        session.commit().await.unwrap(); // one COMMIT: the read opened the transaction
        session.begin().await.unwrap();
        session.commit().await.unwrap(); // nothing ran: no COMMIT sent
        session.begin().await.unwrap();
        session.rollback().await.unwrap(); // nor a ROLLBACK
        assert_eq!(counter(&mut session, "COM_COMMIT").await, commits + 1);
        assert_eq!(counter(&mut session, "COM_ROLLBACK").await, 0);
        drop(session);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn other_isolation_levels_begin_explicitly() {
    within_limit("other_isolation_levels_begin_explicitly", async {
        let db = TestDb::new(Kind::MySql).await;
        let manager = db.manager(|c| c.max_connections(1));
        table(&manager, &db).await;
        let mut plain = manager.session::<MySql>("main").unwrap();
        let begins = counter(&mut plain, "COM_BEGIN").await;
        plain.commit().await.unwrap();
        drop(plain);

        let mut session = manager
            .session::<MySql>("main")
            .unwrap()
            .isolation(IsolationLevel::Serializable);
        insert(&mut session, &db, 1).await.unwrap();
        let id = fetch_i64(&mut session, db.connection_id_query())
            .await
            .unwrap();
        // A fresh innodb_trx snapshot, as above.
        eventually("the session's SERIALIZABLE transaction", || async {
            db.innodb_transactions()
                .await
                .iter()
                .any(|(conn, level)| *conn == id && level == "SERIALIZABLE")
        })
        .await;
        session.commit().await.unwrap();
        // Two: the insert's transaction, and the one this read of the counter runs in.
        assert_eq!(counter(&mut session, "COM_BEGIN").await, begins + 2);
        session.commit().await.unwrap();
        drop(session);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

#[tokio::test]
async fn an_autocommit_session_turns_autocommit_back_on_for_its_connection() {
    within_limit(
        "an_autocommit_session_turns_autocommit_back_on_for_its_connection",
        async {
            let db = TestDb::new(Kind::MySql).await;
            let manager = db.manager(|c| c.max_connections(1));
            table(&manager, &db).await;
            let others = observer(&db);

            let mut autocommit = manager.session::<MySql>("main").unwrap().autocommit(true);
            insert(&mut autocommit, &db, 1).await.unwrap();
            assert_eq!(committed(&others, &db).await, 1, "landed on its own");
            let on = fetch_i64(&mut autocommit, "SELECT @@autocommit")
                .await
                .unwrap();
            assert_eq!(on, 1);
            drop(autocommit);

            // The same connection (a pool of one), now in autocommit: a transactional session
            // on it begins with BEGIN, and is a transaction all the same.
            let mut session = manager.session::<MySql>("main").unwrap();
            let begins = counter(&mut session, "COM_BEGIN").await;
            insert(&mut session, &db, 2).await.unwrap();
            assert_eq!(
                committed(&others, &db).await,
                1,
                "not visible before COMMIT"
            );
            session.commit().await.unwrap();
            assert_eq!(committed(&others, &db).await, 2);
            assert_eq!(counter(&mut session, "COM_BEGIN").await, begins + 1);
            session.commit().await.unwrap();
            drop(session);
            assert_eq!(manager.status()[0].opened, 1, "one connection all along");
            others.close(Duration::from_secs(5)).await.unwrap();
            manager.close(Duration::from_secs(5)).await.unwrap();
            db.finish().await;
        },
    )
    .await;
}

/// A pool of one connection, checked out once and then killed by the server while it idles:
/// the next session's first statement meets it dead.
async fn dead_pool(db: &TestDb) -> BindManager {
    let manager = db.manager(|c| c.max_connections(1).health_check(HealthCheck::Never));
    let mut session = manager.session::<MySql>("main").unwrap();
    let id = fetch_i64(&mut session, db.connection_id_query())
        .await
        .unwrap();
    session.commit().await.unwrap();
    drop(session);
    db.kill_connection(id).await;
    eventually("the server closed the connection", || async {
        db.server_connections().await == Some(0)
    })
    .await;
    manager
}

#[tokio::test]
async fn a_dead_connection_at_a_transactions_first_statement_is_replaced_unseen() {
    within_limit(
        "a_dead_connection_at_a_transactions_first_statement_is_replaced_unseen",
        async {
            let db = TestDb::new(Kind::MySql).await;
            let count = format!("SELECT COUNT(*) FROM {}", db.table);
            table(&db.manager(|c| c), &db).await;

            // execute
            let manager = dead_pool(&db).await;
            let mut session = manager.session::<MySql>("main").unwrap();
            insert(&mut session, &db, 1)
                .await
                .expect("sent again on a live connection");
            session.commit().await.unwrap();
            drop(session);
            assert_eq!(manager.status()[0].discarded, 1);
            manager.close(Duration::from_secs(5)).await.unwrap();

            // fetch_optional / fetch_one
            let manager = dead_pool(&db).await;
            let mut session = manager.session::<MySql>("main").unwrap();
            let n: i64 = sqlx::query_scalar(sql(count.clone()))
                .fetch_one(&mut session)
                .await
                .expect("fetch_one sent again");
            assert_eq!(n, 1);
            drop(session);
            assert_eq!(manager.status()[0].discarded, 1);
            manager.close(Duration::from_secs(5)).await.unwrap();

            // a stream
            let manager = dead_pool(&db).await;
            let mut session = manager.session::<MySql>("main").unwrap();
            let first: Option<i64> = sqlx::query_scalar(sql(count.clone()))
                .fetch(&mut session)
                .try_next()
                .await
                .expect("the stream sent again");
            assert_eq!(first, Some(1));
            drop(session);
            assert_eq!(manager.status()[0].discarded, 1);
            manager.close(Duration::from_secs(5)).await.unwrap();

            // fetch_all, with arguments
            let manager = dead_pool(&db).await;
            let mut session = manager.session::<MySql>("main").unwrap();
            let ids: Vec<i64> =
                sqlx::query_scalar(sql(format!("SELECT id FROM {} WHERE id >= ?", db.table)))
                    .bind(1_i64)
                    .fetch_all(&mut session)
                    .await
                    .expect("fetch_all sent again");
            assert_eq!(ids, [1]);
            drop(session);
            assert_eq!(manager.status()[0].discarded, 1);

            // The insert landed once.
            assert_eq!(committed(&manager, &db).await, 1);
            manager.close(Duration::from_secs(5)).await.unwrap();
            db.finish().await;
        },
    )
    .await;
}

/// `fetch_one` on MySQL: sqlx's stops reading at the first row, leaving the rest of the results
/// on the wire (here, a failing second statement's error). The session reads them to the end,
/// so that the connection goes back clean and the next session's statement is not answered
/// with this one's error.
#[tokio::test]
async fn fetch_one_leaves_nothing_unread_for_the_next_session() {
    within_limit("fetch_one_leaves_nothing_unread", async {
        let db = TestDb::new(Kind::MySql).await;
        let manager = db.manager(|c| c.max_connections(1));
        table(&manager, &db).await;
        let mut session = manager.session::<MySql>("main").unwrap().autocommit(true);
        insert(&mut session, &db, 1).await.unwrap();
        let twice = format!(
            "SELECT 1; INSERT INTO {} (id, v) VALUES (1, 'again')",
            db.table
        );
        let first = sqlx::raw_sql(sql(twice)).fetch_one(&mut session).await;
        // The duplicate's error comes back here, where it belongs, or not at all; never later.
        drop(first);
        drop(session);
        let mut next = manager.session::<MySql>("main").unwrap();
        assert_eq!(
            fetch_i64(&mut next, "SELECT 2").await.unwrap(),
            2,
            "the next session's own answer"
        );
        next.commit().await.unwrap();
        drop(next);
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

/// A deadlock: InnoDB rolls back the whole transaction of its victim (error 1213), not only
/// the statement. The victim's session then refuses statements until the code ends the
/// transaction, and its commit says `TransactionAborted`: without that, its next statements
/// ran in a new transaction that the commit committed, half of the unit of work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_victims_transaction_stays_aborted_until_it_ends() {
    within_limit("a_deadlock_victims_transaction_stays_aborted", async {
        let db = TestDb::new(Kind::MySql).await;
        let manager = db.manager(|c| c.max_connections(2));
        table(&manager, &db).await;
        let mut setup = manager.session::<MySql>("main").unwrap();
        for id in [1, 2] {
            insert(&mut setup, &db, id).await.unwrap();
        }
        setup.commit().await.unwrap();
        drop(setup);
        let update =
            |id: i64, v: &str| sql(format!("UPDATE {} SET v = '{v}' WHERE id = {id}", db.table));
        let (mut a, mut b) = (
            manager.session::<MySql>("main").unwrap(),
            manager.session::<MySql>("main").unwrap(),
        );
        sqlx::query(update(1, "a")).execute(&mut a).await.unwrap();
        sqlx::query(update(2, "b")).execute(&mut b).await.unwrap();
        // Each now wants the other's row: one of them is the victim.
        let (a_then, b_then) = tokio::join!(
            async {
                let r = sqlx::query(update(2, "a")).execute(&mut a).await;
                (r.map(drop), ())
            },
            async {
                tokio::task::yield_now().await;
                let r = sqlx::query(update(1, "b")).execute(&mut b).await;
                (r.map(drop), ())
            }
        );
        let (mut victim, mut winner, mark) = match (a_then.0, b_then.0) {
            (Err(e), Ok(())) => (a, b, {
                assert_deadlock(e);
                "a"
            }),
            (Ok(()), Err(e)) => (b, a, {
                assert_deadlock(e);
                "b"
            }),
            other => panic!("one deadlock victim: {other:?}"),
        };
        let insert_after = sql(format!(
            "INSERT INTO {} (id, v) VALUES (10, '{mark}')",
            db.table
        ));
        let after = sqlx::query(insert_after).execute(&mut victim).await;
        let refused = dbscope::Error::from(after.expect_err("refused: the transaction is gone"));
        assert!(refused.is_transaction_aborted(), "{refused}");
        let committed = victim.commit().await.expect_err("its commit says so");
        assert!(committed.is_transaction_aborted(), "{committed}");
        winner.commit().await.unwrap();
        // The victim's first update is not there; the session goes on afresh.
        let query = format!("SELECT COUNT(*) FROM {} WHERE v = '{mark}'", db.table);
        let theirs = fetch_i64(&mut victim, sql(query)).await.unwrap();
        assert_eq!(theirs, 0, "nothing of the victim's transaction landed");
        victim.commit().await.unwrap();
        drop((victim, winner));
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    })
    .await;
}

fn assert_deadlock(err: sqlx::Error) {
    let number = err
        .as_database_error()
        .and_then(|db| db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .map(sqlx::mysql::MySqlDatabaseError::number);
    assert_eq!(number, Some(1213), "a deadlock: {err}");
}
