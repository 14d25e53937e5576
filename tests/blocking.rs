//! Blocking binds and sessions: the behaviour suite on SQLite (file and in-memory), PostgreSQL
//! and MariaDB, run from plain threads with no runtime; then threads sharing a small pool,
//! blocking scopes, and calls from inside tokio runtimes.
//!
//! These are plain `#[test]`s. The suite's tests are generic bodies, `fn name<B: Suite>()`, written
//! once; `common::blocking_tests!` makes each a `#[test]` per backend (`sqlite_file::name`,
//! `postgres::name` …). The server census (`common`) is async: it runs on a small runtime of its
//! own ([`census`]), never around a blocking call.

mod common;

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Kind, RowsAffected, Suite, TestDb, Typed, blocking_fetch_all_pairs, blocking_fetch_i64,
    blocking_fetch_optional_string, blocking_fetch_string, sql, within,
};
use dbscope::blocking::{self, BlockingBind, BlockingSession};
use dbscope::{BindConfig, BindManager, Error, HealthCheck, IsolationLevel};
use futures_util::TryStreamExt;

/// Runs the async test plumbing (setup, census, teardown) on a runtime of its own.
fn census<F: Future>(work: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("census runtime")
        .block_on(work)
}

/// Waits until `check` holds, up to 15 s; panics with `what` otherwise.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for: {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

const CLOSE: Duration = Duration::from_secs(5);

// ----- the suite, on every backend -----

fn finish(db: TestDb) {
    census(db.finish());
}

fn create_table<B: Suite>(manager: &BindManager, db: &TestDb) {
    let mut session = manager.blocking_session::<B::Db>("main").unwrap();
    let ddl = format!(
        "CREATE TABLE {} (id BIGINT PRIMARY KEY, v VARCHAR(50))",
        db.table
    );
    session
        .execute(sqlx::query(sql(ddl)))
        .expect("create table");
    session.commit().expect("commit create table");
}

fn insert<DB: Typed>(
    session: &mut BlockingSession<DB>,
    db: &TestDb,
    id: i64,
) -> dbscope::Result<()> {
    let stmt = format!("INSERT INTO {} (id, v) VALUES ({id}, 'row {id}')", db.table);
    session.execute(sqlx::query(sql(stmt))).map(|_| ())
}

fn count<DB: Typed>(session: &mut BlockingSession<DB>, db: &TestDb) -> i64 {
    let stmt = format!("SELECT COUNT(*) FROM {}", db.table);
    blocking_fetch_i64(session, sql(stmt)).expect("count rows")
}

fn scoped_insert<DB: Typed>(
    session: &mut blocking::BlockingScopedSession<DB>,
    db: &TestDb,
    id: i64,
) -> dbscope::Result<()> {
    let stmt = format!("INSERT INTO {} (id, v) VALUES ({id}, 'row {id}')", db.table);
    session.execute(sqlx::query(sql(stmt))).map(|_| ())
}

fn scoped_count<DB: Typed>(session: &mut blocking::BlockingScopedSession<DB>, db: &TestDb) -> i64 {
    let stmt = format!("SELECT COUNT(*) FROM {}", db.table);
    session
        .run(async |s| common::fetch_i64(s, sql(stmt)).await)
        .expect("count rows")
}

/// Rows as a fresh blocking session on the same bind sees them.
fn committed_rows<B: Suite>(manager: &BindManager, db: &TestDb) -> i64 {
    let mut session = manager.blocking_session::<B::Db>("main").unwrap();
    let n = count(&mut session, db);
    session.close().unwrap();
    n
}

fn assert_no_open_transaction(db: &TestDb) {
    if census(db.open_transactions()).is_some() {
        eventually("no transaction left open on the server", || {
            census(db.open_transactions()) == Some(0)
        });
    }
}

fn blocking_status<B: Suite>(manager: &BindManager) -> dbscope::BindStatus {
    manager.blocking_bind::<B::Db>("main").unwrap().status()
}

fn no_connection_before_first_statement<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    let mut session = bind.session();
    assert_eq!(bind.status().connections, 0);
    assert!(!session.is_connected());
    if let Some(n) = census(db.server_connections()) {
        assert_eq!(
            n, 0,
            "the server saw a connection before the first statement"
        );
    }

    session.execute(sqlx::query("SELECT 1")).unwrap();
    assert!(session.is_connected() && session.in_transaction());
    assert_eq!(bind.status().connections, 1);
    if let Some(n) = census(db.server_connections()) {
        assert_eq!(n, 1, "the first statement opens exactly one connection");
    }
    assert_eq!(
        manager.bind::<B::Db>("main").unwrap().status().connections,
        0,
        "the async face opened nothing"
    );
    session.commit().unwrap();
    drop(session);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
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

