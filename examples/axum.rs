//! A small notes service on axum: one scope per request, committed before the response.
//!
//! ```sh
//! cargo run --example axum --features axum            # SQLite in memory, on 127.0.0.1:3000
//! DATABASE_URL=sqlite://notes.db cargo run --example axum --features axum
//! ```
//!
//! Then, from another terminal:
//!
//! ```sh
//! curl -i -X POST localhost:3000/notes -d 'buy milk'   # 201, committed before this line prints
//! curl -X POST localhost:3000/notes -d ''              # 422: empty notes are refused, rolled back
//! curl localhost:3000/notes                            # the list, read in autocommit mode
//! curl localhost:3000/notes/1
//! ```

use std::net::SocketAddr;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use dbscope::axum::{DbError, DbSession};
use dbscope::tower::ScopeLayer;
use dbscope::{BindConfig, BindManager, DefaultBind, Scope};
use serde::Serialize;
use sqlx::Sqlite;

/// The request's session on the `default` bind.
type Db = DbSession<DefaultBind<Sqlite>>;

#[derive(Serialize, sqlx::FromRow)]
struct Note {
    id: i64,
    body: String,
}

async fn create(mut db: Db, body: String) -> Result<(StatusCode, Json<Note>), DbError> {
    let note: Note = sqlx::query_as("INSERT INTO notes (body) VALUES (?) RETURNING id, body")
        .bind(&body)
        .fetch_one(&mut *db)
        .await?;
    // Runs once the note is committed, never for a request that rolls back.
    let id = note.id;
    Scope::current()?.after_commit(move || async move { println!("note {id} stored") });
    Ok((StatusCode::CREATED, Json(note)))
}

/// Inserts an empty note, then refuses it: the 422 rolls the insert back.
async fn create_checked(db: Db, body: String) -> Result<(StatusCode, Json<Note>), DbError> {
    let created = create(db, body.clone()).await?;
    if body.trim().is_empty() {
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, created.1));
    }
    Ok(created)
}

async fn list(mut db: Db) -> Result<Json<Vec<Note>>, DbError> {
    let notes = sqlx::query_as("SELECT id, body FROM notes ORDER BY id")
        .fetch_all(&mut *db)
        .await?;
    Ok(Json(notes))
}

async fn one(Path(id): Path<i64>, mut db: Db) -> Result<Result<Json<Note>, StatusCode>, DbError> {
    let note = sqlx::query_as("SELECT id, body FROM notes WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *db)
        .await?;
    Ok(note.map(Json).ok_or(StatusCode::NOT_FOUND))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".to_owned());
    let manager = BindManager::new(BindConfig::new(url))?;
    let mut setup = manager.session::<Sqlite>("default")?;
    sqlx::query("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&mut setup)
        .await?;
    setup.commit().await?;
    setup.close().await?;

    // Reads need no transaction: this route runs in autocommit mode.
    let reads = ScopeLayer::with_scope(manager.scope().autocommit())?;
    let app = Router::new()
        .route(
            "/notes",
            post(create_checked).merge(get(list).route_layer(reads.clone())),
        )
        .route("/notes/{id}", get(one).route_layer(reads))
        .layer(ScopeLayer::new(&manager));

    let addr = SocketAddr::from(([127, 0, 0, 1], 3000));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("notes service on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            tokio::signal::ctrl_c().await.ok();
        })
        .await?;
    manager.close(std::time::Duration::from_secs(5)).await?;
    Ok(())
}
