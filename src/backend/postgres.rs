//! PostgreSQL through `PgConnection`.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, Postgres};

use super::{Backend, Sealed, delegate_executor, invalid_url, log_settings, sqlx_url};
use crate::config::BindConfig;
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
        if let Some(name) = &config.connect.application_name {
            options = options.application_name(name);
        }
        Ok(log_settings(options, config.echo))
    }

    delegate_executor!();
}
