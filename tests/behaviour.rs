//! The behaviour suite: the same tests on SQLite (file and in-memory), PostgreSQL and MariaDB.
//!
//! Each test is a generic body, `async fn name<B: Suite>()`, written once; `common::async_tests!`
//! at the end makes it a `#[tokio::test]` per backend (`sqlite_file::name`, `postgres::name` …).
//! Server-side facts (connections opened, transactions left open) are read from the server
//! itself; see `common/mod.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{
    Kind, Suite, TestDb, Typed, cancel_after, create_table, eventually, fetch_all_pairs, fetch_i64,
    fetch_optional_string, fetch_string, insert, sql,
};
use dbscope::{BindManager, HealthCheck, IsolationLevel, Session};
use futures_util::TryStreamExt;

async fn count<DB: Typed>(session: &mut Session<DB>, db: &TestDb) -> i64 {
    let stmt = format!("SELECT COUNT(*) FROM {}", db.table);
    fetch_i64(session, sql(stmt)).await.expect("count rows")
}

/// Rows as a fresh session on the same bind sees them.
async fn committed_rows<B: Suite>(manager: &BindManager, db: &TestDb) -> i64 {
    let mut session = manager.session::<B::Db>("main").unwrap();
    let n = count(&mut session, db).await;
    session.close().await.unwrap();
    n
}

async fn assert_no_open_transaction(db: &TestDb) {
    if db.open_transactions().await.is_some() {
        eventually("no transaction left open on the server", || async {
            db.open_transactions().await == Some(0)
        })
        .await;
    }
}

/// A connection left in an unknown state went to recovery, and came back clean or was
/// discarded: never reused as it was.
async fn assert_recovered_or_discarded<B: Suite>(manager: &BindManager) {
    assert_pool_settles::<B>(manager).await;
    let status = &manager.status()[0];
    assert_eq!(
        status.recovered + status.discarded,
        1,
        "a connection in an unknown state is recovered or discarded: {status:?}"
    );
}

async fn assert_pool_settles<B: Suite>(manager: &BindManager) {
    let bind = manager.bind::<B::Db>("main").unwrap();
    eventually("every connection back in the pool", || {
        let status = bind.status();
        async move { status.in_use == 0 && status.waiting == 0 }
    })
    .await;
}

async fn no_connection_before_first_statement<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    let bind = manager.bind::<B::Db>("main").unwrap();
    let mut session = bind.session();
    assert_eq!(bind.status().connections, 0);
    assert!(!session.is_connected());
    if let Some(n) = db.server_connections().await {
        assert_eq!(
            n, 0,
            "the server saw a connection before the first statement"
        );
    }

    sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
    assert!(session.is_connected() && session.in_transaction());
    assert_eq!(bind.status().connections, 1);
    if let Some(n) = db.server_connections().await {
        assert_eq!(n, 1, "the first statement opens exactly one connection");
    }
    session.commit().await.unwrap();
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn commit_is_visible_to_another_session<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).await.unwrap();
    session.commit().await.unwrap();
    assert!(!session.in_transaction());
    assert_eq!(committed_rows::<B>(&manager, &db).await, 1);
    // The session goes on: its next statement begins a new transaction.
    insert(&mut session, &db, 2).await.unwrap();
    assert!(session.in_transaction());
    session.commit().await.unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db).await, 2);
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn rollback_is_invisible<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).await.unwrap();
    session.rollback().await.unwrap();
    assert_eq!(count(&mut session, &db).await, 0);
    session.close().await.unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db).await, 0);
    assert_eq!(
        manager.status()[0].discarded,
        0,
        "a rolled-back connection is reused"
    );
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn dropped_session_rolls_back_and_returns_its_connection_clean<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).await.unwrap();
    drop(session);

    assert_pool_settles::<B>(&manager).await;
    assert_no_open_transaction(&db).await;
    let status = &manager.status()[0];
    assert_eq!(
        status.discarded, 0,
        "the rollback succeeded, so the connection is kept"
    );
    assert_eq!(status.idle, status.connections);
    assert_eq!(committed_rows::<B>(&manager, &db).await, 0);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn savepoint_rollback_keeps_the_outer_work<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).await.unwrap();
    let mut savepoint = session.savepoint().await.unwrap();
    insert(&mut savepoint, &db, 2).await.unwrap();
    assert_eq!(count(&mut savepoint, &db).await, 2);
    savepoint.rollback().await.unwrap();
    assert_eq!(count(&mut session, &db).await, 1);
    insert(&mut session, &db, 3).await.unwrap();
    session.commit().await.unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db).await, 2);
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn dropped_savepoint_rolls_back_before_the_next_statement<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).await.unwrap();
    {
        let mut outer = session.savepoint().await.unwrap();
        insert(&mut outer, &db, 2).await.unwrap();
        let mut inner = outer.savepoint().await.unwrap();
        insert(&mut inner, &db, 3).await.unwrap();
        // Both dropped without commit: everything after the outer savepoint goes.
    }
    assert_eq!(count(&mut session, &db).await, 1);
    session.commit().await.unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db).await, 1);
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn nested_savepoints_commit_into_the_transaction<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    let mut outer = session.savepoint().await.unwrap();
    insert(&mut outer, &db, 1).await.unwrap();
    let mut inner = outer.savepoint().await.unwrap();
    insert(&mut inner, &db, 2).await.unwrap();
    inner.commit().await.unwrap();
    outer.commit().await.unwrap();
    assert!(
        session.in_transaction(),
        "released savepoints leave the transaction open"
    );
    // In-memory SQLite shares one cache: a reader would wait for this writer's lock.
    if B::KIND != Kind::SqliteMemory {
        assert_eq!(
            committed_rows::<B>(&manager, &db).await,
            0,
            "nothing committed yet"
        );
    }
    session.commit().await.unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db).await, 2);
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn a_failed_statement_inside_a_savepoint_can_be_undone<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).await.unwrap();
    let mut savepoint = session.savepoint().await.unwrap();
    let duplicate = insert(&mut savepoint, &db, 1).await.unwrap_err();
    assert!(duplicate.as_database_error().is_some(), "{duplicate}");
    savepoint.rollback().await.unwrap();
    insert(&mut session, &db, 2).await.unwrap();
    session.commit().await.unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db).await, 2);
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// A savepoint guard whose transaction the code ended through it (a commit of the session, as
/// a helper taking `&mut Session` does): dropped later, it has nothing to roll back, and the
/// session goes on, rather than send a ROLLBACK TO outside any transaction and break.
async fn a_savepoint_outliving_its_transaction_is_let_go<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    let mut savepoint = session.savepoint().await.unwrap();
    insert(&mut savepoint, &db, 1).await.unwrap();
    Session::commit(&mut savepoint).await.unwrap(); // the whole transaction
    drop(savepoint);
    insert(&mut session, &db, 2).await.unwrap();
    session.commit().await.unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db).await, 2);
    // The same, its guard committed after the transaction ended: nothing left to release.
    let mut savepoint = session.savepoint().await.unwrap();
    insert(&mut savepoint, &db, 3).await.unwrap();
    Session::commit(&mut savepoint).await.unwrap();
    savepoint.commit().await.unwrap();
    insert(&mut session, &db, 4).await.unwrap();
    session.commit().await.unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db).await, 4);
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// Commits a transaction whose row 1 was followed by a failure the server refused: PostgreSQL
/// aborted the transaction, so dbscope says so instead of a silent ROLLBACK (nothing landed);
/// the others undo the failed operation alone, and row 1 commits.
async fn commit_follows_the_database<B: Suite>(
    session: &mut Session<B::Db>,
    manager: &BindManager,
    db: &TestDb,
) {
    let outcome = session.commit().await;
    if B::KIND == Kind::Postgres {
        let err = outcome.unwrap_err();
        assert!(err.is_transaction_aborted(), "{err}");
        assert_eq!(committed_rows::<B>(manager, db).await, 0);
    } else {
        outcome.unwrap();
        assert_eq!(committed_rows::<B>(manager, db).await, 1);
    }
}

