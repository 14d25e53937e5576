//! Resetting a leased slot to its template's state, verified from the server.
//!
//! **Schema.** Every row of a database's own catalogs (every table of `pg_catalog` not shared
//! between databases: `pg_class`, `pg_attribute`, `pg_type`, `pg_proc`, `pg_namespace`,
//! `pg_constraint`, `pg_index`, `pg_trigger`, `pg_rewrite`, `pg_attrdef`, `pg_depend`,
//! `pg_description`, `pg_enum`, `pg_policy`, `pg_sequence`, `pg_extension`,
//! `pg_largeobject_metadata`, `pg_largeobject`, `pg_event_trigger`, `pg_default_acl`, … as the
//! server lists them) is written by some transaction, its `xmin`. Any DDL, GRANT, new function,
//! large object or TRUNCATE inserts or updates such rows, giving them an `xmin` at or after the
//! slot's watermark (the first transaction id after its last reset); any DROP lowers a
//! catalog's row count below the template's. So: no catalog row at or after the watermark, and
//! every catalog's row count the template's, means the schema is the template's. Two catalogs
//! are left out, being written by ANALYZE (autovacuum's too) and holding no schema:
//! `pg_statistic` and `pg_statistic_ext_data`. VACUUM and ANALYZE update `pg_class` in place,
//! keeping its `xmin`. The database's own row in `pg_database` (GRANT on it, ALTER DATABASE)
//! and its settings in `pg_db_role_setting` (ALTER DATABASE … SET, which a clone never copies)
//! are checked the same way, by the lease, as it closes the slot to connections.
//!
//! **Data.** A table empty in the template and with a row now is emptied. A table with rows in
//! the template is restored (emptied, then its rows copied in from the template, read once per
//! process) when its row count differs or a row has an `xmin` at or after the watermark: the
//! same test, exact, with no hashing. Every sequence whose `last_value` or `is_called` differs
//! is set back with `setval`. All in one transaction, with `session_replication_role = replica`
//! so that no trigger of the app's fires and no foreign key is checked meanwhile.
//!
//! A table is emptied with DELETE up to [`DELETE_MAX`] rows, with one TRUNCATE beyond: TRUNCATE
//! makes new files for the table and each of its indexes, tens of milliseconds on a slow disk,
//! where deleting a test's few rows takes a fraction of one. (TRUNCATE also gives the table a new
//! `pg_class` row, which the slot's watermark, taken after, covers.) Tables that must go with a
//! truncated one (referencing it, or its partitions) are truncated too, and restored if they had
//! rows. A role that may not set `session_replication_role` gets TRUNCATE alone, and a fresh
//! clone when rows must be copied back or the schema has triggers of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// Why a slot cannot be reset in place: it is cloned afresh instead.
#[derive(Debug)]
pub(super) struct Stale(pub(super) String);

impl From<sqlx::Error> for Stale {
    fn from(e: sqlx::Error) -> Self {
        Self(format!("a statement failed: {e}"))
    }
}

/// The first transaction id after a slot's last reset (an `xid8`, with its epoch).
#[derive(Clone, Copy, Debug)]
pub(super) struct Watermark(pub(super) u64);

/// The oldest watermark trusted, in transactions: beyond it `age()` comparisons could wrap.
const WATERMARK_MAX_AGE: i64 = 1 << 30;
/// The most rows a table is emptied of with DELETE rather than TRUNCATE.
const DELETE_MAX: i64 = 10_000;

/// A table of the template's, as the reset needs it.
#[derive(Debug)]
struct Table {
    /// Schema-qualified and quoted.
    name: String,
    partitioned: bool,
    rows: i64,
    /// For a table with rows: the INSERT that puts them back, written by the server from the
    /// template (its rows in their text form, each column through its type's own output and
    /// input, as COPY's text format).
    restore: Option<String>,
}

#[derive(Debug)]
struct Sequence {
    oid: i64,
    /// Schema-qualified and quoted.
    name: String,
    last_value: i64,
    is_called: bool,
}

/// What a template holds, read once per process: its catalogs' row counts, its tables and
/// rows, its sequences.
#[derive(Debug)]
pub(super) struct Baseline {
    catalogs: Vec<(String, i64)>,
    tables: Vec<Table>,
    /// `(a, b)`: truncating table `a` takes truncating table `b` (a foreign key of `b`'s
    /// references `a`, or `b` is a partition of `a`).
    edges: Vec<(usize, usize)>,
    sequences: Vec<Sequence>,
    /// Triggers other than foreign keys' exist.
    user_triggers: bool,
    /// The server's version (`server_version_num`).
    server_version: u32,
    /// The query that surveys a slot (see [`Baseline::survey_sql`]).
    survey: String,
}

