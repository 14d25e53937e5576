//! Compile-time checks: handles cross tasks and threads, and session futures can be spawned
//! (tokio, axum and tower need `Send` futures).

use dbscope::{Bind, BindManager, Error, Session};
use sqlx::Sqlite;

fn assert_send_sync<T: Send + Sync>(_: &T) {}
fn assert_send<T: Send>(_: &T) {}

#[test]
fn handles_are_send_and_sync() {
    let manager = BindManager::new(dbscope::BindConfig::new("sqlite::memory:")).unwrap();
    assert_send_sync(&manager);
    let bind: Bind<Sqlite> = manager.bind("default").unwrap();
    assert_send_sync(&bind);
    let session: Session<Sqlite> = bind.session();
    assert_send(&session);
    assert_send_sync(&BindManager::builder().build().unwrap_err());
}

#[test]
fn session_futures_are_send() {
    let manager = BindManager::new(dbscope::BindConfig::new("sqlite::memory:")).unwrap();
    let mut session = manager.session::<Sqlite>("default").unwrap();
    assert_send(&session.begin());
    assert_send(&session.commit());
    assert_send(&session.rollback());
    assert_send(&session.savepoint());
    assert_send(&session.connection());
    assert_send(&sqlx::query("SELECT 1").execute(&mut session));
    assert_send(&session.close());
    assert_send(&manager.connect());
    assert_send(&manager.close(std::time::Duration::ZERO));
}

#[test]
fn scope_handles_and_futures_are_send() {
    let manager = BindManager::new(dbscope::BindConfig::new("sqlite::memory:")).unwrap();
    let work = async { Ok::<_, Error>(()) };
    assert_send(&dbscope::scope(&manager, work));
    assert_send(&manager.scope().run(async { Ok::<_, Error>(()) }));
    assert_send(&dbscope::current_session::<Sqlite>("default"));
    assert_send(&dbscope::atomic::<Sqlite>("default").run(async { Ok::<_, Error>(()) }));
    let builder = manager.scope();
    assert_send_sync(&builder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime
        .block_on(dbscope::scope(&manager, async {
            let scope = dbscope::Scope::current()?;
            assert_send_sync(&scope);
            let session = dbscope::current_session::<Sqlite>("default").await?;
            assert_send_sync(&session);
            Ok::<_, Error>(())
        }))
        .unwrap();
}
