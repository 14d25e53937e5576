//! The actix-web middleware and extractor, end to end: a real `HttpServer` on 127.0.0.1, a real
//! HTTP client, and the database's own view of what committed, on SQLite (a file), PostgreSQL
//! and MariaDB.
//!
//! Every claim the client side makes (committed, rolled back, nothing left open) is read back
//! from a fresh session or from the server's census (`common/mod.rs`).
//!
//! The servers run with `h1_allow_half_closed(false)`, as the module docs advise, except in the
//! two tests that pin what actix-web does by default with a client that goes away.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServerHandle, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{App, FromRequest, HttpRequest, HttpResponse, HttpServer, web};
use common::{Kind, TestDb, eventually, sql};
use dbscope::actix::{DbError, DbSession, ScopeMiddleware};
use dbscope::{BindConfig, BindManager};
use futures_util::future::LocalBoxFuture;

/// What a route without the middleware answers, word for word, as axum does
/// (`tests/http_axum.rs`): the no-scope error's message and the likely fix.
async fn no_scope_body() -> String {
    let error = dbscope::current_session::<sqlx::Sqlite>("main").await;
    let error = error.unwrap_err();
    format!("{error}; did you add dbscope's ScopeLayer or ScopeMiddleware to this route?")
}

/// A running actix-web server on an ephemeral port.
struct TestServer {
    base: String,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// How the server treats a client that closes its side of the connection mid-request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HalfClose {
    /// actix-web's default: the request goes on.
    Allowed,
    /// `h1_allow_half_closed(false)`: the connection and the request's future are dropped.
    Refused,
}

