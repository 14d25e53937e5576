//! A small notes app on axum, written once for any backend, and the app that
//! `tests/example_notes_app.rs` tests with dbscope's testing toolkit, in both modes.
//!
//! ```sh
//! cargo run --example notes_app --features axum,sqlite             # SQLite in memory: checks itself, exits
//! cargo run --example notes_app --features axum,sqlite -- --serve  # keeps serving on 127.0.0.1:3000
//! ```
//!
//! - `POST /notes/{title}` with the note's text: 201, or 409 when the title is taken (the
//!   request's scope rolls back). Once the note is committed, an after-commit hook puts a
//!   message in the app's outbox (standing in for an email).
//! - `GET /notes/{title}`: the note's text, or 404.
//!
//! The schema is in `examples/migrations/notes_app`, in sqlx's format.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use dbscope::axum::{DbError, DbSession};
use dbscope::tower::ScopeLayer;
use dbscope::{Backend, BindManager, DefaultBind, Scope};
use sqlx::{AssertSqlSafe, Row};

/// What the app sends after a note is committed: a message per note (an email, in a real app).
pub type Outbox = Arc<Mutex<Vec<String>>>;

/// The request's session on the `default` bind.
type Db<DB> = DbSession<DefaultBind<DB>>;

/// The app: its routes, each request in a scope of its own on `manager` (committed on 2xx,
/// rolled back otherwise).
pub fn router<DB>(manager: &BindManager, outbox: Outbox) -> Router
where
    DB: Backend,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'c> &'c mut dbscope::Session<DB>: sqlx::Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    Router::new()
        .route("/notes/{title}", post(create::<DB>).get(read::<DB>))
        .layer(ScopeLayer::new(manager))
        .with_state(outbox)
}

async fn create<DB>(
    Path(title): Path<String>,
    State(outbox): State<Outbox>,
    mut db: Db<DB>,
    body: String,
) -> Result<StatusCode, DbError>
where
    DB: Backend,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'c> &'c mut dbscope::Session<DB>: sqlx::Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<DB>,
{
    let insert = format!(
        "INSERT INTO notes (title, body) VALUES ({}, {})",
        param::<DB>(1),
        param::<DB>(2)
    );
    let inserted = sqlx::query(AssertSqlSafe(insert))
        .bind(title.clone())
        .bind(body)
        .execute(&mut *db)
        .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Ok(StatusCode::CONFLICT); // a 4xx: the scope rolls back
        }
        Err(e) => return Err(e.into()),
    }
    // Runs once the note is committed, never for a request that rolls back.
    Scope::current()?.after_commit(move || {
        let (outbox, title) = (outbox.clone(), title.clone());
        async move {
            outbox
                .lock()
                .unwrap()
                .push(format!("note `{title}` stored"))
        }
    });
    Ok(StatusCode::CREATED)
}

async fn read<DB>(
    Path(title): Path<String>,
    mut db: Db<DB>,
) -> Result<Result<String, StatusCode>, DbError>
where
    DB: Backend,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'c> &'c mut dbscope::Session<DB>: sqlx::Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: for<'q> sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let select = format!("SELECT body FROM notes WHERE title = {}", param::<DB>(1));
    let row = sqlx::query(AssertSqlSafe(select))
        .bind(title)
        .fetch_optional(&mut *db)
        .await?;
    Ok(row.map(|r| r.get(0)).ok_or(StatusCode::NOT_FOUND))
}

/// The `n`th statement parameter in the backend's syntax.
fn param<DB: sqlx::Database>(n: usize) -> String {
    if DB::NAME == "PostgreSQL" {
        format!("${n}")
    } else {
        "?".to_owned()
    }
}

#[allow(dead_code)] // the tests include this file for its router, not for `main`
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use sqlx::Sqlite;
    let manager = BindManager::new(dbscope::BindConfig::new("sqlite::memory:"))?;
    let mut setup = manager.session::<Sqlite>("default")?;
    let schema = include_str!("migrations/notes_app/1_notes.sql");
    sqlx::raw_sql(schema).execute(&mut setup).await?;
    setup.commit().await?;
    setup.close().await?;

    let outbox = Outbox::default();
    let app = router::<Sqlite>(&manager, outbox.clone());
    let serve = std::env::args().any(|a| a == "--serve");
    let addr = if serve {
        "127.0.0.1:3000"
    } else {
        "127.0.0.1:0"
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    if serve {
        println!("notes app on {base}: POST and GET /notes/{{title}}; Ctrl-C stops it");
        tokio::signal::ctrl_c().await?;
    } else {
        self_check(&base, &outbox).await?;
        println!("notes app: self-check passed on {base}");
    }
    server.abort();
    manager.close(std::time::Duration::from_secs(5)).await?;
    Ok(())
}

/// Stores a note, reads it back, and is refused a second note of the same title.
#[allow(dead_code)]
async fn self_check(base: &str, outbox: &Outbox) -> Result<(), Box<dyn std::error::Error>> {
    let client = reqwest::Client::new();
    let url = format!("{base}/notes/milk");
    let created = client.post(&url).body("buy milk").send().await?.status();
    let again = client.post(&url).body("twice").send().await?.status();
    let body = client.get(&url).send().await?.text().await?;
    let missing = client.get(format!("{base}/notes/none")).send().await?;
    let sent = outbox.lock().unwrap().clone();
    let ok = created == 201 && again == 409 && body == "buy milk" && missing.status() == 404;
    if !ok || sent != ["note `milk` stored"] {
        return Err(format!("self-check failed: {created} {again} {body:?} {sent:?}").into());
    }
    Ok(())
}
