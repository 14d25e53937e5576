//! TLS against the local PostgreSQL and MariaDB, which `.ci/run` has serve TLS with a throwaway
//! CA: the modes, each check a handshake can fail and the error that names it, client
//! certificates, and the settings' way in from code, TOML and the environment. Whether a session
//! is encrypted is the server's word (`pg_stat_ssl`, `Ssl_cipher`), not the client's.
//!
//! The CA, the server's certificate (for `localhost` and 127.0.0.1), a client certificate and an
//! unrelated CA are in `DBSCOPE_TEST_TLS_DIR` (by default `/var/lib/dbscope-ci-tls`, where
//! `bash .ci/run` makes them); without them every test fails, saying so. A server under another
//! name than its certificate's is reached through a TCP relay on 127.0.0.2; a server without TLS
//! is a throwaway PostgreSQL cluster (tests/common/cluster.rs), never the shared one.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Kind, PG_DEFAULT, PG_ENV, TestDb, server_url, sql};
use dbscope::{BindConfig, BindManager, Config, DatabaseUrl, Error, ErrorKind, TlsCheck, TlsMode};
use sqlx::{Connection, MySql, Postgres};

const TLS_DIR_ENV: &str = "DBSCOPE_TEST_TLS_DIR";
const TLS_DIR_DEFAULT: &str = "/var/lib/dbscope-ci-tls";
/// The PostgreSQL user `.ci/run` admits over TLS with the client certificate only.
const CLIENT_USER: &str = "dbscope_tls_client";
/// How long one test of this file may take before it fails as hung.
const LIMIT: Duration = Duration::from_secs(120);

/// A file of the CI's TLS material; fails the test, saying how to make it, when it is missing.
fn tls_file(name: &str) -> PathBuf {
    let (dir, whence) = match std::env::var(TLS_DIR_ENV) {
        Ok(dir) if !dir.is_empty() => (dir, format!("{TLS_DIR_ENV} is set to it")),
        _ => (
            TLS_DIR_DEFAULT.to_owned(),
            format!("{TLS_DIR_ENV} is unset, so the tests look in the default"),
        ),
    };
    let path = Path::new(&dir).join(name);
    assert!(
        path.is_file(),
        "no {name} in {dir} ({whence}): run `bash .ci/run tests` (or `bash .ci/run servers`), \
         which makes the CI's throwaway CA and certificates there and has PostgreSQL and MariaDB \
         serve TLS with them"
    );
    path
}

fn ca() -> PathBuf {
    tls_file("ca.crt")
}

fn other_ca() -> PathBuf {
    tls_file("other-ca.crt")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Postgres,
    MySql,
}

impl Server {
    async fn db(self) -> TestDb {
        TestDb::new(match self {
            Self::Postgres => Kind::Postgres,
            Self::MySql => Kind::MySql,
        })
        .await
    }

    /// The URL query asking for `mode`, in this driver's own words.
    fn url_mode(self, mode: TlsMode) -> String {
        match self {
            Self::Postgres => format!("sslmode={mode}"),
            Self::MySql => format!("ssl-mode={}", mysql_mode(mode)),
        }
    }

    /// The URL query naming `path` as the CA file.
    fn url_root_cert(self, path: &Path) -> String {
        let key = match self {
            Self::Postgres => "sslrootcert",
            Self::MySql => "ssl-ca",
        };
        format!("{key}={}", path.display())
    }
}

fn mysql_mode(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Disable => "DISABLED",
        TlsMode::Prefer => "PREFERRED",
        TlsMode::Require => "REQUIRED",
        TlsMode::VerifyCa => "VERIFY_CA",
        TlsMode::VerifyFull => "VERIFY_IDENTITY",
        other => unreachable!("no such mode here: {other:?}"),
    }
}

/// `url` without its TLS settings (the suites' URLs say `disable`).
fn base_url(url: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("server url");
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(key, _)| !key.to_ascii_lowercase().starts_with("ssl"))
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    parsed.set_query(None);
    if !kept.is_empty() {
        parsed.query_pairs_mut().extend_pairs(kept);
    }
    parsed.to_string()
}

