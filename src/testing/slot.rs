//! PostgreSQL database mode's reuse: a few databases per template, "slots", leased by one test
//! at a time across tests and processes, and reset to the template's state, verified, on each
//! lease.
//!
//! Slot `n` of a template is the database `dbscope_test_slot_<template hash>_<n>`, `n` below
//! [`MAX_SLOTS`]. A test leases it by holding the session advisory lock `(key, n)` (`key` from
//! the template's hash) on a connection of its own, to the bind's configured database, until it
//! ends: a process that dies takes its leases with its connections. Advisory locks are per
//! database, so a lease also checks in `pg_locks` that no session of another database holds the
//! same pair (two processes configured with different databases would otherwise share a slot).
//!
//! A slot is marked, after each reset or clone, with a comment on the database (kept in the
//! shared catalog `pg_shdescription`, outside what is verified): the template's oid and the
//! first transaction id after the reset. The next lease proves from the server that nothing in
//! the slot's catalogs changed since then ([`Baseline::reset`]), or clones it afresh. While it
//! is reset the slot takes no connection, and the reset's is the only one on it.
//!
//! The closing, the reset and the mark commit with `synchronous_commit = off`, not waiting for
//! the disk: the server writes its log in order, so a crash of the server that lost the mark
//! leaves the mark before, older than the reset's writes, and the next lease clones afresh.

use std::fmt;

use futures_util::future::BoxFuture;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::database::{
    Lease, MadeDb, OncePerServer, SLOT_PREFIX, admin_connect, admin_exec, admin_failed,
};
use super::reset::{Baseline, Stale, Watermark};
use crate::{Error, Result};

/// The most slots a template gets on a server: a test finding them all leased gets a database
/// of its own, cloned and dropped, as without reuse.
pub(super) const MAX_SLOTS: i32 = 16;
/// How long the lease waits for each connection left on a slot to end once terminated.
const TERMINATE_WAIT_MS: u32 = 5_000;
/// How a slot's mark begins (the comment on its database): the template's oid follows.
const MARK: &str = "dbscope test slot: template oid ";
/// PostgreSQL 14 is the first whose `pg_terminate_backend` can wait.
const MIN_SERVER: u32 = 140_000;

/// The slot database `n` of the template with hash `hash` (16 hex digits).
fn slot_name(hash: &str, n: i32) -> String {
    format!("{SLOT_PREFIX}{hash}_{n}")
}

/// The advisory lock key of a template's slots: its hash's low 31 bits (positive, so it reads
/// back unchanged from `pg_locks.classid`).
fn lock_key(digest: u64) -> i32 {
    i32::try_from(digest & 0x7fff_ffff).expect("31 bits fit")
}

/// Who asks for a slot: the bind and its configured server.
pub(super) struct Slots<'a> {
    pub(super) bind: &'a str,
    pub(super) url: &'a str,
}

/// A leased slot: the lock's connection, released when the test ends.
struct Held {
    conn: PgConnection,
    key: i32,
    n: i32,
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("key", &self.key)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl Lease for Held {
    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut conn = self.conn;
            let unlock = format!("SELECT pg_advisory_unlock({}, {})", self.key, self.n);
            // Unlocked before the connection goes, so the next test of this process finds the
            // slot free at once; a failure here still frees it when the connection closes.
            let _ = sqlx::raw_sql(AssertSqlSafe(unlock))
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        })
    }
}

