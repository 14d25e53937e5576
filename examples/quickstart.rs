//! dbscope in one minute: two SQLite binds, a table, a committed write, a rolled-back write and
//! the pools' status. No set-up: `cargo run --example quickstart`.

use std::time::Duration;

use dbscope::{BindConfig, BindManager, Session};
use sqlx::Sqlite;

async fn notes(session: &mut Session<Sqlite>) -> Result<i64, dbscope::Error> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM notes")
        .fetch_one(session)
        .await?)
}

#[tokio::main]
async fn main() -> Result<(), dbscope::Error> {
    // Two named databases. In an application this comes from a TOML file or the environment:
    // `Config::from_file_and_env("dbscope.toml")`, or `DATABASE_URL` for a single bind.
    let manager = BindManager::builder()
        .bind(
            "main",
            BindConfig::new("sqlite::memory:").max_connections(4),
        )
        .bind(
            "audit",
            BindConfig::new("sqlite::memory:").max_connections(1),
        )
        .build()?;
    let main = manager.bind::<Sqlite>("main")?;
    println!(
        "built binds {:?}; connections open: {}",
        manager.names().collect::<Vec<_>>(),
        main.status().connections
    );

    let mut session = main.session();
    sqlx::query("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&mut session)
        .await?;
    sqlx::query("INSERT INTO notes (body) VALUES ('kept')")
        .execute(&mut session)
        .await?;
    session.commit().await?;
    println!(
        "committed one note; connections open: {}",
        main.status().connections
    );

    sqlx::query("INSERT INTO notes (body) VALUES ('thrown away')")
        .execute(&mut session)
        .await?;
    println!(
        "inside the transaction the session sees {} notes",
        notes(&mut session).await?
    );
    session.rollback().await?;
    println!("after rollback it sees {}", notes(&mut session).await?);

    // A savepoint undoes part of a transaction and keeps the rest.
    sqlx::query("INSERT INTO notes (body) VALUES ('second')")
        .execute(&mut session)
        .await?;
    let mut savepoint = session.savepoint().await?;
    sqlx::query("INSERT INTO notes (body) VALUES ('undone')")
        .execute(&mut *savepoint)
        .await?;
    savepoint.rollback().await?;
    session.commit().await?;
    drop(session);

    let mut reader = main.session().read_only(true);
    println!(
        "a fresh read-only session sees {} notes committed",
        notes(&mut reader).await?
    );
    drop(reader);

    let mut audit = manager.session::<Sqlite>("audit")?;
    sqlx::query("CREATE TABLE log (line TEXT)")
        .execute(&mut audit)
        .await?;
    sqlx::query("INSERT INTO log VALUES ('quickstart ran')")
        .execute(&mut audit)
        .await?;
    audit.commit().await?;
    drop(audit);

    for status in manager.status() {
        println!(
            "bind {:>5}: {} connection(s) open, {} idle, {} in use, {} opened in all",
            status.name, status.connections, status.idle, status.in_use, status.opened
        );
    }
    manager.close(Duration::from_secs(5)).await?;
    println!("closed");
    Ok(())
}
