//! The tower layer and axum extractors through real HTTP: a real axum server on 127.0.0.1 and
//! a real client, against SQLite (file and in-memory), PostgreSQL and MariaDB.

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::{Kind, TestDb, eventually, sql};
use dbscope::axum::{DbError, DbSession};
use dbscope::tower::ScopeLayer;
use dbscope::{BindManager, DefaultBind, TransactionMode, current_session};
use tower_http::catch_panic::CatchPanicLayer;

/// What a route without the layer answers, word for word, as actix-web does
/// (`tests/http_actix.rs`): the no-scope error's message and the likely fix.
async fn no_scope_body() -> String {
    let error = dbscope::current_session::<sqlx::Sqlite>("main").await;
    let error = error.unwrap_err();
    format!("{error}; did you add dbscope's ScopeLayer or ScopeMiddleware to this route?")
}

macro_rules! http_suite {
    ($module:ident, $db:ty, $kind:expr) => {
        mod $module {
            use super::*;

            type Db = $db;
            const KIND: Kind = $kind;

            /// The bind key of the tests' one bind, `main`.
            struct Main;
            impl dbscope::BindKey for Main {
                type Database = Db;
                const NAME: &'static str = "main";
            }
            type Session = DbSession<Main>;

            #[derive(Clone)]
            struct App {
                table: String,
                manager: BindManager,
            }

            async fn insert_row(
                session: &mut dbscope::ScopedSession<Db>,
                table: &str,
                id: i64,
            ) -> Result<(), DbError> {
                let stmt = format!("INSERT INTO {table} (id, v) VALUES ({id}, 'row {id}')");
                sqlx::query(sql(stmt)).execute(session).await?;
                Ok(())
            }

            async fn create(
                State(app): State<App>,
                Path(id): Path<i64>,
                mut db: Session,
            ) -> Result<StatusCode, DbError> {
                insert_row(&mut db, &app.table, id).await?;
                Ok(StatusCode::CREATED)
            }

            async fn create_then(
                State(app): State<App>,
                Path((id, status)): Path<(i64, u16)>,
                mut db: Session,
            ) -> Result<StatusCode, DbError> {
                insert_row(&mut db, &app.table, id).await?;
                Ok(StatusCode::from_u16(status).unwrap())
            }

            async fn create_then_fail(
                State(app): State<App>,
                Path(id): Path<i64>,
                mut db: Session,
            ) -> Result<StatusCode, DbError> {
                insert_row(&mut db, &app.table, id).await?;
                let broken = format!("SELECT no_such_column FROM {}", app.table);
                sqlx::query(sql(broken)).execute(&mut *db).await?; // a handler error
                Ok(StatusCode::CREATED)
            }

            async fn create_then_panic(
                State(app): State<App>,
                Path(id): Path<i64>,
                mut db: Session,
            ) -> StatusCode {
                insert_row(&mut db, &app.table, id).await.unwrap();
                if id > 0 {
                    panic!("handler bug");
                }
                StatusCode::CREATED
            }

            async fn create_then_sleep(
                State(app): State<App>,
                Path(id): Path<i64>,
                mut db: Session,
            ) -> StatusCode {
                insert_row(&mut db, &app.table, id).await.unwrap();
                drop(db);
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::CREATED
            }

            /// Two children of the handler, run with `join!`, each asking the scope for the
            /// session: one writes, the other sees the write before any commit.
            async fn children(
                State(app): State<App>,
                Path(id): Path<i64>,
            ) -> Result<String, DbError> {
                let write = async {
                    let mut s = current_session::<Db>("main").await?;
                    insert_row(&mut s, &app.table, id).await
                };
                let read = async {
                    tokio::task::yield_now().await;
                    let mut s = current_session::<Db>("main").await?;
                    let stmt = format!("SELECT COUNT(*) FROM {}", app.table);
                    let n: i64 = sqlx::query_scalar(sql(stmt)).fetch_one(&mut s).await?;
                    Ok::<_, DbError>(n)
                };
                let (w, n) = tokio::join!(write, read);
                w?;
                Ok(n?.to_string())
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
                let mut session = current_session::<Db>("main").await?;
                insert_row(&mut session, table, id).await?;
                let mut pids = vec![connection_id(&mut session).await?];
                if depth > 1 {
                    pids.extend(Box::pin(layer(table, id + 1, depth - 1)).await?);
                }
                Ok(pids)
            }

            /// The extractor's handle, three layers of helpers under it, then two siblings of a
            /// `join!` three layers deep each: one session, one connection, every row committed.
            async fn layered(
                State(app): State<App>,
                Path(id): Path<i64>,
                mut db: Session,
            ) -> Result<String, DbError> {
                insert_row(&mut db, &app.table, id).await?;
                let mut pids = vec![connection_id(&mut db).await?];
                pids.extend(layer(&app.table, id + 1, 3).await?);
                let (a, b) =
                    tokio::join!(layer(&app.table, id + 10, 3), layer(&app.table, id + 20, 3));
                pids.extend(a?);
                pids.extend(b?);
                pids.dedup();
                Ok(format!("{pids:?}"))
            }

            /// A streamed body: it reads, from a fresh session, whether the request's row is
            /// committed by the time the body streams, and whether the scope is still there.
            async fn streamed(
                State(app): State<App>,
                Path(id): Path<i64>,
                mut db: Session,
            ) -> Result<Body, DbError> {
                insert_row(&mut db, &app.table, id).await?;
                let stream = futures_util::stream::once(async move {
                    let in_scope = current_session::<Db>("main").await.is_ok();
                    let mut fresh = app.manager.session::<Db>("main").unwrap();
                    let stmt = format!("SELECT COUNT(*) FROM {} WHERE id = {id}", app.table);
                    let n: i64 = sqlx::query_scalar(sql(stmt))
                        .fetch_one(&mut fresh)
                        .await
                        .unwrap();
                    fresh.close().await.unwrap();
                    Ok::<_, std::io::Error>(format!("committed={n} in_scope={in_scope}"))
                });
                Ok(Body::from_stream(stream))
            }

            async fn count(State(app): State<App>, mut db: Session) -> Result<String, DbError> {
                let stmt = format!("SELECT COUNT(*) FROM {}", app.table);
                let n: i64 = sqlx::query_scalar(sql(stmt)).fetch_one(&mut *db).await?;
                Ok(format!("{n} in_transaction={}", db.in_transaction().await?))
            }

            struct Server {
                base: String,
                client: reqwest::Client,
                db: TestDb,
                manager: BindManager,
                task: tokio::task::JoinHandle<()>,
            }

            async fn serve() -> Server {
                let db = TestDb::new(KIND).await;
                let manager = db.manager(|c| c);
                let mut setup = manager.session::<Db>("main").unwrap();
                let ddl = format!(
                    "CREATE TABLE {} (id BIGINT PRIMARY KEY, v VARCHAR(50))",
                    db.table
                );
                sqlx::query(sql(ddl)).execute(&mut setup).await.unwrap();
                setup.commit().await.unwrap();
                setup.close().await.unwrap();

                let app = App {
                    table: db.table.clone(),
                    manager: manager.clone(),
                };
                let veto = ScopeLayer::with_scope(
                    manager
                        .scope()
                        .before_commit(|| async { Err("refused by policy".into()) }),
                )
                .unwrap();
                let autocommit = ScopeLayer::with_scope(
                    manager
                        .scope()
                        .bind_with_mode("main", TransactionMode::Autocommit),
                )
                .unwrap();
                let declares_main = ScopeLayer::with_scope(manager.scope().bind("main")).unwrap();
                let unscoped = Router::new().route("/unscoped/count", get(count));
                let router = Router::new()
                    .route("/items/{id}", post(create))
                    .route("/items/{id}/status/{status}", post(create_then))
                    .route("/items/{id}/fail", post(create_then_fail))
                    .route("/items/{id}/panic", post(create_then_panic))
                    .route("/items/{id}/sleep", post(create_then_sleep))
                    .route("/items/{id}/children", post(children))
                    .route("/items/{id}/layered", post(layered))
                    .route("/items/{id}/stream", post(streamed))
                    .route("/items/{id}/veto", post(create).route_layer(veto))
                    .route(
                        "/items/{id}/autocommit/{status}",
                        post(create_then).route_layer(autocommit),
                    )
                    .route(
                        "/items/{id}/teapot/{status}",
                        post(create_then).route_layer(
                            ScopeLayer::new(&manager)
                                .commit_on(StatusCode::IM_A_TEAPOT)
                                .commit_on(StatusCode::ACCEPTED),
                        ),
                    )
                    .route("/count", get(count))
                    .layer(ScopeLayer::new(&manager).rollback_on(StatusCode::ACCEPTED))
                    .merge(
                        Router::new()
                            .route(
                                "/declared-twice/{id}",
                                post(create).route_layer(declares_main.clone()),
                            )
                            .layer(declares_main),
                    )
                    .merge(unscoped)
                    .layer(CatchPanicLayer::new())
                    .with_state(app);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let base = format!("http://{}", listener.local_addr().unwrap());
                let task =
                    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
                let client = reqwest::Client::new();
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

                async fn get(&self, path: &str) -> (u16, String) {
                    let (status, _, body) = self.get_typed(path).await;
                    (status, body)
                }

                /// Status, content type and body.
                async fn get_typed(&self, path: &str) -> (u16, Option<String>, String) {
                    let response = self
                        .client
                        .get(format!("{}{path}", self.base))
                        .send()
                        .await
                        .unwrap();
                    let content_type = response
                        .headers()
                        .get(reqwest::header::CONTENT_TYPE)
                        .map(|v| v.to_str().unwrap().to_owned());
                    (
                        response.status().as_u16(),
                        content_type,
                        response.text().await.unwrap(),
                    )
                }

                /// Rows committed, seen by a fresh session, at once: no waiting.
                async fn committed(&self) -> i64 {
                    let mut session = self.manager.session::<Db>("main").unwrap();
                    let stmt = format!("SELECT COUNT(*) FROM {}", self.db.table);
                    let n = sqlx::query_scalar(sql(stmt))
                        .fetch_one(&mut session)
                        .await
                        .unwrap();
                    session.close().await.unwrap();
                    n
                }

                async fn assert_settled(&self) {
                    let bind = self.manager.bind::<Db>("main").unwrap();
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
                }

                async fn finish(self) {
                    self.assert_settled().await;
                    self.task.abort();
                    self.manager.close(Duration::from_secs(5)).await.unwrap();
                    self.db.finish().await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nested_helpers_asking_for_the_session_share_it_without_waiting() {
                let server = serve().await;
                let answer = tokio::time::timeout(
                    Duration::from_secs(60),
                    server.post("/items/100/layered"),
                )
                .await
                .expect("the request answers instead of hanging");
                assert_eq!(answer.0, 200, "{answer:?}");
                // One connection id for every layer (0 on SQLite, which has no server).
                let pids: Vec<i64> = answer
                    .1
                    .trim_matches(['[', ']'])
                    .split(", ")
                    .map(|p| p.parse().unwrap())
                    .collect();
                assert_eq!(pids.len(), 1, "one backend connection: {}", answer.1);
                assert_eq!(server.committed().await, 1 + 3 + 3 + 3);
                assert_eq!(server.manager.status()[0].discarded, 0);
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_2xx_is_sent_only_after_the_commit() {
                let server = serve().await;
                assert_eq!(server.post("/items/1").await.0, 201);
                // Checked the moment the response arrived: the commit came first.
                assert_eq!(server.committed().await, 1);
                assert_eq!(server.post("/items/2/status/200").await.0, 200);
                assert_eq!(server.post("/items/3/status/302").await.0, 302);
                assert_eq!(server.committed().await, 3);
                assert_eq!(server.manager.status()[0].discarded, 0);
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn error_statuses_roll_back() {
                let server = serve().await;
                assert_eq!(server.post("/items/1/status/400").await.0, 400);
                assert_eq!(server.post("/items/2/status/404").await.0, 404);
                assert_eq!(server.post("/items/3/status/503").await.0, 503);
                assert_eq!(server.committed().await, 0);
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_handler_error_rolls_back() {
                let server = serve().await;
                let (status, body) = server.post("/items/1/fail").await;
                assert_eq!(status, 500);
                assert!(
                    body.is_empty(),
                    "the database's error text stays in the logs: {body}"
                );
                assert_eq!(server.committed().await, 0);
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_panicking_handler_rolls_back() {
                let server = serve().await;
                assert_eq!(server.post("/items/1/panic").await.0, 500);
                server.assert_settled().await;
                assert_eq!(server.committed().await, 0);
                // The server goes on serving.
                assert_eq!(server.post("/items/2").await.0, 201);
                assert_eq!(server.committed().await, 1);
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_client_disconnect_rolls_back_and_leaks_nothing() {
                let server = serve().await;
                let cut = server
                    .client
                    .post(format!("{}/items/1/sleep", server.base))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await;
                assert!(cut.unwrap_err().is_timeout());
                server.assert_settled().await;
                assert_eq!(server.committed().await, 0);
                let status = &server.manager.status()[0];
                assert_eq!(status.in_use, 0);
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn children_of_a_handler_share_one_session() {
                let server = serve().await;
                let (status, body) = server.post("/items/1/children").await;
                assert_eq!(
                    (status, body.as_str()),
                    (200, "1"),
                    "the reader saw the writer's uncommitted row"
                );
                assert_eq!(server.committed().await, 1);
                if let Some(n) = server.db.server_connections().await {
                    assert_eq!(
                        n, 1,
                        "the server saw one connection, for setup and request alike"
                    );
                }
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_streamed_body_streams_after_the_commit_and_outside_the_scope() {
                let server = serve().await;
                let (status, body) = server.post("/items/1/stream").await;
                assert_eq!(status, 200);
                assert_eq!(body, "committed=1 in_scope=false");
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_vetoed_commit_answers_500_and_rolls_back() {
                let server = serve().await;
                assert_eq!(
                    server.post("/items/1/veto").await,
                    (500, String::new()),
                    "an empty 500, as actix-web answers"
                );
                assert_eq!(server.committed().await, 0);
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_autocommit_route_lands_writes_without_a_transaction() {
                let server = serve().await;
                // Even an error status keeps an autocommitted write: it landed on its own.
                assert_eq!(server.post("/items/1/autocommit/500").await.0, 500);
                assert_eq!(server.committed().await, 1);
                assert_eq!(server.post("/items/2/autocommit/201").await.0, 201);
                assert_eq!(server.committed().await, 2);
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn extra_commit_and_rollback_statuses() {
                let server = serve().await;
                assert_eq!(server.post("/items/1/teapot/418").await.0, 418);
                assert_eq!(server.committed().await, 1, "418 commits on this route");
                assert_eq!(server.post("/items/2/status/202").await.0, 202);
                assert_eq!(server.committed().await, 1, "202 rolls back app-wide");
                assert_eq!(server.post("/items/3/teapot/202").await.0, 202);
                assert_eq!(
                    server.committed().await,
                    2,
                    "the route's word wins over the app's"
                );
                assert_eq!(server.post("/items/4/status/418").await.0, 418);
                assert_eq!(server.committed().await, 2, "418 rolls back off that route");
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_bind_declared_twice_for_a_route_is_reported() {
                let server = serve().await;
                assert_eq!(server.post("/declared-twice/1").await.0, 500);
                assert_eq!(server.committed().await, 0);
                let twice =
                    ScopeLayer::with_scope(server.manager.scope().bind("main").bind("main"))
                        .unwrap_err();
                assert!(twice.to_string().contains("declared twice"), "{twice}");
                let unknown =
                    ScopeLayer::with_scope(server.manager.scope().bind("nope")).unwrap_err();
                assert!(unknown.is_unknown_bind());
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_extractor_without_the_layer_says_what_is_missing() {
                let server = serve().await;
                let (status, content_type, body) = server.get_typed("/unscoped/count").await;
                assert_eq!((status, body), (500, no_scope_body().await));
                assert_eq!(content_type.as_deref(), Some("text/plain; charset=utf-8"));
                assert_eq!(
                    server.get("/count").await,
                    (200, "0 in_transaction=true".to_owned())
                );
                server.finish().await;
            }
        }
    };
}

http_suite!(sqlite_file, sqlx::Sqlite, Kind::SqliteFile);
http_suite!(sqlite_memory, sqlx::Sqlite, Kind::SqliteMemory);
http_suite!(postgres, sqlx::Postgres, Kind::Postgres);
http_suite!(mysql, sqlx::MySql, Kind::MySql);

/// A real commit failure (a deferred foreign key checked at COMMIT) reaches the client as a 500,
/// and nothing of the request stays. PostgreSQL and SQLite defer constraints; MariaDB cannot.
mod commit_failure {
    use super::*;

    async fn bad_child(
        State(table): State<String>,
        mut db: DbSession<DefaultBind<sqlx::Postgres>>,
    ) -> Result<StatusCode, DbError> {
        let stmt = format!("INSERT INTO {table}_child (id, parent) VALUES (1, 42)");
        sqlx::query(sql(stmt)).execute(&mut *db).await?; // accepted now, refused at COMMIT
        Ok(StatusCode::CREATED)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_answers_500() {
        let db = TestDb::new(Kind::Postgres).await;
        let manager = BindManager::builder()
            .bind("default", db.config())
            .build()
            .unwrap();
        let t = &db.table;
        let mut setup = manager.session::<sqlx::Postgres>("default").unwrap();
        let ddl = format!(
            "CREATE TABLE {t}_parent (id BIGINT PRIMARY KEY); CREATE TABLE {t}_child (id BIGINT PRIMARY KEY, \
             parent BIGINT REFERENCES {t}_parent (id) DEFERRABLE INITIALLY DEFERRED)"
        );
        sqlx::raw_sql(sql(ddl)).execute(&mut setup).await.unwrap();
        setup.commit().await.unwrap();
        setup.close().await.unwrap();
        let router = Router::new()
            .route("/child", post(bad_child))
            .layer(ScopeLayer::new(&manager))
            .with_state(db.table.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/child", listener.local_addr().unwrap());
        let task = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

        let response = reqwest::Client::new().post(url).send().await.unwrap();
        assert_eq!(
            response.status().as_u16(),
            500,
            "the handler said 201, the commit said no"
        );
        assert_eq!(response.text().await.unwrap(), "", "an empty 500");
        let mut check = manager.session::<sqlx::Postgres>("default").unwrap();
        let n: i64 = sqlx::query_scalar(sql(format!("SELECT COUNT(*) FROM {t}_child")))
            .fetch_one(&mut check)
            .await
            .unwrap();
        assert_eq!(n, 0);
        sqlx::raw_sql(sql(format!("DROP TABLE {t}_child; DROP TABLE {t}_parent")))
            .execute(&mut check)
            .await
            .unwrap();
        check.commit().await.unwrap();
        check.close().await.unwrap();
        eventually("no transaction left open", || async {
            db.open_transactions().await == Some(0)
        })
        .await;
        task.abort();
        manager.close(Duration::from_secs(5)).await.unwrap();
        db.finish().await;
    }
}

/// A route's layer that declares a bind joins an app-wide layer that serves every bind: the
/// route gets its bind (with its mode) and keeps every other. SQLite, in memory.
mod route_binds {
    use super::*;

    use dbscope::BindConfig;
    use sqlx::Sqlite;

    /// The bind key of the route's own bind.
    struct Analytics;
    impl dbscope::BindKey for Analytics {
        type Database = Sqlite;
        const NAME: &'static str = "analytics";
    }

    /// Uses both binds: the app's default one, and the route's, in autocommit.
    async fn both(
        mut main: DbSession<DefaultBind<Sqlite>>,
        mut analytics: DbSession<Analytics>,
    ) -> Result<String, DbError> {
        let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *main).await?;
        let two: i64 = sqlx::query_scalar("SELECT 2")
            .fetch_one(&mut *analytics)
            .await?;
        let main_open = main.in_transaction().await?;
        let analytics_open = analytics.in_transaction().await?;
        Ok(format!("{one} {two} {main_open} {analytics_open}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_route_layer_adds_its_bind_to_a_scope_that_serves_every_bind() {
        let manager = BindManager::builder()
            .bind("default", BindConfig::new("sqlite::memory:"))
            .bind("analytics", BindConfig::new("sqlite::memory:"))
            .build()
            .unwrap();
        let analytics = ScopeLayer::with_scope(
            manager
                .scope()
                .bind_with_mode("analytics", TransactionMode::Autocommit),
        )
        .unwrap();
        let router = Router::new()
            .route("/both", get(both).route_layer(analytics))
            .layer(ScopeLayer::new(&manager));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/both", listener.local_addr().unwrap());
        let task = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let response = reqwest::Client::new().get(url).send().await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(
            (status, response.text().await.unwrap().as_str()),
            (200, "1 2 true false"),
            "the default bind in a transaction, the route's in autocommit"
        );
        task.abort();
        manager.close(Duration::from_secs(5)).await.unwrap();
    }
}
