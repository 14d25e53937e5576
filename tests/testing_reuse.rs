//! Database mode's reuse on PostgreSQL: a test leases a slot of its template, reset to the
//! template's state (rows, seed rows, sequences), verified from the server; DDL makes the next
//! lease clone afresh; two processes at once get different slots; a killed process's slot is
//! reset by the next lease; `reuse(false)` and `keep` never reuse.
//!
//! Each test has a template of its own: its migrations carry the test's tag and this process's
//! id, so no other test (of this binary or of another run on the same server) leases its slots,
//! and a test can tell a reset slot (the same database oid) from a clone. [`Scratch`] drops the
//! template and its slots at the end; those of a process that was killed are dropped by the
//! next run. Tests needing another process run `child_leases_a_slot_and_writes` as a child of
//! this binary, which says on stdout which slot it leased and waits for a line on stdin.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

use common::{
    PG_DEFAULT, PG_ENV, SLOT_PREFIX, server_url, slot_lease_holders as lease_holders, sql,
};
use dbscope::testing::{Mode, TestContext, TestDb, TestDbBuilder};
use dbscope::{BindConfig, Config};
use sqlx::{Connection, PgConnection, Row};

/// Set in a child: the tag of its parent's template, and the parent's pid.
const CHILD_TAG: &str = "DBSCOPE_REUSE_CHILD_TAG";
const CHILD_OWNER: &str = "DBSCOPE_REUSE_CHILD_OWNER";
/// A child prints this and its database's name once it holds its slot.
const LEASED: &str = "LEASED ";

/// The template: seed rows in `colours` (with a trigger that would write to `audit` if a reset
/// fired it), empty tables referencing them, and a sequence whose value is not its start.
const SCHEMA: &str = "
CREATE TABLE colours (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO colours (name) VALUES ('red'), ('green'), ('blue');
CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, colour_id BIGINT REFERENCES colours (id), body TEXT NOT NULL);
CREATE TABLE tags (id SERIAL PRIMARY KEY, label TEXT NOT NULL);
CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, what TEXT NOT NULL);
CREATE FUNCTION audit_colour() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (what) VALUES (NEW.name); RETURN NEW; END $$;
CREATE TRIGGER colours_audit AFTER INSERT ON colours FOR EACH ROW EXECUTE FUNCTION audit_colour();
CREATE SEQUENCE tickets START 100;
SELECT setval('tickets', 105);
";
/// Run after each reset.
const FIXTURE: &str = "INSERT INTO tags (label) VALUES ('from the fixture')";

fn pg_url() -> String {
    server_url(PG_ENV, PG_DEFAULT)
}

/// The URL of database `name` on the test server.
fn on(name: &str) -> String {
    let mut url = url::Url::parse(&pg_url()).expect("a PostgreSQL URL");
    url.set_path(&format!("/{name}"));
    url.into()
}

async fn connect(name: Option<&str>) -> PgConnection {
    let url = name.map_or_else(pg_url, on);
    PgConnection::connect(&url)
        .await
        .expect("reach the test server")
}