/// What a slot's reset does.
#[derive(Debug, Default)]
struct Plan {
    /// With `session_replication_role = replica`.
    replica: bool,
    truncate: Vec<usize>,
    delete: Vec<usize>,
    restore: Vec<usize>,
    setval: Vec<usize>,
}

impl Baseline {
    /// The baseline of the template at `url` (oid `oid`), read on first use in this process.
    pub(super) async fn of(url: &str, oid: i64) -> Result<Arc<Self>, Stale> {
        type Cache = Mutex<Option<HashMap<(String, i64), Arc<Baseline>>>>;
        static READ: Cache = Mutex::new(None);
        let key = (url.to_owned(), oid);
        let cached =
            |read: &mut Option<HashMap<_, _>>| read.get_or_insert_default().get(&key).cloned();
        if let Some(baseline) = cached(&mut READ.lock().expect("not poisoned")) {
            return Ok(baseline);
        }
        let mut conn = PgConnection::connect(url).await?;
        let read = Self::read(&mut conn).await;
        conn.close().await.ok();
        let baseline = Arc::new(read?);
        let mut read = READ.lock().expect("not poisoned");
        // Two tests reading it at once keep the first: both read the same template.
        let kept = read.get_or_insert_default().entry(key).or_insert(baseline);
        Ok(kept.clone())
    }