async fn commit_after_a_failed_statement_follows_the_database<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).await.unwrap();
    insert(&mut session, &db, 1).await.unwrap_err();
    commit_follows_the_database::<B>(&mut session, &manager, &db).await;
    assert!(!session.in_transaction());
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// A prepare (or describe) the server refuses, inside a transaction: on PostgreSQL it aborts the
/// transaction as a failed statement does, so the commit says so rather than report a COMMIT
/// the server answered with ROLLBACK.
async fn commit_after_a_failed_prepare_follows_the_database<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).await.unwrap();
    let bad = sqlx::SqlStr::from_static("SELECT no_such_column FROM no_such_table");
    let refused = sqlx::Executor::prepare(&mut session, bad).await;
    assert!(refused.is_err(), "the server refuses the prepare");
    commit_follows_the_database::<B>(&mut session, &manager, &db).await;
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn queries_of_every_shape_run_on_a_session<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    for id in 1..=3 {
        insert(&mut session, &db, id).await.unwrap();
    }
    let select = format!("SELECT id, v FROM {} ORDER BY id", db.table);
    let rows: Vec<(i64, String)> = fetch_all_pairs(&mut session, sql(select.clone()))
        .await
        .unwrap();
    assert_eq!(rows[2], (3, "row 3".to_owned()));
    let streamed: Vec<_> = sqlx::query(sql(select.clone()))
        .fetch(&mut session)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(streamed.len(), 3);
    let first: Option<String> = fetch_optional_string(
        &mut session,
        sql(format!("SELECT v FROM {} WHERE id = 2", db.table)),
    )
    .await
    .unwrap();
    assert_eq!(first.as_deref(), Some("row 2"));
    let raw = session.connection().await.unwrap();
    let via_raw: i64 = B::Db::raw_fetch_i64(
        raw,
        sql(format!("SELECT COUNT(*) FROM {}", db.table)).into(),
    )
    .await
    .unwrap();
    assert_eq!(
        via_raw, 3,
        "the raw connection is inside the session's transaction"
    );
    session.commit().await.unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db).await, 3);
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn pool_exhaustion_times_out_within_the_acquire_timeout<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let timeout = Duration::from_millis(300);
    let manager = db.manager(|c| c.max_connections(1).acquire_timeout(timeout));
    let mut holder = manager.session::<B::Db>("main").unwrap();
    sqlx::query("SELECT 1").execute(&mut holder).await.unwrap();

    let mut waiter = manager.session::<B::Db>("main").unwrap();
    let start = Instant::now();
    let err = waiter.begin().await.unwrap_err();
    let waited = start.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.bind(), Some("main"));
    assert!(err.to_string().contains("acquire_timeout"), "{err}");
    assert!(
        waited >= timeout && waited < timeout * 5,
        "waited {waited:?}"
    );

    // Through sqlx's API the same timeout travels boxed, and `?` gives it back whole, bind
    // named.
    let via_sqlx = sqlx::query("SELECT 1")
        .execute(&mut waiter)
        .await
        .unwrap_err();
    assert!(
        matches!(&via_sqlx, sqlx::Error::Configuration(e) if e.is::<dbscope::Error>()),
        "{via_sqlx}"
    );
    let back = dbscope::Error::from(via_sqlx);
    assert!(back.is_timeout() && back.is_retryable(), "{back}");
    assert_eq!(back.bind(), Some("main"));
    assert_eq!(back.waited(), Some(timeout));
    assert_eq!(manager.status()[0].timeouts, 2);

    // The waiter works once the holder lets go.
    drop(holder);
    sqlx::query("SELECT 1").execute(&mut waiter).await.unwrap();
    drop(waiter);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn cancelled_checkout_leaves_the_pool_healthy<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c.max_connections(1));
    let mut holder = manager.session::<B::Db>("main").unwrap();
    sqlx::query("SELECT 1").execute(&mut holder).await.unwrap();
    let mut waiter = manager.session::<B::Db>("main").unwrap();
    let waiting = sqlx::query("SELECT 1").execute(&mut waiter);
    assert!(
        cancel_after(waiting, 5).await.is_none(),
        "the pool is full, the waiter waits"
    );
    assert_eq!(
        manager.status()[0].waiting,
        0,
        "the cancelled waiter left the queue"
    );
    drop(holder);
    sqlx::query("SELECT 1").execute(&mut waiter).await.unwrap();
    waiter.commit().await.unwrap();
    drop(waiter);
    assert_pool_settles::<B>(&manager).await;
    assert_eq!(manager.status()[0].connections, 1);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn cancellation_at_every_await_leaves_no_transaction_behind<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    // A long SQLite busy timeout: a write waiting for the blocker's lock waits for the test.
    let manager = db.manager(|mut c| {
        c.connect.sqlite.busy_timeout = Some(Duration::from_secs(120));
        c.max_connections(3)
    });
    create_table::<B>(&manager, &db).await;
    let bind = manager.bind::<B::Db>("main").unwrap();
    let mut setup = bind.session();
    insert(&mut setup, &db, 0).await.unwrap();
    setup.commit().await.unwrap();
    drop(setup);
    let update = |polls: i64| format!("UPDATE {} SET v = 'cut {polls}' WHERE id = 0", db.table);
    // Until a cut has fallen inside the open transaction, another session's open transaction
    // holds the row the unit of work updates (SQLite: the write lock), so the update cannot
    // finish: however fast or loaded the machine, the cuts go on until one falls while it
    // waits inside the open transaction, the case that matters most. Then the blocker ends,
    // before that cut session drops, and the cuts go on until the work runs whole.
    let mut blocker = Some(bind.session());
    let held = blocker.as_mut().unwrap();
    sqlx::query(sql(update(-1))).execute(held).await.unwrap();
    let mut cancelled = 0;
    let mut cut_inside_a_transaction = 0;
    for polls in 0.. {
        assert!(polls < 2_000, "the unit of work never finished");
        let mut session = bind.session();
        let stmt = update(polls);
        let work = async {
            session.begin().await?;
            sqlx::query(sql(stmt)).execute(&mut session).await?;
            session.commit().await
        };
        let finished = cancel_after(work, polls as usize).await;
        if finished.is_none() && session.in_transaction() {
            cut_inside_a_transaction += 1;
            if let Some(mut held) = blocker.take() {
                held.rollback().await.unwrap();
                held.close().await.unwrap();
            }
        }
        drop(session);
        let blocking = usize::from(blocker.is_some());
        eventually("every cut connection back in the pool", || {
            let status = bind.status();
            async move { status.in_use == blocking && status.waiting == 0 }
        })
        .await;
        if db.open_transactions().await.is_some() {
            eventually("no transaction left open but the blocker's", || async {
                db.open_transactions().await == Some(blocking as i64)
            })
            .await;
        }
        match finished {
            Some(result) => {
                assert!(blocker.is_none(), "the work cannot finish while blocked");
                result.unwrap();
                break;
            }
            None => cancelled += 1,
        }
    }
    assert!(
        cancelled >= 2 && cut_inside_a_transaction >= 1,
        "cut before anything ran ({cancelled} cuts) and inside the open transaction \
         ({cut_inside_a_transaction})"
    );
    // The pool still works, and no lock or transaction blocks a writer.
    let mut session = bind.session();
    insert(&mut session, &db, 10_000).await.unwrap();
    session.commit().await.unwrap();
    drop(session);
    assert!(manager.status()[0].connections <= 3);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn a_statement_cancelled_mid_flight_poisons_the_session<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).await.unwrap();
    let slow = sqlx::query(B::slow_query()).execute(&mut session);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), slow)
            .await
            .is_err()
    );

    let err = session.commit().await.unwrap_err();
    assert!(err.is_poisoned(), "{err}");
    let err = insert(&mut session, &db, 2).await.unwrap_err();
    assert!(dbscope::Error::from(err).is_poisoned());
    drop(session);

    assert_recovered_or_discarded::<B>(&manager).await;
    assert_no_open_transaction(&db).await;
    assert_eq!(committed_rows::<B>(&manager, &db).await, 0);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// 10,000 rows `x` = 1..=10,000, made by the server (no table), as `{cte} SELECT x FROM c`.