fn a_stream_dropped_after_its_first_row_leaves_the_session_usable<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let before = blocking_status::<B>(&manager);
    let mut session = manager.blocking_session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).unwrap();
    // The plain methods read every result; a stream read part-way is `run`'s business.
    let first = session
        .run(async |s| {
            let mut rows = sqlx::query(sql(series::<B>())).fetch(s);
            rows.try_next().await.map(|row| row.is_some())
        })
        .unwrap();
    assert!(first, "a first row");
    assert!(session.in_transaction());
    insert(&mut session, &db, 2).unwrap();
    assert_eq!(count(&mut session, &db), 2);
    session.commit().unwrap();
    drop(session);
    assert_no_open_transaction(&db);
    assert_eq!(committed_rows::<B>(&manager, &db), 2);
    let status = blocking_status::<B>(&manager);
    assert_eq!(
        (status.opened - before.opened, status.discarded),
        (0, 0),
        "the one connection was reused, never discarded: {status:?}"
    );
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn commit_is_visible_to_another_session<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let mut session = manager.blocking_session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).unwrap();
    session.commit().unwrap();
    assert!(!session.in_transaction());
    assert_eq!(committed_rows::<B>(&manager, &db), 1);
    // The session goes on: its next statement begins a new transaction.
    insert(&mut session, &db, 2).unwrap();
    assert!(session.in_transaction());
    session.commit().unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db), 2);
    drop(session);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn rollback_is_invisible<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let mut session = manager.blocking_session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).unwrap();
    session.rollback().unwrap();
    assert_eq!(count(&mut session, &db), 0);
    session.close().unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db), 0);
    assert_eq!(
        blocking_status::<B>(&manager).discarded,
        0,
        "a rolled-back connection is reused"
    );
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn a_dropped_session_rolls_back_before_the_drop_returns<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    let mut session = bind.session();
    insert(&mut session, &db, 1).unwrap();
    drop(session);

    // No waiting: the rollback is done and the connection back, clean, already.
    let status = bind.status();
    assert_eq!((status.in_use, status.discarded), (0, 0), "{status:?}");
    assert_eq!(status.idle, status.connections);
    assert_no_open_transaction(&db);
    assert_eq!(committed_rows::<B>(&manager, &db), 0);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn savepoint_rollback_keeps_the_outer_work<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let mut session = manager.blocking_session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).unwrap();
    let mut savepoint = session.savepoint().unwrap();
    insert(&mut savepoint, &db, 2).unwrap();
    assert_eq!(count(&mut savepoint, &db), 2);
    savepoint.rollback().unwrap();
    assert_eq!(count(&mut session, &db), 1);
    insert(&mut session, &db, 3).unwrap();
    session.commit().unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db), 2);
    drop(session);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn a_dropped_savepoint_rolls_back_before_the_next_statement<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let mut session = manager.blocking_session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).unwrap();
    {
        let mut outer = session.savepoint().unwrap();
        insert(&mut outer, &db, 2).unwrap();
        let mut inner = outer.savepoint().unwrap();
        insert(&mut inner, &db, 3).unwrap();
        // Both dropped without commit: everything after the outer savepoint goes.
    }
    assert_eq!(count(&mut session, &db), 1);
    session.commit().unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db), 1);
    drop(session);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn nested_savepoints_commit_into_the_transaction<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let mut session = manager.blocking_session::<B::Db>("main").unwrap();
    let mut outer = session.savepoint().unwrap();
    insert(&mut outer, &db, 1).unwrap();
    let mut inner = outer.savepoint().unwrap();
    insert(&mut inner, &db, 2).unwrap();
    inner.commit().unwrap();
    outer.commit().unwrap();
    assert!(
        session.in_transaction(),
        "released savepoints leave the transaction open"
    );
    // In-memory SQLite shares one cache: a reader would wait for this writer's lock.
    if B::KIND != Kind::SqliteMemory {
        assert_eq!(
            committed_rows::<B>(&manager, &db),
            0,
            "nothing committed yet"
        );
    }
    session.commit().unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db), 2);
    drop(session);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn a_failed_statement_inside_a_savepoint_can_be_undone<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let mut session = manager.blocking_session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).unwrap();
    let mut savepoint = session.savepoint().unwrap();
    let duplicate = insert(&mut savepoint, &db, 1).unwrap_err();
    assert!(duplicate.as_database_error().is_some(), "{duplicate}");
    assert_eq!(
        duplicate.bind(),
        Some("main"),
        "a statement's error names its bind"
    );
    savepoint.rollback().unwrap();
    insert(&mut session, &db, 2).unwrap();
    session.commit().unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db), 2);
    drop(session);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn commit_after_a_failed_statement_follows_the_database<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let mut session = manager.blocking_session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).unwrap();
    insert(&mut session, &db, 1).unwrap_err();
    let outcome = session.commit();
    if B::KIND == Kind::Postgres {
        let err = outcome.unwrap_err();
        assert!(err.is_transaction_aborted(), "{err}");
        assert_eq!(committed_rows::<B>(&manager, &db), 0);
    } else {
        outcome.unwrap();
        assert_eq!(committed_rows::<B>(&manager, &db), 1);
    }
    assert!(!session.in_transaction());
    drop(session);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn queries_of_every_shape_run_through_plain_methods<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let mut session = manager.blocking_session::<B::Db>("main").unwrap();
    for id in 1..=3 {
        insert(&mut session, &db, id).unwrap();
    }
    let select = format!("SELECT id, v FROM {} ORDER BY id", db.table);

    let done = session
        .execute(sqlx::query(sql(format!(
            "UPDATE {} SET v = v WHERE id >= 2",
            db.table
        ))))
        .unwrap();
    assert_eq!(done.rows_affected(), 2);

    let rows: Vec<(i64, String)> =
        blocking_fetch_all_pairs(&mut session, sql(select.clone())).unwrap();
    assert_eq!(rows[2], (3, "row 3".to_owned()));

    let row = session.fetch_one(sqlx::query(sql(select.clone()))).unwrap();
    assert_eq!(B::Db::column0_i64(&row), 1);

    let v: Option<String> = blocking_fetch_optional_string(
        &mut session,
        sql(format!("SELECT v FROM {} WHERE id = 2", db.table)),
    )
    .unwrap();
    assert_eq!(v.as_deref(), Some("row 2"));

    let ids: Vec<i64> = session
        .fetch_all(
            sqlx::query(sql(select.clone()))
                .map(|row: <B::Db as sqlx::Database>::Row| B::Db::column0_i64(&row)),
        )
        .unwrap();
    assert_eq!(ids, [1, 2, 3]);

    let raw_rows = session
        .fetch_all(sqlx::raw_sql(sql(select.clone())))
        .unwrap();
    assert_eq!(raw_rows.len(), 3);

    let missing = blocking_fetch_i64(
        &mut session,
        sql(format!("SELECT id FROM {} WHERE id = 99", db.table)),
    )
    .unwrap_err();
    let source = std::error::Error::source(&missing).and_then(|e| e.downcast_ref());
    assert!(
        matches!(source, Some(sqlx::Error::RowNotFound)),
        "{missing}"
    );
    assert_eq!(missing.kind(), dbscope::ErrorKind::Query);
    assert_eq!(missing.bind(), Some("main"));

    // The escape hatch: any async code on the session, a stream and the raw connection.
    let streamed = session
        .run(async |s| {
            sqlx::query(sql(select.clone()))
                .fetch(s)
                .try_collect::<Vec<_>>()
                .await
        })
        .unwrap();
    assert_eq!(streamed.len(), 3);
    let table = db.table.clone();
    let via_raw: i64 = session
        .run(async move |s| {
            let raw = s.connection().await?;
            let n = B::Db::raw_fetch_i64(raw, sql(format!("SELECT COUNT(*) FROM {table}")).into())
                .await?;
            Ok::<_, Error>(n)
        })
        .unwrap();
    assert_eq!(
        via_raw, 3,
        "the raw connection is inside the session's transaction"
    );

    session.commit().unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db), 3);
    drop(session);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn pool_exhaustion_times_out_within_the_acquire_timeout<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let timeout = Duration::from_millis(300);
    let manager = db.manager(|c| c.max_connections(1).acquire_timeout(timeout));
    let mut holder = manager.blocking_session::<B::Db>("main").unwrap();
    holder.execute(sqlx::query("SELECT 1")).unwrap();

    let mut waiter = manager.blocking_session::<B::Db>("main").unwrap();
    let start = Instant::now();
    let err = waiter.begin().unwrap_err();
    let waited = start.elapsed();
    assert!(
        err.kind() == dbscope::ErrorKind::Timeout && err.bind() == Some("main"),
        "{err}"
    );
    assert!(err.to_string().contains("acquire_timeout"), "{err}");
    assert!(
        waited >= timeout && waited < timeout * 5,
        "waited {waited:?}"
    );

    // A statement's checkout reports the same typed error.
    let err = waiter.execute(sqlx::query("SELECT 1")).unwrap_err();
    assert!(
        err.kind() == dbscope::ErrorKind::Timeout && err.bind() == Some("main"),
        "{err}"
    );
    assert_eq!(blocking_status::<B>(&manager).timeouts, 2);

    // The waiter works once the holder lets go.
    drop(holder);
    waiter.execute(sqlx::query("SELECT 1")).unwrap();
    drop(waiter);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn read_only_sessions_refuse_writes_and_leave_the_connection_writable<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c.max_connections(1));
    create_table::<B>(&manager, &db);
    let mut reader = manager
        .blocking_session::<B::Db>("main")
        .unwrap()
        .read_only(true);
    assert_eq!(count(&mut reader, &db), 0);
    let err = insert(&mut reader, &db, 1).unwrap_err();
    assert!(err.as_database_error().is_some(), "{err}");
    reader.close().unwrap();
    // Same (only) connection, default options: writable again.
    let mut writer = manager.blocking_session::<B::Db>("main").unwrap();
    insert(&mut writer, &db, 1).unwrap();
    writer.commit().unwrap();
    drop(writer);
    assert_eq!(committed_rows::<B>(&manager, &db), 1);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn isolation_level_reaches_the_server<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let session = manager.blocking_session::<B::Db>("main").unwrap();
    match B::KIND {
        Kind::Postgres => {
            let mut session = session.isolation(IsolationLevel::Serializable);
            let level: String = blocking_fetch_string(
                &mut session,
                "SELECT current_setting('transaction_isolation')",
            )
            .unwrap();
            assert_eq!(level, "serializable");
        }
        Kind::MySql => {
            let mut session = session.isolation(IsolationLevel::ReadCommitted);
            insert(&mut session, &db, 1).unwrap();
            let me: i64 =
                blocking_fetch_i64(&mut session, "SELECT CAST(CONNECTION_ID() AS SIGNED)").unwrap();
            // innodb_trx is a cached snapshot (other clients of the server may keep it
            // stale for a while): wait for our transaction to show, then check it.
            let mut level = None;
            eventually("our transaction in innodb_trx", || {
                let trx = census(db.innodb_transactions());
                level = trx.into_iter().find(|(id, _)| *id == me).map(|(_, l)| l);
                level.is_some()
            });
            assert_eq!(level.as_deref(), Some("READ COMMITTED"));
        }
        Kind::SqliteFile | Kind::SqliteMemory => {
            let mut weaker = session.isolation(IsolationLevel::ReadCommitted);
            let err = weaker.begin().unwrap_err();
            assert_eq!(err.kind(), dbscope::ErrorKind::Unsupported, "{err}");
            assert!(!weaker.in_transaction());
            let mut session = weaker.isolation(IsolationLevel::Serializable);
            session.begin().unwrap();
        }
    }
    manager.close_blocking(CLOSE).ok();
    finish(db);
}

