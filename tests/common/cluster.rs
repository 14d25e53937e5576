//! A throwaway PostgreSQL cluster, for tests that stop, restart or crash a server: never the
//! shared one at 5432.
//!
//! [`Cluster::start`] runs `initdb` into a fresh directory under the system's temp dir (trust
//! auth, `fsync=off`, small `shared_buffers`, its unix socket inside that directory), picks a
//! free TCP port on 127.0.0.1 and starts the server with `pg_ctl start -w`. Dropping the
//! [`Cluster`] stops it with `pg_ctl stop -m immediate` and removes the directory, also when the
//! test panics; a directory left behind by a test process that was killed outright is cleaned
//! up by the next [`Cluster::start`]. Every wait is bounded.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, the directory belongs to the OS
//! user `postgres` and every command runs as that user (`runuser -u postgres --`). The binaries
//! are taken from `DBSCOPE_TEST_PG_BIN` when it is set, else from the newest
//! `/usr/lib/postgresql/<version>/bin`, else from `pg_config --bindir`.
//!
//! [`Cluster::replica_of`] makes a streaming standby of a running cluster the same way
//! (`pg_basebackup -R`); tests/common/replication.rs pairs them up.
//!
//! A test file takes it in with `#[path = "common/cluster.rs"] mod cluster;`, so that the other
//! test binaries do not compile it.
#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The variable naming the directory of `initdb` and `pg_ctl`, when the default is not right.
pub const PG_BIN_ENV: &str = "DBSCOPE_TEST_PG_BIN";

/// How long `initdb` may take on a loaded machine.
const INITDB_LIMIT: Duration = Duration::from_secs(120);
/// How long `pg_ctl` may wait for the server to start or stop (`-t`, in seconds).
const PG_CTL_WAIT_SECS: u64 = 60;
/// How long a `pg_ctl` command may take in all, its own wait included.
const PG_CTL_LIMIT: Duration = Duration::from_secs(PG_CTL_WAIT_SECS + 30);
/// How long the teardown in `Drop` may take before it gives up on stopping the server politely
/// and kills it.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(20);
/// The prefix of the clusters' directories in the temp dir: `dbscope-pg-<pid>-<start>-<n>`.
const DIR_PREFIX: &str = "dbscope-pg-";

/// How [`Cluster::stop`] shuts the server down (`pg_ctl stop -m <mode>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Waits for nothing: terminates sessions (rolling back their transactions), checkpoints,
    /// exits. What a restart for maintenance does.
    Fast,
    /// Kills every server process at once, no checkpoint: a crash. The next start runs crash
    /// recovery.
    Immediate,
}

impl Stop {
    fn arg(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Immediate => "immediate",
        }
    }
}

/// A running throwaway PostgreSQL server; stopped and deleted when dropped.
pub struct Cluster {
    paths: Arc<Paths>,
}

/// Where a cluster lives and how to run its commands.
#[derive(Debug)]
struct Paths {
    /// The cluster's own directory: data, log, socket.
    root: PathBuf,
    data: PathBuf,
    /// The server's log (`pg_ctl -l`).
    log: PathBuf,
    /// What the commands print, for failure messages.
    output: PathBuf,
    bin: PathBuf,
    /// Chosen at creation; changed only if another process takes it before the first start.
    port: AtomicU16,
    /// Run commands as the OS user `postgres` (the tests run as root).
    as_postgres: bool,
}

impl Cluster {
    /// A fresh cluster, initialised and started; panics, with the commands' output, when that
    /// fails.
    pub async fn start() -> Self {
        Self::start_with_settings("").await
    }

    /// A fresh cluster like [`Cluster::start`]'s, with `settings` (lines of `postgresql.conf`)
    /// appended after the throwaway defaults, so that they win.
    pub async fn start_with_settings(settings: &str) -> Self {
        let settings = settings.to_owned();
        blocking(move || Self::launch(|paths| paths.initdb(), &settings)).await
    }

    /// A streaming replica of `primary`, started: `pg_basebackup -R -X stream` over 127.0.0.1
    /// into a fresh directory (`standby.signal` and `primary_conninfo` written by `-R`), the
    /// throwaway defaults and `settings` appended, then `pg_ctl start -w`, which returns once
    /// the standby accepts read-only connections. The primary must allow replication
    /// connections from 127.0.0.1 (initdb's default `pg_hba.conf` does, with `--auth=trust`).
    pub async fn replica_of(primary: &Cluster, settings: &str) -> Self {
        let settings = settings.to_owned();
        let port = primary.port();
        blocking(move || Self::launch(|paths| paths.base_backup(port), &settings)).await
    }