async fn exec(conn: &mut PgConnection, statement: &str) {
    sqlx::raw_sql(sql(statement.to_owned()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("`{statement}`: {e}"));
}

async fn exec_on(database: &str, statement: &str) {
    let mut conn = connect(Some(database)).await;
    exec(&mut conn, statement).await;
    conn.close().await.unwrap();
}

/// The oid of database `name`, if it exists.
async fn oid(name: &str) -> Option<i64> {
    let mut conn = connect(None).await;
    let oid = sqlx::query_scalar("SELECT oid::int8 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    oid
}

async fn int(t: &TestContext, query: &str) -> i64 {
    let row = t
        .fetch_one::<sqlx::Postgres, _>("pg", sqlx::query(sql(query.to_owned())))
        .await
        .unwrap_or_else(|e| panic!("`{query}`: {e}"));
    row.get::<i64, _>(0)
}

async fn text(t: &TestContext, query: &str) -> String {
    let row = t
        .fetch_one::<sqlx::Postgres, _>("pg", sqlx::query(sql(query.to_owned())))
        .await
        .unwrap_or_else(|e| panic!("`{query}`: {e}"));
    row.get::<Option<String>, _>(0).unwrap_or_default()
}

/// What a test does to its slot: rows in empty tables, seed rows changed, deleted and added
/// (the trigger writing to `audit`), sequences bumped.
const DIRTY: &str = "
INSERT INTO notes (colour_id, body) VALUES (1, 'a'), (2, 'b');
UPDATE colours SET name = 'purple' WHERE id = 1;
DELETE FROM colours WHERE id = 3;
INSERT INTO colours (name) VALUES ('cyan');
INSERT INTO tags (label) VALUES ('from the test');
SELECT nextval('tickets'), nextval('tickets'), nextval('tickets');
";

/// The slot is exactly the template's, the fixture run once.
async fn assert_template_state(t: &TestContext) {
    let colours = "SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM colours";
    assert_eq!(text(t, colours).await, "1:red,2:green,3:blue");
    assert_eq!(int(t, "SELECT count(*) FROM notes").await, 0);
    assert_eq!(
        int(t, "SELECT count(*) FROM audit").await,
        0,
        "no trigger fired"
    );
    assert_eq!(
        text(t, "SELECT string_agg(label, ',') FROM tags").await,
        "from the fixture"
    );
    assert_eq!(int(t, "SELECT nextval('tickets')").await, 106);
    assert_eq!(int(t, "SELECT nextval('colours_id_seq')").await, 4);
    assert_eq!(int(t, "SELECT nextval('notes_id_seq')").await, 1);
    assert_eq!(int(t, "SELECT nextval('tags_id_seq')::int8").await, 2);
}

/// The slot's state after [`DIRTY`], read on its own connection.
async fn assert_dirty(database: &str) {
    let mut conn = connect(Some(database)).await;
    let (notes, audit, colours): (i64, i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM notes), (SELECT count(*) FROM audit), \
         (SELECT string_agg(name, ',' ORDER BY id) FROM colours)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    assert_eq!(
        (notes, audit, colours.as_str()),
        (2, 1, "purple,green,cyan")
    );
}

/// A template of one test's own, and the clean-up of it and its slots.
struct Scratch {
    tag: String,
    dir: PathBuf,
    /// Whether this process made it (and drops it); a child uses its parent's.
    owned: bool,
}

impl Scratch {
    /// The template of test `tag` of this process.
    async fn new(tag: &str) -> Self {
        sweep_dead_runs().await;
        Self::with_owner(tag, std::process::id(), true)
    }

    /// In a child: its parent's template, if it is one (its migrations written by the parent:
    /// a child that wrote them again could have another child read them half written).
    fn of_parent() -> Option<Self> {
        let tag = std::env::var(CHILD_TAG).ok()?;
        let owner = std::env::var(CHILD_OWNER).ok()?.parse().ok()?;
        Some(Self::with_owner(&tag, owner, false))
    }

    fn with_owner(tag: &str, owner: u32, owned: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("dbscope_reuse_{owner}_{tag}"));
        if owned {
            std::fs::create_dir_all(&dir).unwrap();
            let migration = format!("-- tests/testing_reuse.rs: {tag}, process {owner}\n{SCHEMA}");
            std::fs::write(dir.join("1_schema.sql"), migration).unwrap();
        }
        let tag = tag.to_owned();
        Self { tag, dir, owned }
    }

    fn builder(&self) -> TestDbBuilder {
        let mut config = Config::default();
        config.binds.insert("pg".into(), BindConfig::new(pg_url()));
        TestDb::builder()
            .config(config)
            .mode(Mode::Database)
            .migrations("pg", self.dir.clone())
            .fixture("pg", FIXTURE)
    }

    /// A test on a slot: its context, database name and oid.
    async fn lease(&self) -> (TestContext, String, i64) {
        let t = self.builder().start().await.expect("start the test");
        let name = t.database("pg").expect("database mode").to_owned();
        assert!(name.starts_with(SLOT_PREFIX), "a slot: {name}");
        self.adopt(&name).await;
        let oid = oid(&name).await.expect("the slot exists");
        (t, name, oid)
    }

    /// The comment that tags this scratch's template.
    fn comment(&self) -> String {
        format!("{COMMENT}{}, process {}", self.tag, std::process::id())
    }

    /// Tags the template of slot `slot` as this scratch's, for the clean-up (and for
    /// `sweep_dead_runs`, should this process be killed).
    async fn adopt(&self, slot: &str) {
        if !self.owned {
            return;
        }
        let template = format!("dbscope_tpl_{}", template_hash(slot));
        let comment = format!(
            "ALTER DATABASE \"{template}\" SET {TAG} = '{}'",
            self.comment()
        );
        let mut admin = connect(None).await;
        exec(&mut admin, &comment).await;
        admin.close().await.unwrap();
    }
}

/// How the tag of a test's template begins.
const COMMENT: &str = "tests/testing_reuse.rs: ";
/// The setting that tags a test's template (its comment is dbscope's mark of last use).
const TAG: &str = "dbscope_tests.tag";
/// A subquery: the tag of database `d`, or NULL.
const TAG_OF_D: &str = "(SELECT substr(c, length('dbscope_tests.tag=') + 1) \
     FROM pg_db_role_setting s, unnest(s.setconfig) AS c \
     WHERE s.setdatabase = d.oid AND s.setrole = 0 AND starts_with(c, 'dbscope_tests.tag='))";

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let (dir, comment) = (self.dir.clone(), self.comment());
        // On a runtime of its own: this may run while a test's runtime unwinds.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(drop_tagged(&comment));
            let _ = std::fs::remove_dir_all(&dir);
        });
        let _ = dropped.join();
    }
}