fn autocommit_lands_each_statement_without_a_transaction<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let mut session = manager
        .blocking_session::<B::Db>("main")
        .unwrap()
        .autocommit(true);
    insert(&mut session, &db, 1).unwrap();
    assert!(!session.in_transaction());
    assert_no_open_transaction(&db); // while the session still holds its connection
    assert_eq!(
        committed_rows::<B>(&manager, &db),
        1,
        "visible before any commit"
    );
    drop(session);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn typed_bind_keys_select_the_blocking_bind<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    let mut session = manager.blocking_session_for::<B::Main>().unwrap();
    session.execute(sqlx::query("SELECT 1")).unwrap();
    session.commit().unwrap();
    assert_eq!(
        manager.blocking_bind_for::<B::Main>().unwrap().name(),
        "main"
    );
    let err = manager.blocking_bind::<B::Other>("main").unwrap_err();
    assert!(err.is_backend_mismatch(), "{err}");
    let err = manager.blocking_bind::<B::Db>("mian").unwrap_err();
    assert!(
        err.is_unknown_bind() && err.to_string().contains("known binds: main"),
        "{err}"
    );
    drop(session);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn the_async_and_blocking_faces_share_one_database_and_list_both_pools<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    census(async {
        let mut session = manager.session::<B::Db>("main").unwrap();
        let stmt = format!("INSERT INTO {} (id, v) VALUES (1, 'async')", db.table);
        sqlx::query(sql(stmt)).execute(&mut session).await.unwrap();
        session.commit().await.unwrap();
        session.close().await.unwrap();
    });
    assert_eq!(
        committed_rows::<B>(&manager, &db),
        1,
        "blocking code sees what async code committed"
    );

    let status = manager.status();
    assert_eq!(status.len(), 2, "{status:?}");
    assert_eq!(
        (status[0].name.as_str(), status[0].blocking),
        ("main", false)
    );
    assert_eq!(
        (status[1].name.as_str(), status[1].blocking),
        ("main", true)
    );
    assert_eq!((status[0].connections, status[1].connections), (1, 1));
    manager.close_blocking(CLOSE).unwrap();
    assert!(
        manager
            .status()
            .iter()
            .all(|s| s.connections == 0 && s.closed)
    );
    finish(db);
}

fn close_waits_for_sessions_then_closes_every_connection<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    let mut idle = bind.session();
    idle.execute(sqlx::query("SELECT 1")).unwrap();
    idle.close().unwrap(); // one idle connection
    let mut busy = bind.session();
    busy.execute(sqlx::query("SELECT 1")).unwrap();

    let closing = thread::spawn({
        let manager = manager.clone();
        move || manager.close_blocking(Duration::from_secs(10))
    });
    thread::sleep(Duration::from_millis(200));
    assert!(
        !closing.is_finished(),
        "close waits for the session holding a connection"
    );
    assert!(manager.is_closed());
    assert!(
        manager
            .blocking_session::<B::Db>("main")
            .unwrap_err()
            .is_closed()
    );
    assert!(bind.session().begin().unwrap_err().is_closed());

    busy.commit().unwrap();
    drop(busy);
    closing.join().unwrap().unwrap();
    assert_eq!(bind.status().connections, 0);
    if census(db.server_connections()).is_some() {
        eventually("the server sees every connection closed", || {
            census(db.server_connections()) == Some(0)
        });
    }
    finish(db);
}

fn close_reports_the_blocking_face_still_busy_at_its_deadline<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    let mut busy = manager.blocking_session::<B::Db>("main").unwrap();
    busy.execute(sqlx::query("SELECT 1")).unwrap();
    let err = manager
        .close_blocking(Duration::from_millis(100))
        .unwrap_err();
    assert!(
        err.kind() == dbscope::ErrorKind::CloseTimedOut
            && err.busy_binds() == [("main (blocking)".to_owned(), 1)],
        "{err}"
    );
    // The straggler's transaction still ends cleanly when it drops.
    drop(busy);
    assert_no_open_transaction(&db);
    finish(db);
}

fn dropping_the_manager_closes_idle_blocking_connections<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    let mut session = bind.session();
    session.execute(sqlx::query("SELECT 1")).unwrap();
    drop(session);
    assert_eq!(bind.status().idle, 1);
    drop(manager);
    assert!(bind.session().begin().unwrap_err().is_closed());
    assert_eq!(bind.status().connections, 0);
    if census(db.server_connections()).is_some() {
        eventually("the server sees the idle connection closed", || {
            census(db.server_connections()) == Some(0)
        });
    }
    finish(db);
}

