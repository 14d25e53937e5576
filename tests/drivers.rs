//! A URL whose driver is not compiled in gets an error naming the cargo feature to enable.
//!
//! Meaningful in a build that leaves drivers out, as CI's
//! `cargo test --no-default-features --features sqlite --test drivers` (and `--features postgres`,
//! which leaves out TLS); with every feature on, the same tests check that those binds build.

use dbscope::{BindConfig, BindManager, Engine, Error, ErrorKind};

fn build(config: BindConfig) -> Result<BindManager, Error> {
    BindManager::new(config)
}

fn assert_needs_feature(result: Result<BindManager, Error>, enabled: bool, feature: &str) {
    match result {
        Ok(_) => assert!(enabled, "built without the `{feature}` feature"),
        Err(err) => {
            assert!(!enabled, "refused although `{feature}` is enabled: {err}");
            assert!(err.kind() == ErrorKind::DriverNotEnabled, "{err:?}");
            assert!(err.is_config());
            assert!(
                err.to_string()
                    .contains(&format!("`{feature}` cargo feature")),
                "{err}"
            );
        }
    }
}

#[test]
fn postgres_urls_need_the_postgres_feature() {
    for url in [
        "postgres://app@localhost/db",
        "postgresql://app@localhost/db",
    ] {
        assert_needs_feature(
            build(BindConfig::new(url)),
            cfg!(feature = "postgres"),
            "postgres",
        );
    }
}

#[test]
fn mysql_and_mariadb_urls_need_the_mysql_feature() {
    for url in ["mysql://app@localhost/db", "mariadb://app@localhost/db"] {
        assert_needs_feature(
            build(BindConfig::new(url)),
            cfg!(feature = "mysql"),
            "mysql",
        );
    }
}

#[test]
fn sqlite_urls_need_the_sqlite_feature() {
    assert_needs_feature(
        build(BindConfig::new("sqlite::memory:")),
        cfg!(feature = "sqlite"),
        "sqlite",
    );
}

#[test]
fn an_any_engine_needs_the_any_feature() {
    if !cfg!(feature = "sqlite") {
        return; // the driver's own refusal comes first
    }
    let config = BindConfig::new("sqlite::memory:").engine(Engine::Any);
    assert_needs_feature(build(config), cfg!(feature = "any"), "any");
}

#[test]
fn tls_settings_need_the_tls_feature() {
    let url = "postgres://app@localhost/db?sslmode=verify-full";
    if !cfg!(feature = "postgres") {
        // The driver's own refusal comes first.
        return assert_needs_feature(build(BindConfig::new(url)), false, "postgres");
    }
    assert_needs_feature(build(BindConfig::new(url)), cfg!(feature = "tls"), "tls");
}
