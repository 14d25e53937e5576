//! The engine under the faults of production, proven on the server: connections the server
//! killed while they sat in the pool, sessions cut off mid-operation, a storm of client
//! timeouts, and checkouts cancelled while their connection is still being opened or pinged.
//!
//! The storm prints its figures:
//! `cargo test --all-features --test reliability timeout_storm -- --nocapture`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Kind, Suite, TestDb, Typed, create_table, eventually, fetch_all_pairs, insert, sql};
use dbscope::blocking::BlockingSession;
use dbscope::{BindConfig, BindManager, BindStatus, HealthCheck, Session};
use sqlx::Connection;

// ----- helpers -----

/// A long SQLite busy timeout: a statement waiting for another connection's write lock waits
/// for the test to release it, never fails on its own.
fn patient(mut config: BindConfig) -> BindConfig {
    config.connect.sqlite.busy_timeout = Some(Duration::from_secs(120));
    config
}

/// The ids of the rows committed, as a fresh session sees them.
async fn committed_ids<B: Suite>(manager: &BindManager, db: &TestDb) -> Vec<i64> {
    let mut session = manager.session::<B::Db>("main").unwrap();
    let stmt = format!("SELECT id, v FROM {} ORDER BY id", db.table);
    let rows = fetch_all_pairs(&mut session, sql(stmt))
        .await
        .expect("read ids");
    session.close().await.unwrap();
    rows.into_iter().map(|(id, _)| id).collect()
}

async fn committed_rows<B: Suite>(manager: &BindManager, db: &TestDb) -> usize {
    committed_ids::<B>(manager, db).await.len()
}

/// Waits until no connection is checked out, recovering or being opened for anyone.
async fn settled(status: impl Fn() -> BindStatus) -> BindStatus {
    eventually("every connection back in the pool", || {
        let now = status();
        async move { now.in_use == 0 && now.waiting == 0 }
    })
    .await;
    status()
}

async fn assert_no_open_transaction(db: &TestDb) {
    if db.open_transactions().await.is_some() {
        eventually("no transaction left open on the server", || async {
            db.open_transactions().await == Some(0)
        })
        .await;
    }
}

/// Puts `n` open connections in the pool: `n` sessions at once, each with a statement run,
/// then closed.
async fn fill_pool<DB: Typed>(bind: &dbscope::Bind<DB>, n: usize) {
    let mut sessions = Vec::new();
    for _ in 0..n {
        let mut session = bind.session();
        sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
        sessions.push(session);
    }
    for session in sessions {
        session.close().await.unwrap();
    }
    assert_eq!(bind.status().idle, n);
}

/// The server's ids of this test's connections (PostgreSQL by `application_name`, MariaDB by
/// the test's own user).
async fn server_ids(db: &TestDb) -> Vec<i64> {
    let (url, query) = match db.kind {
        Kind::Postgres => (
            common::server_url(common::PG_ENV, common::PG_DEFAULT),
            format!(
                "SELECT CAST(pid AS BIGINT) FROM pg_stat_activity WHERE application_name = '{}'",
                db.tag
            ),
        ),
        Kind::MySql => (
            common::server_url(common::MYSQL_ENV, common::MYSQL_DEFAULT),
            format!(
                "SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE user = '{}'",
                db.tag
            ),
        ),
        Kind::SqliteFile | Kind::SqliteMemory => unreachable!("SQLite has no server"),
    };
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(&url).await.expect("admin");
    let ids = sqlx::query_scalar(sql(query))
        .fetch_all(&mut admin)
        .await
        .expect("server ids");
    admin.close().await.ok();
    ids
}

/// Kills every connection of this test from the server's side, as a restart would, and waits
/// until the server has none left.
async fn kill_every_connection(db: &TestDb) -> usize {
    let ids = server_ids(db).await;
    for &id in &ids {
        db.kill_connection(id).await;
    }
    eventually("the server closed every connection of the test", || async {
        db.server_connections().await == Some(0)
    })
    .await;
    ids.len()
}

/// Another pool's open transaction holding row `id` (PostgreSQL, MariaDB) or the write lock
/// (SQLite): a statement writing that row waits until [`release`](Blocker::release).
struct Blocker<DB: Typed> {
    manager: BindManager,
    session: Session<DB>,
}

