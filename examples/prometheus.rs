//! Prometheus metrics from an axum app: each bind's OpenTelemetry database client metrics
//! (`db.client.connection.*`, `db.client.operation.duration`) and dbscope's own, served at
//! `/metrics` by `metrics-exporter-prometheus`.
//!
//! ```sh
//! cargo run --example prometheus --features axum,metrics
//! ```
//!
//! It serves on a free port of 127.0.0.1, sends itself a few requests, prints what a Prometheus
//! scrape of `/metrics` reads, and exits.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use dbscope::axum::{DbError, DbSession};
use dbscope::tower::ScopeLayer;
use dbscope::{BindConfig, BindManager, DefaultBind};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::Sqlite;

type Db = DbSession<DefaultBind<Sqlite>>;

async fn create(mut db: Db, body: String) -> Result<StatusCode, DbError> {
    sqlx::query("INSERT INTO notes (body) VALUES (?)")
        .bind(&body)
        .execute(&mut *db)
        .await?;
    // An empty note is refused: 422, and the scope rolls the insert back.
    Ok(if body.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::CREATED
    })
}

async fn count(mut db: Db) -> Result<String, DbError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes")
        .fetch_one(&mut *db)
        .await?;
    Ok(n.to_string())
}

fn app(manager: &BindManager, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/notes", post(create).get(count))
        .layer(ScopeLayer::new(manager))
        // Outside the scope: a scrape opens no session.
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The recorder first: binds register their metrics with the recorder in force when they
    // are built.
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;

    let manager = BindManager::new(BindConfig::new("sqlite::memory:"))?;
    let mut session = manager.session::<Sqlite>("default")?;
    sqlx::query("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&mut session)
        .await?;
    session.commit().await?;
    drop(session);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(axum::serve(listener, app(&manager, handle)).into_future());

    let client = reqwest::Client::new();
    for body in ["buy milk", "", "call mum"] {
        let status = client
            .post(format!("{base}/notes"))
            .body(body)
            .send()
            .await?
            .status();
        println!("POST /notes {body:?} -> {status}");
    }
    let n = client
        .get(format!("{base}/notes"))
        .send()
        .await?
        .text()
        .await?;
    println!("GET /notes -> {n} notes\n");
    let scrape = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    println!("GET /metrics:\n{scrape}");

    server.abort();
    manager.close(std::time::Duration::from_secs(5)).await?;
    Ok(())
}
