//! The example routes of the library dbscope replaces (context-async-sqlalchemy, "the seed"),
//! ported to axum behind [`ScopeLayer`] and called over real HTTP, against SQLite (file),
//! PostgreSQL and MariaDB. Each route does what the seed's does; each test asserts the seed's
//! status and the rows the seed's own tests expect committed, counted from a fresh session.
//!
//! | seed route (`examples/fastapi_example/routes/`) | here | status | rows |
//! |---|---|---|---|
//! | `simple_usage.py` | `/simple_usage` | 200 | 1 |
//! | `auto_rollback_by_exception.py` (`simple_with_exception.py`) | `/auto_rollback_by_exception` | 500 (an exception) | 0 |
//! | `auto_rollback_by_status_code.py` (`simple_with_http_exception.py`) | `/auto_rollback_by_status_code` | 500 | 0 |
//! | `atomic.py` (`atomic_usage.py`) | `/atomic_base_example` | 200 | 2 |
//! | `atomic_usage_2.py` (first version: a row, then an atomic block) | `/atomic_usage_2` | 200 | 2 |
//! | `atomic_prev_transaction.py` (`atomic_usage_2.py`, later) | `/atomic_and_previous_transaction` | 500 (`"raise"`) | 5 |
//! | `early_commit.py` (`manual_commit.py`) | `/early_commit` | 200 | 4 |
//! | `early_rollback.py` (`manual_rollback.py`) | `/early_rollback` | 200 | 0 |
//! | `early_connection_close.py` | `/early_connection_close` | 200 | 2 |
//! | `councurrent_queries.py` (`multiple_session_usage.py`) | `/concurrent_queries` | 200 | 5 |
//!
//! Each atomic policy alone (`/atomic/{policy}/...`), with the rows the seed's `session.py`
//! gives (its tests have no such route; "append, then answer 500" is the case of issue 9):
//!
//! | policy (seed → `IfOpen`) | a row, a block, then 500 | a row, a failing block swallowed, then 200 |
//! |---|---|---|
//! | `"commit"` → `Commit` | 2 | 1 |
//! | `"rollback"` → `Rollback` | 1 | 0 |
//! | `"append"` → `Join` | 2 (0 before `Join` ended the transaction) | 0 (2 before) |
//! | `"raise"` → `Fail` | 0 | 1 |
//! | (dbscope's) `Savepoint`, the default | 0 | 1 |
//! | (dbscope's) `LeaveOpen` | 0 | 2 |
//!
//! And what the seed leaves undefined, with dbscope's rule: a `join!` sibling's statement on the
//! scope's session while an atomic block is open is part of the block; `Scope::new_scope`
//! isolates concurrent work.
//!
//! `current_session` returns handles that take the session per statement, so helpers here ask
//! for it as the seed's code calls `db_session`, at any depth.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{Kind, Suite, TestDb, Typed, eventually, fetch_i64, sql};
use dbscope::tower::ScopeLayer;
use dbscope::{BindManager, IfOpen, Scope, current_session};

/// A route's error: a database error, the seed's `raise Exception()`, or an outcome the port
/// did not expect. Answers 500, with its `Debug` text as the body, for the tests' messages.
#[derive(Debug)]
enum RouteError {
    Db(dbscope::Error),
    Raised,
    Unexpected(String),
}

impl From<dbscope::Error> for RouteError {
    fn from(e: dbscope::Error) -> Self {
        Self::Db(e)
    }
}

impl From<sqlx::Error> for RouteError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e.into())
    }
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        let body = match self {
            Self::Unexpected(what) => format!("unexpected: {what}"),
            other => format!("{other:?}"),
        };
        (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
    }
}

type Reply = Result<StatusCode, RouteError>;

#[derive(Clone)]
struct App {
    table: Arc<str>,
    manager: BindManager,
    next_id: Arc<AtomicI64>,
    /// SQLite: one writer per database file at a time.
    one_writer: bool,
}

