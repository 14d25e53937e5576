//! Configuration: the three front doors, how they layer, and every bad input's own error.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbscope::{
    BindConfig, BindManager, Config, Error, ErrorKind, HealthCheck, IsolationLevel, JournalMode,
};
use figment::Jail;

const SECRET: &str = "s3cret-pa55";

/// Runs `test` in a jail: a temporary working directory and an environment of its own, emptied.
#[allow(
    clippy::result_large_err,
    reason = "figment's Jail dictates the closure's error type"
)]
fn jailed(test: impl FnOnce(&mut Jail) -> Result<(), String>) {
    Jail::expect_with(|jail| {
        jail.clear_env();
        test(jail).map_err(figment::Error::from)
    });
}

fn build_err(config: BindConfig) -> Error {
    BindManager::new(config).expect_err("the config is refused")
}

fn assert_names_bind(err: &Error, bind: &str) {
    assert_eq!(err.bind(), Some(bind), "{err:?}");
    assert!(err.to_string().contains(&format!("`{bind}`")), "{err}");
}

#[test]
fn a_single_bind_is_named_default() {
    let manager = BindManager::new(BindConfig::new("sqlite::memory:")).unwrap();
    assert_eq!(manager.names().collect::<Vec<_>>(), ["default"]);
    manager.bind::<sqlx::Sqlite>("default").unwrap();
}

#[test]
fn a_map_makes_one_bind_per_name() {
    let config = Config::default()
        .bind("main", BindConfig::new("sqlite::memory:"))
        .bind("cache", BindConfig::new("sqlite::memory:"));
    let manager = BindManager::new(config).unwrap();
    assert_eq!(manager.names().collect::<Vec<_>>(), ["cache", "main"]);
}

#[test]
fn file_then_environment_layer_field_by_field() {
    jailed(|jail| {
        jail.create_file(
            "dbscope.toml",
            r#"
            [binds.default]
            url = "sqlite://from-file.db"
            echo = true
            pool = { max_connections = 5, acquire_timeout = "2s", health_check = "always" }
            session = { isolation = "serializable" }

            [binds.reports]
            url = "sqlite::memory:"
            connect.sqlite = { journal_mode = "wal", busy_timeout = "250ms" }
            pool.health_check = { if_idle_for = "5s" }
            "#,
        )
        .map_err(|e| e.to_string())?;
        jail.set_env("DATABASE_URL", "sqlite://from-env.db");
        jail.set_env("DBSCOPE_BINDS__DEFAULT__POOL__MAX_CONNECTIONS", "7");
        jail.set_env("DBSCOPE_BINDS__ANALYTICS__URL", "sqlite::memory:");
        jail.set_env("DBSCOPE_BINDS__ANALYTICS__SESSION__READ_ONLY", "true");

        let config = Config::from_file_and_env("dbscope.toml").map_err(|e| e.to_string())?;
        let default = &config.binds["default"];
        assert_eq!(
            default.url.as_ref().unwrap().expose(),
            "sqlite://from-env.db",
            "DATABASE_URL wins"
        );
        assert_eq!(
            default.pool.max_connections, 7,
            "a DBSCOPE_BINDS__ variable wins"
        );
        assert_eq!(
            default.pool.acquire_timeout,
            Duration::from_secs(2),
            "the file's value stays"
        );
        assert_eq!(default.pool.health_check, HealthCheck::Always);
        assert_eq!(
            default.session.isolation,
            Some(IsolationLevel::Serializable)
        );
        assert!(default.echo);
        let reports = &config.binds["reports"];
        assert_eq!(reports.connect.sqlite.journal_mode, Some(JournalMode::Wal));
        assert_eq!(
            reports.connect.sqlite.busy_timeout,
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            reports.pool.health_check,
            HealthCheck::IfIdleFor(Duration::from_secs(5))
        );
        assert!(
            config.binds["analytics"].session.read_only,
            "a bind from the environment alone"
        );
        BindManager::new(config).map_err(|e| e.to_string())?;
        Ok(())
    });
}

#[test]
fn a_file_with_one_bind_at_the_top_level_configures_default() {
    jailed(|jail| {
        jail.create_file(
            "one.toml",
            "url = \"sqlite::memory:\"\npool = { max_connections = 3 }",
        )
        .map_err(|e| e.to_string())?;
        let config = Config::from_file("one.toml").map_err(|e| e.to_string())?;
        assert_eq!(config.binds.len(), 1);
        assert_eq!(config.binds["default"].pool.max_connections, 3);
        Ok(())
    });
}