/// `url` with `query` appended to its query.
fn with_query(url: &str, query: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}")
}

/// `config` on another URL.
fn on_url(mut config: BindConfig, url: &str) -> BindConfig {
    config.url = Some(DatabaseUrl::new(url));
    config
}

fn build(config: BindConfig) -> Result<BindManager, Error> {
    BindManager::builder().bind("main", config).build()
}

/// Whether the server sees the connection of a session on bind `main` as encrypted.
async fn encrypted(manager: &BindManager, server: Server) -> Result<bool, Error> {
    match server {
        Server::Postgres => {
            let mut session = manager.bind::<Postgres>("main")?.session();
            let ssl: bool =
                sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                    .fetch_one(&mut session)
                    .await?;
            Ok(ssl)
        }
        Server::MySql => {
            let mut session = manager.bind::<MySql>("main")?.session();
            let (_, cipher): (String, String) =
                sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                    .fetch_one(&mut session)
                    .await?;
            Ok(!cipher.is_empty())
        }
    }
}

async fn assert_encrypted(manager: &BindManager, server: Server, what: &str) {
    let on = encrypted(manager, server)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    assert!(on, "{what}: the server sees a plain connection");
}

async fn assert_plain(manager: &BindManager, server: Server, what: &str) {
    let on = encrypted(manager, server)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    assert!(!on, "{what}: the server sees an encrypted connection");
}

/// The error of connecting bind `main` of a manager built from `config`.
async fn connect_err(config: BindConfig) -> Error {
    let manager = build(config).expect("the config builds");
    manager
        .connect()
        .await
        .expect_err("the connection is refused")
}

/// Every message in the error's source chain, joined.
fn chain(err: &Error) -> String {
    let mut out = Vec::new();
    let mut next = std::error::Error::source(err);
    while let Some(source) = next {
        out.push(source.to_string());
        next = source.source();
    }
    out.join(" <- ")
}

/// The error is a TLS failure of bind `main`, naming `check` in its kind, its detail and its
/// message, with the handshake's own error in its source chain.
fn assert_tls_failure(err: &Error, check: TlsCheck, words: &str) {
    assert_eq!(err.kind(), ErrorKind::Tls, "{err:?}");
    assert_eq!(err.tls_check(), Some(check), "{err:?}");
    assert_eq!(err.bind(), Some("main"));
    let message = err.to_string();
    assert!(message.starts_with("bind `main`: TLS with `"), "{message}");
    assert!(message.contains(words), "{message}");
    assert!(err.is_tls() && err.is_connect(), "{err:?}");
    assert!(
        !err.is_retryable(),
        "the same certificates fail the same way: {err:?}"
    );
    assert!(!err.is_config(), "raised at connect time, not build time");
    assert!(!chain(err).is_empty(), "the driver's error is the source");
}

// ----- the modes -----

async fn verify_full_with_the_ci_ca_is_encrypted(server: Server) {
    let db = server.db().await;
    let manager = db.manager(|c| c.tls_mode(TlsMode::VerifyFull).tls_root_cert(ca()));
    assert_encrypted(&manager, server, "verify-full with the CI's CA").await;
    drop(manager);
    db.finish().await;
}

async fn a_url_without_tls_settings_prefers_tls(server: Server) {
    let db = server.db().await;
    let manager = build(on_url(db.config(), &base_url(&db.url))).unwrap();
    assert_encrypted(&manager, server, "the driver's default, prefer").await;
    drop(manager);
    db.finish().await;
}

async fn require_from_the_url_is_encrypted(server: Server) {
    let db = server.db().await;
    let url = with_query(&base_url(&db.url), &server.url_mode(TlsMode::Require));
    let manager = build(on_url(db.config(), &url)).unwrap();
    assert_encrypted(&manager, server, "the URL's require").await;
    drop(manager);
    db.finish().await;
}

async fn disable_is_plain(server: Server) {
    let db = server.db().await;
    let manager = db.manager(|c| c.tls_mode(TlsMode::Disable));
    assert_plain(&manager, server, "disable").await;
    drop(manager);
    db.finish().await;
}

