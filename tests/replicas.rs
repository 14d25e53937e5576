//! Primary and replicas, on real streaming replicas (tests/common/replication.rs): reads on the
//! replica and writes on the primary, proven by each server's own port
//! (`inet_server_port()`, `@@port`); read-your-writes tokens with replay paused; a lagging
//! replica set aside and taken back; sticky-after-write in a scope; the host-switch hook; a
//! failover with the old primary never written to; MariaDB with GTID tokens.
//!
//! The non-destructive PostgreSQL checks share one pair (one test, run in order); the
//! failover and MariaDB tests start pairs of their own. Run with `--nocapture` for figures.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/replication.rs"]
mod replication;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cluster::Stop;
use dbscope::{
    BindConfig, BindManager, ErrorKind, Fallback, HostChoice, HostRole, ReadToken, RoutingConfig,
    RoutingFailure, Scope, Session,
};
use replication::{MariaPair, PgPair, my_connect, pg_connect};
use sqlx::{MySql, Postgres};

use common::{eventually, within_limit};

/// Probing fast, so the tests wait for little.
fn routing() -> RoutingConfig {
    let mut routing = RoutingConfig::default();
    routing.probe_interval = Duration::from_millis(100);
    routing.probe_timeout = Duration::from_millis(1000);
    routing.token_wait = Duration::from_millis(300);
    routing
}

fn pg_manager(pair: &PgPair, tweak: impl FnOnce(BindConfig) -> BindConfig) -> BindManager {
    let config = BindConfig::new(pair.primary_url())
        .replica(pair.replica_url())
        .routing(routing())
        .acquire_timeout(Duration::from_secs(10));
    BindManager::new(tweak(config)).expect("a bind with a replica builds")
}

/// The port of the server a session runs on, as the server says.
async fn pg_port(session: &mut Session<Postgres>) -> u16 {
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(&mut *session)
        .await
        .expect("inet_server_port()");
    u16::try_from(port).expect("a port")
}

async fn pg_has_row(session: &mut Session<Postgres>, id: i64) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM replica_rows WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *session)
        .await
        .expect("counting rows")
        == 1
}

/// Inserts row `id` in a write session and commits: the commit's token.
async fn pg_write(manager: &BindManager, id: i64) -> (ReadToken, u16) {
    let mut session = manager.session::<Postgres>("default").unwrap();
    sqlx::query("INSERT INTO replica_rows (id) VALUES ($1)")
        .bind(id)
        .execute(&mut session)
        .await
        .expect("insert on the primary");
    let port = pg_port(&mut session).await;
    session.commit().await.expect("commit");
    let token = session
        .read_token()
        .cloned()
        .expect("a commit on a bind with replicas has a token");
    (token, port)
}

/// Inserts row `id` in a scope of `builder`'s: the tokens the scope's end left.
async fn pg_write_in_scope(builder: dbscope::ScopeBuilder, id: i64) -> Vec<ReadToken> {
    let mut kept = None;
    builder
        .run(async {
            kept = Some(Scope::current()?);
            let mut db = dbscope::current_session::<Postgres>("default").await?;
            sqlx::query("INSERT INTO replica_rows (id) VALUES ($1)")
                .bind(id)
                .execute(&mut db)
                .await?;
            Ok::<_, dbscope::Error>(())
        })
        .await
        .unwrap();
    kept.unwrap().read_tokens()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas() {
    within_limit("postgres_replicas", async {
        let started = Instant::now();
        let pair = PgPair::start().await;
        eprintln!("pair up in {:?}", started.elapsed());
        let ports = (pair.primary().port(), pair.replica().port());
        let manager = pg_manager(&pair, |c| c);
        let mut setup = manager.session::<Postgres>("default").unwrap();
        sqlx::query("CREATE TABLE replica_rows (id bigint PRIMARY KEY)")
            .execute(&mut setup)
            .await
            .unwrap();
        setup.commit().await.unwrap();
        drop(setup);
        pair.wait_caught_up().await;

        reads_on_the_replica_writes_on_the_primary(&manager, ports).await;
        status_shows_each_host(&manager, ports).await;
        a_token_never_reads_stale_data(&pair, &manager, ports).await;
        read_your_writes_across_two_http_requests(&pair, &manager, ports).await;
        read_your_writes_through_actix_with_a_cookie(&pair, &manager, ports).await;
        a_lagging_replica_is_set_aside_and_taken_back(&pair, ports).await;
        reads_stick_to_the_primary_after_a_write_in_a_scope(&manager, ports).await;
        the_host_hook_chooses_per_session(&pair, ports).await;
        fallback_fail_is_a_typed_error(&pair).await;
        blocking_sessions_are_routed_too(&manager, ports).await;
        the_prober_outlives_the_runtime_that_started_it(&pair, ports).await;
        an_autocommit_write_has_a_token_too(&pair, &manager, ports).await;
        a_test_copy_of_a_bind_with_replicas_reads_its_own_writes(&pair).await;
        the_replicas_example_runs_against_the_pair(&pair, ports).await;
        manager.close(Duration::from_secs(5)).await.unwrap();
        // Closed managers leave nothing behind: no pool connection, no prober's.
        let mut admin = pg_connect(&pair.replica_url()).await;
        replication::poll_until("no connection of ours left on the replica", async || {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut admin)
            .await
            .unwrap();
            n == 0
        })
        .await;
        eprintln!("postgres_replicas took {:?}", started.elapsed());
    })
    .await;
}

