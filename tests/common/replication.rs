//! Throwaway primary/replica pairs on real servers, for tests of replica routing and failover:
//! never the shared servers at 5432 and 3306.
//!
//! - [`PgPair`]: a PostgreSQL primary ([`Cluster::start_with_settings`], `wal_level = replica`,
//!   trust for replication connections from 127.0.0.1, initdb's default `pg_hba.conf`) and one or
//!   more streaming standbys made with `pg_basebackup -R` over 127.0.0.1 on ports of their own
//!   ([`Cluster::replica_of`], `hot_standby = on`, `wal_receiver_status_interval = 1s`).
//!   Database `test` is created on the primary before the base backups, so every URL names
//!   `test` (user `postgres`, trust auth).
//! - [`MariaPair`]: two `mariadbd` processes, each initialised by `mariadb-install-db` into a
//!   temp directory of its own (own port on 127.0.0.1, own socket, `server_id` 1 and 2, binary
//!   log on both), the second replicating the first with GTIDs
//!   (`CHANGE MASTER TO … MASTER_USE_GTID = slave_pos`) and `read_only = 1`. Database `test`
//!   exists on both; URLs log in as `root` with no password.
//!
//! Every wait is bounded and fails the test with what it waited for. Dropping a pair stops its
//! servers and removes their directories, also when the test panics; directories (and servers)
//! left behind by a test process that was killed outright are cleaned up by the next start.
//!
//! A test file takes it in beside cluster.rs:
//!
//! ```ignore
//! #[path = "common/cluster.rs"]
//! mod cluster;
//! #[path = "common/replication.rs"]
//! mod replication;
//! ```
//!
//! On this machine (2 cores, shared) a [`PgPair`] starts in about 2 to 4 s and a [`MariaPair`]
//! in about 5 to 10 s (two `mariadb-install-db` runs, in parallel).
#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, MySqlConnection, PgConnection};

use crate::cluster::{Cluster, Stop, free_port, is_alive, run_bounded, running_as_root};

/// How long a replica may take to catch up, to start streaming, or to finish a promotion.
pub const REPLICATION_LIMIT: Duration = Duration::from_secs(60);
/// How long one connection attempt to a throwaway server may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How often the bounded waits look again.
const POLL: Duration = Duration::from_millis(20);

/// The primary's settings, after the throwaway defaults: a replication source that keeps enough
/// WAL for a standby stopped for a while to catch up without a slot.
pub const PG_PRIMARY_SETTINGS: &str = "wal_level = replica\n\
     max_wal_senders = 10\n\
     max_replication_slots = 10\n\
     wal_keep_size = 128MB\n\
     hot_standby = on\n\
     wal_receiver_status_interval = 1s\n";
/// A standby's settings: readable while replaying, reporting its position every second.
pub const PG_REPLICA_SETTINGS: &str = "hot_standby = on\n\
     wal_receiver_status_interval = 1s\n\
     hot_standby_feedback = on\n";

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// A throwaway PostgreSQL primary with streaming standbys; all stopped and removed when dropped.
pub struct PgPair {
    primary: Cluster,
    replicas: Vec<Cluster>,
}

impl PgPair {
    /// A primary and one streaming standby, both up, the standby streaming and caught up.
    pub async fn start() -> Self {
        Self::with_replicas(1).await
    }

    /// A primary and `n` streaming standbys (`n` ≥ 1), each streaming and caught up.
    pub async fn with_replicas(n: usize) -> Self {
        assert!(n >= 1, "a PgPair needs at least one replica");
        let primary = Cluster::start_with_settings(PG_PRIMARY_SETTINGS).await;
        let mut admin = pg_connect(&primary.url()).await;
        sqlx::query("CREATE DATABASE test")
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE test on the throwaway primary");
        let _ = admin.close().await;
        let mut replicas = Vec::with_capacity(n);
        for _ in 0..n {
            replicas.push(Cluster::replica_of(&primary, PG_REPLICA_SETTINGS).await);
        }
        let pair = Self { primary, replicas };
        pair.wait_streaming().await;
        pair.wait_caught_up().await;
        pair
    }