fn series_cte<B: Suite>() -> &'static str {
    match B::KIND {
        Kind::Postgres => "WITH c(x) AS (SELECT g FROM generate_series(1, 10000) AS g)",
        // MariaDB stops a recursion at 1,000 iterations (`max_recursive_iterations`): 100 × 100.
        Kind::MySql => {
            "WITH RECURSIVE d(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM d WHERE x < 99), \
             c(x) AS (SELECT a.x * 100 + b.x + 1 FROM d a, d b)"
        }
        Kind::SqliteFile | Kind::SqliteMemory => {
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000)"
        }
    }
}

/// The 10,000 rows of [`series_cte`].
fn series<B: Suite>() -> String {
    format!("{} SELECT x FROM c", series_cte::<B>())
}

/// The 10,000 rows of [`series_cte`], the 5,000th failing on the server after the first rows
/// have been sent.
fn series_failing_midway<B: Suite>() -> String {
    let select = match B::KIND {
        Kind::Postgres => "SELECT 1 / (x - 5000) FROM c",
        Kind::MySql => "SELECT x, (SELECT 1 UNION ALL SELECT 2 WHERE x = 5000) FROM c",
        Kind::SqliteFile | Kind::SqliteMemory => {
            "SELECT CASE WHEN x = 5000 THEN abs(-9223372036854775808) ELSE x END FROM c"
        }
    };
    format!("{} {select}", series_cte::<B>())
}

