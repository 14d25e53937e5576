//! HTTP under abuse, and scopes by the million: nothing leaks.
//!
//! 1. 10,000 clients hang up mid-request. An axum app behind dbscope's `ScopeLayer` (on the
//!    shared local PostgreSQL, with this test's own `application_name`) has a handler that
//!    inserts a row, tells the test it did, and then never answers on its own: one request in
//!    [`MID_STATEMENT_EVERY`] first runs `pg_sleep(0.02)`, so that the hang-up usually cuts a
//!    statement off mid-flight; the rest wait idle in their transaction. A raw TCP client sends the request,
//!    waits for that word and closes the socket. Afterwards: no connection in use
//!    (`manager.status()`), none idle in transaction (`pg_stat_activity`), no row committed, and
//!    the process's resident memory within 10% of where it was after a warm-up of 1,000.
//! 2. 1,000,000 scopes in a loop, 1 in 1,000 of them using a session on in-memory SQLite: the
//!    resident memory, sampled every 100,000 scopes after a warm-up, stays within 10% of where
//!    it started.
//!
//! Memory is the resident set of this process (`/proc/self/statm`, pages of 4 KiB), read after
//! the pool has settled. A warm-up first runs the same load, so that the allocator's arenas and
//! the runtime's buffers reach their working size before the baseline is read: what grows after
//! that is what the load leaves behind. The two tests run one at a time, so that neither's
//! memory counts in the other's figures.
//!
//! Run with `--nocapture` for the figures.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use common::{Kind, TestDb, eventually, sql};
use dbscope::axum::{DbError, DbSession};
use dbscope::tower::ScopeLayer;
use dbscope::{BindConfig, BindManager, DefaultBind, current_session};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

/// One test at a time: both read this process's memory.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DISCONNECTS: u64 = 10_000;
const DISCONNECT_WARM_UP: u64 = 1_000;
/// Clients in flight at once, on a pool of [`POOL`].
const CONCURRENCY: usize = 32;
const POOL: u32 = 16;
/// One request in this many is cut off in the middle of a statement (`pg_sleep(0.02)`), the
/// others idle in their transaction. A statement cut off costs a connection today (the session
/// is poisoned and its connection discarded), or, once cancelled sessions are recovered in the
/// background, the rest of the statement's run: few enough of them keep the test short either
/// way.
const MID_STATEMENT_EVERY: u64 = 4;
const SCOPES: u64 = 1_000_000;
const SCOPE_WARM_UP: u64 = 20_000;
/// One scope in this many opens a session and writes.
const SESSION_EVERY: u64 = 1_000;
/// How much the resident set may grow over its baseline.
const RSS_SLACK: f64 = 0.10;

/// This process's resident set, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field");
    pages * 4096
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn assert_flat(what: &str, baseline: u64, after: u64) {
    let limit = (baseline as f64 * (1.0 + RSS_SLACK)) as u64;
    assert!(
        after <= limit,
        "{what}: resident memory grew from {:.1} MiB to {:.1} MiB, over the {:.0}% allowed",
        mib(baseline),
        mib(after),
        RSS_SLACK * 100.0
    );
}

// ----- 1. client disconnects -----

/// The app's state: the table, and for each request in flight, the word its client waits for.
#[derive(Clone)]
struct App {
    table: Arc<str>,
    written: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
}

/// Inserts row `id`, says so, then waits for ever (on `pg_sleep(0.02)` first for one in
/// [`MID_STATEMENT_EVERY`]): only the client's hang-up ends it.
async fn hold(
    State(app): State<App>,
    Path(id): Path<u64>,
    mut db: DbSession<DefaultBind<sqlx::Postgres>>,
) -> Result<StatusCode, DbError> {
    // Taken first, so that a failure drops it and the client hears of it at once.
    let written = app.written.lock().unwrap().remove(&id);
    let insert = format!("INSERT INTO {} (id) VALUES ({id})", app.table);
    sqlx::query(sql(insert)).execute(&mut *db).await?;
    if let Some(written) = written {
        let _ = written.send(());
    }
    if id % MID_STATEMENT_EVERY == 1 {
        sqlx::query("SELECT pg_sleep(0.02)")
            .execute(&mut *db)
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(StatusCode::OK)
}

/// Sends `POST /hold/{id}`, waits until the handler has written, and hangs up.
async fn hang_up(addr: SocketAddr, app: &App, id: u64) -> Result<(), String> {
    let (tx, written) = oneshot::channel();
    app.written.lock().unwrap().insert(id, tx);
    let mut socket = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("request {id}: connect: {e}"))?;
    let request =
        format!("POST /hold/{id} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n");
    socket
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("request {id}: send: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(30), written).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(format!("request {id}: the handler failed before writing")),
        Err(_) => return Err(format!("request {id}: nothing written within 30 s")),
    }
    drop(socket); // before any answer: the handler has none yet, and will have none
    Ok(())
}

