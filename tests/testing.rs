//! The testing toolkit's transaction mode, on PostgreSQL, MariaDB and SQLite: an axum app's POST
//! through a real server and client lands in the test transaction, where the test sees it, and
//! is gone from the server afterwards (checked from a separate plain connection); a multi-bind
//! app on all three at once; a MariaDB implicit commit reported at the end.
//!
//! Each test works in a scratch database of its own (PostgreSQL, MariaDB) or file (SQLite), so
//! that the toolkit's once-per-binary migrations never touch the shared `test` database.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use common::{Kind, MYSQL_DEFAULT, MYSQL_ENV, PG_DEFAULT, PG_ENV, Suite, server_url, sql};
use dbscope::axum::{DbError, DbSession};
use dbscope::testing::{Mode, TestContext, TestDb};
use dbscope::tower::ScopeLayer;
use dbscope::{BindConfig, BindKey, Config, ErrorKind};
use sqlx::{AssertSqlSafe, Connection, Row};

/// A database (or SQLite file) of one test, outside any toolkit, to check the server from.
struct Scratch {
    kind: Kind,
    name: String,
    admin: String,
    url: String,
}

impl Scratch {
    async fn new(kind: Kind) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("dbscope_tt_{}_{n}", std::process::id());
        let admin = match kind {
            Kind::Postgres => server_url(PG_ENV, PG_DEFAULT),
            Kind::MySql => server_url(MYSQL_ENV, MYSQL_DEFAULT),
            Kind::SqliteFile | Kind::SqliteMemory => String::new(),
        };
        let url = match kind {
            Kind::SqliteFile | Kind::SqliteMemory => {
                let path = std::env::temp_dir().join(format!("{name}.db"));
                std::fs::File::create(&path).expect("create the sqlite file");
                format!("sqlite://{}", path.display())
            }
            _ => {
                let mut conn = connect(&admin).await;
                sqlx::raw_sql(sql(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create the scratch database");
                let mut url = url::Url::parse(&admin).unwrap();
                url.set_path(&format!("/{name}"));
                url.into()
            }
        };
        Self {
            kind,
            name,
            admin,
            url,
        }
    }

    fn bind(&self) -> BindConfig {
        BindConfig::new(self.url.as_str()).acquire_timeout(Duration::from_secs(10))
    }

    /// A count, from a plain connection of its own.
    async fn count(&self, query: &str) -> i64 {
        let mut conn = connect(&self.url).await;
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(query.to_owned()))
            .fetch_one(&mut conn)
            .await
            .expect("count");
        conn.close().await.ok();
        n
    }

    /// Transactions open on the server in this database (none on SQLite's side to see: there,
    /// whether another connection can take the write lock).
    async fn open_transactions(&self) -> i64 {
        let query = match self.kind {
            Kind::Postgres => format!(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{}' \
                 AND state LIKE 'idle in transaction%'",
                self.name
            ),
            Kind::MySql => format!(
                "SELECT COUNT(*) FROM information_schema.innodb_trx t \
                 JOIN information_schema.processlist p ON t.trx_mysql_thread_id = p.id \
                 WHERE p.db = '{}'",
                self.name
            ),
            _ => {
                let mut conn = connect(&self.url).await;
                let locked = sqlx::raw_sql("BEGIN IMMEDIATE; ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .is_err();
                return i64::from(locked);
            }
        };
        // Spaced like every innodb_trx read of the process: polled faster, MariaDB never
        // refreshes its snapshot (PostgreSQL's view needs no such care; it costs it nothing).
        let _spaced = common::innodb_trx_gate().await;
        let mut conn = connect(&self.admin).await;
        let n: i64 = sqlx::query_scalar(sql(query))
            .fetch_one(&mut conn)
            .await
            .expect("census");
        n
    }

    async fn finish(self) {
        match self.kind {
            Kind::SqliteFile | Kind::SqliteMemory => {
                let path = self.url.trim_start_matches("sqlite://").to_owned();
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
            }
            kind => {
                let force = if kind == Kind::Postgres {
                    " WITH (FORCE)"
                } else {
                    ""
                };
                let mut conn = connect(&self.admin).await;
                sqlx::raw_sql(sql(format!("DROP DATABASE {}{force}", self.name)))
                    .execute(&mut conn)
                    .await
                    .expect("drop the scratch database");
            }
        }
    }
}

async fn no_transaction_left(scratch: &Scratch) {
    common::eventually("no transaction left on the server", || async {
        scratch.open_transactions().await == 0
    })
    .await;
}

async fn connect(url: &str) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test server (see tests/common): {e}"))
}