fn connect_blocking_opens_a_connection_eagerly<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    manager.connect_blocking().unwrap();
    assert_eq!(blocking_status::<B>(&manager).connections, 1);
    if let Some(n) = census(db.server_connections()) {
        assert_eq!(n, 1);
    }
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn min_connections_and_idle_timeout_are_honoured_on_the_blocking_face<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| {
        c.min_connections(2)
            .max_connections(4)
            .idle_timeout(Some(Duration::from_millis(200)))
    });
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    assert_eq!(bind.status().connections, 0, "the pool starts empty");
    let mut sessions: Vec<_> = (0..3).map(|_| bind.session()).collect();
    for session in &mut sessions {
        session.execute(sqlx::query("SELECT 1")).unwrap();
    }
    // The upkeep may have opened one more meanwhile, for min_connections, when a connect was
    // slower than its period (50 ms here).
    let status = bind.status();
    assert!(status.in_use == 3 && status.connections <= 4, "{status:?}");
    drop(sessions);
    eventually("idle connections close down to min_connections", || {
        bind.status().connections == 2
    });
    thread::sleep(Duration::from_millis(500));
    assert_eq!(bind.status().connections, 2, "never below min_connections");
    if let Some(n) = census(db.server_connections()) {
        assert_eq!(n, 2);
    }
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn many_threads_share_a_small_pool_without_deadlock<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| {
        c.max_connections(2)
            .acquire_timeout(Duration::from_secs(30))
    });
    create_table::<B>(&manager, &db);
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    const THREADS: i64 = 16;
    const EACH: i64 = 10;
    let table = db.table.clone();
    within(Duration::from_secs(120), move || {
        let start = Arc::new(Barrier::new(THREADS as usize));
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (bind, start, table) = (bind.clone(), start.clone(), table.clone());
                thread::spawn(move || {
                    start.wait();
                    for i in 0..EACH {
                        let mut session = bind.session();
                        let id = t * EACH + i;
                        let stmt =
                            format!("INSERT INTO {table} (id, v) VALUES ({id}, 'thread {t}')");
                        session.execute(sqlx::query(sql(stmt)))?;
                        session.commit()?;
                    }
                    Ok::<_, Error>(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .expect("worker thread")
                .expect("every session succeeds");
        }
    });
    assert_eq!(committed_rows::<B>(&manager, &db), THREADS * EACH);
    let status = blocking_status::<B>(&manager);
    assert!(status.connections <= 2 && status.in_use == 0, "{status:?}");
    assert_eq!((status.timeouts, status.discarded), (0, 0));
    assert_no_open_transaction(&db);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

/// Threads waiting for a connection are served in the order they asked, and a thread that gives
/// its connection back and asks again waits behind them: the hand-over `PoolConfig`'s
/// `max_connections` documents (r2d2 lets such a thread take its connection straight back).
///
/// Deterministic: each waiter is seen queued (`status().waiting`) before the next one starts,
/// and the pool's one connection passes from each thread to the next, each noting its turn
/// while it holds the connection.
fn waiting_threads_are_served_in_the_order_they_asked<B: Suite>() {
    const WAITERS: usize = 5;
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| {
        c.max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .health_check(HealthCheck::Never)
    });
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    let order = within(Duration::from_secs(120), move || {
        let turns = Arc::new(Mutex::new(Vec::new()));
        let mut held = bind.session();
        held.execute(sqlx::query("SELECT 1")).unwrap(); // the pool's only connection
        let waiters: Vec<_> = (0..WAITERS)
            .map(|w| {
                let (mine, turns) = (bind.clone(), turns.clone());
                let waiter = thread::spawn(move || {
                    let mut session = mine.session();
                    session.execute(sqlx::query("SELECT 1"))?;
                    turns.lock().unwrap().push(format!("waiter {w}"));
                    session.commit() // and dropped: the connection goes to the next in line
                });
                eventually(&format!("waiter {w} queued"), || {
                    bind.status().waiting == w + 1
                });
                waiter
            })
            .collect();
        held.commit().unwrap();
        drop(held); // to waiter 0
        let mut again = bind.session();
        again.execute(sqlx::query("SELECT 1")).unwrap();
        turns
            .lock()
            .unwrap()
            .push("the thread that gave it back".to_owned());
        drop(again);
        for waiter in waiters {
            waiter
                .join()
                .expect("waiter thread")
                .expect("waiter served");
        }
        Arc::try_unwrap(turns).unwrap().into_inner().unwrap()
    });
    let mut expected: Vec<String> = (0..WAITERS).map(|w| format!("waiter {w}")).collect();
    expected.push("the thread that gave it back".to_owned());
    assert_eq!(order, expected);
    let status = blocking_status::<B>(&manager);
    assert_eq!((status.in_use, status.timeouts), (0, 0), "{status:?}");
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn threads_that_wait_past_the_acquire_timeout_get_timeout_errors<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c.max_connections(2).acquire_timeout(Duration::from_secs(1)));
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    // Both connections open first, so that the first two threads are served at once.
    eventually("two idle connections", || {
        let mut pair = [bind.session(), bind.session()];
        pair.iter_mut()
            .all(|s| s.execute(sqlx::query("SELECT 1")).is_ok())
    });
    let warm_up_timeouts = bind.status().timeouts;
    const THREADS: usize = 8;
    let outcomes = within(Duration::from_secs(60), move || {
        let start = Arc::new(Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (bind, start) = (bind.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    let mut session = bind.session();
                    session.execute(sqlx::query("SELECT 1"))?;
                    thread::sleep(Duration::from_secs(3)); // past the others' timeout
                    session.commit()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker thread"))
            .collect::<Vec<_>>()
    });
    // The two connections serve two threads; the rest wait past the timeout (one that
    // started very late could still be served).
    let served = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!(
        (2..THREADS).contains(&served),
        "served {served} of {THREADS}"
    );
    for outcome in &outcomes {
        if let Err(e) = outcome {
            assert!(
                e.kind() == dbscope::ErrorKind::Timeout && e.bind() == Some("main"),
                "{e}"
            );
        }
    }
    let status = blocking_status::<B>(&manager);
    assert_eq!(
        (status.timeouts - warm_up_timeouts) as usize,
        THREADS - served
    );
    assert_eq!(status.in_use, 0, "{status:?}");
    assert_no_open_transaction(&db);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn a_scope_commits_on_ok_and_rolls_back_on_err_sharing_one_session<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let add = |id: i64| -> dbscope::Result<()> {
        let mut session = blocking::current_session::<B::Db>("main")?;
        scoped_insert(&mut session, &db, id)
    };
    blocking::scope(&manager, || {
        add(1)?;
        add(2)?;
        // Other code of the scope sees the scope's uncommitted work: one session.
        let mut session = blocking::current_session::<B::Db>("main")?;
        assert!(session.in_transaction()?);
        assert_eq!(scoped_count(&mut session, &db), 2);
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db), 2);

    let err = blocking::scope(&manager, || {
        add(3)?;
        add(1) // a duplicate key: the work fails
    })
    .unwrap_err();
    assert!(err.as_database_error().is_some(), "{err}");
    assert_eq!(
        committed_rows::<B>(&manager, &db),
        2,
        "the failed scope rolled back"
    );
    assert_eq!(blocking_status::<B>(&manager).in_use, 0);
    assert_no_open_transaction(&db);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

/// Three layers of blocking code, each asking for the session and writing while the layer
/// above still has its handle: one session, all committed by the scope.
fn nested_handles_share_one_blocking_session<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    fn layer<B: Suite>(db: &TestDb, id: i64, depth: u32) -> dbscope::Result<()> {
        let mut session = blocking::current_session::<B::Db>("main")?;
        scoped_insert(&mut session, db, id)?;
        if depth > 1 {
            layer::<B>(db, id + 1, depth - 1)?;
        }
        Ok(())
    }
    blocking::scope(&manager, || {
        let mut outer = blocking::current_session::<B::Db>("main")?;
        scoped_insert(&mut outer, &db, 10)?;
        layer::<B>(&db, 1, 3)?;
        assert_eq!(
            scoped_count(&mut outer, &db),
            4,
            "the outer handle sees the nested writes"
        );
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(committed_rows::<B>(&manager, &db), 4);
    assert_eq!(blocking_status::<B>(&manager).discarded, 0);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

/// What blocking scopes share with async ones: hooks (a before-commit hook using the scope's
/// session, its veto), declared binds, autocommit mode.
fn blocking_scopes_have_hooks_declared_binds_and_autocommit<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let log = Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    let table = db.table.clone();
    manager
        .scope()
        .bind("main")
        .before_commit(move || {
            let (log, table) = (l1.clone(), table.clone());
            async move {
                // Inside the scope: the hook writes through the scope's own session.
                let mut session = dbscope::current_session::<B::Db>("main").await?;
                let stmt = format!("INSERT INTO {table} (id, v) VALUES (99, 'hook')");
                sqlx::query(sql(stmt)).execute(&mut session).await?;
                log.lock().unwrap().push("before commit");
                Ok(())
            }
        })
        .after_commit(move || {
            let log = l2.clone();
            async move { log.lock().unwrap().push("after commit") }
        })
        .after_rollback(move || {
            let log = l3.clone();
            async move { log.lock().unwrap().push("after rollback") }
        })
        .run_blocking(|| {
            let mut session = blocking::current_session::<B::Db>("main")?;
            scoped_insert(&mut session, &db, 1)?;
            let undeclared = blocking::current_session::<B::Db>("other").unwrap_err();
            assert_eq!(
                undeclared.kind(),
                dbscope::ErrorKind::BindNotInScope,
                "{undeclared}"
            );
            Ok::<_, Error>(())
        })
        .unwrap();
    assert_eq!(*log.lock().unwrap(), ["before commit", "after commit"]);
    assert_eq!(
        committed_rows::<B>(&manager, &db),
        2,
        "the work's row and the hook's"
    );

    let vetoed = manager
        .scope()
        .before_commit(|| async { Err("refused".into()) })
        .run_blocking(|| {
            let mut session = blocking::current_session::<B::Db>("main")?;
            scoped_insert(&mut session, &db, 2)
        })
        .unwrap_err();
    assert!(vetoed.is_commit_vetoed(), "{vetoed}");
    assert_eq!(
        committed_rows::<B>(&manager, &db),
        2,
        "the veto rolled back"
    );

    // Autocommit: each write lands at once, whatever the outcome.
    let failed = manager.scope().autocommit().run_blocking(|| {
        let mut session = blocking::current_session::<B::Db>("main")?;
        scoped_insert(&mut session, &db, 3)?;
        assert!(!session.in_transaction()?);
        assert_eq!(
            committed_rows::<B>(&manager, &db),
            3,
            "landed before the scope ends"
        );
        Err::<(), _>(Error::from(sqlx::Error::RowNotFound))
    });
    assert!(failed.is_err());
    assert_eq!(committed_rows::<B>(&manager, &db), 3);
    assert_eq!(blocking_status::<B>(&manager).in_use, 0);
    assert_no_open_transaction(&db);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

/// Atomic blocks in blocking scopes: a savepoint undone alone, a panic inside the block rolling
/// it back, and the policies for an open transaction.
fn blocking_atomic_blocks_commit_or_roll_back_on_their_own<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let add = |id: i64| -> dbscope::Result<()> {
        let mut session = blocking::current_session::<B::Db>("main")?;
        scoped_insert(&mut session, &db, id)
    };
    blocking::scope(&manager, || {
        add(1)?;
        // A failing block inside the scope's transaction: its savepoint rolls back alone.
        let failed = blocking::atomic::<B::Db>("main").run(|| {
            add(2)?;
            Err::<(), _>(Error::from(sqlx::Error::RowNotFound))
        });
        assert!(failed.is_err());
        // A panicking block rolls back too, before the session's next use.
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            blocking::atomic::<B::Db>("main").run(|| {
                add(3)?;
                if db.table.len() < usize::MAX {
                    panic!("the block panics");
                }
                Ok::<_, Error>(())
            })
        }));
        assert!(panicked.is_err());
        blocking::atomic::<B::Db>("main").run(|| add(4))?;
        let mut session = blocking::current_session::<B::Db>("main")?;
        assert_eq!(scoped_count(&mut session, &db), 2, "rows 1 and 4");
        // `Commit`: the open transaction commits first, then the block runs in its own.
        blocking::atomic::<B::Db>("main")
            .if_open(dbscope::IfOpen::Commit)
            .run(|| add(5))?;
        assert_eq!(
            committed_rows::<B>(&manager, &db),
            3,
            "committed by the block"
        );
        add(6)?;
        // `Fail`: refused while a transaction is open.
        let refused = blocking::atomic::<B::Db>("main")
            .if_open(dbscope::IfOpen::Fail)
            .run(|| add(7))
            .unwrap_err();
        assert_eq!(
            refused.kind(),
            dbscope::ErrorKind::TransactionOpen,
            "{refused}"
        );
        Err::<(), _>(Error::from(sqlx::Error::RowNotFound)) // the scope rolls back row 6
    })
    .unwrap_err();
    assert_eq!(committed_rows::<B>(&manager, &db), 3, "rows 1, 4 and 5");
    let outside = blocking::atomic::<B::Db>("main").run(|| Ok::<_, Error>(()));
    assert!(outside.unwrap_err().is_no_scope());
    assert_eq!(blocking_status::<B>(&manager).in_use, 0);
    assert_no_open_transaction(&db);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn a_panic_inside_a_scope_rolls_back<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        blocking::scope(&manager, || {
            let mut session = blocking::current_session::<B::Db>("main")?;
            scoped_insert(&mut session, &db, 1)?;
            drop(session);
            if db.table.len() < usize::MAX {
                panic!("the work panics mid-scope");
            }
            Ok::<_, Error>(())
        })
    }));
    assert!(panicked.is_err());
    let status = blocking_status::<B>(&manager);
    assert_eq!(
        (status.in_use, status.discarded),
        (0, 0),
        "rolled back, returned clean"
    );
    assert_no_open_transaction(&db);
    assert_eq!(committed_rows::<B>(&manager, &db), 0);
    assert!(
        blocking::current_session::<B::Db>("main")
            .unwrap_err()
            .is_no_scope(),
        "the scope ended with the panic"
    );
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