async fn reads_on_the_replica_writes_on_the_primary(
    manager: &BindManager,
    (primary, replica): (u16, u16),
) {
    let (_, port) = pg_write(manager, 1).await;
    assert_eq!(port, primary, "a write session runs on the primary");
    for _ in 0..5 {
        let mut read = manager.read_session::<Postgres>("default").unwrap();
        assert_eq!(
            pg_port(&mut read).await,
            replica,
            "a read session runs on the replica"
        );
        assert!(read.on_replica());
        // Read-only on the server, whatever the host.
        let err = sqlx::query("INSERT INTO replica_rows (id) VALUES (-1)")
            .execute(&mut read)
            .await
            .expect_err("a read session cannot write");
        assert!(err.to_string().contains("read-only"), "{err}");
        // No transaction around its statements, and no SET to make it read-only: the
        // replica's connections open read-only (the server says the setting came from the
        // client's startup packet, not a SET).
        let (own, source): (bool, String) = sqlx::raw_sql(
            "SELECT statement_timestamp() = transaction_timestamp(), \
             (SELECT source FROM pg_settings WHERE name = 'default_transaction_read_only')",
        )
        .fetch_one(&mut read)
        .await
        .map(|row| (sqlx::Row::get(&row, 0), sqlx::Row::get(&row, 1)))
        .expect("the read session's own view");
        assert!(own, "each statement in a transaction of its own");
        assert_eq!(source, "client");
    }
    // The server's own view: our read sessions' connections are on the replica.
    let mut replica_admin =
        pg_connect(&format!("postgres://postgres@127.0.0.1:{replica}/test")).await;
    let on_replica: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'test' AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .fetch_one(&mut replica_admin)
    .await
    .unwrap();
    assert!(on_replica >= 1, "the replica serves our read connections");
}

async fn status_shows_each_host(manager: &BindManager, (primary, replica): (u16, u16)) {
    let status = &manager.status()[0];
    assert_eq!(status.hosts.len(), 2);
    let (p, r) = (&status.hosts[0], &status.hosts[1]);
    assert!(p.address.contains(&primary.to_string()) && r.address.contains(&replica.to_string()));
    assert_eq!((p.role, r.role), (HostRole::Primary, HostRole::Replica));
    assert!(p.healthy && r.healthy && r.fit_for_reads && !p.fit_for_reads);
    assert!(r.lag.is_some() && r.lag_bytes.is_some() && p.lag.is_none());
    assert!(
        p.timeline == Some(1) && r.timeline == Some(1),
        "{p:?} {r:?}"
    );
    eprintln!("status: {:#?}", status.hosts);
}

async fn a_token_never_reads_stale_data(
    pair: &PgPair,
    manager: &BindManager,
    (primary, replica): (u16, u16),
) {
    pair.pause_replay().await;
    let (token, _) = pg_write(manager, 2).await;
    let text = token.to_string();
    let token: ReadToken = text.parse().expect("a token reads back");
    // The replica has not replayed the write: the read waits token_wait, then goes to the
    // primary, and sees it.
    let asked = Instant::now();
    let mut read = manager.read_session_after::<Postgres>(&token).unwrap();
    assert_eq!(
        pg_port(&mut read).await,
        primary,
        "a token past the replica reads from the primary"
    );
    assert!(
        pg_has_row(&mut read, 2).await,
        "a read with a token sees the write"
    );
    eprintln!("token {text}: primary after {:?}", asked.elapsed());
    drop(read);
    // A scope given the token hands it to the new scopes it starts (concurrent work of the
    // same request): their reads see the write too.
    let seen = manager
        .scope()
        .read_after(token.clone())
        .run(async {
            let inner = dbscope::Scope::current()?.new_scope();
            inner
                .run(async {
                    let mut read = dbscope::current_read_session::<Postgres>("default").await?;
                    let (port, seen): (i32, i64) = sqlx::query_as(
                        "SELECT inet_server_port(), \
                         (SELECT count(*) FROM replica_rows WHERE id = 2)",
                    )
                    .fetch_one(&mut read)
                    .await?;
                    Ok::<_, dbscope::Error>((port as u16, seen))
                })
                .await
        })
        .await
        .expect("reads in a new scope");
    assert_eq!(
        seen,
        (primary, 1),
        "a new scope reads after its parent's token"
    );
    // Without a token, the same read may go to the paused replica, which lacks the row.
    let mut stale = manager.read_session::<Postgres>("default").unwrap();
    if pg_port(&mut stale).await == replica {
        assert!(!pg_has_row(&mut stale, 2).await, "replay is paused");
    }
    drop(stale);
    // Resumed, a read with the token waits for the replica, which now has the row.
    let resume = pair.resume_replay();
    let (mut read, ()) = tokio::join!(
        async {
            let mut read = manager.read_session_after::<Postgres>(&token).unwrap();
            pg_port(&mut read).await;
            read
        },
        resume
    );
    assert!(
        pg_has_row(&mut read, 2).await,
        "whichever host, the token's write is there"
    );
    drop(read);
    eventually(
        "a read with the token goes to the caught-up replica",
        || async {
            let mut read = manager.read_session_after::<Postgres>(&token).unwrap();
            let port = pg_port(&mut read).await;
            assert!(pg_has_row(&mut read, 2).await);
            port == replica
        },
    )
    .await;
}