/// A directory of sqlx migrations, one per statement.
fn migrations(tag: &str, statements: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{tag}_migrations"));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, stmt) in statements.iter().enumerate() {
        std::fs::write(dir.join(format!("{}_step.sql", i + 1)), stmt).unwrap();
    }
    dir
}

fn config(binds: &[(&str, BindConfig)]) -> Config {
    let mut config = Config::default();
    for (name, bind) in binds {
        config.binds.insert((*name).to_owned(), bind.clone());
    }
    config
}

const NOTES: &str = "CREATE TABLE notes (id INTEGER PRIMARY KEY, body VARCHAR(100) NOT NULL)";

fn placeholder(kind: Kind) -> &'static str {
    if kind == Kind::Postgres { "$1" } else { "?" }
}

/// The app: POST /notes stores the body in bind `K`, in the request's scope (committed on 2xx).
fn app<K: BindKey>(manager: &dbscope::BindManager, kind: Kind) -> Router
where
    for<'q> String: sqlx::Encode<'q, K::Database> + sqlx::Type<K::Database>,
    for<'c> &'c mut dbscope::Session<K::Database>: sqlx::Executor<'c, Database = K::Database>,
    <K::Database as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<K::Database>,
{
    let insert = format!(
        "INSERT INTO notes (id, body) VALUES (1, {})",
        placeholder(kind)
    );
    let create = move |mut db: DbSession<K>, body: String| {
        let insert = insert.clone();
        async move {
            sqlx::query(AssertSqlSafe(insert))
                .bind(body)
                .execute(&mut *db)
                .await?;
            Ok::<_, DbError>("stored")
        }
    };
    Router::new()
        .route("/notes", post(create))
        .layer(ScopeLayer::new(manager))
}

async fn post_note(base: &str, body: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("{base}/notes"))
        .body(body.to_owned())
        .send()
        .await
        .expect("the app answers")
        .status()
}

async fn body_of<DB: dbscope::Backend>(t: &TestContext, bind: &str) -> String
where
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    <DB as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<DB>,
{
    let row = t
        .fetch_one::<DB, _>(bind, sqlx::query("SELECT body FROM notes WHERE id = 1"))
        .await
        .expect("the test reads the app's row");
    row.get(0)
}

async fn http_post_is_seen_in_the_test_and_gone_after<B: Suite>()
where
    for<'q> String: sqlx::Encode<'q, B::Db> + sqlx::Type<B::Db>,
    for<'r> String: sqlx::Decode<'r, B::Db>,
    usize: sqlx::ColumnIndex<<B::Db as sqlx::Database>::Row>,
    <B::Db as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<B::Db>,
{
    let scratch = Scratch::new(B::KIND).await;
    let t = TestDb::builder()
        .config(config(&[("main", scratch.bind())]))
        .mode(Mode::Transaction)
        .migrations("main", migrations(&scratch.name, &[NOTES]))
        .start()
        .await
        .expect("the test starts");
    let base = t.serve(app::<B::Main>(t.manager(), B::KIND)).await.unwrap();

    assert_eq!(post_note(&base, "hello").await, 200);
    assert_eq!(body_of::<B::Db>(&t, "main").await, "hello");
    assert_eq!(t.commits("main"), Some(1), "the app's scope committed once");
    assert_eq!(t.rollbacks("main"), Some(0));
    if B::KIND != Kind::SqliteFile {
        // Committed by the app, yet invisible outside: it is inside the test's transaction.
        assert_eq!(scratch.count("SELECT COUNT(*) FROM notes").await, 0);
        // MariaDB refreshes innodb_trx only once nobody read it for 100 ms: poll, spaced.
        common::eventually("the pinned transaction shows on the server", || async {
            scratch.open_transactions().await == 1
        })
        .await;
    }

    t.finish().await.expect("the test transaction was intact");
    assert_eq!(scratch.count("SELECT COUNT(*) FROM notes").await, 0);
    no_transaction_left(&scratch).await;
    scratch.finish().await;
}

