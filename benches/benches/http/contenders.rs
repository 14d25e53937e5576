//! The contenders: which way of serving the endpoint each is, its name, whether its select runs in
//! a transaction block, and where it serves (its router is built in `routes.rs`).

use std::net::SocketAddr;

use tokio::task::JoinHandle;

/// Which sqlx pool configuration a sqlx contender uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SqlxPool {
    /// `PgPoolOptions::new()`: pings on acquire.
    Defaults,
    /// `.test_before_acquire(false)`.
    NoTest,
}

/// One way of serving the endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Layer,
    SessionHandler,
    AxumSqlxTx(SqlxPool),
    PgPoolTx(SqlxPool),
    LayerAutocommit,
    SessionAutocommit,
    PgPoolSelect(SqlxPool),
    /// The layer with safe methods read-only: the GET's read session runs without BEGIN.
    LayerReadOnly,
}

pub(crate) const KINDS: [Kind; 11] = [
    Kind::Layer,
    Kind::SessionHandler,
    Kind::AxumSqlxTx(SqlxPool::Defaults),
    Kind::AxumSqlxTx(SqlxPool::NoTest),
    Kind::PgPoolTx(SqlxPool::Defaults),
    Kind::PgPoolTx(SqlxPool::NoTest),
    Kind::LayerAutocommit,
    Kind::LayerReadOnly,
    Kind::SessionAutocommit,
    Kind::PgPoolSelect(SqlxPool::Defaults),
    Kind::PgPoolSelect(SqlxPool::NoTest),
];

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        use SqlxPool::{Defaults, NoTest};
        match self {
            Self::Layer => "dbscope layer",
            Self::SessionHandler => "dbscope session handler",
            Self::AxumSqlxTx(Defaults) => "axum-sqlx-tx (PgPool defaults)",
            Self::AxumSqlxTx(NoTest) => "axum-sqlx-tx (test_before_acquire=false)",
            Self::PgPoolTx(Defaults) => "PgPool tx handler (defaults)",
            Self::PgPoolTx(NoTest) => "PgPool tx handler (test_before_acquire=false)",
            Self::LayerAutocommit => "dbscope layer, autocommit",
            Self::LayerReadOnly => "dbscope layer, GET read-only (no BEGIN)",
            Self::SessionAutocommit => "dbscope session handler, autocommit",
            Self::PgPoolSelect(Defaults) => "PgPool bare select (defaults)",
            Self::PgPoolSelect(NoTest) => "PgPool bare select (test_before_acquire=false)",
        }
    }

    /// Whether the endpoint's select runs inside a transaction block.
    pub(crate) fn transactional(self) -> bool {
        matches!(
            self,
            Self::Layer | Self::SessionHandler | Self::AxumSqlxTx(_) | Self::PgPoolTx(_)
        )
    }
}

/// A contender, served.
pub(crate) struct Contender {
    pub(crate) kind: Kind,
    pub(crate) addr: SocketAddr,
    pub(crate) server: JoinHandle<()>,
}