/// Axum: a POST commits and answers the token in a header; a GET bringing it back reads the
/// row (from the primary, replay being paused), where a GET without it reads the replica.
async fn read_your_writes_across_two_http_requests(
    pair: &PgPair,
    manager: &BindManager,
    (primary, replica): (u16, u16),
) {
    use axum::extract::Path;
    use axum::routing::{get, post};
    use dbscope::axum::{DbError, DbSession};
    use dbscope::tower::ScopeLayer;
    type Db = DbSession<dbscope::DefaultBind<Postgres>>;

    async fn create(mut db: Db, Path(id): Path<i64>) -> Result<&'static str, DbError> {
        sqlx::query("INSERT INTO replica_rows (id) VALUES ($1)")
            .bind(id)
            .execute(&mut *db)
            .await?;
        Ok("stored")
    }
    async fn read(mut db: Db, Path(id): Path<i64>) -> Result<String, DbError> {
        let (port, n): (i32, i64) = sqlx::query_as(
            "SELECT inet_server_port(), (SELECT count(*) FROM replica_rows WHERE id = $1)",
        )
        .bind(id)
        .fetch_one(&mut *db)
        .await?;
        Ok(format!("{n} {port}"))
    }
    let reads = ScopeLayer::with_scope(manager.scope().read_only()).unwrap();
    // A route's own carrier, on a layer that joins the app's scope.
    let route_tokens = ScopeLayer::new(manager).read_token_header("x-route-token");
    let router = axum::Router::new()
        .route("/rows/{id}", post(create))
        .route("/rows/{id}", get(read).route_layer(reads))
        .route("/routed/{id}", post(create).route_layer(route_tokens))
        .layer(ScopeLayer::new(manager).read_token_header("x-read-token"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = reqwest::Client::new();

    pair.pause_replay().await;
    // The request brings a token of another bind (an earlier write elsewhere): the response's
    // header, which replaces the client's, hands it back beside this write's.
    let response = client
        .post(format!("{base}/rows/7"))
        .header("x-read-token", "audit.1.0/10")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let carried = response.headers()["x-read-token"]
        .to_str()
        .unwrap()
        .to_owned();
    eprintln!("POST answered x-read-token: {carried}");
    let carried: Vec<&str> = carried.split('~').collect();
    assert_eq!(
        carried.len(),
        2,
        "the request's token of another bind, and this write's: {carried:?}"
    );
    assert!(carried.contains(&"audit.1.0/10"), "{carried:?}");
    let token = carried
        .iter()
        .find(|t| t.starts_with("default."))
        .expect("this write's token")
        .to_string();
    let with = client
        .get(format!("{base}/rows/7"))
        .header("x-read-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        with.text().await.unwrap(),
        format!("1 {primary}"),
        "the token's read sees the write"
    );
    let without = client.get(format!("{base}/rows/7")).send().await.unwrap();
    assert_eq!(
        without.text().await.unwrap(),
        format!("0 {replica}"),
        "without it, the paused replica"
    );
    pair.resume_replay().await;
    pair.wait_caught_up().await;
    eventually(
        "the token's read goes to the replica once it replayed",
        || async {
            let with = client
                .get(format!("{base}/rows/7"))
                .header("x-read-token", &token)
                .send()
                .await
                .unwrap();
            with.text().await.unwrap() == format!("1 {replica}")
        },
    )
    .await;
    // The route's layer carries tokens in its own header too: the request's join the scope,
    // and the response gets the commit's in both.
    let routed = client
        .post(format!("{base}/routed/81"))
        .header("x-route-token", "audit.1.0/20")
        .send()
        .await
        .unwrap();
    assert!(routed.status().is_success());
    let header = |name: &str| {
        routed
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let route_header = header("x-route-token");
    assert!(
        route_header.contains("default.") && route_header.contains("audit.1.0/20"),
        "the route's header: {route_header:?}"
    );
    assert!(header("x-read-token").contains("default."));
    server.abort();
}

/// actix-web: the same round trip, the token in a cookie.
async fn read_your_writes_through_actix_with_a_cookie(
    pair: &PgPair,
    manager: &BindManager,
    (primary, replica): (u16, u16),
) {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use dbscope::actix::{DbError, DbSession, ScopeMiddleware};
    type Db = DbSession<dbscope::DefaultBind<Postgres>>;

    async fn create(mut db: Db, id: web::Path<i64>) -> Result<HttpResponse, DbError> {
        sqlx::query("INSERT INTO replica_rows (id) VALUES ($1)")
            .bind(*id)
            .execute(&mut *db)
            .await?;
        Ok(HttpResponse::Ok().body("stored"))
    }
    async fn read(mut db: Db, id: web::Path<i64>) -> Result<HttpResponse, DbError> {
        let (port, n): (i32, i64) = sqlx::query_as(
            "SELECT inet_server_port(), (SELECT count(*) FROM replica_rows WHERE id = $1)",
        )
        .bind(*id)
        .fetch_one(&mut *db)
        .await?;
        Ok(HttpResponse::Ok().body(format!("{n} {port}")))
    }
    let app_manager = manager.clone();
    let server = HttpServer::new(move || {
        let reads = ScopeMiddleware::with_scope(app_manager.scope().read_only()).unwrap();
        App::new()
            .wrap(ScopeMiddleware::new(&app_manager).read_token_cookie("rt"))
            .route("/rows/{id}", web::post().to(create))
            .service(
                web::resource("/rows/{id}/read")
                    .wrap(reads)
                    .route(web::get().to(read)),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let base = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    let client = reqwest::Client::new();

    pair.pause_replay().await;
    let response = client.post(format!("{base}/rows/8")).send().await.unwrap();
    assert!(response.status().is_success());
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set_cookie.starts_with("rt=default.1.") && set_cookie.contains("HttpOnly"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let with = client
        .get(format!("{base}/rows/8/read"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        with.text().await.unwrap(),
        format!("1 {primary}"),
        "the cookie's read sees the write"
    );
    let without = client
        .get(format!("{base}/rows/8/read"))
        .send()
        .await
        .unwrap();
    assert_eq!(without.text().await.unwrap(), format!("0 {replica}"));
    pair.resume_replay().await;
    pair.wait_caught_up().await;
    handle.stop(true).await;
    task.await.unwrap().unwrap();
}

async fn a_lagging_replica_is_set_aside_and_taken_back(
    pair: &PgPair,
    (primary, replica): (u16, u16),
) {
    let manager = pg_manager(pair, |c| c.max_lag(Duration::from_millis(500)));
    let mut first = manager.read_session::<Postgres>("default").unwrap();
    assert_eq!(pg_port(&mut first).await, replica);
    drop(first);
    pair.pause_replay().await;
    pg_write(&manager, 3).await;
    eventually("the paused replica is set aside", || async {
        !manager.status()[0].hosts[1].fit_for_reads
    })
    .await;
    let lag = manager.status()[0].hosts[1].lag.unwrap();
    assert!(lag > Duration::from_millis(500), "{lag:?}");
    let mut read = manager.read_session::<Postgres>("default").unwrap();
    assert_eq!(
        pg_port(&mut read).await,
        primary,
        "reads fall back to the primary"
    );
    assert!(pg_has_row(&mut read, 3).await);
    drop(read);
    // A manager started after the replica stalled remembers no position the replica has: its
    // lag has no bound it can see, so the replica is set aside from the first round.
    let fresh = pg_manager(pair, |c| c.max_lag(Duration::from_millis(500)));
    let mut read = fresh.read_session::<Postgres>("default").unwrap();
    assert_eq!(
        pg_port(&mut read).await,
        primary,
        "a fresh manager reads on the primary too"
    );
    assert!(pg_has_row(&mut read, 3).await);
    drop(read);
    assert!(!fresh.status()[0].hosts[1].fit_for_reads);
    fresh.close(Duration::from_secs(5)).await.unwrap();
    pair.resume_replay().await;
    eventually("the replica is taken back once it caught up", || async {
        manager.status()[0].hosts[1].fit_for_reads
    })
    .await;
    let mut read = manager.read_session::<Postgres>("default").unwrap();
    assert_eq!(pg_port(&mut read).await, replica);
    drop(read);
    manager.close(Duration::from_secs(5)).await.unwrap();
}

async fn reads_stick_to_the_primary_after_a_write_in_a_scope(
    manager: &BindManager,
    (primary, replica): (u16, u16),
) {
    manager
        .scope()
        .run(async {
            let mut read = dbscope::current_read_session::<Postgres>("default").await?;
            let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
                .fetch_one(&mut read)
                .await?;
            assert_eq!(
                port as u16, replica,
                "before any write, reads go to the replica"
            );
            let mut write = dbscope::current_session::<Postgres>("default").await?;
            sqlx::query("INSERT INTO replica_rows (id) VALUES (4)")
                .execute(&mut write)
                .await?;
            let sees_the_write =
                "SELECT inet_server_port(), (SELECT count(*) FROM replica_rows WHERE id = 4)";
            // The handle taken before the write, which ran its first statement on the replica.
            let (port, seen): (i32, i64) =
                sqlx::query_as(sees_the_write).fetch_one(&mut read).await?;
            assert_eq!(
                (port as u16, seen),
                (primary, 1),
                "after a write, a read handle taken before it reads on the primary and sees it"
            );
            let mut read = dbscope::current_read_session::<Postgres>("default").await?;
            let (port, seen): (i32, i64) =
                sqlx::query_as(sees_the_write).fetch_one(&mut read).await?;
            assert_eq!(
                (port as u16, seen),
                (primary, 1),
                "after a write, reads see it on the primary"
            );
            Ok::<_, dbscope::Error>(())
        })
        .await
        .unwrap();
    // A read-only scope: every session a read session, on the replica.
    manager
        .scope()
        .read_only()
        .run(async {
            let mut db = dbscope::current_session::<Postgres>("default").await?;
            let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
                .fetch_one(&mut db)
                .await?;
            assert_eq!(port as u16, replica);
            Ok::<_, dbscope::Error>(())
        })
        .await
        .unwrap();
    // Tokens out of a scope, and into the next one.
    let tokens = pg_write_in_scope(manager.scope(), 5).await;
    assert_eq!(tokens.len(), 1, "one token per bind committed");
    // A commit before the scope's end (an atomic block's, here) leaves its token too, though
    // the scope then ends with nothing left to commit.
    let mut early = None;
    manager
        .scope()
        .run(async {
            early = Some(Scope::current()?);
            dbscope::atomic::<Postgres>("default")
                .run(async {
                    let mut db = dbscope::current_session::<Postgres>("default").await?;
                    sqlx::query("INSERT INTO replica_rows (id) VALUES (21)")
                        .execute(&mut db)
                        .await?;
                    Ok::<_, dbscope::Error>(())
                })
                .await
        })
        .await
        .unwrap();
    assert_eq!(
        early.unwrap().read_tokens().len(),
        1,
        "an early commit's token"
    );
    manager
        .scope()
        .read_only()
        .read_after_all(tokens)
        .run(async {
            let mut db = dbscope::current_session::<Postgres>("default").await?;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM replica_rows WHERE id = 5")
                .fetch_one(&mut db)
                .await?;
            assert_eq!(n, 1, "the next scope reads its write");
            Ok::<_, dbscope::Error>(())
        })
        .await
        .unwrap();
}

async fn the_host_hook_chooses_per_session(pair: &PgPair, (primary, replica): (u16, u16)) {
    let choice = Arc::new(AtomicUsize::new(0));
    let seen = choice.clone();
    let rotated = format!(
        "{}&application_name=rotated",
        pair.primary_url().replace("/test", "/test?")
    );
    let rotated = rotated.replace("?&", "?");
    let config = BindConfig::new(pair.primary_url())
        .replica(pair.replica_url())
        .routing(routing());
    let manager = BindManager::builder()
        .bind("default", config)
        .host_hook("default", move |cx| {
            assert_eq!(cx.bind, "default");
            match seen.load(Ordering::SeqCst) {
                0 => HostChoice::Host(0),
                1 => HostChoice::Host(1),
                2 => HostChoice::Url(rotated.as_str().into()),
                _ => HostChoice::Route,
            }
        })
        .build()
        .unwrap();
    for (pick, expected) in [(0, primary), (1, replica), (0, primary), (3, replica)] {
        choice.store(pick, Ordering::SeqCst);
        let mut session = manager.read_session::<Postgres>("default").unwrap();
        assert_eq!(pg_port(&mut session).await, expected, "hook choice {pick}");
    }
    choice.store(2, Ordering::SeqCst);
    let mut session = manager.session::<Postgres>("default").unwrap();
    let name: String = sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!(
        name, "rotated",
        "other connect options get connections of their own"
    );
    drop(session);
    choice.store(0, Ordering::SeqCst);
    let mut session = manager.session::<Postgres>("default").unwrap();
    let name: String = sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_ne!(
        name, "rotated",
        "connections of different options never mix"
    );
    drop(session);
    choice.store(9, Ordering::SeqCst);
    let bad = BindManager::builder()
        .bind("default", BindConfig::new(pair.primary_url()))
        .host_hook("default", |_| HostChoice::Host(5))
        .build()
        .unwrap();
    let mut session = bad.session::<Postgres>("default").unwrap();
    let err = session.begin().await.unwrap_err();
    assert_eq!(
        err.routing_failure(),
        Some(RoutingFailure::UnknownHost),
        "{err}"
    );
    manager.close(Duration::from_secs(5)).await.unwrap();
}

async fn fallback_fail_is_a_typed_error(pair: &PgPair) {
    let mut routing = routing();
    routing.fallback = Fallback::Fail;
    routing.max_lag = Duration::from_millis(300);
    let manager = pg_manager(pair, |c| c.routing(routing));
    pair.pause_replay().await;
    pg_write(&manager, 6).await;
    eventually("the paused replica is set aside", || async {
        !manager.status()[0].hosts[1].fit_for_reads
    })
    .await;
    let mut read = manager.read_session::<Postgres>("default").unwrap();
    let err = read.begin().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Routing);
    assert_eq!(
        err.routing_failure(),
        Some(RoutingFailure::NoReplica),
        "{err}"
    );
    assert_eq!(err.bind(), Some("default"));
    pair.resume_replay().await;
    manager.close(Duration::from_secs(5)).await.unwrap();
}

async fn blocking_sessions_are_routed_too(manager: &BindManager, (primary, replica): (u16, u16)) {
    let bind = manager.blocking_bind::<Postgres>("default").unwrap();
    tokio::task::spawn_blocking(move || {
        let port = |session: &mut dbscope::blocking::BlockingSession<Postgres>| -> u16 {
            let port: i32 = session
                .fetch_one(sqlx::query_scalar("SELECT inet_server_port()"))
                .unwrap();
            port as u16
        };
        let mut write = bind.session();
        write
            .execute(sqlx::query("INSERT INTO replica_rows (id) VALUES (9)"))
            .unwrap();
        assert_eq!(port(&mut write), primary);
        write.commit().unwrap();
        let token = write
            .read_token()
            .cloned()
            .expect("a blocking commit's token");
        drop(write);
        let mut read = bind.read_session_after(Some(token));
        let n: i64 = read
            .fetch_one(sqlx::query_scalar(
                "SELECT count(*) FROM replica_rows WHERE id = 9",
            ))
            .unwrap();
        assert_eq!(n, 1, "a blocking read with the token sees the write");
        drop(read);
        let mut read = bind.read_session();
        assert_eq!(
            port(&mut read),
            replica,
            "a blocking read session runs on the replica"
        );
    })
    .await
    .unwrap();
    let blocking = manager.status().into_iter().find(|s| s.blocking).unwrap();
    assert_eq!(blocking.hosts.len(), 2, "the blocking face shows its hosts");
}

/// Autocommit statements land on their own: the session's `commit()` (a scope's end calls it)
/// makes their token from the primary's position, one round trip. With replay paused, a read
/// after it waits, then reads the row from the primary; without the token it would read the
/// replica, which lacks it.
async fn an_autocommit_write_has_a_token_too(
    pair: &PgPair,
    manager: &BindManager,
    (primary, _): (u16, u16),
) {
    pair.pause_replay().await;
    let mut write = manager
        .session::<Postgres>("default")
        .unwrap()
        .autocommit(true);
    for id in [11_i64, 12] {
        sqlx::query("INSERT INTO replica_rows (id) VALUES ($1)")
            .bind(id)
            .execute(&mut write)
            .await
            .unwrap();
    }
    assert!(write.read_token().is_none(), "none until asked for");
    write.commit().await.unwrap();
    let token = write
        .read_token()
        .cloned()
        .expect("an autocommit write's token");
    drop(write);
    let mut read = manager.read_session_after::<Postgres>(&token).unwrap();
    assert_eq!(pg_port(&mut read).await, primary);
    assert!(pg_has_row(&mut read, 12).await, "the last statement's row");
    drop(read);
    // In a scope in autocommit mode, the scope's end makes it.
    let tokens = pg_write_in_scope(manager.scope().autocommit(), 13).await;
    assert_eq!(tokens.len(), 1, "the scope's autocommit write has a token");
    let mut read = manager.read_session_after::<Postgres>(&tokens[0]).unwrap();
    assert!(pg_has_row(&mut read, 13).await);
    drop(read);
    pair.resume_replay().await;
}

/// The testing toolkit, in transaction mode, on a bind with replicas: the app's read sessions
/// see the test's writes, which no replica has (they are never committed), on the test's one
/// connection; and the test's end rolls them back.
async fn a_test_copy_of_a_bind_with_replicas_reads_its_own_writes(pair: &PgPair) {
    let config = dbscope::Config::default().bind(
        "default",
        BindConfig::new(pair.primary_url())
            .replica(pair.replica_url())
            .routing(routing()),
    );
    let t = dbscope::testing::TestDb::builder()
        .config(config)
        .start()
        .await
        .expect("a test copy of the bind");
    let manager = t.manager();
    let mut write = manager.session::<Postgres>("default").unwrap();
    sqlx::query("INSERT INTO replica_rows (id) VALUES (31)")
        .execute(&mut write)
        .await
        .unwrap();
    write.commit().await.unwrap();
    drop(write);
    let mut read = manager.read_session::<Postgres>("default").unwrap();
    assert!(pg_has_row(&mut read, 31).await, "the test's own write");
    assert!(!read.on_replica());
    drop(read);
    t.finish().await.unwrap();
    let mut primary = pg_connect(&pair.primary_url()).await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM replica_rows WHERE id = 31")
        .fetch_one(&mut primary)
        .await
        .unwrap();
    assert_eq!(left, 0, "rolled back with the test");
}

/// A manager shared by runtimes that come and go (each `#[tokio::test]` has its own): the first
/// routed checkout starts the prober on its runtime, which then ends; a later runtime's checkout
/// starts another, so that a token is still seen reached (with no fallback to the primary and a
/// long `token_wait`, a frozen view of the replica fails the read after 30 s).
async fn the_prober_outlives_the_runtime_that_started_it(pair: &PgPair, (_, replica): (u16, u16)) {
    let mut routing = routing();
    routing.fallback = Fallback::Fail;
    routing.token_wait = Duration::from_secs(30);
    let manager = pg_manager(pair, |c| c.routing(routing));
    let first = manager.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut read = first.read_session::<Postgres>("default").unwrap();
            assert_eq!(pg_port(&mut read).await, replica);
        });
    })
    .join()
    .expect("a read on a runtime of its own");
    let (token, _) = pg_write(&manager, 10).await;
    let mut read = manager.read_session_after::<Postgres>(&token).unwrap();
    assert_eq!(
        pg_port(&mut read).await,
        replica,
        "the replica, once it has the write"
    );
    assert!(pg_has_row(&mut read, 10).await);
    drop(read);
    manager.close(Duration::from_secs(5)).await.unwrap();
}

/// `examples/replicas.rs`, as a user runs it, against this pair: its writes on the primary, its
/// reads after a token and in a scope, each host's status. `cargo test` builds the examples
/// next to the test binaries (`target/<profile>/examples/`).
async fn the_replicas_example_runs_against_the_pair(pair: &PgPair, (primary, _): (u16, u16)) {
    let exe = std::env::current_exe().expect("this test binary");
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("replicas"))
        .expect("the target directory");
    assert!(
        example.exists(),
        "{} is missing: `cargo test --all-features` builds it",
        example.display()
    );
    let output = tokio::process::Command::new(&example)
        .env("DATABASE_URL", pair.primary_url())
        .env("DBSCOPE_BINDS__DEFAULT__REPLICAS", pair.replica_url())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the example finishes within a minute")
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the example failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("writes run on the primary (port {primary})")),
        "{stdout}"
    );
    assert!(stdout.contains("in a scope: reads on port"), "{stdout}");
    assert!(
        stdout.contains(&format!("after a write on port {primary}")),
        "{stdout}"
    );
}