/// The app's own `migrate_all` during a transaction-mode test would apply on a connection of
/// its own, outside the test's rollback: it passes when the test's migrations left nothing to
/// do, and otherwise fails, naming the bind, with nothing applied (checked from the server).
async fn an_apps_migrations_in_a_transaction_mode_test_apply_nothing<B: Suite>() {
    let scratch = Scratch::new(B::KIND).await;
    let declared = migrations(&scratch.name, &[NOTES]);
    let t = TestDb::builder()
        .config(config(&[("main", scratch.bind())]))
        .mode(Mode::Transaction)
        .migrations("main", declared.clone())
        .start()
        .await
        .expect("the test starts");
    let same = dbscope::Migrations::new().directory("main", declared);
    let report = t
        .manager()
        .migrate_all(&same)
        .await
        .expect("nothing left to do");
    assert_eq!(report.done(), 0);

    let more = migrations(
        &format!("{}_more", scratch.name),
        &[NOTES, "CREATE TABLE extra (id INTEGER PRIMARY KEY)"],
    );
    let more = dbscope::Migrations::new().directory("main", more);
    let err = t.manager().migrate_all(&more).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TestIsolation, "{err}");
    assert_eq!(err.bind(), Some("main"));
    let status = t.manager().migration_status(&more).await.unwrap();
    assert_eq!(status[0].migrations.len(), 2);
    assert_eq!(
        status[0].migrations[1].state,
        dbscope::MigrationState::Pending,
        "nothing applied"
    );
    t.finish().await.expect("the test transaction was intact");
    let tables = match B::KIND {
        Kind::SqliteFile | Kind::SqliteMemory => {
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'extra'".to_owned()
        }
        _ => format!(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'extra' \
             AND table_schema = '{}'",
            if B::KIND == Kind::Postgres {
                "public"
            } else {
                scratch.name.as_str()
            }
        ),
    };
    assert_eq!(scratch.count(&tables).await, 0, "no table was made");
    scratch.finish().await;
}

/// The toolkit reads a test's migrations as `migrate_all` does, the project's `sqlx.toml`
/// included: the test database records them in the table it names, so the app's own
/// `migrate_all` there finds nothing left to do, instead of applying them again.
async fn test_migrations_follow_the_sqlx_toml<B: Suite>() {
    let scratch = Scratch::new(B::KIND).await;
    let root = std::env::temp_dir().join(format!("{}_project", scratch.name));
    let dir = root.join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("1_notes.sql"), NOTES).unwrap();
    std::fs::write(
        root.join("sqlx.toml"),
        "[migrate]\ntable-name = \"app_migrations\"\n",
    )
    .unwrap();
    let t = TestDb::builder()
        .config(config(&[("main", scratch.bind())]))
        .mode(Mode::Database)
        .migrations("main", dir.clone())
        .start()
        .await
        .expect("the test starts");
    let plan = dbscope::Migrations::new().directory("main", dir);
    let report = t.manager().migrate_all(&plan).await.expect("migrate_all");
    assert_eq!(report.done(), 0, "recorded in sqlx.toml's table already");
    let status = t.manager().migration_status(&plan).await.unwrap();
    assert!(status[0].error.is_none(), "{:?}", status[0].error);
    let states: Vec<_> = status[0].migrations.iter().map(|m| m.state).collect();
    assert_eq!(states, [dbscope::MigrationState::Applied]);
    t.finish().await.unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    scratch.finish().await;
}

/// The app's failed request (a duplicate key: 500) rolls back to its savepoint; the test's
/// transaction and the earlier request's row go on.
async fn failed_request_rolls_back_its_savepoint_only<B: Suite>()
where
    for<'q> String: sqlx::Encode<'q, B::Db> + sqlx::Type<B::Db>,
    for<'r> String: sqlx::Decode<'r, B::Db>,
    usize: sqlx::ColumnIndex<<B::Db as sqlx::Database>::Row>,
    <B::Db as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<B::Db>,
{
    let scratch = Scratch::new(B::KIND).await;
    let t = TestDb::builder()
        .config(config(&[("main", scratch.bind())]))
        .mode(Mode::Transaction)
        .migrations("main", migrations(&scratch.name, &[NOTES]))
        .start()
        .await
        .expect("the test starts");
    let base = t.serve(app::<B::Main>(t.manager(), B::KIND)).await.unwrap();
    assert_eq!(post_note(&base, "first").await, 200);
    assert!(post_note(&base, "again").await.is_server_error());
    assert_eq!(body_of::<B::Db>(&t, "main").await, "first");
    assert_eq!((t.commits("main"), t.rollbacks("main")), (Some(1), Some(1)));
    t.finish().await.expect("the test transaction was intact");
    assert_eq!(scratch.count("SELECT COUNT(*) FROM notes").await, 0);
    scratch.finish().await;
}