/// Reads the first row of `stmt` as a stream, then drops the stream.
async fn read_one_row_then_drop<DB: Typed>(session: &mut Session<DB>, stmt: String) {
    let mut rows = sqlx::query(sql(stmt)).fetch(session);
    assert!(rows.try_next().await.unwrap().is_some(), "a first row");
}

async fn a_stream_dropped_after_its_first_row_leaves_the_session_usable<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let bind = manager.bind::<B::Db>("main").unwrap();
    let before = bind.status();
    let mut session = bind.session();
    insert(&mut session, &db, 1).await.unwrap();
    read_one_row_then_drop(&mut session, series::<B>()).await;
    assert!(session.in_transaction());
    // The next statements read their own results, in the same transaction.
    assert_eq!(
        count(&mut session, &db).await,
        1,
        "the uncommitted row is visible"
    );
    insert(&mut session, &db, 2).await.unwrap();
    let stmt = format!("SELECT v FROM {} WHERE id = 2", db.table);
    assert_eq!(
        fetch_string(&mut session, sql(stmt)).await.unwrap(),
        "row 2"
    );
    if db.open_transactions().await.is_some() {
        // MariaDB's innodb_trx is a snapshot refreshed when idle: wait for a fresh one.
        eventually("still the one transaction on the server", || async {
            db.open_transactions().await == Some(1)
        })
        .await;
    }
    // A commit right after a dropped stream: sqlx reads the rest first.
    read_one_row_then_drop(&mut session, series::<B>()).await;
    session.commit().await.unwrap();
    // And the session goes on: its next transaction, and a dropped stream as it ends.
    insert(&mut session, &db, 3).await.unwrap();
    session.commit().await.unwrap();
    read_one_row_then_drop(&mut session, series::<B>()).await;
    drop(session);
    assert_pool_settles::<B>(&manager).await;
    assert_no_open_transaction(&db).await;
    assert_eq!(committed_rows::<B>(&manager, &db).await, 3);
    let status = bind.status();
    assert_eq!(
        (status.opened - before.opened, status.discarded),
        (0, 0),
        "the one connection was reused, never discarded: {status:?}"
    );
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn a_write_returning_rows_dropped_after_its_first_row_has_run_whole<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let (cte, table) = (series_cte::<B>(), &db.table);
    let write = match B::KIND {
        Kind::MySql => {
            format!("INSERT INTO {table} (id, v) {cte} SELECT x, 'r' FROM c RETURNING id")
        }
        _ => format!("{cte} INSERT INTO {table} (id, v) SELECT x, 'r' FROM c RETURNING id"),
    };
    let mut session = manager.session::<B::Db>("main").unwrap();
    read_one_row_then_drop(&mut session, write).await;
    assert_eq!(count(&mut session, &db).await, 10_000, "every row written");
    session.commit().await.unwrap();
    drop(session);
    assert_pool_settles::<B>(&manager).await;
    assert_eq!(committed_rows::<B>(&manager, &db).await, 10_000);
    assert_eq!(manager.status()[0].discarded, 0);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn an_error_left_in_a_dropped_stream_fails_the_commit<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let server_runs_the_rest = matches!(B::KIND, Kind::Postgres | Kind::MySql);
    let mut session = manager.session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).await.unwrap();
    read_one_row_then_drop(&mut session, series_failing_midway::<B>()).await;
    let committed = session.commit().await;
    if server_runs_the_rest {
        // The server ran the rest; sqlx read its error before COMMIT, which reports it.
        let err = committed.unwrap_err();
        assert!(!err.is_poisoned(), "{err}");
    } else {
        // SQLite stopped stepping at the drop: the failing row never ran.
        committed.unwrap();
    }
    // Either way the session goes on, on the same connection.
    insert(&mut session, &db, 2).await.unwrap();
    session.commit().await.unwrap();
    // A rollback after such a drop undoes the dropped statement with the rest: no error.
    insert(&mut session, &db, 3).await.unwrap();
    read_one_row_then_drop(&mut session, series_failing_midway::<B>()).await;
    session.rollback().await.unwrap();
    insert(&mut session, &db, 4).await.unwrap();
    session.commit().await.unwrap();
    drop(session);
    assert_pool_settles::<B>(&manager).await;
    assert_no_open_transaction(&db).await;
    let expected = if server_runs_the_rest { 2 } else { 3 };
    assert_eq!(committed_rows::<B>(&manager, &db).await, expected);
    assert_eq!(manager.status()[0].discarded, 0);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn a_stream_dropped_before_its_first_row_counts_as_cancelled<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).await.unwrap();
    {
        let mut rows = sqlx::query(B::slow_query()).fetch(&mut session);
        let first = tokio::time::timeout(Duration::from_millis(100), rows.try_next()).await;
        assert!(first.is_err(), "the slow statement had not answered yet");
    }
    assert!(session.commit().await.unwrap_err().is_poisoned());
    drop(session);
    assert_recovered_or_discarded::<B>(&manager).await;
    assert_no_open_transaction(&db).await;
    assert_eq!(committed_rows::<B>(&manager, &db).await, 0);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn outside_a_transaction_a_stream_dropped_before_its_end_counts_as_cancelled<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap().autocommit(true);
    read_one_row_then_drop(&mut session, series::<B>()).await;
    let err = insert(&mut session, &db, 1).await.unwrap_err();
    assert!(dbscope::Error::from(err).is_poisoned());
    drop(session);
    assert_recovered_or_discarded::<B>(&manager).await;
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn close_waits_for_sessions_then_closes_every_connection<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    let bind = manager.bind::<B::Db>("main").unwrap();
    let mut idle = bind.session();
    sqlx::query("SELECT 1").execute(&mut idle).await.unwrap();
    idle.commit().await.unwrap();
    drop(idle); // one idle connection
    let mut busy = bind.session();
    sqlx::query("SELECT 1").execute(&mut busy).await.unwrap();

    let closing = tokio::spawn({
        let manager = manager.clone();
        async move { manager.close(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !closing.is_finished(),
        "close waits for the session holding a connection"
    );
    assert!(manager.is_closed());
    assert!(manager.session::<B::Db>("main").unwrap_err().is_closed());

    busy.commit().await.unwrap();
    drop(busy);
    closing.await.unwrap().unwrap();
    assert_eq!(bind.status().connections, 0);
    if db.server_connections().await.is_some() {
        eventually("the server sees every connection closed", || async {
            db.server_connections().await == Some(0)
        })
        .await;
    }
    db.finish().await;
}

async fn close_reports_the_binds_still_busy_at_its_deadline<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    let mut busy = manager.session::<B::Db>("main").unwrap();
    sqlx::query("SELECT 1").execute(&mut busy).await.unwrap();
    let err = manager.close(Duration::from_millis(100)).await.unwrap_err();
    assert_eq!(err.kind(), dbscope::ErrorKind::CloseTimedOut, "{err}");
    assert_eq!(err.busy_binds(), [("main".to_owned(), 1)]);
    // The straggler's transaction still ends cleanly when it drops.
    drop(busy);
    assert_no_open_transaction(&db).await;
    db.finish().await;
}

async fn a_closed_manager_refuses_new_sessions<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    let bind = manager.bind::<B::Db>("main").unwrap();
    manager.close(Duration::from_secs(5)).await.unwrap();
    let err = manager.bind::<B::Db>("main").unwrap_err();
    assert!(
        err.is_closed() && err.to_string().contains("`main`"),
        "{err}"
    );
    let err = bind.session().begin().await.unwrap_err();
    assert!(err.is_closed(), "{err}");
    let via_sqlx = sqlx::query("SELECT 1")
        .execute(&mut bind.session())
        .await
        .unwrap_err();
    let back = dbscope::Error::from(via_sqlx);
    assert!(back.is_closed() && !back.is_retryable(), "{back}");
    assert_eq!(back.bind(), Some("main"));
    db.finish().await;
}