    async fn read(conn: &mut PgConnection) -> Result<Self, Stale> {
        let server_version = conn.server_version_num().unwrap_or_default();
        let catalogs = catalog_counts(conn).await?;
        let relations: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT c.oid::int8, format('%I.%I', n.nspname, c.relname), c.relkind::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'S') AND c.relpersistence <> 't' \
             AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
             ORDER BY c.oid",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut tables = Vec::new();
        let mut table_oids = Vec::new();
        let mut sequences = Vec::new();
        let mut values = Vec::new();
        for (oid, name, kind) in relations {
            match kind.as_str() {
                "S" => {
                    values.push(format!(
                        "SELECT {}, last_value, is_called::int::int8 FROM {name}",
                        sequences.len()
                    ));
                    sequences.push((oid, name));
                }
                _ => {
                    let partitioned = kind == "p";
                    if !partitioned {
                        values.push(format!(
                            "SELECT {}, count(*), -1::int8 FROM ONLY {name}",
                            1_000_000 + tables.len()
                        ));
                    }
                    table_oids.push(oid);
                    tables.push(Table {
                        name,
                        partitioned,
                        rows: 0,
                        restore: None,
                    });
                }
            }
        }
        let mut seqs: Vec<Sequence> = sequences
            .into_iter()
            .map(|(oid, name)| Sequence {
                oid,
                name,
                last_value: 0,
                is_called: false,
            })
            .collect();
        if !values.is_empty() {
            let rows: Vec<(i32, i64, i64)> =
                sqlx::query_as(AssertSqlSafe(values.join(" UNION ALL ")))
                    .fetch_all(&mut *conn)
                    .await?;
            for (i, a, b) in rows {
                let i = usize::try_from(i).expect("our own indices");
                match i.checked_sub(1_000_000) {
                    Some(t) => tables[t].rows = a,
                    None => (seqs[i].last_value, seqs[i].is_called) = (a, b == 1),
                }
            }
        }
        for (table, &oid) in tables.iter_mut().zip(&table_oids) {
            if table.rows > 0 {
                table.restore = Some(restore_sql(conn, oid, &table.name).await?);
            }
        }
        let edges = dependent_tables(conn, &table_oids).await?;
        let user_triggers: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE NOT tgisinternal)")
                .fetch_one(&mut *conn)
                .await?;
        let mut baseline = Self {
            catalogs,
            tables,
            edges,
            sequences: seqs,
            user_triggers,
            server_version,
            survey: String::new(),
        };
        baseline.survey = baseline.survey_sql();
        Ok(baseline)
    }

    /// One query reading all a slot's reset needs, as rows `(kind, index, a, b)`:
    /// `w`: transactions since the watermark; `r`: 1 if the role may set
    /// `session_replication_role`; `d`: the database's oid; `c`: a catalog's row count and rows at or after the watermark;
    /// `e`: the rows of a table empty in the template (counted up to [`DELETE_MAX`] + 1); `t`: a
    /// table with rows in the template, as `c`; `s`: a sequence's `last_value` and `is_called`.
    /// `$1` is the watermark's 32-bit xid, `$2` the whole of it.
    fn survey_sql(&self) -> String {
        let new = "count(*) FILTER (WHERE age(xmin) <= age($1::xid))";
        let replica = match self.server_version {
            150_000.. => "has_parameter_privilege('session_replication_role', 'SET')",
            _ => "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
        };
        let mut parts = vec![
            "SELECT 'w'::text, 0, pg_snapshot_xmax(pg_current_snapshot())::text::int8 - $2, \
             0::int8"
                .to_owned(),
            format!("SELECT 'r', 0, ({replica})::int::int8, 0"),
            "SELECT 'd', 0, oid::int8, 0 FROM pg_database WHERE datname = current_database()"
                .to_owned(),
        ];
        for (i, (catalog, _)) in self.catalogs.iter().enumerate() {
            parts.push(format!("SELECT 'c', {i}, count(*), {new} FROM {catalog}"));
        }
        for (i, table) in self.tables.iter().enumerate() {
            let name = &table.name;
            if table.partitioned {
                continue;
            }
            parts.push(match table.rows {
                0 => format!(
                    "SELECT 'e', {i}, (SELECT count(*) FROM (SELECT FROM ONLY {name} LIMIT {}) s), 0",
                    DELETE_MAX + 1
                ),
                _ => format!("SELECT 't', {i}, count(*), {new} FROM ONLY {name}"),
            });
        }
        for (i, seq) in self.sequences.iter().enumerate() {
            parts.push(format!(
                "SELECT 's', {i}, last_value, is_called::int::int8 FROM {}",
                seq.name
            ));
        }
        parts.join(" UNION ALL ")
    }

    /// Verifies slot `oid`'s schema and puts its data back to the template's, on `slot` (a
    /// connection to it, alone on it).
    pub(super) async fn reset(
        &self,
        slot: &mut PgConnection,
        oid: i64,
        watermark: Watermark,
    ) -> Result<(), Stale> {
        let whole =
            i64::try_from(watermark.0).map_err(|_| Stale("a watermark out of range".into()))?;
        let rows: Vec<(String, i32, i64, i64)> = sqlx::query_as(AssertSqlSafe(self.survey.clone()))
            .bind((watermark.0 & 0xffff_ffff).to_string())
            .bind(whole)
            .fetch_all(&mut *slot)
            .await?;
        // Per table: its rows now, if they are not the template's.
        let mut dirty = vec![None; self.tables.len()];
        let mut replica = false;
        let mut setval = Vec::new();
        for (kind, i, a, b) in rows {
            let i = usize::try_from(i).expect("our own indices");
            match kind.as_str() {
                "w" if !(0..=WATERMARK_MAX_AGE).contains(&a) => {
                    return Err(Stale(format!("its watermark is {a} transactions old")));
                }
                "r" => replica = a == 1,
                "d" if a != oid => return Err(Stale("it is not the database looked up".into())),
                "c" if b > 0 || a != self.catalogs[i].1 => {
                    let catalog = &self.catalogs[i].0;
                    return Err(Stale(format!("{catalog} changed since the last reset")));
                }
                "e" if a > 0 => dirty[i] = Some(a),
                "t" if b > 0 || a != self.tables[i].rows => dirty[i] = Some(a),
                "s" => {
                    let seq = &self.sequences[i];
                    if (a, b == 1) != (seq.last_value, seq.is_called) {
                        setval.push(i);
                    }
                }
                _ => {}
            }
        }
        let mut plan = self.plan(&dirty, replica)?;
        plan.setval = setval;
        self.apply(slot, &plan).await?;
        Ok(())
    }

    /// How to empty (and refill) the tables whose rows now are `dirty`'s.
    fn plan(&self, dirty: &[Option<i64>], replica: bool) -> Result<Plan, Stale> {
        // DELETE needs the replica role: it would fire the app's triggers and check foreign keys.
        let mut truncate: Vec<bool> = dirty
            .iter()
            .map(|rows| rows.is_some_and(|n| !replica || n > DELETE_MAX))
            .collect();
        self.close_over(&mut truncate);
        let mut plan = Plan::default();
        for (i, table) in self.tables.iter().enumerate() {
            match (truncate[i], dirty[i]) {
                (true, _) => plan.truncate.push(i),
                (false, Some(_)) => plan.delete.push(i),
                (false, None) => continue,
            }
            if table.restore.is_some() {
                plan.restore.push(i);
            }
        }
        let emptied = !plan.truncate.is_empty() || !plan.delete.is_empty();
        if !replica && (!plan.restore.is_empty() || (self.user_triggers && emptied)) {
            return Err(Stale(
                "putting its rows back takes setting session_replication_role, which the role \
                 may not"
                    .into(),
            ));
        }
        plan.replica = replica && emptied;
        Ok(plan)
    }

    /// Adds to `truncate` every table that must be truncated with one in it.
    fn close_over(&self, truncate: &mut [bool]) {
        let mut grew = true;
        while grew {
            grew = false;
            for &(a, b) in &self.edges {
                if truncate[a] && !truncate[b] {
                    truncate[b] = true;
                    grew = true;
                }
            }
        }
    }

    /// Runs `plan` in one transaction, in one round trip.
    async fn apply(&self, slot: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
        if plan.truncate.is_empty() && plan.delete.is_empty() && plan.setval.is_empty() {
            return Ok(());
        }
        // Not waiting for the disk: see the slot module on why a lost reset is no harm.
        let mut batch = vec![
            "BEGIN".to_owned(),
            "SET LOCAL synchronous_commit = off".to_owned(),
        ];
        if plan.replica {
            batch.push("SET LOCAL session_replication_role = replica".to_owned());
        }
        if !plan.truncate.is_empty() {
            let names: Vec<String> = plan
                .truncate
                .iter()
                .map(|&i| {
                    let table = &self.tables[i];
                    // ONLY: an inheritance parent's children are not its rows. A partitioned
                    // table takes ONLY nowhere; its partitions are in the list already.
                    match table.partitioned {
                        true => table.name.clone(),
                        false => format!("ONLY {}", table.name),
                    }
                })
                .collect();
            batch.push(format!("TRUNCATE {}", names.join(", ")));
        }
        for &i in &plan.delete {
            batch.push(format!("DELETE FROM ONLY {}", self.tables[i].name));
        }
        for &i in &plan.restore {
            let insert = self.tables[i].restore.as_deref();
            batch.push(insert.expect("restored tables have rows").to_owned());
        }
        for &i in &plan.setval {
            let seq = &self.sequences[i];
            batch.push(format!(
                "SELECT setval({}::oid::regclass, {}, {})",
                seq.oid, seq.last_value, seq.is_called
            ));
        }
        batch.push("COMMIT".to_owned());
        sqlx::raw_sql(AssertSqlSafe(batch.join(";\n")))
            .execute(&mut *slot)
            .await?;
        Ok(())
    }
}