#[test]
fn database_url_alone_configures_default_from_the_environment() {
    jailed(|jail| {
        jail.set_env("DATABASE_URL", "sqlite::memory:");
        let manager = BindManager::from_env().map_err(|e| e.to_string())?;
        assert_eq!(manager.names().collect::<Vec<_>>(), ["default"]);
        Ok(())
    });
}

#[test]
fn no_environment_is_no_binds() {
    jailed(|_| {
        let err = Config::from_env().unwrap_err();
        assert!(err.kind() == ErrorKind::NoBinds, "{err:?}");
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
        Ok(())
    });
}

#[test]
fn a_bind_with_options_but_no_url_names_the_variable_to_set() {
    jailed(|jail| {
        jail.set_env("DBSCOPE_BINDS__ANALYTICS__POOL__MAX_CONNECTIONS", "3");
        let err = Config::from_env().unwrap_err();
        assert!(err.kind() == ErrorKind::MissingUrl, "{err:?}");
        assert_names_bind(&err, "analytics");
        assert!(
            err.to_string().contains("DBSCOPE_BINDS__ANALYTICS__URL"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn a_malformed_environment_value_names_its_key() {
    jailed(|jail| {
        jail.set_env("DATABASE_URL", "sqlite::memory:");
        jail.set_env("DBSCOPE_BINDS__DEFAULT__POOL__MAX_CONNECTIONS", "ten");
        let err = Config::from_env().unwrap_err();
        assert!(
            err.kind() == ErrorKind::Config && err.is_config(),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("binds.default.pool.max_connections"),
            "{err}"
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the figment error is kept as the source"
        );
        Ok(())
    });
}

#[test]
fn a_missing_file_is_its_own_error() {
    jailed(|_| {
        let err = Config::from_file("nowhere.toml").unwrap_err();
        assert!(err.kind() == ErrorKind::ConfigFile, "{err:?}");
        assert!(err.to_string().contains("nowhere.toml"), "{err}");
        Ok(())
    });
}

#[test]
fn a_malformed_file_is_refused() {
    jailed(|jail| {
        jail.create_file("broken.toml", "[binds.default\nurl = ")
            .map_err(|e| e.to_string())?;
        let err = Config::from_file("broken.toml").unwrap_err();
        assert!(err.kind() == ErrorKind::Config, "{err:?}");
        assert!(err.to_string().contains("broken.toml"), "{err}");

        jail.create_file(
            "typo.toml",
            "[binds.default]\nurl = \"sqlite::memory:\"\nmax_conections = 3",
        )
        .map_err(|e| e.to_string())?;
        let err = Config::from_file("typo.toml").unwrap_err();
        let shown = format!("{err} / {}", std::error::Error::source(&err).unwrap());
        assert!(
            shown.contains("max_conections"),
            "an unknown key is refused, not ignored: {shown}"
        );

        jail.create_file(
            "type.toml",
            "[binds.default]\nurl = \"sqlite::memory:\"\npool.acquire_timeout = \"soon\"",
        )
        .map_err(|e| e.to_string())?;
        let err = Config::from_file("type.toml").unwrap_err();
        assert!(
            err.to_string()
                .contains("binds.default.pool.acquire_timeout"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn a_malformed_url_is_refused_with_the_password_masked() {
    let err = build_err(BindConfig::new(format!(
        "sqlite://app.db?mode=bogus&password={SECRET}"
    )));
    assert!(err.kind() == ErrorKind::InvalidUrl, "{err:?}");
    assert_names_bind(&err, "default");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(SECRET), "{shown}");
    }
    let err = build_err(BindConfig::new("localhost/app"));
    assert!(err.kind() == ErrorKind::InvalidUrl, "{err:?}");
}

#[test]
fn an_unknown_scheme_lists_the_known_ones() {
    let err = build_err(BindConfig::new(format!("oracle://scott:{SECRET}@db/orcl")));
    assert!(err.kind() == ErrorKind::UnknownScheme, "{err:?}");
    assert!(
        err.to_string().contains("oracle") && err.to_string().contains("postgres://"),
        "{err}"
    );
    assert!(!format!("{err:?}").contains(SECRET));
}

#[test]
fn bad_bind_names_are_refused() {
    for name in ["", "has space", "dotted.name", "double__underscore"] {
        let err = BindManager::builder()
            .bind(name, BindConfig::new("sqlite::memory:"))
            .build()
            .unwrap_err();
        assert!(
            err.kind() == ErrorKind::InvalidBindName,
            "{name:?}: {err:?}"
        );
    }
}

#[test]
fn a_bind_configured_twice_is_refused() {
    let err = BindManager::builder()
        .bind("main", BindConfig::new("sqlite::memory:"))
        .bind("main", BindConfig::new("sqlite::memory:"))
        .build()
        .unwrap_err();
    assert!(err.kind() == ErrorKind::DuplicateBind, "{err:?}");
    assert_names_bind(&err, "main");
}

#[test]
fn pool_sizes_are_checked() {
    let err = build_err(BindConfig::new("sqlite::memory:").max_connections(0));
    assert!(err.kind() == ErrorKind::ZeroMaxConnections, "{err:?}");
    let err = build_err(
        BindConfig::new("sqlite::memory:")
            .min_connections(5)
            .max_connections(2),
    );
    assert!(
        err.kind() == ErrorKind::MinExceedsMax
            && err
                .to_string()
                .contains("min_connections (5) exceeds max_connections (2)"),
        "{err:?}"
    );
    assert!(err.to_string().contains("min_connections (5)"), "{err}");
}

/// Waits that must be above zero are refused at zero, each naming its key, from code and from
/// a file alike.
#[test]
fn zero_waits_are_refused_at_build() {
    let err = build_err(BindConfig::new("sqlite::memory:").acquire_timeout(Duration::ZERO));
    assert!(err.kind() == ErrorKind::ZeroDuration, "{err:?}");
    assert_names_bind(&err, "default");
    assert!(err.to_string().contains("acquire_timeout is 0"), "{err}");
    for (key, text) in [
        ("probe_timeout", "routing.probe_timeout is 0"),
        ("probe_interval", "routing.probe_interval is 0"),
    ] {
        jailed(|jail| {
            jail.create_file(
                "dbscope.toml",
                &format!(
                    "[binds.main]\nurl = \"sqlite::memory:\"\nrouting = {{ {key} = \"0s\" }}\n"
                ),
            )
            .map_err(|e| e.to_string())?;
            let config = dbscope::Config::from_file("dbscope.toml").expect("it parses");
            let err = BindManager::new(config).expect_err("refused at build");
            assert!(err.kind() == ErrorKind::ZeroDuration, "{err:?}");
            assert_names_bind(&err, "main");
            assert!(err.to_string().contains(text), "{err}");
            Ok(())
        });
    }
}

#[test]
fn an_isolation_sqlite_cannot_honour_is_refused_at_build() {
    let err =
        build_err(BindConfig::new("sqlite::memory:").isolation(IsolationLevel::ReadCommitted));
    assert!(err.kind() == ErrorKind::Unsupported, "{err:?}");
    assert!(err.to_string().contains("SERIALIZABLE"), "{err}");
}

#[test]
fn building_opens_no_connection() {
    // A file in a directory that does not exist: opening it would fail, building does not try.
    let manager = BindManager::new(BindConfig::new("sqlite:///no/such/dir/app.db")).unwrap();
    assert_eq!(manager.status()[0].connections, 0);
    assert_eq!(manager.status()[0].opened, 0);
}

#[tokio::test]
async fn connect_fails_fast_naming_the_bind() {
    let manager = BindManager::builder()
        .bind("good", BindConfig::new("sqlite::memory:"))
        .bind("nowhere", BindConfig::new("sqlite:///no/such/dir/app.db"))
        .build()
        .unwrap();
    let err = manager.connect().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_names_bind(&err, "nowhere");
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test]
async fn passwords_never_show_in_debug_display_errors_or_logs() {
    let logs = capture_logs();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    // Nothing listens on port 1: the connection fails, and says so.
    let url = format!("mysql://app:{SECRET}@127.0.0.1:1/db?password={SECRET}");
    let config = BindConfig::new(url.as_str());
    let mut printed = vec![
        format!("{config:?}"),
        format!("{:?}", Config::from(config.clone())),
    ];
    match BindManager::new(config) {
        Ok(manager) => {
            printed.push(format!("{manager:?}"));
            let bind = manager.bind::<sqlx::MySql>("default").unwrap();
            printed.push(format!("{bind:?}"));
            let mut session = bind.session();
            let err = session.begin().await.unwrap_err();
            assert!(err.is_connect(), "{err:?}");
            printed.push(format!("{session:?}"));
            let mut source: Option<&dyn std::error::Error> = Some(&err);
            while let Some(e) = source {
                printed.push(format!("{e} / {e:?}"));
                source = e.source();
            }
        }
        // Built without the `mysql` feature: the refusal must not leak either.
        Err(err) => printed.push(format!("{err} / {err:?}")),
    }
    printed.push(logs.text());
    for shown in &printed {
        assert!(!shown.contains(SECRET), "a password leaked: {shown}");
    }
    assert!(
        printed.iter().any(|p| p.contains("app:***@")),
        "the URL is shown, masked: {printed:?}"
    );
}

#[tokio::test]
async fn echo_logs_every_statement_of_that_bind_only() {
    // SQLite statements run, and are logged, on sqlx's worker thread: capture process-wide.
    // (The only test of this binary that installs a global subscriber.)
    let logs = capture_logs();
    tracing::subscriber::set_global_default(logs.subscriber()).expect("first global subscriber");
    let manager = BindManager::builder()
        .bind("loud", BindConfig::new("sqlite::memory:").echo(true))
        .bind("quiet", BindConfig::new("sqlite::memory:"))
        .build()
        .unwrap();
    for (bind, marker) in [("loud", "echoed_marker"), ("quiet", "silent_marker")] {
        let mut session = manager.session::<sqlx::Sqlite>(bind).unwrap();
        let sql = format!("SELECT 42 AS {marker}");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut session)
            .await
            .unwrap();
        session.commit().await.unwrap();
    }
    let text = logs.text();
    assert!(
        text.contains("echoed_marker"),
        "echo logs the statement: {text}"
    );
    assert!(
        text.contains("BEGIN"),
        "and the transaction around it: {text}"
    );
    assert!(
        !text.contains("silent_marker"),
        "a bind without echo logs nothing: {text}"
    );
}

#[tokio::test]
async fn sqlite_pragmas_reach_every_connection() {
    let path = std::env::temp_dir().join(format!("dbscope-pragmas-{}.db", std::process::id()));
    let mut config = BindConfig::new(format!("sqlite://{}", path.display()));
    config.connect.sqlite.journal_mode = Some(JournalMode::Wal);
    config.connect.sqlite.foreign_keys = Some(false);
    config.connect.sqlite.busy_timeout = Some(Duration::from_millis(1234));
    let manager = BindManager::new(config).unwrap();
    let mut session = manager
        .session::<sqlx::Sqlite>("default")
        .unwrap()
        .autocommit(true);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut session)
        .await
        .unwrap();
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut session)
        .await
        .unwrap();
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!((mode.as_str(), foreign_keys, busy), ("wal", 0, 1234));
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// A `tracing` subscriber writing into a buffer the test can read.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

fn capture_logs() -> Logs {
    Logs::default()
}

impl Logs {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let logs = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A file's bind named with capitals, loaded with the environment: its variables name binds in
/// lowercase (`DBSCOPE_BINDS__MAIN__URL` is bind `main`), so they would make a second bind
/// beside it and leave it as the file says. Refused, naming the bind and the fix.
#[test]
fn a_file_bind_with_capitals_is_refused_where_the_environment_overrides() {
    jailed(|jail| {
        jail.create_file(
            "dbscope.toml",
            "[binds.Main]\nurl = \"postgres://app@staging/main\"\n",
        )
        .map_err(|e| e.to_string())?;
        jail.set_env("DBSCOPE_BINDS__MAIN__URL", "postgres://app@prod/main");
        let err = Config::from_file_and_env("dbscope.toml").expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert_names_bind(&err, "Main");
        assert!(err.to_string().contains("name it `main`"), "{err}");
        // From the file alone, nothing overrides it: the name is the file's to choose.
        let alone = Config::from_file("dbscope.toml").map_err(|e| e.to_string())?;
        assert!(alone.binds.contains_key("Main"));
        Ok(())
    });
}
