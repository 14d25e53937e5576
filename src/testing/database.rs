//! The server side of the test databases: migrating a bind's own database once per test binary,
//! creating one database per test (cloned from a template on PostgreSQL), dropping it, and
//! dropping what crashed runs left behind.
//!
//! Test databases are named `dbscope_test_<pid>_<n>`: the process and a counter, so concurrent
//! runs on one server never collide, and a leftover names the process that made it. The first
//! test database a process makes on a server drops the ones whose process is gone. On
//! PostgreSQL, with reuse on, a test leases one of its template's slots instead
//! (`dbscope_test_slot_<hash>_<n>`, see the `slot` module), which the clean-up leaves alone.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use sqlx::{AssertSqlSafe, Connection};

use super::source::Loaded;
use crate::backend::Dialect;
use crate::{DatabaseUrl, Error, Result};

/// The prefix of every test database (and SQLite file).
const PREFIX: &str = "dbscope_test_";
/// The prefix of PostgreSQL templates: one per migration set and configured database.
pub(super) const TEMPLATE_PREFIX: &str = "dbscope_tpl_";
/// The prefix of PostgreSQL slots, reused databases of a template: test databases, but never a
/// crashed run's leftovers.
pub(super) const SLOT_PREFIX: &str = "dbscope_test_slot_";

/// A slot's lease (PostgreSQL reuse): the slot goes back, not away, when the test ends.
pub(super) trait Lease: Send + fmt::Debug {
    /// Gives the slot back to the next test. Dropped instead, the lease goes with its
    /// connection, once the server sees it closed.
    fn release(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// One bind's database server, as the test's configuration names it.
pub(super) struct ServerDb<'a> {
    bind: &'a str,
    url: &'a str,
    dialect: Dialect,
}

/// A database made for one test.
#[derive(Debug)]
pub(super) struct MadeDb {
    bind: String,
    dialect: Dialect,
    /// Where the database was made from (the bind's configured URL).
    admin_url: String,
    name: String,
    url: String,
    path: Option<PathBuf>,
    /// A slot's lease: released, not dropped, at the end.
    lease: Option<Box<dyn Lease>>,
}

impl<'a> ServerDb<'a> {
    pub(super) fn new(bind: &'a str, url: &'a str, dialect: Dialect) -> Self {
        Self { bind, url, dialect }
    }

    /// Runs `migrations` on the configured database, once per process (under the migration
    /// lock `migrate_all` takes, so two test binaries at once apply them once); creates the database
    /// first if the server lacks it, as `sqlx database create` would.
    pub(super) async fn migrate_once(&self, migrations: &Loaded<'_>) -> Result<()> {
        static DONE: Mutex<Option<HashSet<(String, u64)>>> = Mutex::new(None);
        let key = (self.url.to_owned(), migrations.digest());
        let done = |set: &mut Option<HashSet<_>>| set.get_or_insert_default().contains(&key);
        if done(&mut DONE.lock().expect("not poisoned")) {
            return Ok(());
        }
        self.create_if_missing().await?;
        let conn = self.connect(self.url).await?;
        self.run_migrations(conn, self.url, migrations).await?;
        DONE.lock()
            .expect("not poisoned")
            .get_or_insert_default()
            .insert(key);
        Ok(())
    }

    /// Creates the configured database unless it exists (another process creating it at the
    /// same time is no failure).
    async fn create_if_missing(&self) -> Result<()> {
        use sqlx::migrate::MigrateDatabase;
        sqlx::any::install_default_drivers();
        let exists = sqlx::Any::database_exists(self.url).await;
        if exists.as_ref().is_ok_and(|e| *e) || self.dialect == Dialect::Sqlite {
            return Ok(());
        }
        let created = sqlx::Any::create_database(self.url).await;
        match created {
            Ok(()) => Ok(()),
            Err(_) if sqlx::Any::database_exists(self.url).await.unwrap_or(false) => Ok(()),
            Err(e) => Err(self.failed("cannot create the bind's database", e)),
        }
    }