/// A before-commit hook that panics ends the scope all the same: nothing commits, and a handle
/// kept past the scope cannot commit its work later.
fn a_panicking_before_commit_hook_ends_the_scope<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let mut kept = None;
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        manager
            .scope()
            .before_commit(|| async {
                if usize::MAX > 0 {
                    panic!("the hook panics");
                }
                Ok(())
            })
            .run_blocking(|| {
                let mut session = blocking::current_session::<B::Db>("main")?;
                scoped_insert(&mut session, &db, 1)?;
                kept = Some(session);
                Ok::<_, Error>(())
            })
    }));
    assert!(panicked.is_err(), "the hook's panic goes on");
    let mut kept = kept.expect("the handle");
    let late = scoped_insert(&mut kept, &db, 2).unwrap_err();
    assert_eq!(late.kind(), dbscope::ErrorKind::ScopeEnded, "{late}");
    drop(kept);
    assert_eq!(committed_rows::<B>(&manager, &db), 0, "nothing committed");
    assert_eq!(blocking_status::<B>(&manager).in_use, 0);
    assert_no_open_transaction(&db);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn a_session_dropped_in_async_code_rolls_back_in_the_background<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let mut session = manager.blocking_session::<B::Db>("main").unwrap();
    insert(&mut session, &db, 1).unwrap();
    census(async move {
        let err = session.commit().unwrap_err();
        assert!(err.is_blocking_in_async(), "{err}");
        drop(session); // must neither panic nor block
    });
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    eventually("the connection back in the pool", || {
        bind.status().in_use == 0
    });
    assert_eq!(bind.status().discarded, 0, "rolled back, not discarded");
    assert_no_open_transaction(&db);
    assert_eq!(committed_rows::<B>(&manager, &db), 0);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

// ----- what only a server can show: a connection killed under a blocking session -----

fn connection_id<DB: Typed>(session: &mut BlockingSession<DB>, db: &TestDb) -> i64 {
    blocking_fetch_i64(session, db.connection_id_query()).expect("connection id")
}

fn a_connection_killed_mid_session_is_discarded_not_reused<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c.max_connections(1));
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    let mut session = bind.session();
    let id = connection_id(&mut session, &db);
    census(db.kill_connection(id));
    session.execute(sqlx::query("SELECT 1")).unwrap_err();
    assert!(session.commit().unwrap_err().is_poisoned());
    drop(session);
    assert_eq!(bind.status().discarded, 1);
    let mut fresh = bind.session();
    assert_ne!(
        connection_id(&mut fresh, &db),
        id,
        "a new connection serves"
    );
    drop(fresh);
    manager.close_blocking(CLOSE).unwrap();
    census(db.finish());
}

fn health_check_always_replaces_a_dead_idle_connection<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c.max_connections(1).health_check(HealthCheck::Always));
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    let mut session = bind.session();
    let dead = connection_id(&mut session, &db);
    session.close().unwrap();
    census(db.kill_connection(dead));
    let mut session = bind.session();
    assert_ne!(
        connection_id(&mut session, &db),
        dead,
        "the ping caught it: no error"
    );
    drop(session);
    manager.close_blocking(CLOSE).unwrap();
    census(db.finish());
}

/// Locks the server holds for this test's connections (PostgreSQL's `pg_locks`; on MariaDB, the
/// InnoDB transactions, which hold its row locks).
fn locks_held<B: Suite>(db: &TestDb) -> i64 {
    let query = match B::KIND {
        Kind::Postgres => format!(
            "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE a.application_name = '{}'",
            db.tag
        ),
        _ => return census(db.open_transactions()).expect("a server database"),
    };
    census(db.admin_count(query))
}

// A blocking face's connections each have an I/O driver of their own, run by the thread using
// them; these show that what touches a connection outside its caller's operations (a rollback
// where the dropping thread may not block, recovery, polite closes) still reaches its socket.

fn a_session_dropped_in_async_code_leaves_no_lock_and_keeps_its_connection<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c.max_connections(1));
    create_table::<B>(&manager, &db);
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    let mut session = bind.session();
    let id = connection_id(&mut session, &db);
    insert(&mut session, &db, 1).unwrap();
    // MariaDB's `innodb_trx` may lag (see `common::innodb_trx_gate`): wait for it.
    eventually("the server shows the insert's locks", || {
        locks_held::<B>(&db) > 0
    });
    census(async move {
        assert!(session.commit().unwrap_err().is_blocking_in_async());
        drop(session); // must neither panic nor block this runtime
    });
    eventually("the connection back in the pool", || {
        bind.status().in_use == 0
    });
    assert_eq!(bind.status().discarded, 0, "rolled back, not discarded");
    eventually("no lock left on the server", || locks_held::<B>(&db) == 0);
    assert_no_open_transaction(&db);
    let mut next = bind.session();
    assert_eq!(
        connection_id(&mut next, &db),
        id,
        "the same connection serves again, clean"
    );
    assert_eq!(count(&mut next, &db), 0, "the insert was rolled back");
    drop(next);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

/// Cuts the session's next statement off mid-flight (from inside `run`, the only way blocking
/// code can), leaving it poisoned.
fn cut_off<B: Suite>(session: &mut BlockingSession<B::Db>) {
    session
        .run(async |s| {
            let slow = sqlx::query(B::slow_query()).execute(&mut *s);
            assert!(common::cancel_after(slow, 3).await.is_none(), "cut off");
            Ok::<_, Error>(())
        })
        .unwrap();
    assert!(session.commit().unwrap_err().is_poisoned());
}

fn a_cut_off_session_is_recovered_on_its_own_connection<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c.max_connections(1));
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();

    // Dropped in blocking code: recovered before the drop returns.
    let mut session = bind.session();
    let id = connection_id(&mut session, &db);
    cut_off::<B>(&mut session);
    drop(session);
    let status = bind.status();
    assert_eq!((status.recovered, status.discarded), (1, 0), "{status:?}");
    assert_eq!(status.idle, 1, "back in the pool: {status:?}");

    // Dropped in async code: recovered in the background.
    let mut session = bind.session();
    assert_eq!(connection_id(&mut session, &db), id, "the recovered one");
    cut_off::<B>(&mut session);
    census(async move { drop(session) });
    eventually("the second recovery", || bind.status().recovered == 2);
    assert_eq!(bind.status().discarded, 0);

    let mut next = bind.session();
    assert_eq!(
        connection_id(&mut next, &db),
        id,
        "still the same connection"
    );
    drop(next);
    assert_no_open_transaction(&db);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

