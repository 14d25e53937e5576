//! Bind names checked at compile time: [`BindKey`], [`DefaultBind`] and [`bind_key!`].

use std::marker::PhantomData;

use crate::backend::Backend;
use crate::config::DEFAULT_BIND;

/// Names a bind and its database type at compile time, so a wrong bind name does not compile.
///
/// Declare keys with [`bind_key!`](crate::bind_key), or implement the trait:
///
/// ```
/// dbscope::bind_key!(
///     /// The analytics warehouse.
///     pub Analytics: sqlx::Sqlite = "analytics"
/// );
///
/// # fn demo(manager: &dbscope::BindManager) -> Result<(), dbscope::Error> {
/// let session = manager.session_for::<Analytics>()?; // a Session<Sqlite> on "analytics"
/// # Ok(()) }
/// ```
pub trait BindKey: Send + Sync + 'static {
    /// The bind's database type.
    type Database: Backend;
    /// The bind's name in the config.
    const NAME: &'static str;
}

/// The `default` bind, as database type `DB`: the key for single-database applications.
#[derive(Debug)]
pub struct DefaultBind<DB>(PhantomData<fn() -> DB>);

impl<DB: Backend> BindKey for DefaultBind<DB> {
    type Database = DB;
    const NAME: &'static str = DEFAULT_BIND;
}

/// Declares a [`BindKey`]: `bind_key!(pub Analytics: sqlx::Postgres = "analytics");`
#[macro_export]
macro_rules! bind_key {
    ($(#[$meta:meta])* $vis:vis $key:ident : $db:ty = $name:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        $vis struct $key;

        impl $crate::BindKey for $key {
            type Database = $db;
            const NAME: &'static str = $name;
        }
    };
}