    /// The primary's database `test`, as `postgres`.
    pub fn primary_url(&self) -> String {
        pg_test_url(&self.primary)
    }

    /// The first standby's database `test`, as `postgres`.
    pub fn replica_url(&self) -> String {
        self.replica_url_of(0)
    }

    /// Standby `i`'s database `test`, as `postgres`.
    pub fn replica_url_of(&self, i: usize) -> String {
        pg_test_url(&self.replicas[i])
    }

    /// Every standby's URL, in order.
    pub fn replica_urls(&self) -> Vec<String> {
        self.replicas.iter().map(pg_test_url).collect()
    }

    /// The primary's cluster: stop, start again, crash.
    pub fn primary(&self) -> &Cluster {
        &self.primary
    }

    /// The first standby's cluster.
    pub fn replica(&self) -> &Cluster {
        &self.replicas[0]
    }

    /// Every standby's cluster.
    pub fn replicas(&self) -> &[Cluster] {
        &self.replicas
    }

    /// Stops the primary (`pg_ctl stop -m <mode>`); its standbys keep running, in recovery.
    pub async fn stop_primary(&self, mode: Stop) {
        self.primary.stop(mode).await;
    }

    /// Pauses WAL replay on the first standby; returns once the standby reports it paused.
    pub async fn pause_replay(&self) {
        self.pause_replay_of(0).await;
    }

    /// Pauses WAL replay on standby `i` (`pg_wal_replay_pause()`); returns once
    /// `pg_get_wal_replay_pause_state()` says `paused`, when nothing more is replayed.
    pub async fn pause_replay_of(&self, i: usize) {
        let mut replica = pg_connect(&self.replica_url_of(i)).await;
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&mut replica)
            .await
            .expect("pg_wal_replay_pause() on the replica");
        poll_until("replay paused on the replica", async || {
            pg_text(&mut replica, "SELECT pg_get_wal_replay_pause_state()").await == "paused"
        })
        .await;
        let _ = replica.close().await;
    }

    /// Resumes WAL replay on the first standby.
    pub async fn resume_replay(&self) {
        self.resume_replay_of(0).await;
    }

    /// Resumes WAL replay on standby `i` (`pg_wal_replay_resume()`); returns once it reports
    /// replay running again (it may still be behind: see [`PgPair::wait_caught_up`]).
    pub async fn resume_replay_of(&self, i: usize) {
        let mut replica = pg_connect(&self.replica_url_of(i)).await;
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(&mut replica)
            .await
            .expect("pg_wal_replay_resume() on the replica");
        poll_until("replay resumed on the replica", async || {
            pg_text(&mut replica, "SELECT pg_get_wal_replay_pause_state()").await == "not paused"
        })
        .await;
        let _ = replica.close().await;
    }

    /// Promotes the first standby; returns once it accepts writes.
    pub async fn promote_replica(&self) {
        self.promote_replica_of(0).await;
    }

    /// Promotes standby `i` (`pg_ctl promote -w`); returns once `pg_is_in_recovery()` is false
    /// on it and a write (a temporary table) succeeds there. The old primary is left as it is:
    /// stop it first for a failover, or leave it up for a split brain.
    pub async fn promote_replica_of(&self, i: usize) {
        self.replicas[i].promote().await;
        let mut promoted = pg_connect(&self.replica_url_of(i)).await;
        poll_until("the promoted replica to leave recovery", async || {
            !pg_bool(&mut promoted, "SELECT pg_is_in_recovery()").await
        })
        .await;
        sqlx::query("CREATE TEMPORARY TABLE dbscope_promoted_probe (id int)")
            .execute(&mut promoted)
            .await
            .expect("a write on the promoted replica");
        let _ = promoted.close().await;
    }

    /// The primary's current WAL position (`pg_current_wal_lsn()`), as text (`0/3000148`).
    pub async fn primary_lsn(&self) -> String {
        let mut primary = pg_connect(&self.primary_url()).await;
        let lsn = pg_text(&mut primary, "SELECT pg_current_wal_lsn()::text").await;
        let _ = primary.close().await;
        lsn
    }

    /// Standby `i`'s replay position (`pg_last_wal_replay_lsn()`), as text.
    pub async fn replay_lsn_of(&self, i: usize) -> String {
        let mut replica = pg_connect(&self.replica_url_of(i)).await;
        let lsn = pg_text(&mut replica, "SELECT pg_last_wal_replay_lsn()::text").await;
        let _ = replica.close().await;
        lsn
    }

    /// Waits until every standby has replayed up to the primary's current WAL position, within
    /// [`REPLICATION_LIMIT`]; panics naming both positions otherwise (replay paused, say).
    pub async fn wait_caught_up(&self) {
        let target = self.primary_lsn().await;
        for i in 0..self.replicas.len() {
            self.wait_replayed_of(i, &target).await;
        }
    }

    /// Waits until standby `i` has replayed up to `lsn`, within [`REPLICATION_LIMIT`].
    pub async fn wait_replayed_of(&self, i: usize, lsn: &str) {
        let mut replica = pg_connect(&self.replica_url_of(i)).await;
        let what = format!("replica {i} to replay up to {lsn}");
        let reached = poll_for(REPLICATION_LIMIT, async || {
            sqlx::query_scalar::<_, bool>(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)",
            )
            .bind(lsn)
            .fetch_one(&mut replica)
            .await
            .expect("reading the replica's replay position")
        })
        .await;
        if !reached {
            let at = pg_text(
                &mut replica,
                "SELECT coalesce(pg_last_wal_replay_lsn()::text, 'none')",
            )
            .await;
            panic!("timed out after {REPLICATION_LIMIT:?} waiting for {what}: it is at {at}");
        }
        let _ = replica.close().await;
    }

    /// Waits until the primary has every standby streaming (`pg_stat_replication`).
    async fn wait_streaming(&self) {
        let mut primary = pg_connect(&self.primary_url()).await;
        let n = i64::try_from(self.replicas.len()).expect("replica count");
        poll_until("every replica streaming from the primary", async || {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .fetch_one(&mut primary)
            .await
            .expect("reading pg_stat_replication")
                >= n
        })
        .await;
        let _ = primary.close().await;
    }
}

