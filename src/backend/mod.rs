//! The databases dbscope drives: the sealed [`Backend`] trait, the SQL dialects, and the table
//! that maps a URL scheme to the driver compiled in for it.

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use sqlx::Either;
use sqlx::{Connection, Database, Execute, SqlStr};

use crate::config::{BindConfig, Engine};
use crate::{DatabaseUrl, Error, Result};

pub(crate) mod dialect;
pub(crate) use dialect::{Dialect, TxSql};
pub(crate) mod replication;
mod tls;

#[cfg(feature = "any")]
mod any;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

/// The connection options type of a backend.
pub(crate) type Options<DB> = <<DB as Database>::Connection as Connection>::Options;

mod sealed {
    pub trait Sealed {}
}

/// A database type dbscope can pool and run sessions on: `Postgres`, `MySql`, `Sqlite` or `Any`
/// from sqlx, each behind its cargo feature.
///
/// Sealed: its methods are dbscope's plumbing, hidden from the docs.
pub trait Backend: Database + sealed::Sealed {
    #[doc(hidden)]
    fn connect_options(bind: &str, url: &DatabaseUrl, config: &BindConfig)
    -> Result<Options<Self>>;

    #[doc(hidden)]
    fn fetch_many<'e, 'q: 'e, E>(
        conn: &'e mut Self::Connection,
        query: E,
    ) -> BoxStream<'e, sqlx::Result<Either<Self::QueryResult, Self::Row>>>
    where
        E: 'q + Execute<'q, Self>;

    #[doc(hidden)]
    fn fetch_optional<'e, 'q: 'e, E>(
        conn: &'e mut Self::Connection,
        query: E,
    ) -> BoxFuture<'e, sqlx::Result<Option<Self::Row>>>
    where
        E: 'q + Execute<'q, Self>;

    #[doc(hidden)]
    fn prepare_with<'e>(
        conn: &'e mut Self::Connection,
        sql: SqlStr,
        parameters: &'e [Self::TypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<Self::Statement>>;

    #[doc(hidden)]
    fn describe(
        conn: &mut Self::Connection,
        sql: SqlStr,
    ) -> BoxFuture<'_, sqlx::Result<sqlx::Describe<Self>>>;

    /// Whether [`copy_arguments`](Backend::copy_arguments) copies: a statement can then be sent
    /// a second time, on another connection.
    #[doc(hidden)]
    const RESENDS_STATEMENTS: bool = false;

    /// Whether a transaction's BEGIN may go in the same simple-query message as its first
    /// statement without parameters, the driver sending such a statement as it is (PostgreSQL):
    /// see "Round trips" on `Session`.
    #[doc(hidden)]
    const PIGGYBACKS_BEGIN: bool = false;

    /// A copy of a statement's arguments, where this database's arguments can be copied.
    #[doc(hidden)]
    fn copy_arguments(arguments: &Self::Arguments) -> Option<Self::Arguments> {
        let _ = arguments;
        None
    }

    /// The first column of `row` as text, if it is text (a commit's WAL position or GTID).
    #[doc(hidden)]
    fn first_text(row: &Self::Row) -> Option<String>;

    /// The last column of `row` as text, if it is text (a `SHOW`'s value).
    #[doc(hidden)]
    fn last_text(row: &Self::Row) -> Option<String>;

    /// `options` made to open connections read-only for their server's whole session, at no
    /// round trip (PostgreSQL's `default_transaction_read_only` in the startup packet): for a
    /// replica's pool. `None` where the driver cannot.
    /// `options`, opening only a database that exists (SQLite's `create_if_missing` off), for
    /// work that must change nothing (a migration status, a dry run).
    #[doc(hidden)]
    fn without_creating(options: &Options<Self>) -> Options<Self> {
        options.clone()
    }

    #[doc(hidden)]
    fn read_only_at_connect(options: &Options<Self>) -> Option<Options<Self>> {
        let _ = options;
        None
    }

    /// Asks the server for its role and replication position (binds with replicas; the
    /// backends that cannot have any are refused when the bind is built).
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn probe(conn: &mut Self::Connection) -> BoxFuture<'_, sqlx::Result<replication::Probe>> {
        let _ = conn;
        Box::pin(async {
            Err(sqlx::Error::Configuration(
                "this backend has no replicas".into(),
            ))
        })
    }

    /// Closes the statements sqlx prepared and cached on `conn`, for a connection that passes
    /// from one test to the next (see `engine::kept`); nothing on backends whose connections
    /// are never kept.
    #[doc(hidden)]
    fn forget_statements(conn: &mut Self::Connection) -> BoxFuture<'_, sqlx::Result<()>> {
        let _ = conn;
        Box::pin(async { Ok(()) })
    }
}

