//! A bind with a replica: reads on the replica, writes on the primary, each host's status, and
//! a read that must see a fresh write.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5433/test \
//! DBSCOPE_BINDS__DEFAULT__REPLICAS=postgres://postgres@127.0.0.1:5434/test \
//!     cargo run --example replicas --features postgres
//! ```
//!
//! The URLs are a primary and a streaming replica of it (either may be the primary: dbscope
//! probes the roles); `tests/replicas.rs` makes a throwaway pair like it.

use std::time::Duration;

use dbscope::{BindManager, Config, current_read_session, current_session};
use sqlx::Postgres;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_env()?; // DATABASE_URL, DBSCOPE_BINDS__DEFAULT__REPLICAS
    if config
        .binds
        .get("default")
        .is_none_or(|b| b.replicas.is_empty())
    {
        eprintln!(
            "set DATABASE_URL to a PostgreSQL primary and DBSCOPE_BINDS__DEFAULT__REPLICAS to its \
             replica(s), comma-separated"
        );
        std::process::exit(2);
    }
    let manager = BindManager::new(config)?;

    let mut write = manager.session::<Postgres>("default")?;
    sqlx::query("CREATE TABLE IF NOT EXISTS dbscope_example_replicas (id BIGSERIAL, body TEXT)")
        .execute(&mut write)
        .await?;
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(&mut write)
        .await?;
    write.commit().await?;
    println!("writes run on the primary (port {port})");
    let token = write
        .read_token()
        .cloned()
        .expect("a bind with replicas makes tokens");
    drop(write);

    // A read session that must see the table: a replica that replayed it, or the primary.
    let mut read = manager.read_session_after::<Postgres>(&token)?;
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(&mut read)
        .await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dbscope_example_replicas")
        .fetch_one(&mut read)
        .await?;
    println!("read after {token}: {n} rows, on port {port}");
    drop(read);

    // In a scope: reads on a replica until the scope writes, then on the primary.
    manager
        .scope()
        .run(async {
            let mut read = current_read_session::<Postgres>("default").await?;
            let before: i32 = sqlx::query_scalar("SELECT inet_server_port()")
                .fetch_one(&mut read)
                .await?;
            let mut write = current_session::<Postgres>("default").await?;
            sqlx::query("INSERT INTO dbscope_example_replicas (body) VALUES ('scoped')")
                .execute(&mut write)
                .await?;
            let mut read = current_read_session::<Postgres>("default").await?;
            let after: i32 = sqlx::query_scalar("SELECT inet_server_port()")
                .fetch_one(&mut read)
                .await?;
            println!("in a scope: reads on port {before}, after a write on port {after}");
            Ok::<_, dbscope::Error>(())
        })
        .await?;

    for host in &manager.status()[0].hosts {
        println!(
            "{}: {:?}, healthy {}, lag {:?} ({:?} bytes)",
            host.address, host.role, host.healthy, host.lag, host.lag_bytes
        );
    }
    let mut cleanup = manager.session::<Postgres>("default")?;
    sqlx::query("DROP TABLE dbscope_example_replicas")
        .execute(&mut cleanup)
        .await?;
    cleanup.commit().await?;
    drop(cleanup);
    manager.close(Duration::from_secs(5)).await?;
    Ok(())
}