impl std::fmt::Debug for PgPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPair")
            .field("primary", &self.primary)
            .field("replicas", &self.replicas)
            .finish()
    }
}

fn pg_test_url(cluster: &Cluster) -> String {
    format!("postgres://postgres@127.0.0.1:{}/test", cluster.port())
}

/// A connection outside dbscope, bounded by [`CONNECT_LIMIT`].
pub async fn pg_connect(url: &str) -> PgConnection {
    match tokio::time::timeout(CONNECT_LIMIT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("connecting to {url}: {e}"),
        Err(_) => panic!("connecting to {url}: no answer within {CONNECT_LIMIT:?}"),
    }
}

async fn pg_text(conn: &mut PgConnection, query: &'static str) -> String {
    sqlx::query_scalar::<_, String>(query)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

async fn pg_bool(conn: &mut PgConnection, query: &'static str) -> bool {
    sqlx::query_scalar::<_, bool>(query)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// MariaDB
// ---------------------------------------------------------------------------------------------

/// A throwaway MariaDB primary and its GTID replica; both killed and removed when dropped.
pub struct MariaPair {
    primary: Mariadb,
    replica: Mariadb,
}

impl MariaPair {
    /// Both servers initialised (in parallel) and up, the replica replicating and caught up.
    pub async fn start() -> Self {
        let (primary, replica) = tokio::join!(
            blocking(|| Mariadb::start_blocking(1, &[])),
            blocking(|| Mariadb::start_blocking(2, &["--read-only=1"])),
        );
        let pair = Self { primary, replica };
        let mut replica = my_connect(&pair.replica_url()).await;
        let change = format!(
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'root', \
             MASTER_PASSWORD = '', MASTER_CONNECT_RETRY = 1, MASTER_USE_GTID = slave_pos",
            pair.primary.port()
        );
        sqlx::raw_sql(AssertSqlSafe(change))
            .execute(&mut replica)
            .await
            .expect("CHANGE MASTER TO on the throwaway replica");
        let _ = replica.close().await;
        pair.start_replication().await;
        pair.wait_caught_up().await;
        pair
    }

    /// The primary's database `test`, as `root`.
    pub fn primary_url(&self) -> String {
        self.primary.url()
    }

    /// The replica's database `test`, as `root`.
    pub fn replica_url(&self) -> String {
        self.replica.url()
    }

    /// The primary's server: stop, kill, start again.
    pub fn primary(&self) -> &Mariadb {
        &self.primary
    }

    /// The replica's server.
    pub fn replica(&self) -> &Mariadb {
        &self.replica
    }

    /// Stops both replication threads on the replica (`STOP SLAVE`): what the primary commits
    /// from now on stays away from it, a replica lagging as far as a test wants.
    pub async fn stop_replication(&self) {
        let mut replica = my_connect(&self.replica_url()).await;
        sqlx::raw_sql("STOP SLAVE")
            .execute(&mut replica)
            .await
            .expect("STOP SLAVE on the replica");
        let _ = replica.close().await;
    }

    /// Starts replication on the replica (`START SLAVE`); returns once both of its threads run
    /// (`Slave_running = ON`: connected to the primary). It may still be behind: see
    /// [`MariaPair::wait_caught_up`].
    pub async fn start_replication(&self) {
        let mut replica = my_connect(&self.replica_url()).await;
        sqlx::raw_sql("START SLAVE")
            .execute(&mut replica)
            .await
            .expect("START SLAVE on the replica");
        poll_until("the replica's replication threads running", async || {
            my_text(
                &mut replica,
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                 WHERE VARIABLE_NAME = 'SLAVE_RUNNING'",
            )
            .await
                == "ON"
        })
        .await;
        let _ = replica.close().await;
    }

    /// The primary's binary log position (`@@gtid_binlog_pos`), e.g. `0-1-42`; empty before the
    /// first write.
    pub async fn primary_gtid(&self) -> String {
        let mut primary = my_connect(&self.primary_url()).await;
        let gtid = my_text(&mut primary, "SELECT @@GLOBAL.gtid_binlog_pos").await;
        let _ = primary.close().await;
        gtid
    }

    /// Waits until the replica has applied everything the primary has logged so far
    /// (`MASTER_GTID_WAIT`), within [`REPLICATION_LIMIT`]; panics otherwise (replication
    /// stopped, say).
    pub async fn wait_caught_up(&self) {
        let gtid = self.primary_gtid().await;
        if gtid.is_empty() {
            return;
        }
        let mut replica = my_connect(&self.replica_url()).await;
        let secs = REPLICATION_LIMIT.as_secs_f64();
        let waited = tokio::time::timeout(
            REPLICATION_LIMIT + Duration::from_secs(10),
            sqlx::query_scalar::<_, i64>("SELECT MASTER_GTID_WAIT(?, ?)")
                .bind(&gtid)
                .bind(secs)
                .fetch_one(&mut replica),
        )
        .await;
        match waited {
            Ok(Ok(0)) => {}
            Ok(Ok(_)) => panic!(
                "timed out after {REPLICATION_LIMIT:?} waiting for the MariaDB replica to apply \
                 {gtid}: it is at {}",
                my_text(&mut replica, "SELECT @@GLOBAL.gtid_slave_pos").await
            ),
            Ok(Err(e)) => panic!("MASTER_GTID_WAIT('{gtid}') on the replica: {e}"),
            Err(_) => panic!("MASTER_GTID_WAIT('{gtid}') on the replica did not return"),
        }
        let _ = replica.close().await;
    }
}

impl std::fmt::Debug for MariaPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MariaPair")
            .field("primary", &self.primary)
            .field("replica", &self.replica)
            .finish()
    }
}

