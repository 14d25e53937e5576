//! The endpoint, `GET /rows/{id}`, as each contender's handler serves it; the probe route of the
//! same handler, which also says whether its select ran in a transaction block; and each
//! contender's router of the two.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use axum_sqlx_tx::Tx;
use dbscope::axum::{DbError, DbSession};
use dbscope::tower::ScopeLayer;
use dbscope::{BindManager, DEFAULT_BIND, DefaultBind};
use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::{Executor, Postgres, Row as _};

use crate::contenders::Kind;
use crate::setup::Pools;

pub(crate) const SELECT: &str = "SELECT id, v FROM dbscope_http_bench WHERE id = $1";
/// True inside a transaction block, after its first statement: the block's timestamp is that of
/// its BEGIN, earlier than this statement's. Sent as a simple query (no parameters): outside a
/// block, the statement's implicit transaction starts with its one message, at the same time.
const PROBE_SQL: &str = "SELECT transaction_timestamp() <> statement_timestamp()";

/// The measured route.
const ROW_ROUTE: &str = "/rows/{id}";
/// The same handler, with the probe.
const PROBE_ROUTE: &str = "/probe/{id}";

impl Kind {
    /// The contender's router: the measured route, and the probe route of the same handler.
    pub(crate) fn router(self, pools: &Pools) -> Result<Router, dbscope::Error> {
        Ok(match self {
            Self::Layer => routes(get(scoped::<false>), get(scoped::<true>))
                .layer(ScopeLayer::new(&pools.manager)),
            Self::LayerAutocommit => routes(get(scoped::<false>), get(scoped::<true>))
                .layer(ScopeLayer::with_scope(pools.manager.scope().autocommit())?),
            Self::LayerReadOnly => routes(get(scoped::<false>), get(scoped::<true>))
                .layer(ScopeLayer::new(&pools.manager).read_only_safe_methods(true)),
            Self::SessionHandler => routes(get(session_tx::<false>), get(session_tx::<true>))
                .with_state(pools.manager.clone()),
            Self::SessionAutocommit => routes(
                get(session_autocommit::<false>),
                get(session_autocommit::<true>),
            )
            .with_state(pools.manager.clone()),
            Self::AxumSqlxTx(pool) => {
                let (state, layer) = Tx::<Postgres>::setup(pools.sqlx(pool));
                routes(get(axum_sqlx_tx::<false>), get(axum_sqlx_tx::<true>))
                    .layer(layer)
                    .with_state(state)
            }
            Self::PgPoolTx(pool) => {
                routes(get(pool_tx::<false>), get(pool_tx::<true>)).with_state(pools.sqlx(pool))
            }
            Self::PgPoolSelect(pool) => routes(get(pool_select::<false>), get(pool_select::<true>))
                .with_state(pools.sqlx(pool)),
        })
    }
}

/// The measured route and the probe route, both served by `handler::<false>` and
/// `handler::<true>`.
fn routes<S: Clone + Send + Sync + 'static>(
    row: MethodRouter<S>,
    probe: MethodRouter<S>,
) -> Router<S> {
    Router::new()
        .route(ROW_ROUTE, row)
        .route(PROBE_ROUTE, probe)
}

/// The endpoint's answer; the probe route adds whether the select ran in a transaction block.
#[derive(Serialize)]
struct Reply {
    id: i32,
    v: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_transaction: Option<bool>,
}

impl Reply {
    fn new((id, v): (i32, i32), in_transaction: Option<bool>) -> Json<Self> {
        Json(Self {
            id,
            v,
            in_transaction,
        })
    }
}

async fn fetch_row<'c>(
    conn: impl Executor<'c, Database = Postgres>,
    id: i32,
) -> sqlx::Result<(i32, i32)> {
    sqlx::query_as(SELECT).bind(id).fetch_one(conn).await
}

/// With `PROBE`, whether the connection is inside a transaction block; without, nothing (and no
/// round trip).
async fn probe<'c, const PROBE: bool>(
    conn: impl Executor<'c, Database = Postgres>,
) -> sqlx::Result<Option<bool>> {
    if !PROBE {
        return Ok(None);
    }
    conn.fetch_one(PROBE_SQL).await?.try_get(0).map(Some)
}

type Db = DbSession<DefaultBind<Postgres>>;

/// Behind a `ScopeLayer` (transactional, autocommit, or read-only for GET): the request's
/// session.
async fn scoped<const PROBE: bool>(
    Path(id): Path<i32>,
    mut db: Db,
) -> Result<Json<Reply>, DbError> {
    let row = fetch_row(&mut *db, id).await?;
    let in_transaction = probe::<PROBE>(&mut *db).await?;
    Ok(Reply::new(row, in_transaction))
}

/// A dbscope session of the handler's own, committed by the handler.
async fn session_tx<const PROBE: bool>(
    State(manager): State<BindManager>,
    Path(id): Path<i32>,
) -> Result<Json<Reply>, DbError> {
    let mut session = manager.session::<Postgres>(DEFAULT_BIND)?;
    let row = fetch_row(&mut session, id).await?;
    let in_transaction = probe::<PROBE>(&mut session).await?;
    session.commit().await?;
    Ok(Reply::new(row, in_transaction))
}

/// A dbscope session of the handler's own, in autocommit mode.
async fn session_autocommit<const PROBE: bool>(
    State(manager): State<BindManager>,
    Path(id): Path<i32>,
) -> Result<Json<Reply>, DbError> {
    let mut session = manager.session::<Postgres>(DEFAULT_BIND)?.autocommit(true);
    let row = fetch_row(&mut session, id).await?;
    let in_transaction = probe::<PROBE>(&mut session).await?;
    Ok(Reply::new(row, in_transaction))
}

/// axum-sqlx-tx's request transaction, committed by its layer.
async fn axum_sqlx_tx<const PROBE: bool>(
    Path(id): Path<i32>,
    mut tx: Tx<Postgres>,
) -> Result<Json<Reply>, axum_sqlx_tx::Error> {
    let row = fetch_row(&mut tx, id).await?;
    let in_transaction = probe::<PROBE>(&mut tx).await?;
    Ok(Reply::new(row, in_transaction))
}

/// A `PgPool` transaction, begun and committed by the handler.
async fn pool_tx<const PROBE: bool>(
    State(pool): State<PgPool>,
    Path(id): Path<i32>,
) -> Result<Json<Reply>, Fail> {
    let mut tx = pool.begin().await?;
    let row = fetch_row(&mut *tx, id).await?;
    let in_transaction = probe::<PROBE>(&mut *tx).await?;
    tx.commit().await?;
    Ok(Reply::new(row, in_transaction))
}

/// The select on the `PgPool` itself: no transaction.
async fn pool_select<const PROBE: bool>(
    State(pool): State<PgPool>,
    Path(id): Path<i32>,
) -> Result<Json<Reply>, Fail> {
    let row = fetch_row(&pool, id).await?;
    let in_transaction = probe::<PROBE>(&pool).await?;
    Ok(Reply::new(row, in_transaction))
}

/// A hand-written handler's error: 500, with the error as the body.
struct Fail(String);

impl From<sqlx::Error> for Fail {
    fn from(error: sqlx::Error) -> Self {
        Self(error.to_string())
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.0).into_response()
    }
}