impl App {
    fn insert_sql(&self) -> sqlx::AssertSqlSafe<String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        sql(format!(
            "INSERT INTO {} (id, v) VALUES ({id}, 'seed route')",
            self.table
        ))
    }
}

/// A row on `session`.
async fn insert_on<'c, DB: Typed>(
    session: impl sqlx::Executor<'c, Database = DB>,
    app: &App,
) -> Result<(), RouteError> {
    sqlx::query(app.insert_sql()).execute(session).await?;
    Ok(())
}

/// The seed's `_insert()`: a row on the scope's session, asked for anew (its `db_session`).
/// The handle takes the session for the statement only.
async fn insert<B: Suite>(app: &App) -> Result<(), RouteError> {
    let mut session = current_session::<B::Db>("main").await?;
    insert_on(&mut session, app).await
}

/// The scope's session's rows, its own uncommitted work included.
async fn visible<B: Suite>(table: &str) -> Result<i64, RouteError> {
    let mut session = current_session::<B::Db>("main").await?;
    let stmt = format!("SELECT COUNT(*) FROM {table}");
    Ok(fetch_i64(&mut session, sql(stmt)).await?)
}

/// Committed rows, as a fresh session outside any scope sees them.
async fn committed<B: Suite>(manager: &BindManager, table: &str) -> i64 {
    let mut session = manager.session::<B::Db>("main").unwrap();
    let stmt = format!("SELECT COUNT(*) FROM {table}");
    let n = fetch_i64(&mut session, sql(stmt)).await.unwrap();
    session.close().await.unwrap();
    n
}

fn atomic<B: Suite>(policy: IfOpen) -> dbscope::Atomic<B::Db> {
    dbscope::atomic::<B::Db>("main").if_open(policy)
}

// ----- the seed's routes -----

/// `simple_usage.py`: a row on the request's session; the layer commits it.
async fn simple_usage<B: Suite>(State(app): State<App>) -> Reply {
    insert::<B>(&app).await?;
    Ok(StatusCode::OK)
}

/// `auto_rollback_by_exception.py`: a row, then an exception (here, the handler's `Err`).
async fn auto_rollback_by_exception<B: Suite>(State(app): State<App>) -> Reply {
    insert::<B>(&app).await?;
    Err(RouteError::Raised)
}

/// `auto_rollback_by_status_code.py`: a row, then `HTTPException(500)` (here, a 500 answer).
async fn auto_rollback_by_status_code<B: Suite>(State(app): State<App>) -> Reply {
    insert::<B>(&app).await?;
    Ok(StatusCode::INTERNAL_SERVER_ERROR)
}

/// `atomic.py`: an atomic block commits its row at once; the next row is a new transaction on
/// the same session, committed by the layer. No transaction is open at the block, so every
/// policy does the same: the default it is.
async fn atomic_base_example<B: Suite>(State(app): State<App>) -> Reply {
    dbscope::atomic::<B::Db>("main")
        .run(insert::<B>(&app))
        .await?;
    insert::<B>(&app).await?;
    Ok(StatusCode::OK)
}

/// `atomic_usage_2.py`, first version: a row opens the transaction, then an atomic block with
/// the seed's default policy, `"commit"`, commits it and runs in a transaction of its own.
/// (dbscope's default would nest a savepoint: the same 2 rows here, since the request commits.)
async fn atomic_usage_2<B: Suite>(State(app): State<App>) -> Reply {
    insert::<B>(&app).await?;
    atomic::<B>(IfOpen::Commit).run(insert::<B>(&app)).await?;
    Ok(StatusCode::OK)
}