    /// Creates the test's database, migrated; with `reuse`, on PostgreSQL with migrations, it
    /// leases a slot of the template instead, reset to the template's state.
    pub(super) async fn create(
        &self,
        migrations: Option<&Loaded<'_>>,
        fixtures: &[String],
        reuse: bool,
    ) -> Result<MadeDb> {
        let name = next_name();
        let mut made = MadeDb {
            bind: self.bind.to_owned(),
            dialect: self.dialect,
            admin_url: self.url.to_owned(),
            name: name.clone(),
            url: String::new(),
            path: None,
            lease: None,
        };
        match self.dialect {
            Dialect::Sqlite => {
                let path = std::env::temp_dir().join(format!("{name}.db"));
                made.url = format!("sqlite://{}", path.display());
                made.path = Some(path);
                self.clean_sqlite_leftovers();
                let conn = self.connect(&format!("{}?mode=rwc", made.url)).await?;
                let migrated = match migrations {
                    Some(m) => self.run_migrations(conn, &made.url, m).await,
                    None => {
                        conn.close().await.ok();
                        Ok(())
                    }
                };
                if let Err(e) = migrated {
                    made.drop_now().await.ok(); // its file, half migrated
                    return Err(e);
                }
            }
            Dialect::Postgres | Dialect::MySql => {
                made.url = with_database(self.url, &name)?;
                let mut admin = self.connect(self.url).await?;
                self.clean_leftovers(&mut admin).await;
                let template = match (self.dialect, migrations) {
                    (Dialect::Postgres, Some(m)) => Some(self.template(&mut admin, m).await?),
                    _ => None,
                };
                let leased = match (reuse, &template, migrations) {
                    (true, Some(t), Some(m)) => self.lease(t, self.template_digest(m)).await?,
                    _ => None,
                };
                if let Some(slot) = leased {
                    admin.close().await.ok();
                    made = slot;
                    return self.seeded(made, fixtures).await;
                }
                let create = match &template {
                    Some(t) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{t}\""),
                    None => format!("CREATE DATABASE {name}"),
                };
                self.exec(&mut admin, &create).await?;
                admin.close().await.ok();
                if let (Dialect::MySql, Some(m)) = (self.dialect, migrations) {
                    let migrated = match self.connect(&made.url).await {
                        Ok(conn) => self.run_migrations(conn, &made.url, m).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = migrated {
                        made.drop_now().await.ok();
                        return Err(e);
                    }
                }
            }
        }
        self.seeded(made, fixtures).await
    }

    /// `made`, its fixtures run; ended (dropped, or its lease released) if one fails.
    async fn seeded(&self, made: MadeDb, fixtures: &[String]) -> Result<MadeDb> {
        if let Err(e) = self.seed(&made, fixtures).await {
            made.end().await.ok();
            return Err(e);
        }
        Ok(made)
    }

    /// A slot of `template`, leased (see the `slot` module); `None` when there is none to have.
    #[cfg(feature = "postgres")]
    async fn lease(&self, template: &str, digest: u64) -> Result<Option<MadeDb>> {
        let slots = super::slot::Slots {
            bind: self.bind,
            url: self.url,
        };
        slots.lease(template, digest).await
    }

    /// Without the PostgreSQL driver there is no PostgreSQL template to lease a slot of.
    #[cfg(not(feature = "postgres"))]
    async fn lease(&self, _template: &str, _digest: u64) -> Result<Option<MadeDb>> {
        Ok(None)
    }

    /// Runs the fixtures on a test database.
    async fn seed(&self, made: &MadeDb, fixtures: &[String]) -> Result<()> {
        if fixtures.is_empty() {
            return Ok(());
        }
        let mut conn = self.connect(&made.url).await?;
        for sql in fixtures {
            let ran = sqlx::raw_sql(AssertSqlSafe(sql.clone()))
                .execute(&mut conn)
                .await;
            if let Err(e) = ran {
                conn.close().await.ok();
                return Err(self.failed("a fixture failed", e));
            }
        }
        conn.close().await.ok();
        Ok(())
    }

    /// What names the template of `migrations` (and its slots, and their locks): the migration
    /// set, and the configured database. Advisory locks are per database, so two binds
    /// configured with different databases of one server would not exclude each other from
    /// building one template (one dropping the other's half-built template under it); each
    /// database's template is its own instead.
    fn template_digest(&self, migrations: &Loaded<'_>) -> u64 {
        let database = self.configured_database();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        migrations.digest().hash(&mut hasher);
        database.hash(&mut hasher);
        hasher.finish()
    }

