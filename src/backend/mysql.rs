//! MySQL and MariaDB through `MySqlConnection`.

use std::str::FromStr;

use futures_core::future::BoxFuture;
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlConnection, MySqlSslMode};

use super::replication::{Position, Probe, ProbedRole};

use super::{Backend, Sealed, delegate_executor, invalid_url, log_settings, sqlx_url};
use crate::config::{BindConfig, TlsConfig, TlsMode};
use crate::{DatabaseUrl, Result};

impl Sealed for MySql {}

impl Backend for MySql {
    fn connect_options(
        bind: &str,
        url: &DatabaseUrl,
        config: &BindConfig,
    ) -> Result<MySqlConnectOptions> {
        let mut options = MySqlConnectOptions::from_str(&sqlx_url(url, config))
            .map_err(|e| invalid_url(bind, url, e))?;
        if let Some(capacity) = config.connect.statement_cache_capacity {
            options = options.statement_cache_capacity(capacity);
        }
        if config.connect.application_name.is_some() {
            tracing::warn!(
                bind,
                "application_name is a PostgreSQL option; this MySQL bind ignores it"
            );
        }
        let options = with_tls(options, &config.connect.tls);
        Ok(log_settings(options, config.echo))
    }

    delegate_executor!();

    const RESENDS_STATEMENTS: bool = true;

    fn copy_arguments(arguments: &Self::Arguments) -> Option<Self::Arguments> {
        Some(arguments.clone())
    }

    #[allow(private_interfaces)]
    fn probe(conn: &mut MySqlConnection) -> BoxFuture<'_, sqlx::Result<Probe>> {
        Box::pin(async move {
            let (read_only, binlog, applied): (i64, String, String) =
                sqlx::query_as(MARIADB_PROBE).fetch_one(conn).await?;
            let replica = read_only != 0;
            let position = if replica { applied } else { binlog };
            let position = Position::parse(&position)
                .ok_or_else(|| sqlx::Error::Protocol("unreadable GTID position".into()))?;
            Ok(Probe {
                role: if replica {
                    ProbedRole::Replica
                } else {
                    ProbedRole::Primary
                },
                position,
                timeline: 0,
            })
        })
    }
}

/// `connect.tls` over the URL's settings (`backend::tls` checked them when the bind was built).
fn with_tls(mut options: MySqlConnectOptions, tls: &TlsConfig) -> MySqlConnectOptions {
    if let Some(mode) = tls.mode {
        options = options.ssl_mode(ssl_mode(mode));
    }
    if let Some(path) = &tls.root_cert {
        options = options.ssl_ca(path);
    }
    if let Some(path) = &tls.client_cert {
        options = options.ssl_client_cert(path);
    }
    if let Some(path) = &tls.client_key {
        options = options.ssl_client_key(path);
    }
    options
}

/// libpq's names to MySQL's: `verify-full` is `VERIFY_IDENTITY`.
fn ssl_mode(mode: TlsMode) -> MySqlSslMode {
    match mode {
        TlsMode::Disable => MySqlSslMode::Disabled,
        TlsMode::Prefer => MySqlSslMode::Preferred,
        TlsMode::Require => MySqlSslMode::Required,
        TlsMode::VerifyCa => MySqlSslMode::VerifyCa,
        TlsMode::VerifyFull => MySqlSslMode::VerifyIdentity,
    }
}

/// MariaDB: `read_only`, and the binlog position (primary) or the replica's applied one.
const MARIADB_PROBE: &str = "SELECT CAST(@@read_only AS SIGNED), CAST(@@gtid_binlog_pos AS CHAR), CAST(@@gtid_slave_pos AS CHAR)";
