//! Read-your-writes across requests with dbscope's own tokens: a scope that writes hands out
//! the [`ReadToken`](dbscope::ReadToken)s of its commit; the next scope, given them back, reads
//! on a replica that has replayed that far, or on the primary.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5433/test \
//! DBSCOPE_BINDS__DEFAULT__REPLICAS=postgres://postgres@127.0.0.1:5434/test \
//!     cargo run --example read_your_writes --features postgres
//! ```
//!
//! The token is the commit's WAL position, read in the same message as the COMMIT (no extra
//! round trip), and the primary's timeline: a token from before a failover never sends a read
//! to a replica. Its text form goes in a header or a cookie; the tower and actix-web layers do
//! that for you with `.read_token_header("x-read-token")` or `.read_token_cookie(…)`.

use std::time::Duration;

use dbscope::{BindManager, Config, ReadToken, Scope, current_session};
use sqlx::Postgres;

/// A "request" that writes: returns the tokens to hand the client.
async fn post_note(manager: &BindManager, body: &str) -> Result<Vec<ReadToken>, dbscope::Error> {
    let mut scope = None;
    manager
        .scope()
        .run(async {
            scope = Some(Scope::current()?);
            let mut db = current_session::<Postgres>("default").await?;
            sqlx::query("INSERT INTO dbscope_example_notes (body) VALUES ($1)")
                .bind(body)
                .execute(&mut db)
                .await?;
            Ok::<_, dbscope::Error>(())
        })
        .await?;
    Ok(scope.expect("the scope ran").read_tokens())
}

/// A "request" that reads, with the tokens the client brought back.
async fn count_notes(
    manager: &BindManager,
    tokens: Vec<ReadToken>,
) -> Result<(i64, i32), dbscope::Error> {
    manager
        .scope()
        .read_only()
        .read_after_all(tokens)
        .run(async {
            let mut db = current_session::<Postgres>("default").await?;
            sqlx::query_as("SELECT count(*), inet_server_port() FROM dbscope_example_notes")
                .fetch_one(&mut db)
                .await
                .map_err(Into::into)
        })
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_env()?;
    if config
        .binds
        .get("default")
        .is_none_or(|b| b.replicas.is_empty())
    {
        eprintln!(
            "set DATABASE_URL to a PostgreSQL primary and DBSCOPE_BINDS__DEFAULT__REPLICAS to its \
             replica(s): tokens are made on binds with replicas"
        );
        std::process::exit(2);
    }
    let manager = BindManager::new(config)?;
    let mut setup = manager.session::<Postgres>("default")?;
    sqlx::query("CREATE TABLE IF NOT EXISTS dbscope_example_notes (id BIGSERIAL, body TEXT)")
        .execute(&mut setup)
        .await?;
    setup.commit().await?;
    drop(setup);

    let tokens = post_note(&manager, "read me back").await?;
    let header: Vec<String> = tokens.iter().map(ToString::to_string).collect();
    println!("POST committed; x-read-token: {}", header.join("~"));
    let back: Vec<ReadToken> = header.iter().map(|t| t.parse()).collect::<Result<_, _>>()?;
    let (n, port) = count_notes(&manager, back).await?;
    println!("GET with the token: {n} notes, read on port {port}");

    let mut cleanup = manager.session::<Postgres>("default")?;
    sqlx::query("DROP TABLE dbscope_example_notes")
        .execute(&mut cleanup)
        .await?;
    cleanup.commit().await?;
    drop(cleanup);
    manager.close(Duration::from_secs(5)).await?;
    Ok(())
}