    /// Makes the cluster's data directory with `init`, configures it, and starts the server.
    fn launch(init: impl FnOnce(&Paths), settings: &str) -> Self {
        remove_stale_clusters();
        // Made first, so that its `Drop` cleans up after whatever fails below.
        let cluster = Self {
            paths: Arc::new(Paths::create()),
        };
        let paths = &cluster.paths;
        init(paths);
        paths.configure(settings);
        // The port was free a moment ago; another process may have taken it since. Try others.
        for attempt in 1.. {
            match paths.pg_ctl_start() {
                Ok(_) => break,
                Err(why) if attempt < 5 && paths.log_tail().contains("could not bind") => {
                    eprintln!("throwaway cluster: port {} taken ({why})", paths.port());
                    paths.port.store(free_port(), Ordering::Relaxed);
                }
                Err(why) => panic!(
                    "throwaway cluster did not start: {why}\nserver log:\n{}",
                    paths.log_tail()
                ),
            }
        }
        cluster
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.paths.port()
    }

    /// A URL of the cluster's `postgres` database as the superuser `postgres` (trust auth).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port())
    }

    /// Stops the server (`pg_ctl stop -m <mode> -w`); returns when it is down.
    pub async fn stop(&self, mode: Stop) {
        let paths = self.paths.clone();
        blocking(move || {
            paths
                .pg_ctl(&["stop", "-m", mode.arg()])
                .unwrap_or_else(|why| panic!("pg_ctl stop -m {}: {why}", mode.arg()));
        })
        .await;
    }

    /// Starts the stopped server again (`pg_ctl start -w`), on the same port; returns the moment
    /// `pg_ctl` returned, when the server accepts connections.
    pub async fn start_again(&self) -> Instant {
        let paths = self.paths.clone();
        blocking(move || {
            paths.pg_ctl_start().unwrap_or_else(|why| {
                panic!("pg_ctl start: {why}\nserver log:\n{}", paths.log_tail())
            })
        })
        .await
    }

    /// Restarts the server (`pg_ctl restart -m fast -w`): sessions terminated, then up again on
    /// the same port. Returns the moment `pg_ctl` returned, when the server accepts connections.
    pub async fn restart(&self) -> Instant {
        let paths = self.paths.clone();
        blocking(move || {
            let port = format!("-p {}", paths.port());
            paths
                .pg_ctl(&["restart", "-m", "fast", "-o", &port])
                .unwrap_or_else(|why| {
                    panic!("pg_ctl restart: {why}\nserver log:\n{}", paths.log_tail())
                })
        })
        .await
    }

    /// Crashes the server: every process killed at once (`pg_ctl stop -m immediate`).
    pub async fn crash(&self) {
        self.stop(Stop::Immediate).await;
    }

    /// Promotes a standby (`pg_ctl promote -w`): returns once it has left recovery and accepts
    /// writes.
    pub async fn promote(&self) {
        let paths = self.paths.clone();
        blocking(move || {
            paths.pg_ctl(&["promote"]).unwrap_or_else(|why| {
                panic!("pg_ctl promote: {why}\nserver log:\n{}", paths.log_tail())
            });
        })
        .await;
    }

    /// Freezes every process of the server (SIGSTOP, the postmaster first, so that it starts
    /// no other): connections open and hang, sessions stop answering, as a host behind a
    /// network partition does. [`thaw`](Self::thaw) undoes it; dropping the cluster thaws it.
    pub fn freeze(&self) {
        self.paths.signal_all("-STOP");
    }

    /// Lets a [frozen](Self::freeze) server run again (SIGCONT).
    pub fn thaw(&self) {
        self.paths.signal_all("-CONT");
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.paths.log_tail()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.paths.teardown();
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("root", &self.paths.root)
            .field("port", &self.paths.port())
            .finish()
    }
}

