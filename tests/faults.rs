//! Faults under load, on a throwaway PostgreSQL cluster of the test's own (tests/common/cluster.rs,
//! never the shared server): 8 tasks write in transactional sessions while the server restarts
//! (stopped then started, `pg_ctl restart -m fast`, crashed then recovered), or while an admin
//! kills their backends at random.
//!
//! Every insert carries a unique id, and every attempt's end is recorded: committed (`commit()`
//! returned `Ok`), outcome unknown (an error that says the write may have landed: a connection
//! lost during COMMIT), or failed (any other error: nothing of it committed). Afterwards the
//! table is read back and checked against that record:
//!
//! - every error is a `dbscope::Error` of a kind these faults call for, naming the bind;
//! - no committed row is missing, and no row of a failed attempt is there;
//! - after a restart, the first commit lands within [`RECOVERY_BOUND`] of the server's return.
//!
//! Pacing is by progress, never by the clock: the test waits for commits to happen (each wait
//! bounded, failing with what it waited for), so a slow machine makes it slower, not flaky.
//!
//! Run with `--nocapture` for the figures: recovery times, attempts and errors by kind.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Cluster, Stop};
use dbscope::{Bind, BindConfig, BindManager, ErrorKind};
use sqlx::{Connection, PgConnection, Postgres};

const BIND: &str = "main";
const WRITERS: i64 = 8;
/// How soon after `pg_ctl start -w` returns the first commit must land.
///
/// A bound on dbscope's recovery, not on the machine: once the server accepts connections, a
/// writer needs at most its 5 ms back-off after an error, a failed attempt on each dead pooled
/// connection it meets (a write to a closed socket: microseconds), one new connection and three
/// round trips (BEGIN, INSERT, COMMIT). That is 10 to 30 ms on a quiet loopback; 1 s leaves a
/// 30-fold margin for a loaded machine. Only a pool that keeps handing out dead connections,
/// backs off for long, or waits for a timer before reconnecting can miss it.
const RECOVERY_BOUND: Duration = Duration::from_secs(1);
/// How long any one wait for progress may take before the test fails as stuck.
const PROGRESS_LIMIT: Duration = Duration::from_secs(60);

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// `commit()` returned `Ok`: the row must be there.
    Committed,
    /// An error that says the outcome is unknown: the row may or may not be there.
    Unknown,
    /// Any other error: the row must not be there.
    Failed,
}

/// Where an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Checkout, BEGIN or the INSERT.
    Work,
    Commit,
}

/// One attempt's record.
#[derive(Debug)]
struct Attempt {
    id: i64,
    writer: i64,
    outcome: Outcome,
    /// When the attempt returned.
    done: Instant,
    error: Option<Failure>,
}

/// What the test keeps of an error.
#[derive(Debug)]
struct Failure {
    stage: Stage,
    kind: ErrorKind,
    bind: Option<String>,
    /// `Display`.
    message: String,
    /// `Display`, then the cause's.
    with_cause: String,
    connection_lost: bool,
    retryable: bool,
    /// [`outcome_unknown`].
    unknown: bool,
}

/// The attempts of all writers, in the order they returned.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Attempt>>>);

impl Log {
    fn push(&self, attempt: Attempt) {
        self.0.lock().unwrap().push(attempt);
    }

    /// Commits that returned after `since` (all of them for `None`), per writer.
    fn commits_since(&self, since: Option<Instant>) -> Vec<usize> {
        let mut per_writer = vec![0; WRITERS as usize];
        for a in self.0.lock().unwrap().iter() {
            if a.outcome == Outcome::Committed && since.is_none_or(|s| a.done > s) {
                per_writer[a.writer as usize] += 1;
            }
        }
        per_writer
    }

    /// Errors that returned after `since`, per writer.
    fn errors_since(&self, since: Instant) -> Vec<usize> {
        let mut per_writer = vec![0; WRITERS as usize];
        for a in self.0.lock().unwrap().iter() {
            if a.error.is_some() && a.done > since {
                per_writer[a.writer as usize] += 1;
            }
        }
        per_writer
    }

