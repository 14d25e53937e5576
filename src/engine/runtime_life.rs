//! Whether the tokio runtime a connection's socket belongs to is still there.
//!
//! A socket registers with the I/O driver of the runtime it is opened in, and dies with it:
//! once that runtime is dropped, every read or write on the socket fails ("A Tokio 1.x context
//! was found, but it is being shutdown"), or, worse, a write lands and the read of its answer
//! fails. A pool is not tied to a runtime (a manager built in one may serve several, or outlive
//! the first that used it), so each connection with a socket remembers the [`RuntimeLife`] of
//! the runtime it opened in, and a checkout throws away one whose runtime has gone instead of
//! handing it out.
//!
//! How a runtime's end is seen: the first time a runtime is asked for, a task of it is spawned
//! holding a token; a runtime drops its tasks when it shuts down, before its I/O driver, so the
//! token is gone by the time its sockets are. Each runtime costs one idle task for its life.

use std::sync::{Arc, Mutex, PoisonError, Weak};

/// The runtimes asked for so far whose token still lives, each with a weak handle on it.
static RUNTIMES: Mutex<Vec<(tokio::runtime::Id, Weak<()>)>> = Mutex::new(Vec::new());

/// The life of one tokio runtime: [gone](Self::is_gone) once the runtime has shut down.
#[derive(Clone, Debug)]
pub(crate) struct RuntimeLife {
    id: tokio::runtime::Id,
    token: Weak<()>,
}

impl RuntimeLife {
    /// The life of the runtime the caller runs in; `None` outside a runtime.
    pub(crate) fn current() -> Option<Self> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let id = handle.id();
        let mut runtimes = RUNTIMES.lock().unwrap_or_else(PoisonError::into_inner);
        runtimes.retain(|(_, token)| token.strong_count() > 0);
        if let Some((_, token)) = runtimes.iter().find(|(runtime, _)| *runtime == id) {
            let token = token.clone();
            return Some(Self { id, token });
        }
        let token = Arc::new(());
        let life = Arc::downgrade(&token);
        // Dropped with the runtime's tasks. On a runtime already shutting down, the task is
        // dropped at once, and the life is gone from the start, as it should be.
        drop(handle.spawn(async move {
            let _token = token;
            std::future::pending::<()>().await;
        }));
        runtimes.push((id, life.clone()));
        Some(Self { id, token: life })
    }

    /// The runtime's id.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn id(&self) -> tokio::runtime::Id {
        self.id
    }

    /// Whether the runtime has shut down (or is shutting down): its sockets are dead.
    pub(crate) fn is_gone(&self) -> bool {
        self.token.strong_count() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    }

    #[test]
    fn a_runtime_is_gone_once_dropped_and_not_before() {
        assert!(
            RuntimeLife::current().is_none(),
            "outside a runtime, no life"
        );
        let first = runtime();
        let second = runtime();
        let life = first.block_on(async { RuntimeLife::current() }).unwrap();
        let again = first.block_on(async { RuntimeLife::current() }).unwrap();
        let other = second.block_on(async { RuntimeLife::current() }).unwrap();
        assert!(
            Weak::ptr_eq(&life.token, &again.token),
            "one token per runtime"
        );
        assert!(!Weak::ptr_eq(&life.token, &other.token));
        assert_eq!(life.id(), again.id());
        assert_ne!(life.id(), other.id());
        assert!(!life.is_gone());
        drop(first);
        assert!(life.is_gone() && again.is_gone(), "gone with its runtime");
        assert!(!other.is_gone(), "another runtime lives on");
        drop(second);
        assert!(other.is_gone());
    }

    #[test]
    fn a_multi_thread_runtime_is_gone_once_shut_down() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("a runtime");
        let life = runtime.block_on(async { RuntimeLife::current() }).unwrap();
        assert!(!life.is_gone());
        runtime.shutdown_timeout(std::time::Duration::from_secs(10));
        assert!(life.is_gone());
    }
}
