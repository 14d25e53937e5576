//! dbscope without async: blocking sessions from plain OS threads, a thread-scoped current
//! session, and the pool's status. No set-up: `cargo run --example blocking` (SQLite in memory),
//! or `DATABASE_URL=sqlite://notes.db cargo run --example blocking` for a file.

use std::thread;
use std::time::Duration;

use dbscope::blocking::{self, BlockingSession};
use dbscope::{BindConfig, BindManager};
use sqlx::Sqlite;

const THREADS: i64 = 8;

fn notes(session: &mut BlockingSession<Sqlite>) -> Result<i64, dbscope::Error> {
    session.fetch_one(sqlx::query_scalar("SELECT COUNT(*) FROM example_notes"))
}

/// Adds a note through the thread's current session: no session passed around.
fn add_note(body: &str) -> Result<(), dbscope::Error> {
    let mut session = blocking::current_session::<Sqlite>("main")?;
    session.execute(sqlx::query("INSERT INTO example_notes (body) VALUES (?)").bind(body))?;
    Ok(())
}

fn main() -> Result<(), dbscope::Error> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".to_owned());
    let manager = BindManager::builder()
        .bind(
            "main",
            BindConfig::new(url.as_str())
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(10)),
        )
        .build()?;
    let bind = manager.blocking_bind::<Sqlite>("main")?;

    let mut session = bind.session(); // no connection yet
    session.execute(sqlx::query("DROP TABLE IF EXISTS example_notes"))?;
    session.execute(sqlx::query(
        "CREATE TABLE example_notes (id INTEGER, body TEXT NOT NULL)",
    ))?;
    session.commit()?;

    session.execute(sqlx::query(
        "INSERT INTO example_notes (body) VALUES ('thrown away')",
    ))?;
    println!(
        "inside the transaction the session sees {} note(s)",
        notes(&mut session)?
    );
    session.rollback()?;
    println!("after rollback it sees {}", notes(&mut session)?);
    drop(session);

    // Eight OS threads share the bind's pool of two connections, each committing a note.
    thread::scope(|scope| {
        for n in 0..THREADS {
            let bind = bind.clone();
            scope.spawn(move || -> Result<(), dbscope::Error> {
                let mut session = bind.session();
                session.execute(
                    sqlx::query("INSERT INTO example_notes (id, body) VALUES (?, 'from a thread')")
                        .bind(n),
                )?;
                session.commit()
            });
        }
    });

    // A scope: everything on this thread uses the same session; Ok commits, Err rolls back.
    blocking::scope(&manager, || {
        add_note("first of a scope")?;
        add_note("second of a scope")
    })?;
    let failed: Result<(), dbscope::Error> = blocking::scope(&manager, || {
        add_note("never stored")?;
        Err(sqlx::Error::RowNotFound.into()) // any error: the scope rolls back
    });
    assert!(failed.is_err());

    let mut reader = bind.session().read_only(true);
    let rows: Vec<(String,)> = reader.fetch_all(sqlx::query_as(
        "SELECT body FROM example_notes ORDER BY body",
    ))?;
    println!("{} notes committed:", rows.len());
    for (body,) in &rows {
        println!("  {body}");
    }
    assert_eq!(rows.len() as i64, THREADS + 2);
    reader.close()?;

    for status in manager.status() {
        println!(
            "bind {} ({}): {} connection(s) open, {} idle, {} opened in all",
            status.name,
            if status.blocking { "blocking" } else { "async" },
            status.connections,
            status.idle,
            status.opened
        );
    }
    manager.close_blocking(Duration::from_secs(5))?;
    println!("closed");
    Ok(())
}