/// Implements [`Backend`]'s executor plumbing for a database whose `&mut Connection` is an
/// `Executor`, by delegation.
macro_rules! delegate_executor {
    () => {
        fn fetch_many<'e, 'q: 'e, E>(
            conn: &'e mut Self::Connection,
            query: E,
        ) -> futures_core::stream::BoxStream<
            'e,
            sqlx::Result<sqlx::Either<Self::QueryResult, Self::Row>>,
        >
        where
            E: 'q + sqlx::Execute<'q, Self>,
        {
            sqlx::Executor::fetch_many(conn, query)
        }

        fn fetch_optional<'e, 'q: 'e, E>(
            conn: &'e mut Self::Connection,
            query: E,
        ) -> futures_core::future::BoxFuture<'e, sqlx::Result<Option<Self::Row>>>
        where
            E: 'q + sqlx::Execute<'q, Self>,
        {
            sqlx::Executor::fetch_optional(conn, query)
        }

        fn prepare_with<'e>(
            conn: &'e mut Self::Connection,
            sql: sqlx::SqlStr,
            parameters: &'e [Self::TypeInfo],
        ) -> futures_core::future::BoxFuture<'e, sqlx::Result<Self::Statement>> {
            sqlx::Executor::prepare_with(conn, sql, parameters)
        }

        fn describe(
            conn: &mut Self::Connection,
            sql: sqlx::SqlStr,
        ) -> futures_core::future::BoxFuture<'_, sqlx::Result<sqlx::Describe<Self>>> {
            sqlx::Executor::describe(conn, sql)
        }

        fn first_text(row: &Self::Row) -> Option<String> {
            sqlx::Row::try_get::<Option<String>, _>(row, 0)
                .ok()
                .flatten()
        }

        fn last_text(row: &Self::Row) -> Option<String> {
            let last = sqlx::Row::len(row).checked_sub(1)?;
            sqlx::Row::try_get::<Option<String>, _>(row, last)
                .ok()
                .flatten()
        }
    };
}
pub(crate) use delegate_executor;

/// The databases dbscope knows, by URL scheme, and whether their driver is compiled in.
struct SchemeEntry {
    schemes: &'static [&'static str],
    name: &'static str,
    feature: &'static str,
    dialect: Dialect,
    compiled: bool,
}

const SCHEMES: &[SchemeEntry] = &[
    SchemeEntry {
        schemes: &["postgres", "postgresql"],
        name: "PostgreSQL",
        feature: "postgres",
        dialect: Dialect::Postgres,
        compiled: cfg!(feature = "postgres"),
    },
    SchemeEntry {
        schemes: &["mysql", "mariadb"],
        name: "MySQL",
        feature: "mysql",
        dialect: Dialect::MySql,
        compiled: cfg!(feature = "mysql"),
    },
    SchemeEntry {
        schemes: &["sqlite"],
        name: "SQLite",
        feature: "sqlite",
        dialect: Dialect::Sqlite,
        compiled: cfg!(feature = "sqlite"),
    },
];

/// The bind's URL and the database it names, once checked: a scheme dbscope knows, whose driver
/// (and the `Any` driver, for `engine = "any"`) is compiled in, and TLS settings it can honour.
pub(crate) fn resolve<'c>(
    bind: &str,
    config: &'c BindConfig,
) -> Result<(&'c DatabaseUrl, Dialect)> {
    let url = config
        .url
        .as_ref()
        .ok_or_else(|| Error::missing_url(bind, &crate::load::url_env_var(bind)))?;
    let scheme = url
        .scheme()
        .ok_or_else(|| Error::invalid_url(bind, &url.redacted(), "it has no scheme"))?;
    let entry = SCHEMES
        .iter()
        .find(|d| d.schemes.contains(&scheme.as_str()))
        .ok_or_else(|| Error::unknown_scheme(bind, &scheme))?;
    if !entry.compiled {
        return Err(Error::driver_not_enabled(bind, entry.name, entry.feature));
    }
    if config.engine == Engine::Any && !cfg!(feature = "any") {
        return Err(Error::driver_not_enabled(bind, "Any", "any"));
    }
    tls::check(bind, url, entry.dialect, config)?;
    Ok((url, entry.dialect))
}

/// The URL as sqlx's parsers want it: `mariadb://` becomes `mysql://` (sqlx knows only the
/// latter), and for the `Any` engine, which cannot take typed options, a SQLite file URL gets
/// `mode=rwc` when the bind creates missing files (the default) and the URL sets no mode.
pub(crate) fn sqlx_url<'u>(url: &'u DatabaseUrl, config: &BindConfig) -> std::borrow::Cow<'u, str> {
    let raw = url.expose();
    if let Some((scheme, rest)) = raw.split_once("://")
        && scheme.eq_ignore_ascii_case("mariadb")
    {
        return format!("mysql://{rest}").into();
    }
    let sqlite_file = raw.starts_with("sqlite:") && !raw.contains(":memory:");
    if config.engine == Engine::Any
        && sqlite_file
        && config.connect.sqlite.create_if_missing
        && !raw.contains("mode=")
    {
        let separator = if raw.contains('?') { '&' } else { '?' };
        return format!("{raw}{separator}mode=rwc").into();
    }
    raw.into()
}

/// Maps a driver's URL-parsing error to [`ErrorKind::InvalidUrl`](crate::ErrorKind::InvalidUrl).
pub(crate) fn invalid_url(bind: &str, url: &DatabaseUrl, err: sqlx::Error) -> Error {
    let reason = match err {
        sqlx::Error::Configuration(source) => source.to_string(),
        other => other.to_string(),
    };
    Error::invalid_url(bind, &url.redacted(), &url.scrub(&reason))
}

/// Whether a bind's connections can be made read-only on the server for its read-only
/// sessions, which then need no BEGIN (see "Read-only sessions" on `Session`): PostgreSQL and
/// MySQL/MariaDB on the native engine (which sends a first statement met by a dead connection
/// again), not behind a transaction pooler (where a connection's settings do not stick).
pub(crate) fn read_only_connections<DB: Backend>(dialect: Dialect, config: &BindConfig) -> bool {
    DB::RESENDS_STATEMENTS
        && dialect.read_only_sql().is_some()
        && !config.connect.pooler.pools_transactions()
}

/// Statement logging: every statement at INFO when `echo` is on; otherwise only slow ones.
pub(crate) fn log_settings<O: sqlx::ConnectOptions>(options: O, echo: bool) -> O {
    let level = if echo {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Off
    };
    options.log_statements(level)
}

pub(crate) use sealed::Sealed;
