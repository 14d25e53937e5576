//! The database prepared, the pools built, every contender serving on its own port; the checks
//! before measuring (the probe route), after each measurement and at the end.

use std::time::Duration;

use axum::serve::ListenerExt;
use dbscope::{BindConfig, BindManager, DEFAULT_BIND};
use dbscope_benches::server::{connect_options, sqlx_pools};
use dbscope_benches::{Admin, Backends, BoxError, print_teardown};
use sqlx::postgres::PgPool;
use tokio::net::TcpListener;

use crate::client::Conn;
use crate::contenders::{Contender, KINDS, SqlxPool};
use crate::settings::Settings;
use crate::{ADMIN_APP_NAME, APP_NAME, POOL_SIZE, TABLE};

/// The pools the contenders share: one contender runs at a time.
pub(crate) struct Pools {
    pub(crate) manager: BindManager,
    sqlx_defaults: PgPool,
    sqlx_no_test: PgPool,
}

impl Pools {
    pub(crate) fn sqlx(&self, pool: SqlxPool) -> PgPool {
        match pool {
            SqlxPool::Defaults => self.sqlx_defaults.clone(),
            SqlxPool::NoTest => self.sqlx_no_test.clone(),
        }
    }
}

/// The database prepared, the pools built (no connection opened yet), every contender serving.
pub(crate) struct Setup {
    /// For setup queries and the checks; not part of any pool.
    pub(crate) admin: Admin,
    pools: Pools,
    pub(crate) contenders: Vec<Contender>,
}

impl Setup {
    pub(crate) async fn open(settings: &Settings) -> Result<Self, BoxError> {
        let options = connect_options(&settings.common.url)?;
        let admin = Admin::open(
            &options.clone().application_name(ADMIN_APP_NAME),
            Backends::App(APP_NAME),
            TABLE,
        )
        .await?;

        let manager = BindManager::builder()
            .bind(
                DEFAULT_BIND,
                BindConfig::new(settings.common.url.as_str())
                    .max_connections(POOL_SIZE)
                    .application_name(APP_NAME),
            )
            .build()?;
        let options = options.application_name(APP_NAME);
        let (sqlx_defaults, sqlx_no_test) = sqlx_pools(POOL_SIZE, &options);
        let pools = Pools {
            manager,
            sqlx_defaults,
            sqlx_no_test,
        };

        let mut contenders = Vec::with_capacity(KINDS.len());
        for kind in KINDS {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    eprintln!("cannot set TCP_NODELAY: {e}");
                }
            });
            let router = kind.router(&pools)?;
            let server = tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    eprintln!("{}: server failed: {e}", kind.name());
                }
            });
            contenders.push(Contender { kind, addr, server });
        }
        Ok(Self {
            admin,
            pools,
            contenders,
        })
    }

    /// Checks, through each contender's probe route, that its select runs inside a transaction
    /// block (or outside one, for the autocommit contenders): that it does the work it claims.
    pub(crate) async fn check_modes(&mut self) -> Result<(), String> {
        for contender in &self.contenders {
            let name = contender.kind.name();
            let id = 42;
            let mut conn = Conn::open(contender.addr)
                .await
                .map_err(|e| format!("{name}: cannot connect: {e}"))?;
            let status = conn
                .get(&format!("/probe/{id}"))
                .await
                .map_err(|e| format!("{name}: probe failed: {e}"))?;
            let expected = format!(
                "{{\"id\":{id},\"v\":{},\"in_transaction\":{}}}",
                3 * id,
                contender.kind.transactional()
            );
            if !status.is_success() || conn.body != expected.as_bytes() {
                return Err(format!(
                    "{name}: the probe answered {status} {:?}, expected {expected}",
                    String::from_utf8_lossy(&conn.body)
                ));
            }
        }
        self.check_no_open_transaction().await
    }

    /// None of the benchmark's pooled connections may be idle in transaction once the client
    /// has all its answers.
    pub(crate) async fn check_no_open_transaction(&mut self) -> Result<(), String> {
        match self.admin.idle_in_transaction().await {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!(
                "{n} of the benchmark's connections idle in transaction after the answers"
            )),
            Err(e) => Err(format!("cannot read pg_stat_activity: {e}")),
        }
    }

    /// Stops the servers, closes every pool, then checks that no connection was left inside a
    /// transaction and that the server committed a transaction per request counted.
    pub(crate) async fn close(self, requests: u64) -> Result<(), BoxError> {
        print_teardown("dbscope bind", &self.pools.manager.status());
        for contender in &self.contenders {
            contender.server.abort();
        }
        self.pools.sqlx_defaults.close().await;
        self.pools.sqlx_no_test.close().await;
        self.pools.manager.close(Duration::from_secs(5)).await?;
        self.admin.final_checks(requests, "requests").await
    }
}
