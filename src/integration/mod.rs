//! Web framework integrations, each behind its cargo feature: a tower layer (axum, tonic,
//! hyper), axum extractors, and actix-web middleware.
//!
//! Both frameworks' layers are thin adapters over one core (`core.rs`) and behave the same: a
//! request's scope commits before its response is returned (below 400 commits, 400 and up rolls
//! back, with the exceptions a layer adds); a failed commit, or a scope that cannot be opened or
//! joined, is answered by an empty `500 Internal Server Error`; a session extractor's rejection
//! answers 500 (503 when no connection could be had) with its message as a `text/plain` body;
//! and a handler's `DbError` answers 500 or 503 with an empty body.

#[cfg(any(feature = "tower", feature = "actix"))]
mod core;
#[cfg(any(feature = "tower", feature = "actix"))]
mod tokens;

#[cfg(feature = "actix")]
pub mod actix;
#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "tower")]
pub mod tower;
