//! Any database chosen by URL, through `AnyConnection`.

use std::str::FromStr;
use std::sync::Once;

use sqlx::any::{Any, AnyConnectOptions};

use super::{Backend, Sealed, delegate_executor, invalid_url, log_settings};
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
        if connect.statement_cache_capacity.is_some() || connect.application_name.is_some() {
            tracing::warn!(
                bind,
                "an `any` engine cannot carry statement_cache_capacity or application_name; \
                 put them in the URL's query instead"
            );
        }
        let options =
            AnyConnectOptions::from_str(url.expose()).map_err(|e| invalid_url(bind, url, e))?;
        Ok(log_settings(options, config.echo))
    }

    delegate_executor!();
}