impl TestServer {
    fn start<F, T, B>(half_close: HalfClose, factory: F) -> Self
    where
        F: Fn() -> App<T> + Send + Clone + 'static,
        T: ServiceFactory<
                ServiceRequest,
                Config = (),
                Response = ServiceResponse<B>,
                Error = actix_web::Error,
                InitError = (),
            > + 'static,
        B: MessageBody + 'static,
    {
        capture_logs();
        let server = HttpServer::new(factory)
            .workers(2)
            .disable_signals()
            .shutdown_timeout(5)
            .h1_allow_half_closed(half_close == HalfClose::Allowed)
            .bind(("127.0.0.1", 0))
            .expect("bind 127.0.0.1:0");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        Self {
            base: format!("http://{addr}"),
            handle,
            task: tokio::spawn(server),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(self) {
        self.handle.stop(true).await;
        self.task.await.expect("server task").expect("server ran");
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

async fn post(server: &TestServer, path: &str) -> reqwest::Response {
    client()
        .post(server.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Everything dbscope logs through `tracing` in this process (the server's workers included).
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .init();
    });
}

/// Whether a log line contains all of `parts`.
fn logged(parts: &[&str]) -> bool {
    let logs = LOGS.lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .any(|line| parts.iter().all(|p| line.contains(p)))
}

/// An error and all its sources, for assertions on what a client saw.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Sets its flag when dropped before `disarm`: proof that a future was dropped mid-way.
struct SetOnDrop<'a>(Option<&'a AtomicBool>);

impl SetOnDrop<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0 {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

macro_rules! actix_suite {
    ($module:ident, $db:ty, $kind:expr $(, $extra:ident)*) => {
        mod $module {
            use super::*;

            type Db = $db;
            const KIND: Kind = $kind;

            dbscope::bind_key!(Main: $db = "main");
            dbscope::bind_key!(Audit: $db = "audit");

            /// What the handlers share with the test.
            struct Ctx {
                table: String,
                audit_table: Option<String>,
                manager: BindManager,
                /// Handlers that wait here go on when the test adds a permit.
                gate: tokio::sync::Semaphore,
                reached: AtomicBool,
                cancelled: AtomicBool,
                finished: AtomicBool,
                handler_runs: AtomicUsize,
            }

            fn ctx(manager: &BindManager, db: &TestDb, audit: Option<&TestDb>) -> web::Data<Ctx> {
                web::Data::new(Ctx {
                    table: db.table.clone(),
                    audit_table: audit.map(|a| a.table.clone()),
                    manager: manager.clone(),
                    gate: tokio::sync::Semaphore::new(0),
                    reached: AtomicBool::new(false),
                    cancelled: AtomicBool::new(false),
                    finished: AtomicBool::new(false),
                    handler_runs: AtomicUsize::new(0),
                })
            }

            async fn create_table(manager: &BindManager, bind: &str, table: &str) {
                let mut session = manager.session::<Db>(bind).unwrap();
                let ddl = format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, v VARCHAR(50))");
                sqlx::query(sql(ddl)).execute(&mut session).await.expect("create table");
                session.commit().await.expect("commit create table");
                session.close().await.unwrap();
            }

            async fn insert(
                session: &mut dbscope::ScopedSession<Db>,
                table: &str,
                id: i64,
            ) -> sqlx::Result<()> {
                let stmt = format!("INSERT INTO {table} (id, v) VALUES ({id}, 'row {id}')");
                sqlx::query(sql(stmt)).execute(session).await.map(|_| ())
            }

            async fn count<'c>(session: impl sqlx::Executor<'c, Database = Db>, table: &str) -> i64 {
                let stmt = format!("SELECT COUNT(*) FROM {table}");
                sqlx::query_scalar(sql(stmt)).fetch_one(session).await.expect("count rows")
            }

            /// The ids a fresh session of `bind` sees in `table`: what committed.
            async fn committed(manager: &BindManager, bind: &str, table: &str) -> Vec<i64> {
                let mut session = manager.session::<Db>(bind).unwrap();
                let stmt = format!("SELECT id FROM {table} ORDER BY id");
                let ids = sqlx::query_scalar(sql(stmt)).fetch_all(&mut session).await.expect("ids");
                session.close().await.unwrap();
                ids
            }

            /// What committed to the items table of `main`.
            async fn rows(manager: &BindManager, db: &TestDb) -> Vec<i64> {
                committed(manager, "main", &db.table).await
            }

            async fn reached(ctx: &Ctx) {
                eventually("the handler reached its wait", || async {
                    ctx.reached.load(Ordering::SeqCst)
                })
                .await;
            }

            async fn assert_no_leak(manager: &BindManager, db: &TestDb) {
                for status in manager.status() {
                    let bind = manager.bind::<Db>(&status.name).unwrap();
                    eventually("every connection back in the pool", || {
                        let status = bind.status();
                        async move { status.in_use == 0 && status.waiting == 0 }
                    })
                    .await;
                }
                if db.open_transactions().await.is_some() {
                    eventually("no transaction left open on the server", || async {
                        db.open_transactions().await == Some(0)
                    })
                    .await;
                }
            }

            async fn finish(server: TestServer, manager: BindManager, db: TestDb) {
                server.stop().await;
                assert_no_leak(&manager, &db).await;
                manager.close(Duration::from_secs(5)).await.unwrap();
                db.finish().await;
            }

            fn status(code: u16) -> StatusCode {
                StatusCode::from_u16(code).unwrap()
            }

            // ---- handlers ----

            /// Writes row `id`, answers `status`.
            async fn write(
                ctx: web::Data<Ctx>,
                mut db: DbSession<Main>,
                path: web::Path<(i64, u16)>,
            ) -> Result<HttpResponse, DbError> {
                let (id, code) = path.into_inner();
                ctx.handler_runs.fetch_add(1, Ordering::SeqCst);
                insert(&mut db, &ctx.table, id).await?;
                Ok(HttpResponse::build(status(code)).finish())
            }

            /// Writes, then fails with a dbscope error through `?` (no row found: an error the
            /// database does not see, so the transaction itself stays healthy).
            async fn fail_after_write(
                ctx: web::Data<Ctx>,
                mut db: DbSession<Main>,
                id: web::Path<i64>,
            ) -> Result<HttpResponse, DbError> {
                insert(&mut db, &ctx.table, *id).await?;
                let stmt = format!("SELECT id FROM {} WHERE id = -1", ctx.table);
                let _: i64 = sqlx::query_scalar(sql(stmt)).fetch_one(&mut *db).await?;
                Ok(HttpResponse::Ok().finish())
            }

            /// Writes, then fails with an actix error of status 409.
            async fn conflict_after_write(
                ctx: web::Data<Ctx>,
                mut db: DbSession<Main>,
                id: web::Path<i64>,
            ) -> Result<HttpResponse, actix_web::Error> {
                insert(&mut db, &ctx.table, *id).await.map_err(DbError::from)?;
                Err(actix_web::error::ErrorConflict("taken"))
            }

            async fn panics(
                ctx: web::Data<Ctx>,
                mut db: DbSession<Main>,
                id: web::Path<i64>,
            ) -> HttpResponse {
                insert(&mut db, &ctx.table, *id).await.unwrap();
                panic!("the test handler panics after a write");
            }

            /// Writes, then sleeps 3 s; records whether its future was dropped mid-way.
            async fn slow(
                ctx: web::Data<Ctx>,
                mut db: DbSession<Main>,
                id: web::Path<i64>,
            ) -> Result<HttpResponse, DbError> {
                insert(&mut db, &ctx.table, *id).await?;
                let guard = SetOnDrop(Some(&ctx.cancelled));
                ctx.reached.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3)).await;
                guard.disarm();
                ctx.finished.store(true, Ordering::SeqCst);
                Ok(HttpResponse::Ok().finish())
            }

            /// Writes row `id`, waits for the test, writes `id + 1`, answers 500.
            async fn probe(
                ctx: web::Data<Ctx>,
                mut db: DbSession<Main>,
                id: web::Path<i64>,
            ) -> Result<HttpResponse, DbError> {
                insert(&mut db, &ctx.table, *id).await?;
                ctx.reached.store(true, Ordering::SeqCst);
                ctx.gate.acquire().await.expect("gate open").forget();
                insert(&mut db, &ctx.table, *id + 1).await?;
                Ok(HttpResponse::InternalServerError().finish())
            }

            /// An extractor that writes row `id + 1000` through the request's session and gives
            /// the session back: extractors and handler share one session.
            struct Audited;

            impl FromRequest for Audited {
                type Error = actix_web::Error;
                type Future = LocalBoxFuture<'static, Result<Self, actix_web::Error>>;

                fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
                    let session = DbSession::<Main>::from_request(req, payload);
                    let ctx = req.app_data::<web::Data<Ctx>>().expect("ctx").clone();
                    let id: i64 = req.match_info().get("id").expect("id").parse().expect("number");
                    Box::pin(async move {
                        let mut db = session.await?;
                        insert(&mut db, &ctx.table, id + 1000).await.map_err(DbError::from)?;
                        Ok(Audited)
                    })
                }
            }

            /// Helper code deep in a handler, asking the scope for its session.
            async fn helper_writes(table: &str, id: i64) -> Result<(), DbError> {
                let mut session = dbscope::current_session_for::<Main>().await?;
                insert(&mut session, table, id).await?;
                Ok(())
            }

            /// The server's id of the connection under the scope's session, or 0 on SQLite.
            async fn connection_id(
                session: &mut dbscope::ScopedSession<Db>,
            ) -> Result<i64, DbError> {
                let query = match KIND {
                    Kind::Postgres => "SELECT CAST(pg_backend_pid() AS BIGINT)",
                    Kind::MySql => "SELECT CAST(CONNECTION_ID() AS SIGNED)",
                    Kind::SqliteFile | Kind::SqliteMemory => return Ok(0),
                };
                Ok(sqlx::query_scalar(query).fetch_one(session).await?)
            }

            /// A repository, a service and a handler's helper: each asks the scope for the
            /// session and writes, while the layer above still has its handle.
            async fn layer(table: &str, id: i64, depth: u32) -> Result<Vec<i64>, DbError> {
                let mut session = dbscope::current_session_for::<Main>().await?;
                insert(&mut session, table, id).await?;
                let mut pids = vec![connection_id(&mut session).await?];
                if depth > 1 {
                    pids.extend(Box::pin(layer(table, id + 1, depth - 1)).await?);
                }
                Ok(pids)
            }

            /// The extractor's handle, three layers of helpers under it, then two siblings of a
            /// `join!` three layers deep each: one session, one connection, every row committed.
            async fn layered(
                ctx: web::Data<Ctx>,
                mut db: DbSession<Main>,
                id: web::Path<i64>,
            ) -> Result<HttpResponse, DbError> {
                let id = id.into_inner();
                insert(&mut db, &ctx.table, id).await?;
                let mut pids = vec![connection_id(&mut db).await?];
                pids.extend(layer(&ctx.table, id + 1, 3).await?);
                let (a, b) =
                    tokio::join!(layer(&ctx.table, id + 10, 3), layer(&ctx.table, id + 20, 3));
                pids.extend(a?);
                pids.extend(b?);
                pids.dedup();
                Ok(HttpResponse::Ok().body(format!("{}", pids.len())))
            }

            async fn shared(
                _audited: Audited,
                ctx: web::Data<Ctx>,
                mut db: DbSession<Main>,
                path: web::Path<(i64, u16)>,
            ) -> Result<HttpResponse, DbError> {
                let (id, code) = path.into_inner();
                // The extractor's row is not committed: only its own transaction sees it.
                let seen = count(&mut db, &ctx.table).await;
                insert(&mut db, &ctx.table, id).await?;
                drop(db);
                helper_writes(&ctx.table, id + 2000).await?;
                Ok(HttpResponse::build(status(code)).body(format!("seen={seen}")))
            }

            /// Writes, then answers a body streamed after the response head: the body reads what
            /// committed through a session of its own, and looks for the request's scope.
            async fn streamed(
                ctx: web::Data<Ctx>,
                mut db: DbSession<Main>,
                id: web::Path<i64>,
            ) -> Result<HttpResponse, DbError> {
                insert(&mut db, &ctx.table, *id).await?;
                drop(db);
                let ctx = ctx.into_inner();
                let body = futures_util::stream::once(async move {
                    let scope = match dbscope::current_session_for::<Main>().await {
                        Err(e) if e.is_no_scope() => "none",
                        Err(_) => "error",
                        Ok(_) => "open",
                    };
                    let mut session = ctx.manager.session::<Db>("main")?;
                    let rows = count(&mut session, &ctx.table).await;
                    session.close().await?;
                    Ok::<_, DbError>(web::Bytes::from(format!("rows={rows};scope={scope}")))
                });
                Ok(HttpResponse::Ok().streaming(body))
            }

            /// Writes through both binds, answers `status`.
            async fn both(
                ctx: web::Data<Ctx>,
                mut main: DbSession<Main>,
                mut audit: DbSession<Audit>,
                path: web::Path<(i64, u16)>,
            ) -> Result<HttpResponse, DbError> {
                let (id, code) = path.into_inner();
                insert(&mut main, &ctx.table, id).await?;
                insert(&mut audit, ctx.audit_table.as_deref().expect("audit table"), id).await?;
                Ok(HttpResponse::build(status(code)).finish())
            }

            async fn audit_only(ctx: web::Data<Ctx>, _audit: DbSession<Audit>) -> HttpResponse {
                ctx.handler_runs.fetch_add(1, Ordering::SeqCst);
                HttpResponse::Ok().finish()
            }

            fn route_scope(builder: dbscope::ScopeBuilder) -> ScopeMiddleware {
                ScopeMiddleware::with_scope(builder).expect("route scope is valid")
            }

            fn routes(cfg: &mut web::ServiceConfig, manager: &BindManager) {
                cfg.route("/write/{id}/{status}", web::post().to(write))
                    .route("/fail-after-write/{id}", web::post().to(fail_after_write))
                    .route("/conflict-after-write/{id}", web::post().to(conflict_after_write))
                    .route("/panic/{id}", web::post().to(panics))
                    .route("/slow/{id}", web::post().to(slow))
                    .route("/shared/{id}/{status}", web::post().to(shared))
                    .route("/streamed/{id}", web::post().to(streamed))
                    .route("/layered/{id}", web::post().to(layered))
                    .route("/probe/{id}", web::post().to(probe))
                    .service(
                        web::resource("/autocommit/probe/{id}")
                            .wrap(route_scope(manager.scope().autocommit()))
                            .route(web::post().to(probe)),
                    )
                    .service(
                        web::resource("/vetoed/{id}/{status}")
                            .wrap(route_scope(manager.scope().before_commit(|| async {
                                Err::<(), dbscope::BoxError>("the test's hook vetoes".into())
                            })))
                            .route(web::post().to(write)),
                    )
                    .service(
                        web::resource("/route-statuses/{id}/{status}")
                            .wrap(
                                ScopeMiddleware::new(manager)
                                    .commit_on(StatusCode::IM_A_TEAPOT)
                                    .rollback_on(StatusCode::CONFLICT),
                            )
                            .route(web::post().to(write)),
                    )
                    .service(
                        web::resource("/declares-main/{id}/{status}")
                            .wrap(route_scope(manager.scope().bind("main")))
                            .route(web::post().to(write)),
                    );
                if manager.names().any(|name| name == "audit") {
                    cfg.service(
                        web::resource("/both/{id}/{status}")
                            .wrap(route_scope(manager.scope().bind("audit")))
                            .route(web::post().to(both)),
                    )
                    .route("/audit-only", web::post().to(audit_only));
                }
            }

            fn serve_with(
                half_close: HalfClose,
                manager: &BindManager,
                ctx: &web::Data<Ctx>,
                outer: ScopeMiddleware,
            ) -> TestServer {
                let (manager, ctx) = (manager.clone(), ctx.clone());
                TestServer::start(half_close, move || {
                    let manager = manager.clone();
                    App::new()
                        .app_data(ctx.clone())
                        .configure(move |cfg| routes(cfg, &manager))
                        .wrap(outer.clone())
                })
            }

            fn serve(
                manager: &BindManager,
                ctx: &web::Data<Ctx>,
                outer: ScopeMiddleware,
            ) -> TestServer {
                serve_with(HalfClose::Refused, manager, ctx, outer)
            }

            /// A database with the items table, its manager, and the handlers' context.
            async fn setup() -> (TestDb, BindManager, web::Data<Ctx>) {
                let db = TestDb::new(KIND).await;
                let manager = db.manager(|c| c);
                create_table(&manager, "main", &db.table).await;
                let ctx = ctx(&manager, &db, None);
                (db, manager, ctx)
            }

            // ---- tests ----

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn commit_on_2xx_completes_before_the_response() {
                let (db, manager, ctx) = setup().await;
                // A slow commit: were the response sent first, the client would get there
                // before the row does.
                let outer = route_scope(manager.scope().before_commit(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(())
                }));
                let server = serve(&manager, &ctx, outer);
                let response = post(&server, "/write/1/201").await;
                assert_eq!(response.status(), 201);
                assert_eq!(rows(&manager, &db).await, [1], "committed when the 201 arrived");
                finish(server, manager, db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_on_4xx_and_5xx() {
                let (db, manager, ctx) = setup().await;
                let server = serve(&manager, &ctx, ScopeMiddleware::new(&manager));
                for (id, code) in [(1, 400), (2, 404), (3, 422), (4, 500), (5, 503)] {
                    let response = post(&server, &format!("/write/{id}/{code}")).await;
                    assert_eq!(response.status().as_u16(), code);
                }
                assert_eq!(post(&server, "/write/6/204").await.status(), 204);
                assert_eq!(rows(&manager, &db).await, [6], "only the 204 committed");
                assert_eq!(ctx.handler_runs.load(Ordering::SeqCst), 6);
                finish(server, manager, db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_on_handler_error() {
                let (db, manager, ctx) = setup().await;
                let server = serve(&manager, &ctx, ScopeMiddleware::new(&manager));
                let response = post(&server, "/fail-after-write/1").await;
                assert_eq!(response.status(), 500);
                let body = response.text().await.unwrap();
                assert_eq!(body, "", "DbError never shows the error's text");
                assert!(logged(&["dbscope: request failed", "no rows returned"]));
                assert_eq!(post(&server, "/conflict-after-write/2").await.status(), 409);
                assert_eq!(rows(&manager, &db).await, Vec::<i64>::new());
                finish(server, manager, db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_on_panic_and_the_server_goes_on() {
                let (db, manager, ctx) = setup().await;
                let server = serve(&manager, &ctx, ScopeMiddleware::new(&manager));
                // actix-web catches no panic: the worker drops the connection, unanswered.
                let error = client().post(server.url("/panic/1")).send().await.unwrap_err();
                assert!(
                    error_chain(&error).contains("connection closed before message completed"),
                    "{error:?}"
                );
                assert_no_leak(&manager, &db).await;
                assert_eq!(rows(&manager, &db).await, Vec::<i64>::new());
                // Both workers serve on (connections go to them in turn), and the pool is sound.
                assert_eq!(post(&server, "/write/2/201").await.status(), 201);
                assert_eq!(post(&server, "/write/3/201").await.status(), 201);
                assert_eq!(rows(&manager, &db).await, [2, 3]);
                finish(server, manager, db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failing_commit_answers_500_when_a_hook_vetoes() {
                let (db, manager, ctx) = setup().await;
                let server = serve(&manager, &ctx, ScopeMiddleware::new(&manager));
                let response = post(&server, "/vetoed/1/201").await;
                let status = response.status();
                assert_eq!(status, 500, "a 201 whose commit failed must not reach the client");
                assert_eq!(response.text().await.unwrap(), "", "an empty 500, as axum answers");
                assert!(logged(&["the request's commit failed", "vetoed"]));
                assert_eq!(rows(&manager, &db).await, Vec::<i64>::new());
                assert_eq!(ctx.handler_runs.load(Ordering::SeqCst), 1);
                finish(server, manager, db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_on_client_disconnect_mid_handler() {
                let (db, manager, ctx) = setup().await;
                let server = serve(&manager, &ctx, ScopeMiddleware::new(&manager));
                let impatient = reqwest::Client::builder()
                    .timeout(Duration::from_millis(500))
                    .build()
                    .unwrap();
                let error = impatient.post(server.url("/slow/1")).send().await.unwrap_err();
                assert!(error.is_timeout(), "{error:?}");
                drop(impatient);
                eventually("actix drops the request's future", || async {
                    ctx.cancelled.load(Ordering::SeqCst)
                })
                .await;
                assert!(ctx.reached.load(Ordering::SeqCst) && !ctx.finished.load(Ordering::SeqCst));
                assert_no_leak(&manager, &db).await;
                assert_eq!(rows(&manager, &db).await, Vec::<i64>::new());
                finish(server, manager, db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn extractors_and_helper_code_share_the_request_session() {
                let (db, manager, ctx) = setup().await;
                let server = serve(&manager, &ctx, ScopeMiddleware::new(&manager));
                let response = post(&server, "/shared/1/200").await;
                assert_eq!(response.status(), 200);
                let body = response.text().await.unwrap();
                assert_eq!(body, "seen=1", "the handler saw the extractor's uncommitted row");
                assert_eq!(rows(&manager, &db).await, [1, 1001, 2001]);
                // One transaction: a 409 takes all three writes back.
                assert_eq!(post(&server, "/shared/5/409").await.status(), 409);
                assert_eq!(rows(&manager, &db).await, [1, 1001, 2001]);
                finish(server, manager, db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nested_helpers_asking_for_the_session_share_it_without_waiting() {
                let (db, manager, ctx) = setup().await;
                let server = serve(&manager, &ctx, ScopeMiddleware::new(&manager));
                let response =
                    tokio::time::timeout(Duration::from_secs(60), post(&server, "/layered/100"))
                        .await
                        .expect("the request answers instead of hanging");
                assert_eq!(response.status(), 200);
                assert_eq!(
                    response.text().await.unwrap(),
                    "1",
                    "one backend connection for every layer"
                );
                let expected: Vec<i64> = [100, 101, 102, 103, 110, 111, 112, 120, 121, 122].into();
                assert_eq!(rows(&manager, &db).await, expected);
                finish(server, manager, db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn streaming_body_runs_after_the_commit_outside_the_scope() {
                let (db, manager, ctx) = setup().await;
                let server = serve(&manager, &ctx, ScopeMiddleware::new(&manager));
                let response = post(&server, "/streamed/1").await;
                assert_eq!(response.status(), 200);
                assert_eq!(response.text().await.unwrap(), "rows=1;scope=none");
                finish(server, manager, db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn commit_on_and_rollback_on_override_the_status_rule() {
                let (db, manager, ctx) = setup().await;
                let outer = ScopeMiddleware::new(&manager)
                    .commit_on(StatusCode::CONFLICT)
                    .rollback_on(StatusCode::ACCEPTED);
                let server = serve(&manager, &ctx, outer);
                for (id, code) in [(1, 409), (2, 202), (3, 201), (4, 404)] {
                    let response = post(&server, &format!("/write/{id}/{code}")).await;
                    assert_eq!(response.status().as_u16(), code);
                }
                assert_eq!(rows(&manager, &db).await, [1, 3]);
                finish(server, manager, db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_route_middleware_adds_its_statuses_and_its_word_wins() {
                let (db, manager, ctx) = setup().await;
                let outer = ScopeMiddleware::new(&manager).commit_on(StatusCode::CONFLICT);
                let server = serve(&manager, &ctx, outer);
                // The route commits on 418 and rolls back on the 409 the app commits on.
                for (id, code) in [(1, 418), (2, 409), (3, 404), (4, 201)] {
                    let response = post(&server, &format!("/route-statuses/{id}/{code}")).await;
                    assert_eq!(response.status().as_u16(), code);
                }
                assert_eq!(rows(&manager, &db).await, [1, 4]);
                // Elsewhere, and on later requests, the app's word holds.
                assert_eq!(post(&server, "/write/5/409").await.status(), 409);
                assert_eq!(post(&server, "/write/6/418").await.status(), 418);
                assert_eq!(rows(&manager, &db).await, [1, 4, 5]);
                finish(server, manager, db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn autocommit_route_lands_each_write_at_once() {
                let (db, manager, ctx) = setup().await;
                let server = serve(&manager, &ctx, ScopeMiddleware::new(&manager));
                let request = tokio::spawn(client().post(server.url("/autocommit/probe/1")).send());
                reached(&ctx).await;
                // Mid-request: the write is already visible, and no transaction is open.
                assert_eq!(rows(&manager, &db).await, [1]);
                // (`eventually`: MariaDB's census can lag; the state holds while the handler waits.)
                if db.open_transactions().await.is_some() {
                    eventually("no transaction open during the autocommit request", || async {
                        db.open_transactions().await == Some(0)
                    })
                    .await;
                }
                ctx.gate.add_permits(1);
                let response = request.await.unwrap().unwrap();
                assert_eq!(response.status(), 500);
                let rows = rows(&manager, &db).await;
                assert_eq!(rows, [1, 2], "a 500 undoes no autocommit write");
                finish(server, manager, db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_route_holds_its_writes_until_the_outcome() {
                let (db, manager, ctx) = setup().await;
                let server = serve(&manager, &ctx, ScopeMiddleware::new(&manager));
                let request = tokio::spawn(client().post(server.url("/probe/1")).send());
                reached(&ctx).await;
                assert_eq!(rows(&manager, &db).await, Vec::<i64>::new());
                if db.open_transactions().await.is_some() {
                    eventually("the request's transaction open on the server", || async {
                        db.open_transactions().await == Some(1)
                    })
                    .await;
                }
                ctx.gate.add_permits(1);
                assert_eq!(request.await.unwrap().unwrap().status(), 500);
                assert_eq!(rows(&manager, &db).await, Vec::<i64>::new());
                finish(server, manager, db).await;
            }

            /// Two databases: `main` declared app-wide, `audit` by one route.
            async fn two_binds() -> (TestDb, TestDb, BindManager, web::Data<Ctx>) {
                let db = TestDb::new(KIND).await;
                let audit = TestDb::new(KIND).await;
                let manager = BindManager::builder()
                    .bind("main", db.config())
                    .bind("audit", audit.config())
                    .build()
                    .unwrap();
                create_table(&manager, "main", &db.table).await;
                create_table(&manager, "audit", &audit.table).await;
                let ctx = ctx(&manager, &db, Some(&audit));
                (db, audit, manager, ctx)
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn route_middleware_adds_its_bind_to_the_request_scope() {
                let (db, audit, manager, ctx) = two_binds().await;
                let server = serve(&manager, &ctx, route_scope(manager.scope().bind("main")));
                assert_eq!(post(&server, "/both/1/201").await.status(), 201);
                assert_eq!(post(&server, "/both/2/400").await.status(), 400);
                assert_eq!(rows(&manager, &db).await, [1]);
                assert_eq!(committed(&manager, "audit", &audit.table).await, [1]);
                // A route that does not declare `audit` cannot use it.
                assert_eq!(post(&server, "/audit-only").await.status(), 500);
                assert!(logged(&[
                    "cannot extract the request's session",
                    "bind `audit` is not declared"
                ]));
                assert_eq!(ctx.handler_runs.load(Ordering::SeqCst), 0);
                assert_no_leak(&manager, &audit).await;
                finish(server, manager, db).await;
                audit.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bind_declared_twice_for_a_request_answers_500_before_the_handler() {
                let (db, manager, ctx) = setup().await;
                // The app declares `main`, and so does the route's middleware.
                let server = serve(&manager, &ctx, route_scope(manager.scope().bind("main")));
                let response = post(&server, "/declares-main/1/201").await;
                assert_eq!(response.status(), 500);
                assert!(logged(&[
                    "a nested scope layer is misconfigured",
                    "bind `main` is declared twice"
                ]));
                assert_eq!(ctx.handler_runs.load(Ordering::SeqCst), 0, "the handler never ran");
                // Other routes are fine, and so is that route under an app scope that does not
                // declare `main`.
                assert_eq!(post(&server, "/write/2/201").await.status(), 201);
                server.stop().await;
                let server = serve(&manager, &ctx, ScopeMiddleware::new(&manager));
                assert_eq!(post(&server, "/declares-main/3/201").await.status(), 201);
                assert_eq!(rows(&manager, &db).await, [2, 3]);
                finish(server, manager, db).await;
            }

            $( $extra!(); )*
        }
    };
}

/// A real commit failure: a deferred foreign key is checked at COMMIT (PostgreSQL, SQLite;
/// MariaDB has no deferred constraints).
macro_rules! deferred_constraint_test {
    () => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn failing_commit_answers_500_on_a_deferred_constraint() {
            let db = TestDb::new(KIND).await;
            let manager = db.manager(|c| c);
            let parent = format!("{}_parent", db.tag);
            let mut session = manager.session::<Db>("main").unwrap();
            let ddl = [
                format!("CREATE TABLE {parent} (v VARCHAR(50) PRIMARY KEY)"),
                format!(
                    "CREATE TABLE {} (id BIGINT PRIMARY KEY, \
                     v VARCHAR(50) REFERENCES {parent} (v) DEFERRABLE INITIALLY DEFERRED)",
                    db.table
                ),
            ];
            for stmt in ddl {
                sqlx::query(sql(stmt)).execute(&mut session).await.unwrap();
            }
            session.commit().await.unwrap();
            drop(session);
            let ctx = ctx(&manager, &db, None);
            let server = serve(&manager, &ctx, ScopeMiddleware::new(&manager));

            // The insert succeeds (the check is deferred); the commit does not.
            let response = post(&server, "/write/1/201").await;
            assert_eq!(response.status(), 500);
            assert_eq!(
                response.text().await.unwrap(),
                "",
                "an empty 500, as axum answers"
            );
            assert!(logged(&["the request's commit failed"]));
            assert_eq!(rows(&manager, &db).await, Vec::<i64>::new());
            assert_eq!(ctx.handler_runs.load(Ordering::SeqCst), 1);

            server.stop().await;
            assert_no_leak(&manager, &db).await;
            let mut session = manager.session::<Db>("main").unwrap();
            for stmt in [
                format!("DROP TABLE {}", db.table),
                format!("DROP TABLE {parent}"),
            ] {
                sqlx::query(sql(stmt)).execute(&mut session).await.unwrap();
            }
            session.commit().await.unwrap();
            drop(session);
            manager.close(Duration::from_secs(5)).await.unwrap();
            db.finish().await;
        }
    };
}

/// What actix-web does, in its default configuration, with a client that goes away: the
/// behaviour the module docs describe (server-side, so one backend suffices).
macro_rules! actix_default_disconnect_tests {
    () => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn by_default_a_closed_client_connection_is_a_half_close_and_the_handler_finishes() {
            let (db, manager, ctx) = setup().await;
            let server = serve_with(
                HalfClose::Allowed,
                &manager,
                &ctx,
                ScopeMiddleware::new(&manager),
            );
            let impatient = reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap();
            let error = impatient
                .post(server.url("/slow/1"))
                .send()
                .await
                .unwrap_err();
            assert!(error.is_timeout(), "{error:?}");
            drop(impatient);
            eventually("the handler runs to its end", || async {
                ctx.finished.load(Ordering::SeqCst)
            })
            .await;
            assert!(!ctx.cancelled.load(Ordering::SeqCst));
            // Its 200 committed, though nobody was there to read it.
            eventually("the write commits", || async {
                rows(&manager, &db).await == [1]
            })
            .await;
            finish(server, manager, db).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn by_default_a_reset_client_connection_cancels_the_request() {
            use tokio::io::AsyncWriteExt;
            let (db, manager, ctx) = setup().await;
            let server = serve_with(
                HalfClose::Allowed,
                &manager,
                &ctx,
                ScopeMiddleware::new(&manager),
            );
            let mut stream =
                tokio::net::TcpStream::connect(server.base.trim_start_matches("http://"))
                    .await
                    .unwrap();
            stream
                .write_all(b"POST /slow/1 HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            eventually("the handler wrote", || async {
                ctx.reached.load(Ordering::SeqCst)
            })
            .await;
            stream.set_zero_linger().unwrap();
            drop(stream); // an RST, not a FIN
            eventually("actix drops the request's future", || async {
                ctx.cancelled.load(Ordering::SeqCst)
            })
            .await;
            assert_no_leak(&manager, &db).await;
            assert_eq!(rows(&manager, &db).await, Vec::<i64>::new());
            finish(server, manager, db).await;
        }
    };
}

actix_suite!(
    sqlite_file,
    sqlx::Sqlite,
    Kind::SqliteFile,
    deferred_constraint_test,
    actix_default_disconnect_tests
);
actix_suite!(
    postgres,
    sqlx::Postgres,
    Kind::Postgres,
    deferred_constraint_test
);
actix_suite!(mysql, sqlx::MySql, Kind::MySql);

/// Route configuration errors a middleware can see alone fail at start-up, not per request.
#[test]
fn misconfigured_route_middleware_fails_at_start_up() {
    let manager = BindManager::builder()
        .bind("main", BindConfig::new("sqlite::memory:"))
        .build()
        .unwrap();
    let twice = ScopeMiddleware::with_scope(manager.scope().bind("main").bind("main")).unwrap_err();
    assert!(twice.to_string().contains("declared twice"), "{twice}");
    let unknown = ScopeMiddleware::with_scope(manager.scope().bind("reports")).unwrap_err();
    assert!(unknown.is_unknown_bind(), "{unknown}");
    assert!(ScopeMiddleware::with_scope(manager.scope().bind("main")).is_ok());
}

/// A route without the middleware: the extractor says what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extractor_without_the_middleware_says_how_to_fix_it() {
    dbscope::bind_key!(Main: sqlx::Sqlite = "main");
    async fn handler(_db: DbSession<Main>) -> HttpResponse {
        HttpResponse::Ok().finish()
    }
    let server = TestServer::start(HalfClose::Refused, || {
        App::new().route("/", web::post().to(handler))
    });
    let response = post(&server, "/").await;
    assert_eq!(response.status(), 500);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE].clone();
    assert_eq!(content_type, "text/plain; charset=utf-8");
    let body = response.text().await.unwrap();
    assert_eq!(body, no_scope_body().await, "the same body as axum's");
    assert!(logged(&["cannot extract the request's session", &body]));
    server.stop().await;
}
