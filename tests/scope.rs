//! Request scopes, against SQLite (file and in-memory), PostgreSQL and MariaDB: one session per
//! bind shared by the scope's code, ended by the scope's outcome; atomic blocks; hooks; tasks.
//!
//! Each test of the suite is a generic body, `async fn name<B: Suite>()`, written once;
//! `common::async_tests!` makes it a `#[tokio::test]` per backend (`sqlite_file::name`,
//! `postgres::name` …). Server-side facts (connections opened, transactions left open) are read
//! from the server itself; see `common/mod.rs`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Kind, Suite, TestDb, create_table, eventually, fetch_i64, sql};
use dbscope::{BindManager, IfOpen, Scope, current_session};
use futures_util::TryStreamExt;

/// The error type of the scopes' work in these tests.
#[derive(Debug)]
enum AppError {
    Db(dbscope::Error),
    Refused,
}

impl From<dbscope::Error> for AppError {
    fn from(e: dbscope::Error) -> Self {
        Self::Db(e)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e.into())
    }
}

impl AppError {
    fn db(self) -> dbscope::Error {
        match self {
            Self::Db(e) => e,
            Self::Refused => panic!("expected a dbscope error, got Refused"),
        }
    }
}

type Log = Arc<Mutex<Vec<&'static str>>>;

fn log_to(log: &Log, entry: &'static str) {
    log.lock().unwrap().push(entry);
}

// ----- the suite, on every backend -----

async fn setup<B: Suite>() -> (TestDb, BindManager) {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    (db, manager)
}

/// Inserts row `id` in the scope's session.
async fn insert<B: Suite>(db: &TestDb, id: i64) -> Result<(), AppError> {
    let mut session = current_session::<B::Db>("main").await?;
    let stmt = format!("INSERT INTO {} (id, v) VALUES ({id}, 'row {id}')", db.table);
    sqlx::query(sql(stmt)).execute(&mut session).await?;
    Ok(())
}

/// Rows the scope's session sees (its own uncommitted work included).
async fn visible<B: Suite>(db: &TestDb) -> Result<i64, AppError> {
    let mut session = current_session::<B::Db>("main").await?;
    let stmt = format!("SELECT COUNT(*) FROM {}", db.table);
    Ok(fetch_i64(&mut session, sql(stmt)).await?)
}

/// Rows committed, as a fresh session outside any scope sees them.
async fn committed<B: Suite>(manager: &BindManager, db: &TestDb) -> i64 {
    let mut session = manager.session::<B::Db>("main").unwrap();
    let stmt = format!("SELECT COUNT(*) FROM {}", db.table);
    let n = fetch_i64(&mut session, sql(stmt)).await.unwrap();
    session.close().await.unwrap();
    n
}

/// The pool is idle and the server shows no transaction left open.
async fn assert_settled<B: Suite>(manager: &BindManager, db: &TestDb) {
    let bind = manager.bind::<B::Db>("main").unwrap();
    eventually("every connection back in the pool", || {
        let status = bind.status();
        async move { status.in_use == 0 && status.waiting == 0 }
    })
    .await;
    if db.open_transactions().await.is_some() {
        eventually("no transaction left open on the server", || async {
            db.open_transactions().await == Some(0)
        })
        .await;
    }
}

