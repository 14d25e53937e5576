//! PostgreSQL through `PgConnection`.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode, Postgres};

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
