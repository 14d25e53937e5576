//! A blocking session's round trips wake no other thread: the calling thread waits for the
//! socket itself (dbscope issue 14, item 4).
//!
//! The proof is the kernel's count of the times the blocking faces' runtime thread
//! (`dbscope-blocking`) went to sleep and was woken (`voluntary_ctxt_switches` in
//! `/proc/self/task/<tid>/status`), before and after a run of sessions. When that thread drives
//! the sockets, each round trip wakes it (it then wakes the caller): at least one switch per
//! round trip. When the caller drives its connection's socket, the thread sleeps throughout.
//!
//! A file of its own: the count must be of this test's manager's thread alone, and a test
//! binary is one process (other tests' managers would start threads of the same name).
#![cfg(target_os = "linux")]

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{Kind, TestDb};
use dbscope::BindManager;
use dbscope::blocking::BlockingBind;

/// Sessions per backend; three round trips each (BEGIN, the select, COMMIT).
const SESSIONS: u64 = 100;

/// Runs the async test plumbing on a runtime of its own, never around a blocking call.
fn census<F: std::future::Future>(work: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("census runtime")
        .block_on(work)
}

/// The thread ids of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<String> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    tasks
        .filter_map(|task| {
            let task = task.ok()?.path();
            let name = std::fs::read_to_string(task.join("comm")).ok()?;
            name.starts_with(prefix)
                .then(|| task.file_name()?.to_str().map(str::to_owned))
                .flatten()
        })
        .collect()
}

/// The thread id of the blocking faces' runtime thread, the only one in this process.
fn runtime_thread() -> String {
    let start = Instant::now();
    loop {
        let found = threads_named("dbscope-blockin");
        match found.as_slice() {
            [one] => return one.clone(),
            [] if start.elapsed() < Duration::from_secs(10) => {
                thread::sleep(Duration::from_millis(10))
            }
            _ => panic!("one blocking runtime thread expected in this process, found {found:?}"),
        }
    }
}

/// How many times thread `tid` of this process has gone to sleep so far.
fn sleeps(tid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .expect("the thread's status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// `SESSIONS` sessions on `bind`, each a select in a transaction, committed; `int` is the
/// backend's 64-bit integer type.
fn sessions<DB: common::Typed>(bind: &BlockingBind<DB>, int: &str) {
    for i in 0..SESSIONS {
        let mut session = bind.session();
        let select = common::sql(format!("SELECT CAST({i} AS {int})"));
        let n = common::blocking_fetch_i64(&mut session, select).expect("select");
        assert_eq!(n, i as i64);
        session.commit().expect("commit");
    }
}

/// The runtime thread's sleeps during `sessions` on `bind`, after one session to open its
/// connection (the connect does wake it).
fn sleeps_during<DB: common::Typed>(
    bind: &BlockingBind<DB>,
    int: &str,
    runtime_thread: &str,
) -> u64 {
    let mut warm = bind.session();
    warm.execute(sqlx::query("SELECT 1")).expect("warm up");
    warm.commit().expect("commit");
    drop(warm);
    let before = sleeps(runtime_thread);
    sessions(bind, int);
    sleeps(runtime_thread) - before
}

#[test]
fn blocking_round_trips_never_wake_the_runtime_thread() {
    let pg = census(TestDb::new(Kind::Postgres));
    let mysql = census(TestDb::new(Kind::MySql));
    let manager = BindManager::builder()
        .bind("pg", pg.config().max_connections(1))
        .bind("mysql", mysql.config().max_connections(1))
        .build()
        .expect("manager");
    let pg_bind = manager.blocking_bind::<sqlx::Postgres>("pg").unwrap();
    let mysql_bind = manager.blocking_bind::<sqlx::MySql>("mysql").unwrap();

    // Linux keeps 15 bytes of a thread's name: `dbscope-blockin`. A new thread names itself
    // once it runs, so it may take a moment to show.
    let runtime = runtime_thread();
    // The bound leaves room for a stray wake-up; a thread driving the sockets would sleep at
    // least 3 × SESSIONS times.
    let bound = SESSIONS / 10;
    let on_pg = sleeps_during(&pg_bind, "BIGINT", &runtime);
    assert!(
        on_pg <= bound,
        "PostgreSQL: the runtime thread slept {on_pg} times during {SESSIONS} sessions"
    );
    let on_mysql = sleeps_during(&mysql_bind, "SIGNED", &runtime);
    assert!(
        on_mysql <= bound,
        "MariaDB: the runtime thread slept {on_mysql} times during {SESSIONS} sessions"
    );
    manager
        .close_blocking(Duration::from_secs(5))
        .expect("close");
    census(pg.finish());
    census(mysql.finish());
}