async fn finish<B: Suite>(manager: BindManager, db: TestDb) {
    assert_settled::<B>(&manager, &db).await;
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn nested_code_shares_the_scope_session_and_ok_commits<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let seen = manager
        .scope()
        .run(async {
            insert::<B>(&db, 1).await?;
            // A sibling function sees the uncommitted row: same transaction.
            let seen = visible::<B>(&db).await?;
            if let Some(n) = db.server_connections().await {
                assert_eq!(n, 1, "one session, one connection, for the whole scope");
            }
            Ok::<_, AppError>(seen)
        })
        .await
        .unwrap();
    assert_eq!(seen, 1);
    assert_eq!(committed::<B>(&manager, &db).await, 1);
    finish::<B>(manager, db).await;
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

async fn a_stream_dropped_after_its_first_row_leaves_the_scope_usable<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let bind = manager.bind::<B::Db>("main").unwrap();
    let before = bind.status();
    dbscope::scope(&manager, async {
        insert::<B>(&db, 1).await?;
        {
            let mut session = current_session::<B::Db>("main").await?;
            let mut rows = sqlx::query(sql(series::<B>())).fetch(&mut session);
            assert!(rows.try_next().await?.is_some(), "a first row");
        }
        // The rest of the request goes on in the same transaction.
        insert::<B>(&db, 2).await?;
        assert_eq!(visible::<B>(&db).await?, 2);
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_eq!(committed::<B>(&manager, &db).await, 2);
    let status = bind.status();
    assert_eq!(
        (status.opened - before.opened, status.discarded),
        (0, 0),
        "the one connection was reused, never discarded: {status:?}"
    );
    finish::<B>(manager, db).await;
}

async fn no_connection_until_the_first_statement<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let bind = manager.bind::<B::Db>("main").unwrap();
    eventually("setup's connection closed on the server", || async {
        db.server_connections().await.is_none_or(|n| n <= 1)
    })
    .await;
    let before = bind.status().in_use;
    dbscope::scope(&manager, async {
        let session = current_session::<B::Db>("main").await?;
        assert!(!session.lock().await?.is_connected());
        assert_eq!(
            bind.status().in_use,
            before,
            "asking for the session checks nothing out"
        );
        drop(session);
        assert_eq!(Scope::current()?.binds_in_use(), ["main"]);
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    finish::<B>(manager, db).await;
}

async fn concurrent_first_use_creates_one_session<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    dbscope::scope(&manager, async {
        // Both children ask at the same moment; they take turns on one session.
        let (a, b) = tokio::join!(insert::<B>(&db, 1), insert::<B>(&db, 2));
        a?;
        b?;
        assert_eq!(Scope::current()?.binds_in_use(), ["main"]);
        assert_eq!(visible::<B>(&db).await?, 2, "both rows in one transaction");
        assert_eq!(
            manager.bind::<B::Db>("main")?.status().in_use,
            1,
            "one connection checked out"
        );
        if let Some(n) = db.server_connections().await {
            assert_eq!(n, 1, "one session, not two");
        }
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_eq!(committed::<B>(&manager, &db).await, 2);
    finish::<B>(manager, db).await;
}

async fn a_lease_makes_siblings_wait_or_refuses_them<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    dbscope::scope(&manager, async {
        let order = Arc::new(Mutex::new(Vec::new()));
        let handle = current_session::<B::Db>("main").await?;
        let (leased, is_leased) = tokio::sync::oneshot::channel();
        let first = async {
            let mut lease = handle.lock().await?;
            log_to(&order, "first leases");
            leased.send(()).unwrap();
            // Let the sibling run while the lease is held.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            let stmt = format!("INSERT INTO {} (id, v) VALUES (1, 'a')", db.table);
            sqlx::query(sql(stmt)).execute(&mut lease).await?;
            log_to(&order, "first done");
            Ok::<_, AppError>(())
        };
        let second = async {
            is_leased.await.unwrap();
            let mut other = current_session::<B::Db>("main").await?; // a handle: no wait
            let busy = other.try_lock().unwrap_err();
            assert_eq!(busy.kind(), dbscope::ErrorKind::SessionBusy, "{busy}");
            sqlx::query("SELECT 1").execute(&mut other).await?; // waits for the lease
            log_to(&order, "second ran");
            Ok::<_, AppError>(())
        };
        let (a, b) = tokio::join!(first, second);
        a?;
        b?;
        assert_eq!(
            *order.lock().unwrap(),
            ["first leases", "first done", "second ran"]
        );
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_eq!(committed::<B>(&manager, &db).await, 1);
    finish::<B>(manager, db).await;
}

/// Three layers of code, each asking the scope for the session and writing while the layer
/// above still has its handle: one session, one connection, all committed; no wait.
async fn nested_handles_share_one_session_at_any_depth<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    async fn layer<B: Suite>(db: &TestDb, id: i64, depth: u32) -> Result<Vec<i64>, AppError> {
        let mut handle = current_session::<B::Db>("main").await?;
        let stmt = format!("INSERT INTO {} (id, v) VALUES ({id}, 'row {id}')", db.table);
        sqlx::query(sql(stmt)).execute(&mut handle).await?;
        let mut ids = match B::KIND {
            Kind::Postgres | Kind::MySql => {
                vec![fetch_i64(&mut handle, db.connection_id_query()).await?]
            }
            Kind::SqliteFile | Kind::SqliteMemory => Vec::new(),
        };
        if depth > 1 {
            ids.extend(Box::pin(layer::<B>(db, id + 1, depth - 1)).await?);
        }
        Ok(ids)
    }
    let ids = dbscope::scope(&manager, async {
        let mut outer = current_session::<B::Db>("main").await?;
        sqlx::query("SELECT 1").execute(&mut outer).await?;
        let deep = layer::<B>(&db, 1, 3).await?;
        // Two siblings of a `join!`, each three layers deep.
        let (a, b) = tokio::join!(layer::<B>(&db, 10, 3), layer::<B>(&db, 20, 3));
        Ok::<_, AppError>([deep, a?, b?].concat())
    })
    .await
    .unwrap();
    assert_eq!(committed::<B>(&manager, &db).await, 9);
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one backend connection for the whole scope: {ids:?}"
    );
    assert_eq!(
        manager.bind::<B::Db>("main").unwrap().status().opened,
        1 + u64::from(B::KIND == Kind::SqliteMemory)
    );
    finish::<B>(manager, db).await;
}

/// Code that needs the session while a lease higher up in its own path holds it gets a typed
/// error within `acquire_timeout`, not a hang.
async fn a_lease_held_higher_up_fails_nested_code_in_bounded_time<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let timeout = Duration::from_secs(1);
    let manager = db.manager(|c| c.acquire_timeout(timeout));
    dbscope::scope(&manager, async {
        let handle = current_session::<B::Db>("main").await?;
        let lease = handle.lock().await?;
        let started = std::time::Instant::now();
        let mut nested = current_session::<B::Db>("main").await?; // the handle comes at once
        let err = sqlx::query("SELECT 1")
            .execute(&mut nested)
            .await
            .map_err(dbscope::Error::from)
            .unwrap_err();
        let waited = started.elapsed();
        assert_eq!(err.kind(), dbscope::ErrorKind::SessionLocked, "{err}");
        assert_eq!(err.bind(), Some("main"));
        assert_eq!(err.waited(), Some(timeout));
        assert!(err.to_string().contains("lease"), "{err}");
        assert!(
            waited >= timeout.mul_f64(0.8) && waited <= timeout.mul_f64(1.2),
            "failed after {waited:?}, for an acquire_timeout of {timeout:?}"
        );
        let err = nested.lock().await.unwrap_err();
        assert_eq!(err.kind(), dbscope::ErrorKind::SessionLocked, "{err}");
        drop(lease);
        sqlx::query("SELECT 1").execute(&mut nested).await?; // free again
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_settled::<B>(&manager, &db).await;
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn outside_a_scope_the_error_says_how_to_fix_it<B: Suite>() {
    let err = current_session::<B::Db>("main").await.unwrap_err();
    assert!(err.is_no_scope());
    assert_eq!(err.bind(), Some("main"));
    let message = err.to_string();
    assert!(
        message.contains("dbscope::scope") && message.contains("tokio::spawn"),
        "{message}"
    );
    assert!(Scope::current().unwrap_err().is_no_scope());
}

async fn err_rolls_back<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let result = dbscope::scope(&manager, async {
        insert::<B>(&db, 1).await?;
        Err::<(), _>(AppError::Refused)
    })
    .await;
    assert!(matches!(result, Err(AppError::Refused)));
    assert_eq!(committed::<B>(&manager, &db).await, 0);
    assert_eq!(
        manager.status()[0].discarded,
        0,
        "the rolled-back connection is reused"
    );
    finish::<B>(manager, db).await;
}

async fn a_panic_rolls_back<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let (m, table) = (manager.clone(), db.table.clone());
    let task = tokio::spawn(async move {
        dbscope::scope(&m, async {
            let mut s = current_session::<B::Db>("main").await?;
            let stmt = format!("INSERT INTO {table} (id, v) VALUES (1, 'x')");
            sqlx::query(sql(stmt)).execute(&mut s).await?;
            drop(s);
            if table.len() > 1 {
                panic!("handler bug");
            }
            Ok::<_, AppError>(())
        })
        .await
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_settled::<B>(&manager, &db).await;
    assert_eq!(committed::<B>(&manager, &db).await, 0);
    finish::<B>(manager, db).await;
}

async fn a_cancelled_scope_rolls_back_and_leaves_no_transaction<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let work = dbscope::scope(&manager, async {
        insert::<B>(&db, 1).await?;
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, AppError>(())
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), work)
            .await
            .is_err()
    );
    assert_settled::<B>(&manager, &db).await;
    assert_eq!(committed::<B>(&manager, &db).await, 0);
    finish::<B>(manager, db).await;
}

async fn cancelling_a_scope_at_any_await_leaves_nothing_open<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let mut landed = 0;
    for polls in 0..40_u8 {
        let id = i64::from(polls);
        let db = &db;
        let work = manager
            .scope()
            .before_commit(|| async { Ok(()) })
            .run(async move {
                insert::<B>(db, id).await?;
                visible::<B>(db).await?;
                Ok::<_, AppError>(())
            });
        let finished = match common::cancel_after(work, usize::from(polls)).await {
            Some(result) => {
                result.unwrap();
                landed += 1;
                true
            }
            None => {
                assert_settled::<B>(&manager, db).await;
                false
            }
        };
        // A finished scope committed its row; a cancelled one may have, if its
        // COMMIT completed before the cut, and never left a transaction open.
        let stmt = format!("SELECT COUNT(*) FROM {} WHERE id = {id}", db.table);
        let mut check = manager.session::<B::Db>("main").unwrap();
        let n: i64 = fetch_i64(&mut check, sql(stmt)).await.unwrap();
        check.close().await.unwrap();
        assert!(
            if finished { n == 1 } else { n <= 1 },
            "polls {polls}: {n} rows"
        );
    }
    assert!(landed > 0, "later polls let the scope finish");
    assert_settled::<B>(&manager, &db).await;
    finish::<B>(manager, db).await;
}

async fn a_lease_kept_past_the_scope_fails_it_instead_of_hanging<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c.acquire_timeout(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    let err = dbscope::scope(&manager, async {
        let mut lease = current_session::<B::Db>("main").await?.lock().await?;
        sqlx::query("SELECT 1").execute(&mut lease).await?;
        Ok::<_, AppError>(lease) // the lease leaves the scope's work
    })
    .await
    .unwrap_err()
    .db();
    assert_eq!(err.kind(), dbscope::ErrorKind::SessionHeld, "{err}");
    assert!(err.to_string().contains("still taken"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited the acquire_timeout only"
    );
    assert_settled::<B>(&manager, &db).await;
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// A handle kept past the scope holds nothing: the scope ends at once, and the handle says
/// the scope is over.
async fn a_handle_kept_past_the_scope_is_told_it_ended<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let mut handle = dbscope::scope(&manager, async {
        let mut handle = current_session::<B::Db>("main").await?;
        let stmt = format!("INSERT INTO {} (id, v) VALUES (1, 'a')", db.table);
        sqlx::query(sql(stmt)).execute(&mut handle).await?;
        Ok::<_, AppError>(handle)
    })
    .await
    .unwrap();
    assert_eq!(committed::<B>(&manager, &db).await, 1);
    let err = sqlx::query("SELECT 1")
        .execute(&mut handle)
        .await
        .map_err(dbscope::Error::from)
        .unwrap_err();
    assert_eq!(err.kind(), dbscope::ErrorKind::ScopeEnded, "{err}");
    finish::<B>(manager, db).await;
}

async fn hooks_run_in_order_and_before_commit_can_use_the_session<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let log: Log = Arc::default();
    let (l1, l2, l3, l4) = (log.clone(), log.clone(), log.clone(), log.clone());
    let table = db.table.clone();
    manager
        .scope()
        .before_commit(move || {
            let (log, table) = (l1.clone(), table.clone());
            async move {
                log_to(&log, "before 1");
                // Still inside the scope: write an audit row in its transaction.
                let mut s = current_session::<B::Db>("main").await?;
                let stmt = format!("INSERT INTO {table} (id, v) VALUES (99, 'audit')");
                sqlx::query(sql(stmt)).execute(&mut s).await?;
                Ok(())
            }
        })
        .before_commit(move || {
            let log = l2.clone();
            async move {
                log_to(&log, "before 2");
                Ok(())
            }
        })
        .after_commit(move || {
            let log = l3.clone();
            async move { log_to(&log, "after commit") }
        })
        .after_rollback(move || {
            let log = l4.clone();
            async move { log_to(&log, "after rollback") }
        })
        .run(async {
            insert::<B>(&db, 1).await?;
            let log = log.clone();
            Scope::current()?.after_commit(move || {
                let log = log.clone();
                async move { log_to(&log, "registered inside") }
            });
            Ok::<_, AppError>(())
        })
        .await
        .unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["before 1", "before 2", "after commit", "registered inside"]
    );
    assert_eq!(
        committed::<B>(&manager, &db).await,
        2,
        "the hook's row committed too"
    );
    finish::<B>(manager, db).await;
}

async fn a_vetoing_before_commit_hook_rolls_everything_back<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let log: Log = Arc::default();
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    let result = manager
        .scope()
        .before_commit(move || {
            let log = l1.clone();
            async move {
                log_to(&log, "veto");
                Err("stock would go negative".into())
            }
        })
        .after_commit(move || {
            let log = l2.clone();
            async move { log_to(&log, "after commit") }
        })
        .after_rollback(move || {
            let log = l3.clone();
            async move { log_to(&log, "after rollback") }
        })
        .run(async { insert::<B>(&db, 1).await })
        .await;
    let err = result.unwrap_err().db();
    assert!(err.is_commit_vetoed(), "{err}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(source, "stock would go negative");
    assert_eq!(*log.lock().unwrap(), ["veto", "after rollback"]);
    assert_eq!(committed::<B>(&manager, &db).await, 0);
    finish::<B>(manager, db).await;
}

async fn atomic_savepoint_undoes_only_the_block<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    dbscope::scope(&manager, async {
        insert::<B>(&db, 1).await?;
        let failed = dbscope::atomic::<B::Db>("main")
            .run(async {
                insert::<B>(&db, 2).await?;
                Err::<(), _>(AppError::Refused)
            })
            .await;
        assert!(matches!(failed, Err(AppError::Refused)));
        dbscope::atomic::<B::Db>("main")
            .run(insert::<B>(&db, 3))
            .await?;
        assert_eq!(visible::<B>(&db).await?, 2, "rows 1 and 3");
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_eq!(committed::<B>(&manager, &db).await, 2);
    finish::<B>(manager, db).await;
}

async fn atomic_policies_for_an_open_transaction<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    // Commit: the open work lands before the block, whatever the scope does next.
    let _ = dbscope::scope(&manager, async {
        insert::<B>(&db, 1).await?;
        dbscope::atomic::<B::Db>("main")
            .if_open(IfOpen::Commit)
            .run(insert::<B>(&db, 2))
            .await?;
        Err::<(), _>(AppError::Refused)
    })
    .await;
    assert_eq!(
        committed::<B>(&manager, &db).await,
        2,
        "commit policy, then the block's own commit"
    );

    // Rollback: the open work is thrown away; the block commits on its own.
    let _ = dbscope::scope(&manager, async {
        insert::<B>(&db, 3).await?;
        dbscope::atomic::<B::Db>("main")
            .if_open(IfOpen::Rollback)
            .run(insert::<B>(&db, 4))
            .await?;
        Err::<(), _>(AppError::Refused)
    })
    .await;
    assert_eq!(committed::<B>(&manager, &db).await, 3, "row 4 only");

    // Join (the seed's "append"): the block ends the open transaction. `Ok` commits rows 5
    // and 6 at the block's end, whatever the scope does next.
    let _ = dbscope::scope(&manager, async {
        insert::<B>(&db, 5).await?;
        dbscope::atomic::<B::Db>("main")
            .if_open(IfOpen::Join)
            .run(insert::<B>(&db, 6))
            .await?;
        Err::<(), _>(AppError::Refused)
    })
    .await;
    assert_eq!(
        committed::<B>(&manager, &db).await,
        5,
        "rows 5 and 6, committed by the joined block"
    );

    // Join, `Err`: rolls the open transaction back, earlier work included, even when the
    // scope swallows the error and commits.
    dbscope::scope(&manager, async {
        insert::<B>(&db, 7).await?;
        let joined = dbscope::atomic::<B::Db>("main")
            .if_open(IfOpen::Join)
            .run(async {
                insert::<B>(&db, 8).await?;
                Err::<(), _>(AppError::Refused)
            })
            .await;
        assert!(joined.is_err());
        assert_eq!(visible::<B>(&db).await?, 5, "rows 7 and 8 rolled back");
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_eq!(committed::<B>(&manager, &db).await, 5);

    // LeaveOpen: the block's failure is the scope's to handle; the scope commits.
    dbscope::scope(&manager, async {
        insert::<B>(&db, 9).await?;
        let left = dbscope::atomic::<B::Db>("main")
            .if_open(IfOpen::LeaveOpen)
            .run(async {
                insert::<B>(&db, 10).await?;
                Err::<(), _>(AppError::Refused)
            })
            .await;
        assert!(left.is_err());
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_eq!(
        committed::<B>(&manager, &db).await,
        7,
        "rows 9 and 10 stayed in the scope's transaction"
    );

    // Fail: refuses, naming the bind.
    dbscope::scope(&manager, async {
        insert::<B>(&db, 11).await?;
        let refused = dbscope::atomic::<B::Db>("main")
            .if_open(IfOpen::Fail)
            .run(async { Ok::<_, AppError>(()) })
            .await
            .unwrap_err()
            .db();
        assert!(refused.to_string().contains("already open"), "{refused}");
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_eq!(committed::<B>(&manager, &db).await, 8);
    finish::<B>(manager, db).await;
}

async fn a_cancelled_atomic_block_rolls_back_before_the_next_use<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    dbscope::scope(&manager, async {
        insert::<B>(&db, 1).await?;
        let block = dbscope::atomic::<B::Db>("main").run(async {
            insert::<B>(&db, 2).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, AppError>(())
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(200), block)
                .await
                .is_err()
        );
        assert_eq!(
            visible::<B>(&db).await?,
            1,
            "the block's row is rolled back"
        );
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_eq!(committed::<B>(&manager, &db).await, 1);
    finish::<B>(manager, db).await;
}

async fn early_commit_rollback_and_disconnect_inside_a_scope<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let result = dbscope::scope(&manager, async {
        insert::<B>(&db, 1).await?;
        current_session::<B::Db>("main").await?.commit().await?;
        insert::<B>(&db, 2).await?;
        current_session::<B::Db>("main").await?.rollback().await?;
        insert::<B>(&db, 3).await?;
        let s = current_session::<B::Db>("main").await?;
        s.disconnect().await?; // rolls row 3 back, gives the connection back
        assert!(!s.lock().await?.is_connected());
        drop(s);
        assert_eq!(manager.bind::<B::Db>("main")?.status().in_use, 0);
        insert::<B>(&db, 4).await?; // a fresh checkout
        assert!(
            current_session::<B::Db>("main")
                .await?
                .lock()
                .await?
                .is_connected()
        );
        Err::<(), _>(AppError::Refused)
    })
    .await;
    assert!(result.is_err());
    assert_eq!(
        committed::<B>(&manager, &db).await,
        1,
        "only the early commit stays"
    );
    finish::<B>(manager, db).await;
}

async fn autocommit_scope_lands_writes_one_by_one<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let result = manager
        .scope()
        .autocommit()
        .run(async {
            insert::<B>(&db, 1).await?;
            assert!(
                !current_session::<B::Db>("main")
                    .await?
                    .in_transaction()
                    .await?
            );
            assert_eq!(
                committed::<B>(&manager, &db).await,
                1,
                "landed before the scope ends"
            );
            if let Some(n) = db.open_transactions().await {
                assert_eq!(n, 0, "no transaction open during an autocommit scope");
            }
            Err::<(), _>(AppError::Refused)
        })
        .await;
    assert!(result.is_err());
    assert_eq!(
        committed::<B>(&manager, &db).await,
        1,
        "an error does not undo autocommitted writes"
    );
    finish::<B>(manager, db).await;
}

async fn spawned_tasks_inherit_nothing_unless_attached<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    dbscope::scope(&manager, async {
        let orphan = tokio::spawn(async { current_session::<B::Db>("main").await.map(|_| ()) });
        assert!(orphan.await.unwrap().unwrap_err().is_no_scope());

        insert::<B>(&db, 1).await?;
        let table = db.table.clone();
        let attached = tokio::spawn(Scope::current()?.attach(async move {
            let mut s = current_session::<B::Db>("main").await?;
            let stmt = format!("SELECT COUNT(*) FROM {table}");
            let n: i64 = fetch_i64(&mut s, sql(stmt)).await?;
            Ok::<_, AppError>(n)
        }));
        assert_eq!(
            attached.await.unwrap()?,
            1,
            "the attached task shares the transaction"
        );
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_eq!(committed::<B>(&manager, &db).await, 1);
    finish::<B>(manager, db).await;
}

async fn new_scopes_for_concurrent_work_end_on_their_own_outcome<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let db = Arc::new(db);
    let result = dbscope::scope(&manager, async {
        let scope = Scope::current()?;
        let (t1, t2) = (db.clone(), db.clone());
        let ok = scope
            .new_scope()
            .spawn(async move { insert::<B>(&t1, 2).await });
        let failing = scope.new_scope().spawn(async move {
            insert::<B>(&t2, 3).await?;
            Err::<(), _>(AppError::Refused)
        });
        ok.await.unwrap()?;
        assert!(matches!(failing.await.unwrap(), Err(AppError::Refused)));
        // (SQLite has one writer at a time: the outer scope writes after them.)
        insert::<B>(&db, 1).await?;
        Err::<(), _>(AppError::Refused) // the outer scope fails
    })
    .await;
    assert!(result.is_err());
    let db = Arc::into_inner(db).expect("the tasks are done");
    assert_eq!(
        committed::<B>(&manager, &db).await,
        1,
        "only the succeeding new scope committed"
    );
    finish::<B>(manager, db).await;
}

async fn a_task_outliving_its_scope_is_told_so<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let late = dbscope::scope(&manager, async {
        let task = tokio::spawn(Scope::current()?.attach(async move {
            rx.await.ok();
            current_session::<B::Db>("main").await.map(|_| ())
        }));
        Ok::<_, AppError>(task)
    })
    .await
    .unwrap();
    tx.send(()).unwrap();
    let err = late.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("already ended"), "{err}");
    finish::<B>(manager, db).await;
}

/// An atomic block whose end cannot take the session in time (other code of the scope holds
/// it past `acquire_timeout`) fails, and its work rolls back, whether the work succeeded or not:
/// the scope, which goes on and commits, never commits the block's rows.
async fn an_atomic_block_that_cannot_end_in_time_rolls_back<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c.acquire_timeout(Duration::from_millis(300)));
    create_table::<B>(&manager, &db).await;
    dbscope::scope(&manager, async {
        insert::<B>(&db, 1).await?;
        for (id, work_ok) in [(2, true), (3, false)] {
            let (go, may_take) = tokio::sync::oneshot::channel();
            let (taken, is_taken) = tokio::sync::oneshot::channel();
            let (returned, has_returned) = tokio::sync::oneshot::channel::<()>();
            let block = async {
                let ended = dbscope::atomic::<B::Db>("main")
                    .run(async {
                        insert::<B>(&db, id).await?;
                        go.send(()).unwrap();
                        is_taken.await.unwrap(); // the sibling has the session now
                        if work_ok {
                            Ok(())
                        } else {
                            Err(AppError::Refused)
                        }
                    })
                    .await;
                returned.send(()).unwrap();
                ended
            };
            let holder = async {
                may_take.await.unwrap();
                let lease = current_session::<B::Db>("main").await?.lock().await?;
                taken.send(()).unwrap();
                has_returned.await.unwrap(); // held until the block has given up
                drop(lease);
                Ok::<_, AppError>(())
            };
            let (ended, held) = tokio::join!(block, holder);
            held?;
            let err = ended.unwrap_err().db();
            assert_eq!(err.kind(), dbscope::ErrorKind::SessionLocked, "{err}");
        }
        assert_eq!(
            visible::<B>(&db).await?,
            1,
            "neither block's row is left in the scope's transaction"
        );
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_eq!(committed::<B>(&manager, &db).await, 1);
    finish::<B>(manager, db).await;
}

/// Code that still holds the session when the scope ends keeps nothing of it: the scope fails
/// with `SessionHeld`, and once that code lets go the session rolls back and every handle of
/// the scope says it ended, so nothing can commit what the scope did not.
async fn a_session_held_past_the_scope_rolls_back_when_let_go<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c.acquire_timeout(Duration::from_millis(300)));
    create_table::<B>(&manager, &db).await;
    let kept = Mutex::new(None);
    let err = dbscope::scope(&manager, async {
        insert::<B>(&db, 1).await?;
        let handle = current_session::<B::Db>("main").await?;
        let lease = handle.lock().await?;
        *kept.lock().unwrap() = Some((handle, lease)); // both outlive the scope's work
        Ok::<_, AppError>(())
    })
    .await
    .unwrap_err()
    .db();
    assert_eq!(err.kind(), dbscope::ErrorKind::SessionHeld, "{err}");
    let (mut handle, lease) = kept.lock().unwrap().take().unwrap();
    drop(lease);
    let ended = |e: dbscope::Error| {
        assert_eq!(e.kind(), dbscope::ErrorKind::ScopeEnded, "{e}");
    };
    let stmt = format!("INSERT INTO {} (id, v) VALUES (2, 'b')", db.table);
    ended(
        sqlx::query(sql(stmt))
            .execute(&mut handle)
            .await
            .map_err(dbscope::Error::from)
            .unwrap_err(),
    );
    ended(handle.commit().await.unwrap_err());
    assert_settled::<B>(&manager, &db).await;
    assert_eq!(committed::<B>(&manager, &db).await, 0);
    finish::<B>(manager, db).await;
}

/// A scope cut off (its future dropped, as a disconnecting client's request is) ends for the
/// tasks attached to it as well: they are told so, and cannot commit what its owner never did.
async fn a_cancelled_scope_ends_for_its_attached_tasks<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let (attached, is_attached) = tokio::sync::oneshot::channel();
    let (go, may_go) = tokio::sync::oneshot::channel::<()>();
    let (outcome, task_outcome) = tokio::sync::oneshot::channel();
    let table = db.table.clone();
    let owner = dbscope::scope(&manager, async {
        insert::<B>(&db, 1).await?;
        let task = Scope::current()?.attach(async move {
            let result = async {
                let mut handle = current_session::<B::Db>("main").await?;
                attached.send(()).unwrap();
                may_go.await.ok();
                let stmt = format!("INSERT INTO {table} (id, v) VALUES (2, 'b')");
                sqlx::query(sql(stmt)).execute(&mut handle).await?;
                handle.commit().await
            }
            .await;
            outcome.send(result).unwrap();
        });
        tokio::spawn(task);
        std::future::pending::<()>().await; // the owner never finishes: it is cut off
        Ok::<_, AppError>(())
    });
    tokio::select! {
        _ = owner => unreachable!("the owner never finishes"),
        _ = is_attached => {} // the owner's future is dropped here
    }
    go.send(()).unwrap();
    let err = task_outcome.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), dbscope::ErrorKind::ScopeEnded, "{err}");
    assert_settled::<B>(&manager, &db).await;
    assert_eq!(committed::<B>(&manager, &db).await, 0);
    finish::<B>(manager, db).await;
}

