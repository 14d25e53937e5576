//! A manager's blocking faces: per bind, a twin engine opened on first blocking use, and the one
//! runtime that drives them all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::runtime::Driver;
use crate::backend::Backend;
use crate::bind::{ErasedBind, OpenBind};
use crate::manager::Faces;
use crate::{Bind, BindStatus, Error, Result};

/// The blocking faces of a manager's binds.
#[derive(Default)]
pub(crate) struct BlockingFaces {
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
    twin: Arc<dyn ErasedBind>,
    open: OpenBind,
    pub(crate) driver: Arc<Driver>,
}

impl Face {
    /// The face's bind, as database type `DB` (the type of the bind it twins).
    pub(crate) fn bind<DB: Backend>(&self) -> Bind<DB> {
        self.open
            .typed()
            .expect("a bind's twin has the bind's type")
    }

    pub(crate) fn erased(&self) -> &Arc<dyn ErasedBind> {
        &self.twin
    }

    /// The face as the manager keeps a bind.
    pub(crate) fn into_open(self) -> OpenBind {
        self.open
    }
}

impl State {
    fn driver(&mut self) -> Result<Arc<Driver>> {
        if self.driver.is_none() {
            self.driver = Some(Arc::new(Driver::start()?));
        }
        Ok(self.driver.clone().expect("just started"))
    }
}

impl BlockingFaces {
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
            of.erased.twin()
        });
        Ok(Face {
            twin: twin.erased.clone(),
            open: twin.clone(),
            driver,
        })
    }

    /// The runtime of the blocking faces, started if needed (to close the manager from blocking
    /// code, which needs a timer).
    pub(crate) fn driver(&self) -> Result<Arc<Driver>> {
        self.state().driver()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Faces for BlockingFaces {
    fn status(&self) -> Vec<BindStatus> {
        let state = self.state();
        let face_status = |twin: &OpenBind| {
            let mut status = twin.erased.status();
            status.blocking = true;
            status
        };
        state.twins.values().map(face_status).collect()
    }

    fn close(&self) {
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
}