impl Slots<'_> {
    /// Leases a slot of `template` (whose migrations have digest `digest`), reset to the
    /// template's state or cloned afresh; `None` when the server is older than PostgreSQL 14 or
    /// all [`MAX_SLOTS`] are leased (the caller makes a database of the test's own).
    pub(super) async fn lease(&self, template: &str, digest: u64) -> Result<Option<MadeDb>> {
        let mut conn = self.connect(self.url).await?;
        if conn.server_version_num().is_none_or(|v| v < MIN_SERVER) {
            conn.close().await.ok();
            return Ok(None);
        }
        self.sweep_stale(&mut conn).await;
        let key = lock_key(digest);
        let Some(n) = self.first_free(&mut conn, key).await? else {
            tracing::info!(
                bind = self.bind,
                template,
                "all slots of the template are leased: a fresh clone"
            );
            conn.close().await.ok();
            return Ok(None);
        };
        let name = slot_name(&format!("{digest:016x}"), n);
        let url = super::database::with_database(self.url, &name)?;
        let held = Held { conn, key, n };
        // From here the lease is held: dropped on any error, it frees the slot.
        let mut held = Box::new(held);
        self.prepare(&mut held.conn, &name, &url, template).await?;
        Ok(Some(MadeDb::leased(self.bind, self.url, name, url, held)))
    }

    /// Tries the slots' locks in order; the first taken by this session alone.
    async fn first_free(&self, conn: &mut PgConnection, key: i32) -> Result<Option<i32>> {
        for n in 0..MAX_SLOTS {
            if self.try_lock(conn, key, n).await? {
                return Ok(Some(n));
            }
        }
        Ok(None)
    }

    /// Takes lock `(key, n)` if free here and held by no session of another database.
    async fn try_lock(&self, conn: &mut PgConnection, key: i32, n: i32) -> Result<bool> {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(key)
            .bind(n)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.failed("cannot take a slot's advisory lock", e))?;
        if !taken {
            return Ok(false);
        }
        // Taken, then checked: of two sessions taking the pair in different databases, the
        // second to take it sees the first, so both can never keep it.
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 \
             AND classid = $1::int4::oid AND objid = $2::int4::oid AND granted \
             AND pid <> pg_backend_pid()",
        )
        .bind(key)
        .bind(n)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| self.failed("cannot read pg_locks", e))?;
        if others == 0 {
            return Ok(true);
        }
        let unlock = format!("SELECT pg_advisory_unlock({key}, {n})");
        self.exec(conn, &unlock).await?;
        Ok(false)
    }

    /// Makes the leased slot `name` the template's copy: reset in place when it verifies,
    /// cloned afresh otherwise; then marks it.
    async fn prepare(
        &self,
        conn: &mut PgConnection,
        name: &str,
        url: &str,
        template: &str,
    ) -> Result<()> {
        let template_oid = self.oid_of(conn, template).await?;
        let mut resetter = None;
        if let Some((oid, mark)) = self.look_up(conn, name).await? {
            match self
                .reset(conn, url, (oid, name), mark, template, template_oid)
                .await
            {
                Ok(slot) => resetter = Some(slot),
                Err(Stale(why)) => self.reclone(conn, name, template, &why).await?,
            }
        } else {
            self.clone_slot(conn, name, template).await?;
        }
        let pid = resetter.as_ref().map_or(0, |(_, pid)| *pid);
        let marked = self.mark(conn, name, template_oid, pid).await;
        if let Some((slot, _)) = resetter {
            slot.close().await.ok();
        }
        if let Err(e) = marked {
            // Someone came onto the slot mid-reset: start over from the template.
            self.reclone(conn, name, template, &e.to_string()).await?;
            self.mark(conn, name, template_oid, 0)
                .await
                .map_err(|e| self.failed("cannot mark a fresh slot", e))?;
        }
        Ok(())
    }

    async fn reclone(
        &self,
        conn: &mut PgConnection,
        name: &str,
        template: &str,
        why: &str,
    ) -> Result<()> {
        tracing::info!(
            bind = self.bind,
            slot = name,
            why,
            "cloning the slot afresh"
        );
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        self.exec(conn, &drop).await?;
        self.clone_slot(conn, name, template).await
    }

    /// Resets slot `oid` in place, verified; the connection that did it, left open until the
    /// mark is written. From its connecting until the mark, the slot takes no connection
    /// (`ALLOW_CONNECTIONS false`), so nobody comes and goes unseen while it is reset.
    async fn reset(
        &self,
        conn: &mut PgConnection,
        url: &str,
        (oid, name): (i64, &str),
        mark: Option<String>,
        template: &str,
        template_oid: i64,
    ) -> std::result::Result<(PgConnection, i32), Stale> {
        let (marked_template, watermark) = mark
            .as_deref()
            .and_then(parse_mark)
            .ok_or_else(|| Stale("it carries no mark of a finished reset".into()))?;
        if marked_template != template_oid {
            return Err(Stale("it was cloned from another template".into()));
        }
        let template_url =
            super::database::with_database(self.url, template).map_err(|e| Stale(e.to_string()))?;
        let baseline = Baseline::of(&template_url, template_oid).await?;
        let mut slot = PgConnection::connect(url).await?;
        let reset = async {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut slot)
                .await?;
            close(conn, (oid, name), watermark).await?;
            terminate_others(conn, oid, pid).await?;
            baseline.reset(&mut slot, oid, watermark).await?;
            Ok(pid)
        };
        match reset.await {
            Ok(pid) => Ok((slot, pid)),
            Err(stale) => {
                slot.close().await.ok();
                Err(stale)
            }
        }
    }

    /// Opens the slot to connections again and writes its mark: its template, and the first
    /// transaction id after this one (which changes its `pg_database` row), having checked
    /// that no client but `slot_pid` (the reset's own connection, if any) is on it.
    async fn mark(
        &self,
        conn: &mut PgConnection,
        name: &str,
        template_oid: i64,
        slot_pid: i32,
    ) -> std::result::Result<(), sqlx::Error> {
        let sql = format!(
            "DO $dbscope$ BEGIN \
               PERFORM set_config('synchronous_commit', 'off', true); \
               ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true; \
               IF EXISTS (SELECT 1 FROM pg_stat_activity a JOIN pg_database d ON d.oid = a.datid \
                          WHERE d.datname = '{name}' AND a.pid <> {slot_pid} \
                          AND a.backend_type = 'client backend') THEN \
                 RAISE EXCEPTION 'another connection came onto the slot during its reset'; \
               END IF; \
               EXECUTE format('COMMENT ON DATABASE %I IS %L', '{name}', \
                 '{MARK}{template_oid}, reset before xid ' \
                 || (pg_current_xact_id()::text::int8 + 1)::text); \
             END $dbscope$"
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(conn)
            .await
            .map(drop)
    }

    async fn clone_slot(&self, conn: &mut PgConnection, name: &str, template: &str) -> Result<()> {
        self.exec(
            conn,
            &format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
        )
        .await
    }

    async fn oid_of(&self, conn: &mut PgConnection, database: &str) -> Result<i64> {
        let oid: Option<i64> =
            sqlx::query_scalar("SELECT oid::int8 FROM pg_database WHERE datname = $1")
                .bind(database)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.failed("cannot list the server's databases", e))?;
        oid.ok_or_else(|| {
            let what = format!(
                "the template `{database}` is gone (dropped while the tests ran?): run the tests \
                 again, which builds it anew"
            );
            Error::test_database(Some(self.bind), what, "no such database")
        })
    }

    /// The slot's oid and mark, if it exists.
    async fn look_up(
        &self,
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<Option<(i64, Option<String>)>> {
        sqlx::query_as(
            "SELECT oid::int8, shobj_description(oid, 'pg_database') FROM pg_database \
             WHERE datname = $1",
        )
        .bind(name)
        .fetch_optional(conn)
        .await
        .map_err(|e| self.failed("cannot list the server's databases", e))
    }

    /// Drops, once per process and server, the slots whose template is gone (an older
    /// migration set's, dropped), those not leased.
    async fn sweep_stale(&self, conn: &mut PgConnection) {
        static SWEPT: OncePerServer = OncePerServer::new();
        if !SWEPT.first(self.url) {
            return;
        }
        let list = format!(
            "SELECT datname::text FROM pg_database s WHERE datname LIKE '{}%' AND NOT EXISTS \
             (SELECT 1 FROM pg_database t WHERE t.datname = \
              '{}' || split_part(substr(s.datname, {}), '_', 1))",
            SLOT_PREFIX.replace('_', "\\_"),
            super::database::TEMPLATE_PREFIX,
            SLOT_PREFIX.len() + 1,
        );
        let names: Vec<String> = match sqlx::query_scalar(AssertSqlSafe(list))
            .fetch_all(&mut *conn)
            .await
        {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(bind = self.bind, error = %e, "could not list stale slots");
                return;
            }
        };
        for name in names {
            if let Err(e) = self.drop_if_free(conn, &name).await {
                tracing::warn!(database = %name, error = %e, "could not drop a stale slot");
            }
        }
    }

    async fn drop_if_free(&self, conn: &mut PgConnection, name: &str) -> Result<()> {
        let Some((digest, n)) = parse_slot_name(name) else {
            return Ok(());
        };
        let key = lock_key(digest);
        if !self.try_lock(conn, key, n).await? {
            return Ok(());
        }
        let dropped = self
            .exec(
                conn,
                &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            )
            .await;
        self.exec(conn, &format!("SELECT pg_advisory_unlock({key}, {n})"))
            .await?;
        dropped?;
        tracing::info!(database = %name, "dropped a slot whose template is gone");
        Ok(())
    }

    async fn connect(&self, url: &str) -> Result<PgConnection> {
        admin_connect(self.bind, url, "lease a test database").await
    }

    async fn exec(&self, conn: &mut PgConnection, sql: &str) -> Result<()> {
        admin_exec(self.bind, conn, sql).await
    }

    fn failed(&self, what: &str, source: impl Into<crate::BoxError>) -> Error {
        admin_failed(self.bind, what, source)
    }
}