/// Checkouts waiting for a primary make the prober probe fast, not in a loop: each waiter wakes
/// it, yet its rounds begin 50 ms apart at the quickest, so hosts that refuse at once are not
/// reconnected to thousands of times a second. Two listeners that accept and hang up stand for
/// such hosts and count the connections; the bound holds however slow the machine is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_checkouts_do_not_storm_hosts_that_refuse() {
    let mut counts = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        counts.push(count);
        urls.push(format!(
            "postgres://postgres@127.0.0.1:{port}/test?sslmode=disable"
        ));
    }
    let mut routing = routing();
    routing.failover_wait = Duration::from_secs(1);
    let began = Instant::now();
    let manager = BindManager::new(
        BindConfig::new(urls[0].as_str())
            .replica(urls[1].as_str())
            .routing(routing),
    )
    .unwrap();
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move {
                let mut session = manager.session::<Postgres>("default").unwrap();
                session.begin().await.expect_err("no host answers")
            })
        })
        .collect();
    for waiter in waiters {
        let err = waiter.await.unwrap();
        assert_eq!(
            err.routing_failure(),
            Some(RoutingFailure::NoPrimary),
            "{err}"
        );
    }
    let seen: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    let rounds = u32::try_from(began.elapsed().as_millis() / 50).unwrap() + 2;
    eprintln!("{seen:?} connections in at most {rounds} rounds");
    for n in seen {
        assert!(n >= 1, "each host was probed");
        assert!(
            n <= 2 * rounds as usize,
            "{n} connections to a refusing host in {:?}",
            began.elapsed()
        );
    }
    manager.close(Duration::from_secs(5)).await.unwrap();
}