/// The app's blocking code (a `BlockingBind` session, a blocking scope, on a thread of their
/// own) runs on the pinned connection too: its rows are in the test transaction, seen by the
/// test, invisible outside, and gone after.
async fn blocking_sessions_run_on_the_pinned_connection<B: Suite>()
where
    for<'r> String: sqlx::Decode<'r, B::Db> + sqlx::Type<B::Db>,
    usize: sqlx::ColumnIndex<<B::Db as sqlx::Database>::Row>,
    <B::Db as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<B::Db>,
{
    let scratch = Scratch::new(B::KIND).await;
    let t = TestDb::builder()
        .config(config(&[("main", scratch.bind())]))
        .mode(Mode::Transaction)
        .migrations("main", migrations(&scratch.name, &[NOTES]))
        .start()
        .await
        .expect("the test starts");
    let manager = t.manager().clone();
    let blocking = tokio::task::spawn_blocking(move || {
        let bind = manager.blocking_bind::<B::Db>("main")?;
        let mut session = bind.session();
        let insert = "INSERT INTO notes (id, body) VALUES (1, 'from a blocking session')";
        session.execute(sqlx::query(insert))?;
        session.commit()?;
        session.close()?;
        dbscope::blocking::scope(&manager, || {
            let mut session = dbscope::blocking::current_session::<B::Db>("main")?;
            let insert = "INSERT INTO notes (id, body) VALUES (2, 'from a blocking scope')";
            session.execute(sqlx::query(insert))?;
            Ok::<_, dbscope::Error>(())
        })
    });
    tokio::time::timeout(Duration::from_secs(60), blocking)
        .await
        .expect("the blocking code finished")
        .expect("the blocking code did not panic")
        .expect("the blocking code ran");
    assert_eq!(
        body_of::<B::Db>(&t, "main").await,
        "from a blocking session"
    );
    let scoped = sqlx::query("SELECT body FROM notes WHERE id = 2");
    let row = t.fetch_one::<B::Db, _>("main", scoped).await.unwrap();
    assert_eq!(row.get::<String, _>(0), "from a blocking scope");
    assert_eq!(
        t.commits("main"),
        Some(2),
        "the session's commit and the scope's"
    );
    if B::KIND != Kind::SqliteFile {
        assert_eq!(scratch.count("SELECT COUNT(*) FROM notes").await, 0);
    }
    t.finish().await.expect("the test transaction was intact");
    assert_eq!(scratch.count("SELECT COUNT(*) FROM notes").await, 0);
    no_transaction_left(&scratch).await;
    scratch.finish().await;
}