/// The template hash in a slot's name.
fn template_hash(slot: &str) -> &str {
    let rest = slot.strip_prefix(SLOT_PREFIX).expect("a slot");
    rest.split('_').next().unwrap()
}

/// Drops the templates tagged `comment`, and their slots.
async fn drop_tagged(comment: &str) {
    let mut admin = connect(None).await;
    let query = format!(
        "SELECT datname::text FROM pg_database d WHERE datname LIKE 'dbscope\\_tpl\\_%' \
         AND {TAG_OF_D} = $1"
    );
    let templates: Vec<String> = sqlx::query_scalar(sql(query))
        .bind(comment)
        .fetch_all(&mut admin)
        .await
        .unwrap_or_default();
    for template in templates {
        drop_template(&mut admin, &template).await;
    }
    admin.close().await.ok();
}

/// Drops a template and its slots.
async fn drop_template(admin: &mut PgConnection, template: &str) {
    let hash = template.trim_start_matches("dbscope_tpl_");
    let slots: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)")
            .bind(format!("{SLOT_PREFIX}{hash}_"))
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for slot in slots {
        let drop = format!("DROP DATABASE IF EXISTS \"{slot}\" WITH (FORCE)");
        let _ = sqlx::raw_sql(sql(drop)).execute(&mut *admin).await;
    }
    // Two statements, two transactions: DROP DATABASE runs in none.
    for statement in [
        format!("ALTER DATABASE \"{template}\" IS_TEMPLATE false"),
        format!("DROP DATABASE IF EXISTS \"{template}\" WITH (FORCE)"),
    ] {
        let _ = sqlx::raw_sql(sql(statement)).execute(&mut *admin).await;
    }
}

/// Drops, once per process, the templates of this file's runs whose process is gone.
async fn sweep_dead_runs() {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let mut admin = connect(None).await;
            let query = format!(
                "SELECT datname::text, {TAG_OF_D} FROM pg_database d \
                 WHERE datname LIKE 'dbscope\\_tpl\\_%' AND starts_with({TAG_OF_D}, $1)"
            );
            let tagged: Vec<(String, String)> = sqlx::query_as(sql(query))
                .bind(COMMENT)
                .fetch_all(&mut admin)
                .await
                .unwrap();
            for (template, comment) in tagged {
                let pid = comment.rsplit(' ').next().unwrap_or_default();
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    drop_template(&mut admin, &template).await;
                }
            }
            admin.close().await.ok();
        })
        .await;
}

/// How dbscope's mark of a template's last use (its comment) begins.
const MARK: &str = "dbscope test template, last used at unix time ";
const MARK_DATABASE: &str = ", locked in database ";