/// The primary stopped hard and the replica promoted: writes resume on the new primary, every
/// error on the way is typed, and the old primary, started again, never gets a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_moves_writes_to_the_promoted_replica() {
    within_limit("failover", async {
        let pair = PgPair::start().await;
        let (old, new) = (pair.primary().port(), pair.replica().port());
        let mut routing = routing();
        routing.failover_wait = Duration::from_secs(2);
        let manager = pg_manager(&pair, |c| c.routing(routing).acquire_timeout(Duration::from_secs(2)));
        let mut setup = manager.session::<Postgres>("default").unwrap();
        sqlx::query("CREATE TABLE failover_rows (id bigint PRIMARY KEY, phase text)")
            .execute(&mut setup)
            .await
            .unwrap();
        setup.commit().await.unwrap();
        drop(setup);
        let (_, port) = pg_write_phase(&manager, 1, "before").await.unwrap();
        assert_eq!(port, old);
        pair.wait_caught_up().await;

        pair.stop_primary(Stop::Immediate).await;
        // Writes while there is no primary: each fails typed, naming the bind.
        let err = pg_write_phase(&manager, 2, "down").await.unwrap_err();
        assert_eq!(err.bind(), Some("default"), "{err}");
        eprintln!("a write with the primary down: {err}");

        let promote_started = Instant::now();
        let promote = pair.promote_replica();
        let writer = async {
            // Keep writing from before the promotion: the first commit after it is measured.
            let mut id = 10;
            loop {
                id += 1;
                match pg_write_phase(&manager, id, "after").await {
                    Ok((_, port)) => return (Instant::now(), port, id),
                    Err(e) => {
                        assert!(
                            matches!(e.kind(), ErrorKind::Routing | ErrorKind::Connect | ErrorKind::Query | ErrorKind::Timeout),
                            "an untyped failure: {e:?}"
                        );
                        assert_eq!(e.bind(), Some("default"));
                    }
                }
            }
        };
        let ((), (landed, port, _)) = tokio::join!(
            async {
                promote.await;
            },
            writer
        );
        let promoted = Instant::now();
        assert_eq!(port, new, "writes land on the promoted replica");
        // `landed` may precede the promotion's return (pg_ctl promote -w returns after).
        let after = landed.saturating_duration_since(promoted);
        eprintln!(
            "first write on the new primary {:?} after the promotion began, {after:?} after it returned ({:?} before)",
            landed - promote_started,
            promoted.saturating_duration_since(landed)
        );
        assert!(after < Duration::from_secs(5), "writes resumed {after:?} after the promotion");
        let status = &manager.status()[0];
        assert_eq!(status.hosts[1].role, HostRole::Primary);
        assert_eq!(status.hosts[1].timeline, Some(2), "the promoted replica is on a new timeline");

        // Migrations go to the primary of the moment too, on a connection of their own (the
        // promoted host's pool opens read-only connections; this one writes).
        let dir = std::env::temp_dir().join(format!("dbscope-failover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("1_after.sql"), "CREATE TABLE migrated_after (id bigint)").unwrap();
        let plan = dbscope::Migrations::new().directory("default", &dir);
        let report = manager.migrate_all(&plan).await.expect("migrations on the new primary");
        assert_eq!(report.done(), 1);
        let mut new_conn = pg_connect(&format!("postgres://postgres@127.0.0.1:{new}/test")).await;
        let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&mut new_conn)
            .await
            .unwrap();
        assert_eq!(recorded, 1, "recorded on the promoted primary");

        // The old primary comes back believing it is the primary: a split brain, refused.
        pair.primary().start_again().await;
        eventually("the old primary is probed again", || async {
            manager.status()[0].hosts[0].healthy
        })
        .await;
        let err = pg_write_phase(&manager, 1000, "split").await.unwrap_err();
        assert_eq!(err.routing_failure(), Some(RoutingFailure::SplitBrain), "{err}");
        std::fs::write(dir.join("2_split.sql"), "CREATE TABLE migrated_split (id bigint)").unwrap();
        let err = manager.migrate_all(&plan).await.unwrap_err();
        assert_eq!(err.routing_failure(), Some(RoutingFailure::SplitBrain), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let mut old_conn = pg_connect(&format!("postgres://postgres@127.0.0.1:{old}/test")).await;
        let written: i64 = sqlx::query_scalar("SELECT count(*) FROM failover_rows WHERE phase <> 'before'")
            .fetch_one(&mut old_conn)
            .await
            .unwrap();
        assert_eq!(written, 0, "the old primary never got a write after it went down");
        manager.close(Duration::from_secs(5)).await.unwrap();
    })
    .await;
}

/// A primary that goes silent (frozen: its connects hang, as behind a partition) while a write
/// waits for a connection to it: once the probe finds it gone and the replica promoted, the
/// write goes there, instead of waiting out its 60 s `acquire_timeout` and failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waiting_on_a_silent_primary_goes_to_the_promoted_one() {
    within_limit("silent primary", async {
        let pair = PgPair::start().await;
        let (old, new) = (pair.primary().port(), pair.replica().port());
        let mut routing = routing();
        routing.probe_timeout = Duration::from_millis(500);
        routing.failover_wait = Duration::from_secs(30);
        let manager = pg_manager(&pair, |c| {
            c.routing(routing).acquire_timeout(Duration::from_secs(60))
        });
        let mut setup = manager.session::<Postgres>("default").unwrap();
        sqlx::query("CREATE TABLE silent_rows (id bigint PRIMARY KEY)")
            .execute(&mut setup)
            .await
            .unwrap();
        setup.commit().await.unwrap();
        // Holds the pool's one connection, so that the next write's checkout connects anew.
        setup.begin().await.unwrap();
        assert_eq!(pg_port(&mut setup).await, old);
        pair.wait_caught_up().await;

        pair.primary().freeze();
        let write = async {
            let mut session = manager.session::<Postgres>("default").unwrap();
            sqlx::query("INSERT INTO silent_rows (id) VALUES (1)")
                .execute(&mut session)
                .await?;
            let port = pg_port(&mut session).await;
            session.commit().await?;
            Ok::<_, dbscope::Error>(port)
        };
        let promote = async {
            eventually("the silent primary is set aside", || async {
                !manager.status()[0].hosts[0].healthy
            })
            .await;
            pair.promote_replica().await;
        };
        let (written, ()) = tokio::join!(write, promote);
        assert_eq!(
            written.expect("the write lands on the promoted replica"),
            new
        );
        pair.primary().thaw();
        drop(setup);
        manager.close(Duration::from_secs(5)).await.unwrap();
    })
    .await;
}