async fn the_config_wins_over_the_url(server: Server) {
    let db = server.db().await;
    let base = base_url(&db.url);
    let plain_url = with_query(&base, &server.url_mode(TlsMode::Disable));
    let config = on_url(db.config(), &plain_url)
        .tls_mode(TlsMode::VerifyFull)
        .tls_root_cert(ca());
    let manager = build(config).unwrap();
    assert_encrypted(
        &manager,
        server,
        "the URL's disable under the config's verify-full",
    )
    .await;
    drop(manager);

    let wrong_ca_url = with_query(
        &with_query(&base, &server.url_mode(TlsMode::VerifyFull)),
        &server.url_root_cert(&other_ca()),
    );
    let manager = build(on_url(db.config(), &wrong_ca_url).tls_root_cert(ca())).unwrap();
    assert_encrypted(&manager, server, "the URL's CA under the config's").await;
    drop(manager);

    let required_url = with_query(&base, &server.url_mode(TlsMode::Require));
    let manager = build(on_url(db.config(), &required_url).tls_mode(TlsMode::Disable)).unwrap();
    assert_plain(
        &manager,
        server,
        "the URL's require under the config's disable",
    )
    .await;
    drop(manager);
    db.finish().await;
}

// ----- the checks that fail -----

async fn a_ca_that_did_not_sign_the_server_is_not_trusted(server: Server) {
    let db = server.db().await;
    for mode in [TlsMode::VerifyFull, TlsMode::VerifyCa] {
        let err = connect_err(db.config().tls_mode(mode).tls_root_cert(other_ca())).await;
        assert_tls_failure(
            &err,
            TlsCheck::UntrustedCertificate,
            "certificate not trusted",
        );
        assert!(chain(&err).contains("UnknownIssuer"), "{}", chain(&err));
    }
    db.finish().await;
}

/// A TCP relay on 127.0.0.2 to a server: the same server, under an address its certificate does
/// not name.
struct Relay {
    port: u16,
    accepting: tokio::task::JoinHandle<()>,
}

const RELAY_HOST: &str = "127.0.0.2";

