//! Tracing spans with the OpenTelemetry database attributes: one per session (`db.session`),
//! and one per statement inside it (`db.statement`), target `dbscope`, level INFO.
//!
//! A span nobody subscribes to is disabled: building it costs a check of its callsite's cached
//! interest, and nothing below records anything into it.

use sqlx::{Database, Execute, SqlStr};
use tracing::Span;
use tracing::field::Empty;

use super::Target;

pub(super) fn session(target: &Target) -> Span {
    tracing::info_span!(
        target: "dbscope",
        "db.session",
        db.system.name = target.system,
        db.namespace = target.namespace.as_deref(),
        server.address = target.address.as_deref(),
        server.port = target.port,
        db.client.connection.pool.name = &*target.bind,
    )
}

pub(super) fn statement(parent: &Span, target: &Target) -> Span {
    tracing::info_span!(
        target: "dbscope",
        parent: parent,
        "db.statement",
        db.system.name = target.system,
        db.namespace = target.namespace.as_deref(),
        server.address = target.address.as_deref(),
        server.port = target.port,
        db.client.connection.pool.name = &*target.bind,
        db.operation.name = Empty,
        db.query.text = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    )
}

/// A query that, when the driver takes its SQL, writes `db.operation.name` (and, opted in,
/// `db.query.text`) into its statement's span. The SQL is the driver's to take once, so this is
/// where it can be seen without a copy.
pub(crate) struct Traced<E> {
    inner: E,
    /// The statement's span and whether it records the text; `None` when the span is disabled.
    span: Option<(Span, bool)>,
}

impl<E> Traced<E> {
    pub(crate) fn new(inner: E, span: &Span, query_text: bool) -> Self {
        let span = (!span.is_disabled()).then(|| (span.clone(), query_text));
        Self { inner, span }
    }
}

impl<'q, DB: Database, E: Execute<'q, DB>> Execute<'q, DB> for Traced<E> {
    fn sql(self) -> SqlStr {
        let sql = self.inner.sql();
        if let Some((span, query_text)) = &self.span {
            if let Some(name) = operation_name(sql.as_str()) {
                span.record("db.operation.name", name);
            }
            if *query_text {
                span.record("db.query.text", sql.as_str());
            }
        }
        sql
    }

    fn statement(&self) -> Option<&DB::Statement> {
        self.inner.statement()
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<<DB as Database>::Arguments>, sqlx::error::BoxDynError> {
        self.inner.take_arguments()
    }

    fn persistent(&self) -> bool {
        self.inner.persistent()
    }
}

/// The statement's first keyword, upper-cased (`SELECT`, `INSERT` …), when it is a plain word:
/// cheap, and of a cardinality a backend can index.
fn operation_name(sql: &str) -> Option<String> {
    let word = sql.split_whitespace().next()?;
    let word = word.trim_end_matches(';');
    let plain =
        !word.is_empty() && word.len() <= 16 && word.bytes().all(|b| b.is_ascii_alphabetic());
    plain.then(|| word.to_ascii_uppercase())
}

/// Records a failed statement on its span: `error.type` (the SQLSTATE or driver code when
/// there is one, else the kind of failure) and `otel.status_code = ERROR`.
pub(crate) fn error_type(span: &Span, err: &sqlx::Error) {
    if span.is_disabled() {
        return;
    }
    let code = match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    let kind = match err {
        sqlx::Error::Database(_) => "database",
        sqlx::Error::Io(_) => "io",
        sqlx::Error::Tls(_) => "tls",
        sqlx::Error::Protocol(_) => "protocol",
        sqlx::Error::RowNotFound => "row_not_found",
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => "decode",
        sqlx::Error::Encode(_) => "encode",
        sqlx::Error::PoolTimedOut => "timeout",
        _ => "_OTHER",
    };
    match &code {
        Some(code) => span.record("error.type", code.as_str()),
        None => span.record("error.type", kind),
    };
    span.record("otel.status_code", "ERROR");
}

#[cfg(test)]
mod tests {
    use super::operation_name;

    #[test]
    fn operation_names_are_first_keywords() {
        assert_eq!(operation_name("  select 1").as_deref(), Some("SELECT"));
        assert_eq!(
            operation_name("INSERT INTO t VALUES (1)").as_deref(),
            Some("INSERT")
        );
        assert_eq!(operation_name("COMMIT;").as_deref(), Some("COMMIT"));
        assert_eq!(operation_name("/* c */ SELECT 1"), None);
        assert_eq!(operation_name(""), None);
    }
}