fn many_threads_share_a_small_pool_pinging_every_checkout<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| {
        c.max_connections(2)
            .health_check(HealthCheck::Always)
            .acquire_timeout(Duration::from_secs(30))
    });
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    const THREADS: usize = 16;
    const EACH: usize = 20;
    let pool = bind.clone();
    within(Duration::from_secs(120), move || {
        let start = Arc::new(Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (bind, start) = (pool.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    for _ in 0..EACH {
                        let mut session = bind.session();
                        session.execute(sqlx::query("SELECT 1"))?;
                        session.commit()?;
                    }
                    Ok::<_, Error>(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .expect("worker thread")
                .expect("every session");
        }
    });
    let status = bind.status();
    assert!(status.connections <= 2 && status.in_use == 0, "{status:?}");
    assert_eq!((status.timeouts, status.discarded), (0, 0), "{status:?}");
    if let Some(n) = census(db.server_connections()) {
        assert!(n <= 2, "{n} connections on the server");
    }
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

/// A before-commit hook of a blocking scope that waits on two connections at once (two binds'
/// sessions, joined): the calling thread can drive one connection's socket, so the other's is
/// driven on a thread of its own for that wait.
fn a_hook_waiting_on_two_connections_at_once_gets_both_answers<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = BindManager::builder()
        .bind("main", db.config())
        .bind("second", db.config())
        .build()
        .unwrap();
    let slow = match B::KIND {
        Kind::Postgres => "SELECT CAST(1 AS BIGINT) FROM pg_sleep(0.2)",
        _ => "SELECT CAST(SLEEP(0.2) + 1 AS SIGNED)",
    };
    let answers = Arc::new(std::sync::Mutex::new(None));
    let seen = answers.clone();
    let scope = manager
        .scope()
        .bind("main")
        .bind("second")
        .before_commit(move || {
            let seen = seen.clone();
            async move {
                let mut main = dbscope::current_session::<B::Db>("main").await?;
                let mut second = dbscope::current_session::<B::Db>("second").await?;
                let both = futures_util::future::join(
                    common::fetch_i64(&mut main, slow),
                    common::fetch_i64(&mut second, slow),
                )
                .await;
                *seen.lock().unwrap() = Some((both.0?, both.1?));
                Ok(())
            }
        });
    within(Duration::from_secs(60), move || {
        scope.run_blocking(|| {
            for bind in ["main", "second"] {
                let mut session = blocking::current_session::<B::Db>(bind)?;
                session.execute(sqlx::query("SELECT 1"))?; // a connection each
            }
            Ok::<_, Error>(())
        })
    })
    .unwrap();
    assert_eq!(*answers.lock().unwrap(), Some((1, 1)));
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

/// A connection's socket driven from threads of tokio's own: `spawn_blocking` on both runtime
/// flavours, `block_in_place`, a thread that entered a runtime's context.
fn calls_from_spawn_blocking_and_block_in_place_reach_the_server<B: Suite>() {
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c.max_connections(1));
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    let work = move |bind: BlockingBind<B::Db>| -> dbscope::Result<i64> {
        let mut session = bind.session();
        let select = match B::KIND {
            Kind::Postgres => "SELECT CAST(42 AS BIGINT)",
            _ => "SELECT CAST(42 AS SIGNED)",
        };
        let n = common::blocking_fetch_i64(&mut session, select)?;
        session.commit()?;
        Ok(n)
    };
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let b = bind.clone();
    let n = current.block_on(async move { tokio::task::spawn_blocking(move || work(b)).await });
    assert_eq!(n.unwrap().unwrap(), 42);
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let b = bind.clone();
    let n = multi.block_on(async move { tokio::task::spawn_blocking(move || work(b)).await });
    assert_eq!(n.unwrap().unwrap(), 42);
    let b = bind.clone();
    let in_task =
        async move { tokio::spawn(async move { tokio::task::block_in_place(|| work(b)) }).await };
    let n = multi.block_on(in_task);
    assert_eq!(n.unwrap().unwrap(), 42);
    {
        let _context = multi.handle().enter();
        assert_eq!(work(bind.clone()).unwrap(), 42);
    }
    assert_eq!(bind.status().opened, 1, "one connection served them all");
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

/// A session kept in a thread-local, dropped as its thread exits, after the runtime's own
/// thread-locals: no thread can be started for its rollback then, so it discards its
/// connection and the server rolls back.
fn a_session_dropped_as_its_thread_exits_leaves_nothing_open<B: Suite>() {
    a_session_dropped_as_its_thread_exits::<B>(false);
}

/// The same, with the thread-locals in another order: tokio's before the one that keeps the
/// session, dbscope's after it (a thread that entered a runtime first, as every `spawn_blocking`
/// thread does). dbscope's are gone when the session drops, tokio's not yet: the session
/// still discards its connection, and the thread exits without aborting the process.
fn a_session_dropped_after_dbscopes_thread_locals_leaves_nothing_open<B: Suite>() {
    a_session_dropped_as_its_thread_exits::<B>(true);
}

/// A session with a transaction open, kept in a thread-local of a thread that exits; with
/// `tokio_first`, tokio's thread-local is made before that one, else after it. Thread-locals
/// are destroyed in the reverse order they were made in; dbscope's are made at the first
/// statement, after both.
fn a_session_dropped_as_its_thread_exits<B: Suite>(tokio_first: bool) {
    thread_local! {
        static KEPT: std::cell::RefCell<Option<Box<dyn std::any::Any>>> =
            const { std::cell::RefCell::new(None) };
    }
    let db = census(TestDb::new(B::KIND));
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db);
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    let (held, table) = (bind.clone(), db.table.clone());
    thread::spawn(move || {
        if tokio_first {
            assert!(tokio::runtime::Handle::try_current().is_err());
        }
        KEPT.with(|_| ());
        let mut session = held.session();
        let stmt = format!("INSERT INTO {table} (id, v) VALUES (1, 'kept')");
        session.execute(sqlx::query(sql(stmt))).unwrap();
        KEPT.set(Some(Box::new(session)));
    })
    .join()
    .expect("the thread exits without a panic (a panic there would abort the process)");
    eventually("the connection back or discarded", || {
        bind.status().in_use == 0
    });
    assert_no_open_transaction(&db);
    assert_eq!(committed_rows::<B>(&manager, &db), 0);
    manager.close_blocking(CLOSE).unwrap();
    finish(db);
}

common::blocking_tests!(postgres_server, common::Pg:
    a_connection_killed_mid_session_is_discarded_not_reused,
    health_check_always_replaces_a_dead_idle_connection,
    a_session_dropped_in_async_code_leaves_no_lock_and_keeps_its_connection,
    a_cut_off_session_is_recovered_on_its_own_connection,
    many_threads_share_a_small_pool_pinging_every_checkout,
    a_hook_waiting_on_two_connections_at_once_gets_both_answers,
    calls_from_spawn_blocking_and_block_in_place_reach_the_server,
    a_session_dropped_as_its_thread_exits_leaves_nothing_open,
    a_session_dropped_after_dbscopes_thread_locals_leaves_nothing_open,
);
common::blocking_tests!(mysql_server, common::MySql:
    a_connection_killed_mid_session_is_discarded_not_reused,
    health_check_always_replaces_a_dead_idle_connection,
    a_session_dropped_in_async_code_leaves_no_lock_and_keeps_its_connection,
    a_cut_off_session_is_recovered_on_its_own_connection,
    many_threads_share_a_small_pool_pinging_every_checkout,
    a_hook_waiting_on_two_connections_at_once_gets_both_answers,
    calls_from_spawn_blocking_and_block_in_place_reach_the_server,
    a_session_dropped_as_its_thread_exits_leaves_nothing_open,
    a_session_dropped_after_dbscopes_thread_locals_leaves_nothing_open,
);

// ----- polite closes, proved by PostgreSQL's own count of abandoned sessions -----

/// PostgreSQL's count of sessions of `database` that ended because their client went away
/// without a goodbye, and how many of its backends are open.
async fn abandoned_and_open(admin: &str, database: &str) -> (i64, i64) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await.expect("admin");
    let query = format!(
        "SELECT COALESCE((SELECT sessions_abandoned FROM pg_stat_database \
                          WHERE datname = '{database}'), 0), \
                (SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{database}')"
    );
    let counts = sqlx::query_as(sql(query))
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_database");
    conn.close().await.ok();
    counts
}

async fn admin_execute(admin: &str, statement: String) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await.expect("admin");
    sqlx::raw_sql(sql(statement))
        .execute(&mut conn)
        .await
        .expect("admin statement");
    conn.close().await.ok();
}

/// Holds `n` connections of `bind` at once, then gives them all back.
fn open_connections<DB: common::Typed>(bind: &BlockingBind<DB>, n: usize) {
    let mut sessions: Vec<_> = (0..n).map(|_| bind.session()).collect();
    for session in &mut sessions {
        session.execute(sqlx::query("SELECT 1")).unwrap();
    }
    drop(sessions);
}