impl Relay {
    async fn to(url: &str) -> Self {
        let parsed = url::Url::parse(url).expect("server url");
        let default_port = if url.starts_with("mysql") { 3306 } else { 5432 };
        let target = format!(
            "{}:{}",
            parsed.host_str().expect("a host"),
            parsed.port().unwrap_or(default_port)
        );
        let listener = tokio::net::TcpListener::bind((RELAY_HOST, 0))
            .await
            .expect("listen on 127.0.0.2 (the loopback network)");
        let port = listener.local_addr().unwrap().port();
        let accepting = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, accepting }
    }

    /// `url` through the relay.
    fn url(&self, url: &str) -> String {
        let mut parsed = url::Url::parse(url).expect("server url");
        parsed.set_host(Some(RELAY_HOST)).unwrap();
        parsed.set_port(Some(self.port)).unwrap();
        parsed.to_string()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn verify_full_refuses_a_host_the_certificate_does_not_name(server: Server) {
    let db = server.db().await;
    let relay = Relay::to(&db.url).await;
    let config = on_url(db.config(), &relay.url(&db.url))
        .tls_mode(TlsMode::VerifyFull)
        .tls_root_cert(ca());
    let err = connect_err(config).await;
    assert_tls_failure(&err, TlsCheck::HostnameMismatch, "host name mismatch");
    assert!(
        chain(&err).contains("not valid for name"),
        "{}",
        chain(&err)
    );
    db.finish().await;
}

async fn verify_ca_accepts_the_right_ca_under_another_host_name(server: Server) {
    let db = server.db().await;
    let relay = Relay::to(&db.url).await;
    let config = on_url(db.config(), &relay.url(&db.url))
        .tls_mode(TlsMode::VerifyCa)
        .tls_root_cert(ca());
    let manager = build(config).unwrap();
    assert_encrypted(&manager, server, "verify-ca through the relay").await;
    drop(manager);
    db.finish().await;
}

async fn tls_errors_never_show_the_password(server: Server) {
    let db = server.db().await;
    // Both servers let the test's users in without a password; the handshake fails first.
    let secret = "s3cret-tls-pa55";
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_password(Some(secret)).unwrap();
    let config = on_url(db.config(), url.as_str())
        .tls_mode(TlsMode::VerifyFull)
        .tls_root_cert(other_ca());
    let err = connect_err(config).await;
    assert_eq!(err.kind(), ErrorKind::Tls, "{err:?}");
    for printed in [err.to_string(), format!("{err:?}"), chain(&err)] {
        assert!(!printed.contains(secret), "{printed}");
    }
    assert!(err.to_string().contains(":***@"), "{err}");
    db.finish().await;
}

// ----- client certificates -----

async fn a_client_certificate_is_presented(server: Server) {
    let (cert, key) = (tls_file("client.crt"), tls_file("client.key"));
    match server {
        Server::Postgres => postgres_client_certificate(&cert, &key).await,
        Server::MySql => mysql_client_certificate(&cert, &key).await,
    }
}

/// `.ci/run` has PostgreSQL admit [`CLIENT_USER`] over TLS with its certificate only
/// (`clientcert=verify-full`), and never over a plain connection.
async fn postgres_client_certificate(cert: &Path, key: &Path) {
    let mut url = url::Url::parse(&server_url(PG_ENV, PG_DEFAULT)).unwrap();
    url.set_username(CLIENT_USER).unwrap();
    let url = url.to_string();
    let verified = BindConfig::new(url.as_str())
        .tls_mode(TlsMode::VerifyFull)
        .tls_root_cert(ca());

    let manager = build(verified.clone().tls_client_cert(cert, key)).unwrap();
    let mut session = manager.bind::<Postgres>("main").unwrap().session();
    let dn: Option<String> =
        sqlx::query_scalar("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut session)
            .await
            .expect("the certificate's user logs in");
    assert_eq!(dn.as_deref(), Some(&*format!("/CN={CLIENT_USER}")));
    drop(session);
    drop(manager);

    let in_url = with_query(
        &base_url(&url),
        &format!("sslcert={}&sslkey={}", cert.display(), key.display()),
    );
    let manager = build(on_url(verified.clone(), &in_url)).unwrap();
    assert_encrypted(
        &manager,
        Server::Postgres,
        "a client certificate from the URL",
    )
    .await;
    drop(manager);

    let err = connect_err(verified).await;
    assert_eq!(
        err.kind(),
        ErrorKind::Connect,
        "the server refuses: {err:?}"
    );
    let refusal = err.as_database_error().expect("the server's answer");
    assert_eq!(refusal.code().as_deref(), Some("28000"), "{refusal}");
}

/// A MariaDB user of this test's own that must present a certificate the server's CA signed.
async fn mysql_client_certificate(cert: &Path, key: &Path) {
    let db = Server::MySql.db().await;
    let mut admin =
        sqlx::MySqlConnection::connect(&server_url(common::MYSQL_ENV, common::MYSQL_DEFAULT))
            .await
            .expect("admin connection");
    sqlx::raw_sql(sql(format!("ALTER USER '{}'@'%' REQUIRE X509", db.tag)))
        .execute(&mut admin)
        .await
        .expect("require a certificate");
    admin.close().await.ok();
    let verified = db
        .config()
        .tls_mode(TlsMode::VerifyFull)
        .tls_root_cert(ca());

    let manager = build(verified.clone().tls_client_cert(cert, key)).unwrap();
    assert_encrypted(&manager, Server::MySql, "with the client certificate").await;
    drop(manager);

    let err = connect_err(verified).await;
    assert_eq!(
        err.kind(),
        ErrorKind::Connect,
        "the server refuses: {err:?}"
    );
    let refusal = err.as_database_error().expect("the server's answer");
    assert!(refusal.message().contains("Access denied"), "{refusal}");
    db.finish().await;
}

// ----- a server without TLS -----

/// A throwaway PostgreSQL cluster (`initdb`'s defaults: `ssl = off`), never the shared server.
async fn require_refuses_a_server_without_tls(server: Server) {
    assert_eq!(
        server,
        Server::Postgres,
        "the throwaway cluster is PostgreSQL"
    );
    let cluster = cluster::Cluster::start().await;
    let url = |query: &str| format!("{}?{query}", cluster.url());
    let mut conn = sqlx::PgConnection::connect(&url("sslmode=disable"))
        .await
        .expect("the throwaway cluster answers");
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(ssl, "off", "the cluster offers no TLS");
    conn.close().await.ok();

    let err = connect_err(BindConfig::new(url("sslmode=require"))).await;
    assert_tls_failure(&err, TlsCheck::NotSupportedByServer, "does not support TLS");
    let verify = BindConfig::new(cluster.url())
        .tls_mode(TlsMode::VerifyFull)
        .tls_root_cert(ca());
    let err = connect_err(verify).await;
    assert_eq!(
        err.tls_check(),
        Some(TlsCheck::NotSupportedByServer),
        "{err:?}"
    );

    let manager = build(BindConfig::new(url("sslmode=prefer"))).unwrap();
    assert_plain(&manager, Server::Postgres, "prefer on a server without TLS").await;
    drop(manager);
}

// ----- the config's front doors -----

/// Runs `load` in a figment jail (a working directory and environment variables of its own,
/// restored after) and returns what it returns.
#[allow(
    clippy::result_large_err,
    reason = "figment's Jail dictates the closure's error type"
)]
fn jailed<T>(load: impl FnOnce(&mut figment::Jail) -> Result<T, String>) -> T {
    let mut out = None;
    figment::Jail::expect_with(|jail| {
        out = Some(load(jail)?);
        Ok(())
    });
    out.expect("loaded")
}