    /// The PostgreSQL template for `migrations`, built once per migration set, server and configured database: under
    /// an advisory lock, marked a template only once fully migrated (a half-built one, left by
    /// a crash, is dropped and built again). Marked used (see [`UNUSED_FOR`]) under the same
    /// lock, then again at most every [`REMARK_AFTER`] while this process uses it.
    async fn template(
        &self,
        admin: &mut sqlx::AnyConnection,
        migrations: &Loaded<'_>,
    ) -> Result<String> {
        static READY: Mutex<Option<HashMap<(String, String), Instant>>> = Mutex::new(None);
        let digest = self.template_digest(migrations);
        let name = format!("{TEMPLATE_PREFIX}{digest:016x}");
        let key = (self.url.to_owned(), name.clone());
        let marked = READY
            .lock()
            .expect("not poisoned")
            .get_or_insert_default()
            .get(&key)
            .copied();
        match marked {
            Some(at) if at.elapsed() < REMARK_AFTER => return Ok(name),
            Some(_) => {
                self.mark_used(admin, &name).await;
                READY
                    .lock()
                    .expect("not poisoned")
                    .get_or_insert_default()
                    .insert(key, Instant::now());
                return Ok(name);
            }
            None => {}
        }
        self.drop_unused_templates(admin, &name).await;
        let lock = template_lock(digest);
        self.exec(admin, &format!("SELECT pg_advisory_lock({lock})"))
            .await?;
        let built = self.build_template(admin, &name, migrations).await;
        if built.is_ok() {
            self.mark_used(admin, &name).await;
        }
        self.exec(admin, &format!("SELECT pg_advisory_unlock({lock})"))
            .await?;
        built?;
        READY
            .lock()
            .expect("not poisoned")
            .get_or_insert_default()
            .insert(key, Instant::now());
        Ok(name)
    }

    /// Records on template `name` that a test uses it now, and in which database its advisory
    /// lock is taken (the configured one): its comment, which clones do not copy and its owner
    /// may set. A failure is logged: the template works all the same.
    async fn mark_used(&self, admin: &mut sqlx::AnyConnection, name: &str) {
        let mark = format!(
            "COMMENT ON DATABASE \"{name}\" IS '{MARK}{}{MARK_DATABASE}{}'",
            unix_now(),
            self.configured_database().replace('\'', "''")
        );
        if let Err(e) = self.exec(admin, &mark).await {
            tracing::warn!(bind = self.bind, template = name, error = %e, "could not mark a test template used");
        }
    }

    /// The database the bind is configured with, as its URL's path says: where the advisory
    /// locks of its templates are taken (they exclude only within one database).
    fn configured_database(&self) -> String {
        url::Url::parse(self.url)
            .map(|url| url.path().to_owned())
            .unwrap_or_default()
    }

    /// Drops, once per process and server, the templates of the configured database no test
    /// has used for [`UNUSED_FOR`] (those of migration sets since changed, of projects gone),
    /// `current` aside; another database's templates are locked there, and left to its runs.
    /// One without a mark (made before templates had one) is marked now, and so goes a while
    /// later if nothing uses it. Each goes under its advisory lock, taken without waiting (a run
    /// building or marking it keeps it), its mark read again under the lock, and only while no
    /// connection uses it; its slots go with the next sweep of stale slots.
    async fn drop_unused_templates(&self, admin: &mut sqlx::AnyConnection, current: &str) {
        static SWEPT: OncePerServer = OncePerServer::new();
        if !SWEPT.first(self.url) {
            return;
        }
        let list = "SELECT CAST(datname AS TEXT), \
             CAST(shobj_description(oid, 'pg_database') AS TEXT) FROM pg_database \
             WHERE datistemplate AND datname LIKE 'dbscope\\_tpl\\_%'";
        let database = self.configured_database();
        let templates: Vec<(String, Option<String>)> = match sqlx::query_as(list)
            .fetch_all(&mut *admin)
            .await
        {
            Ok(templates) => templates,
            Err(e) => {
                tracing::warn!(bind = self.bind, error = %e, "could not list the test templates");
                return;
            }
        };
        for (name, last_used) in templates.into_iter().filter(|(n, _)| n != current) {
            let Some(digest) = name
                .strip_prefix(TEMPLATE_PREFIX)
                .and_then(|hash| u64::from_str_radix(hash, 16).ok())
            else {
                continue;
            };
            match last_used.as_deref().and_then(parse_mark) {
                None => self.mark_used(admin, &name).await,
                Some((_, other)) if other != database => {}
                Some((at, _)) if !unused_since(at) => {}
                Some(_) => match self.drop_template_if_unused(admin, &name, digest).await {
                    Ok(true) => {
                        tracing::info!(bind = self.bind, template = %name, "dropped a test template no test has used for a week")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(bind = self.bind, template = %name, error = %e, "could not drop an unused test template")
                    }
                },
            }
        }
    }

