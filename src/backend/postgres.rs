//! PostgreSQL through `PgConnection`.

use std::str::FromStr;

use futures_core::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode, Postgres};

use super::replication::{Position, Probe, ProbedRole};

use super::{Backend, Sealed, delegate_executor, invalid_url, log_settings, sqlx_url};
use crate::config::{BindConfig, TlsConfig, TlsMode};
use crate::{DatabaseUrl, Result};

impl Sealed for Postgres {}

impl Backend for Postgres {
    fn connect_options(
        bind: &str,
        url: &DatabaseUrl,
        config: &BindConfig,
    ) -> Result<PgConnectOptions> {
        let mut options = PgConnectOptions::from_str(&sqlx_url(url, config))
            .map_err(|e| invalid_url(bind, url, e))?;
        if let Some(capacity) = config.connect.statement_cache_capacity {
            options = options.statement_cache_capacity(capacity);
        }
        if config.connect.pooler.pools_transactions() {
            // Behind a transaction pooler a cached statement would be looked for on whichever
            // server connection the next transaction gets (`bind::check_pooler` refuses a
            // capacity above 0 there).
            options = options.statement_cache_capacity(0);
        }
        if let Some(name) = &config.connect.application_name {
            options = options.application_name(name);
        }
        let options = with_tls(options, &config.connect.tls);
        Ok(log_settings(options, config.echo))
    }

    delegate_executor!();

    // A read session that runs without BEGIN sends its first statement first: met by a dead
    // connection, it goes again on another (see `Session`'s "Dead connections").
    const RESENDS_STATEMENTS: bool = true;

    // sqlx sends a statement without arguments as a simple query, whose string may hold several.
    const PIGGYBACKS_BEGIN: bool = true;

    fn copy_arguments(arguments: &Self::Arguments) -> Option<Self::Arguments> {
        Some(arguments.clone())
    }

    fn read_only_at_connect(options: &PgConnectOptions) -> Option<PgConnectOptions> {
        Some(
            options
                .clone()
                .options([("default_transaction_read_only", "on")]),
        )
    }

    fn forget_statements(conn: &mut PgConnection) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(sqlx::Connection::clear_cached_statements(conn))
    }

    #[allow(private_interfaces)]
    fn probe(conn: &mut PgConnection) -> BoxFuture<'_, sqlx::Result<Probe>> {
        Box::pin(async move {
            let (recovery, position, timeline): (bool, Option<String>, i32) =
                sqlx::query_as(PG_PROBE).fetch_one(conn).await?;
            let position = position
                .as_deref()
                .and_then(Position::parse)
                .ok_or_else(|| sqlx::Error::Protocol("no WAL position".into()))?;
            Ok(Probe {
                role: if recovery {
                    ProbedRole::Replica
                } else {
                    ProbedRole::Primary
                },
                position,
                timeline: u32::try_from(timeline).unwrap_or(0),
            })
        })
    }
}

/// `connect.tls` over the URL's settings (`backend::tls` checked them when the bind was built).
fn with_tls(mut options: PgConnectOptions, tls: &TlsConfig) -> PgConnectOptions {
    if let Some(mode) = tls.mode {
        options = options.ssl_mode(ssl_mode(mode));
    }
    if let Some(path) = &tls.root_cert {
        options = options.ssl_root_cert(path);
    }
    if let Some(path) = &tls.client_cert {
        options = options.ssl_client_cert(path);
    }
    if let Some(path) = &tls.client_key {
        options = options.ssl_client_key(path);
    }
    options
}

fn ssl_mode(mode: TlsMode) -> PgSslMode {
    match mode {
        TlsMode::Disable => PgSslMode::Disable,
        TlsMode::Prefer => PgSslMode::Prefer,
        TlsMode::Require => PgSslMode::Require,
        TlsMode::VerifyCa => PgSslMode::VerifyCa,
        TlsMode::VerifyFull => PgSslMode::VerifyFull,
    }
}

/// PostgreSQL: role, position, timeline, in one statement. On a primary the timeline is the
/// first 8 hex digits of the current WAL file's name; on a standby it is the WAL receiver's.
const PG_PROBE: &str = "SELECT pg_is_in_recovery(), \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
    CASE WHEN pg_is_in_recovery() \
      THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint())) \
      ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END";