#[test]
fn toml_and_the_environment_set_connect_tls() {
    let config = jailed(|jail| {
        jail.create_file(
            "dbscope.toml",
            r#"
            [binds.main]
            url = "postgres://app@db.example.com/main"
            connect.tls = { mode = "verify-full", root_cert = "/etc/ssl/db-ca.pem" }

            [binds.reports]
            url = "mysql://app@db.example.com/reports"
            connect.tls.mode = "require"
            "#,
        )
        .map_err(|e| e.to_string())?;
        jail.set_env(
            "DBSCOPE_BINDS__REPORTS__CONNECT__TLS__MODE",
            "VERIFY_IDENTITY",
        );
        jail.set_env(
            "DBSCOPE_BINDS__REPORTS__CONNECT__TLS__CLIENT_CERT",
            "/c.pem",
        );
        jail.set_env("DBSCOPE_BINDS__REPORTS__CONNECT__TLS__CLIENT_KEY", "/k.pem");
        Config::from_file_and_env("dbscope.toml").map_err(|e| e.to_string())
    });
    let main = &config.binds["main"].connect.tls;
    assert_eq!(main.mode, Some(TlsMode::VerifyFull));
    assert_eq!(
        main.root_cert.as_deref(),
        Some(Path::new("/etc/ssl/db-ca.pem"))
    );
    assert_eq!(main.client_cert, None);
    let reports = &config.binds["reports"].connect.tls;
    assert_eq!(
        reports.mode,
        Some(TlsMode::VerifyFull),
        "MySQL's name, from the environment"
    );
    assert_eq!(reports.client_cert.as_deref(), Some(Path::new("/c.pem")));
    assert_eq!(reports.client_key.as_deref(), Some(Path::new("/k.pem")));
}

#[test]
fn an_unknown_mode_names_its_key_and_the_modes() {
    let loaded = jailed(|jail| {
        jail.set_env("DBSCOPE_BINDS__MAIN__URL", "postgres://app@db/main");
        jail.set_env("DBSCOPE_BINDS__MAIN__CONNECT__TLS__MODE", "verify");
        Ok(Config::from_env())
    });
    let err = loaded.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.is_config());
    let message = err.to_string();
    assert!(message.contains("binds.main.connect.tls.mode"), "{message}");
    assert!(
        chain(&err).contains("use disable, prefer, require, verify-ca or verify-full"),
        "{}",
        chain(&err)
    );
}