/// Every per-database catalog (but the statistics) and its row count.
async fn catalog_counts(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT format('pg_catalog.%I', relname) FROM pg_class \
         WHERE relnamespace = 'pg_catalog'::regnamespace AND relkind = 'r' AND NOT relisshared \
         AND relname NOT IN ('pg_statistic', 'pg_statistic_ext_data') ORDER BY relname",
    )
    .fetch_all(&mut *conn)
    .await?;
    let counts: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| format!("SELECT {i}, count(*) FROM {name}"))
        .collect();
    let rows: Vec<(i32, i64)> = sqlx::query_as(AssertSqlSafe(counts.join(" UNION ALL ")))
        .fetch_all(&mut *conn)
        .await?;
    let mut out: Vec<(String, i64)> = names.into_iter().map(|n| (n, 0)).collect();
    for (i, count) in rows {
        out[usize::try_from(i).expect("our own indices")].1 = count;
    }
    Ok(out)
}

/// The edges of [`Baseline::edges`], between the tables whose oids are `oids`.
async fn dependent_tables(
    conn: &mut PgConnection,
    oids: &[i64],
) -> Result<Vec<(usize, usize)>, sqlx::Error> {
    let pairs: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT confrelid::int8, conrelid::int8 FROM pg_constraint WHERE contype = 'f' \
         UNION SELECT i.inhparent::int8, i.inhrelid::int8 FROM pg_inherits i \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relkind = 'p'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let index: HashMap<i64, usize> = oids.iter().enumerate().map(|(i, &o)| (o, i)).collect();
    Ok(pairs
        .into_iter()
        .filter_map(|(a, b)| Some((*index.get(&a)?, *index.get(&b)?)))
        .filter(|(a, b)| a != b)
        .collect())
}

/// The INSERT that puts table `oid`'s rows back as they are now: all its columns but the
/// generated ones (computed again), identity columns included (`OVERRIDING SYSTEM VALUE`), the
/// rows as an array of the table's row type, quoted by the server (`%L`).
async fn restore_sql(conn: &mut PgConnection, oid: i64, name: &str) -> Result<String, sqlx::Error> {
    let sql = format!(
        "WITH c AS (SELECT attname, attnum FROM pg_attribute WHERE attrelid = {oid} \
         AND attnum > 0 AND NOT attisdropped AND attgenerated = '') \
         SELECT format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM unnest(%L::%s[]) r', \
           $1::text, \
           (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM c), \
           (SELECT string_agg('(r).' || quote_ident(attname), ', ' ORDER BY attnum) FROM c), \
           (SELECT array_agg(t)::text FROM ONLY {name} t), \
           $1::text)"
    );
    sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(name)
        .fetch_one(conn)
        .await
}