/// A connection outside dbscope, bounded by [`CONNECT_LIMIT`].
pub async fn my_connect(url: &str) -> MySqlConnection {
    match tokio::time::timeout(CONNECT_LIMIT, MySqlConnection::connect(url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("connecting to {url}: {e}"),
        Err(_) => panic!("connecting to {url}: no answer within {CONNECT_LIMIT:?}"),
    }
}

async fn my_text(conn: &mut MySqlConnection, query: &'static str) -> String {
    sqlx::query_scalar::<_, String>(query)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// The prefix of the MariaDB servers' directories in the temp dir: `dbscope-my-<pid>-<n>`.
const MY_DIR_PREFIX: &str = "dbscope-my-";
/// How long `mariadb-install-db`, or a server's start, may take on a loaded machine.
const MY_START_LIMIT: Duration = Duration::from_secs(120);
/// How long a polite shutdown may take before the server is killed.
const MY_STOP_LIMIT: Duration = Duration::from_secs(30);
/// Where Debian's packages put the server.
const MARIADBD: &str = "/usr/sbin/mariadbd";

/// One running throwaway `mariadbd`, a child of the test process; killed and removed when
/// dropped.
pub struct Mariadb {
    paths: Arc<MyPaths>,
    /// The running server; `None` while stopped.
    child: Arc<Mutex<Option<Child>>>,
}

/// Where a MariaDB server lives and how it runs.
#[derive(Debug)]
struct MyPaths {
    /// Its own directory, owned by `mysql`: data, socket, pid file, error log.
    root: PathBuf,
    data: PathBuf,
    /// Its temporary files (`--tmpdir`), apart from every other server's.
    tmp: PathBuf,
    socket: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    /// What the commands print, for failure messages.
    output: PathBuf,
    port: AtomicU16,
    server_id: u32,
    /// Extra `mariadbd` options (the replica's `--read-only=1`).
    extra: Vec<String>,
}

impl Mariadb {
    fn start_blocking(server_id: u32, extra: &[&str]) -> Self {
        remove_stale_mariadbs();
        // Made first, so that its `Drop` cleans up after whatever fails below.
        let server = Self {
            paths: Arc::new(MyPaths::create(server_id, extra)),
            child: Arc::new(Mutex::new(None)),
        };
        server.paths.install_db();
        server.launch_blocking();
        server.paths.bootstrap();
        server
    }

    /// Starts the server on its port, trying other ports if another process took it.
    fn launch_blocking(&self) {
        for attempt in 1.. {
            match self.paths.spawn_and_wait() {
                Ok(child) => {
                    *self.child.lock().expect("child lock") = Some(child);
                    return;
                }
                Err(why)
                    if attempt < 5 && self.paths.log_tail().contains("Address already in use") =>
                {
                    eprintln!("throwaway mariadbd: port {} taken ({why})", self.port());
                    self.paths.port.store(free_port(), Ordering::Relaxed);
                }
                Err(why) => panic!(
                    "throwaway mariadbd did not start: {why}\nerror log:\n{}",
                    self.paths.log_tail()
                ),
            }
        }
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.paths.port.load(Ordering::Relaxed)
    }

    /// Its database `test` as `root` (no password), TLS off (the server has none).
    pub fn url(&self) -> String {
        format!(
            "mysql://root@127.0.0.1:{}/test?ssl-mode=DISABLED",
            self.port()
        )
    }

    /// Shuts the server down politely (SIGTERM, as `mariadb-admin shutdown` does); returns when
    /// it has exited. Killed if it takes longer than 30 s.
    pub async fn stop(&self) {
        let child = self.child.clone();
        blocking(move || {
            let taken = child.lock().expect("child lock").take();
            if let Some(child) = taken {
                terminate(child, MY_STOP_LIMIT);
            }
        })
        .await;
    }

    /// Kills the server outright (SIGKILL): a crash. The next start runs InnoDB recovery.
    pub async fn kill(&self) {
        let child = self.child.clone();
        blocking(move || {
            let taken = child.lock().expect("child lock").take();
            if let Some(mut child) = taken {
                let _ = child.kill();
                let _ = child.wait();
            }
        })
        .await;
    }

    /// Starts the stopped server again on the same port; returns when it accepts connections.
    /// A replica resumes replicating by itself.
    pub async fn start_again(&self) {
        let paths = self.paths.clone();
        let child = self.child.clone();
        blocking(move || {
            assert!(
                child.lock().expect("child lock").is_none(),
                "start_again on a running mariadbd"
            );
            let started = paths.spawn_and_wait().unwrap_or_else(|why| {
                panic!("mariadbd start: {why}\nerror log:\n{}", paths.log_tail())
            });
            *child.lock().expect("child lock") = Some(started);
        })
        .await;
    }

    /// The last lines of the server's error log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.paths.log_tail()
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let taken = self.child.lock().map(|mut c| c.take()).unwrap_or(None);
        if let Some(mut child) = taken {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paths.remove();
    }
}

impl std::fmt::Debug for Mariadb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mariadb")
            .field("root", &self.paths.root)
            .field("port", &self.port())
            .field("server_id", &self.paths.server_id)
            .finish()
    }
}