    /// Drops template `name` if, under its lock, it is still unused; whether it did.
    async fn drop_template_if_unused(
        &self,
        admin: &mut sqlx::AnyConnection,
        name: &str,
        digest: u64,
    ) -> Result<bool> {
        let lock = template_lock(digest);
        let query = format!("SELECT pg_try_advisory_lock({lock})");
        let locked: bool = sqlx::query_scalar(AssertSqlSafe(query))
            .fetch_one(&mut *admin)
            .await
            .map_err(|e| self.failed("cannot lock a test template", e))?;
        if !locked {
            return Ok(false);
        }
        let dropped = async {
            let query = format!(
                "SELECT CAST(shobj_description(oid, 'pg_database') AS TEXT) FROM pg_database \
                 WHERE datname = '{name}'"
            );
            let mark: Option<Option<String>> = sqlx::query_scalar(AssertSqlSafe(query))
                .fetch_optional(&mut *admin)
                .await
                .map_err(|e| self.failed("cannot read a test template's mark", e))?;
            let at = mark
                .flatten()
                .as_deref()
                .and_then(parse_mark)
                .map(|(at, _)| at);
            if !at.is_some_and(unused_since) {
                return Ok(false);
            }
            // Two statements, two transactions: DROP DATABASE runs in none. Without FORCE: a
            // connection to it (a clone being made) keeps it, a template again.
            self.exec(
                admin,
                &format!("ALTER DATABASE \"{name}\" IS_TEMPLATE false"),
            )
            .await?;
            if let Err(e) = self.exec(admin, &format!("DROP DATABASE \"{name}\"")).await {
                let back = format!("ALTER DATABASE \"{name}\" IS_TEMPLATE true");
                self.exec(admin, &back).await.ok();
                return Err(e);
            }
            Ok(true)
        }
        .await;
        self.exec(admin, &format!("SELECT pg_advisory_unlock({lock})"))
            .await?;
        dropped
    }

    async fn build_template(
        &self,
        admin: &mut sqlx::AnyConnection,
        name: &str,
        migrations: &Loaded<'_>,
    ) -> Result<()> {
        let query = format!("SELECT datistemplate FROM pg_database WHERE datname = '{name}'");
        let state: Option<bool> = sqlx::query_scalar(AssertSqlSafe(query))
            .fetch_optional(&mut *admin)
            .await
            .map_err(|e| self.failed("cannot list the server's databases", e))?;
        match state {
            Some(true) => return Ok(()),
            Some(false) => {
                let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                self.exec(admin, &drop).await?;
            }
            None => {}
        }
        self.exec(admin, &format!("CREATE DATABASE \"{name}\""))
            .await?;
        let url = with_database(self.url, name)?;
        let conn = self.connect(&url).await?;
        self.run_migrations(conn, &url, migrations).await?;
        self.exec(
            admin,
            &format!("ALTER DATABASE \"{name}\" IS_TEMPLATE true"),
        )
        .await
    }

    /// Drops the test databases of processes that are gone, once per process and server.
    async fn clean_leftovers(&self, admin: &mut sqlx::AnyConnection) {
        static CLEANED: OncePerServer = OncePerServer::new();
        if !CLEANED.first(self.url) {
            return;
        }
        let list = match self.dialect {
            Dialect::Postgres => {
                "SELECT CAST(datname AS TEXT) FROM pg_database WHERE datname LIKE 'dbscope\\_test\\_%'"
            }
            _ => {
                "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
                  WHERE schema_name LIKE 'dbscope\\_test\\_%'"
            }
        };
        let names = match sqlx::query_scalar::<_, String>(list)
            .fetch_all(&mut *admin)
            .await
        {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(bind = self.bind, error = %e, "could not list leftover test databases");
                return;
            }
        };
        for name in names.into_iter().filter(|n| is_orphan(n)) {
            let made = MadeDb {
                bind: self.bind.to_owned(),
                dialect: self.dialect,
                admin_url: self.url.to_owned(),
                url: String::new(),
                name,
                path: None,
                lease: None,
            };
            match made.drop_on(admin).await {
                Ok(()) => {
                    tracing::info!(database = %made.name, "dropped a test database left by a process that is gone")
                }
                Err(e) => {
                    tracing::warn!(database = %made.name, error = %e, "could not drop a leftover test database")
                }
            }
        }
    }

