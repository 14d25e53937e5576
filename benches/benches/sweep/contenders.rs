//! The contenders: one way each of running the same session, on PostgreSQL or SQLite.

use dbscope::Bind;
use dbscope_benches::BoxError;
use dbscope_benches::sessions::SELECT;
use deadpool::managed::{self, Metrics, RecycleResult};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::SqlitePool;
use sqlx::{Connection, Executor, PgConnection, Postgres, Sqlite};

/// The SQLite session's point select (rows `1..=ROWS` with `v = id`, like PostgreSQL's).
pub(crate) const SQLITE_SELECT: &str = "SELECT v FROM dbscope_sweep WHERE id = ?";

/// Which server a contender's sessions run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Db {
    Postgres,
    Sqlite,
}

/// One way of running a session: checkout, BEGIN, the point select, COMMIT, release.
pub(crate) enum Contender {
    /// `bind.session()`, the select, `session.commit()`.
    Dbscope(Bind<Postgres>),
    /// `pool.begin()`, the select, `tx.commit()`.
    SqlxPg { name: &'static str, pool: PgPool },
    /// `PgConnection`s on a deadpool that recycles without a ping, BEGIN and COMMIT as plain
    /// simple queries, as dbscope sends them.
    HandWritten(managed::Pool<PgManager>),
    /// `client.transaction()`, `prepare_cached` and `query_one`, `tx.commit()`, on
    /// deadpool-postgres (`RecyclingMethod::Fast`: no round trip on recycle).
    TokioPostgres(deadpool_postgres::Pool),
    /// dbscope on SQLite.
    DbscopeSqlite(Bind<Sqlite>),
    /// sqlx's `SqlitePool`.
    SqlxSqlite {
        name: &'static str,
        pool: SqlitePool,
    },
}

impl Contender {
    /// Its name in the report.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Dbscope(_) => "dbscope session",
            Self::SqlxPg { name, .. } | Self::SqlxSqlite { name, .. } => name,
            Self::HandWritten(_) => "hand-written deadpool+sqlx",
            Self::TokioPostgres(_) => "tokio-postgres + deadpool-postgres",
            Self::DbscopeSqlite(_) => "dbscope session (SQLite)",
        }
    }

    /// Which server it runs on.
    pub(crate) fn db(&self) -> Db {
        match self {
            Self::DbscopeSqlite(_) | Self::SqlxSqlite { .. } => Db::Sqlite,
            _ => Db::Postgres,
        }
    }

    /// Whether it is dbscope's.
    pub(crate) fn is_dbscope(&self) -> bool {
        matches!(self, Self::Dbscope(_) | Self::DbscopeSqlite(_))
    }

    /// Whether it is one of sqlx's own pools.
    pub(crate) fn is_sqlx_pool(&self) -> bool {
        matches!(self, Self::SqlxPg { .. } | Self::SqlxSqlite { .. })
    }

    /// One session, reading the row `id` (whose `v` must be `id`).
    pub(crate) async fn run_once(&self, id: i32) -> Result<(), BoxError> {
        let v = match self {
            Self::Dbscope(bind) => {
                let mut session = bind.session();
                let v: i32 = sqlx::query_scalar(SELECT)
                    .bind(id)
                    .fetch_one(&mut session)
                    .await?;
                session.commit().await?;
                v
            }
            Self::SqlxPg { pool, .. } => {
                let mut tx = pool.begin().await?;
                let v: i32 = sqlx::query_scalar(SELECT)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                v
            }
            Self::HandWritten(pool) => {
                let mut conn = pool.get().await?;
                match hand_written(&mut conn, id).await {
                    Ok(v) => v,
                    Err(e) => {
                        // Its state is unknown: keep it out of the pool.
                        drop(managed::Object::take(conn));
                        return Err(e.into());
                    }
                }
            }
            Self::TokioPostgres(pool) => {
                let mut client = pool.get().await?;
                let tx = client.transaction().await?;
                let select = tx.prepare_cached(SELECT).await?;
                let v: i32 = tx.query_one(&select, &[&id]).await?.try_get(0)?;
                tx.commit().await?;
                v
            }
            Self::DbscopeSqlite(bind) => {
                let mut session = bind.session();
                let v: i32 = sqlx::query_scalar(SQLITE_SELECT)
                    .bind(id)
                    .fetch_one(&mut session)
                    .await?;
                session.commit().await?;
                v
            }
            Self::SqlxSqlite { pool, .. } => {
                let mut tx = pool.begin().await?;
                let v: i32 = sqlx::query_scalar(SQLITE_SELECT)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                v
            }
        };
        if v != id {
            return Err(format!("{}: id {id} read v = {v}", self.name()).into());
        }
        Ok(())
    }

    /// Closes its pool (dbscope's binds close with their manager).
    pub(crate) async fn close(&self) {
        match self {
            Self::Dbscope(_) | Self::DbscopeSqlite(_) => {}
            Self::SqlxPg { pool, .. } => pool.close().await,
            Self::SqlxSqlite { pool, .. } => pool.close().await,
            Self::HandWritten(pool) => pool.close(),
            Self::TokioPostgres(pool) => pool.close(),
        }
    }
}

async fn hand_written(conn: &mut PgConnection, id: i32) -> sqlx::Result<i32> {
    conn.execute("BEGIN").await?;
    let v: i32 = sqlx::query_scalar(SELECT)
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    conn.execute("COMMIT").await?;
    Ok(v)
}

/// The hand-written loop's pool manager: connects, and recycles without any check.
pub(crate) struct PgManager {
    pub(crate) options: PgConnectOptions,
}

impl managed::Manager for PgManager {
    type Type = PgConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.options).await
    }

    async fn recycle(&self, _: &mut PgConnection, _: &Metrics) -> RecycleResult<sqlx::Error> {
        Ok(())
    }
}