/// Template `name`'s mark: when it was last used, and the database its lock is taken in.
async fn mark(name: &str) -> Option<(i64, String)> {
    let mut conn = connect(None).await;
    let mark: Option<Option<String>> = sqlx::query_scalar(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_optional(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let mark = mark.flatten()?;
    let (at, database) = mark.strip_prefix(MARK)?.split_once(MARK_DATABASE)?;
    Some((at.parse().expect("Unix seconds"), database.to_owned()))
}

/// A run drops the templates no test has used for a week (a migration set since changed, a
/// project gone), and keeps those used since, marking the ones without a mark (made before
/// templates had one) so that they go a week later if nothing uses them. The server says
/// which templates are left, and their marks. Stand-ins of this process's own play the old
/// templates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_unused_for_a_week_are_dropped() {
    common::within_limit("templates_unused_for_a_week_are_dropped", async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let day = 24 * 60 * 60;
        // A server URL of this test's own: the sweep runs once per process and server.
        let mut url = url::Url::parse(&pg_url()).unwrap();
        url.query_pairs_mut()
            .append_pair("application_name", "dbscope_unused_templates");
        let database = url.path().to_owned();
        let pid = std::process::id();
        let stand_in = |n: u32| format!("dbscope_tpl_{pid:08x}{n:08x}");
        let [stale, recent, elsewhere, unmarked] = [0xa1, 0xa2, 0xa3, 0xa4].map(stand_in);
        let mut admin = connect(None).await;
        for (name, mark) in [
            (&stale, Some((now - 8 * day, database.as_str()))),
            (&recent, Some((now - day, database.as_str()))),
            (&elsewhere, Some((now - 8 * day, "/elsewhere"))),
            (&unmarked, None),
        ] {
            exec(&mut admin, &format!("CREATE DATABASE \"{name}\"")).await;
            // Marked before it is a template: no sweep lists it half made.
            if let Some((at, database)) = mark {
                let comment = format!("{MARK}{at}{MARK_DATABASE}{database}");
                let set = format!("COMMENT ON DATABASE \"{name}\" IS '{comment}'");
                exec(&mut admin, &set).await;
            }
            let template = format!("ALTER DATABASE \"{name}\" IS_TEMPLATE true");
            exec(&mut admin, &template).await;
        }

        let scratch = Scratch::new("unused_templates").await;
        let mut config = Config::default();
        config
            .binds
            .insert("pg".into(), BindConfig::new(url.as_str()));
        let t = TestDb::builder()
            .config(config)
            .mode(Mode::Database)
            .migrations("pg", scratch.dir.clone())
            .start()
            .await
            .expect("start the test");
        let name = t.database("pg").expect("database mode").to_owned();
        scratch.adopt(&name).await;
        let template = format!("dbscope_tpl_{}", template_hash(&name));
        let (used, locked_in) = mark(&template)
            .await
            .expect("the template in use is marked");
        assert!(used >= now, "marked as used now: {used} against {now}");
        assert_eq!(locked_in, database);
        t.finish().await.unwrap();

        // Another process's sweep may be the one dropping it: it goes all the same.
        common::eventually("the template unused for 8 days is dropped", || async {
            oid(&stale).await.is_none()
        })
        .await;
        assert_eq!(
            mark(&recent).await,
            Some((now - day, database.clone())),
            "used a day ago: kept, its mark unchanged"
        );
        assert_eq!(
            mark(&elsewhere).await,
            Some((now - 8 * day, "/elsewhere".to_owned())),
            "another database's: left to its runs, which lock it there"
        );
        let (marked, _) = mark(&unmarked)
            .await
            .expect("without a mark: kept, and marked");
        assert!(marked >= now, "marked now: {marked} against {now}");
        for name in [&recent, &elsewhere, &unmarked] {
            drop_template(&mut admin, name).await;
        }
        admin.close().await.unwrap();
    })
    .await;
}

/// A test writes rows, bumps sequences and changes seed rows; the next test on the same slot
/// (the same database, not a clone) sees exactly the template's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_slot_is_back_to_the_template() {
    common::within_limit("reused_slot_is_back_to_the_template", async {
        let scratch = Scratch::new("reset").await;
        let (t, name, first_oid) = scratch.lease().await;
        assert_template_state(&t).await;
        exec_on(&name, DIRTY).await;
        t.finish().await.unwrap();
        // Still dirty once the test is over: the next lease has real work.
        assert_dirty(&name).await;

        for _ in 0..2 {
            let (t, again, oid) = scratch.lease().await;
            assert_eq!(
                (again.as_str(), oid),
                (name.as_str(), first_oid),
                "the same slot"
            );
            assert_template_state(&t).await;
            exec_on(&name, DIRTY).await;
            t.finish().await.unwrap();
        }
    })
    .await;
}