/// Runs blocking `work` off the runtime's workers, so a server's start or stop does not stall
/// the tasks under test.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl Paths {
    fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// A fresh directory for a cluster, owned by the user the server runs as.
    fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // The process's start time too: a pid is soon reused, and a dead process's leftovers
        // under the same pid must never be taken for this one's.
        let name = format!(
            "{DIR_PREFIX}{}-{}-{}",
            std::process::id(),
            process_nonce(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let root = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&root);
        let as_postgres = running_as_root();
        make_root(&root, as_postgres);
        Self {
            data: root.join("data"),
            log: root.join("server.log"),
            output: root.join("commands.out"),
            root,
            bin: pg_bin_dir(),
            port: AtomicU16::new(free_port()),
            as_postgres,
        }
    }

    fn initdb(&self) {
        let data = self.data.to_str().expect("utf-8 temp dir");
        let args = [
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "--locale=C",
            "--encoding=UTF8",
            "--no-sync",
        ];
        let Err(why) = self.run("initdb", &args, INITDB_LIMIT) else {
            return;
        };
        // Seen twice in CI, in tests/pgbouncer.rs and on a process's first cluster: initdb could
        // not be started (spawn: ENOENT) though its directory had just been written to; the
        // cause is not found. Such a failure is said loudly, with what exists, and initdb tried
        // once more (in a directory made again if it is gone). Any other failure is final.
        let spawn_failed = why.contains(CANNOT_RUN);
        if self.root.exists() && !spawn_failed {
            panic!(
                "initdb of the throwaway cluster failed: {why}{}",
                self.facts()
            );
        }
        eprintln!(
            "throwaway cluster: initdb did not start ({why}){}; trying once more",
            self.facts()
        );
        if !self.root.exists() {
            make_root(&self.root, self.as_postgres);
        }
        if let Err(why) = self.run("initdb", &args, INITDB_LIMIT) {
            panic!(
                "initdb of the throwaway cluster failed twice: {why}{}",
                self.facts()
            );
        }
    }

    /// What a failed spawn may hinge on: whether the directory, the binary and `runuser` exist.
    fn facts(&self) -> String {
        let runuser = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("runuser").exists())
        });
        let initdb = self.bin.join("initdb");
        format!(
            " [directory {} exists: {}; {} exists: {}; runuser on PATH: {runuser}; as postgres: {}]",
            self.root.display(),
            self.root.exists(),
            initdb.display(),
            initdb.exists(),
            self.as_postgres,
        )
    }

    /// A copy of the server on 127.0.0.1:`port`, made a standby of it (`pg_basebackup -R`).
    fn base_backup(&self, port: u16) {
        let data = self.data.to_str().expect("utf-8 temp dir");
        let port = port.to_string();
        let args = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-D",
            data,
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
            "-w",
        ];
        if let Err(why) = self.run("pg_basebackup", &args, INITDB_LIMIT) {
            panic!("pg_basebackup of the throwaway replica failed: {why}");
        }
    }

    /// The settings of a small, fast, disposable server: nothing here needs to survive a power
    /// cut, and several of these may run beside the shared server.
    ///
    /// Appended to what is there, so a replica's copy of its primary's file gets its own socket
    /// directory; `extra` comes last and wins.
    fn configure(&self, extra: &str) {
        let settings = format!(
            "\n# dbscope's throwaway test cluster\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             max_connections = 60\n\
             shared_buffers = 16MB\n\
             fsync = off\n\
             full_page_writes = off\n\
             synchronous_commit = on\n\
             logging_collector = off\n\
             log_min_messages = warning\n\
             {extra}\n",
            self.root.display()
        );
        let conf = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .unwrap_or_else(|e| panic!("reading {}: {e}", conf.display()));
        text.push_str(&settings);
        std::fs::write(&conf, text).unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
    }

    /// `pg_ctl start -w` on this cluster's port; the moment it returned.
    fn pg_ctl_start(&self) -> Result<Instant, String> {
        let log = self.log.to_str().expect("utf-8 temp dir").to_owned();
        let port = format!("-p {}", self.port());
        self.pg_ctl(&["start", "-l", &log, "-o", &port])
    }

    /// `pg_ctl <args> -D <data> -w -t <limit>`, bounded; the moment it returned.
    fn pg_ctl(&self, args: &[&str]) -> Result<Instant, String> {
        let data = self.data.to_str().expect("utf-8 temp dir");
        let wait = PG_CTL_WAIT_SECS.to_string();
        let mut all = vec!["-D", data, "-w", "-t", &wait];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all, PG_CTL_LIMIT)?;
        Ok(Instant::now())
    }

    /// Runs one of the cluster's binaries, as the server's user, within `limit`.
    fn run(&self, program: &str, args: &[&str], limit: Duration) -> Result<(), String> {
        let binary = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&binary);
            c
        } else {
            Command::new(&binary)
        };
        command.args(args);
        let shown = format!("{program} {}", args.join(" "));
        let output = File::create(&self.output)
            .map_err(|e| format!("{shown}: creating {}: {e}", self.output.display()))?;
        let errors = output.try_clone().map_err(|e| format!("{shown}: {e}"))?;
        command
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors);
        let status = run_bounded(&mut command, limit).map_err(|why| format!("{shown}: {why}"))?;
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

    /// Stops the server however it can, within [`TEARDOWN_LIMIT`], and removes the directory.
    /// Never panics: it runs in `Drop`, possibly while a test unwinds.
    fn teardown(&self) {
        let pid_file = self.data.join("postmaster.pid");
        if pid_file.exists() {
            self.signal_all("-CONT"); // a frozen server would not stop
            let data = self.data.to_str().unwrap_or_default();
            let stopped = self.run(
                "pg_ctl",
                &["-D", data, "-w", "-t", "10", "stop", "-m", "immediate"],
                TEARDOWN_LIMIT,
            );
            if let Err(why) = stopped {
                eprintln!(
                    "throwaway cluster {}: {why}; killing it",
                    self.root.display()
                );
                kill_postmaster(&pid_file);
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!("throwaway cluster: removing {}: {e}", self.root.display());
        }
    }
}