async fn dropping_the_manager_closes_idle_connections<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    let bind = manager.bind::<B::Db>("main").unwrap();
    let mut session = bind.session();
    sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
    drop(session);
    assert_pool_settles::<B>(&manager).await;
    drop(manager);
    assert!(bind.session().begin().await.unwrap_err().is_closed());
    assert_eq!(bind.status().connections, 0);
    if db.server_connections().await.is_some() {
        eventually("the server sees the idle connection closed", || async {
            db.server_connections().await == Some(0)
        })
        .await;
    }
    db.finish().await;
}

async fn autocommit_lands_each_statement_without_a_transaction<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap().autocommit(true);
    insert(&mut session, &db, 1).await.unwrap();
    assert!(!session.in_transaction());
    assert_no_open_transaction(&db).await; // while the session still holds its connection
    assert_eq!(
        committed_rows::<B>(&manager, &db).await,
        1,
        "visible before any commit"
    );
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn in_autocommit_mode_a_savepoint_guard_is_the_transaction<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c.autocommit(true)); // the bind's default
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    let mut tx = session.savepoint().await.unwrap();
    insert(&mut tx, &db, 1).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(!session.in_transaction());
    let mut tx = session.savepoint().await.unwrap();
    insert(&mut tx, &db, 2).await.unwrap();
    tx.commit().await.unwrap();
    assert!(!session.in_transaction());
    drop(session);
    assert_eq!(committed_rows::<B>(&manager, &db).await, 1);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn a_lent_raw_connection_is_verified_before_it_returns<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c.max_connections(1));
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap().autocommit(true);
    let raw = session.connection().await.unwrap();
    let stmt = format!("INSERT INTO {} (id, v) VALUES (1, 'raw')", db.table);
    B::Db::raw_execute(raw, sql(stmt).into()).await.unwrap();
    drop(session); // no transaction, but unverified: pinged, then returned
    assert_pool_settles::<B>(&manager).await;
    let status = &manager.status()[0];
    assert_eq!((status.idle, status.discarded), (1, 0), "{status:?}");
    assert_eq!(committed_rows::<B>(&manager, &db).await, 1);

    // Raw work cancelled mid-flight is invisible to the session: the check before
    // reuse catches it (here a rollback, the session being in a transaction).
    let mut session = manager.session::<B::Db>("main").unwrap();
    let raw = session.connection().await.unwrap();
    let slow = B::Db::raw_execute(raw, B::slow_query().into());
    assert!(
        tokio::time::timeout(Duration::from_millis(50), slow)
            .await
            .is_err()
    );
    drop(session);
    assert_pool_settles::<B>(&manager).await;
    assert_no_open_transaction(&db).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 2).await.unwrap();
    session.commit().await.unwrap();
    drop(session);
    assert_eq!(committed_rows::<B>(&manager, &db).await, 2);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn read_only_sessions_refuse_writes_and_leave_the_connection_writable<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c.max_connections(1));
    create_table::<B>(&manager, &db).await;
    let mut reader = manager.session::<B::Db>("main").unwrap().read_only(true);
    assert_eq!(count(&mut reader, &db).await, 0);
    let err = insert(&mut reader, &db, 1).await.unwrap_err();
    assert!(err.as_database_error().is_some(), "{err}");
    reader.close().await.unwrap();
    // Same (only) connection, default options: writable again.
    let mut writer = manager.session::<B::Db>("main").unwrap();
    insert(&mut writer, &db, 1).await.unwrap();
    writer.commit().await.unwrap();
    drop(writer);
    assert_eq!(committed_rows::<B>(&manager, &db).await, 1);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn options_changed_mid_transaction_apply_to_the_next_one<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c.max_connections(1));
    create_table::<B>(&manager, &db).await;
    let mut session = manager.session::<B::Db>("main").unwrap().read_only(true);
    // A read-only transaction opened on purpose: a read-only session's statements may run
    // without one (see "Read-only sessions" on `Session`).
    session.begin().await.unwrap();
    assert_eq!(count(&mut session, &db).await, 0); // a read-only transaction is open
    let mut session = session.read_only(false);
    assert!(
        insert(&mut session, &db, 1).await.is_err(),
        "still the read-only transaction"
    );
    session.rollback().await.unwrap();
    insert(&mut session, &db, 1).await.unwrap(); // a new, writable transaction
    session.commit().await.unwrap();
    drop(session);
    assert_eq!(committed_rows::<B>(&manager, &db).await, 1);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn isolation_level_reaches_the_server<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let session = manager.session::<B::Db>("main").unwrap();
    match B::KIND {
        Kind::Postgres => {
            let mut session = session.isolation(IsolationLevel::Serializable);
            let level: String = fetch_string(
                &mut session,
                "SELECT current_setting('transaction_isolation')",
            )
            .await
            .unwrap();
            assert_eq!(level, "serializable");
        }
        Kind::MySql => {
            let mut session = session.isolation(IsolationLevel::ReadCommitted);
            insert(&mut session, &db, 1).await.unwrap();
            let me: i64 = fetch_i64(&mut session, "SELECT CAST(CONNECTION_ID() AS SIGNED)")
                .await
                .unwrap();
            // MariaDB's innodb_trx is a snapshot refreshed when idle: wait for one with ours.
            eventually("our transaction, READ COMMITTED, in innodb_trx", || async {
                let trx = db.innodb_transactions().await;
                let ours = trx.into_iter().find(|(id, _)| *id == me);
                ours.is_some_and(|(_, level)| level == "READ COMMITTED")
            })
            .await;
        }
        Kind::SqliteFile | Kind::SqliteMemory => {
            let mut weaker = session.isolation(IsolationLevel::ReadCommitted);
            let err = weaker.begin().await.unwrap_err();
            assert_eq!(err.kind(), dbscope::ErrorKind::Unsupported, "{err}");
            assert!(!weaker.in_transaction());
            let mut session = weaker.isolation(IsolationLevel::Serializable);
            session.begin().await.unwrap();
        }
    }
    manager.close(Duration::from_secs(5)).await.ok();
    db.finish().await;
}