/// Sessions cut off mid-statement on the pinned connection, their statement waiting for a lock
/// another connection holds (as the server shows): an autocommit one, which had no transaction
/// savepoint to roll back to (PostgreSQL: only its statement's own; MariaDB: none), then a
/// transactional one. Each one's recovery leaves the test's transaction going, with the work
/// committed into it before; the transactional one's own work is undone.
async fn a_session_cut_off_leaves_the_test_transaction_going<B: Suite>()
where
    for<'r> String: sqlx::Decode<'r, B::Db> + sqlx::Type<B::Db>,
    usize: sqlx::ColumnIndex<<B::Db as sqlx::Database>::Row>,
    <B::Db as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<B::Db>,
{
    let scratch = Scratch::new(B::KIND).await;
    let t = TestDb::builder()
        .config(config(&[("main", scratch.bind())]))
        .mode(Mode::Transaction)
        .migrations("main", migrations(&scratch.name, &[NOTES]))
        .start()
        .await
        .expect("the test starts");
    let mut write = t.manager().session::<B::Db>("main").unwrap();
    let insert = "INSERT INTO notes (id, body) VALUES (1, 'kept')";
    sqlx::query(insert).execute(&mut write).await.unwrap();
    write.commit().await.unwrap();
    drop(write);
    // An autocommit write that succeeded: on PostgreSQL its savepoint stays open under what
    // follows, and no recovery may roll back to it.
    let mut auto = t
        .manager()
        .session::<B::Db>("main")
        .unwrap()
        .autocommit(true);
    let insert = "INSERT INTO notes (id, body) VALUES (3, 'autocommit')";
    sqlx::query(insert).execute(&mut auto).await.unwrap();
    drop(auto);

    for (round, autocommit) in [(1, true), (2, false)] {
        // A lock of each round's own: the pinned connection may still hold the last one.
        let lock = format!("{}_{round}", scratch.name);
        let (hold, wait, waiting, release) = match B::KIND {
            Kind::Postgres => (
                format!("SELECT pg_advisory_lock(7310 + {round})"),
                format!("SELECT pg_advisory_xact_lock(7310 + {round})"),
                format!(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{}' \
                     AND wait_event_type = 'Lock' AND query LIKE '%pg_advisory_xact_lock%'",
                    scratch.name
                ),
                format!("SELECT pg_advisory_unlock(7310 + {round})"),
            ),
            _ => (
                format!("SELECT GET_LOCK('{lock}', 60)"),
                format!("SELECT GET_LOCK('{lock}', 60)"),
                format!(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                     WHERE DB = '{}' AND STATE = 'User lock' AND INFO LIKE '%GET_LOCK%'",
                    scratch.name
                ),
                format!("SELECT RELEASE_LOCK('{lock}')"),
            ),
        };
        let mut holder = connect(&scratch.url).await;
        sqlx::raw_sql(sql(hold)).execute(&mut holder).await.unwrap();
        let mut session = t
            .manager()
            .session::<B::Db>("main")
            .unwrap()
            .autocommit(autocommit);
        if !autocommit {
            let insert = "INSERT INTO notes (id, body) VALUES (2, 'undone')";
            sqlx::query(insert).execute(&mut session).await.unwrap();
        }
        {
            let statement = sqlx::raw_sql(sql(wait)).execute(&mut session);
            let seen = common::eventually("the server shows the statement waiting", || async {
                scratch.count(&waiting).await == 1
            });
            tokio::select! {
                outcome = statement => panic!("the statement waits for the lock: {outcome:?}"),
                () = seen => {}
            }
        }
        // The statement, cut off while it waited, ends on the server once the lock is
        // released; then the session goes, and its connection to recovery.
        sqlx::raw_sql(sql(release))
            .execute(&mut holder)
            .await
            .unwrap();
        holder.close().await.unwrap();
        drop(session);

        let kept = "SELECT body FROM notes WHERE id = 1 \
                    AND EXISTS (SELECT 1 FROM notes WHERE id = 3) \
                    AND NOT EXISTS (SELECT 1 FROM notes WHERE id = 2)";
        let row = t.fetch_one::<B::Db, _>("main", sqlx::query(kept)).await;
        let row = row.unwrap_or_else(|e| panic!("round {round}: the next checkout fails: {e}"));
        assert_eq!(
            row.get::<String, _>(0),
            "kept",
            "round {round}: the test's work is there, the cut-off session's is not"
        );
    }
    t.finish().await.expect("the test transaction was intact");
    assert_eq!(scratch.count("SELECT COUNT(*) FROM notes").await, 0);
    no_transaction_left(&scratch).await;
    scratch.finish().await;
}

common::async_tests!(pg, common::Pg: http_post_is_seen_in_the_test_and_gone_after, test_migrations_follow_the_sqlx_toml, an_apps_migrations_in_a_transaction_mode_test_apply_nothing, failed_request_rolls_back_its_savepoint_only, blocking_sessions_run_on_the_pinned_connection, a_session_cut_off_leaves_the_test_transaction_going);
common::async_tests!(mysql, common::MySql: http_post_is_seen_in_the_test_and_gone_after, test_migrations_follow_the_sqlx_toml, an_apps_migrations_in_a_transaction_mode_test_apply_nothing, failed_request_rolls_back_its_savepoint_only, blocking_sessions_run_on_the_pinned_connection, a_session_cut_off_leaves_the_test_transaction_going);
common::async_tests!(sqlite, common::SqliteFile: http_post_is_seen_in_the_test_and_gone_after, test_migrations_follow_the_sqlx_toml, an_apps_migrations_in_a_transaction_mode_test_apply_nothing, failed_request_rolls_back_its_savepoint_only, blocking_sessions_run_on_the_pinned_connection);

