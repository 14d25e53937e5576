//! The replication test infrastructure itself (tests/common/replication.rs), proven from the
//! servers: a row written on the primary appears on the replica; with replay paused (PostgreSQL)
//! or replication stopped (MariaDB) it stays away until resumed; a promoted standby leaves
//! recovery and takes writes.
//!
//! Run with `--nocapture` for how long each pair took to start.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/replication.rs"]
mod replication;

use std::time::Instant;

use cluster::Stop;
use replication::{MariaPair, PgPair, my_connect, pg_connect, poll_until};
use sqlx::{MySqlConnection, PgConnection};

async fn pg_pair() -> PgPair {
    let started = Instant::now();
    let pair = PgPair::start().await;
    eprintln!("PgPair started in {:?}: {pair:?}", started.elapsed());
    pair
}

async fn maria_pair() -> MariaPair {
    let started = Instant::now();
    let pair = MariaPair::start().await;
    eprintln!("MariaPair started in {:?}: {pair:?}", started.elapsed());
    pair
}

async fn pg_count(conn: &mut PgConnection, id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM infra_rows WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
        .expect("counting rows")
}

async fn pg_in_recovery(conn: &mut PgConnection) -> bool {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(conn)
        .await
        .expect("pg_is_in_recovery()")
}

async fn pg_insert(conn: &mut PgConnection, id: i64) {
    sqlx::query("INSERT INTO infra_rows (id) VALUES ($1)")
        .bind(id)
        .execute(conn)
        .await
        .expect("insert on the primary");
}