/// `atomic_prev_transaction.py`: each policy after a row that opened a transaction.
async fn atomic_and_previous_transaction<B: Suite>(State(app): State<App>) -> Reply {
    insert::<B>(&app).await?; // opens a transaction
    // The seed's default, "commit": commits the open row, then the block's own: 2 rows.
    atomic::<B>(IfOpen::Commit).run(insert::<B>(&app)).await?;
    insert::<B>(&app).await?;
    // "rollback": rolls the open row back, commits the block's: 3.
    atomic::<B>(IfOpen::Rollback).run(insert::<B>(&app)).await?;
    insert::<B>(&app).await?;
    // "append": the block joins the open transaction and commits it, both rows: 5.
    atomic::<B>(IfOpen::Join).run(insert::<B>(&app)).await?;
    insert::<B>(&app).await?;
    // "append" and an exception, caught: both rows rolled back, still 5.
    let failed = atomic::<B>(IfOpen::Join)
        .run(async {
            insert::<B>(&app).await?;
            Err::<(), _>(RouteError::Raised)
        })
        .await;
    if !matches!(failed, Err(RouteError::Raised)) {
        return Err(RouteError::Unexpected(format!("{failed:?}")));
    }
    insert::<B>(&app).await?;
    // "raise": refuses; the error fails the request, whose open row rolls back: 5.
    atomic::<B>(IfOpen::Fail).run(insert::<B>(&app)).await?;
    Ok(StatusCode::OK)
}

/// `early_commit.py`: commits by hand, disconnects by hand, then lets the layer commit.
async fn early_commit<B: Suite>(State(app): State<App>) -> Reply {
    // new connection, new transaction, commit
    let mut session = current_session::<B::Db>("main").await?;
    insert_on(&mut session, &app).await?;
    session.commit().await?;
    // same connection, new transaction, commit, connection back to the pool (the seed's
    // `commit_db_session` then `close_db_session`)
    let mut session = current_session::<B::Db>("main").await?;
    insert_on(&mut session, &app).await?;
    session.commit().await?;
    session.disconnect().await?;
    // new connection, new transaction; then the same transaction; the layer commits both
    insert::<B>(&app).await?;
    insert::<B>(&app).await?;
    Ok(StatusCode::OK)
}

/// `early_rollback.py`: each row rolled back by hand; the request answers 200 with nothing.
async fn early_rollback<B: Suite>(State(app): State<App>) -> Reply {
    insert::<B>(&app).await?;
    current_session::<B::Db>("main").await?.rollback().await?;
    insert::<B>(&app).await?;
    let session = current_session::<B::Db>("main").await?;
    session.rollback().await?;
    Ok(StatusCode::OK)
}

/// `early_connection_close.py`: an atomic block, then the connection goes back to the pool for
/// the long work that follows; the next row gets a new connection and transaction. Answers
/// with the connections the bind had in use during the long work.
async fn early_connection_close<B: Suite>(
    State(app): State<App>,
) -> Result<(StatusCode, String), RouteError> {
    dbscope::atomic::<B::Db>("main")
        .run(insert::<B>(&app))
        .await?;
    current_session::<B::Db>("main").await?.disconnect().await?;
    // ... the long work unrelated to the database ...
    let in_use = app.manager.bind::<B::Db>("main")?.status().in_use;
    insert::<B>(&app).await?;
    Ok((StatusCode::OK, format!("in_use={in_use}")))
}