#[test]
fn idle_connections_reaped_or_closed_with_the_pool_say_goodbye() {
    within(common::TEST_LIMIT, || {
        let admin = common::server_url(common::PG_ENV, common::PG_DEFAULT);
        let database = format!("dbscope_t_{}_goodbye", std::process::id());
        census(admin_execute(&admin, format!("CREATE DATABASE {database}")));
        let mut url = url::Url::parse(&admin).expect("PostgreSQL URL");
        url.set_path(&database);
        let counts = || census(abandoned_and_open(&admin, &database));

        // The control: a connection dropped without a goodbye is counted.
        census(async {
            use sqlx::Connection;
            let conn = sqlx::PgConnection::connect(url.as_str()).await.unwrap();
            drop(conn);
        });
        eventually("the abandoned session counted", || counts() == (1, 0));

        let manager = BindManager::builder()
            .bind(
                "main",
                BindConfig::new(url.as_str())
                    .max_connections(3)
                    .idle_timeout(Some(Duration::from_millis(300))),
            )
            .build()
            .unwrap();
        let bind = manager.blocking_bind::<sqlx::Postgres>("main").unwrap();

        // Reaped by idle_timeout.
        open_connections(&bind, 3);
        eventually("the idle connections reaped", || {
            bind.status().connections == 0
        });
        eventually("their backends gone", || counts().1 == 0);

        // Closed with the pool.
        open_connections(&bind, 3);
        manager.close_blocking(CLOSE).unwrap();
        assert_eq!(bind.status().connections, 0);
        eventually("their backends gone", || counts().1 == 0);

        assert_eq!(counts(), (1, 0), "no session of the pool's was abandoned");
        census(admin_execute(
            &admin,
            format!("DROP DATABASE {database} WITH (FORCE)"),
        ));
    });
}

/// The blocking suite's tests, for one backend.
macro_rules! blocking_suite_tests {
    ($module:ident, $suite:ty) => {
        common::blocking_tests!($module, $suite:
            no_connection_before_first_statement,
            commit_is_visible_to_another_session,
            rollback_is_invisible,
            a_dropped_session_rolls_back_before_the_drop_returns,
            savepoint_rollback_keeps_the_outer_work,
            a_dropped_savepoint_rolls_back_before_the_next_statement,
            nested_savepoints_commit_into_the_transaction,
            a_failed_statement_inside_a_savepoint_can_be_undone,
            commit_after_a_failed_statement_follows_the_database,
            queries_of_every_shape_run_through_plain_methods,
            pool_exhaustion_times_out_within_the_acquire_timeout,
            read_only_sessions_refuse_writes_and_leave_the_connection_writable,
            isolation_level_reaches_the_server,
            autocommit_lands_each_statement_without_a_transaction,
            typed_bind_keys_select_the_blocking_bind,
            the_async_and_blocking_faces_share_one_database_and_list_both_pools,
            close_waits_for_sessions_then_closes_every_connection,
            close_reports_the_blocking_face_still_busy_at_its_deadline,
            dropping_the_manager_closes_idle_blocking_connections,
            connect_blocking_opens_a_connection_eagerly,
            min_connections_and_idle_timeout_are_honoured_on_the_blocking_face,
            many_threads_share_a_small_pool_without_deadlock,
            waiting_threads_are_served_in_the_order_they_asked,
            threads_that_wait_past_the_acquire_timeout_get_timeout_errors,
            a_scope_commits_on_ok_and_rolls_back_on_err_sharing_one_session,
            a_panic_inside_a_scope_rolls_back,
            a_panicking_before_commit_hook_ends_the_scope,
            nested_handles_share_one_blocking_session,
            blocking_scopes_have_hooks_declared_binds_and_autocommit,
            blocking_atomic_blocks_commit_or_roll_back_on_their_own,
            a_session_dropped_in_async_code_rolls_back_in_the_background,
            a_stream_dropped_after_its_first_row_leaves_the_session_usable,
        );
    };
}

blocking_suite_tests!(sqlite_file, common::SqliteFile);
blocking_suite_tests!(sqlite_memory, common::SqliteMemory);
blocking_suite_tests!(postgres, common::Pg);
blocking_suite_tests!(mysql, common::MySql);

// ----- calls from inside tokio runtimes -----

fn memory_manager() -> BindManager {
    BindManager::new(BindConfig::new("sqlite::memory:")).unwrap()
}

/// Every blocking entry point, called from async code: each must refuse with the documented
/// error, touching nothing. Returns how many were checked.
fn every_blocking_call_refuses(manager: &BindManager, bind: &BlockingBind<sqlx::Sqlite>) -> usize {
    let refused = |what: &str, result: dbscope::Result<()>| {
        let err = result.expect_err(what);
        assert!(err.is_blocking_in_async(), "{what}: {err}");
        let message = err.to_string();
        assert!(
            message.contains("spawn_blocking") && message.contains("async API"),
            "{message}"
        );
    };
    let mut session = bind.session();
    let checks: Vec<(&str, dbscope::Result<()>)> = vec![
        (
            "execute",
            session.execute(sqlx::query("SELECT 1")).map(|_| ()),
        ),
        (
            "fetch_one",
            session
                .fetch_one(sqlx::query_scalar::<_, i64>("SELECT 1"))
                .map(|_| ()),
        ),
        (
            "fetch_all",
            session.fetch_all(sqlx::query("SELECT 1")).map(|_| ()),
        ),
        ("begin", session.begin()),
        ("commit", session.commit()),
        ("rollback", session.rollback()),
        ("savepoint", session.savepoint().map(|_| ())),
        ("run", session.run(async |_| Ok::<_, Error>(()))),
        ("bind.connect", bind.connect()),
        ("connect_blocking", manager.connect_blocking()),
        ("close_blocking", manager.close_blocking(Duration::ZERO)),
        ("scope", blocking::scope(manager, || Ok::<_, Error>(()))),
    ];
    let n = checks.len();
    for (what, result) in checks {
        refused(what, result);
    }
    assert!(!session.is_connected(), "a refused call touches nothing");
    let err = session.close().unwrap_err();
    assert!(
        err.is_blocking_in_async() && err.bind() == Some("default"),
        "{err}"
    );
    assert_eq!(bind.status().connections, 0, "no connection was opened");
    assert!(
        !manager.is_closed(),
        "close_blocking refused before closing anything"
    );
    n + 1
}

#[test]
fn blocking_calls_in_a_current_thread_runtime_return_the_documented_error() {
    let manager = memory_manager();
    let bind = manager.blocking_bind::<sqlx::Sqlite>("default").unwrap();
    let checked = within(Duration::from_secs(30), move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { every_blocking_call_refuses(&manager, &bind) })
    });
    assert_eq!(checked, 13);
}

#[test]
fn blocking_calls_in_a_multi_thread_runtime_return_the_documented_error() {
    let manager = memory_manager();
    let bind = manager.blocking_bind::<sqlx::Sqlite>("default").unwrap();
    within(Duration::from_secs(30), move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // In the runtime's own block_on, and in a task on a worker thread.
        runtime.block_on(async { every_blocking_call_refuses(&manager, &bind) });
        let in_task = runtime.spawn(async move { every_blocking_call_refuses(&manager, &bind) });
        runtime.block_on(in_task).unwrap();
    });
}

#[test]
fn blocking_calls_work_in_spawn_blocking_and_block_in_place() {
    let manager = memory_manager();
    let bind = manager.blocking_bind::<sqlx::Sqlite>("default").unwrap();
    let work = move |bind: BlockingBind<sqlx::Sqlite>| -> dbscope::Result<i64> {
        let mut session = bind.session();
        let n = session.fetch_one(sqlx::query_scalar("SELECT 40 + 2"))?;
        session.commit()?;
        Ok(n)
    };
    within(Duration::from_secs(30), move || {
        let current = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        current.block_on(async {
            let b = bind.clone();
            let n = tokio::task::spawn_blocking(move || work(b))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, 42);
        });
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        multi.block_on(async {
            let b = bind.clone();
            assert_eq!(
                tokio::task::spawn_blocking(move || work(b))
                    .await
                    .unwrap()
                    .unwrap(),
                42
            );
            let b = bind.clone();
            let in_task = tokio::spawn(async move { tokio::task::block_in_place(|| work(b)) });
            assert_eq!(in_task.await.unwrap().unwrap(), 42);
            // A blocking scope inside spawn_blocking.
            let m = manager.clone();
            let scoped = tokio::task::spawn_blocking(move || {
                blocking::scope(&m, || {
                    let mut s = blocking::current_session::<sqlx::Sqlite>("default")?;
                    s.fetch_one(sqlx::query_scalar::<_, i64>("SELECT 7"))
                })
            });
            assert_eq!(scoped.await.unwrap().unwrap(), 7);
        });
        // A plain thread that merely entered a runtime's context may block too.
        let _context = multi.handle().enter();
        assert_eq!(work(bind.clone()).unwrap(), 42);
    });
}