/// SIGTERMs `child` and waits up to `limit` for it to exit; SIGKILLs it after that.
fn terminate(mut child: Child, limit: Duration) {
    let pid = child.id().to_string();
    let _ = run_bounded(
        Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        Duration::from_secs(5),
    );
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(POLL);
    }
    eprintln!("throwaway mariadbd {pid}: still running {limit:?} after SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

impl MyPaths {
    fn create(server_id: u32, extra: &[&str]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{MY_DIR_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let root = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
        // A temp dir of its own: two installs at once in the shared /tmp were seen to lose each
        // other's temporary tables ("Could not remove temporary table", then "Unknown table").
        let tmp = root.join("tmp");
        std::fs::create_dir(&tmp).unwrap_or_else(|e| panic!("creating {}: {e}", tmp.display()));
        if running_as_root() {
            let (uid, gid) = os_user("mysql");
            for dir in [&root, &tmp] {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {} to mysql: {e}", dir.display()));
            }
        }
        Self {
            tmp,
            data: root.join("data"),
            socket: root.join("mysqld.sock"),
            pid_file: root.join("mysqld.pid"),
            log: root.join("error.log"),
            output: root.join("commands.out"),
            root,
            port: AtomicU16::new(free_port()),
            server_id,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The options of a small, fast, disposable server, shared by `mariadb-install-db` (which
    /// passes them on) and the server itself.
    fn sizing() -> [&'static str; 5] {
        [
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=2",
            "--skip-performance-schema",
            "--max-connections=100",
        ]
    }

    fn install_db(&self) {
        let mut command = Command::new("mariadb-install-db");
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.data.display()))
            .arg(format!("--tmpdir={}", self.tmp.display()))
            .args(["--skip-test-db", "--skip-name-resolve"])
            .args(Self::sizing());
        if running_as_root() {
            command.arg("--user=mysql");
        }
        self.run(&mut command, "mariadb-install-db", MY_START_LIMIT)
            .unwrap_or_else(|why| panic!("initialising a throwaway MariaDB failed: {why}"));
    }

    /// Spawns `mariadbd` and waits until it answers on its socket, within [`MY_START_LIMIT`].
    fn spawn_and_wait(&self) -> Result<Child, String> {
        let mut command = Command::new(MARIADBD);
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.data.display()))
            .arg(format!("--tmpdir={}", self.tmp.display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--pid-file={}", self.pid_file.display()))
            .arg(format!("--log-error={}", self.log.display()))
            .arg(format!("--port={}", self.port.load(Ordering::Relaxed)))
            .arg(format!("--server-id={}", self.server_id))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--log-bin=mariadb-bin",
                "--relay-log=relay-bin",
                "--log-slave-updates",
                "--binlog-format=ROW",
                "--sync-binlog=0",
            ])
            .args(Self::sizing())
            .args(&self.extra);
        if running_as_root() {
            command.arg("--user=mysql");
        }
        let mut child = command
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("running {MARIADBD}: {e}"))?;
        let deadline = Instant::now() + MY_START_LIMIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("mariadbd exited: {status}"));
            }
            if self.admin_ping() {
                return Ok(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("not answering after {MY_START_LIMIT:?}; killed"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the server answers on its socket (as OS user root: unix_socket auth).
    fn admin_ping(&self) -> bool {
        let mut command = Command::new("mariadb-admin");
        command
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "--connect-timeout=2", "ping"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        run_bounded(&mut command, Duration::from_secs(10)).is_ok_and(|s| s.success())
    }

    /// Lets the tests in: `root@127.0.0.1` with no password, and database `test`; kept out of
    /// the binary log, so that a replica starting from the beginning does not replay it.
    fn bootstrap(&self) {
        let sql = "SET sql_log_bin = 0; \
                   CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY ''; \
                   GRANT ALL PRIVILEGES ON *.* TO root@'127.0.0.1' WITH GRANT OPTION; \
                   CREATE DATABASE IF NOT EXISTS test;";
        let mut command = Command::new("mariadb");
        command
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "--connect-timeout=5", "-e", sql]);
        self.run(&mut command, "mariadb (bootstrap)", Duration::from_secs(30))
            .unwrap_or_else(|why| panic!("setting up a throwaway MariaDB failed: {why}"));
    }

    fn run(&self, command: &mut Command, shown: &str, limit: Duration) -> Result<(), String> {
        let output = File::create(&self.output)
            .map_err(|e| format!("{shown}: creating {}: {e}", self.output.display()))?;
        let errors = output.try_clone().map_err(|e| format!("{shown}: {e}"))?;
        command
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors);
        let status = run_bounded(command, limit).map_err(|why| format!("{shown}: {why}"))?;
        if status.success() {
            return Ok(());
        }
        let printed = std::fs::read_to_string(&self.output).unwrap_or_default();
        Err(format!("{shown}: {status}\n{printed}"))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Removes the directory. Never panics: it runs in `Drop`.
    fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!("throwaway mariadbd: removing {}: {e}", self.root.display());
        }
    }
}