/// After DDL, the next lease of the slot clones it afresh (another oid), without the change;
/// after data alone, it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_makes_the_next_lease_clone_afresh() {
    common::within_limit("ddl_makes_the_next_lease_clone_afresh", async {
        let scratch = Scratch::new("ddl").await;
        let (t, name, mut last_oid) = scratch.lease().await;
        exec_on(&name, DIRTY).await;
        t.finish().await.unwrap();
        let cases: &[(&str, &str, &str)] = &[
            (
                "CREATE TABLE extra (id INT)",
                "SELECT count(*) FROM pg_class WHERE relname = 'extra'",
                "0",
            ),
            (
                "ALTER TABLE notes ADD COLUMN extra INT",
                "SELECT count(*) FROM pg_attribute WHERE attname = 'extra'",
                "0",
            ),
            (
                "CREATE FUNCTION extra() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                "SELECT count(*) FROM pg_proc WHERE proname = 'extra'",
                "0",
            ),
            (
                "GRANT SELECT ON colours TO PUBLIC",
                "SELECT count(*) FROM pg_class WHERE relname = 'colours' AND relacl IS NOT NULL",
                "0",
            ),
            (
                "SELECT lo_create(0)",
                "SELECT count(*) FROM pg_largeobject_metadata",
                "0",
            ),
            (
                "CREATE VIEW extra AS SELECT 1 AS one",
                "SELECT count(*) FROM pg_class WHERE relname = 'extra'",
                "0",
            ),
            (
                // Rows deleted, none written: caught by the catalogs' row counts alone.
                "DROP FUNCTION audit_colour() CASCADE",
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'colours_audit'",
                "1",
            ),
            (
                "DROP TABLE tags",
                "SELECT count(*) FROM pg_class WHERE relname = 'tags'",
                "1",
            ),
            (
                "TRUNCATE audit",
                "SELECT count(*) FROM pg_class WHERE relname = 'audit'",
                "1",
            ),
        ];
        for (ddl, probe, expected) in cases {
            let (t, again, oid) = scratch.lease().await;
            assert_eq!(
                (again.as_str(), oid),
                (name.as_str(), last_oid),
                "reused before `{ddl}`"
            );
            exec_on(&name, ddl).await;
            t.finish().await.unwrap();
            let (t, again, oid) = scratch.lease().await;
            assert_eq!(again, name);
            assert_ne!(oid, last_oid, "cloned afresh after `{ddl}`");
            assert_eq!(int(&t, probe).await.to_string(), *expected, "{ddl}");
            assert_template_state(&t).await;
            t.finish().await.unwrap();
            last_oid = oid;
        }
        // Changes to the database itself, made from outside it: its row in pg_database, and a
        // setting of its own.
        let outside = [
            (
                format!("ALTER DATABASE \"{name}\" CONNECTION LIMIT 50"),
                "SELECT datconnlimit::int8 FROM pg_database WHERE datname = current_database()",
                -1,
            ),
            (
                format!("ALTER DATABASE \"{name}\" SET work_mem = '8MB'"),
                "SELECT count(*) FROM pg_db_role_setting WHERE setdatabase = \
                 (SELECT oid FROM pg_database WHERE datname = current_database())",
                0,
            ),
        ];
        for (alter, probe, expected) in outside {
            let (t, _, oid) = scratch.lease().await;
            assert_eq!(oid, last_oid, "reused before `{alter}`");
            exec(&mut connect(None).await, &alter).await;
            t.finish().await.unwrap();
            let (t, _, oid) = scratch.lease().await;
            assert_ne!(oid, last_oid, "cloned afresh after `{alter}`");
            assert_eq!(int(&t, probe).await, expected, "{alter}");
            t.finish().await.unwrap();
            last_oid = oid;
        }
    })
    .await;
}

/// The file of table `table` in database `database`: TRUNCATE gives a table a new one, DELETE
/// does not.
async fn filenode(database: &str, table: &str) -> i64 {
    let mut conn = connect(Some(database)).await;
    let node = sqlx::query_scalar("SELECT pg_relation_filenode($1::text::regclass)::int8")
        .bind(table)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    node
}

/// A table with more rows than a DELETE is worth is truncated (a new file), and so is a table
/// referencing it, though it has two rows; the seed rows are copied back; and the slot is
/// still reused after (the TRUNCATE's catalog writes come before its watermark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_tables_are_truncated_with_those_referencing_them() {
    common::within_limit(
        "big_tables_are_truncated_with_those_referencing_them",
        async {
            let scratch = Scratch::new("big").await;
            let (t, name, first_oid) = scratch.lease().await;
            exec_on(&name, DIRTY).await;
            let many =
                "INSERT INTO colours (name) SELECT 'c' || g FROM generate_series(1, 10001) g";
            exec_on(&name, many).await;
            let (colours, notes, tags) = (
                filenode(&name, "colours").await,
                filenode(&name, "notes").await,
                filenode(&name, "tags").await,
            );
            t.finish().await.unwrap();

            let (t, again, oid) = scratch.lease().await;
            assert_eq!(
                (again.as_str(), oid),
                (name.as_str(), first_oid),
                "the same slot"
            );
            assert_template_state(&t).await;
            assert_ne!(
                filenode(&name, "colours").await,
                colours,
                "colours truncated"
            );
            assert_ne!(
                filenode(&name, "notes").await,
                notes,
                "notes truncated with colours"
            );
            assert_eq!(
                filenode(&name, "tags").await,
                tags,
                "tags (two rows) deleted from"
            );
            t.finish().await.unwrap();
            let (t, _, oid) = scratch.lease().await;
            assert_eq!(oid, first_oid, "still reused after a TRUNCATE of its own");
            t.finish().await.unwrap();
        },
    )
    .await;
}