impl<DB: Typed> Blocker<DB> {
    async fn hold(db: &TestDb, id: i64) -> Self {
        let manager = db.manager(|c| c);
        let mut session = manager.session::<DB>("main").unwrap();
        insert(&mut session, db, id)
            .await
            .expect("the blocker's row");
        Self { manager, session }
    }

    async fn release(mut self) {
        self.session.rollback().await.unwrap();
        self.session.close().await.unwrap();
        self.manager.close(Duration::from_secs(5)).await.unwrap();
    }
}

/// Starts an insert of row 1 inside a transaction, and cuts it off while it waits for the
/// blocker: inside the open transaction, with the statement in flight, whatever the machine's
/// speed (it cannot finish before the blocker lets it).
async fn cut_off_insert<DB: Typed>(session: &mut Session<DB>, db: &TestDb) {
    session.begin().await.unwrap();
    let cut = tokio::time::timeout(Duration::from_millis(50), insert(session, db, 1)).await;
    assert!(cut.is_err(), "the insert waits for the blocker");
    assert!(session.commit().await.unwrap_err().is_poisoned());
}

// ----- dead connections -----

/// No ping before checkout but the suspects': the default policy too, for connections idle
/// under 30 s, as here; `Never` makes it so however slow the machine.
fn no_health_check(config: BindConfig) -> BindConfig {
    config.health_check(HealthCheck::Never)
}

async fn a_pooled_connection_the_server_killed_costs_a_transaction_no_error<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(no_health_check);
    create_table::<B>(&manager, &db).await;
    let bind = manager.bind::<B::Db>("main").unwrap();
    assert_eq!(
        kill_every_connection(&db).await,
        1,
        "the pool's one connection"
    );

    let mut session = bind.session();
    insert(&mut session, &db, 1)
        .await
        .expect("BEGIN met the dead connection and began on another");
    session.commit().await.unwrap();
    drop(session);

    let status = bind.status();
    assert_eq!(
        (status.discarded, status.opened, status.connections),
        (1, 2, 1),
        "{status:?}"
    );
    assert_eq!(db.server_connections().await, Some(1));
    assert_eq!(committed_ids::<B>(&manager, &db).await, [1]);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn a_restart_that_killed_every_idle_connection_costs_a_transaction_no_error<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(no_health_check);
    create_table::<B>(&manager, &db).await;
    let bind = manager.bind::<B::Db>("main").unwrap();
    fill_pool(&bind, 3).await;
    assert_eq!(kill_every_connection(&db).await, 3);

    // The first dead BEGIN marks the other two suspect: the retry's checkout pings them, finds
    // them dead too, and opens a fresh connection.
    let mut session = bind.session();
    insert(&mut session, &db, 1)
        .await
        .expect("no error for a restart");
    session.commit().await.unwrap();
    drop(session);

    let status = bind.status();
    assert_eq!(
        (status.discarded, status.opened, status.connections),
        (3, 4, 1),
        "{status:?}"
    );
    assert_eq!(committed_ids::<B>(&manager, &db).await, [1]);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn an_autocommit_statement_on_a_dead_connection_is_reported_then_suspects_are_pinged<
    B: Suite,