/// `councurrent_queries.py`: the request's session alongside sessions of their own, run
/// concurrently; one of them fails and rolls back alone; every outcome is awaited and none
/// fails the request (the seed's `gather(..., return_exceptions=True)`).
///
/// In the seed's `gather`, only `_insert()` uses the request's session; each `run_in_new_ctx`
/// child has a context, so a session, of its own (the seed never shares one session between
/// concurrent children: SQLAlchemy's `AsyncSession` is not for concurrent tasks). The port keeps
/// that shape: one child on the request's scope, the others in new scopes (`new_scope`) or on
/// sessions outside any scope. dbscope's children may share the request's session too (see
/// [`shared_session_helpers`]).
async fn concurrent_queries<B: Suite>(State(app): State<App>) -> Reply {
    let scope = Scope::current()?;
    let app = &app;
    // `_insert()`: the request's session, committed by the layer.
    let on_request_session = insert::<B>(app);
    // `run_in_new_ctx(_insert)`: a scope of its own, committed by its own outcome.
    let new_scope = scope.new_scope().run(insert::<B>(app));
    // `run_in_new_ctx(_insert_manual, ...)`: a scope of its own, committed and closed by hand.
    let new_scope_by_hand = scope.new_scope().run(async {
        let mut session = current_session::<B::Db>("main").await?;
        insert_on(&mut session, app).await?;
        session.commit().await?;
        session.disconnect().await?;
        Ok::<_, RouteError>(())
    });
    // `_insert_non_ctx()`: a session outside any scope, in a transaction of its own.
    let outside_atomic = async {
        let mut session = app.manager.session::<B::Db>("main")?;
        session.begin().await?;
        insert_on(&mut session, app).await?;
        session.commit().await?;
        session.close().await?;
        Ok::<_, RouteError>(())
    };
    // `_insert_non_ctx_manual()`: a session outside any scope, committed by hand.
    let outside_by_hand = async {
        let mut session = app.manager.session::<B::Db>("main")?;
        insert_on(&mut session, app).await?;
        session.commit().await?;
        session.close().await?;
        Ok::<_, RouteError>(())
    };
    // `run_in_new_ctx(_insert_with_exception)`: a scope of its own, rolled back by its error.
    let new_scope_failing = scope.new_scope().run(async {
        insert::<B>(app).await?;
        Err::<(), _>(RouteError::Raised)
    });
    let outcomes = if app.one_writer {
        // SQLite has one writer per file: once the request's session has written, it holds the
        // write lock until the request ends, so the others' writes would wait for it and the
        // request for them, until `busy_timeout`. There the request's own row comes last.
        let (b, c, d, e, f) = tokio::join!(
            new_scope,
            new_scope_by_hand,
            outside_atomic,
            outside_by_hand,
            new_scope_failing
        );
        (on_request_session.await, b, c, d, e, f)
    } else {
        tokio::join!(
            on_request_session,
            new_scope,
            new_scope_by_hand,
            outside_atomic,
            outside_by_hand,
            new_scope_failing
        )
    };
    // The seed swallows every outcome; the port checks them, so that a failure shows here.
    let (a, b, c, d, e, f) = outcomes;
    a?;
    b?;
    c?;
    d?;
    e?;
    match f {
        Err(RouteError::Raised) => Ok(StatusCode::OK),
        other => Err(RouteError::Unexpected(format!("{other:?}"))),
    }
}

/// No seed route: two `join!` children writing on the request's one session, taking turns on
/// it statement by statement. The seed keeps concurrent children on sessions of
/// their own.
async fn shared_session_helpers<B: Suite>(State(app): State<App>) -> Reply {
    let (a, b) = tokio::join!(insert::<B>(&app), insert::<B>(&app));
    a?;
    b?;
    Ok(StatusCode::OK)
}

// ----- each atomic policy alone -----

fn policy(name: &str) -> IfOpen {
    match name {
        "commit" => IfOpen::Commit,
        "rollback" => IfOpen::Rollback,
        "append" => IfOpen::Join,
        "raise" => IfOpen::Fail,
        "savepoint" => IfOpen::Savepoint,
        "leave_open" => IfOpen::LeaveOpen,
        other => panic!("no policy {other}"),
    }
}