async fn typed_bind_keys_select_the_bind_at_compile_time<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    let mut session = manager.session_for::<B::Main>().unwrap();
    sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
    session.commit().await.unwrap();
    assert_eq!(manager.bind_for::<B::Main>().unwrap().name(), "main");
    let err = manager.bind::<B::Other>("main").unwrap_err();
    assert!(err.is_backend_mismatch(), "{err}");
    let err = manager.bind::<B::Db>("mian").unwrap_err();
    assert!(
        err.is_unknown_bind() && err.to_string().contains("known binds: main"),
        "{err}"
    );
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn min_connections_and_idle_timeout_are_honoured<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| {
        c.min_connections(2)
            .max_connections(4)
            .idle_timeout(Some(Duration::from_millis(200)))
    });
    let bind = manager.bind::<B::Db>("main").unwrap();
    assert_eq!(bind.status().connections, 0, "the pool starts empty");
    let mut sessions: Vec<_> = (0..3).map(|_| bind.session()).collect();
    for session in &mut sessions {
        sqlx::query("SELECT 1").execute(session).await.unwrap();
    }
    assert_eq!(bind.status().connections, 3);
    drop(sessions);
    eventually("idle connections close down to min_connections", || {
        let n = bind.status().connections;
        async move { n == 2 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bind.status().connections, 2, "never below min_connections");
    if let Some(n) = db.server_connections().await {
        assert_eq!(n, 2);
    }
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// The upkeep opens connections up to `min_connections` beside the idle ones (which deadpool
/// hands out first, so a checkout given back at once would open none).
async fn min_connections_are_opened_beside_idle_ones<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| {
        c.min_connections(2)
            .max_connections(4)
            .idle_timeout(Some(Duration::from_millis(200))) // upkeep every 50 ms
    });
    let bind = manager.bind::<B::Db>("main").unwrap();
    let mut session = bind.session();
    sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
    session.commit().await.unwrap();
    drop(session); // its connection now waits idle
    eventually("the upkeep opens a second connection", || {
        let n = bind.status().connections;
        async move { n == 2 }
    })
    .await;
    if let Some(n) = db.server_connections().await {
        assert_eq!(n, 2);
    }
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// One session's statement and commit on `bind`, on a runtime of its own, on a thread of its
/// own, dropped before this returns: its connection waits idle, its socket's runtime gone.
fn one_session_on_a_runtime_that_ends<DB: Typed>(bind: &dbscope::Bind<DB>) {
    let other = bind.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let mut session = other.session();
            sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
            session.commit().await.unwrap();
        });
    })
    .join()
    .expect("a session on a runtime of its own");
}