>() {
    let db = TestDb::new(B::KIND).await;
    // Autocommit by default: nothing goes before the statement (on MySQL, a bind whose sessions
    // are transactional sets its connections up for transactions, and an autocommit session's
    // `SET autocommit = 1` would absorb the dead connection as a BEGIN does).
    let manager = db.manager(|c| no_health_check(c).autocommit(true));
    create_table::<B>(&manager, &db).await;
    let bind = manager.bind::<B::Db>("main").unwrap();
    fill_pool(&bind, 2).await;
    assert_eq!(kill_every_connection(&db).await, 2);

    // The statement is the first thing on the wire: a dead connection fails it, and it is not
    // run again behind the caller's back (a statement can die after it ran).
    let mut first = bind.session();
    let err = dbscope::Error::from(insert(&mut first, &db, 1).await.unwrap_err());
    assert!(err.is_connection_lost(), "{err}");
    assert!(
        !err.is_retryable(),
        "an autocommit write may have landed: {err}"
    );
    drop(first);
    assert_eq!(bind.status().discarded, 1);

    // That dead connection made the other idle one suspect: pinged before use, replaced.
    let mut second = bind.session();
    insert(&mut second, &db, 2)
        .await
        .expect("a live connection");
    drop(second);
    let status = bind.status();
    assert_eq!(
        (status.discarded, status.opened, status.connections),
        (2, 3, 1),
        "{status:?}"
    );
    assert_eq!(committed_ids::<B>(&manager, &db).await, [2]);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

// ----- recovery of cut-off sessions -----

async fn a_statement_cut_off_mid_flight_gets_its_connection_recovered<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(patient);
    create_table::<B>(&manager, &db).await;
    let bind = manager.bind::<B::Db>("main").unwrap();
    let blocker = Blocker::<B::Db>::hold(&db, 1).await;
    let mut session = bind.session();
    cut_off_insert(&mut session, &db).await;
    blocker.release().await; // the cut insert now runs to its end on the server
    drop(session);

    let status = settled(|| bind.status()).await;
    assert_eq!(
        (
            status.recovered,
            status.discarded,
            status.opened,
            status.idle
        ),
        (1, 0, 1, 1),
        "drained, rolled back, checked and pooled: {status:?}"
    );
    assert_no_open_transaction(&db).await;
    // The cut insert was rolled back, and the recovered connection serves the next session.
    let mut next = bind.session();
    insert(&mut next, &db, 2).await.unwrap();
    next.commit().await.unwrap();
    drop(next);
    assert_eq!(committed_ids::<B>(&manager, &db).await, [2]);
    assert_eq!(bind.status().opened, 1, "no connection opened since");
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

async fn a_cut_off_connection_that_cannot_be_recovered_in_time_is_discarded<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(patient);
    create_table::<B>(&manager, &db).await;
    let bind = manager.bind::<B::Db>("main").unwrap();
    let blocker = Blocker::<B::Db>::hold(&db, 1).await;
    let mut session = bind.session();
    cut_off_insert(&mut session, &db).await;
    drop(session); // the insert stays stuck behind the blocker: recovery cannot drain it

    let status = settled(|| bind.status()).await;
    assert_eq!(
        (status.recovered, status.discarded, status.connections),
        (0, 1, 0),
        "{status:?}"
    );
    blocker.release().await;
    assert_no_open_transaction(&db).await;
    assert_eq!(committed_rows::<B>(&manager, &db).await, 0);
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// PostgreSQL: a deferred unique constraint makes the COMMIT itself wait for the blocker, so the
/// cut falls inside the COMMIT, deterministically.
async fn a_commit_cut_off_mid_flight_stays_unknown_and_its_connection_is_recovered<B: Suite>() {
    assert_eq!(B::KIND, Kind::Postgres, "deferred constraints");
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    let mut setup = manager.session::<B::Db>("main").unwrap();
    let ddl = format!(
        "CREATE TABLE {} (id BIGINT, v VARCHAR(50), \
         UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)",
        db.table
    );
    sqlx::query(sql(ddl)).execute(&mut setup).await.unwrap();
    setup.commit().await.unwrap();
    drop(setup);
    let bind = manager.bind::<B::Db>("main").unwrap();
    let blocker = Blocker::<B::Db>::hold(&db, 1).await;

    let mut session = bind.session();
    insert(&mut session, &db, 1).await.unwrap(); // deferred: no wait yet
    let commit = tokio::time::timeout(Duration::from_millis(50), session.commit()).await;
    assert!(commit.is_err(), "the COMMIT waits for the blocker's row");
    let err = session.commit().await.unwrap_err();
    assert!(
        err.is_poisoned(),
        "the outcome stays unknown, never Ok: {err}"
    );
    blocker.release().await; // the cut COMMIT now succeeds on the server
    drop(session);

    let status = settled(|| bind.status()).await;
    assert_eq!((status.recovered, status.discarded), (1, 0), "{status:?}");
    assert_no_open_transaction(&db).await;
    assert_eq!(
        committed_ids::<B>(&manager, &db).await,
        [1],
        "what the server did with the COMMIT stands"
    );
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

// ----- the timeout storm -----

/// xorshift64*: the storm's deadlines, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const STORM_SESSIONS: i64 = 1_000;
const STORM_TASKS: i64 = 16;
const STORM_POOL: u32 = 8;

async fn a_timeout_storm_reuses_its_connections<B: Suite>() {
    let db = Arc::new(TestDb::new(B::KIND).await);
    let manager = db.manager(|c| patient(c.max_connections(STORM_POOL)));
    create_table::<B>(&manager, &db).await;
    let bind = manager.bind::<B::Db>("main").unwrap();

    let mut tasks = Vec::new();
    for task in 0..STORM_TASKS {
        let (bind, db) = (bind.clone(), db.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1));
            let (mut committed, mut failed, mut cut) = (Vec::new(), Vec::new(), 0);
            for id in (task..STORM_SESSIONS).step_by(STORM_TASKS as usize) {
                let deadline = Duration::from_micros(rng.next() % 3_001);
                let mut session = bind.session();
                let work = async {
                    insert(&mut session, &db, id).await?;
                    session.commit().await
                };
                match tokio::time::timeout(deadline, work).await {
                    Ok(Ok(())) => committed.push(id),
                    // SQLite's BUSY among writers; nothing else is expected.
                    Ok(Err(e)) if e.is_retryable() => failed.push(id),
                    Ok(Err(e)) => panic!("session {id}: {e}"),
                    Err(_elapsed) => cut += 1,
                }
            }
            (committed, failed, cut)
        }));
    }
    let (mut committed, mut failed, mut cut) = (Vec::new(), Vec::new(), 0);
    for task in tasks {
        let (c, f, n) = task.await.unwrap();
        committed.extend(c);
        failed.extend(f);
        cut += n;
    }

    let status = settled(|| bind.status()).await;
    println!(
        "timeout storm on {:?}: {STORM_SESSIONS} sessions, {STORM_TASKS} tasks, pool of \
         {STORM_POOL}: {} committed, {cut} cut off, {} failed; connections opened {}, \
         discarded {}, recovered {}",
        B::KIND,
        committed.len(),
        failed.len(),
        status.opened,
        status.discarded,
        status.recovered
    );
    assert_no_open_transaction(&db).await;
    let present = committed_ids::<B>(&manager, &db).await;
    committed.sort_unstable();
    let missing: Vec<_> = committed
        .iter()
        .filter(|id| present.binary_search(id).is_err())
        .collect();
    assert!(missing.is_empty(), "committed, then missing: {missing:?}");
    let stray: Vec<_> = failed
        .iter()
        .filter(|id| present.binary_search(id).is_ok())
        .collect();
    assert!(stray.is_empty(), "failed, yet present: {stray:?}");
    assert!(cut > 0, "the deadlines cut sessions off");
    assert!(
        status.opened <= 2 * u64::from(STORM_POOL),
        "a timeout storm must not become a connection storm: {status:?}"
    );
    manager.close(Duration::from_secs(5)).await.unwrap();
    Arc::into_inner(db).expect("tasks done").finish().await;
}