async fn pg_write_phase(
    manager: &BindManager,
    id: i64,
    phase: &str,
) -> Result<(ReadToken, u16), dbscope::Error> {
    let mut session = manager.session::<Postgres>("default")?;
    sqlx::query("INSERT INTO failover_rows (id, phase) VALUES ($1, $2)")
        .bind(id)
        .bind(phase)
        .execute(&mut session)
        .await?;
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(&mut session)
        .await?;
    session.commit().await?;
    Ok((session.read_token().cloned().expect("a token"), port as u16))
}

/// MariaDB: reads on the replica, writes on the primary, a GTID token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_replicas() {
    within_limit("mariadb_replicas", async {
        let pair = MariaPair::start().await;
        let (primary, replica) = (pair.primary().port(), pair.replica().port());
        let config = BindConfig::new(pair.primary_url())
            .replica(pair.replica_url())
            .routing(routing())
            .acquire_timeout(Duration::from_secs(10));
        let manager = BindManager::new(config).unwrap();
        let port = async |session: &mut Session<MySql>| -> u16 {
            let port: u64 = sqlx::query_scalar("SELECT @@port")
                .fetch_one(&mut *session)
                .await
                .unwrap();
            port as u16
        };
        let mut write = manager.session::<MySql>("default").unwrap();
        sqlx::query("CREATE TABLE replica_rows (id BIGINT PRIMARY KEY)")
            .execute(&mut write)
            .await
            .unwrap();
        write.commit().await.unwrap();
        sqlx::query("INSERT INTO replica_rows VALUES (1)")
            .execute(&mut write)
            .await
            .unwrap();
        assert_eq!(port(&mut write).await, primary, "writes on the primary");
        write.commit().await.unwrap();
        let token = write.read_token().cloned().expect("a GTID token");
        eprintln!("MariaDB token: {token}");
        drop(write);
        pair.wait_caught_up().await;
        eventually("the replica is fit for reads", || async {
            manager.status()[0].hosts[1].fit_for_reads
        })
        .await;
        let mut read = manager.read_session_after::<MySql>(&token).unwrap();
        assert_eq!(
            port(&mut read).await,
            replica,
            "reads on the caught-up replica"
        );
        let err = sqlx::query("INSERT INTO replica_rows VALUES (-1)")
            .execute(&mut read)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("READ ONLY"),
            "a read session cannot write: {err}"
        );
        drop(read);

        // Replication stopped: a fresh token is past the replica, so its read goes to the
        // primary and sees the row.
        pair.stop_replication().await;
        let mut write = manager.session::<MySql>("default").unwrap();
        sqlx::query("INSERT INTO replica_rows VALUES (2)")
            .execute(&mut write)
            .await
            .unwrap();
        write.commit().await.unwrap();
        let token: ReadToken = write.read_token().unwrap().to_string().parse().unwrap();
        drop(write);
        let mut read = manager.read_session_after::<MySql>(&token).unwrap();
        assert_eq!(
            port(&mut read).await,
            primary,
            "a token past the replica reads from the primary"
        );
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM replica_rows WHERE id = 2")
            .fetch_one(&mut read)
            .await
            .unwrap();
        assert_eq!(n, 1);
        drop(read);
        let mut on_replica = my_connect(&pair.replica_url()).await;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM replica_rows WHERE id = 2")
            .fetch_one(&mut on_replica)
            .await
            .unwrap();
        assert_eq!(n, 0, "the replica lacks the row");
        pair.start_replication().await;
        eventually("the token's read goes to the caught-up replica", || async {
            let mut read = manager.read_session_after::<MySql>(&token).unwrap();
            let p = port(&mut read).await;
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM replica_rows WHERE id = 2")
                .fetch_one(&mut read)
                .await
                .unwrap();
            assert_eq!(n, 1);
            p == replica
        })
        .await;
        manager.close(Duration::from_secs(5)).await.unwrap();
        a_demoted_mariadb_primarys_refusal_is_retryable(&pair).await;
    })
    .await;
}

