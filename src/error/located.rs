//! Carrying a bind name through `sqlx::Error`, so that a driver error met inside a sqlx call on
//! a session still names its bind once `?` brings it back into [`Error`](super::Error).
//!
//! The variant and everything sqlx-speaking code looks at stay as the driver made them: a
//! server's error stays `sqlx::Error::Database`, with the same message, code, kind and
//! constraint, and `downcast_ref::<PgDatabaseError>()` still works (the wrapper hands out the
//! driver's error as its `as_error`); an I/O error stays `sqlx::Error::Io` with the same
//! `io::ErrorKind` and message. Only `From<sqlx::Error>` looks inside, through the
//! `std::error::Error` supertrait, to take the bind back out.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use sqlx::error::{DatabaseError, ErrorKind};

/// What a failed operation was, for the error's message and for [`is_retryable`].
///
/// [`is_retryable`]: super::Error::is_retryable
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    /// `BEGIN`, `COMMIT`, `statement` …
    pub(crate) what: &'static str,
    /// Whether, had the connection died under it, the operation may have taken effect all the
    /// same: a COMMIT, or a statement outside a transaction.
    pub(crate) outcome_unknown: bool,
    /// A write session's, on the host routing took for a bind's primary: a server refusing it
    /// as read-only was demoted since (a switchover), and the work can go again.
    pub(crate) on_primary: bool,
}

impl Op {
    /// An operation whose effect dies with the connection (BEGIN, SAVEPOINT, ROLLBACK …).
    pub(crate) const fn new(what: &'static str) -> Self {
        Self {
            what,
            outcome_unknown: false,
            on_primary: false,
        }
    }

    pub(crate) const fn commit() -> Self {
        Self {
            what: "COMMIT",
            outcome_unknown: true,
            on_primary: false,
        }
    }

    /// A statement; `autocommit` when no transaction was open around it.
    pub(crate) const fn statement(autocommit: bool) -> Self {
        Self {
            what: "statement",
            outcome_unknown: autocommit,
            on_primary: false,
        }
    }

    /// The operation runs on what routing took for the primary (see `on_primary`).
    pub(crate) const fn on_primary(mut self, on_primary: bool) -> Self {
        self.on_primary = on_primary;
        self
    }
}

/// Where an error happened.
#[derive(Debug)]
struct Place {
    bind: String,
    op: Op,
}

/// A server's error, with its place.
struct LocatedDb {
    place: Place,
    inner: Box<dyn DatabaseError>,
}

/// An I/O error, with its place: the custom payload of an `io::Error` of the original's kind.
#[derive(Debug)]
struct LocatedIo {
    place: Place,
    inner: std::io::Error,
}

/// Tags a driver error met on `bind` with its place. Other variants than `Database` and `Io`
/// have nowhere to carry it and pass unchanged.
pub(crate) fn locate(bind: &str, op: Op, err: sqlx::Error) -> sqlx::Error {
    let place = Place {
        bind: bind.to_owned(),
        op,
    };
    match err {
        sqlx::Error::Database(inner) if !is_located(&*inner) => {
            sqlx::Error::Database(Box::new(LocatedDb { place, inner }))
        }
        sqlx::Error::Io(inner) if !inner.get_ref().is_some_and(|e| e.is::<LocatedIo>()) => {
            let kind = inner.kind();
            sqlx::Error::Io(std::io::Error::new(kind, LocatedIo { place, inner }))
        }
        other => other,
    }
}

/// Whether [`locate`] can carry a place in this error.
pub(crate) fn can_locate(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(_) | sqlx::Error::Io(_))
}

fn is_located(db: &dyn DatabaseError) -> bool {
    (db as &dyn StdError).is::<LocatedDb>()
}

/// Takes the place back out of an error [`locate`] tagged, restoring the driver's error.
pub(crate) fn unlocate(err: sqlx::Error) -> Result<(String, Op, sqlx::Error), sqlx::Error> {
    match err {
        sqlx::Error::Database(db) if is_located(&*db) => {
            let located = (db as Box<dyn StdError + Send + Sync>)
                .downcast::<LocatedDb>()
                .expect("checked by is_located");
            let LocatedDb { place, inner } = *located;
            Ok((place.bind, place.op, sqlx::Error::Database(inner)))
        }
        sqlx::Error::Io(io) if io.get_ref().is_some_and(|e| e.is::<LocatedIo>()) => {
            let located = io
                .into_inner()
                .expect("checked by get_ref")
                .downcast::<LocatedIo>()
                .expect("checked by is::<LocatedIo>()");
            let LocatedIo { place, inner } = *located;
            Ok((place.bind, place.op, sqlx::Error::Io(inner)))
        }
        other => Err(other),
    }
}

impl fmt::Display for LocatedDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl fmt::Debug for LocatedDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl StdError for LocatedDb {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner.source()
    }
}

impl DatabaseError for LocatedDb {
    fn message(&self) -> &str {
        self.inner.message()
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.inner.code()
    }

    fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        self.inner.as_error()
    }

    fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
        self.inner.as_error_mut()
    }

    fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
        self.inner.into_error()
    }

    fn is_transient_in_connect_phase(&self) -> bool {
        self.inner.is_transient_in_connect_phase()
    }

    fn constraint(&self) -> Option<&str> {
        self.inner.constraint()
    }

    fn table(&self) -> Option<&str> {
        self.inner.table()
    }

    fn kind(&self) -> ErrorKind {
        self.inner.kind()
    }
}

impl fmt::Display for LocatedIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl StdError for LocatedIo {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_kind_and_message() {
        let original = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let located = locate("main", Op::new("BEGIN"), sqlx::Error::Io(original));
        let sqlx::Error::Io(io) = &located else {
            panic!("still an Io error: {located:?}")
        };
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
        assert_eq!(io.to_string(), "reset by peer");
        let (bind, op, back) = unlocate(located).expect("located");
        assert_eq!((bind.as_str(), op), ("main", Op::new("BEGIN")));
        assert!(matches!(back, sqlx::Error::Io(e) if e.to_string() == "reset by peer"));
    }

    #[test]
    fn other_errors_pass_unchanged() {
        let err = locate("main", Op::new("BEGIN"), sqlx::Error::RowNotFound);
        assert!(matches!(err, sqlx::Error::RowNotFound));
        assert!(unlocate(err).is_err());
    }
}