/// Kills the servers and removes the directories of test processes that no longer run (killed
/// before their `Drop`): their `mariadbd`, orphaned, would otherwise run on for good.
fn remove_stale_mariadbs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(MY_DIR_PREFIX)) else {
            continue;
        };
        let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if owner == std::process::id() || is_alive(owner) {
            continue;
        }
        let root = entry.path();
        eprintln!(
            "throwaway mariadbd: removing {}, left by process {owner}",
            root.display()
        );
        kill_stale_server(&root.join("mysqld.pid"));
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// SIGKILLs the `mariadbd` named in `pid_file`, if that process is still a `mariadbd`.
fn kill_stale_server(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if !is_alive(pid) || !comm.trim().starts_with("mariadbd") {
        return;
    }
    let _ = run_bounded(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        Duration::from_secs(5),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
}

/// The uid and gid of an OS user, from `/etc/passwd`.
fn os_user(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name) && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .unwrap_or_else(|| {
            panic!(
                "the tests run as root: they need an OS user `{name}` (Debian's server package \
                 makes it) to run the throwaway server as"
            )
        })
}

// ---------------------------------------------------------------------------------------------
// Shared
// ---------------------------------------------------------------------------------------------

/// Polls `check` every 20 ms until it holds, up to `limit`; whether it held.
pub async fn poll_for(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `check` until it holds, up to [`REPLICATION_LIMIT`]; panics with `what` otherwise.
pub async fn poll_until(what: &str, check: impl AsyncFnMut() -> bool) {
    assert!(
        poll_for(REPLICATION_LIMIT, check).await,
        "timed out after {REPLICATION_LIMIT:?} waiting for {what}"
    );
}

/// Runs blocking `work` off the runtime's workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
