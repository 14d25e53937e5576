//! A notes service on actix-web: one scope per request, committed before the response is sent,
//! rolled back by an error status; one route reads in autocommit mode.
//!
//! ```sh
//! cargo run --example actix --features actix                 # sqlite::memory:, 127.0.0.1:8080
//! DATABASE_URL=sqlite://notes.db ADDR=127.0.0.1:3000 cargo run --example actix --features actix
//! ```
//!
//! Routes: `POST /notes` (the body is the note), `GET /notes`, `GET /notes/{id}`,
//! `GET /notes/count`.

use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use dbscope::actix::{DbError, DbSession, ScopeMiddleware};
use dbscope::{BindConfig, BindManager, DefaultBind};
use serde::Serialize;
use sqlx::Sqlite;

/// The request's session of the `default` bind.
type Db = DbSession<DefaultBind<Sqlite>>;

#[derive(Serialize)]
struct Note {
    id: i64,
    body: String,
}

/// `POST /notes`: stores the request body as a note. A body some note already has answers 409,
/// and the 409 rolls the insert back.
async fn create(mut db: Db, body: String) -> Result<HttpResponse, DbError> {
    let id: i64 = sqlx::query_scalar("INSERT INTO notes (body) VALUES (?) RETURNING id")
        .bind(&body)
        .fetch_one(&mut *db)
        .await?;
    let copies: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes WHERE body = ?")
        .bind(&body)
        .fetch_one(&mut *db)
        .await?;
    if copies > 1 {
        return Ok(HttpResponse::Conflict().body("a note says that already\n"));
    }
    // The middleware commits before this 201 leaves the server.
    Ok(HttpResponse::Created().json(Note { id, body }))
}

/// `GET /notes`: every note.
async fn list(mut db: Db) -> Result<HttpResponse, DbError> {
    let notes: Vec<(i64, String)> = sqlx::query_as("SELECT id, body FROM notes ORDER BY id")
        .fetch_all(&mut *db)
        .await?;
    let notes: Vec<Note> = notes
        .into_iter()
        .map(|(id, body)| Note { id, body })
        .collect();
    Ok(HttpResponse::Ok().json(notes))
}

/// `GET /notes/{id}`: one note, or 404.
async fn get(mut db: Db, id: web::Path<i64>) -> Result<HttpResponse, DbError> {
    let body: Option<String> = sqlx::query_scalar("SELECT body FROM notes WHERE id = ?")
        .bind(*id)
        .fetch_optional(&mut *db)
        .await?;
    Ok(match body {
        Some(body) => HttpResponse::Ok().json(Note { id: *id, body }),
        None => HttpResponse::NotFound().finish(),
    })
}

/// `GET /notes/count`: a read in autocommit mode (its route's middleware says so): no BEGIN,
/// no COMMIT.
async fn count(mut db: Db) -> Result<String, DbError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes")
        .fetch_one(&mut *db)
        .await?;
    Ok(format!("{n}\n"))
}

fn config(url: &str) -> BindConfig {
    let config = BindConfig::new(url);
    if url.contains(":memory:") {
        // An in-memory database lives as long as a connection to it: keep exactly one.
        config
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        config
    }
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".to_owned());
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let manager = BindManager::new(config(&url))?;

    let mut session = manager.session::<Sqlite>("default")?;
    sqlx::query("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&mut session)
        .await?;
    session.commit().await?;
    drop(session);

    // Built once, cloned into each worker's app; a bad route scope fails here, not per request.
    let every_request = ScopeMiddleware::new(&manager);
    let reads_only = ScopeMiddleware::with_scope(manager.scope().autocommit())?;

    println!("notes on http://{addr}, stored in {url}");
    HttpServer::new(move || {
        App::new()
            // Registered before `/notes/{id}`, which would take "count" for an id.
            .service(
                web::resource("/notes/count")
                    .wrap(reads_only.clone())
                    .get(count),
            )
            .service(web::resource("/notes").post(create).get(list))
            .route("/notes/{id}", web::get().to(get))
            .wrap(every_request.clone())
    })
    // A client that hangs up mid-request then rolls back instead of committing unseen: see
    // "The outcome of a request" in `dbscope::actix`.
    .h1_allow_half_closed(false)
    .bind(addr.as_str())?
    .run()
    .await?;

    // Ctrl-C: actix has drained its requests; give the connections back.
    manager.close(Duration::from_secs(5)).await?;
    Ok(())
}