// ----- checkouts cancelled while connecting -----

/// A TCP proxy in front of the test's server that holds every connection it accepts until
/// [`open`](SlowServer::open): a server slow to answer a connect. Once open, it can also hold
/// what the server sends back, from [`stall`](SlowServer::stall) to
/// [`resume`](SlowServer::resume): a server slow to answer a ping.
struct SlowServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
    /// Whether the server's bytes reach the client.
    flowing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl SlowServer {
    async fn start(db: &TestDb) -> Self {
        let server = url::Url::parse(&db.url).expect("server url");
        let target = format!(
            "{}:{}",
            server.host_str().expect("host"),
            server.port_or_known_default().expect("port")
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let flowing = Arc::new(tokio::sync::watch::Sender::new(true));
        let (counter, held, switch) = (accepted.clone(), gate.clone(), flowing.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (held, target, switch) = (held.clone(), target.clone(), switch.clone());
                tokio::spawn(async move {
                    drop(held.acquire().await);
                    let server = tokio::net::TcpStream::connect(target).await.unwrap();
                    let (mut from_client, to_client) = client.into_split();
                    let (from_server, mut to_server) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                    });
                    let _ = forward_when_flowing(from_server, to_client, switch.subscribe()).await;
                });
            }
        });
        Self {
            port,
            accepted,
            gate,
            flowing,
        }
    }

    /// Holds what the server sends from now on, until [`resume`](Self::resume).
    fn stall(&self) {
        self.flowing.send_replace(false);
    }

    fn resume(&self) {
        self.flowing.send_replace(true);
    }

    /// The test's URL, through this proxy.
    fn url(&self, db: &TestDb) -> String {
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }

    fn open(&self) {
        self.gate.add_permits(1_000);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Copies the server's bytes to the client, each read only once the switch says they flow.
async fn forward_when_flowing(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flowing: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if flowing.wait_for(|flowing| *flowing).await.is_err() {
            return Ok(()); // the proxy is gone
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// One short session on `bind`, committed.
async fn one_session<B: Suite>(bind: &dbscope::Bind<B::Db>) {
    let mut session = bind.session();
    sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
    session.commit().await.unwrap();
}

/// After a cancelled checkout's `what` (connect or ping) was let through: it finished in the
/// background, its connection is pooled, and the next session uses it, the only connection
/// that ever reached the server. Ends the test.
async fn kept_and_used_again<B: Suite>(
    db: TestDb,
    slow: SlowServer,
    manager: BindManager,
    bind: dbscope::Bind<B::Db>,
    what: &str,
) {
    let status = settled(|| bind.status()).await;
    assert_eq!(
        (status.opened, status.idle, status.discarded),
        (1, 1, 0),
        "the {what} finished in the background and the connection was pooled: {status:?}"
    );
    one_session::<B>(&bind).await;
    assert_eq!((bind.status().opened, slow.accepted()), (1, 1));
    assert_eq!(db.server_connections().await, Some(1));
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// A bind of `max_connections` behind a [`SlowServer`], and a checkout on it cancelled while
/// its connection is still being opened.
async fn cut_off_while_connecting<B: Suite>(
    max_connections: u32,
) -> (TestDb, SlowServer, BindManager, dbscope::Bind<B::Db>) {
    let db = TestDb::new(B::KIND).await;
    let slow = SlowServer::start(&db).await;
    let url = slow.url(&db);
    let manager = db.manager(|c| {
        let mut c = c.max_connections(max_connections);
        c.url = Some(url.as_str().into());
        c
    });
    let bind = manager.bind::<B::Db>("main").unwrap();
    let mut session = bind.session();
    let begin = tokio::time::timeout(Duration::from_millis(50), session.begin()).await;
    assert!(
        begin.is_err(),
        "the connect cannot finish before the server lets it"
    );
    drop(session);
    (db, slow, manager, bind)
}

async fn a_checkout_cancelled_while_connecting_pools_its_connection<B: Suite>() {
    let (db, slow, manager, bind) = cut_off_while_connecting::<B>(2).await;
    eventually("the proxy holds the connection", || async {
        slow.accepted() == 1
    })
    .await;

    slow.open();
    kept_and_used_again::<B>(db, slow, manager, bind, "connect").await;
}

async fn a_connect_finishing_in_the_background_keeps_its_slot<B: Suite>() {
    let (db, slow, manager, bind) = cut_off_while_connecting::<B>(1).await;

    // The one slot is the background connect's: this session waits for its connection
    // rather than opening a second one.
    let waiting = tokio::spawn({
        let bind = bind.clone();
        async move {
            let mut session = bind.session();
            sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
            session.close().await.unwrap();
        }
    });
    eventually("the second session waits", || {
        let status = bind.status();
        async move { status.waiting >= 2 }
    })
    .await;
    slow.open();
    waiting.await.unwrap();
    let status = settled(|| bind.status()).await;
    assert_eq!((status.opened, status.connections), (1, 1), "{status:?}");
    assert_eq!(slow.accepted(), 1, "one connection ever reached the server");
    manager.close(Duration::from_secs(5)).await.unwrap();
    db.finish().await;
}

/// The same for a pooled connection whose health-check ping is cut off: the ping finishes
/// in the background and the connection goes back to the pool, instead of being thrown away
/// (and a connect paid for the next checkout).
async fn a_checkout_cancelled_while_pinging_keeps_its_connection<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let slow = SlowServer::start(&db).await;
    slow.open();
    let url = slow.url(&db);
    let manager = db.manager(|c| {
        let mut c = c.max_connections(1).health_check(HealthCheck::Always);
        c.url = Some(url.as_str().into());
        c
    });
    let bind = manager.bind::<B::Db>("main").unwrap();
    one_session::<B>(&bind).await;
    let pooled = settled(|| bind.status()).await;
    assert_eq!((pooled.opened, pooled.idle), (1, 1), "{pooled:?}");

    // The idle connection's ping gets no answer until the proxy lets it through.
    slow.stall();
    let mut session = bind.session();
    let begin = tokio::time::timeout(Duration::from_millis(50), session.begin()).await;
    assert!(
        begin.is_err(),
        "the ping cannot finish while its answer is held"
    );
    drop(session);
    assert_eq!(
        bind.status().discarded,
        0,
        "cut off in its ping, the connection is kept"
    );

    slow.resume();
    kept_and_used_again::<B>(db, slow, manager, bind, "ping").await;
}

// ----- blocking sessions -----

/// The blocking face: the same recovery, done before the session's drop returns.
fn a_blocking_session_cut_off_mid_statement_is_recovered_before_its_drop_returns<B: Suite>() {
    // The set-up, the blocker and the census run on a runtime of their own, kept throughout:
    // the blocker's connection lives on it.
    let census = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("census runtime");
    let db = census.block_on(TestDb::new(B::KIND));
    let manager = db.manager(patient);
    let bind = manager.blocking_bind::<B::Db>("main").unwrap();
    let mut setup: BlockingSession<B::Db> = bind.session();
    let ddl = format!(
        "CREATE TABLE {} (id BIGINT PRIMARY KEY, v VARCHAR(50))",
        db.table
    );
    setup.execute(sqlx::query(sql(ddl))).unwrap();
    setup.commit().unwrap();
    drop(setup);
    let blocker = census.block_on(Blocker::<B::Db>::hold(&db, 1));

    let mut session = bind.session();
    let cut = session
        .run(async |s| {
            s.begin().await?;
            let insert = tokio::time::timeout(Duration::from_millis(50), insert(s, &db, 1)).await;
            Ok::<_, dbscope::Error>(insert.is_err())
        })
        .unwrap();
    assert!(cut, "the insert waits for the blocker");
    census.block_on(blocker.release());
    drop(session);

    let status = bind.status();
    assert_eq!(
        (
            status.recovered,
            status.discarded,
            status.in_use,
            status.idle
        ),
        (1, 0, 0, 1),
        "recovered before the drop returned: {status:?}"
    );
    census.block_on(assert_no_open_transaction(&db));
    manager.close_blocking(Duration::from_secs(5)).unwrap();
    census.block_on(db.finish());
}

// ----- the suites -----

macro_rules! server_tests {
    ($module:ident, $suite:ty) => {
        common::async_tests!(
            $module,
            $suite: a_pooled_connection_the_server_killed_costs_a_transaction_no_error,
            a_restart_that_killed_every_idle_connection_costs_a_transaction_no_error,
            an_autocommit_statement_on_a_dead_connection_is_reported_then_suspects_are_pinged,
            a_checkout_cancelled_while_connecting_pools_its_connection,
            a_connect_finishing_in_the_background_keeps_its_slot,
            a_checkout_cancelled_while_pinging_keeps_its_connection,
        );
    };
}

macro_rules! recovery_tests {
    ($module:ident, $suite:ty) => {
        common::async_tests!(
            $module,
            $suite: a_statement_cut_off_mid_flight_gets_its_connection_recovered,
            a_cut_off_connection_that_cannot_be_recovered_in_time_is_discarded,
            a_timeout_storm_reuses_its_connections,
        );
    };
}

server_tests!(postgres_server, common::Pg);
server_tests!(mysql_server, common::MySql);
recovery_tests!(postgres, common::Pg);
recovery_tests!(mysql, common::MySql);
recovery_tests!(sqlite_file, common::SqliteFile);
common::async_tests!(
    postgres_commit,
    common::Pg: a_commit_cut_off_mid_flight_stays_unknown_and_its_connection_is_recovered
);
common::async_tests!(
    sqlite_memory,
    common::SqliteMemory: a_timeout_storm_reuses_its_connections
);
common::blocking_tests!(
    blocking,
    common::Pg: a_blocking_session_cut_off_mid_statement_is_recovered_before_its_drop_returns
);
common::blocking_tests!(
    blocking_mysql,
    common::MySql: a_blocking_session_cut_off_mid_statement_is_recovered_before_its_drop_returns
);
common::blocking_tests!(
    blocking_sqlite,
    common::SqliteFile: a_blocking_session_cut_off_mid_statement_is_recovered_before_its_drop_returns
);