/// A row opens the request's transaction; an atomic block under `policy` writes a row; the
/// route answers 500, which rolls back whatever the block left to the request.
async fn atomic_then_500<B: Suite>(State(app): State<App>, Path(name): Path<String>) -> Reply {
    insert::<B>(&app).await?;
    atomic::<B>(policy(&name)).run(insert::<B>(&app)).await?;
    Ok(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A row opens the request's transaction; an atomic block under `policy` writes a row and
/// fails; the route swallows the error and answers 200, which commits what is left.
async fn atomic_error_swallowed<B: Suite>(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Reply {
    insert::<B>(&app).await?;
    let failed = atomic::<B>(policy(&name))
        .run(async {
            insert::<B>(&app).await?;
            Err::<(), _>(RouteError::Raised)
        })
        .await;
    match (failed, name.as_str()) {
        (Err(RouteError::Raised), _) => Ok(StatusCode::OK),
        (Err(RouteError::Db(e)), "raise") if e.kind() == dbscope::ErrorKind::TransactionOpen => {
            Ok(StatusCode::OK)
        }
        (other, _) => Err(RouteError::Unexpected(format!("{other:?}"))),
    }
}

// ----- the server -----

fn router<B: Suite>(app: App, manager: &BindManager) -> Router {
    Router::new()
        .route("/simple_usage", post(simple_usage::<B>))
        .route(
            "/auto_rollback_by_exception",
            post(auto_rollback_by_exception::<B>),
        )
        .route(
            "/auto_rollback_by_status_code",
            post(auto_rollback_by_status_code::<B>),
        )
        .route("/atomic_base_example", post(atomic_base_example::<B>))
        .route("/atomic_usage_2", post(atomic_usage_2::<B>))
        .route(
            "/atomic_and_previous_transaction",
            post(atomic_and_previous_transaction::<B>),
        )
        .route("/early_commit", post(early_commit::<B>))
        .route("/early_rollback", post(early_rollback::<B>))
        .route("/early_connection_close", post(early_connection_close::<B>))
        .route("/concurrent_queries", post(concurrent_queries::<B>))
        .route("/shared_session_helpers", post(shared_session_helpers::<B>))
        .route("/atomic/{policy}/then_500", post(atomic_then_500::<B>))
        .route(
            "/atomic/{policy}/error_swallowed",
            post(atomic_error_swallowed::<B>),
        )
        .layer(ScopeLayer::new(manager))
        .with_state(app)
}

struct Server {
    base: String,
    client: reqwest::Client,
    db: TestDb,
    manager: BindManager,
    task: tokio::task::JoinHandle<()>,
}

async fn create_table<B: Suite>(manager: &BindManager, db: &TestDb) {
    let mut setup = manager.session::<B::Db>("main").unwrap();
    let ddl = format!(
        "CREATE TABLE {} (id BIGINT PRIMARY KEY, v VARCHAR(50))",
        db.table
    );
    sqlx::query(sql(ddl)).execute(&mut setup).await.unwrap();
    setup.commit().await.unwrap();
    setup.close().await.unwrap();
}

async fn serve<B: Suite>() -> Server {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let app = App {
        table: db.table.as_str().into(),
        manager: manager.clone(),
        next_id: Arc::new(AtomicI64::new(1)),
        one_writer: B::KIND == Kind::SqliteFile,
    };
    let router = router::<B>(app, &manager);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    Server {
        base,
        client,
        db,
        manager,
        task,
    }
}

impl Server {
    async fn post(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn committed<B: Suite>(&self) -> i64 {
        committed::<B>(&self.manager, &self.db.table).await
    }

    /// Posts `path`, then asserts the status and the rows committed in all.
    async fn expect<B: Suite>(&self, path: &str, status: u16, rows: i64) -> String {
        let (got, body) = self.post(path).await;
        assert_eq!(got, status, "{path} answered {got}: {body}");
        assert_eq!(self.committed::<B>().await, rows, "rows after {path}");
        body
    }

    async fn finish<B: Suite>(self) {
        let bind = self.manager.bind::<B::Db>("main").unwrap();
        eventually("every connection back in the pool", || {
            let status = bind.status();
            async move { status.in_use == 0 && status.waiting == 0 }
        })
        .await;
        if self.db.open_transactions().await.is_some() {
            eventually("no transaction left open on the server", || async {
                self.db.open_transactions().await == Some(0)
            })
            .await;
        }
        assert_eq!(self.manager.status()[0].discarded, 0, "no connection lost");
        self.task.abort();
        self.manager.close(Duration::from_secs(5)).await.unwrap();
        self.db.finish().await;
    }
}

/// One route on a fresh server: the seed's status and committed rows.
async fn route<B: Suite>(path: &str, status: u16, rows: i64) -> String {
    let server = serve::<B>().await;
    let body = server.expect::<B>(path, status, rows).await;
    server.finish::<B>().await;
    body
}

// ----- the tests: the seed's routes -----

async fn simple_usage_commits<B: Suite>() {
    route::<B>("/simple_usage", 200, 1).await;
}

async fn an_error_rolls_back<B: Suite>() {
    let body = route::<B>("/auto_rollback_by_exception", 500, 0).await;
    assert_eq!(body, "Raised");
}

async fn a_500_status_rolls_back<B: Suite>() {
    route::<B>("/auto_rollback_by_status_code", 500, 0).await;
}

async fn atomic_base_example_commits_both<B: Suite>() {
    route::<B>("/atomic_base_example", 200, 2).await;
}

async fn atomic_after_a_previous_row<B: Suite>() {
    route::<B>("/atomic_usage_2", 200, 2).await;
}

async fn atomic_and_previous_transaction_keeps_five<B: Suite>() {
    let body = route::<B>("/atomic_and_previous_transaction", 500, 5).await;
    assert!(body.contains("TransactionOpen"), "{body}");
}

async fn early_commit_keeps_four<B: Suite>() {
    route::<B>("/early_commit", 200, 4).await;
}

async fn early_rollback_keeps_none<B: Suite>() {
    route::<B>("/early_rollback", 200, 0).await;
}

async fn early_connection_close_keeps_two<B: Suite>() {
    let body = route::<B>("/early_connection_close", 200, 2).await;
    assert_eq!(body, "in_use=0", "the connection was back in the pool");
}

async fn concurrent_queries_keep_five<B: Suite>() {
    route::<B>("/concurrent_queries", 200, 5).await;
}

async fn shared_session_helpers_keep_two<B: Suite>() {
    route::<B>("/shared_session_helpers", 200, 2).await;
}

// ----- the tests: each policy alone -----

/// `policy`'s two routes on one server: rows committed by "a row, a block, 500", then by
/// "a row, a failing block swallowed, 200".
async fn policy_case<B: Suite>(policy: &str, then_500: i64, swallowed: i64) {
    let server = serve::<B>().await;
    server
        .expect::<B>(&format!("/atomic/{policy}/then_500"), 500, then_500)
        .await;
    server
        .expect::<B>(
            &format!("/atomic/{policy}/error_swallowed"),
            200,
            then_500 + swallowed,
        )
        .await;
    server.finish::<B>().await;
}

async fn policy_commit<B: Suite>() {
    policy_case::<B>("commit", 2, 1).await;
}

async fn policy_rollback<B: Suite>() {
    policy_case::<B>("rollback", 1, 0).await;
}

async fn policy_append<B: Suite>() {
    policy_case::<B>("append", 2, 0).await;
}

async fn policy_raise<B: Suite>() {
    policy_case::<B>("raise", 0, 1).await;
}

async fn policy_savepoint<B: Suite>() {
    policy_case::<B>("savepoint", 0, 1).await;
}

async fn policy_leave_open<B: Suite>() {
    policy_case::<B>("leave_open", 0, 2).await;
}

// ----- the tests: siblings while an atomic block is open -----

async fn setup<B: Suite>() -> (TestDb, BindManager, App) {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    create_table::<B>(&manager, &db).await;
    let app = App {
        table: db.table.as_str().into(),
        manager: manager.clone(),
        next_id: Arc::new(AtomicI64::new(1)),
        one_writer: B::KIND == Kind::SqliteFile,
    };
    (db, manager, app)
}

/// A `join!` sibling's statement on the scope's session, run while an atomic block (a
/// savepoint) is open, is part of the block: rolled back with it on `Err`, kept with it on
/// `Ok`.
async fn a_siblings_statement_is_part_of_the_open_block<B: Suite>() {
    let (db, manager, app) = setup::<B>().await;
    // Round 1: the block fails, taking the sibling's row with it. Round 2: both are kept.
    for (block_fails, kept) in [(true, 1), (false, 3)] {
        let app = &app;
        let table = &*app.table;
        let before = committed::<B>(&manager, table).await;
        let outcome = dbscope::scope(&manager, async {
            insert::<B>(app).await?; // the scope's transaction
            let (opened, block_open) = tokio::sync::oneshot::channel();
            let (wrote, sibling_wrote) = tokio::sync::oneshot::channel();
            let block = dbscope::atomic::<B::Db>("main").run(async {
                insert::<B>(app).await?;
                opened.send(()).unwrap();
                sibling_wrote.await.unwrap();
                // The sibling's row is in the block's savepoint, on the one session.
                assert_eq!(visible::<B>(table).await?, before + 3);
                if block_fails {
                    Err(RouteError::Raised)
                } else {
                    Ok(())
                }
            });
            let sibling = async {
                block_open.await.unwrap();
                insert::<B>(app).await?;
                wrote.send(()).unwrap();
                Ok::<_, RouteError>(())
            };
            let (block, sibling) = tokio::join!(block, sibling);
            sibling?;
            assert_eq!(block.is_err(), block_fails, "{block:?}");
            assert_eq!(visible::<B>(table).await?, before + kept, "after the block");
            Ok::<_, RouteError>(())
        })
        .await;
        outcome.unwrap();
        assert_eq!(
            committed::<B>(&manager, table).await,
            before + kept,
            "block fails: {block_fails}"
        );
    }
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// Concurrent work in `Scope::new_scope()` has a session of its own: it commits or fails on its
/// own outcome, whatever the atomic block open beside it does.
async fn new_scope_isolates_concurrent_work<B: Suite>() {
    let (db, manager, app) = setup::<B>().await;
    // Round 1: the block fails, the new scope's work lands. Round 2: the other way round.
    for block_fails in [true, false] {
        let app = &app;
        let table = &*app.table;
        let before = committed::<B>(&manager, table).await;
        let outcome = dbscope::scope(&manager, async {
            let (opened, block_open) = tokio::sync::oneshot::channel();
            let (ended, sibling_ended) = tokio::sync::oneshot::channel();
            let block = dbscope::atomic::<B::Db>("main").run(async {
                opened.send(()).unwrap();
                sibling_ended.await.unwrap();
                // Written after the sibling's scope ended: SQLite's one writer at a time would
                // otherwise make the sibling wait for this block, and the block for it.
                insert::<B>(app).await?;
                if block_fails {
                    Err(RouteError::Raised)
                } else {
                    Ok(())
                }
            });
            let sibling = async {
                block_open.await.unwrap();
                let own = Scope::current()?.new_scope().run(async {
                    insert::<B>(app).await?;
                    if block_fails {
                        Ok(())
                    } else {
                        Err(RouteError::Raised)
                    }
                });
                let own = own.await;
                assert_eq!(own.is_err(), !block_fails, "{own:?}");
                // Ended already, while the block is still open.
                let landed = i64::from(block_fails);
                assert_eq!(committed::<B>(&app.manager, table).await, before + landed);
                ended.send(()).unwrap();
                Ok::<_, RouteError>(())
            };
            let (block, sibling) = tokio::join!(block, sibling);
            sibling?;
            assert_eq!(block.is_err(), block_fails, "{block:?}");
            Ok::<_, RouteError>(())
        })
        .await;
        outcome.unwrap();
        assert_eq!(
            committed::<B>(&manager, table).await,
            before + 1,
            "one row of the two, block fails: {block_fails}"
        );
    }
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

macro_rules! suite {
    ($module:ident, $suite:ty) => {
        common::async_tests!($module, $suite:
            simple_usage_commits,
            an_error_rolls_back,
            a_500_status_rolls_back,
            atomic_base_example_commits_both,
            atomic_after_a_previous_row,
            atomic_and_previous_transaction_keeps_five,
            early_commit_keeps_four,
            early_rollback_keeps_none,
            early_connection_close_keeps_two,
            concurrent_queries_keep_five,
            shared_session_helpers_keep_two,
            policy_commit,
            policy_rollback,
            policy_append,
            policy_raise,
            policy_savepoint,
            policy_leave_open,
            a_siblings_statement_is_part_of_the_open_block,
            new_scope_isolates_concurrent_work,
        );
    };
}

suite!(sqlite_file, common::SqliteFile);
suite!(postgres, common::Pg);
suite!(mysql, common::MySql);
