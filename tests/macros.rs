//! sqlx's compile-time checked macros run on a session like any other query.

use dbscope::{BindConfig, BindManager};
use sqlx::Sqlite;

#[tokio::test]
async fn query_macros_run_on_a_session() {
    let manager = BindManager::new(BindConfig::new("sqlite::memory:")).unwrap();
    let mut session = manager.session::<Sqlite>("default").unwrap();

    let row = sqlx::query!(r#"SELECT 1 + 1 AS "sum!: i64", 'two' AS "word!: String""#)
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!((row.sum, row.word.as_str()), (2, "two"));

    let answer = sqlx::query_scalar!(r#"SELECT 40 + ? AS "n!: i64""#, 2_i64)
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!(answer, 42);
    assert!(
        session.in_transaction(),
        "the macros' statements run inside the session's transaction"
    );
    session.commit().await.unwrap();
}