    /// Removes the SQLite files of test databases whose process is gone, once per process.
    fn clean_sqlite_leftovers(&self) {
        static CLEANED: OnceLock<()> = OnceLock::new();
        CLEANED.get_or_init(|| {
            let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
                return;
            };
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let stem = file.split('.').next().unwrap_or_default();
                if stem.starts_with(PREFIX) && is_orphan(stem) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        });
    }

    /// Applies `migrations` on `conn`, to the database at `url`, as `migrate_all` does (under
    /// the migration lock of its backend, MariaDB's included), and closes it.
    async fn run_migrations(
        &self,
        conn: sqlx::AnyConnection,
        url: &str,
        migrations: &Loaded<'_>,
    ) -> Result<()> {
        migrations
            .apply(self.bind, conn, url)
            .await
            .map_err(|e| self.failed("running the migrations failed", e))
    }

    async fn connect(&self, url: &str) -> Result<sqlx::AnyConnection> {
        sqlx::any::install_default_drivers();
        admin_connect(self.bind, url, "set the test's database up").await
    }

    async fn exec(&self, conn: &mut sqlx::AnyConnection, sql: &str) -> Result<()> {
        admin_exec(self.bind, conn, sql).await
    }

    fn failed(&self, what: &str, source: impl Into<crate::BoxError>) -> Error {
        admin_failed(self.bind, what, source)
    }
}

/// Servers (by their configured URL) a piece of work has run for in this process, so that it
/// runs once per process and server.
pub(super) struct OncePerServer(Mutex<Option<HashSet<String>>>);

impl OncePerServer {
    pub(super) const fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// Whether this is the first time for `url` (and notes that it no longer is).
    pub(super) fn first(&self, url: &str) -> bool {
        self.0
            .lock()
            .expect("not poisoned")
            .get_or_insert_default()
            .insert(url.to_owned())
    }
}

/// How a template's mark (its comment) begins: the Unix time of its last use follows, then
/// [`MARK_DATABASE`] and the configured database its lock is taken in.
const MARK: &str = "dbscope test template, last used at unix time ";
const MARK_DATABASE: &str = ", locked in database ";
/// A template no test has used for this long is dropped by the next run on its server: its
/// migration set changed since, or its project is gone. Every run marks the templates it uses.
const UNUSED_FOR: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How often a process that goes on using a template marks it again.
const REMARK_AFTER: Duration = Duration::from_secs(60 * 60);

/// The advisory lock of the template with `digest`: its bits, as PostgreSQL's bigint.
fn template_lock(digest: u64) -> i64 {
    i64::from_ne_bytes(digest.to_ne_bytes())
}