/// The primary with table `infra_rows`, replicated to the standby.
async fn pg_with_table(pair: &PgPair) -> (PgConnection, PgConnection) {
    let mut primary = pg_connect(&pair.primary_url()).await;
    sqlx::query("CREATE TABLE infra_rows (id bigint PRIMARY KEY)")
        .execute(&mut primary)
        .await
        .expect("create table on the primary");
    pair.wait_caught_up().await;
    let replica = pg_connect(&pair.replica_url()).await;
    (primary, replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_row_written_on_primary_appears_on_replica() {
    common::within_limit("pg_row_written_on_primary_appears_on_replica", async {
        let pair = pg_pair().await;
        let (mut primary, mut replica) = pg_with_table(&pair).await;
        assert!(
            !pg_in_recovery(&mut primary).await,
            "the primary is a primary"
        );
        assert!(
            pg_in_recovery(&mut replica).await,
            "the replica is in recovery"
        );
        let refused = sqlx::query("INSERT INTO infra_rows (id) VALUES (0)")
            .execute(&mut replica)
            .await
            .expect_err("a write on a hot standby");
        assert!(
            refused.to_string().contains("read-only transaction"),
            "the standby refuses writes: {refused}"
        );

        pg_insert(&mut primary, 1).await;
        pair.wait_caught_up().await;
        assert_eq!(
            pg_count(&mut replica, 1).await,
            1,
            "the row reached the replica"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_paused_replay_keeps_the_row_away_until_resumed() {
    common::within_limit("pg_paused_replay_keeps_the_row_away_until_resumed", async {
        let pair = pg_pair().await;
        let (mut primary, mut replica) = pg_with_table(&pair).await;

        pair.pause_replay().await;
        pg_insert(&mut primary, 2).await;
        let written = pair.primary_lsn().await;
        // The WAL holding the row has arrived on the standby: only the paused replay keeps it
        // from being visible there.
        poll_until("the replica to receive the row's WAL", async || {
            sqlx::query_scalar::<_, bool>("SELECT pg_last_wal_receive_lsn() >= $1::pg_lsn")
                .bind(&written)
                .fetch_one(&mut replica)
                .await
                .expect("pg_last_wal_receive_lsn()")
        })
        .await;
        assert_eq!(
            pg_count(&mut replica, 2).await,
            0,
            "paused: the row is not there"
        );
        let replayed: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() < $1::pg_lsn")
            .bind(&written)
            .fetch_one(&mut replica)
            .await
            .expect("pg_last_wal_replay_lsn()");
        assert!(replayed, "paused: replay stays behind the row's position");

        pair.resume_replay().await;
        pair.wait_caught_up().await;
        assert_eq!(
            pg_count(&mut replica, 2).await,
            1,
            "resumed: the row is there"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_promoted_replica_takes_writes() {
    common::within_limit("pg_promoted_replica_takes_writes", async {
        let pair = pg_pair().await;
        let (mut primary, replica) = pg_with_table(&pair).await;
        drop(replica);
        pg_insert(&mut primary, 3).await;
        pair.wait_caught_up().await;
        drop(primary);

        pair.stop_primary(Stop::Immediate).await;
        let started = Instant::now();
        pair.promote_replica().await;
        eprintln!("promotion took {:?}", started.elapsed());

        let mut promoted = pg_connect(&pair.replica_url()).await;
        assert!(
            !pg_in_recovery(&mut promoted).await,
            "promoted: out of recovery"
        );
        pg_insert(&mut promoted, 4).await;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM infra_rows")
            .fetch_one(&mut promoted)
            .await
            .expect("count on the promoted replica");
        assert_eq!(rows, 2, "the replicated row and the new one");
    })
    .await;
}

async fn my_count(conn: &mut MySqlConnection, id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM infra_rows WHERE id = ?")
        .bind(id)
        .fetch_one(conn)
        .await
        .expect("counting rows")
}

async fn my_insert(conn: &mut MySqlConnection, id: i64) {
    sqlx::query("INSERT INTO infra_rows (id) VALUES (?)")
        .bind(id)
        .execute(conn)
        .await
        .expect("insert on the primary");
}

async fn my_with_table(pair: &MariaPair) -> (MySqlConnection, MySqlConnection) {
    let mut primary = my_connect(&pair.primary_url()).await;
    sqlx::query("CREATE TABLE infra_rows (id BIGINT PRIMARY KEY) ENGINE = InnoDB")
        .execute(&mut primary)
        .await
        .expect("create table on the primary");
    pair.wait_caught_up().await;
    let replica = my_connect(&pair.replica_url()).await;
    (primary, replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maria_row_written_on_primary_appears_on_replica() {
    common::within_limit("maria_row_written_on_primary_appears_on_replica", async {
        let pair = maria_pair().await;
        let (mut primary, mut replica) = my_with_table(&pair).await;
        let read_only: i64 = sqlx::query_scalar("SELECT @@GLOBAL.read_only")
            .fetch_one(&mut replica)
            .await
            .expect("@@read_only");
        assert_eq!(read_only, 1, "the replica is read-only");
        let primary_read_only: i64 = sqlx::query_scalar("SELECT @@GLOBAL.read_only")
            .fetch_one(&mut primary)
            .await
            .expect("@@read_only");
        assert_eq!(primary_read_only, 0, "the primary is not");

        my_insert(&mut primary, 1).await;
        pair.wait_caught_up().await;
        assert_eq!(
            my_count(&mut replica, 1).await,
            1,
            "the row reached the replica"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maria_stopped_replication_keeps_the_row_away_until_started() {
    common::within_limit(
        "maria_stopped_replication_keeps_the_row_away_until_started",
        async {
            let pair = maria_pair().await;
            let (mut primary, mut replica) = my_with_table(&pair).await;

            pair.stop_replication().await;
            my_insert(&mut primary, 2).await;
            let written = pair.primary_gtid().await;
            // What the replica has applied is behind the row's GTID, and stays there.
            let waited: i64 = sqlx::query_scalar("SELECT MASTER_GTID_WAIT(?, 0.5)")
                .bind(&written)
                .fetch_one(&mut replica)
                .await
                .expect("MASTER_GTID_WAIT");
            assert_eq!(waited, -1, "stopped: the replica does not reach {written}");
            assert_eq!(
                my_count(&mut replica, 2).await,
                0,
                "stopped: the row is not there"
            );

            pair.start_replication().await;
            pair.wait_caught_up().await;
            assert_eq!(
                my_count(&mut replica, 2).await,
                1,
                "started: the row is there"
            );
        },
    )
    .await;
}