/// A switchover: the host a write session was routed to as the primary turns `read_only`. The
/// server refuses the session's next write (error 1290, for a user without SUPER, as an
/// application's should be), and the error says to run the work again, which the next
/// checkout sends to the primary of the moment. The same refusal on a read session is the
/// application's own mistake, not retryable.
async fn a_demoted_mariadb_primarys_refusal_is_retryable(pair: &MariaPair) {
    let mut admin = my_connect(&pair.primary_url()).await;
    for sql in [
        "CREATE USER IF NOT EXISTS app@'127.0.0.1' IDENTIFIED BY 'app-secret'",
        "GRANT ALL PRIVILEGES ON test.* TO app@'127.0.0.1'",
    ] {
        sqlx::query(sql).execute(&mut admin).await.unwrap();
    }
    let as_app = |url: String| url.replace("root@", "app:app-secret@");
    let config = BindConfig::new(as_app(pair.primary_url()))
        .replica(as_app(pair.replica_url()))
        .routing(routing());
    let manager = BindManager::new(config).unwrap();
    let mut write = manager.session::<MySql>("default").unwrap();
    write.begin().await.expect("routed to the primary");
    sqlx::query("SET GLOBAL read_only = 1")
        .execute(&mut admin)
        .await
        .unwrap();
    let refused = sqlx::query("INSERT INTO replica_rows VALUES (-2)")
        .execute(&mut write)
        .await
        .expect_err("a read-only server refuses the write");
    sqlx::query("SET GLOBAL read_only = 0")
        .execute(&mut admin)
        .await
        .unwrap();
    let refused = dbscope::Error::from(refused);
    assert!(
        refused.to_string().contains("read-only") || format!("{refused:?}").contains("1290"),
        "{refused:?}"
    );
    assert!(refused.is_retryable(), "{refused}");
    drop(write);
    let mut read = manager.read_session::<MySql>("default").unwrap();
    let mine = sqlx::query("INSERT INTO replica_rows VALUES (-3)")
        .execute(&mut read)
        .await
        .expect_err("a read session cannot write");
    assert!(!dbscope::Error::from(mine).is_retryable());
    drop(read);
    // Nor a write session's own read-only transaction, on the primary as it is.
    let mut read_only = manager.session::<MySql>("default").unwrap().read_only(true);
    let refused = sqlx::query("INSERT INTO replica_rows VALUES (-4)")
        .execute(&mut read_only)
        .await
        .expect_err("a read-only session cannot write");
    assert!(!dbscope::Error::from(refused).is_retryable());
    drop(read_only);
    manager.close(Duration::from_secs(5)).await.unwrap();
}

