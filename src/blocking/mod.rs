//! Blocking binds and sessions, for code without an async runtime: CLIs, batch jobs, build
//! scripts, sync web frameworks.
//!
//! The same [`BindManager`](crate::BindManager), from the same configuration, hands out both
//! faces of a bind: [`BindManager::bind`](crate::BindManager::bind) for async code,
//! [`BindManager::blocking_bind`](crate::BindManager::blocking_bind) for blocking code.
//! A [`BlockingSession`] is an async [`Session`](crate::Session) driven to completion call by
//! call, so it behaves the same: no connection before the first statement, a transaction begun
//! by it, commit, rollback, savepoints, read-only and isolation options, rollback on drop with
//! the connection back clean, cut-off connections recovered, dead ones discarded.
//!
//! ```
//! use dbscope::{BindConfig, BindManager, blocking};
//! use sqlx::Sqlite;
//!
//! # fn main() -> Result<(), dbscope::Error> {
//! let manager = BindManager::new(BindConfig::new("sqlite::memory:"))?;
//! let bind = manager.blocking_bind::<Sqlite>("default")?; // Send + Sync: share it with threads
//!
//! let mut session = bind.session(); // no connection yet
//! session.execute(sqlx::query("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))?;
//! session.execute(sqlx::query("INSERT INTO notes (body) VALUES (?)").bind("kept"))?;
//! session.commit()?;
//!
//! let (id, body): (i64, String) =
//!     session.fetch_one(sqlx::query_as("SELECT id, body FROM notes"))?;
//! assert_eq!((id, body.as_str()), (1, "kept"));
//! drop(session); // rolls back what is open, returns the connection clean
//!
//! // A thread-scoped current session, committed when the closure returns Ok.
//! blocking::scope(&manager, || {
//!     let mut session = blocking::current_session::<Sqlite>("default")?;
//!     session.execute(sqlx::query("INSERT INTO notes (body) VALUES ('scoped')"))?;
//!     Ok::<_, dbscope::Error>(())
//! })?;
//! manager.close_blocking(std::time::Duration::from_secs(5))?;
//! # Ok(()) }
//! ```
//!
//! # How it runs
//!
//! A bind's blocking face is a second engine, opened on first blocking use: the bind's connect
//! options and session defaults, and a pool of its own sized by the same `max_connections` (a
//! bind used from both faces may so open twice that many connections).
//! [`BindManager::status`](crate::BindManager::status) lists it (`blocking: true`) and the
//! manager's [`close`](crate::BindManager::close),
//! [`close_blocking`](crate::BindManager::close_blocking) and drop close it with the rest.
//!
//! Each operation runs on the calling thread, as with the `postgres` crate's blocking client:
//! a PostgreSQL or MySQL connection of a blocking face opens inside an I/O driver of its own (a
//! current-thread tokio runtime: an `epoll` instance and a timer wheel, no thread), and the
//! thread using the connection runs that driver while it waits for the server, so each reply
//! wakes that thread directly, never another one in between. The pool serves any number of OS
//! threads, each waiting at most `acquire_timeout` for a connection
//! ([`ErrorKind::Timeout`](crate::ErrorKind::Timeout)).
//!
//! Waiting threads are served in the order they asked, as async checkouts are: a connection
//! given back goes to the thread that has waited longest. r2d2 instead lets the thread that
//! gives a connection back take it again at once while others wait. With more threads than
//! connections that saves r2d2 hand-overs and costs its waiting threads: in one run of
//! `cargo bench -p dbscope-benches --bench blocking` (16 threads, 8 connections), a tuned
//! `r2d2_postgres` loop ran 1.17 times dbscope's sessions per second, at a p99 latency 8 times
//! dbscope's (14.5 ms against 1.8 ms). With as many threads as connections, where no thread
//! waits for one, dbscope ran 0.98 times its sessions per second at the same p99 (1.1 ms).
//!
//! The blocking faces of a manager also share one small tokio runtime, started with the first
//! of them, whose single worker thread runs the timers (`acquire_timeout` and the other
//! deadlines), SQLite's wake-ups and the pool's upkeep. What has to talk to a connection while
//! no caller does (opening it, a rollback for a session dropped in async code, recovery in the
//! background, the polite goodbye when the pool closes or reaps it) runs on a short-lived
//! thread inside the connection's own driver.
//!
//! # From async code
//!
//! Called from async code on a tokio runtime (a task, or a `block_on`), every blocking call
//! returns [`ErrorKind::BlockingInAsync`](crate::ErrorKind::BlockingInAsync) at once, without touching
//! the database: blocking there would stall the runtime, and deadlock a current-thread one. Use
//! the async API there, or move the blocking code to `tokio::task::spawn_blocking`, where it
//! works. A blocking session dropped in async code rolls back in the background (on a
//! short-lived thread of its connection's), as an async session does.

mod bind;
mod fetch;
mod manager;
mod registry;
mod runtime;
mod savepoint;
mod scope;
mod session;

pub use bind::BlockingBind;
pub use fetch::Fetch;
pub use savepoint::BlockingSavepoint;
pub use scope::{
    BlockingAtomic, BlockingScopedSession, atomic, atomic_for, current_session,
    current_session_for, scope,
};
pub use session::BlockingSession;