/// A manager outlives the runtime that first used it: a connection opened there is not handed
/// out once that runtime has ended (its socket died with the runtime's I/O driver), but thrown
/// away and replaced. SQLite's connections have no socket, outlive any runtime and are reused.
async fn a_connection_whose_runtime_ended_is_replaced<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    let bind = manager.bind::<B::Db>("main").unwrap();
    one_session_on_a_runtime_that_ends(&bind);
    let before = bind.status();
    assert!(before.idle >= 1, "its connection waits idle");
    // Autocommit: a session that never retries its first statement on another connection.
    let mut session = bind.session().autocommit(true);
    for _ in 0..5 {
        sqlx::query("SELECT 1")
            .execute(&mut session)
            .await
            .expect("a statement, on a connection of this runtime");
    }
    drop(session);
    let sockets = !matches!(B::KIND, Kind::SqliteFile | Kind::SqliteMemory);
    let status = bind.status();
    assert_eq!(
        status.discarded,
        u64::from(sockets),
        "thrown away only where it had a socket"
    );
    assert_eq!(status.connections, before.connections);
    assert_eq!(status.opened, before.opened + u64::from(sockets));
    if sockets {
        // Its socket closes as it is thrown away; the server sees that a moment later.
        eventually("the old connection is gone from the server too", || async {
            db.server_connections().await == Some(1)
        })
        .await;
    }
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// A connection kept for `min_connections` is handed out however long it sat idle: below the
/// minimum, `idle_timeout` closes nothing, at a checkout no more than in the upkeep.
async fn a_connection_kept_for_the_minimum_is_not_expired_at_checkout<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| {
        c.min_connections(1)
            .idle_timeout(Some(Duration::from_millis(100)))
    });
    let bind = manager.bind::<B::Db>("main").unwrap();
    manager.connect().await.unwrap();
    let opened = bind.status().opened;
    // Past its idle timeout (sleeping only lengthens the idleness the check is about).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut session = bind.session();
    sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
    session.commit().await.unwrap();
    drop(session);
    let status = bind.status();
    assert_eq!(
        status.opened, opened,
        "the kept connection served: {status:?}"
    );
    assert_eq!(status.connections, 1);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// The upkeep outlives the runtime it started on: once that runtime has ended, the next
/// checkout starts it again on its own, and idle connections are closed on time as before.
async fn the_upkeep_outlives_the_runtime_it_started_on<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c.idle_timeout(Some(Duration::from_millis(200))));
    let bind = manager.bind::<B::Db>("main").unwrap();
    one_session_on_a_runtime_that_ends(&bind);
    // This checkout starts the upkeep again, on this runtime.
    let mut session = bind.session();
    sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
    session.commit().await.unwrap();
    drop(session);
    assert_eq!(bind.status().idle, 1);
    eventually("the upkeep closes the idle connection", || {
        let n = bind.status().connections;
        async move { n == 0 }
    })
    .await;
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// A raw connection lent outside any transaction of the session's (an autocommit session) may
/// get a transaction of its own (a raw `BEGIN`): whether the session is dropped or closed, the
/// connection goes back only once the server says none is open, what it wrote rolled back.
async fn a_transaction_opened_on_a_lent_connection_is_not_pooled<B: Suite>()
where
    for<'c> &'c mut <B::Db as sqlx::Database>::Connection: sqlx::Executor<'c, Database = B::Db>,
{
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c.max_connections(1));
    create_table::<B>(&manager, &db).await;
    let begin = if B::KIND == Kind::MySql {
        "START TRANSACTION"
    } else {
        "BEGIN"
    };
    for close in [false, true] {
        let mut session = manager.session::<B::Db>("main").unwrap().autocommit(true);
        let raw = session.connection().await.unwrap();
        sqlx::raw_sql(begin).execute(&mut *raw).await.unwrap();
        let stmt = format!("INSERT INTO {} (id, v) VALUES (1, 'raw')", db.table);
        sqlx::raw_sql(sql(stmt)).execute(&mut *raw).await.unwrap();
        if close {
            session.close().await.unwrap();
        } else {
            drop(session);
        }
        assert_no_open_transaction(&db).await;
        // The one connection, proven idle, serves the next session: nothing of the raw
        // transaction in it.
        assert_eq!(
            committed_rows::<B>(&manager, &db).await,
            0,
            "close: {close}"
        );
    }
    let status = manager.status();
    assert_eq!(status[0].discarded, 0, "{:?}", status[0]);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn connect_opens_a_connection_eagerly<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    manager.connect().await.unwrap();
    assert_eq!(manager.status()[0].connections, 1);
    if let Some(n) = db.server_connections().await {
        assert_eq!(n, 1);
    }
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

// ----- what only a server can show: connections killed under the pool, replaced by age -----

async fn connection_id<DB: Typed>(session: &mut Session<DB>, db: &TestDb) -> i64 {
    fetch_i64(session, db.connection_id_query())
        .await
        .expect("connection id")
}

/// Uses one connection, returns it to the pool, and gives its server id.
async fn park_one_connection<B: Suite>(manager: &BindManager, db: &TestDb) -> i64 {
    let mut session = manager.session::<B::Db>("main").unwrap();
    let id = connection_id(&mut session, db).await;
    session.commit().await.unwrap();
    drop(session);
    id
}

