//! The behaviour suite: the same tests on SQLite (file and in-memory), PostgreSQL and MariaDB.
//!
//! Server-side facts (connections opened, transactions left open) are read from the server
//! itself; see `common/mod.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{Kind, TestDb, cancel_after, eventually, sql};
use dbscope::{BindManager, HealthCheck, IsolationLevel, Session};
use futures_util::TryStreamExt;

macro_rules! behaviour_suite {
    ($module:ident, $db:ty, $other:ty, $kind:expr) => {
        mod $module {
            use super::*;

            type Db = $db;
            const KIND: Kind = $kind;

            async fn setup() -> TestDb {
                TestDb::new(KIND).await
            }

            async fn create_table(manager: &BindManager, db: &TestDb) {
                let mut session = manager.session::<Db>("main").unwrap();
                let ddl = format!("CREATE TABLE {} (id BIGINT PRIMARY KEY, v VARCHAR(50))", db.table);
                sqlx::query(sql(ddl)).execute(&mut session).await.expect("create table");
                session.commit().await.expect("commit create table");
            }

            async fn insert(session: &mut Session<Db>, db: &TestDb, id: i64) -> sqlx::Result<()> {
                let stmt = format!("INSERT INTO {} (id, v) VALUES ({id}, 'row {id}')", db.table);
                sqlx::query(sql(stmt)).execute(session).await.map(|_| ())
            }

            async fn count(session: &mut Session<Db>, db: &TestDb) -> i64 {
                let stmt = format!("SELECT COUNT(*) FROM {}", db.table);
                sqlx::query_scalar(sql(stmt)).fetch_one(session).await.expect("count rows")
            }

            /// Rows as a fresh session on the same bind sees them.
            async fn committed_rows(manager: &BindManager, db: &TestDb) -> i64 {
                let mut session = manager.session::<Db>("main").unwrap();
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

            async fn assert_pool_settles(manager: &BindManager) {
                let bind = manager.bind::<Db>("main").unwrap();
                eventually("every connection back in the pool", || {
                    let status = bind.status();
                    async move { status.in_use == 0 && status.waiting == 0 }
                })
                .await;
            }

            /// A statement that runs for about a second, to cancel mid-flight.
            fn slow_query() -> &'static str {
                match KIND {
                    Kind::Postgres => "SELECT pg_sleep(1)",
                    Kind::MySql => "SELECT SLEEP(1)",
                    Kind::SqliteFile | Kind::SqliteMemory => {
                        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000) \
                         SELECT COUNT(*) FROM c"
                    }
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn no_connection_before_first_statement() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                let bind = manager.bind::<Db>("main").unwrap();
                let mut session = bind.session();
                assert_eq!(bind.status().connections, 0);
                assert!(!session.is_connected());
                if let Some(n) = db.server_connections().await {
                    assert_eq!(n, 0, "the server saw a connection before the first statement");
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

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn commit_is_visible_to_another_session() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap();
                insert(&mut session, &db, 1).await.unwrap();
                session.commit().await.unwrap();
                assert!(!session.in_transaction());
                assert_eq!(committed_rows(&manager, &db).await, 1);
                // The session goes on: its next statement begins a new transaction.
                insert(&mut session, &db, 2).await.unwrap();
                assert!(session.in_transaction());
                session.commit().await.unwrap();
                assert_eq!(committed_rows(&manager, &db).await, 2);
                drop(session);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_is_invisible() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap();
                insert(&mut session, &db, 1).await.unwrap();
                session.rollback().await.unwrap();
                assert_eq!(count(&mut session, &db).await, 0);
                session.close().await.unwrap();
                assert_eq!(committed_rows(&manager, &db).await, 0);
                assert_eq!(manager.status()[0].discarded, 0, "a rolled-back connection is reused");
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dropped_session_rolls_back_and_returns_its_connection_clean() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap();
                insert(&mut session, &db, 1).await.unwrap();
                drop(session);

                assert_pool_settles(&manager).await;
                assert_no_open_transaction(&db).await;
                let status = &manager.status()[0];
                assert_eq!(status.discarded, 0, "the rollback succeeded, so the connection is kept");
                assert_eq!(status.idle, status.connections);
                assert_eq!(committed_rows(&manager, &db).await, 0);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn savepoint_rollback_keeps_the_outer_work() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap();
                insert(&mut session, &db, 1).await.unwrap();
                let mut savepoint = session.savepoint().await.unwrap();
                insert(&mut savepoint, &db, 2).await.unwrap();
                assert_eq!(count(&mut savepoint, &db).await, 2);
                savepoint.rollback().await.unwrap();
                assert_eq!(count(&mut session, &db).await, 1);
                insert(&mut session, &db, 3).await.unwrap();
                session.commit().await.unwrap();
                assert_eq!(committed_rows(&manager, &db).await, 2);
                drop(session);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dropped_savepoint_rolls_back_before_the_next_statement() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap();
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
                assert_eq!(committed_rows(&manager, &db).await, 1);
                drop(session);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nested_savepoints_commit_into_the_transaction() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap();
                let mut outer = session.savepoint().await.unwrap();
                insert(&mut outer, &db, 1).await.unwrap();
                let mut inner = outer.savepoint().await.unwrap();
                insert(&mut inner, &db, 2).await.unwrap();
                inner.commit().await.unwrap();
                outer.commit().await.unwrap();
                assert!(session.in_transaction(), "released savepoints leave the transaction open");
                // In-memory SQLite shares one cache: a reader would wait for this writer's lock.
                if KIND != Kind::SqliteMemory {
                    assert_eq!(committed_rows(&manager, &db).await, 0, "nothing committed yet");
                }
                session.commit().await.unwrap();
                assert_eq!(committed_rows(&manager, &db).await, 2);
                drop(session);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_failed_statement_inside_a_savepoint_can_be_undone() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap();
                insert(&mut session, &db, 1).await.unwrap();
                let mut savepoint = session.savepoint().await.unwrap();
                let duplicate = insert(&mut savepoint, &db, 1).await.unwrap_err();
                assert!(duplicate.as_database_error().is_some(), "{duplicate}");
                savepoint.rollback().await.unwrap();
                insert(&mut session, &db, 2).await.unwrap();
                session.commit().await.unwrap();
                assert_eq!(committed_rows(&manager, &db).await, 2);
                drop(session);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn commit_after_a_failed_statement_follows_the_database() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap();
                insert(&mut session, &db, 1).await.unwrap();
                insert(&mut session, &db, 1).await.unwrap_err();
                let outcome = session.commit().await;
                if KIND == Kind::Postgres {
                    // PostgreSQL aborted the transaction: dbscope says so instead of a silent ROLLBACK.
                    let err = outcome.unwrap_err();
                    assert!(err.is_transaction_aborted(), "{err}");
                    assert_eq!(committed_rows(&manager, &db).await, 0);
                } else {
                    outcome.unwrap();
                    assert_eq!(committed_rows(&manager, &db).await, 1);
                }
                assert!(!session.in_transaction());
                drop(session);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn queries_of_every_shape_run_on_a_session() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap();
                for id in 1..=3 {
                    insert(&mut session, &db, id).await.unwrap();
                }
                let select = format!("SELECT id, v FROM {} ORDER BY id", db.table);
                let rows: Vec<(i64, String)> =
                    sqlx::query_as(sql(select.clone())).fetch_all(&mut session).await.unwrap();
                assert_eq!(rows[2], (3, "row 3".to_owned()));
                let streamed: Vec<_> =
                    sqlx::query(sql(select.clone())).fetch(&mut session).try_collect().await.unwrap();
                assert_eq!(streamed.len(), 3);
                let first: Option<String> = sqlx::query_scalar(sql(format!(
                    "SELECT v FROM {} WHERE id = 2",
                    db.table
                )))
                .fetch_optional(&mut session)
                .await
                .unwrap();
                assert_eq!(first.as_deref(), Some("row 2"));
                let raw = session.connection().await.unwrap();
                let via_raw: i64 = sqlx::query_scalar(sql(format!("SELECT COUNT(*) FROM {}", db.table)))
                    .fetch_one(raw)
                    .await
                    .unwrap();
                assert_eq!(via_raw, 3, "the raw connection is inside the session's transaction");
                session.commit().await.unwrap();
                assert_eq!(committed_rows(&manager, &db).await, 3);
                drop(session);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pool_exhaustion_times_out_within_the_acquire_timeout() {
                let db = setup().await;
                let timeout = Duration::from_millis(300);
                let manager = db.manager(|c| c.max_connections(1).acquire_timeout(timeout));
                let mut holder = manager.session::<Db>("main").unwrap();
                sqlx::query("SELECT 1").execute(&mut holder).await.unwrap();

                let mut waiter = manager.session::<Db>("main").unwrap();
                let start = Instant::now();
                let err = waiter.begin().await.unwrap_err();
                let waited = start.elapsed();
                assert!(err.is_timeout(), "{err}");
                assert_eq!(err.bind(), Some("main"));
                assert!(err.to_string().contains("acquire_timeout"), "{err}");
                assert!(waited >= timeout && waited < timeout * 5, "waited {waited:?}");

                // Through sqlx's API the same timeout is sqlx's own `PoolTimedOut`.
                let via_sqlx = sqlx::query("SELECT 1").execute(&mut waiter).await.unwrap_err();
                assert!(matches!(via_sqlx, sqlx::Error::PoolTimedOut), "{via_sqlx}");
                assert!(dbscope::Error::from(via_sqlx).is_timeout());
                assert_eq!(manager.status()[0].timeouts, 2);

                // The waiter works once the holder lets go.
                drop(holder);
                sqlx::query("SELECT 1").execute(&mut waiter).await.unwrap();
                drop(waiter);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancelled_checkout_leaves_the_pool_healthy() {
                let db = setup().await;
                let manager = db.manager(|c| c.max_connections(1));
                let mut holder = manager.session::<Db>("main").unwrap();
                sqlx::query("SELECT 1").execute(&mut holder).await.unwrap();
                let mut waiter = manager.session::<Db>("main").unwrap();
                let waiting = sqlx::query("SELECT 1").execute(&mut waiter);
                assert!(cancel_after(waiting, 5).await.is_none(), "the pool is full, the waiter waits");
                assert_eq!(manager.status()[0].waiting, 0, "the cancelled waiter left the queue");
                drop(holder);
                sqlx::query("SELECT 1").execute(&mut waiter).await.unwrap();
                waiter.commit().await.unwrap();
                drop(waiter);
                assert_pool_settles(&manager).await;
                assert_eq!(manager.status()[0].connections, 1);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancellation_at_every_await_leaves_no_transaction_behind() {
                let db = setup().await;
                let manager = db.manager(|c| c.max_connections(2));
                create_table(&manager, &db).await;
                let bind = manager.bind::<Db>("main").unwrap();
                let mut cancelled = 0;
                for polls in 0.. {
                    assert!(polls < 500, "the unit of work never finished");
                    let mut session = bind.session();
                    let work = async {
                        session.begin().await?;
                        insert(&mut session, &db, polls).await?;
                        session.commit().await
                    };
                    let finished = cancel_after(work, polls as usize).await;
                    drop(session);
                    assert_pool_settles(&manager).await;
                    assert_no_open_transaction(&db).await;
                    match finished {
                        Some(result) => {
                            result.unwrap();
                            break;
                        }
                        None => cancelled += 1,
                    }
                }
                assert!(cancelled >= 3, "checkout, BEGIN, the statement and COMMIT were each cut off");
                // The pool still works, and no lock or transaction blocks a writer.
                let mut session = bind.session();
                insert(&mut session, &db, 10_000).await.unwrap();
                session.commit().await.unwrap();
                drop(session);
                assert!(manager.status()[0].connections <= 2);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_statement_cancelled_mid_flight_poisons_the_session_and_discards_the_connection() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap();
                insert(&mut session, &db, 1).await.unwrap();
                let slow = sqlx::query(slow_query()).execute(&mut session);
                assert!(tokio::time::timeout(Duration::from_millis(100), slow).await.is_err());

                let err = session.commit().await.unwrap_err();
                assert!(err.is_poisoned(), "{err}");
                let err = insert(&mut session, &db, 2).await.unwrap_err();
                assert!(dbscope::Error::from(err).is_poisoned());
                drop(session);

                assert_eq!(manager.status()[0].discarded, 1, "a connection in an unknown state is discarded");
                assert_eq!(manager.status()[0].connections, 0);
                assert_no_open_transaction(&db).await;
                assert_eq!(committed_rows(&manager, &db).await, 0);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_stream_dropped_before_its_end_counts_as_cancelled() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap();
                for id in 1..=3 {
                    insert(&mut session, &db, id).await.unwrap();
                }
                session.commit().await.unwrap();
                {
                    let select = format!("SELECT id FROM {}", db.table);
                    let mut rows = sqlx::query(sql(select)).fetch(&mut session);
                    assert!(rows.try_next().await.unwrap().is_some());
                }
                assert!(session.commit().await.unwrap_err().is_poisoned());
                drop(session);
                assert_eq!(manager.status()[0].discarded, 1);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn close_waits_for_sessions_then_closes_every_connection() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                let bind = manager.bind::<Db>("main").unwrap();
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
                assert!(!closing.is_finished(), "close waits for the session holding a connection");
                assert!(manager.is_closed());
                assert!(manager.session::<Db>("main").unwrap_err().is_closed());

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

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn close_reports_the_binds_still_busy_at_its_deadline() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                let mut busy = manager.session::<Db>("main").unwrap();
                sqlx::query("SELECT 1").execute(&mut busy).await.unwrap();
                let err = manager.close(Duration::from_millis(100)).await.unwrap_err();
                assert!(matches!(&err, dbscope::Error::CloseTimedOut { busy } if busy == &[("main".to_owned(), 1)]), "{err}");
                // The straggler's transaction still ends cleanly when it drops.
                drop(busy);
                assert_no_open_transaction(&db).await;
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_closed_manager_refuses_new_sessions() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                let bind = manager.bind::<Db>("main").unwrap();
                manager.close(Duration::from_secs(5)).await.unwrap();
                let err = manager.bind::<Db>("main").unwrap_err();
                assert!(err.is_closed() && err.to_string().contains("`main`"), "{err}");
                let err = bind.session().begin().await.unwrap_err();
                assert!(err.is_closed(), "{err}");
                let via_sqlx = sqlx::query("SELECT 1").execute(&mut bind.session()).await.unwrap_err();
                assert!(matches!(via_sqlx, sqlx::Error::PoolClosed), "{via_sqlx}");
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dropping_the_manager_closes_idle_connections() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                let bind = manager.bind::<Db>("main").unwrap();
                let mut session = bind.session();
                sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
                drop(session);
                assert_pool_settles(&manager).await;
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

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn autocommit_lands_each_statement_without_a_transaction() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap().autocommit(true);
                insert(&mut session, &db, 1).await.unwrap();
                assert!(!session.in_transaction());
                assert_no_open_transaction(&db).await; // while the session still holds its connection
                assert_eq!(committed_rows(&manager, &db).await, 1, "visible before any commit");
                drop(session);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_autocommit_mode_a_savepoint_guard_is_the_transaction() {
                let db = setup().await;
                let manager = db.manager(|c| c.autocommit(true)); // the bind's default
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap();
                let mut tx = session.savepoint().await.unwrap();
                insert(&mut tx, &db, 1).await.unwrap();
                tx.rollback().await.unwrap();
                assert!(!session.in_transaction());
                let mut tx = session.savepoint().await.unwrap();
                insert(&mut tx, &db, 2).await.unwrap();
                tx.commit().await.unwrap();
                assert!(!session.in_transaction());
                drop(session);
                assert_eq!(committed_rows(&manager, &db).await, 1);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_lent_raw_connection_is_verified_before_it_returns() {
                let db = setup().await;
                let manager = db.manager(|c| c.max_connections(1));
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap().autocommit(true);
                let raw = session.connection().await.unwrap();
                let stmt = format!("INSERT INTO {} (id, v) VALUES (1, 'raw')", db.table);
                sqlx::query(sql(stmt)).execute(raw).await.unwrap();
                drop(session); // no transaction, but unverified: pinged, then returned
                assert_pool_settles(&manager).await;
                let status = &manager.status()[0];
                assert_eq!((status.idle, status.discarded), (1, 0), "{status:?}");
                assert_eq!(committed_rows(&manager, &db).await, 1);

                // Raw work cancelled mid-flight is invisible to the session: the check before
                // reuse catches it (here a rollback, the session being in a transaction).
                let mut session = manager.session::<Db>("main").unwrap();
                let raw = session.connection().await.unwrap();
                let slow = sqlx::query(slow_query()).execute(raw);
                assert!(tokio::time::timeout(Duration::from_millis(50), slow).await.is_err());
                drop(session);
                assert_pool_settles(&manager).await;
                assert_no_open_transaction(&db).await;
                let mut session = manager.session::<Db>("main").unwrap();
                insert(&mut session, &db, 2).await.unwrap();
                session.commit().await.unwrap();
                drop(session);
                assert_eq!(committed_rows(&manager, &db).await, 2);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn read_only_sessions_refuse_writes_and_leave_the_connection_writable() {
                let db = setup().await;
                let manager = db.manager(|c| c.max_connections(1));
                create_table(&manager, &db).await;
                let mut reader = manager.session::<Db>("main").unwrap().read_only(true);
                assert_eq!(count(&mut reader, &db).await, 0);
                let err = insert(&mut reader, &db, 1).await.unwrap_err();
                assert!(err.as_database_error().is_some(), "{err}");
                reader.close().await.unwrap();
                // Same (only) connection, default options: writable again.
                let mut writer = manager.session::<Db>("main").unwrap();
                insert(&mut writer, &db, 1).await.unwrap();
                writer.commit().await.unwrap();
                drop(writer);
                assert_eq!(committed_rows(&manager, &db).await, 1);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn options_changed_mid_transaction_apply_to_the_next_one() {
                let db = setup().await;
                let manager = db.manager(|c| c.max_connections(1));
                create_table(&manager, &db).await;
                let mut session = manager.session::<Db>("main").unwrap().read_only(true);
                assert_eq!(count(&mut session, &db).await, 0); // a read-only transaction is open
                let mut session = session.read_only(false);
                assert!(insert(&mut session, &db, 1).await.is_err(), "still the read-only transaction");
                session.rollback().await.unwrap();
                insert(&mut session, &db, 1).await.unwrap(); // a new, writable transaction
                session.commit().await.unwrap();
                drop(session);
                assert_eq!(committed_rows(&manager, &db).await, 1);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn isolation_level_reaches_the_server() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                create_table(&manager, &db).await;
                let session = manager.session::<Db>("main").unwrap();
                match KIND {
                    Kind::Postgres => {
                        let mut session = session.isolation(IsolationLevel::Serializable);
                        let level: String = sqlx::query_scalar("SELECT current_setting('transaction_isolation')")
                            .fetch_one(&mut session)
                            .await
                            .unwrap();
                        assert_eq!(level, "serializable");
                    }
                    Kind::MySql => {
                        let mut session = session.isolation(IsolationLevel::ReadCommitted);
                        insert(&mut session, &db, 1).await.unwrap();
                        let me: i64 = sqlx::query_scalar("SELECT CAST(CONNECTION_ID() AS SIGNED)")
                            .fetch_one(&mut session)
                            .await
                            .unwrap();
                        let trx = db.innodb_transactions().await;
                        let (_, level) = trx.into_iter().find(|(id, _)| *id == me).expect("our transaction");
                        assert_eq!(level, "READ COMMITTED");
                    }
                    Kind::SqliteFile | Kind::SqliteMemory => {
                        let mut weaker = session.isolation(IsolationLevel::ReadCommitted);
                        let err = weaker.begin().await.unwrap_err();
                        assert!(matches!(err, dbscope::Error::Unsupported { .. }), "{err}");
                        assert!(!weaker.in_transaction());
                        let mut session = weaker.isolation(IsolationLevel::Serializable);
                        session.begin().await.unwrap();
                    }
                }
                manager.close(Duration::from_secs(5)).await.ok();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn typed_bind_keys_select_the_bind_at_compile_time() {
                let db = setup().await;
                dbscope::bind_key!(Main: Db = "main");
                let manager = db.manager(|c| c);
                let mut session = manager.session_for::<Main>().unwrap();
                sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
                session.commit().await.unwrap();
                assert_eq!(manager.bind_for::<Main>().unwrap().name(), "main");
                let err = manager.bind::<$other>("main").unwrap_err();
                assert!(err.is_backend_mismatch(), "{err}");
                let err = manager.bind::<Db>("mian").unwrap_err();
                assert!(err.is_unknown_bind() && err.to_string().contains("known binds: main"), "{err}");
                drop(session);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn min_connections_and_idle_timeout_are_honoured() {
                let db = setup().await;
                let manager = db.manager(|c| {
                    c.min_connections(2).max_connections(4).idle_timeout(Some(Duration::from_millis(200)))
                });
                let bind = manager.bind::<Db>("main").unwrap();
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

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn connect_opens_a_connection_eagerly() {
                let db = setup().await;
                let manager = db.manager(|c| c);
                manager.connect().await.unwrap();
                assert_eq!(manager.status()[0].connections, 1);
                if let Some(n) = db.server_connections().await {
                    assert_eq!(n, 1);
                }
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }
        }
    };
}

/// What only a server can show: connections killed under the pool, replaced by age.
macro_rules! server_suite {
    ($module:ident, $db:ty, $kind:expr) => {
        mod $module {
            use super::*;

            type Db = $db;

            async fn connection_id(session: &mut Session<Db>, db: &TestDb) -> i64 {
                sqlx::query_scalar(db.connection_id_query())
                    .fetch_one(session)
                    .await
                    .expect("connection id")
            }

            /// Uses one connection, returns it to the pool, and gives its server id.
            async fn park_one_connection(manager: &BindManager, db: &TestDb) -> i64 {
                let mut session = manager.session::<Db>("main").unwrap();
                let id = connection_id(&mut session, db).await;
                session.commit().await.unwrap();
                drop(session);
                id
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_connection_killed_mid_session_is_discarded_not_reused() {
                let db = TestDb::new($kind).await;
                let manager = db.manager(|c| c.max_connections(1));
                let mut session = manager.session::<Db>("main").unwrap();
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
                let mut fresh = manager.session::<Db>("main").unwrap();
                assert_ne!(
                    connection_id(&mut fresh, &db).await,
                    id,
                    "a new connection serves"
                );
                drop(fresh);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn health_check_always_replaces_a_dead_idle_connection() {
                let db = TestDb::new($kind).await;
                let manager =
                    db.manager(|c| c.max_connections(1).health_check(HealthCheck::Always));
                let dead = park_one_connection(&manager, &db).await;
                db.kill_connection(dead).await;
                let mut session = manager.session::<Db>("main").unwrap();
                let id = connection_id(&mut session, &db).await; // the ping caught it: no error
                assert_ne!(id, dead);
                drop(session);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn health_check_if_idle_skips_the_ping_for_a_busy_connection() {
                let db = TestDb::new($kind).await;
                let manager = db.manager(|c| {
                    c.max_connections(1)
                        .health_check(HealthCheck::IfIdleFor(Duration::from_secs(60)))
                });
                let dead = park_one_connection(&manager, &db).await;
                db.kill_connection(dead).await;
                // Idle for less than the limit: handed out unpinged, the first statement finds it dead.
                let mut session = manager.session::<Db>("main").unwrap();
                assert!(sqlx::query("SELECT 1").execute(&mut session).await.is_err());
                drop(session);
                // Discarded; the next session gets a live connection.
                let mut session = manager.session::<Db>("main").unwrap();
                assert_ne!(connection_id(&mut session, &db).await, dead);
                drop(session);
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn max_lifetime_replaces_old_connections() {
                let db = TestDb::new($kind).await;
                let manager = db.manager(|c| {
                    c.max_connections(1)
                        .max_lifetime(Some(Duration::from_millis(300)))
                });
                let first = park_one_connection(&manager, &db).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let second = park_one_connection(&manager, &db).await;
                assert_ne!(
                    first, second,
                    "a connection past max_lifetime is not handed out"
                );
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }
        }
    };
}

server_suite!(postgres_server, sqlx::Postgres, Kind::Postgres);
server_suite!(mysql_server, sqlx::MySql, Kind::MySql);

behaviour_suite!(sqlite_file, sqlx::Sqlite, sqlx::Postgres, Kind::SqliteFile);
behaviour_suite!(
    sqlite_memory,
    sqlx::Sqlite,
    sqlx::Postgres,
    Kind::SqliteMemory
);
behaviour_suite!(postgres, sqlx::Postgres, sqlx::MySql, Kind::Postgres);
behaviour_suite!(mysql, sqlx::MySql, sqlx::Sqlite, Kind::MySql);
