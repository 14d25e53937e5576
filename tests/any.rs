//! Binds whose backend the URL chooses at run time: `engine = "any"`, used as `Bind<Any>`.

mod common;

use std::time::Duration;

use common::{Kind, TestDb, sql};
use dbscope::{BindManager, Engine};
use sqlx::Any;

async fn round_trip(db: &TestDb) {
    let manager = db.manager(|c| c.engine(Engine::Any));
    let bind = manager
        .bind::<Any>("main")
        .expect("an any bind is a Bind<Any>");
    let mut session = bind.session();
    let ddl = format!(
        "CREATE TABLE {} (id BIGINT PRIMARY KEY, v VARCHAR(50))",
        db.table
    );
    sqlx::query(sql(ddl)).execute(&mut session).await.unwrap();
    session.commit().await.unwrap();

    let insert = format!("INSERT INTO {} (id, v) VALUES (1, 'kept')", db.table);
    sqlx::query(sql(insert))
        .execute(&mut session)
        .await
        .unwrap();
    session.commit().await.unwrap();
    let insert = format!("INSERT INTO {} (id, v) VALUES (2, 'dropped')", db.table);
    sqlx::query(sql(insert))
        .execute(&mut session)
        .await
        .unwrap();
    session.rollback().await.unwrap();
    let mut savepoint = session.savepoint().await.unwrap();
    let insert = format!("INSERT INTO {} (id, v) VALUES (3, 'undone')", db.table);
    sqlx::query(sql(insert))
        .execute(&mut *savepoint)
        .await
        .unwrap();
    drop(savepoint);
    session.commit().await.unwrap();

    let count = format!("SELECT COUNT(*) FROM {}", db.table);
    let n: i64 = sqlx::query_scalar(sql(count))
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!(n, 1);
    drop(session);
    manager.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_engine_on_sqlite() {
    let db = TestDb::new(Kind::SqliteFile).await;
    round_trip(&db).await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_engine_on_postgres() {
    let db = TestDb::new(Kind::Postgres).await;
    round_trip(&db).await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_engine_on_mariadb() {
    let db = TestDb::new(Kind::MySql).await;
    round_trip(&db).await;
    db.finish().await;
}

#[test]
fn an_any_bind_is_not_a_native_bind_and_the_reverse() {
    let manager = BindManager::builder()
        .bind(
            "any",
            dbscope::BindConfig::new("sqlite::memory:").engine(Engine::Any),
        )
        .bind("native", dbscope::BindConfig::new("sqlite::memory:"))
        .build()
        .unwrap();
    let err = manager.bind::<sqlx::Sqlite>("any").unwrap_err();
    assert!(
        err.is_backend_mismatch() && err.to_string().contains("Any"),
        "{err}"
    );
    let err = manager.bind::<Any>("native").unwrap_err();
    assert!(
        err.is_backend_mismatch() && err.to_string().contains("engine = \"any\""),
        "{err}"
    );
}