async fn settings_from_the_environment_reach_the_server(server: Server) {
    let db = server.db().await;
    let load = |root: PathBuf| {
        let url = db.url.clone();
        jailed(move |jail| {
            jail.set_env("DBSCOPE_BINDS__MAIN__URL", &url);
            jail.set_env("DBSCOPE_BINDS__MAIN__CONNECT__TLS__MODE", "verify-full");
            jail.set_env(
                "DBSCOPE_BINDS__MAIN__CONNECT__TLS__ROOT_CERT",
                root.display().to_string(),
            );
            Config::from_env().map_err(|e| e.to_string())
        })
        .binds["main"]
            .clone()
    };
    let err = connect_err(load(other_ca())).await;
    assert_tls_failure(
        &err,
        TlsCheck::UntrustedCertificate,
        "certificate not trusted",
    );
    let manager = build(load(ca())).unwrap();
    assert_encrypted(&manager, server, "verify-full from the environment").await;
    drop(manager);
    db.finish().await;
}

// ----- refused at build time -----

#[test]
fn a_missing_certificate_file_fails_the_build_naming_the_bind_and_the_path() {
    let missing = Path::new("/nonexistent/dbscope/ca.pem");
    let err = build(
        BindConfig::new(PG_DEFAULT)
            .tls_mode(TlsMode::VerifyFull)
            .tls_root_cert(missing),
    )
    .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert!(err.is_config());
    assert_eq!(err.bind(), Some("main"));
    assert_eq!(
        err.to_string(),
        "bind `main`: the CA certificate file `/nonexistent/dbscope/ca.pem` \
         (`connect.tls.root_cert`) does not exist; check the path, or remove the setting"
    );

    let url = format!(
        "{PG_DEFAULT}?sslmode=verify-full&sslcert=/nonexistent/c.pem&sslkey=/nonexistent/k.pem"
    );
    let err = build(BindConfig::new(url)).expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert!(
        err.to_string()
            .contains("client certificate file `/nonexistent/c.pem` (`sslcert` in the URL)"),
        "{err}"
    );
}

#[test]
fn tls_on_a_sqlite_bind_is_refused_naming_the_bind() {
    let err =
        build(BindConfig::new("sqlite::memory:").tls_mode(TlsMode::Require)).expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err:?}");
    assert!(err.is_config());
    assert_eq!(err.bind(), Some("main"));
    assert!(err.to_string().contains("do not apply to SQLite"), "{err}");
}

// ----- one test per body and server -----

/// Awaits a test body, failing the test if it takes longer than [`LIMIT`].
async fn limit(test: &str, body: impl Future<Output = ()>) {
    if tokio::time::timeout(LIMIT, body).await.is_err() {
        panic!("{test} did not finish within {LIMIT:?}: hung?");
    }
}

/// A module of tests for `$server`: test `name` awaits `name($server)`, within [`LIMIT`].
macro_rules! tests_on {
    ($module:ident, $server:path: $($name:ident),+ $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::limit(
                        concat!(module_path!(), "::", stringify!($name)),
                        super::$name($server),
                    )
                    .await;
                }
            )+
        }
    };
}

tests_on!(
    postgres, crate::Server::Postgres:
    verify_full_with_the_ci_ca_is_encrypted,
    a_url_without_tls_settings_prefers_tls,
    require_from_the_url_is_encrypted,
    disable_is_plain,
    the_config_wins_over_the_url,
    a_ca_that_did_not_sign_the_server_is_not_trusted,
    verify_full_refuses_a_host_the_certificate_does_not_name,
    verify_ca_accepts_the_right_ca_under_another_host_name,
    tls_errors_never_show_the_password,
    a_client_certificate_is_presented,
    require_refuses_a_server_without_tls,
    settings_from_the_environment_reach_the_server,
);

tests_on!(
    mysql, crate::Server::MySql:
    verify_full_with_the_ci_ca_is_encrypted,
    a_url_without_tls_settings_prefers_tls,
    require_from_the_url_is_encrypted,
    disable_is_plain,
    the_config_wins_over_the_url,
    a_ca_that_did_not_sign_the_server_is_not_trusted,
    verify_full_refuses_a_host_the_certificate_does_not_name,
    verify_ca_accepts_the_right_ca_under_another_host_name,
    tls_errors_never_show_the_password,
    a_client_certificate_is_presented,
    settings_from_the_environment_reach_the_server,
);
