//! Errors name their bind even when they went through sqlx's API: a checkout timeout met inside
//! `sqlx::query(..).execute(&mut session)`, a connection the server killed under a statement, a
//! constraint violation. And the driver's error stays what sqlx-speaking code expects.
//!
//! On every backend for the timeout and the constraint; on PostgreSQL and MariaDB for the killed
//! connection (SQLite has no server to kill it).

mod common;

use std::time::Duration;

use common::{
    Kind, MYSQL_ENV, MySql, PG_ENV, Pg, SqliteFile, SqliteMemory, Suite, TestDb, eventually, sql,
};
use dbscope::{Backend, ErrorKind, Session};
use sqlx::Connection as _;

/// Application code as users write it: sqlx calls on a session, `?` into dbscope's error.
async fn select_one<DB: Backend>(session: &mut Session<DB>) -> dbscope::Result<()>
where
    for<'c> &'c mut Session<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    sqlx::query::<DB>("SELECT 1").execute(session).await?;
    Ok(())
}

async fn admin(kind: Kind) -> sqlx::AnyConnection {
    let url = match kind {
        Kind::Postgres => common::server_url(PG_ENV, common::PG_DEFAULT),
        _ => common::server_url(MYSQL_ENV, common::MYSQL_DEFAULT),
    };
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(&url)
        .await
        .expect("admin connection")
}

/// Whether the server still has connection `id`, read from the server.
async fn server_has_connection(kind: Kind, id: i64) -> bool {
    let query = match kind {
        Kind::Postgres => format!("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = {id}"),
        _ => format!("SELECT COUNT(*) FROM information_schema.processlist WHERE id = {id}"),
    };
    let mut conn = admin(kind).await;
    let n: i64 = sqlx::query_scalar(sql(query))
        .fetch_one(&mut conn)
        .await
        .expect("census");
    conn.close().await.ok();
    n > 0
}

/// The driver's own type for a server's error, which sqlx-speaking code downcasts to.
trait DriverError {
    type Error: sqlx::error::DatabaseError;
}

impl DriverError for sqlx::Postgres {
    type Error = sqlx::postgres::PgDatabaseError;
}

impl DriverError for sqlx::MySql {
    type Error = sqlx::mysql::MySqlDatabaseError;
}

impl DriverError for sqlx::Sqlite {
    type Error = sqlx::sqlite::SqliteError;
}

async fn a_checkout_timeout_inside_a_sqlx_call_names_its_bind<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let timeout = Duration::from_millis(200);
    let manager = db.manager(|c| c.max_connections(1).acquire_timeout(timeout));
    let mut holder = manager.session::<B::Db>("main").unwrap();
    select_one(&mut holder).await.unwrap();

    let mut waiter = manager.session::<B::Db>("main").unwrap();
    let err = select_one(&mut waiter).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(err.bind(), Some("main"));
    assert_eq!(err.waited(), Some(timeout));
    assert!(err.is_timeout() && err.is_retryable(), "{err}");
    assert!(
        err.to_string()
            .starts_with("bind `main`: no connection available"),
        "{err}"
    );
    drop((holder, waiter));
    db.finish().await;
}

async fn a_constraint_violation_names_its_bind_and_stays_a_database_error<B>()
where
    B: Suite,
    B::Db: DriverError,
{
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    let mut session = manager.session::<B::Db>("main").unwrap();
    let ddl = format!("CREATE TABLE {} (id BIGINT PRIMARY KEY)", db.table);
    sqlx::query(sql(ddl)).execute(&mut session).await.unwrap();
    let insert = format!("INSERT INTO {} (id) VALUES (1)", db.table);
    sqlx::query(sql(insert.clone()))
        .execute(&mut session)
        .await
        .unwrap();

    // sqlx-speaking code sees the driver's own error, unchanged.
    let raw = sqlx::query(sql(insert))
        .execute(&mut session)
        .await
        .unwrap_err();
    let sqlx::Error::Database(db_err) = &raw else {
        panic!("a database error: {raw:?}")
    };
    assert!(db_err.is_unique_violation(), "{db_err}");
    assert!(
        db_err
            .try_downcast_ref::<<B::Db as DriverError>::Error>()
            .is_some()
    );

    // `?` into dbscope's error names the bind and keeps the database error.
    let err = dbscope::Error::from(raw);
    assert_eq!(err.kind(), ErrorKind::Query);
    assert_eq!(err.bind(), Some("main"));
    assert_eq!(err.to_string(), "bind `main`: statement failed");
    assert!(
        err.as_database_error()
            .is_some_and(|e| e.is_unique_violation())
    );
    assert!(!err.is_retryable() && !err.is_connection_lost(), "{err}");
    drop(session);
    db.finish().await;
}

/// Kills the session's connection from the server side and waits until the server shows it
/// gone.
async fn kill<B: Suite>(db: &TestDb, session: &mut Session<B::Db>) {
    let id = common::fetch_i64(&mut *session, db.connection_id_query())
        .await
        .unwrap();
    db.kill_connection(id).await;
    eventually(
        "the killed connection is gone from the server",
        || async move { !server_has_connection(B::KIND, id).await },
    )
    .await;
}

async fn a_killed_connection_inside_a_sqlx_call_names_its_bind<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    let mut session = manager.session::<B::Db>("main").unwrap();
    kill::<B>(&db, &mut session).await;

    let err = select_one(&mut session).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Query, "{err:?}");
    assert_eq!(err.bind(), Some("main"), "{err:?}");
    assert_eq!(err.to_string(), "bind `main`: statement failed");
    assert!(err.is_connection_lost(), "{err:?}");
    // It died inside a transaction, which the server rolled back: safe to run again.
    assert!(err.is_retryable(), "{err:?}");
    drop(session);
    eventually("the dead connection is discarded", || {
        let status = manager.status();
        async move { status[0].discarded == 1 && status[0].in_use == 0 }
    })
    .await;
    db.finish().await;
}

async fn a_killed_autocommit_statement_is_not_retryable<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let manager = db.manager(|c| c);
    let mut session = manager.session::<B::Db>("main").unwrap().autocommit(true);
    kill::<B>(&db, &mut session).await;

    let err = select_one(&mut session).await.unwrap_err();
    assert_eq!(err.bind(), Some("main"), "{err:?}");
    assert!(err.is_connection_lost(), "{err:?}");
    // Outside a transaction the statement may have landed before the connection died.
    assert!(!err.is_retryable(), "{err:?}");
    drop(session);
    db.finish().await;
}

common::async_tests!(sqlite_file, SqliteFile:
    a_checkout_timeout_inside_a_sqlx_call_names_its_bind,
    a_constraint_violation_names_its_bind_and_stays_a_database_error,
);
common::async_tests!(sqlite_memory, SqliteMemory:
    a_checkout_timeout_inside_a_sqlx_call_names_its_bind,
    a_constraint_violation_names_its_bind_and_stays_a_database_error,
);
common::async_tests!(postgres, Pg:
    a_checkout_timeout_inside_a_sqlx_call_names_its_bind,
    a_constraint_violation_names_its_bind_and_stays_a_database_error,
    a_killed_connection_inside_a_sqlx_call_names_its_bind,
    a_killed_autocommit_statement_is_not_retryable,
);
common::async_tests!(mysql, MySql:
    a_checkout_timeout_inside_a_sqlx_call_names_its_bind,
    a_constraint_violation_names_its_bind_and_stays_a_database_error,
    a_killed_connection_inside_a_sqlx_call_names_its_bind,
    a_killed_autocommit_statement_is_not_retryable,
);
