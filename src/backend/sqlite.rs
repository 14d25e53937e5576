//! SQLite through `SqliteConnection`.

use std::str::FromStr;

use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteJournalMode};

use super::{Backend, Sealed, delegate_executor, invalid_url, log_settings, sqlx_url};
use crate::config::{BindConfig, JournalMode};
use crate::{DatabaseUrl, Result};

impl Sealed for Sqlite {}

impl Backend for Sqlite {
    fn without_creating(options: &SqliteConnectOptions) -> SqliteConnectOptions {
        options.clone().create_if_missing(false)
    }

    fn connect_options(
        bind: &str,
        url: &DatabaseUrl,
        config: &BindConfig,
    ) -> Result<SqliteConnectOptions> {
        let sqlite = &config.connect.sqlite;
        let mut options = SqliteConnectOptions::from_str(&sqlx_url(url, config))
            .map_err(|e| invalid_url(bind, url, e))?
            .create_if_missing(sqlite.create_if_missing);
        if let Some(capacity) = config.connect.statement_cache_capacity {
            options = options.statement_cache_capacity(capacity);
        }
        if let Some(on) = sqlite.foreign_keys {
            options = options.foreign_keys(on);
        }
        if let Some(mode) = sqlite.journal_mode {
            options = options.journal_mode(journal_mode(mode));
        }
        if let Some(timeout) = sqlite.busy_timeout {
            options = options.busy_timeout(timeout);
        }
        if config.connect.application_name.is_some() {
            tracing::warn!(
                bind,
                "application_name is a PostgreSQL option; this SQLite bind ignores it"
            );
        }
        Ok(log_settings(options, config.echo))
    }

    delegate_executor!();
}

fn journal_mode(mode: JournalMode) -> SqliteJournalMode {
    match mode {
        JournalMode::Delete => SqliteJournalMode::Delete,
        JournalMode::Truncate => SqliteJournalMode::Truncate,
        JournalMode::Persist => SqliteJournalMode::Persist,
        JournalMode::Memory => SqliteJournalMode::Memory,
        JournalMode::Wal => SqliteJournalMode::Wal,
        JournalMode::Off => SqliteJournalMode::Off,
    }
}
