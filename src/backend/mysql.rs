//! MySQL and MariaDB through `MySqlConnection`.

use std::str::FromStr;

use sqlx::mysql::{MySql, MySqlConnectOptions};

use super::{Backend, Sealed, delegate_executor, invalid_url, log_settings};
use crate::config::BindConfig;
use crate::{DatabaseUrl, Result};

impl Sealed for MySql {}

impl Backend for MySql {
    fn connect_options(
        bind: &str,
        url: &DatabaseUrl,
        config: &BindConfig,
    ) -> Result<MySqlConnectOptions> {
        // sqlx knows only `mysql://`; MariaDB users often write `mariadb://`.
        let raw = url.expose();
        let raw = match raw.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => {
                format!("mysql://{rest}")
            }
            _ => raw.to_owned(),
        };
        let mut options =
            MySqlConnectOptions::from_str(&raw).map_err(|e| invalid_url(bind, url, e))?;
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