/// Hooks that a before-commit hook adds run too: its before-commit ones after the others, its
/// after-commit ones once the scope has committed.
async fn hooks_added_by_a_before_commit_hook_run_too<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let log: Log = Arc::default();
    let first = log.clone();
    manager
        .scope()
        .before_commit(move || {
            let log = first.clone();
            async move {
                log_to(&log, "before");
                let scope = Scope::current()?;
                let (before, after) = (log.clone(), log.clone());
                scope.before_commit(move || {
                    let log = before.clone();
                    async move {
                        log_to(&log, "added before");
                        Ok(())
                    }
                });
                scope.after_commit(move || {
                    let log = after.clone();
                    async move { log_to(&log, "added after") }
                });
                Ok(())
            }
        })
        .run(async {
            insert::<B>(&db, 1).await?;
            Ok::<_, AppError>(())
        })
        .await
        .unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["before", "added before", "added after"]
    );
    assert_eq!(committed::<B>(&manager, &db).await, 1);
    finish::<B>(manager, db).await;
}

/// The scope's owner dropped while its after-commit hooks run (a web request whose client went
/// away after the COMMIT): the commit stands, and the hooks go on to their end in a task of
/// their own, the one cut off resumed where it was, not started again.
async fn after_commit_hooks_outlive_an_owner_dropped_while_they_run<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let log: Log = Arc::default();
    let (started, go) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let (first, second) = (log.clone(), log.clone());
    let (hook_started, hook_go) = (started.clone(), go.clone());
    let run = manager
        .scope()
        .after_commit(move || {
            let (log, started, go) = (first.clone(), hook_started.clone(), hook_go.clone());
            async move {
                log_to(&log, "first began");
                started.notify_one();
                go.notified().await;
                log_to(&log, "first ended");
            }
        })
        .after_commit(move || {
            let log = second.clone();
            async move { log_to(&log, "second") }
        })
        .run(async {
            insert::<B>(&db, 1).await?;
            Ok::<_, AppError>(())
        });
    tokio::select! {
        _ = run => panic!("the first hook waits for `go`"),
        () = started.notified() => {} // `run` is dropped here, inside its first hook
    }
    assert_eq!(committed::<B>(&manager, &db).await, 1);
    go.notify_one();
    eventually("the hooks ran to their end", || async {
        log.lock().unwrap().len() == 3
    })
    .await;
    assert_eq!(
        *log.lock().unwrap(),
        ["first began", "first ended", "second"]
    );
    finish::<B>(manager, db).await;
}

