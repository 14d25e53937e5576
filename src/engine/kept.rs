//! Pinned connections kept from one test to the next, for the `testing` feature's transaction
//! mode on PostgreSQL.
//!
//! Opening a PostgreSQL connection costs the server a process (about 5 ms on a 2-core machine),
//! more than all else a transaction-mode test does. So when a test's outer transaction ends
//! cleanly, its connection is kept here, and the next test of the same bind pins it instead of
//! opening one. What it is kept with:
//!
//! - **The same runtime.** A socket belongs to the tokio runtime it was opened in, and a
//!   runtime's sockets die with it. Each runtime's connections are kept apart, and dropped once
//!   the runtime is gone (a task of it holds a token; dropping the runtime drops the task).
//!   `#[dbscope::test]` runs every test of a binary on [one runtime](crate::testing::runtime),
//!   so they share; tests on runtimes of their own (`#[tokio::test]`) connect each time, as
//!   before.
//! - **The same connect options**, setup statements included: the key is all of them.
//! - **A clean session.** The outer transaction rolled back, so every setting, table, lock and
//!   row of the test went with it. What a rollback leaves is cleared in the same round trip:
//!   session advisory locks (`pg_advisory_unlock_all()`) and sequences' `currval`
//!   (`DISCARD SEQUENCES`). sqlx's prepared statements are closed (one more round trip), so
//!   none prepared on a table the test changed meets the next test's. A connection where the
//!   test prepared a statement with SQL's `PREPARE` (which no rollback undoes) is closed
//!   instead of kept.
//! - **A check before reuse**: a kept connection is pinged when taken; a dead one (the server
//!   restarted, or its database was dropped) is thrown away and the next one tried, or a new one
//!   opened.
// Used by the `testing` feature only.
#![cfg_attr(not(feature = "testing"), allow(dead_code))]

use std::any::Any;
use std::sync::Mutex;

use super::runtime_life::RuntimeLife;

/// At most this many connections are kept per runtime and key: enough for the tests a binary
/// runs at once.
const PER_KEY: usize = 8;

/// The connections kept, by runtime.
static KEPT: Mutex<Vec<RuntimeKept>> = Mutex::new(Vec::new());

struct RuntimeKept {
    /// The runtime; gone once it is dropped.
    runtime: RuntimeLife,
    /// Each with the key it was opened with; type-erased (the backend's connection type).
    conns: Vec<(String, Box<dyn Any + Send>)>,
}

/// Takes a connection kept on the current runtime under `key`, if there is one.
pub(super) fn take<T: Any + Send>(key: &str) -> Option<T> {
    let runtime = tokio::runtime::Handle::try_current().ok()?.id();
    let (found, dead) = {
        let mut kept = KEPT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dead = prune(&mut kept);
        let found = kept
            .iter_mut()
            .find(|r| r.runtime.id() == runtime)
            .and_then(|r| {
                let at = r.conns.iter().rposition(|(k, _)| k == key)?;
                Some(r.conns.swap_remove(at).1)
            });
        (found, dead)
    };
    // Closed outside the lock: dropping a socket may take a moment.
    drop(dead);
    found
        .and_then(|conn| conn.downcast::<T>().ok())
        .map(|conn| *conn)
}

/// Keeps `conn` under `key` for the next test on the current runtime; drops it when outside a
/// runtime or when enough are kept already.
pub(super) fn keep<T: Any + Send>(key: String, conn: T) {
    let Some(runtime) = RuntimeLife::current() else {
        return;
    };
    let mut refused = None;
    let dead = {
        let mut kept = KEPT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dead = prune(&mut kept);
        let index = match kept.iter().position(|r| r.runtime.id() == runtime.id()) {
            Some(index) => index,
            None => {
                // Once the runtime is gone, its connections are closed by the next `take` or
                // `keep`, from whatever runtime.
                kept.push(RuntimeKept {
                    runtime,
                    conns: Vec::new(),
                });
                kept.len() - 1
            }
        };
        let conns = &mut kept[index].conns;
        if conns.iter().filter(|(k, _)| *k == key).count() < PER_KEY {
            conns.push((key, Box::new(conn)));
        } else {
            refused = Some(conn);
        }
        dead
    };
    drop(dead);
    drop(refused);
}

/// Takes the connections of runtimes that are gone out of `kept`, to be dropped.
fn prune(kept: &mut Vec<RuntimeKept>) -> Vec<RuntimeKept> {
    let mut dead = Vec::new();
    let mut i = 0;
    while i < kept.len() {
        if kept[i].runtime.is_gone() {
            dead.push(kept.swap_remove(i));
        } else {
            i += 1;
        }
    }
    dead
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn kept_per_runtime_and_key_and_dropped_with_the_runtime() {
        let first = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let second = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let witness = Arc::new(());
        first.block_on(async {
            keep("k1".to_owned(), witness.clone());
        });
        // Another key, another runtime: nothing.
        first.block_on(async { assert!(take::<Arc<()>>("k2").is_none()) });
        second.block_on(async { assert!(take::<Arc<()>>("k1").is_none()) });
        // The same key and runtime: the very one, once.
        first.block_on(async {
            let got = take::<Arc<()>>("k1").expect("kept");
            assert!(Arc::ptr_eq(&got, &witness));
            assert!(take::<Arc<()>>("k1").is_none());
            keep("k1".to_owned(), got);
        });
        assert_eq!(Arc::strong_count(&witness), 2);
        // Its runtime dropped, the next use elsewhere drops what it kept.
        drop(first);
        second.block_on(async { assert!(take::<Arc<()>>("k1").is_none()) });
        assert_eq!(dropped_elsewhere_too(&witness), 1);
    }

    #[test]
    fn at_most_per_key_kept() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let witness = Arc::new(());
        runtime.block_on(async {
            for _ in 0..PER_KEY + 3 {
                keep("capped".to_owned(), witness.clone());
            }
        });
        assert_eq!(Arc::strong_count(&witness), PER_KEY + 1);
        drop(runtime);
        // Dropped by the next use from any runtime.
        let other = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        other.block_on(async { take::<Arc<()>>("capped") });
        assert_eq!(dropped_elsewhere_too(&witness), 1);
    }

    /// `witness`'s strong count once no other thread is still dropping its copies: a test
    /// beside this one may prune a dead runtime first, and it drops the connections after it
    /// lets go of the lock. Waits at most 10 s.
    fn dropped_elsewhere_too(witness: &Arc<()>) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(witness) > 1 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        Arc::strong_count(witness)
    }
}