#[test]
fn a_blocking_call_inside_run_refuses_instead_of_waiting_on_itself() {
    let manager = memory_manager();
    let bind = manager.blocking_bind::<sqlx::Sqlite>("default").unwrap();
    within(Duration::from_secs(30), move || {
        let mut outer = bind.session();
        let mut inner = bind.session();
        let err = outer
            .run(async |_| inner.execute(sqlx::query("SELECT 1")).map(|_| ()))
            .unwrap_err();
        assert!(err.is_blocking_in_async(), "{err}");
        drop(inner); // dropped outside: fine
        outer.execute(sqlx::query("SELECT 1")).unwrap();
    });
}

// ----- scopes, beyond the suite -----

#[test]
fn current_session_outside_a_scope_or_while_leased_is_a_typed_error() {
    let err = blocking::current_session::<sqlx::Sqlite>("default").unwrap_err();
    assert!(err.is_no_scope() && err.bind() == Some("default"), "{err}");
    assert!(
        err.to_string().contains("dbscope::blocking::scope"),
        "{err}"
    );

    let timeout = Duration::from_millis(500);
    let manager =
        BindManager::new(BindConfig::new("sqlite::memory:").acquire_timeout(timeout)).unwrap();
    blocking::scope(&manager, || {
        // Handles coexist: nested code gets the same session while the outer handle lives.
        let mut outer = blocking::current_session::<sqlx::Sqlite>("default")?;
        outer.execute(sqlx::query("CREATE TABLE t (x INT)"))?;
        let mut nested = blocking::current_session::<sqlx::Sqlite>("default")?;
        nested.execute(sqlx::query("INSERT INTO t VALUES (1)"))?;
        let n: i64 = outer.fetch_one(sqlx::query_scalar("SELECT COUNT(*) FROM t"))?;
        assert_eq!(n, 1, "one session, one transaction");

        // The one way to hold the session across calls is `run`, whose code is async: a
        // blocking call there is refused at once, so nothing can wait for itself.
        let started = Instant::now();
        let err = outer
            .run(async |_| nested.execute(sqlx::query("SELECT 1")).map(|_| ()))
            .unwrap_err();
        assert!(err.is_blocking_in_async(), "{err}");
        assert!(started.elapsed() < timeout, "refused, not waited for");
        Ok::<_, Error>(())
    })
    .unwrap();

    // Another thread has no scope, whatever this one has.
    blocking::scope(&manager, || {
        let other =
            thread::spawn(|| blocking::current_session::<sqlx::Sqlite>("default").map(|_| ()));
        assert!(other.join().unwrap().unwrap_err().is_no_scope());
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
fn a_failed_commit_in_a_scope_says_which_binds_committed() {
    let dir = std::env::temp_dir();
    let tag = format!("dbscope_t_{}_scope_partial", std::process::id());
    let (first, second) = (
        dir.join(format!("{tag}_a.db")),
        dir.join(format!("{tag}_b.db")),
    );
    let url = |path: &std::path::Path| format!("sqlite://{}", path.display());
    let manager = BindManager::builder()
        .bind("first", BindConfig::new(url(&first)))
        .bind("second", BindConfig::new(url(&second)))
        .build()
        .unwrap();
    // `second` gets a deferred foreign key (sqlx turns foreign keys on): a row without its parent
    // fails at COMMIT only.
    let mut setup = manager.blocking_session::<sqlx::Sqlite>("second").unwrap();
    setup
        .execute(sqlx::raw_sql(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY); \
             CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
        ))
        .unwrap();
    setup.commit().unwrap();
    drop(setup);
    let mut setup = manager.blocking_session::<sqlx::Sqlite>("first").unwrap();
    setup
        .execute(sqlx::query("CREATE TABLE notes (body TEXT)"))
        .unwrap();
    setup.commit().unwrap();
    drop(setup);

    let err = blocking::scope(&manager, || {
        let mut a = blocking::current_session::<sqlx::Sqlite>("first")?;
        a.execute(sqlx::query("INSERT INTO notes VALUES ('kept')"))?;
        let mut b = blocking::current_session::<sqlx::Sqlite>("second")?;
        b.execute(sqlx::query("INSERT INTO child VALUES (42)"))?; // no parent 42
        Ok::<_, Error>(())
    })
    .unwrap_err();
    assert!(
        err.is_partial_commit(),
        "expected a partial commit, got {err}"
    );
    assert_eq!(
        (err.committed(), err.bind()),
        (&["first".to_owned()][..], Some("second"))
    );
    assert!(err.rolled_back().is_empty());
    let mut check = manager.blocking_session::<sqlx::Sqlite>("first").unwrap();
    assert_eq!(
        check
            .fetch_one(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM notes"))
            .unwrap(),
        1
    );
    drop(check);
    let mut check = manager.blocking_session::<sqlx::Sqlite>("second").unwrap();
    assert_eq!(
        check
            .fetch_one(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM child"))
            .unwrap(),
        0
    );
    drop(check);
    manager.close_blocking(CLOSE).unwrap();
    for path in [first, second] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn query_macros_run_on_a_blocking_session() {
    let manager = memory_manager();
    let mut session = manager.blocking_session::<sqlx::Sqlite>("default").unwrap();
    let row = session
        .fetch_one(sqlx::query!(
            r#"SELECT 1 + 1 AS "sum!: i64", 'two' AS "word!: String""#
        ))
        .unwrap();
    assert_eq!((row.sum, row.word.as_str()), (2, "two"));
    let answer = session
        .fetch_one(sqlx::query_scalar!(r#"SELECT 40 + ? AS "n!: i64""#, 2_i64))
        .unwrap();
    assert_eq!(answer, 42);
    #[derive(Debug, PartialEq)]
    struct Pair {
        a: i64,
        b: String,
    }
    let pairs = session
        .fetch_all(sqlx::query_as!(
            Pair,
            r#"SELECT 7 AS "a!: i64", 'seven' AS "b!: String""#
        ))
        .unwrap();
    assert_eq!(
        pairs,
        [Pair {
            a: 7,
            b: "seven".into()
        }]
    );
    assert!(
        session.in_transaction(),
        "the macros' statements run inside the session's transaction"
    );
    session.commit().unwrap();
}

#[test]
fn a_session_kept_in_a_thread_local_ends_cleanly_when_its_thread_exits() {
    thread_local! {
        static KEPT: std::cell::RefCell<Option<BlockingSession<sqlx::Sqlite>>> =
            const { std::cell::RefCell::new(None) };
    }
    let path = std::env::temp_dir().join(format!("dbscope_t_{}_tls.db", std::process::id()));
    let manager =
        BindManager::new(BindConfig::new(format!("sqlite://{}", path.display()))).unwrap();
    let bind = manager.blocking_bind::<sqlx::Sqlite>("default").unwrap();
    let mut setup = bind.session();
    setup
        .execute(sqlx::query("CREATE TABLE t (x INT)"))
        .unwrap();
    setup.commit().unwrap();
    drop(setup);
    let held = bind.clone();
    thread::spawn(move || {
        // Registered first, so destroyed after tokio's and dbscope's own thread-locals.
        KEPT.with(|_| ());
        let mut session = held.session();
        session
            .execute(sqlx::query("INSERT INTO t VALUES (1)"))
            .unwrap(); // holds the write lock
        KEPT.set(Some(session)); // dropped with the thread's locals, in no particular order
    })
    .join()
    .expect("the thread exits without a panic (a panic there would abort the process)");
    eventually("the connection back or discarded", || {
        bind.status().in_use == 0
    });
    let mut check = bind.session();
    check
        .execute(sqlx::query("INSERT INTO t VALUES (2)"))
        .unwrap(); // no write lock left behind
    check.commit().unwrap();
    assert_eq!(
        check
            .fetch_one(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM t"))
            .unwrap(),
        1
    );
    drop(check);
    manager.close_blocking(CLOSE).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[test]
fn handles_and_sessions_are_send() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}
    let manager = memory_manager();
    assert_send_sync(&manager);
    let bind = manager.blocking_bind::<sqlx::Sqlite>("default").unwrap();
    assert_send_sync(&bind);
    let mut session = bind.session();
    assert_send(&session);
    let savepoint = session.savepoint().unwrap();
    assert_send(&savepoint);
    drop(savepoint);
    // And they really cross threads.
    thread::spawn(move || session.execute(sqlx::query("SELECT 1")).map(|_| ()))
        .join()
        .unwrap()
        .unwrap();
}
