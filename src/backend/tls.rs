//! A bind's TLS settings, from its URL's query and its `connect.tls` (which wins, setting by
//! setting), checked when the bind is built: a SQLite bind takes none, an `any` bind takes them
//! in its URL only, a build without the `tls` feature only the modes that allow plain
//! connections, and every file must exist and hold PEM. The PostgreSQL and MySQL backends apply
//! `connect.tls` over the options parsed from the URL.

use std::path::{Path, PathBuf};

use super::Dialect;
use crate::config::{BindConfig, Engine, TlsConfig, TlsMode};
use crate::{DatabaseUrl, Error, Result};

/// TLS support is compiled in (the `tls` feature).
const COMPILED: bool = cfg!(feature = "tls");

/// The URL query keys of each setting, as sqlx's PostgreSQL and MySQL parsers read them.
const MODE_KEYS: &[&str] = &["sslmode", "ssl-mode"];
const ROOT_CERT_KEYS: &[&str] = &["sslrootcert", "ssl-root-cert", "ssl-ca", "sslca"];
const CLIENT_CERT_KEYS: &[&str] = &["sslcert", "ssl-cert"];
const CLIENT_KEY_KEYS: &[&str] = &["sslkey", "ssl-key"];

const ON_SQLITE: &str = "TLS settings (`connect.tls`, or sslmode and the like in the URL) do not \
                         apply to SQLite, an embedded database with no network connection; \
                         remove them from this bind";
const ON_ANY: &str = "an `any` engine cannot carry `connect.tls`; put its settings in the URL's \
                      query instead: sslmode, sslrootcert, sslcert, sslkey (MySQL: ssl-mode, \
                      ssl-ca, ssl-cert, ssl-key)";

/// Checks the bind's TLS settings; see the module docs.
pub(crate) fn check(
    bind: &str,
    url: &DatabaseUrl,
    dialect: Dialect,
    config: &BindConfig,
) -> Result<()> {
    check_with(bind, url, dialect, config, COMPILED)
}

fn check_with(
    bind: &str,
    url: &DatabaseUrl,
    dialect: Dialect,
    config: &BindConfig,
    compiled: bool,
) -> Result<()> {
    let configured = &config.connect.tls;
    let settings = Settings::from_url(url).overridden_by(configured);
    if dialect == Dialect::Sqlite && !settings.is_empty() {
        return Err(Error::unsupported(bind, ON_SQLITE));
    }
    if config.engine == Engine::Any && !configured.is_empty() {
        return Err(Error::unsupported(bind, ON_ANY));
    }
    if !compiled && let Some(origin) = settings.needing_tls() {
        return Err(Error::tls_not_enabled(bind, origin));
    }
    match (&settings.client_cert, &settings.client_key) {
        (Some(cert), None) => return Err(Error::tls_client_pair(bind, &cert.origin, "a key")),
        (None, Some(key)) => {
            return Err(Error::tls_client_pair(bind, &key.origin, "a certificate"));
        }
        _ => {}
    }
    let files = [
        (&settings.root_cert, "CA certificate", Pem::Certificate),
        (
            &settings.client_cert,
            "client certificate",
            Pem::Certificate,
        ),
        (&settings.client_key, "client key", Pem::PrivateKey),
    ];
    for (setting, what, pem) in files {
        if let Some(Setting {
            value: File::Path(path),
            origin,
        }) = setting
        {
            check_file(bind, what, origin, path, pem)?;
        }
    }
    Ok(())
}

/// One setting and where it came from, as a message names it.
#[derive(Debug)]
struct Setting<T> {
    value: T,
    origin: String,
}

/// A certificate or key setting: a file, or (in a URL, as sqlx allows) the PEM text itself.
#[derive(Debug)]
enum File {
    Path(PathBuf),
    Inline,
}

#[derive(Debug, Default)]
struct Settings {
    mode: Option<Setting<TlsMode>>,
    root_cert: Option<Setting<File>>,
    client_cert: Option<Setting<File>>,
    client_key: Option<Setting<File>>,
}