/// Runs requests `ids` with [`CONCURRENCY`] clients at a time; the failures.
async fn hang_ups(addr: SocketAddr, app: &App, ids: std::ops::Range<u64>) -> Vec<String> {
    futures_util::stream::iter(ids)
        .map(|id| hang_up(addr, app, id))
        .buffer_unordered(CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await
}

/// Waits until the pool and the server are settled: nothing in use, nothing open, and the
/// server holding exactly the connections the pool has (a discarded one's backend gone).
async fn settled(db: &TestDb, manager: &BindManager) {
    eventually("no connection in use", || {
        let status = manager.status().remove(0);
        async move { status.in_use == 0 && status.waiting == 0 }
    })
    .await;
    eventually("no transaction idle on the server", || async {
        db.open_transactions().await == Some(0)
    })
    .await;
    eventually("the server's connections are the pool's", || async {
        let pooled = manager.status()[0].connections as i64;
        db.server_connections().await == Some(pooled)
    })
    .await;
}

/// Opens the pool to its full size, so that the two readings of memory see as many connections
/// (each holds buffers and a statement cache) whatever the churn left.
async fn fill_pool(manager: &BindManager) {
    let mut held = Vec::new();
    for _ in 0..POOL {
        let mut session = manager.session::<sqlx::Postgres>("default").unwrap();
        session.begin().await.expect("a connection of the pool");
        held.push(session);
    }
    for session in held {
        session.close().await.unwrap();
    }
}

async fn client_disconnects_mid_request_leak_nothing_body() {
    let db = TestDb::new(Kind::Postgres).await;
    let manager = BindManager::builder()
        .bind("default", db.config().max_connections(POOL))
        .build()
        .unwrap();
    let mut setup = manager.session::<sqlx::Postgres>("default").unwrap();
    let ddl = format!("CREATE TABLE {} (id BIGINT PRIMARY KEY)", db.table);
    sqlx::query(sql(ddl)).execute(&mut setup).await.unwrap();
    setup.commit().await.unwrap();
    setup.close().await.unwrap();

    let app = App {
        table: db.table.as_str().into(),
        written: Arc::default(),
    };
    let router = Router::new()
        .route("/hold/{id}", post(hold))
        .layer(ScopeLayer::new(&manager))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let failures = hang_ups(addr, &app, 0..DISCONNECT_WARM_UP).await;
    assert!(failures.is_empty(), "warm-up: {failures:?}");
    settled(&db, &manager).await;
    fill_pool(&manager).await;
    let before = rss();
    let opened_before = manager.status()[0].opened;

    let start = Instant::now();
    let failures = hang_ups(
        addr,
        &app,
        DISCONNECT_WARM_UP..DISCONNECT_WARM_UP + DISCONNECTS,
    )
    .await;
    let elapsed = start.elapsed();
    assert!(
        failures.is_empty(),
        "{} requests failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    settled(&db, &manager).await;
    fill_pool(&manager).await;
    let after = rss();

    let status = manager.status().remove(0);
    let committed: i64 = {
        let mut check = manager.session::<sqlx::Postgres>("default").unwrap();
        let n = sqlx::query_scalar(sql(format!("SELECT COUNT(*) FROM {}", db.table)))
            .fetch_one(&mut check)
            .await
            .unwrap();
        check.close().await.unwrap();
        n
    };
    println!(
        "{DISCONNECTS} client disconnects mid-request in {elapsed:.1?} ({CONCURRENCY} at a time): \
         in use {}, idle in transaction {:?}, rows committed {committed}, connections opened {} \
         (discarded {}), on the server {:?} (pooled {}), resident memory {:.1} MiB -> {:.1} MiB ({:+.1}%)",
        status.in_use,
        db.open_transactions().await,
        status.opened - opened_before,
        status.discarded,
        db.server_connections().await,
        status.connections,
        mib(before),
        mib(after),
        (after as f64 / before as f64 - 1.0) * 100.0
    );
    assert_eq!(status.in_use, 0);
    assert_eq!(db.open_transactions().await, Some(0));
    assert_eq!(committed, 0, "every request was cut off before its commit");
    assert!(app.written.lock().unwrap().is_empty(), "every handler ran");
    assert_flat("10,000 client disconnects", before, after);

    server.abort();
    manager.close(Duration::from_secs(10)).await.unwrap();
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnects_mid_request_leak_nothing() {
    let _one_at_a_time = SERIAL.lock().await;
    common::within_limit(
        "client_disconnects_mid_request_leak_nothing",
        client_disconnects_mid_request_leak_nothing_body(),
    )
    .await;
}

// ----- 2. a million scopes -----

/// Scopes `range`, every [`SESSION_EVERY`]th writing a row through the scope's session.
async fn scopes(manager: &BindManager, range: std::ops::Range<u64>) {
    for i in range {
        if i % SESSION_EVERY == 0 {
            dbscope::scope(manager, async {
                let mut session = current_session::<sqlx::Sqlite>("main").await?;
                sqlx::query("INSERT INTO hits (n) VALUES (?)")
                    .bind(i as i64)
                    .execute(&mut session)
                    .await?;
                Ok::<_, dbscope::Error>(())
            })
            .await
            .expect("a scope with a session");
        } else {
            dbscope::scope(manager, async { Ok::<_, dbscope::Error>(()) })
                .await
                .expect("an empty scope");
        }
    }
}

async fn a_million_scopes_keep_memory_flat_body() {
    let manager = BindManager::builder()
        .bind("main", BindConfig::new("sqlite::memory:"))
        .build()
        .unwrap();
    let mut setup = manager.session::<sqlx::Sqlite>("main").unwrap();
    sqlx::query("CREATE TABLE hits (n INTEGER PRIMARY KEY)")
        .execute(&mut setup)
        .await
        .unwrap();
    setup.commit().await.unwrap();
    setup.close().await.unwrap();

    scopes(&manager, 0..SCOPE_WARM_UP).await;
    let baseline = rss();
    let mut samples = Vec::new();
    let start = Instant::now();
    let chunk = SCOPES / 10;
    for c in 0..10 {
        let from = SCOPE_WARM_UP + c * chunk;
        scopes(&manager, from..from + chunk).await;
        samples.push(rss());
    }
    let elapsed = start.elapsed();
    let peak = *samples.iter().max().unwrap();

    let mut check = manager.session::<sqlx::Sqlite>("main").unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hits")
        .fetch_one(&mut check)
        .await
        .unwrap();
    check.close().await.unwrap();
    let status = manager.status().remove(0);
    println!(
        "{SCOPES} scopes ({} with a session) in {elapsed:.1?}: resident memory {:.1} MiB after \
         the warm-up, then {:?} MiB every 100,000 (peak {:+.1}%)",
        SCOPES / SESSION_EVERY,
        mib(baseline),
        samples
            .iter()
            .map(|s| (mib(*s) * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        (peak as f64 / baseline as f64 - 1.0) * 100.0
    );
    assert_eq!(rows as u64, (SCOPE_WARM_UP + SCOPES) / SESSION_EVERY);
    assert_eq!(status.in_use, 0, "{status:?}");
    assert_flat("1,000,000 scopes", baseline, peak);
    manager.close(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_scopes_keep_memory_flat() {
    let _one_at_a_time = SERIAL.lock().await;
    common::within_limit(
        "a_million_scopes_keep_memory_flat",
        a_million_scopes_keep_memory_flat_body(),
    )
    .await;
}