/// Closes slot `oid` (`name`) to connections, having checked, in the same transaction, that
/// its `pg_database` row is unchanged since `watermark` (no GRANT on it, no ALTER DATABASE,
/// the last mark's own aside) and that it has no settings of its own (ALTER DATABASE … SET: a
/// clone never copies the template's).
async fn close(
    conn: &mut PgConnection,
    (oid, name): (i64, &str),
    watermark: Watermark,
) -> std::result::Result<(), Stale> {
    let xid = watermark.0 & 0xffff_ffff;
    let sql = format!(
        "DO $dbscope$ BEGIN \
           PERFORM set_config('synchronous_commit', 'off', true); \
           IF EXISTS (SELECT 1 FROM pg_database d WHERE d.oid = {oid} \
                      AND (age(d.xmin) <= age('{xid}'::xid) OR EXISTS \
                           (SELECT 1 FROM pg_db_role_setting s WHERE s.setdatabase = d.oid))) \
           THEN \
             RAISE EXCEPTION 'the database was altered since its last reset \
               (ALTER DATABASE, GRANT on it)'; \
           END IF; \
           ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false; \
         END $dbscope$"
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
    Ok(())
}

/// Ends every client connection on slot `oid` but the reset's own (`keep`): a previous test's
/// leaked pool, say. Waits for each to be gone. Autovacuum is left alone: it gives way to the
/// reset's locks by itself.
async fn terminate_others(
    conn: &mut PgConnection,
    oid: i64,
    keep: i32,
) -> std::result::Result<(), Stale> {
    let sql = format!(
        "SELECT count(pg_terminate_backend(pid, {TERMINATE_WAIT_MS})) FROM pg_stat_activity \
         WHERE datid = {oid} AND pid <> {keep} AND backend_type = 'client backend'"
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
    Ok(())
}

/// The template oid and watermark of a slot's mark.
fn parse_mark(mark: &str) -> Option<(i64, Watermark)> {
    let rest = mark.strip_prefix(MARK)?;
    let (template, xid) = rest.split_once(", reset before xid ")?;
    Some((template.parse().ok()?, Watermark(xid.parse().ok()?)))
}

/// The template digest and slot number in a slot's name.
fn parse_slot_name(name: &str) -> Option<(u64, i32)> {
    let (hash, n) = name.strip_prefix(SLOT_PREFIX)?.split_once('_')?;
    let n = n.parse().ok().filter(|n| (0..MAX_SLOTS).contains(n))?;
    Some((u64::from_str_radix(hash, 16).ok()?, n))
}