    /// Errors that returned after `since`, by what failed (`bind `main`: BEGIN failed` …).
    fn errors_by_message_since(&self, since: Option<Instant>) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for a in self.0.lock().unwrap().iter() {
            if let Some(f) = a
                .error
                .as_ref()
                .filter(|_| since.is_none_or(|s| a.done > s))
            {
                let what = f.message.split(';').next().unwrap_or_default().to_owned();
                *counts.entry(what).or_default() += 1;
            }
        }
        counts
    }

    /// How long after `since` the first commit returned, and the last writer's first commit.
    fn recovery_after(&self, since: Instant) -> (Duration, Duration) {
        let mut first = vec![None; WRITERS as usize];
        for a in self.0.lock().unwrap().iter() {
            if a.outcome == Outcome::Committed && a.done >= since {
                first[a.writer as usize].get_or_insert(a.done - since);
            }
        }
        let firsts: Vec<Duration> = first
            .into_iter()
            .map(|f| f.expect("every writer committed after the server came back"))
            .collect();
        (*firsts.iter().min().unwrap(), *firsts.iter().max().unwrap())
    }

    fn take(&self) -> Vec<Attempt> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// An error the commit's caller reads as "the write may have landed", which must also say so.
fn outcome_unknown(e: &dbscope::Error) -> bool {
    let unknown = e.is_outcome_unknown();
    assert_eq!(
        unknown,
        e.to_string().contains("whether it took effect is unknown"),
        "the message says what the predicate says: {e}"
    );
    unknown
}

