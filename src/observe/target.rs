//! Where a bind's connections go, as OpenTelemetry names it: `db.system.name`,
//! `db.namespace`, `server.address`, `server.port`. Read from the URL once, when the bind is
//! built; never its user name or password.

use std::sync::Arc;

use crate::DatabaseUrl;
use crate::backend::Dialect;

/// The attributes every span and metric of a bind carries.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The bind's name (`db.client.connection.pool.name` on spans).
    pub(crate) bind: Arc<str>,
    /// The pool's name (`db.client.connection.pool.name` on metrics): the bind's, or
    /// `<bind>/blocking` for its blocking face.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) pool: Arc<str>,
    /// `postgresql`, `mysql`, `mariadb` (a `mariadb://` URL) or `sqlite`.
    pub(crate) system: &'static str,
    /// The database name (PostgreSQL, MySQL), or the file (SQLite).
    pub(crate) namespace: Option<String>,
    pub(crate) address: Option<String>,
    pub(crate) port: Option<u16>,
}

impl Target {
    pub(crate) fn new(bind: &Arc<str>, pool: &str, url: &DatabaseUrl, dialect: Dialect) -> Self {
        // Read from the masked form: a URL a parser reads otherwise than the masking (a password
        // with an unencoded `/` in it, `postgres://u:12/secret@host/db`, parses as host `u`,
        // port 12, database `secret@host/db`) must not put a piece of its password in a label.
        let masked = url.redacted();
        let raw = masked.as_str();
        let (system, default_port) = match dialect {
            Dialect::Postgres => ("postgresql", 5432),
            Dialect::MySql if url.scheme().as_deref() == Some("mariadb") => ("mariadb", 3306),
            Dialect::MySql => ("mysql", 3306),
            Dialect::Sqlite => ("sqlite", 0),
        };
        let mut target = Self {
            bind: bind.clone(),
            pool: Arc::from(pool),
            system,
            namespace: None,
            address: None,
            port: None,
        };
        let clean = |text: &str| !text.is_empty() && !text.contains(MASK);
        if dialect == Dialect::Sqlite {
            target.namespace = sqlite_file(raw).filter(|file| clean(file));
            return target;
        }
        if let Ok(parsed) = url::Url::parse(raw) {
            let db = parsed.path().trim_start_matches('/');
            target.namespace = clean(db).then(|| db.to_owned());
            target.address = parsed.host_str().filter(|h| clean(h)).map(str::to_owned);
            target.port = target
                .address
                .as_ref()
                .map(|_| parsed.port().unwrap_or(default_port));
        }
        target
    }
}

/// `host` or `host:port` of a URL, read from its masked form (see [`Target::new`]); `None`
/// where there is no host, or the masking covered it.
pub(crate) fn host_and_port(url: &DatabaseUrl) -> Option<String> {
    let parsed = url::Url::parse(&url.redacted()).ok()?;
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty() && !h.contains(MASK))?;
    Some(
        parsed
            .port()
            .map_or_else(|| host.to_owned(), |port| format!("{host}:{port}")),
    )
}

/// What [`DatabaseUrl::redacted`] puts in place of a secret.
const MASK: &str = "***";

/// The database of a SQLite URL: its file, or `:memory:`.
fn sqlite_file(raw: &str) -> Option<String> {
    let rest = raw.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let file = rest.split('?').next().unwrap_or_default();
    (!file.is_empty()).then(|| file.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, dialect: Dialect) -> Target {
        Target::new(&Arc::from("main"), "main", &DatabaseUrl::new(url), dialect)
    }

    #[test]
    fn reads_the_url_without_credentials() {
        let pg = target(
            "postgres://app:s3cret@db.example.com/orders",
            Dialect::Postgres,
        );
        assert_eq!(pg.system, "postgresql");
        assert_eq!(pg.namespace.as_deref(), Some("orders"));
        assert_eq!(pg.address.as_deref(), Some("db.example.com"));
        assert_eq!(pg.port, Some(5432));
        assert!(!format!("{pg:?}").contains("s3cret"));
        // A password with an unencoded `/`: a URL parser reads part of it as the host and the
        // database; the labels carry none of it.
        let odd = target(
            "postgres://u:12/Zq8X@db.example.com/orders",
            Dialect::Postgres,
        );
        let shown = format!("{odd:?}");
        assert!(!shown.contains("Zq8X") && !shown.contains("12"), "{shown}");
        assert_eq!(odd.address.as_deref(), Some("db.example.com"));
        assert_eq!(odd.namespace.as_deref(), Some("orders"));
        let odd = DatabaseUrl::new("postgres://u:12/Zq8X@db.example.com:6432/orders");
        assert_eq!(host_and_port(&odd).as_deref(), Some("db.example.com:6432"));
        let maria = target("mariadb://root@127.0.0.1:3307/test", Dialect::MySql);
        assert_eq!((maria.system, maria.port), ("mariadb", Some(3307)));
        let lite = target("sqlite://data/app.db?mode=rwc", Dialect::Sqlite);
        assert_eq!(lite.namespace.as_deref(), Some("data/app.db"));
        assert_eq!(lite.address, None);
    }
}
