//! A read-your-writes token from PostgreSQL's WAL position, handed out by scope hooks.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --example read_your_writes --features postgres
//! ```
//!
//! A client that just wrote gets the WAL position of its commit; a replica that has replayed
//! that far (`pg_last_wal_replay_lsn() >= token`) shows the write, so reads can go to a
//! replica without losing the client's own writes.
//!
//! Two hooks of the scope do the work:
//! - a **before-commit** hook asks, in the scope's own transaction, whether it wrote anything
//!   (`pg_current_xact_id_if_assigned()`): a read-only scope gets no token and costs no extra
//!   query after its commit;
//! - an **after-commit** hook turns it into the token, reading `pg_current_wal_lsn()` once the
//!   commit is durable. The commit record comes after everything the transaction wrote, so the
//!   position read *after* the commit is the one that covers it; the one read before the commit
//!   is not (a replica at that position may not have the commit yet).

use std::sync::{Arc, Mutex};

use dbscope::{BindManager, Scope, current_session};
use sqlx::Postgres;

/// What the hooks learned; the token is for the client (a response header, a cookie).
#[derive(Default)]
struct Wal {
    wrote: bool,
    token: Option<String>,
}

async fn add_note(body: &str) -> Result<(), dbscope::Error> {
    let mut session = current_session::<Postgres>("default").await?;
    sqlx::query("INSERT INTO dbscope_example_notes (body) VALUES ($1)")
        .bind(body)
        .execute(&mut session)
        .await?;
    Ok(())
}

/// Runs `work` in a scope and returns the token of its writes, if it wrote.
async fn with_token<F>(manager: &BindManager, work: F) -> Result<Option<String>, dbscope::Error>
where
    F: Future<Output = Result<(), dbscope::Error>>,
{
    let wal = Arc::new(Mutex::new(Wal::default()));
    let (before, after) = (wal.clone(), wal.clone());
    let after_manager = manager.clone();
    manager
        .scope()
        .before_commit(move || {
            let wal = before.clone();
            async move {
                let mut session = current_session::<Postgres>("default").await?;
                let wrote: bool =
                    sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
                        .fetch_one(&mut session)
                        .await?;
                wal.lock().unwrap().wrote = wrote;
                Ok(())
            }
        })
        .after_commit(move || {
            let (wal, manager) = (after.clone(), after_manager.clone());
            async move {
                if !wal.lock().unwrap().wrote {
                    return;
                }
                // After the commit: outside the scope, on a session of its own, autocommit.
                let read = async {
                    let mut session = manager.session::<Postgres>("default")?.autocommit(true);
                    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
                        .fetch_one(&mut session)
                        .await?;
                    session.close().await?;
                    Ok::<_, dbscope::Error>(lsn)
                };
                match read.await {
                    Ok(lsn) => wal.lock().unwrap().token = Some(lsn),
                    Err(e) => eprintln!("no token this time: {e}"),
                }
            }
        })
        .run(work)
        .await?;
    let token = wal.lock().unwrap().token.take();
    Ok(token)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = BindManager::from_env()?; // DATABASE_URL, a PostgreSQL URL
    let mut setup = manager.session::<Postgres>("default")?;
    sqlx::query("CREATE TABLE IF NOT EXISTS dbscope_example_notes (id BIGSERIAL, body TEXT)")
        .execute(&mut setup)
        .await?;
    setup.commit().await?;
    setup.close().await?;

    let token = with_token(&manager, async { add_note("read me back").await }).await?;
    println!("write committed; read-your-writes token: {token:?}");

    let none = with_token(&manager, async {
        let mut session = current_session::<Postgres>("default").await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dbscope_example_notes")
            .fetch_one(&mut session)
            .await?;
        println!("{n} notes; this scope only reads");
        assert!(Scope::current().is_ok());
        Ok(())
    })
    .await?;
    println!("read-only scope's token: {none:?}");

    let mut cleanup = manager.session::<Postgres>("default")?;
    sqlx::query("DROP TABLE dbscope_example_notes")
        .execute(&mut cleanup)
        .await?;
    cleanup.commit().await?;
    cleanup.close().await?;
    manager.close(std::time::Duration::from_secs(5)).await?;
    Ok(())
}