/// The error's message and its cause's, as a log line would show them.
fn with_cause(e: &dbscope::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The errors these faults may cause. A server that restarts refuses or drops connections
/// (`Connect`, `Query` with a lost connection); a checkout may time out meanwhile. Anything
/// else (a `Poisoned` session, a `Query` error that is not a lost connection) is a wrong answer.
const EXPECTED_KINDS: [ErrorKind; 3] = [ErrorKind::Connect, ErrorKind::Timeout, ErrorKind::Query];

/// Writes rows `writer * 10^9 + n` until `stop`, one transactional session per row.
async fn writer(bind: Bind<Postgres>, writer: i64, log: Log, stop: Arc<AtomicBool>) {
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = writer * 1_000_000_000 + n;
        let result = write_one(&bind, id, writer).await;
        let done = Instant::now();
        let (outcome, error) = match result {
            Ok(()) => (Outcome::Committed, None),
            Err((stage, e)) => {
                let unknown = outcome_unknown(&e);
                let outcome = if unknown {
                    Outcome::Unknown
                } else {
                    Outcome::Failed
                };
                let failure = Failure {
                    stage,
                    kind: e.kind(),
                    bind: e.bind().map(str::to_owned),
                    message: e.to_string(),
                    with_cause: with_cause(&e),
                    connection_lost: e.is_connection_lost(),
                    retryable: e.is_retryable(),
                    unknown,
                };
                (outcome, Some(failure))
            }
        };
        let failed = error.is_some();
        log.push(Attempt {
            id,
            writer,
            outcome,
            done,
            error,
        });
        if failed {
            // A short back-off, so that eight writers do not spin on a server that is down.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn write_one(
    bind: &Bind<Postgres>,
    id: i64,
    writer: i64,
) -> Result<(), (Stage, dbscope::Error)> {
    let mut session = bind.session();
    sqlx::query("INSERT INTO items (id, writer) VALUES ($1, $2)")
        .bind(id)
        .bind(writer)
        .execute(&mut session)
        .await
        .map_err(|e| (Stage::Work, e.into()))?;
    session.commit().await.map_err(|e| (Stage::Commit, e))?;
    // Nothing is open after the commit: the connection goes back as it is.
    let _ = session.close().await;
    Ok(())
}

/// The cluster, its table, a manager on it and eight writers.
struct Rig {
    cluster: Cluster,
    manager: BindManager,
    tag: String,
    log: Log,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Rig {
    async fn start() -> Self {
        let cluster = Cluster::start().await;
        let mut admin = admin(&cluster).await;
        sqlx::raw_sql("CREATE TABLE items (id BIGINT PRIMARY KEY, writer INT NOT NULL)")
            .execute(&mut admin)
            .await
            .expect("create table");
        admin.close().await.ok();
        let tag = format!("dbscope_faults_{}", std::process::id());
        let config = BindConfig::new(cluster.url())
            .max_connections(WRITERS as u32)
            .acquire_timeout(Duration::from_secs(5))
            .application_name(tag.as_str());
        let manager = BindManager::builder()
            .bind(BIND, config)
            .build()
            .expect("manager builds");
        let bind = manager.bind::<Postgres>(BIND).unwrap();
        let log = Log::default();
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..WRITERS)
            .map(|w| tokio::spawn(writer(bind.clone(), w, log.clone(), stop.clone())))
            .collect();
        Self {
            cluster,
            manager,
            tag,
            log,
            stop,
            writers,
        }
    }

    /// Waits until every writer has committed `n` rows that returned after `since`.
    async fn until_each_commits(&self, n: usize, since: Option<Instant>, what: &str) {
        self.until(what, || {
            self.log.commits_since(since).iter().all(|&c| c >= n)
        })
        .await;
    }

    /// Waits until `check` holds, for at most [`PROGRESS_LIMIT`].
    async fn until(&self, what: &str, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(
                start.elapsed() < PROGRESS_LIMIT,
                "stuck waiting {PROGRESS_LIMIT:?} for {what}; commits per writer so far: {:?}\n\
                 server log:\n{}",
                self.log.commits_since(None),
                self.cluster.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the writers, closes the manager and checks the record against the table.
    async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.writers {
            tokio::time::timeout(PROGRESS_LIMIT, handle)
                .await
                .expect("a writer did not stop: hung in a session?")
                .expect("a writer panicked");
        }
        // A session dropped on an error may still be rolling back in the background.
        common::eventually("every connection back from the writers", || {
            let status = self.manager.status().remove(0);
            async move { status.in_use == 0 }
        })
        .await;
        let status = self.manager.status().remove(0);
        self.manager
            .close(Duration::from_secs(10))
            .await
            .expect("manager closes");
        let mut admin = admin(&self.cluster).await;
        let left_open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND state LIKE 'idle in transaction%'",
        )
        .bind(&self.tag)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert_eq!(left_open, 0, "transactions left open on the server");
        let present: HashSet<i64> = sqlx::query_scalar("SELECT id FROM items")
            .fetch_all(&mut admin)
            .await
            .unwrap()
            .into_iter()
            .collect();
        admin.close().await.ok();
        Report::new(self.log.take(), &present, status)
    }
}

/// A connection to the cluster outside dbscope, as its administrator.
async fn admin(cluster: &Cluster) -> PgConnection {
    let url = format!("{}?application_name=dbscope_faults_admin", cluster.url());
    PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("admin connection to the throwaway cluster: {e}"))
}

/// The record checked against the table.
#[derive(Debug, Default)]
struct Report {
    attempts: usize,
    by_outcome: BTreeMap<String, usize>,
    /// Committed rows missing from the table.
    lost: Vec<i64>,
    /// Rows present whose attempt failed with an error that did not say the outcome was unknown.
    phantoms: Vec<i64>,
    /// Unknown outcomes, and how many of them landed.
    unknown: usize,
    unknown_landed: usize,
    /// (stage, kind, connection lost, retryable) → count, and the first such error's text
    /// with its cause.
    errors: BTreeMap<String, (usize, String)>,
    /// Errors that break the rules: wrong kind, no bind, misclassified.
    wrong_errors: Vec<String>,
    opened: u64,
    discarded: u64,
}

impl Report {
    fn new(attempts: Vec<Attempt>, present: &HashSet<i64>, status: dbscope::BindStatus) -> Self {
        let mut report = Self {
            attempts: attempts.len(),
            opened: status.opened,
            discarded: status.discarded,
            ..Self::default()
        };
        for a in &attempts {
            *report
                .by_outcome
                .entry(format!("{:?}", a.outcome))
                .or_default() += 1;
            let landed = present.contains(&a.id);
            match a.outcome {
                Outcome::Committed if !landed => report.lost.push(a.id),
                Outcome::Failed if landed => report.phantoms.push(a.id),
                Outcome::Unknown => {
                    report.unknown += 1;
                    report.unknown_landed += usize::from(landed);
                }
                _ => {}
            }
            if let Some(f) = &a.error {
                report.check_error(a.id, f);
            }
        }
        report
    }

    fn check_error(&mut self, id: i64, f: &Failure) {
        let key = format!(
            "{:?} at {:?}{}{}",
            f.kind,
            f.stage,
            if f.connection_lost {
                ", connection lost"
            } else {
                ""
            },
            if f.retryable { ", retryable" } else { "" },
        );
        let entry = self
            .errors
            .entry(key)
            .or_insert_with(|| (0, f.with_cause.clone()));
        entry.0 += 1;
        let mut wrong = Vec::new();
        if !EXPECTED_KINDS.contains(&f.kind) {
            wrong.push(format!(
                "kind {:?} is not one these faults call for",
                f.kind
            ));
        }
        if f.kind == ErrorKind::Query && !f.connection_lost {
            wrong.push("a Query error that is not a lost connection".to_owned());
        }
        if f.bind.as_deref() != Some(BIND) {
            wrong.push(format!("bind() is {:?}", f.bind));
        }
        if !f.message.contains(&format!("bind `{BIND}`")) {
            wrong.push("the message does not name the bind".to_owned());
        }
        if f.stage == Stage::Work && f.unknown {
            wrong.push("a failure inside a transaction said it may have landed".to_owned());
        }
        if !wrong.is_empty() {
            self.wrong_errors.push(format!(
                "row {id}: {} ({:?}: {})",
                wrong.join("; "),
                f.kind,
                f.with_cause
            ));
        }
    }

    fn print(&self, title: &str) {
        println!("--- {title} ---");
        println!("attempts: {} {:?}", self.attempts, self.by_outcome);
        println!(
            "outcome unknown: {} ({} of them landed)",
            self.unknown, self.unknown_landed
        );
        println!(
            "connections opened: {}, discarded: {}",
            self.opened, self.discarded
        );
        println!("errors by kind:");
        for (key, (n, example)) in &self.errors {
            println!("  {n:>6}  {key}\n          e.g. {example}");
        }
    }

    /// The rules every fault must keep.
    fn assert_sound(&self) {
        assert!(
            self.by_outcome.get("Committed").copied().unwrap_or(0) > 0,
            "nothing committed at all"
        );
        assert!(
            self.wrong_errors.is_empty(),
            "{} errors break the rules, e.g.:\n{}",
            self.wrong_errors.len(),
            self.wrong_errors[..self.wrong_errors.len().min(10)].join("\n")
        );
        assert!(
            self.lost.is_empty(),
            "{} rows whose commit returned Ok are missing, e.g. {:?}",
            self.lost.len(),
            &self.lost[..self.lost.len().min(10)]
        );
        assert!(
            self.phantoms.is_empty(),
            "{} rows are there though their commit failed without saying the outcome was \
             unknown, e.g. {:?}",
            self.phantoms.len(),
            &self.phantoms[..self.phantoms.len().min(10)]
        );
    }
}

async fn server_restarts_under_eight_writers_body() {
    let rig = Rig::start().await;
    rig.until_each_commits(20, None, "warm-up commits").await;

    // 1. Down, long enough that every writer sees it, then up again.
    rig.cluster.stop(Stop::Fast).await;
    let down = Instant::now();
    rig.until("every writer to fail against the stopped server", || {
        rig.log.errors_since(down).iter().all(|&e| e >= 2)
    })
    .await;
    let back = rig.cluster.start_again().await;
    rig.until_each_commits(20, Some(back), "commits after the start")
        .await;
    let (first_start, last_writer_start) = rig.log.recovery_after(back);
    let errors_after_start = rig.log.errors_by_message_since(Some(back));

    // 2. `pg_ctl restart -m fast` while they write: sessions terminated mid-flight, the server
    //    back at once.
    let back = rig.cluster.restart().await;
    rig.until_each_commits(20, Some(back), "commits after the restart")
        .await;
    let (first_restart, last_writer_restart) = rig.log.recovery_after(back);
    let errors_after_restart = rig.log.errors_by_message_since(Some(back));

    // 3. A crash (every server process killed at once), then a start that runs crash recovery:
    //    what was committed must survive it.
    rig.cluster.crash().await;
    let down = Instant::now();
    rig.until("every writer to fail against the crashed server", || {
        rig.log.errors_since(down).iter().all(|&e| e >= 2)
    })
    .await;
    let back = rig.cluster.start_again().await;
    rig.until_each_commits(20, Some(back), "commits after crash recovery")
        .await;
    let (first_crash, last_writer_crash) = rig.log.recovery_after(back);

    let report = rig.finish().await;
    report.print("server restarted under 8 writers");
    println!(
        "stop + start: first commit {first_start:?} after pg_ctl start returned (every writer \
         within {last_writer_start:?})"
    );
    println!(
        "restart -m fast: first commit {first_restart:?} after pg_ctl restart returned (every \
         writer within {last_writer_restart:?})"
    );
    println!(
        "crash + start: first commit {first_crash:?} after pg_ctl start returned (every writer \
         within {last_writer_crash:?})"
    );
    println!("errors after pg_ctl start returned: {errors_after_start:?}");
    println!("errors after pg_ctl restart returned: {errors_after_restart:?}");
    report.assert_sound();
    assert!(
        first_start <= RECOVERY_BOUND,
        "the first commit after the start took {first_start:?}"
    );
    assert!(
        first_restart <= RECOVERY_BOUND,
        "the first commit after the restart took {first_restart:?}"
    );
    assert!(
        first_crash <= RECOVERY_BOUND,
        "the first commit after crash recovery took {first_crash:?}"
    );
}

/// A small xorshift generator: the victims are random, and the seed printed makes a run
/// repeatable in what it picks.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

const KILLS: usize = 40;

async fn backends_killed_at_random_under_eight_writers_body() {
    let rig = Rig::start().await;
    rig.until_each_commits(10, None, "warm-up commits").await;
    let seed = u64::from(std::process::id()) | 1;
    let mut rng = Rng(seed);
    let mut killer = admin(&rig.cluster).await;
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut landed = 0;
    for attempt in 0.. {
        if landed == KILLS {
            break;
        }
        assert!(
            attempt < KILLS * 10,
            "only {landed} of {KILLS} kills landed"
        );
        // Paced by progress: a few commits between kills, however fast the machine is.
        let since = Instant::now();
        rig.until("commits between kills", || {
            rig.log.commits_since(Some(since)).iter().sum::<usize>() >= 4
        })
        .await;
        let backends: Vec<(i32, Option<String>)> =
            sqlx::query_as("SELECT pid, state FROM pg_stat_activity WHERE application_name = $1")
                .bind(&rig.tag)
                .fetch_all(&mut killer)
                .await
                .unwrap();
        if backends.is_empty() {
            continue;
        }
        let (pid, state) = &backends[rng.below(backends.len())];
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut killer)
            .await
            .unwrap();
        if !killed {
            continue;
        }
        landed += 1;
        *states
            .entry(state.clone().unwrap_or_else(|| "?".into()))
            .or_default() += 1;
        // Gone before the next pick, so that no backend is counted twice.
        let start = Instant::now();
        loop {
            let alive: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1")
                    .bind(pid)
                    .fetch_one(&mut killer)
                    .await
                    .unwrap();
            if alive == 0 {
                break;
            }
            assert!(
                start.elapsed() < PROGRESS_LIMIT,
                "backend {pid} outlived its kill"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    killer.close().await.ok();
    let last_kill = Instant::now();
    rig.until_each_commits(10, Some(last_kill), "commits after the last kill")
        .await;

    let by_message = rig.log.errors_by_message_since(None);
    let report = rig.finish().await;
    report.print("backends killed at random under 8 writers");
    println!("kills: {landed} (seed {seed}), by the victim's state: {states:?}");
    println!("errors by what failed: {by_message:?}");
    report.assert_sound();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarts_under_eight_writers() {
    common::within_limit(
        "server_restarts_under_eight_writers",
        server_restarts_under_eight_writers_body(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_killed_at_random_under_eight_writers() {
    common::within_limit(
        "backends_killed_at_random_under_eight_writers",
        backends_killed_at_random_under_eight_writers_body(),
    )
    .await;
}