/// `replicas` and `routing` from code, TOML and the environment (both list forms).
#[test]
#[expect(
    clippy::result_large_err,
    reason = "figment's Jail dictates the closure's error type"
)]
fn replicas_and_routing_load_from_toml_and_env() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "dbscope.toml",
            r#"
            [binds.main]
            url = "postgres://app:secret@db1/main"
            replicas = ["postgres://app:secret@db2/main", "postgres://app:secret@db3/main"]
            routing = { max_lag = "2s", probe_interval = "250ms", fallback = "fail", token_wait = "1s", failover_wait = "3s" }
            "#,
        )?;
        let config = dbscope::Config::from_file("dbscope.toml").expect("loads");
        let main = &config.binds["main"];
        assert_eq!(main.replicas.len(), 2);
        assert_eq!(main.replicas[1].expose(), "postgres://app:secret@db3/main");
        assert_eq!(main.routing.max_lag, Duration::from_secs(2));
        assert_eq!(main.routing.probe_interval, Duration::from_millis(250));
        assert_eq!(main.routing.fallback, Fallback::Fail);
        assert_eq!(main.routing.token_wait, Duration::from_secs(1));
        assert_eq!(main.routing.failover_wait, Duration::from_secs(3));
        assert!(
            !format!("{main:?}").contains("secret"),
            "no password in Debug"
        );

        jail.set_env("DBSCOPE_BINDS__MAIN__URL", "postgres://db1/main");
        jail.set_env(
            "DBSCOPE_BINDS__MAIN__REPLICAS",
            "postgres://db2/main, postgres://db3/main",
        );
        jail.set_env("DBSCOPE_BINDS__MAIN__ROUTING__MAX_LAG", "750ms");
        let config = dbscope::Config::from_env().expect("loads");
        let main = &config.binds["main"];
        let urls: Vec<&str> = main.replicas.iter().map(|u| u.expose()).collect();
        assert_eq!(urls, ["postgres://db2/main", "postgres://db3/main"]);
        assert_eq!(main.routing.max_lag, Duration::from_millis(750));
        assert_eq!(main.routing.fallback, Fallback::Primary, "the default");

        jail.set_env("DBSCOPE_BINDS__MAIN__REPLICAS", "[postgres://db4/main]");
        let config = dbscope::Config::from_env().expect("loads");
        assert_eq!(
            config.binds["main"].replicas[0].expose(),
            "postgres://db4/main"
        );
        Ok(())
    });
}

/// What cannot have replicas is refused when the manager is built, naming the bind.
#[test]
fn binds_that_cannot_have_replicas_are_refused_at_build() {
    let err = BindManager::new(BindConfig::new("sqlite::memory:").replica("sqlite::memory:"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(err.bind(), Some("default"));
    let err = BindManager::builder()
        .bind("main", BindConfig::new("sqlite::memory:"))
        .host_hook("other", |_| HostChoice::Route)
        .build()
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::UnknownBind,
        "a hook on no bind: {err}"
    );
    // A plain bind shows no hosts.
    let manager = BindManager::new(BindConfig::new("sqlite::memory:")).unwrap();
    assert!(manager.status()[0].hosts.is_empty());
    // Hosts are listed before any connection, their passwords masked.
    let manager = BindManager::new(
        BindConfig::new("postgres://app:s3cret@db1/main").replica("postgres://app:pa55@db2/main"),
    )
    .unwrap();
    let hosts = &manager.status()[0].hosts;
    assert_eq!(hosts.len(), 2);
    assert!(
        hosts
            .iter()
            .all(|h| h.role == HostRole::Unknown && !h.healthy)
    );
    let shown = format!("{hosts:?} {manager:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("pa55"),
        "{shown}"
    );
    assert!(hosts[1].address.contains("db2"), "{}", hosts[1].address);
}