impl Settings {
    /// The settings in the URL's query. A mode no one knows is left to the driver's URL parser,
    /// which refuses it with the bind's `InvalidUrl` error.
    fn from_url(url: &DatabaseUrl) -> Self {
        let raw = url.expose();
        let Some((_, query)) = raw.split_once('?') else {
            return Self::default();
        };
        let query = query.split_once('#').map_or(query, |(query, _)| query);
        let mut settings = Self::default();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let key = key.to_ascii_lowercase();
            let origin = format!("`{key}` in the URL");
            if MODE_KEYS.contains(&key.as_str()) {
                settings.mode = value.parse().ok().map(|mode| Setting {
                    value: mode,
                    origin: format!("`{key}={value}` in the URL"),
                });
            } else if let Some(slot) = settings.file_slot(&key) {
                *slot = Some(Setting {
                    value: File::from_url_value(&value),
                    origin,
                });
            }
        }
        settings
    }

    fn file_slot(&mut self, key: &str) -> Option<&mut Option<Setting<File>>> {
        if ROOT_CERT_KEYS.contains(&key) {
            Some(&mut self.root_cert)
        } else if CLIENT_CERT_KEYS.contains(&key) {
            Some(&mut self.client_cert)
        } else if CLIENT_KEY_KEYS.contains(&key) {
            Some(&mut self.client_key)
        } else {
            None
        }
    }

    /// These settings with each one `config` sets replaced by the config's.
    fn overridden_by(mut self, config: &TlsConfig) -> Self {
        if let Some(mode) = config.mode {
            self.mode = Some(Setting {
                value: mode,
                origin: format!("`connect.tls.mode = \"{mode}\"`"),
            });
        }
        let files = [
            (&mut self.root_cert, &config.root_cert, "root_cert"),
            (&mut self.client_cert, &config.client_cert, "client_cert"),
            (&mut self.client_key, &config.client_key, "client_key"),
        ];
        for (slot, path, field) in files {
            if let Some(path) = path {
                *slot = Some(Setting {
                    value: File::Path(path.clone()),
                    origin: format!("`connect.tls.{field}`"),
                });
            }
        }
        self
    }

    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.root_cert.is_none()
            && self.client_cert.is_none()
            && self.client_key.is_none()
    }

    /// The first setting that cannot be honoured without TLS support: a mode that refuses plain
    /// connections, or any certificate or key (libpq, built without SSL, refuses the same modes).
    fn needing_tls(&self) -> Option<&str> {
        let mode = self.mode.as_ref().filter(|mode| mode.value.requires_tls());
        let origin = mode.map(|mode| &mode.origin).or_else(|| {
            [&self.root_cert, &self.client_cert, &self.client_key]
                .into_iter()
                .flatten()
                .map(|file| &file.origin)
                .next()
        });
        origin.map(String::as_str)
    }
}

impl File {
    /// sqlx reads a value that looks like PEM as the certificate itself, anything else as a path.
    fn from_url_value(value: &str) -> Self {
        let trimmed = value.trim();
        if trimmed.starts_with("-----BEGIN") && trimmed.ends_with("-----") {
            Self::Inline
        } else {
            Self::Path(PathBuf::from(value))
        }
    }
}

/// What a file must hold.
#[derive(Clone, Copy, Debug)]
enum Pem {
    Certificate,
    PrivateKey,
}