async fn declared_binds_are_checked<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let unknown = manager.scope().bind("nope").validate().unwrap_err();
    assert!(unknown.is_unknown_bind());
    let twice = manager
        .scope()
        .bind("main")
        .bind("main")
        .validate()
        .unwrap_err();
    assert!(twice.to_string().contains("declared twice"), "{twice}");
    assert!(twice.is_config());
    // A declared bind works; the scope serves nothing else.
    let other = BindManager::builder()
        .bind("main", db.config())
        .bind("other", dbscope::BindConfig::new("sqlite::memory:"))
        .build()
        .unwrap();
    other
        .scope()
        .bind("main")
        .run(async {
            let mut main = current_session::<B::Db>("main").await?;
            sqlx::query("SELECT 1").execute(&mut main).await?;
            drop(main);
            let refused = current_session::<sqlx::Sqlite>("other").await.unwrap_err();
            assert!(
                refused.to_string().contains(".bind(\"other\")"),
                "{refused}"
            );
            Ok::<_, AppError>(())
        })
        .await
        .unwrap();
    other.close(Duration::from_secs(5)).await.unwrap();
    finish::<B>(manager, db).await;
}

/// Sticky after write, whichever handle came first: a read handle taken (and used) before the
/// scope's first write reads through the scope's own session from then on, so it sees that
/// write before the commit. No other session can see an uncommitted row: the server says
/// which session the read ran in.
async fn a_read_handle_taken_before_a_write_sees_the_write<B: Suite>() {
    let (db, manager) = setup::<B>().await;
    let count = format!("SELECT COUNT(*) FROM {}", db.table);
    dbscope::scope(&manager, async {
        let mut read = dbscope::current_read_session::<B::Db>("main").await?;
        assert_eq!(fetch_i64(&mut read, sql(count.clone())).await?, 0);
        insert::<B>(&db, 1).await?;
        let seen = fetch_i64(&mut read, sql(count.clone())).await?;
        assert_eq!(
            seen, 1,
            "the read handle sees the scope's uncommitted write"
        );
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_eq!(committed::<B>(&manager, &db).await, 1);
    finish::<B>(manager, db).await;
}

/// The scope suite's tests, for one backend.
macro_rules! scope_tests {
    ($module:ident, $suite:ty) => {
        common::async_tests!($module, $suite:
            nested_code_shares_the_scope_session_and_ok_commits,
            no_connection_until_the_first_statement,
            concurrent_first_use_creates_one_session,
            a_lease_makes_siblings_wait_or_refuses_them,
            nested_handles_share_one_session_at_any_depth,
            a_lease_held_higher_up_fails_nested_code_in_bounded_time,
            outside_a_scope_the_error_says_how_to_fix_it,
            err_rolls_back,
            a_panic_rolls_back,
            a_cancelled_scope_rolls_back_and_leaves_no_transaction,
            cancelling_a_scope_at_any_await_leaves_nothing_open,
            a_lease_kept_past_the_scope_fails_it_instead_of_hanging,
            a_handle_kept_past_the_scope_is_told_it_ended,
            hooks_run_in_order_and_before_commit_can_use_the_session,
            a_vetoing_before_commit_hook_rolls_everything_back,
            atomic_savepoint_undoes_only_the_block,
            atomic_policies_for_an_open_transaction,
            a_cancelled_atomic_block_rolls_back_before_the_next_use,
            early_commit_rollback_and_disconnect_inside_a_scope,
            autocommit_scope_lands_writes_one_by_one,
            spawned_tasks_inherit_nothing_unless_attached,
            new_scopes_for_concurrent_work_end_on_their_own_outcome,
            a_task_outliving_its_scope_is_told_so,
            declared_binds_are_checked,
            a_stream_dropped_after_its_first_row_leaves_the_scope_usable,
            an_atomic_block_that_cannot_end_in_time_rolls_back,
            a_session_held_past_the_scope_rolls_back_when_let_go,
            a_cancelled_scope_ends_for_its_attached_tasks,
            hooks_added_by_a_before_commit_hook_run_too,
            after_commit_hooks_outlive_an_owner_dropped_while_they_run,
            a_read_handle_taken_before_a_write_sees_the_write,
        );
    };
}

scope_tests!(sqlite_file, common::SqliteFile);
scope_tests!(sqlite_memory, common::SqliteMemory);
scope_tests!(postgres, common::Pg);
scope_tests!(mysql, common::MySql);

/// Several binds in one scope: commits in the order of first use, and a failure after a
/// successful commit says which binds committed. PostgreSQL's deferred constraints make a
/// COMMIT fail for real.
mod several_binds {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_second_commit_reports_what_committed() {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = BindManager::builder()
            .bind("orders", db.config())
            .bind("audit", db.config())
            .build()
            .unwrap();
        let (parent, child) = (
            format!("{}_parent", db.table),
            format!("{}_child", db.table),
        );
        let mut setup = manager.session::<sqlx::Postgres>("orders").unwrap();
        let ddl = format!(
            "CREATE TABLE {parent} (id BIGINT PRIMARY KEY); \
             CREATE TABLE {child} (id BIGINT PRIMARY KEY, parent BIGINT REFERENCES {parent} (id) \
             DEFERRABLE INITIALLY DEFERRED)"
        );
        sqlx::raw_sql(sql(ddl)).execute(&mut setup).await.unwrap();
        setup.commit().await.unwrap();
        setup.close().await.unwrap();

        let err = dbscope::scope(&manager, async {
            // Taken first, used last: the order of first use is what counts.
            let mut orders = current_session::<sqlx::Postgres>("orders").await?;
            // First use: audit, then orders; so audit commits first.
            let mut audit = current_session::<sqlx::Postgres>("audit").await?;
            sqlx::query(sql(format!("INSERT INTO {parent} (id) VALUES (1)")))
                .execute(&mut audit)
                .await?;
            drop(audit);
            assert_eq!(Scope::current()?.binds_in_use(), ["audit", "orders"]);
            // Violates the deferred foreign key: fails at COMMIT, not here.
            sqlx::query(sql(format!(
                "INSERT INTO {child} (id, parent) VALUES (1, 42)"
            )))
            .execute(&mut orders)
            .await?;
            assert_eq!(Scope::current()?.binds_in_use(), ["audit", "orders"]);
            Ok::<_, AppError>(())
        })
        .await
        .unwrap_err()
        .db();

        assert!(err.is_partial_commit(), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("failed on bind `orders` after committing `audit`"),
            "{message}"
        );
        assert_eq!(err.bind(), Some("orders"));
        let mut check = manager.session::<sqlx::Postgres>("audit").unwrap();
        let parents: i64 = sqlx::query_scalar(sql(format!("SELECT COUNT(*) FROM {parent}")))
            .fetch_one(&mut check)
            .await
            .unwrap();
        let children: i64 = sqlx::query_scalar(sql(format!("SELECT COUNT(*) FROM {child}")))
            .fetch_one(&mut check)
            .await
            .unwrap();
        assert_eq!((parents, children), (1, 0));
        sqlx::raw_sql(sql(format!("DROP TABLE {child}; DROP TABLE {parent}")))
            .execute(&mut check)
            .await
            .unwrap();
        check.commit().await.unwrap();
        check.close().await.unwrap();
        eventually("no transaction left open", || async {
            db.open_transactions().await == Some(0)
        })
        .await;
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    }

    /// Binds `a` and `b` on one PostgreSQL database, and a table whose unique `v` is checked at
    /// COMMIT: a write that breaks it fails its bind's commit.
    async fn two_binds_and_a_deferred_unique() -> (TestDb, BindManager, String) {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = BindManager::builder()
            .bind("a", db.config())
            .bind("b", db.config())
            .build()
            .unwrap();
        let table = db.table.clone();
        let mut setup = manager.session::<sqlx::Postgres>("a").unwrap();
        let ddl = format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, v BIGINT, \
             CONSTRAINT {table}_u UNIQUE (v) DEFERRABLE INITIALLY DEFERRED)"
        );
        sqlx::raw_sql(sql(ddl)).execute(&mut setup).await.unwrap();
        setup.commit().await.unwrap();
        setup.close().await.unwrap();
        (db, manager, table)
    }

    /// A bind whose handle ran nothing, or that only read, committed nothing: its place before
    /// the failing bind does not make the failure a partial commit (which is not retryable).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn binds_that_wrote_nothing_do_not_make_a_failure_partial() {
        let (db, manager, table) = two_binds_and_a_deferred_unique().await;
        let err = dbscope::scope(&manager, async {
            // Taken first, never used.
            let _b = current_session::<sqlx::Postgres>("b").await?;
            // Read first, through the read slot of `a`.
            let mut read = dbscope::current_read_session::<sqlx::Postgres>("a").await?;
            sqlx::query(sql(format!("SELECT COUNT(*) FROM {table}")))
                .execute(&mut read)
                .await?;
            drop(read);
            let mut a = current_session::<sqlx::Postgres>("a").await?;
            sqlx::query(sql(format!("INSERT INTO {table} VALUES (1, 7), (2, 7)")))
                .execute(&mut a)
                .await?;
            Ok::<_, AppError>(())
        })
        .await
        .unwrap_err()
        .db();
        assert!(!err.is_partial_commit(), "{err}");
        assert!(err.as_database_error().is_some(), "{err:?}");
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_commit_failing_rolls_back_the_rest_with_the_plain_error() {
        let (db, manager, table) = two_binds_and_a_deferred_unique().await;
        let err = dbscope::scope(&manager, async {
            let mut a = current_session::<sqlx::Postgres>("a").await?;
            sqlx::query(sql(format!("INSERT INTO {table} VALUES (1, 7), (2, 7)")))
                .execute(&mut a)
                .await?;
            drop(a);
            let mut b = current_session::<sqlx::Postgres>("b").await?;
            sqlx::query(sql(format!("INSERT INTO {table} VALUES (3, 8)")))
                .execute(&mut b)
                .await?;
            Ok::<_, AppError>(())
        })
        .await
        .unwrap_err()
        .db();
        assert!(!err.is_partial_commit());
        assert!(err.as_database_error().is_some(), "{err:?}");
        let mut check = manager.session::<sqlx::Postgres>("b").unwrap();
        let n: i64 = sqlx::query_scalar(sql(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&mut check)
            .await
            .unwrap();
        assert_eq!(n, 0, "b was rolled back after a failed");
        check.close().await.unwrap();
        eventually("no transaction left open", || async {
            db.open_transactions().await == Some(0)
        })
        .await;
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    }
}

/// An after-commit hook that moved to a task of its own (its scope's owner dropped while it
/// ran) and is still running when its runtime shuts down: it is dropped there, once. Before,
/// each drop spawned it again on the closing runtime, which dropped it at once: the thread
/// overflowed its stack.
#[test]
fn a_hook_cut_off_by_its_runtime_shutting_down_ends_there() {
    let ended = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let manager = BindManager::new(dbscope::BindConfig::new("sqlite::memory:")).unwrap();
            let started = Arc::new(tokio::sync::Notify::new());
            let hook_started = started.clone();
            let run = manager
                .scope()
                .after_commit(move || {
                    let started = hook_started.clone();
                    async move {
                        started.notify_one();
                        std::future::pending::<()>().await;
                    }
                })
                .run(async { Ok::<_, dbscope::Error>(()) });
            tokio::select! {
                _ = run => panic!("the hook never ends"),
                () = started.notified() => {} // `run` dropped inside its hook
            }
        });
        drop(runtime);
    });
    ended
        .join()
        .expect("the runtime shut down, the hook with it");
}
