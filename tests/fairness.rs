//! Fair under contention: 256 tasks on a pool of 8 connections (the shared local PostgreSQL),
//! each running a few sessions back to back. Every task is served, none starves, and checkouts
//! are served in the order they asked.
//!
//! What a checkout waits for is measured alone: on an autocommit session,
//! [`Session::connection`](dbscope::Session::connection) is a checkout and nothing else (no
//! BEGIN); the session then begins, runs a statement and commits.
//!
//! **Order, deterministically.** deadpool hands out connections through tokio's semaphore, whose
//! waiters queue first in, first out, and a returned permit goes to the head of the queue (a
//! newcomer cannot barge in). On a `current_thread` runtime nothing runs between a task's
//! taking its arrival ticket and its joining that queue, nor between its permit and its
//! checkout's return (pooled connections are not pinged: `HealthCheck::Never`; the pool is full
//! before the tasks start, so nothing is being opened), and each task runs `unconstrained`, so
//! tokio's cooperative budget cannot make it yield in between. Arrival order is then service
//! order, whatever the machine's speed or load: nothing in it depends on time. The test allows a
//! lag of up to the pool's size anyway, which no FIFO pool comes near and every LIFO or barging
//! one exceeds by far (a task's own next checkout would overtake a queue of ~250).
//!
//! On the multi-threaded runtime, the second test reports the percentiles of the wait and checks
//! that every task finished every session, with no checkout timed out.
//!
//! Run with `--nocapture` for the figures.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Kind, TestDb};
use dbscope::{Bind, BindManager, HealthCheck};
use sqlx::Postgres;

/// One test at a time, so that neither's load shows in the other's figures.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TASKS: usize = 256;
const SESSIONS_PER_TASK: usize = 4;
const POOL: usize = 8;
/// Generous: the longest wait expected is ~TASKS / POOL sessions' time (tens of milliseconds).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// One checkout: who, its place in the order of asking and in the order of service, its wait.
#[derive(Clone, Copy, Debug)]
struct Checkout {
    task: usize,
    arrival: usize,
    served: usize,
    wait: Duration,
}

/// Tickets handed out in the order checkouts ask and are served.
#[derive(Default)]
struct Tickets {
    arrivals: AtomicUsize,
    served: AtomicUsize,
}

async fn one_session(
    bind: &Bind<Postgres>,
    task: usize,
    tickets: &Tickets,
) -> Result<Checkout, dbscope::Error> {
    let mut session = bind.session().autocommit(true);
    let arrival = tickets.arrivals.fetch_add(1, Ordering::SeqCst);
    let asked = Instant::now();
    session.connection().await?; // the checkout alone
    let wait = asked.elapsed();
    let served = tickets.served.fetch_add(1, Ordering::SeqCst);
    session.begin().await?;
    sqlx::query("SELECT 1").execute(&mut session).await?;
    session.commit().await?;
    session.close().await?;
    Ok(Checkout {
        task,
        arrival,
        served,
        wait,
    })
}

/// A pool of [`POOL`] connections, all open and idle before the contention starts.
async fn setup() -> (TestDb, BindManager) {
    let db = TestDb::new(Kind::Postgres).await;
    let manager = db.manager(|c| {
        c.max_connections(POOL as u32)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .health_check(HealthCheck::Never)
            .idle_timeout(None)
            .max_lifetime(None)
    });
    let bind = manager.bind::<Postgres>("main").unwrap();
    let mut held = Vec::new();
    for _ in 0..POOL {
        let mut session = bind.session();
        session.begin().await.expect("warm-up checkout");
        held.push(session);
    }
    for session in held {
        session.close().await.unwrap();
    }
    let status = bind.status();
    assert_eq!(
        (status.connections, status.idle),
        (POOL, POOL),
        "{status:?}"
    );
    (db, manager)
}