async fn a_connection_killed_mid_session_is_discarded_not_reused<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c.max_connections(1));
    let mut session = manager.session::<B::Db>("main").unwrap();
    let id = connection_id(&mut session, &db).await;
    db.kill_connection(id).await;
    // PostgreSQL says goodbye with a FATAL error, MariaDB just hangs up: either way
    // the connection is gone and the session knows it.
    sqlx::query("SELECT 1")
        .execute(&mut session)
        .await
        .unwrap_err();
    assert!(session.commit().await.unwrap_err().is_poisoned());
    drop(session);
    assert_eq!(manager.status()[0].discarded, 1);
    let mut fresh = manager.session::<B::Db>("main").unwrap();
    assert_ne!(
        connection_id(&mut fresh, &db).await,
        id,
        "a new connection serves"
    );
    drop(fresh);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn health_check_always_replaces_a_dead_idle_connection<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c.max_connections(1).health_check(HealthCheck::Always));
    let dead = park_one_connection::<B>(&manager, &db).await;
    db.kill_connection(dead).await;
    let mut session = manager.session::<B::Db>("main").unwrap();
    let id = connection_id(&mut session, &db).await; // the ping caught it: no error
    assert_ne!(id, dead);
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn health_check_if_idle_skips_the_ping_for_a_busy_connection<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    // Autocommit by default: no BEGIN (nor, on MySQL, a `SET autocommit = 1` on connections
    // set up for transactions) goes before the statement.
    let manager = db.manager(|c| {
        c.max_connections(1)
            .health_check(HealthCheck::IfIdleFor(Duration::from_secs(60)))
            .autocommit(true)
    });
    let dead = park_one_connection::<B>(&manager, &db).await;
    db.kill_connection(dead).await;
    // Idle for less than the limit: handed out unpinged, the first statement finds it dead (an
    // autocommit one: a transactional session's BEGIN would replace it unseen).
    let mut session = manager.session::<B::Db>("main").unwrap();
    assert!(sqlx::query("SELECT 1").execute(&mut session).await.is_err());
    drop(session);
    // Discarded; the next session gets a live connection.
    let mut session = manager.session::<B::Db>("main").unwrap();
    assert_ne!(connection_id(&mut session, &db).await, dead);
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn max_lifetime_replaces_old_connections<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| {
        c.max_connections(1)
            .max_lifetime(Some(Duration::from_millis(300)))
    });
    let first = park_one_connection::<B>(&manager, &db).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = park_one_connection::<B>(&manager, &db).await;
    assert_ne!(
        first, second,
        "a connection past max_lifetime is not handed out"
    );
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

common::async_tests!(postgres_server, common::Pg:
    a_connection_killed_mid_session_is_discarded_not_reused,
    health_check_always_replaces_a_dead_idle_connection,
    health_check_if_idle_skips_the_ping_for_a_busy_connection,
    max_lifetime_replaces_old_connections,
);
common::async_tests!(mysql_server, common::MySql:
    a_connection_killed_mid_session_is_discarded_not_reused,
    health_check_always_replaces_a_dead_idle_connection,
    health_check_if_idle_skips_the_ping_for_a_busy_connection,
    max_lifetime_replaces_old_connections,
);

/// The behaviour suite's tests, for one backend.
macro_rules! behaviour_tests {
    ($module:ident, $suite:ty) => {
        common::async_tests!($module, $suite:
            no_connection_before_first_statement,
            commit_is_visible_to_another_session,
            rollback_is_invisible,
            dropped_session_rolls_back_and_returns_its_connection_clean,
            savepoint_rollback_keeps_the_outer_work,
            dropped_savepoint_rolls_back_before_the_next_statement,
            nested_savepoints_commit_into_the_transaction,
            a_failed_statement_inside_a_savepoint_can_be_undone,
            commit_after_a_failed_statement_follows_the_database,
            commit_after_a_failed_prepare_follows_the_database,
            a_savepoint_outliving_its_transaction_is_let_go,
            queries_of_every_shape_run_on_a_session,
            pool_exhaustion_times_out_within_the_acquire_timeout,
            cancelled_checkout_leaves_the_pool_healthy,
            cancellation_at_every_await_leaves_no_transaction_behind,
            a_statement_cancelled_mid_flight_poisons_the_session,
            a_stream_dropped_after_its_first_row_leaves_the_session_usable,
            a_write_returning_rows_dropped_after_its_first_row_has_run_whole,
            an_error_left_in_a_dropped_stream_fails_the_commit,
            a_stream_dropped_before_its_first_row_counts_as_cancelled,
            outside_a_transaction_a_stream_dropped_before_its_end_counts_as_cancelled,
            close_waits_for_sessions_then_closes_every_connection,
            close_reports_the_binds_still_busy_at_its_deadline,
            a_closed_manager_refuses_new_sessions,
            dropping_the_manager_closes_idle_connections,
            autocommit_lands_each_statement_without_a_transaction,
            in_autocommit_mode_a_savepoint_guard_is_the_transaction,
            a_lent_raw_connection_is_verified_before_it_returns,
            read_only_sessions_refuse_writes_and_leave_the_connection_writable,
            options_changed_mid_transaction_apply_to_the_next_one,
            isolation_level_reaches_the_server,
            typed_bind_keys_select_the_bind_at_compile_time,
            min_connections_and_idle_timeout_are_honoured,
            min_connections_are_opened_beside_idle_ones,
            connect_opens_a_connection_eagerly,
            a_connection_whose_runtime_ended_is_replaced,
            a_connection_kept_for_the_minimum_is_not_expired_at_checkout,
            the_upkeep_outlives_the_runtime_it_started_on,
            a_transaction_opened_on_a_lent_connection_is_not_pooled,
        );
    };
}

behaviour_tests!(sqlite_file, common::SqliteFile);
behaviour_tests!(sqlite_memory, common::SqliteMemory);
behaviour_tests!(postgres, common::Pg);
behaviour_tests!(mysql, common::MySql);