/// A connection left on the slot by the previous test (a leaked pool), idle in a transaction
/// that holds a lock on a table the reset truncates, is terminated; the slot is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_left_on_a_slot_are_ended() {
    common::within_limit("connections_left_on_a_slot_are_ended", async {
        let scratch = Scratch::new("leak").await;
        let (t, name, first_oid) = scratch.lease().await;
        let mut leaked = connect(Some(&name)).await;
        exec(&mut leaked, DIRTY).await;
        exec(&mut leaked, "BEGIN; SELECT count(*) FROM notes").await;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut leaked)
            .await
            .unwrap();
        t.finish().await.unwrap();

        let (t, again, oid) = scratch.lease().await;
        assert_eq!(
            (again.as_str(), oid),
            (name.as_str(), first_oid),
            "the same slot"
        );
        let alive = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
        assert_eq!(int(&t, &alive).await, 0, "the leaked connection was ended");
        assert_template_state(&t).await;
        t.finish().await.unwrap();
        drop(leaked);
    })
    .await;
}

/// Leases a slot and writes to it. Run as a child of the tests below (with `CHILD_TAG` and
/// `CHILD_OWNER` set: its parent's template), it prints its database once leased and dirtied,
/// then waits for a line (or the end) on stdin before it ends its test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_leases_a_slot_and_writes() {
    common::within_limit("child_leases_a_slot_and_writes", async {
        let (scratch, child) = match Scratch::of_parent() {
            Some(scratch) => (scratch, true),
            None => (Scratch::new("child").await, false),
        };
        let (t, name, _) = scratch.lease().await;
        exec_on(&name, DIRTY).await;
        assert_eq!(int(&t, "SELECT count(*) FROM notes").await, 2);
        if child {
            println!("{LEASED}{name}");
            // On a thread of its own, not the runtime's: a read that never ends must not keep
            // the runtime from shutting down once the test has failed.
            let (read, wait) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = read.send(std::io::stdin().read_line(&mut String::new()));
            });
            wait.await.unwrap().unwrap();
        }
        t.finish().await.unwrap();
    })
    .await;
}

/// Runs `work` (reading a child's pipes) off the runtime, failing the test if it takes longer
/// than [`common::TEST_LIMIT`] instead of hanging it.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(move || common::within(common::TEST_LIMIT, work))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Starts `child_leases_a_slot_and_writes` as a child on test `tag`'s template; returns it
/// and its stdout.
fn spawn_child(tag: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_leases_a_slot_and_writes",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_TAG, tag)
        .env(CHILD_OWNER, std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the child test");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

/// Reads the child's stdout up to the name of the database it leased.
fn leased_by(stdout: &mut BufReader<ChildStdout>) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let read = stdout.read_line(&mut line).unwrap();
        assert!(read > 0, "the child ended before leasing a slot: {seen}");
        // Anywhere on the line: libtest prints `test <name> ... ` before the test runs.
        if let Some((_, name)) = line.trim_end().split_once(LEASED) {
            return name.to_owned();
        }
        seen.push_str(&line);
    }
}

/// Lets a waiting child finish, and checks that its test passed.
fn release_child(mut child: Child, stdout: BufReader<ChildStdout>) {
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut rest = String::new();
    for line in stdout.lines() {
        rest.push_str(&line.unwrap());
        rest.push('\n');
    }
    assert!(child.wait().unwrap().success(), "the child failed: {rest}");
}

/// The advisory lock of slot `name`, as `pg_locks` reads it: (classid, objid).
fn slot_lock(name: &str) -> (i64, i64) {
    let (hash, n) = name
        .strip_prefix(SLOT_PREFIX)
        .unwrap()
        .split_once('_')
        .unwrap();
    let digest = u64::from_str_radix(hash, 16).unwrap();
    (
        i64::try_from(digest & 0x7fff_ffff).unwrap(),
        n.parse().unwrap(),
    )
}

