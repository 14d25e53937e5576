//! MySQL and MariaDB through `MySqlConnection`.

use std::str::FromStr;

use sqlx::mysql::{MySql, MySqlConnectOptions};

use super::{Backend, Sealed, delegate_executor, invalid_url, log_settings, sqlx_url};
use crate::config::BindConfig;
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
        Ok(log_settings(options, config.echo))
    }

    delegate_executor!();
}
