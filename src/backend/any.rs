//! Any database chosen by URL, through `AnyConnection`.

use std::str::FromStr;
use std::sync::Once;

use sqlx::any::{Any, AnyConnectOptions};

use super::{Backend, Sealed, delegate_executor, invalid_url, log_settings, sqlx_url};
use crate::config::BindConfig;
use crate::{DatabaseUrl, Result};

impl Sealed for Any {}

impl Backend for Any {
    fn connect_options(
        bind: &str,
        url: &DatabaseUrl,
        config: &BindConfig,
    ) -> Result<AnyConnectOptions> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let connect = &config.connect;
        let sqlite = &connect.sqlite;
        let typed_only = connect.statement_cache_capacity.is_some()
            || connect.application_name.is_some()
            || sqlite.foreign_keys.is_some()
            || sqlite.journal_mode.is_some()
            || sqlite.busy_timeout.is_some();
        if typed_only {
            tracing::warn!(
                bind,
                "an `any` engine cannot carry statement_cache_capacity, application_name or \
                 SQLite pragmas; put them in the URL's query instead"
            );
        }
        let options = AnyConnectOptions::from_str(&sqlx_url(url, config))
            .map_err(|e| invalid_url(bind, url, e))?;
        Ok(log_settings(options, config.echo))
    }

    delegate_executor!();
}