/// The last use and the lock's database in a template's mark.
fn parse_mark(mark: &str) -> Option<(u64, &str)> {
    let (at, database) = mark.strip_prefix(MARK)?.split_once(MARK_DATABASE)?;
    Some((at.parse().ok()?, database))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether a template last used at Unix time `at` has gone unused for [`UNUSED_FOR`].
fn unused_since(at: u64) -> bool {
    unix_now().saturating_sub(at) >= UNUSED_FOR.as_secs()
}

/// An admin connection to `url`, for the test databases of `bind`; `purpose` completes "cannot
/// reach the server to …" in the error.
pub(super) async fn admin_connect<C: Connection>(
    bind: &str,
    url: &str,
    purpose: &str,
) -> Result<C> {
    C::connect(url).await.map_err(|e| {
        let what = format!(
            "cannot reach {} to {purpose}",
            DatabaseUrl::new(url).redacted()
        );
        Error::test_database(Some(bind), what, e)
    })
}

/// Runs `sql` on an admin connection, for the test databases of `bind`.
pub(super) async fn admin_exec<C>(bind: &str, conn: &mut C, sql: &str) -> Result<()>
where
    C: Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
{
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .map(drop)
        .map_err(|e| admin_failed(bind, &format!("`{sql}` failed"), e))
}

/// A failure to set up or tear down the test databases of `bind`.
pub(super) fn admin_failed(bind: &str, what: &str, source: impl Into<crate::BoxError>) -> Error {
    Error::test_database(Some(bind), what.to_owned(), source)
}

impl MadeDb {
    /// Slot `name` of a template on the server at `admin_url`, leased for one test.
    #[cfg(feature = "postgres")]
    pub(super) fn leased(
        bind: &str,
        admin_url: &str,
        name: String,
        url: String,
        lease: Box<dyn Lease>,
    ) -> Self {
        Self {
            bind: bind.to_owned(),
            dialect: Dialect::Postgres,
            admin_url: admin_url.to_owned(),
            name,
            url,
            path: None,
            lease: Some(lease),
        }
    }

    /// Whether the database is a leased slot (given back, not dropped, at the end).
    pub(super) fn is_leased(&self) -> bool {
        self.lease.is_some()
    }

    /// Ends the test's use of the database: a slot goes back to the next test, any other
    /// database is dropped.
    pub(super) async fn end(mut self) -> Result<()> {
        self.end_in_place().await
    }

    /// [`end`](Self::end), leaving `self` to drop: cut off before it ends, a database not
    /// dropped yet is still named here, for whoever ends it next (a lease cut off mid-release
    /// is freed all the same, with its connection).
    pub(super) async fn end_in_place(&mut self) -> Result<()> {
        match self.lease.take() {
            Some(lease) => {
                lease.release().await;
                Ok(())
            }
            None => self.drop_now().await,
        }
    }

    /// The URL the test's bind uses.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// The database's name (on SQLite, its file's path).
    pub(super) fn name(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => self.name.clone(),
        }
    }

    /// Where the database is, password hidden, for a test that keeps it.
    pub(super) fn describe(&self) -> String {
        format!(
            "bind `{}`: {}",
            self.bind,
            DatabaseUrl::new(self.url.as_str()).redacted()
        )
    }

    /// Drops the database now (its SQLite files, on SQLite).
    async fn drop_now(&self) -> Result<()> {
        if let Some(path) = &self.path {
            // With the migration lock file `migrate_all`'s SQLite lock leaves beside it.
            for suffix in ["", "-wal", "-shm", "-journal", "-migrate.lock"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            return Ok(());
        }
        let server = ServerDb::new(&self.bind, &self.admin_url, self.dialect);
        let mut admin = server.connect(&self.admin_url).await?;
        let dropped = self.drop_on(&mut admin).await;
        admin.close().await.ok();
        dropped
    }

    async fn drop_on(&self, admin: &mut sqlx::AnyConnection) -> Result<()> {
        let name = &self.name;
        let sql = match self.dialect {
            Dialect::Postgres => format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            _ => {
                self.end_connections_on(admin).await;
                format!("DROP DATABASE IF EXISTS {name}")
            }
        };
        ServerDb::new(&self.bind, &self.admin_url, self.dialect)
            .exec(admin, &sql)
            .await
    }
}

impl MadeDb {
    /// MySQL: ends the connections still on the database (a session a spawned task kept, with
    /// its transaction open), as PostgreSQL's `WITH (FORCE)` does: `DROP DATABASE` would wait
    /// for their locks up to `lock_wait_timeout`, a year by default. A failure here is left to
    /// the DROP to report.
    async fn end_connections_on(&self, admin: &mut sqlx::AnyConnection) {
        let query = "SELECT CAST(id AS SIGNED) FROM information_schema.processlist \
                     WHERE db = ? AND id <> CONNECTION_ID()";
        let ids: Vec<i64> = match sqlx::query_scalar(query)
            .bind(&self.name)
            .fetch_all(&mut *admin)
            .await
        {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(database = %self.name, error = %e, "could not list the connections on a test database");
                return;
            }
        };
        for id in ids {
            // Gone meanwhile (ER_NO_SUCH_THREAD) is as good as ended.
            let _ = sqlx::raw_sql(AssertSqlSafe(format!("KILL {id}")))
                .execute(&mut *admin)
                .await;
        }
    }
}

/// A name no other test uses, of this process or any other, on this machine or another sharing
/// the server: `dbscope_test_<machine>_<pid>_<start>_<n>`, the process's start telling it from
/// an earlier process of the same pid (whose leftover may still be there).
fn next_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (machine, pid, start) = this_process();
    format!("{PREFIX}{machine}_{pid}_{start}_{n}")
}

