//! A manager's blocking faces: per bind, a twin engine opened on first blocking use, and the one
//! runtime that drives them all.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::runtime::Driver;
use crate::bind::{ErasedBind, OpenBind};
use crate::config::BindConfig;
use crate::{BindStatus, Error, Result};

/// The blocking faces of a manager's binds.
pub(crate) struct Faces {
    /// Each bind's config, to build its twin from.
    configs: BTreeMap<String, BindConfig>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Started with the first blocking face, shared by all of them.
    driver: Option<Arc<Driver>>,
    twins: BTreeMap<String, OpenBind>,
    /// Set by the manager's close or drop: no face opens after it.
    closed: bool,
}

/// One bind's blocking face, as the registry hands it out.
pub(crate) struct Face {
    pub(crate) erased: Arc<dyn ErasedBind>,
    pub(crate) typed: Arc<dyn Any + Send + Sync>,
    pub(crate) driver: Arc<Driver>,
}

impl State {
    fn driver(&mut self) -> Result<Arc<Driver>> {
        if self.driver.is_none() {
            self.driver = Some(Arc::new(Driver::start()?));
        }
        Ok(self.driver.clone().expect("just started"))
    }
}

impl Faces {
    pub(crate) fn new(configs: BTreeMap<String, BindConfig>) -> Self {
        Self {
            configs,
            state: Mutex::default(),
        }
    }

    /// The blocking face of bind `name` (whose async engine is `of`), opened on first use: the
    /// same database, options and session defaults, and a pool of its own.
    pub(crate) fn open(&self, name: &str, of: &OpenBind) -> Result<Face> {
        let mut state = self.state();
        if state.closed {
            return Err(Error::closed(name));
        }
        let driver = state.driver()?;
        let twin = state.twins.entry(name.to_owned()).or_insert_with(|| {
            tracing::debug!(bind = %name, "opening the bind's blocking face");
            of.erased.twin(&self.configs[name])
        });
        Ok(Face {
            erased: twin.erased.clone(),
            typed: twin.typed.clone(),
            driver,
        })
    }

    /// The runtime of the blocking faces, started if needed (to close the manager from blocking
    /// code, which needs a timer).
    pub(crate) fn driver(&self) -> Result<Arc<Driver>> {
        self.state().driver()
    }

    /// The faces' pools, in name order.
    pub(crate) fn status(&self) -> Vec<BindStatus> {
        let state = self.state();
        let face_status = |twin: &OpenBind| {
            let mut status = twin.erased.status();
            status.blocking = true;
            status
        };
        state.twins.values().map(face_status).collect()
    }

    /// Closes every face as the manager closes its binds; no face opens afterwards.
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        if let Some(driver) = &state.driver {
            // Idle connections get their polite goodbye on the faces' own runtime.
            let _context = driver.enter();
            for twin in state.twins.values() {
                twin.erased.close();
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