/// PostgreSQL aborts a transaction at its first failed statement; an autocommit session's
/// failed statement on the pinned connection undoes only itself (its own savepoint), as it
/// would outside the test: the session, the next sessions and the test transaction go on, and
/// the statements that succeeded stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autocommit_failure_on_postgres_undoes_only_its_statement() {
    common::within_limit("autocommit_failure_on_postgres", async {
        let pg = Scratch::new(Kind::Postgres).await;
        let t = TestDb::builder()
            .config(config(&[("main", pg.bind())]))
            .migrations("main", migrations(&pg.name, &[NOTES]))
            .start()
            .await
            .expect("the test starts");
        let insert = |id: i32| format!("INSERT INTO notes (id, body) VALUES ({id}, 'note {id}')");
        let mut session = t
            .manager()
            .session::<sqlx::Postgres>("main")
            .unwrap()
            .autocommit(true);
        let run = |sql: String| sqlx::raw_sql(AssertSqlSafe(sql));
        run(insert(1))
            .execute(&mut session)
            .await
            .expect("a first insert");
        let duplicate = run(insert(1)).execute(&mut session).await;
        assert!(duplicate.is_err(), "a duplicate key fails");
        run(insert(2))
            .execute(&mut session)
            .await
            .expect("the session goes on");
        // Failing last, then dropped: the next session still finds a usable transaction.
        assert!(run(insert(2)).execute(&mut session).await.is_err());
        drop(session);
        let mut next = t
            .manager()
            .session::<sqlx::Postgres>("main")
            .unwrap()
            .autocommit(true);
        assert!(
            run("SELECT nothing FROM nowhere".into())
                .execute(&mut next)
                .await
                .is_err()
        );
        // A transaction begun after a failed autocommit statement, in the same session.
        next.begin().await.expect("begin after a failed statement");
        run(insert(3)).execute(&mut next).await.unwrap();
        next.commit()
            .await
            .expect("commit after a failed statement");
        assert!(run(insert(3)).execute(&mut next).await.is_err());
        next.close().await.expect("close after a failed statement");
        // The test's own reads are autocommit too: a failing one leaves the test going.
        let missing = sqlx::query("SELECT body FROM missing_table");
        assert!(
            t.fetch_one::<sqlx::Postgres, _>("main", missing)
                .await
                .is_err()
        );
        let count = sqlx::query("SELECT COUNT(*) FROM notes");
        let row = t
            .fetch_one::<sqlx::Postgres, _>("main", count)
            .await
            .unwrap();
        assert_eq!(
            row.get::<i64, _>(0),
            3,
            "every statement that succeeded stayed"
        );
        assert_eq!((t.commits("main"), t.rollbacks("main")), (Some(1), Some(0)));
        t.finish().await.expect("the test transaction was intact");
        assert_eq!(pg.count("SELECT COUNT(*) FROM notes").await, 0);
        no_transaction_left(&pg).await;
        pg.finish().await;
    })
    .await;
}

/// In transaction mode, a read session runs on the test's pinned connection as before: in a
/// savepoint of the test's transaction, which sees the test's writes, and without changing the
/// connection's settings (a bind's read sessions elsewhere run without BEGIN on read-only
/// connections: see tests/read_only.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_sessions_on_the_pinned_connection_stay_in_the_test_transaction() {
    common::within_limit("read_sessions_on_the_pinned_connection", async {
        let pg = Scratch::new(Kind::Postgres).await;
        let t = TestDb::builder()
            .config(config(&[("main", pg.bind())]))
            .migrations("main", migrations(&pg.name, &[NOTES]))
            .start()
            .await
            .expect("the test starts");
        let mut write = t.manager().session::<sqlx::Postgres>("main").unwrap();
        sqlx::query("INSERT INTO notes (id, body) VALUES (1, 'seen')")
            .execute(&mut write)
            .await
            .unwrap();
        write.commit().await.unwrap();
        drop(write);
        let mut read = t.manager().read_session::<sqlx::Postgres>("main").unwrap();
        let row = sqlx::raw_sql(
            "SELECT statement_timestamp() = transaction_timestamp(), \
             current_setting('default_transaction_read_only'), \
             (SELECT COUNT(*) FROM notes)",
        )
        .fetch_one(&mut read)
        .await
        .unwrap();
        assert!(!row.get::<bool, _>(0), "inside the test's transaction");
        assert_eq!(
            row.get::<String, _>(1),
            "off",
            "the pinned connection is left alone"
        );
        assert_eq!(row.get::<i64, _>(2), 1, "it sees the test's write");
        read.commit().await.unwrap();
        drop(read);
        assert_eq!((t.commits("main"), t.rollbacks("main")), (Some(2), Some(0)));
        t.finish().await.expect("the test transaction was intact");
        assert_eq!(pg.count("SELECT COUNT(*) FROM notes").await, 0);
        no_transaction_left(&pg).await;
        pg.finish().await;
    })
    .await;
}

