//! A throwaway PgBouncer in transaction pooling mode, in front of a PostgreSQL server of the
//! test's own (a [`Cluster`](crate::cluster::Cluster), so that every backend its `pg_stat_activity`
//! shows is the bouncer's or the test's).
//!
//! [`PgBouncer::start`] writes a `pgbouncer.ini` into a fresh temp directory (owned by the OS
//! user `postgres`, which the bouncer switches to with `-u`: it refuses to run as root), listens
//! on a free port of 127.0.0.1, trusts every login, and offers two databases, both the
//! upstream's `postgres` database:
//!
//! - `test`, with a server pool of 4 connections;
//! - `single`, with a server pool of 1: every client connection shares one server connection, so
//!   what one client leaves on it (a named prepared statement) the next one meets.
//!
//! `ignore_startup_parameters = extra_float_digits`: sqlx sends it at connect, and PgBouncer
//! refuses startup parameters it does not know.
//!
//! Dropping it kills the process and removes the directory; a directory left by a killed test
//! process is cleaned up (its bouncer killed) by the next start. Every wait is bounded. A test
//! file takes it in with `#[path = "common/pgbouncer.rs"] mod pgbouncer;` beside cluster.rs.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::cluster::{free_port, is_alive, process_nonce, run_bounded, running_as_root};

/// How long PgBouncer may take to answer after it was started.
const START_LIMIT: Duration = Duration::from_secs(30);
/// The prefix of the bouncers' directories in the temp dir: `dbscope-pgb-<pid>-<start>-<n>`.
const DIR_PREFIX: &str = "dbscope-pgb-";

/// A running throwaway PgBouncer; killed and removed when dropped.
pub struct PgBouncer {
    root: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PgBouncer {
    /// A bouncer in transaction pooling mode in front of the server on 127.0.0.1:`upstream_port`
    /// (user `postgres`, trust auth, database `postgres`); returns once it answers a query.
    pub async fn start(upstream_port: u16) -> Self {
        let mut bouncer = tokio::task::spawn_blocking(move || Self::spawn(upstream_port))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        bouncer.wait_ready().await;
        bouncer
    }

    fn spawn(upstream_port: u16) -> Self {
        remove_stale_bouncers();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{DIR_PREFIX}{}-{}-{}",
            std::process::id(),
            process_nonce(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let root = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
        let mut bouncer = Self {
            port: free_port(),
            child: None,
            root,
        };
        std::fs::write(bouncer.root.join("users.txt"), "\"postgres\" \"\"\n")
            .expect("writing users.txt");
        std::fs::write(bouncer.ini(), bouncer.settings(upstream_port)).expect("writing the ini");
        let mut command = Command::new(pgbouncer_binary());
        if running_as_root() {
            chown_to_postgres(&bouncer.root);
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(bouncer.ini())
            .current_dir(&bouncer.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("running pgbouncer: {e} (install Debian's `pgbouncer`; .ci/run does)")
            });
        bouncer.child = Some(child);
        bouncer
    }

    fn ini(&self) -> PathBuf {
        self.root.join("pgbouncer.ini")
    }

    fn settings(&self, upstream_port: u16) -> String {
        let upstream = format!("host=127.0.0.1 port={upstream_port} user=postgres dbname=postgres");
        format!(
            "[databases]\n\
             test = {upstream} pool_size=4\n\
             single = {upstream} pool_size=1\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {root}/users.txt\n\
             pool_mode = transaction\n\
             max_client_conn = 200\n\
             ignore_startup_parameters = extra_float_digits\n\
             server_reset_query =\n\
             query_wait_timeout = 20\n\
             logfile = {root}/pgbouncer.log\n\
             pidfile = {root}/pgbouncer.pid\n",
            port = self.port,
            root = self.root.display(),
        )
    }

    /// Waits until a query through the bouncer is answered, within [`START_LIMIT`].
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        let url = self.url("test");
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("pgbouncer exited: {status}\nits log:\n{}", self.log_tail());
            }
            let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                let mut conn = PgConnection::connect(&url).await?;
                sqlx::query("SELECT 1").execute(&mut conn).await?;
                conn.close().await
            })
            .await;
            match attempt {
                Ok(Ok(())) => return,
                _ if Instant::now() > deadline => panic!(
                    "pgbouncer not answering at {url} after {START_LIMIT:?}: {attempt:?}\nits log:\n{}",
                    self.log_tail()
                ),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The bouncer's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL of the bouncer's database `db` (`test` or `single`) as `postgres`, TLS off (the
    /// bouncer has none).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// The last lines of the bouncer's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.root.join("pgbouncer.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!("throwaway pgbouncer: removing {}: {e}", self.root.display());
        }
    }
}

/// Debian puts it in /usr/sbin, which a minimal PATH may lack.
fn pgbouncer_binary() -> &'static str {
    if Path::new("/usr/sbin/pgbouncer").exists() {
        "/usr/sbin/pgbouncer"
    } else {
        "pgbouncer"
    }
}

fn chown_to_postgres(dir: &Path) {
    let status = run_bounded(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .stdout(Stdio::null()),
        Duration::from_secs(10),
    );
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "chown -R postgres {}: {status:?} (the tests run as root and need the OS user \
         `postgres`, which Debian's postgresql package makes)",
        dir.display()
    );
}

/// Kills the bouncers and removes the directories of test processes that no longer run.
fn remove_stale_bouncers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
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
            "throwaway pgbouncer: removing {}, left by process {owner}",
            root.display()
        );
        let pid = std::fs::read_to_string(root.join("pgbouncer.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if is_alive(pid) && comm.trim() == "pgbouncer" {
                let _ = run_bounded(
                    Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null()),
                    Duration::from_secs(5),
                );
            }
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