/// Makes a cluster's directory, owned by `postgres` when the tests run as root.
fn make_root(root: &Path, as_postgres: bool) {
    std::fs::create_dir(root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
    if as_postgres {
        let (uid, gid) = postgres_user();
        std::os::unix::fs::chown(root, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", root.display()));
    }
}

/// How [`run_bounded`] says that a command could not be started at all.
const CANNOT_RUN: &str = "cannot run it";

/// Runs `command`, killing it if it outlives `limit`.
pub fn run_bounded(command: &mut Command, limit: Duration) -> Result<ExitStatus, String> {
    let mut child = command.spawn().map_err(|e| format!("{CANNOT_RUN}: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {limit:?}; killed"));
            }
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    }
}

impl Paths {
    /// Sends `signal` (`kill`'s option) to the postmaster and each of its children.
    fn signal_all(&self, signal: &str) {
        let Some(postmaster) = postmaster_pid(&self.data.join("postmaster.pid")) else {
            return;
        };
        let mut pids = vec![postmaster.to_string()];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid …`: the fields after the last `)`.
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(postmaster) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let _ = run_bounded(
            Command::new("kill")
                .arg(signal)
                .args(&pids)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            Duration::from_secs(5),
        );
    }
}

/// The postmaster's pid: the first line of `postmaster.pid`.
fn postmaster_pid(pid_file: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// SIGKILLs the postmaster named in `postmaster.pid` (its first line); its children exit when
/// they see it gone.
fn kill_postmaster(pid_file: &Path) {
    let Some(pid) = postmaster_pid(pid_file) else {
        return;
    };
    let _ = run_bounded(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        Duration::from_secs(5),
    );
}

/// Removes the clusters of test processes that no longer run (killed before their `Drop`), so
/// that their servers do not outlive them for good.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || is_alive(pid) {
            continue;
        }
        let root = entry.path();
        let stale = Paths {
            data: root.join("data"),
            log: root.join("server.log"),
            output: root.join("commands.out"),
            root,
            bin: pg_bin_dir(),
            port: AtomicU16::new(0),
            as_postgres: running_as_root(),
        };
        eprintln!(
            "throwaway cluster: removing {}, left by process {pid}",
            stale.root.display()
        );
        stale.teardown();
    }
}

/// This process's start, in nanoseconds since the epoch: with its pid, a name no other
/// process has used.
pub fn process_nonce() -> u128 {
    static NONCE: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    *NONCE.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    })
}

/// Whether process `pid` runs: a zombie (killed, not yet reaped, as happens in containers
/// whose init reaps nothing) does not.
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state …`; comm may hold spaces and parentheses, the state follows the last `)`.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// A TCP port on 127.0.0.1 that was free a moment ago: the one the OS gave a listener, closed.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of the OS user `postgres`, from `/etc/passwd`.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .expect(
            "the tests run as root, and PostgreSQL refuses to: they need an OS user `postgres` \
             (Debian's postgresql package makes it) to run the throwaway cluster as",
        )
}

/// Where `initdb` and `pg_ctl` are: [`PG_BIN_ENV`], the newest `/usr/lib/postgresql/*/bin`, or
/// `pg_config --bindir`.
fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var(PG_BIN_ENV)
        && !dir.is_empty()
    {
        return PathBuf::from(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    if let Some((_, bin)) = newest {
        return bin;
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    from_pg_config.unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries found for the throwaway cluster: install the server \
             package (e.g. `bash .ci/run` does), or set {PG_BIN_ENV} to the directory holding \
             initdb and pg_ctl"
        )
    })
}