/// This process's marks in its test databases' names: its machine's tag (a hash of the host
/// name, the kernel's boot id and the pid namespace: another machine, or another container on
/// this one, has another, even one sharing the host's name and network), its pid, and its
/// start (8 hex digits of nanoseconds). The pids a tag's names carry are those `/proc` shows
/// in that namespace, so only a process of the same tag may judge them gone.
fn this_process() -> (&'static str, u32, &'static str) {
    static MARKS: OnceLock<(String, String)> = OnceLock::new();
    let (machine, start) = MARKS.get_or_init(|| {
        let read = |path| std::fs::read_to_string(path).unwrap_or_default();
        let pid_namespace = std::fs::read_link("/proc/self/ns/pid")
            .map(|link| link.display().to_string())
            .unwrap_or_default();
        let machine = machine_tag(
            read("/proc/sys/kernel/hostname").trim(),
            read("/proc/sys/kernel/random/boot_id").trim(),
            &pid_namespace,
        );
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        (machine, format!("{:08x}", started as u32))
    });
    (machine, std::process::id(), start)
}

/// The machine tag of [`this_process`]: 8 hex digits.
fn machine_tag(hostname: &str, boot_id: &str, pid_namespace: &str) -> String {
    format!(
        "{:08x}",
        fnv1a(&format!("{hostname}|{boot_id}|{pid_namespace}"))
    )
}

/// FNV-1a, 32 bits: the same on every build, as names read by other processes must be.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// A test database of a process of this machine that is gone (only on Linux, where `/proc`
/// says; elsewhere none is). Never another machine's (its pids mean nothing here), nor a name
/// of another form (an older version's, whose machine is unknown), nor a slot: slots outlive
/// their processes on purpose.
fn is_orphan(name: &str) -> bool {
    if name.starts_with(SLOT_PREFIX) {
        return false;
    }
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('_').collect();
    let [machine, pid, start, n] = parts[..] else {
        return false;
    };
    let (this_machine, this_pid, this_start) = this_process();
    let (Ok(pid), true) = (pid.parse::<u32>(), n.parse::<u32>().is_ok()) else {
        return false;
    };
    let this_process = pid == this_pid && start == this_start;
    cfg!(target_os = "linux")
        && machine == this_machine
        && !this_process
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `url` with its database replaced by `name`.
pub(super) fn with_database(url: &str, name: &str) -> Result<String> {
    let mut parsed = url::Url::parse(url)
        .map_err(|e| Error::test_database(None, "cannot parse a bind's URL".to_owned(), e))?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_sharing_a_host_name_and_kernel_have_tags_of_their_own() {
        let boot = "6d1c0a8e-5b0f-4b8e-9f3e-2a7d4c1b9e00";
        let host = machine_tag("ci-host", boot, "pid:[4026531836]");
        let container = machine_tag("ci-host", boot, "pid:[4026532179]");
        assert_ne!(
            host, container,
            "another pid namespace, whose pids mean nothing here"
        );
        assert_eq!(host, machine_tag("ci-host", boot, "pid:[4026531836]"));
        assert_eq!(host.len(), 8);
    }

    #[test]
    fn only_this_machines_gone_processes_leave_orphans() {
        let (machine, pid, start) = this_process();
        let name = next_name();
        assert!(
            name.starts_with(&format!("{PREFIX}{machine}_{pid}_{start}_")),
            "{name}"
        );
        assert!(
            name.len() <= 63,
            "fits PostgreSQL's and MySQL's identifiers"
        );
        assert!(!is_orphan(&name), "this process's own");
        // No process has this pid (Linux's limit is 2^22).
        let gone = format!("{PREFIX}{machine}_999999999_{start}_0");
        assert_eq!(
            is_orphan(&gone),
            cfg!(target_os = "linux"),
            "a gone process's"
        );
        let other_machine = if machine == "00000000" {
            "00000001"
        } else {
            "00000000"
        };
        let theirs = format!("{PREFIX}{other_machine}_999999999_{start}_0");
        assert!(
            !is_orphan(&theirs),
            "another machine's, whose pids mean nothing here"
        );
        assert!(
            !is_orphan(&format!("{PREFIX}999999999_0")),
            "an older form's"
        );
        assert!(!is_orphan(&format!("{SLOT_PREFIX}abc_0")), "a slot");
    }
}