/// Two processes at once, each holding a lease, have different slots; the slot an earlier
/// test left is reused by one of them, not taken for a crashed run's leftover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_at_once_get_different_slots() {
    common::within_limit("two_processes_at_once_get_different_slots", async {
        let scratch = Scratch::new("procs").await;
        let (t, first, first_oid) = scratch.lease().await;
        t.finish().await.unwrap();

        let ((name_a, name_b), a, b) = blocking(|| {
            let (a, mut out_a) = spawn_child("procs");
            let (b, mut out_b) = spawn_child("procs");
            let names = (leased_by(&mut out_a), leased_by(&mut out_b));
            (names, (a, out_a), (b, out_b))
        })
        .await;
        assert_ne!(name_a, name_b, "different slots");
        let (holders_a, holders_b) = (lease_holders(&name_a).await, lease_holders(&name_b).await);
        assert_eq!(
            (holders_a.len(), holders_b.len()),
            (1, 1),
            "each leased once"
        );
        assert_ne!(holders_a, holders_b, "by different sessions");
        let reused = if name_a == first { &name_a } else { &name_b };
        assert_eq!(reused, &first, "one of them has the slot left before");
        assert_eq!(
            oid(reused).await,
            Some(first_oid),
            "reused, not dropped as a leftover"
        );
        blocking(move || {
            release_child(a.0, a.1);
            release_child(b.0, b.1);
        })
        .await;
        assert!(lease_holders(&name_a).await.is_empty());
        assert!(lease_holders(&name_b).await.is_empty());
    })
    .await;
}

/// A test process killed while it holds its slot: the lease goes with its connection, and the
/// next lease resets the same slot to the template's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_slot_is_reset_by_the_next_lease() {
    common::within_limit("killed_process_slot_is_reset_by_the_next_lease", async {
        let scratch = Scratch::new("crash").await;
        let (mut child, name) = blocking(|| {
            let (child, mut stdout) = spawn_child("crash");
            let name = leased_by(&mut stdout);
            (child, name)
        })
        .await;
        scratch.adopt(&name).await;
        let child_oid = oid(&name).await.expect("the child's slot");
        assert_eq!(lease_holders(&name).await.len(), 1, "the child holds it");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_dirty(&name).await;
        common::eventually(
            "the killed child's lease to go with its connection",
            || async { lease_holders(&name).await.is_empty() },
        )
        .await;

        let (t, again, oid) = scratch.lease().await;
        assert_eq!(
            (again.as_str(), oid),
            (name.as_str(), child_oid),
            "the same slot"
        );
        assert_template_state(&t).await;
        t.finish().await.unwrap();
    })
    .await;
}

/// `reuse(false)`: a fresh clone each time, dropped at the end, never a slot.
/// Two binds configured with different databases of one server, with one migration set, get a
/// template each: advisory locks are per database, so one shared template's build would be
/// locked by neither against the other (one dropping the other's half-built template).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_configured_database_has_a_template_of_its_own() {
    common::within_limit(
        "each_configured_database_has_a_template_of_its_own",
        async {
            let scratch = Scratch::new("per_database").await;
            let other = format!("dbscope_reuse_other_{}", std::process::id());
            let mut admin = connect(None).await;
            exec(&mut admin, &format!("DROP DATABASE IF EXISTS {other}")).await;
            exec(&mut admin, &format!("CREATE DATABASE {other}")).await;
            let mut config = Config::default();
            config.binds.insert("pg".into(), BindConfig::new(pg_url()));
            config
                .binds
                .insert("other".into(), BindConfig::new(on(&other)));
            let t = TestDb::builder()
                .config(config)
                .mode(Mode::Database)
                .migrations("pg", scratch.dir.clone())
                .migrations("other", scratch.dir.clone())
                .start()
                .await
                .expect("start the test");
            let slots = [
                t.database("pg").unwrap().to_owned(),
                t.database("other").unwrap().to_owned(),
            ];
            for slot in &slots {
                assert!(slot.starts_with(SLOT_PREFIX), "a slot: {slot}");
                scratch.adopt(slot).await;
            }
            assert_ne!(template_hash(&slots[0]), template_hash(&slots[1]));
            t.finish().await.unwrap();
            exec(&mut admin, &format!("DROP DATABASE {other} WITH (FORCE)")).await;
            admin.close().await.unwrap();
        },
    )
    .await;
}