/// Runs the tasks and returns every checkout; panics if a task fails or does not finish.
async fn contend(manager: &BindManager) -> Vec<Checkout> {
    let bind = manager.bind::<Postgres>("main").unwrap();
    let tickets = Arc::new(Tickets::default());
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (bind, tickets) = (bind.clone(), tickets.clone());
            tokio::spawn(tokio::task::unconstrained(async move {
                let mut mine = Vec::with_capacity(SESSIONS_PER_TASK);
                for _ in 0..SESSIONS_PER_TASK {
                    mine.push(one_session(&bind, task, &tickets).await);
                }
                mine
            }))
        })
        .collect();
    let mut all = Vec::with_capacity(TASKS * SESSIONS_PER_TASK);
    for (task, handle) in tasks.into_iter().enumerate() {
        let mine = tokio::time::timeout(Duration::from_secs(120), handle)
            .await
            .unwrap_or_else(|_| panic!("task {task} did not finish: starved?"))
            .expect("task panicked");
        for checkout in mine {
            all.push(checkout.unwrap_or_else(|e| panic!("task {task} was not served: {e}")));
        }
    }
    all
}

/// p50, p99 and max of the waits.
fn percentiles(checkouts: &[Checkout]) -> (Duration, Duration, Duration) {
    let mut waits: Vec<Duration> = checkouts.iter().map(|c| c.wait).collect();
    waits.sort();
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99), *waits.last().unwrap())
}

/// For each checkout, how many that asked after it were served before it; the largest.
fn max_overtaken(checkouts: &[Checkout]) -> (usize, Option<Checkout>) {
    let mut by_arrival = checkouts.to_vec();
    by_arrival.sort_by_key(|c| c.arrival);
    let mut worst = (0, None);
    for (i, c) in by_arrival.iter().enumerate() {
        let overtaken = by_arrival[i + 1..]
            .iter()
            .filter(|later| later.served < c.served)
            .count();
        if overtaken > worst.0 {
            worst = (overtaken, Some(*c));
        }
    }
    worst
}

/// What every run must show: all served, none timed out, no connection opened beyond the pool,
/// and the server saw exactly the pool's connections.
async fn assert_all_served(db: &TestDb, manager: &BindManager, checkouts: &[Checkout]) {
    assert_eq!(checkouts.len(), TASKS * SESSIONS_PER_TASK);
    let mut per_task = vec![0; TASKS];
    for c in checkouts {
        per_task[c.task] += 1;
        assert!(c.wait < ACQUIRE_TIMEOUT, "{c:?}");
    }
    assert!(
        per_task.iter().all(|&n| n == SESSIONS_PER_TASK),
        "{per_task:?}"
    );
    let status = manager.status().remove(0);
    assert_eq!(status.timeouts, 0, "{status:?}");
    assert_eq!(
        status.opened, POOL as u64,
        "no connection opened beyond the pool: {status:?}"
    );
    assert_eq!(status.in_use, 0, "{status:?}");
    assert_eq!(db.server_connections().await, Some(POOL as i64));
}

fn print_figures(title: &str, checkouts: &[Checkout]) {
    let (p50, p99, max) = percentiles(checkouts);
    let (overtaken, _) = max_overtaken(checkouts);
    println!(
        "{title}: {TASKS} tasks x {SESSIONS_PER_TASK} sessions on {POOL} connections: checkout \
         wait p50 {p50:?}, p99 {p99:?}, max {max:?}; most later arrivals served first: \
         {overtaken}"
    );
}

async fn finish(db: TestDb, manager: BindManager) {
    manager.close(Duration::from_secs(10)).await.unwrap();
    db.finish().await;
}

#[tokio::test(flavor = "current_thread")]
async fn checkouts_are_served_in_the_order_they_ask() {
    let _one_at_a_time = SERIAL.lock().await;
    common::within_limit("checkouts_are_served_in_the_order_they_ask", async {
        let (db, manager) = setup().await;
        let checkouts = contend(&manager).await;
        print_figures("one thread", &checkouts);
        assert_all_served(&db, &manager, &checkouts).await;
        let (overtaken, victim) = max_overtaken(&checkouts);
        assert!(
            overtaken <= POOL,
            "a checkout was overtaken by {overtaken} that asked after it: {victim:?}"
        );
        finish(db, manager).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_one_of_256_tasks_on_8_connections_is_served() {
    let _one_at_a_time = SERIAL.lock().await;
    common::within_limit("every_one_of_256_tasks_on_8_connections_is_served", async {
        let (db, manager) = setup().await;
        let checkouts = contend(&manager).await;
        print_figures("two worker threads", &checkouts);
        assert_all_served(&db, &manager, &checkouts).await;
        finish(db, manager).await;
    })
    .await;
}