/// The file can be read and holds the PEM it should: a missing CA file fails here, naming the
/// bind and the path, rather than as an untrusted certificate at the first connection.
fn check_file(bind: &str, what: &str, origin: &str, path: &Path, pem: Pem) -> Result<()> {
    let text = std::fs::read(path).map_err(|e| {
        let problem = match e.kind() {
            std::io::ErrorKind::NotFound => "does not exist",
            _ => "cannot be read",
        };
        Error::tls_file(bind, what, origin, path, problem, Some(e))
    })?;
    let text = String::from_utf8_lossy(&text);
    let problem = match pem {
        Pem::Certificate if !text.contains("-----BEGIN CERTIFICATE-----") => {
            "holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"
        }
        Pem::PrivateKey if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") => {
            "holds an encrypted private key, which rustls cannot use; decrypt it (`openssl pkey \
             -in <key> -out <plain key>`)"
        }
        Pem::PrivateKey if !(text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----")) => {
            "holds no PEM private key (`-----BEGIN PRIVATE KEY-----`)"
        }
        _ => return Ok(()),
    };
    Err(Error::tls_file(bind, what, origin, path, problem, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn err(url: &str, dialect: Dialect, config: BindConfig, compiled: bool) -> Error {
        let url = DatabaseUrl::new(url);
        check_with("main", &url, dialect, &config, compiled).expect_err("refused")
    }

    #[test]
    fn without_the_feature_modes_that_need_tls_are_refused_naming_the_feature() {
        let url = "postgres://app@db/main?sslmode=verify-full";
        let e = err(url, Dialect::Postgres, BindConfig::new(url), false);
        assert_eq!(e.kind(), ErrorKind::DriverNotEnabled);
        assert_eq!(
            e.to_string(),
            "bind `main`: TLS, which `sslmode=verify-full` in the URL asks for, is not compiled \
             in; enable dbscope's `tls` cargo feature"
        );
        let config = BindConfig::new("mysql://app@db/main").tls_mode(TlsMode::Require);
        let e = err("mysql://app@db/main", Dialect::MySql, config, false);
        assert!(
            e.to_string()
                .contains("`connect.tls.mode = \"require\"` asks for"),
            "{e}"
        );
        let config = BindConfig::new("postgres://db/x").tls_root_cert("/nonexistent/ca.pem");
        let e = err("postgres://db/x", Dialect::Postgres, config, false);
        assert!(e.to_string().contains("`connect.tls.root_cert`"), "{e}");
    }

    #[test]
    fn without_the_feature_plain_modes_pass() {
        for url in [
            "postgres://db/x?sslmode=disable",
            "postgres://db/x?sslmode=prefer",
            "mysql://db/x?ssl-mode=PREFERRED",
        ] {
            let dialect = if url.starts_with("mysql") {
                Dialect::MySql
            } else {
                Dialect::Postgres
            };
            let config = BindConfig::new(url).tls_mode(TlsMode::Disable);
            check_with("main", &DatabaseUrl::new(url), dialect, &config, false).unwrap();
        }
    }

    #[test]
    fn the_config_wins_over_the_url() {
        let url = DatabaseUrl::new("postgres://db/x?sslmode=require&sslrootcert=/url/ca.pem");
        let config = TlsConfig {
            mode: Some(TlsMode::Disable),
            root_cert: Some("/config/ca.pem".into()),
            ..TlsConfig::default()
        };
        let settings = Settings::from_url(&url).overridden_by(&config);
        assert_eq!(settings.mode.unwrap().value, TlsMode::Disable);
        let root = settings.root_cert.unwrap();
        assert!(matches!(root.value, File::Path(p) if p == Path::new("/config/ca.pem")));
        assert_eq!(root.origin, "`connect.tls.root_cert`");
    }

    #[test]
    fn url_settings_are_read_by_every_key_sqlx_knows() {
        let url = DatabaseUrl::new(
            "mysql://db/x?SSL-MODE=VERIFY_IDENTITY&ssl-ca=%2Fa%20b%2Fca.pem&ssl-cert=c&ssl-key=k#f",
        );
        let settings = Settings::from_url(&url);
        assert_eq!(settings.mode.unwrap().value, TlsMode::VerifyFull);
        let root = settings.root_cert.unwrap();
        assert!(matches!(root.value, File::Path(p) if p == Path::new("/a b/ca.pem")));
        assert_eq!(root.origin, "`ssl-ca` in the URL");
        assert!(settings.client_cert.is_some() && settings.client_key.is_some());
        let inline = DatabaseUrl::new(
            "postgres://db/x?sslrootcert=-----BEGIN%20CERTIFICATE-----%0Axx%0A-----END%20CERTIFICATE-----",
        );
        let root = Settings::from_url(&inline).root_cert.unwrap();
        assert!(matches!(root.value, File::Inline));
    }

    #[test]
    fn sqlite_and_any_binds_refuse_tls_config() {
        let config = BindConfig::new("sqlite::memory:").tls_mode(TlsMode::Require);
        let e = err("sqlite::memory:", Dialect::Sqlite, config, true);
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(
            e.to_string().starts_with("bind `main`: TLS settings"),
            "{e}"
        );
        let config = BindConfig::new("postgres://db/x")
            .engine(Engine::Any)
            .tls_mode(TlsMode::Require);
        let e = err("postgres://db/x", Dialect::Postgres, config, true);
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("in the URL's query"), "{e}");
    }

    #[test]
    fn a_certificate_needs_its_key() {
        let config = BindConfig::new("postgres://db/x?sslcert=/c.pem");
        let e = err(
            "postgres://db/x?sslcert=/c.pem",
            Dialect::Postgres,
            config,
            true,
        );
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(
            e.to_string(),
            "bind `main`: `sslcert` in the URL is set but a key is not; a client certificate \
             and its key go together: set both, or neither"
        );
    }

    #[test]
    fn a_missing_or_wrong_file_is_named_with_its_path() {
        let dir = std::env::temp_dir().join(format!("dbscope-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let config = BindConfig::new("postgres://db/x").tls_root_cert(&missing);
        let e = err("postgres://db/x", Dialect::Postgres, config, true);
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(
            e.to_string(),
            format!(
                "bind `main`: the CA certificate file `{}` (`connect.tls.root_cert`) does not \
                 exist; check the path, or remove the setting",
                missing.display()
            )
        );
        assert!(std::error::Error::source(&e).is_some(), "the I/O error");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let config = BindConfig::new("postgres://db/x").tls_client_cert(&not_pem, &not_pem);
        let e = err("postgres://db/x", Dialect::Postgres, config, true);
        assert!(e.to_string().contains("client certificate file"), "{e}");
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