/// A `finish` cut off at its awaits leaves no database behind: those it had not dropped yet are
/// dropped with the context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_finish_leaves_no_database() {
    common::within_limit("a_cancelled_finish_leaves_no_database", async {
        let scratch = Scratch::new("cancelled_finish").await;
        let mut polls = 1;
        loop {
            let mut config = Config::default();
            config.binds.insert("pg".into(), BindConfig::new(pg_url()));
            config.binds.insert("pg2".into(), BindConfig::new(pg_url()));
            let t = TestDb::builder()
                .config(config)
                .mode(Mode::Database)
                .reuse(false)
                .migrations("pg", scratch.dir.clone())
                .migrations("pg2", scratch.dir.clone())
                .start()
                .await
                .expect("start the test");
            let names: Vec<String> = ["pg", "pg2"]
                .iter()
                .map(|b| t.database(b).unwrap().to_owned())
                .collect();
            let finished = common::cancel_after(t.finish(), polls).await.is_some();
            for name in &names {
                assert_eq!(oid(name).await, None, "{name} left after {polls} polls");
            }
            if finished {
                break;
            }
            // One poll more each time at first, then half again as many: the cuts fall all
            // through `finish`, however long a loaded machine makes it (`within_limit` bounds
            // the whole).
            polls = if polls < 16 { polls + 1 } else { polls * 3 / 2 };
        }
        // The template these clones came from is this scratch's, dropped with it.
        let (t, slot, _) = scratch.lease().await;
        assert!(slot.starts_with(SLOT_PREFIX));
        t.finish().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reuse_each_test_gets_a_fresh_clone() {
    common::within_limit("without_reuse_each_test_gets_a_fresh_clone", async {
        let scratch = Scratch::new("optout").await;
        let (t, slot, _) = scratch.lease().await;
        t.finish().await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let t = scratch.builder().reuse(false).start().await.unwrap();
            let name = t.database("pg").unwrap().to_owned();
            assert!(!name.starts_with(SLOT_PREFIX), "not a slot: {name}");
            assert_template_state(&t).await;
            exec_on(&name, DIRTY).await;
            t.finish().await.unwrap();
            assert_eq!(oid(&name).await, None, "dropped at the end");
            seen.push(name);
        }
        assert_ne!(seen[0], seen[1]);
        assert!(lease_holders(&slot).await.is_empty(), "no slot leased");
    })
    .await;
}

/// `keep`: the database stays, is not a slot, and the next test (reusing) never gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_database_is_not_reused() {
    common::within_limit("kept_database_is_not_reused", async {
        let scratch = Scratch::new("keep").await;
        let t = scratch.builder().keep(true).start().await.unwrap();
        let kept = t.database("pg").unwrap().to_owned();
        assert!(!kept.starts_with(SLOT_PREFIX), "not a slot: {kept}");
        exec_on(&kept, DIRTY).await;
        t.finish().await.unwrap();
        let kept_oid = oid(&kept).await.expect("kept");

        let (t, slot, slot_oid) = scratch.lease().await;
        assert_ne!((slot.as_str(), slot_oid), (kept.as_str(), kept_oid));
        assert_template_state(&t).await;
        t.finish().await.unwrap();
        assert_dirty(&kept).await;
        let drop = format!("DROP DATABASE \"{kept}\" WITH (FORCE)");
        exec(&mut connect(None).await, &drop).await;
    })
    .await;
}

/// Slots whose template is gone are dropped by the next process's first lease, unless leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_of_a_gone_template_are_dropped_when_free() {
    common::within_limit("slots_of_a_gone_template_are_dropped_when_free", async {
        let scratch = Scratch::new("sweep").await;
        let hash = format!(
            "{:016x}",
            0xdead_0000_0000_0000_u64 | u64::from(std::process::id())
        );
        let (free, held) = (
            format!("{SLOT_PREFIX}{hash}_0"),
            format!("{SLOT_PREFIX}{hash}_1"),
        );
        let mut admin = connect(None).await;
        for name in [&free, &held] {
            exec(&mut admin, &format!("CREATE DATABASE \"{name}\"")).await;
        }
        let (key, n) = slot_lock(&held);
        exec(&mut admin, &format!("SELECT pg_advisory_lock({key}, {n})")).await;

        let leased = blocking(|| {
            let (child, mut stdout) = spawn_child("sweep");
            let leased = leased_by(&mut stdout);
            release_child(child, stdout);
            leased
        })
        .await;
        scratch.adopt(&leased).await;
        assert_eq!(oid(&free).await, None, "the free stale slot is dropped");
        assert!(oid(&held).await.is_some(), "the leased one stays");
        exec(
            &mut admin,
            &format!("SELECT pg_advisory_unlock({key}, {n})"),
        )
        .await;
        exec(
            &mut admin,
            &format!("DROP DATABASE \"{held}\" WITH (FORCE)"),
        )
        .await;
        admin.close().await.unwrap();
        drop(scratch);
    })
    .await;
}