dbscope::bind_key!(PgBind: sqlx::Postgres = "pg");
dbscope::bind_key!(MyBind: sqlx::MySql = "my");
dbscope::bind_key!(LiteBind: sqlx::Sqlite = "lite");

/// One request writes to three binds on three backends, in one scope: each bind's row is in
/// its own test transaction, and every one is gone after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_bind_app_on_three_backends() {
    common::within_limit("multi_bind_app_on_three_backends", async {
        let pg = Scratch::new(Kind::Postgres).await;
        let my = Scratch::new(Kind::MySql).await;
        let lite = Scratch::new(Kind::SqliteFile).await;
        let t = TestDb::builder()
            .config(config(&[
                ("pg", pg.bind()),
                ("my", my.bind()),
                ("lite", lite.bind()),
            ]))
            .mode(Mode::Transaction)
            .migrations("pg", migrations(&pg.name, &[NOTES]))
            .migrations("my", migrations(&my.name, &[NOTES]))
            .migrations("lite", migrations(&lite.name, &[NOTES]))
            .start()
            .await
            .expect("the test starts");
        async fn create(
            mut pg: DbSession<PgBind>,
            mut my: DbSession<MyBind>,
            mut lite: DbSession<LiteBind>,
            body: String,
        ) -> Result<&'static str, DbError> {
            let pg_sql = "INSERT INTO notes (id, body) VALUES (1, $1)";
            sqlx::query(pg_sql).bind(&body).execute(&mut *pg).await?;
            let other = "INSERT INTO notes (id, body) VALUES (1, ?)";
            sqlx::query(other).bind(&body).execute(&mut *my).await?;
            sqlx::query(other).bind(&body).execute(&mut *lite).await?;
            Ok("stored")
        }
        let router = Router::new()
            .route("/notes", post(create))
            .layer(ScopeLayer::new(t.manager()));
        let base = t.serve(router).await.unwrap();
        assert_eq!(post_note(&base, "everywhere").await, 200);
        assert_eq!(body_of::<sqlx::Postgres>(&t, "pg").await, "everywhere");
        assert_eq!(body_of::<sqlx::MySql>(&t, "my").await, "everywhere");
        assert_eq!(body_of::<sqlx::Sqlite>(&t, "lite").await, "everywhere");
        for bind in ["pg", "my", "lite"] {
            assert_eq!(t.commits(bind), Some(1), "{bind}");
        }
        t.finish().await.expect("every test transaction was intact");
        for scratch in [pg, my, lite] {
            assert_eq!(scratch.count("SELECT COUNT(*) FROM notes").await, 0);
            no_transaction_left(&scratch).await;
            scratch.finish().await;
        }
    })
    .await;
}

/// DDL on MariaDB commits the test transaction: the test's end says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_implicit_commit_fails_the_test() {
    common::within_limit("mariadb_implicit_commit_fails_the_test", async {
        let my = Scratch::new(Kind::MySql).await;
        let t = TestDb::builder()
            .config(config(&[("main", my.bind())]))
            .start() // transaction mode: MariaDB's default
            .await
            .expect("the test starts");
        assert_eq!(t.mode("main"), Some(Mode::Transaction));
        let mut session = t.manager().session::<sqlx::MySql>("main").unwrap();
        sqlx::query("CREATE TABLE leaked (id INT)")
            .execute(&mut session)
            .await
            .unwrap();
        // The app may already hear of it (MariaDB: its savepoint is gone); the test's end must.
        let _ = session.commit().await;
        drop(session);
        let err = t.finish().await.expect_err("the implicit commit is caught");
        assert_eq!(err.kind(), ErrorKind::TestIsolation);
        assert_eq!(err.bind(), Some("main"));
        assert!(err.to_string().contains("implicitly"), "{err}");
        // What leaked did leak: the check is real.
        let leaked = "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'leaked'";
        assert_eq!(
            my.count(&format!("{leaked} AND table_schema = '{}'", my.name))
                .await,
            1
        );
        my.finish().await;
    })
    .await;
}
