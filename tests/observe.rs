//! Metrics and tracing, against SQLite, PostgreSQL and MariaDB: the OpenTelemetry database
//! client metrics read back from a local recorder after known operations, a Prometheus render,
//! and the spans a capturing subscriber receives.
//!
//! Each bind registers its metric handles against the recorder in force when it is built, so
//! each test builds its manager inside `metrics::with_local_recorder`: the test's recorder is
//! its own, whatever other tests run at the same time.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Kind, Suite, TestDb, create_table, eventually, fetch_i64, insert, sql};
use dbscope::{BindConfig, BindManager, current_session};
use metrics::{Key, Unit};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing::Instrument;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const POOL: &str = "db.client.connection.pool.name";

/// One snapshot of a recorder: each metric by name and labels.
struct Metrics(Vec<(MetricKind, Key, Option<Unit>, DebugValue)>);

impl Metrics {
    fn take(snapshotter: &Snapshotter) -> Self {
        let all = snapshotter.snapshot().into_vec();
        Self(
            all.into_iter()
                .map(|(ck, unit, _, value)| {
                    let (kind, key) = ck.into_parts();
                    (kind, key, unit, value)
                })
                .collect(),
        )
    }

    /// The value of `name` whose labels include every one of `labels`; exactly one must match.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> (&DebugValue, Option<Unit>) {
        let found: Vec<_> = self
            .0
            .iter()
            .filter(|(_, key, _, _)| {
                key.name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {:?}", self.names());
        (&found[0].3, found[0].2)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            (DebugValue::Counter(n), _) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.get(name, labels) {
            (DebugValue::Gauge(v), _) => v.into_inner(),
            other => panic!("{name} is not a gauge: {other:?}"),
        }
    }

    /// The values a histogram recorded, checking it is in seconds.
    fn seconds(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.get(name, labels) {
            (DebugValue::Histogram(values), unit) => {
                assert_eq!(unit, Some(Unit::Seconds), "{name} is in seconds");
                values.iter().map(|v| v.into_inner()).collect()
            }
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    fn names(&self) -> Vec<String> {
        self.0.iter().map(|(_, k, _, _)| format!("{k:?}")).collect()
    }
}

/// A manager whose bind `main` records into a fresh recorder.
fn recorded(config: BindConfig) -> (BindManager, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let manager = metrics::with_local_recorder(&recorder, || {
        BindManager::builder().bind("main", config).build().unwrap()
    });
    (manager, snapshotter)
}

async fn quiet<B: Suite>(manager: &BindManager) {
    eventually("every connection back in the pool", || async {
        let status = &manager.status()[0];
        status.in_use == 0 && status.waiting == 0
    })
    .await;
}

/// Three sessions, two at once, and known statements: the counts, gauges and histograms say
/// exactly that.
async fn pool_metrics_count_known_work<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let (manager, snapshotter) = recorded(db.config().max_connections(4));
    create_table::<B>(&manager, &db).await; // 1 checkout, 1 connection, 1 statement, committed
    let bind = manager.bind::<B::Db>("main").unwrap();
    let (mut b, mut c) = (bind.session(), bind.session());
    insert(&mut b, &db, 1).await.unwrap(); // reuses the idle connection
    // Opens a second connection; touches no table (SQLite would lock b's commit out).
    sqlx::query("SELECT 1").execute(&mut c).await.unwrap();
    let missing = sqlx::query("SELECT * FROM dbscope_no_such_table")
        .execute(&mut c)
        .await;
    assert!(missing.is_err());
    b.commit().await.unwrap();
    drop(b);
    drop(c); // rolled back (in the background)
    quiet::<B>(&manager).await;

    let m = Metrics::take(&snapshotter);
    let pool = [(POOL, "main")];
    let state = |s| [(POOL, "main"), ("db.client.connection.state", s)];
    assert_eq!(m.gauge("db.client.connection.count", &state("idle")), 2.0);
    assert_eq!(m.gauge("db.client.connection.count", &state("used")), 0.0);
    assert_eq!(m.gauge("db.client.connection.max", &pool), 4.0);
    assert_eq!(m.gauge("db.client.connection.idle.min", &pool), 0.0);
    assert_eq!(m.gauge("db.client.connection.pending_requests", &pool), 0.0);
    assert_eq!(m.counter("db.client.connection.timeouts", &pool), 0);
    // In-memory SQLite opens its keeper too (a connection, outside the pool's counts).
    let keeper = usize::from(B::KIND == Kind::SqliteMemory);
    assert_eq!(
        m.seconds("db.client.connection.create_time", &pool).len(),
        2 + keeper
    );
    assert_eq!(m.seconds("db.client.connection.wait_time", &pool).len(), 3);
    let used = m.seconds("db.client.connection.use_time", &pool);
    assert_eq!(used.len(), 3, "one per checkout, returned");
    assert!(
        used.iter().all(|s| *s >= 0.0 && *s < 60.0),
        "seconds: {used:?}"
    );
    let system = match B::KIND {
        Kind::Postgres => "postgresql",
        Kind::MySql => "mysql",
        _ => "sqlite",
    };
    let succeeded: Vec<_> =
        m.0.iter()
            .filter(|(_, k, _, _)| {
                k.name() == "db.client.operation.duration"
                    && !k.labels().any(|l| l.key() == "error.type")
            })
            .collect();
    assert_eq!(succeeded.len(), 1);
    let (_, key, unit, value) = succeeded[0];
    assert_eq!(*unit, Some(Unit::Seconds));
    assert!(
        key.labels()
            .any(|l| l.key() == "db.system.name" && l.value() == system)
    );
    match value {
        DebugValue::Histogram(values) => assert_eq!(values.len(), 3, "CREATE, INSERT, SELECT 1"),
        other => panic!("not a histogram: {other:?}"),
    }
    let failed = [(POOL, "main"), ("error.type", "_OTHER")];
    assert_eq!(m.seconds("db.client.operation.duration", &failed).len(), 1);
    let outcome = |o| [(POOL, "main"), ("outcome", o)];
    assert_eq!(m.counter("dbscope.transactions", &outcome("committed")), 2);
    assert_eq!(
        m.counter("dbscope.transactions", &outcome("rolled_back")),
        1
    );
    assert_eq!(m.counter("dbscope.connection.recovered", &pool), 0);
    let discarded = [(POOL, "main"), ("reason", "dead")];
    assert_eq!(m.counter("dbscope.connection.discarded", &discarded), 0);
}

/// The connection gauges follow every connection in and out: opened, handed out, given back,
/// closed idle at the pool's close, and closed as sessions give theirs back after it.
async fn connection_gauges_follow_every_way_out<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let (manager, snapshotter) = recorded(db.config().max_connections(3));
    let bind = manager.bind::<B::Db>("main").unwrap();
    // The debugging recorder's snapshot resets a gauge it reads (a swap with 0), and the pool
    // moves these gauges by increments: the counts are the sum of the snapshots.
    let total = std::cell::Cell::new((0.0, 0.0));
    let counts = || {
        let m = Metrics::take(&snapshotter);
        let state = |s| [(POOL, "main"), ("db.client.connection.state", s)];
        let (idle, used) = total.get();
        total.set((
            idle + m.gauge("db.client.connection.count", &state("idle")),
            used + m.gauge("db.client.connection.count", &state("used")),
        ));
        total.get()
    };
    assert_eq!(counts(), (0.0, 0.0), "nothing opened yet");
    let mut sessions = vec![bind.session(), bind.session(), bind.session()];
    for session in &mut sessions {
        sqlx::query("SELECT 1")
            .execute(&mut *session)
            .await
            .unwrap();
    }
    assert_eq!(counts(), (0.0, 3.0), "three held");
    let mut first = sessions.remove(0);
    first.commit().await.unwrap();
    drop(first);
    assert_eq!(counts(), (1.0, 2.0), "one given back");
    let closing = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.close(Duration::from_secs(30)).await })
    };
    eventually("the idle connection closed with the pool", || async {
        counts() == (0.0, 2.0)
    })
    .await;
    for mut session in sessions {
        session.commit().await.unwrap();
    }
    closing.await.unwrap().unwrap();
    assert_eq!(
        counts(),
        (0.0, 0.0),
        "the held ones closed as they came back"
    );
}

/// A pool of one, held: the second checkout times out, and is counted.
async fn checkout_timeout_is_counted<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let config = db
        .config()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(200));
    let (manager, snapshotter) = recorded(config);
    let bind = manager.bind::<B::Db>("main").unwrap();
    let mut holder = bind.session();
    holder.begin().await.unwrap();
    let err = bind.session().begin().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let m = Metrics::take(&snapshotter);
    let pool = [(POOL, "main")];
    assert_eq!(m.counter("db.client.connection.timeouts", &pool), 1);
    assert_eq!(m.gauge("db.client.connection.pending_requests", &pool), 0.0);
    assert_eq!(m.seconds("db.client.connection.wait_time", &pool).len(), 1);
    let used = [(POOL, "main"), ("db.client.connection.state", "used")];
    assert_eq!(m.gauge("db.client.connection.count", &used), 1.0);
    drop(holder);
}

/// Scopes count by outcome; their sessions' transactions too.
async fn scope_outcomes_are_counted<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let (manager, snapshotter) = recorded(db.config());
    create_table::<B>(&manager, &db).await;
    for (id, ok) in [(1, true), (2, false), (3, true)] {
        let db = &db;
        let _ = dbscope::scope(&manager, async move {
            let mut session = current_session::<B::Db>("main").await?;
            let stmt = format!("INSERT INTO {} (id, v) VALUES ({id}, 'x')", db.table);
            sqlx::query(sql(stmt)).execute(&mut session).await?;
            if ok {
                Ok(())
            } else {
                Err(dbscope::Error::from(sqlx::Error::RowNotFound))
            }
        })
        .await;
    }
    quiet::<B>(&manager).await;
    let m = Metrics::take(&snapshotter);
    assert_eq!(m.counter("dbscope.scopes", &[("outcome", "committed")]), 2);
    assert_eq!(
        m.counter("dbscope.scopes", &[("outcome", "rolled_back")]),
        1
    );
    assert_eq!(m.counter("dbscope.scopes", &[("outcome", "partial")]), 0);
    let outcome = |o| [(POOL, "main"), ("outcome", o)];
    assert_eq!(m.counter("dbscope.transactions", &outcome("committed")), 3);
    assert_eq!(
        m.counter("dbscope.transactions", &outcome("rolled_back")),
        1
    );
}

/// What a Prometheus scrape shows: the OpenTelemetry names (dots as underscores), the pool
/// label, units as suffixes where the exporter adds them.
async fn prometheus_render_names_every_metric<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let manager = metrics::with_local_recorder(&recorder, || {
        BindManager::builder()
            .bind("main", db.config())
            .build()
            .unwrap()
    });
    create_table::<B>(&manager, &db).await;
    quiet::<B>(&manager).await;
    let text = handle.render();
    for line in [
        "db_client_connection_count{db_client_connection_pool_name=\"main\",db_client_connection_state=\"idle\"} 1",
        "db_client_connection_count{db_client_connection_pool_name=\"main\",db_client_connection_state=\"used\"} 0",
        "db_client_connection_max{db_client_connection_pool_name=\"main\"} 10",
        "db_client_connection_timeouts{db_client_connection_pool_name=\"main\"} 0",
        "dbscope_transactions{db_client_connection_pool_name=\"main\",outcome=\"committed\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    for name in [
        "db_client_connection_idle_min",
        "db_client_connection_pending_requests",
        "db_client_connection_create_time",
        "db_client_connection_wait_time",
        "db_client_connection_use_time",
        "db_client_operation_duration",
        "# HELP db_client_operation_duration",
    ] {
        assert!(text.contains(name), "missing {name} in:\n{text}");
    }
    assert!(!text.contains("password"), "{text}");
}

// ----- spans -----

/// A span as the capturing layer saw it: its name, fields, and parent's name.
#[derive(Clone, Debug)]
struct Captured {
    name: &'static str,
    parent: Option<&'static str>,
    fields: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Where a span's captured record sits in the list.
struct Index(usize);

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let span = ctx.span(id).expect("a new span");
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut all = self.0.lock().unwrap();
        all.push(Captured {
            name: span.name(),
            parent: span.parent().map(|p| p.name()),
            fields,
        });
        span.extensions_mut().insert(Index(all.len() - 1));
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let span = ctx.span(id).expect("a recorded span");
        let extensions = span.extensions();
        let Some(Index(i)) = extensions.get::<Index>() else {
            return;
        };
        values.record(&mut Fields(&mut self.0.lock().unwrap()[*i].fields));
    }
}

impl Capture {
    fn spans(&self, name: &str) -> Vec<Captured> {
        let all = self.0.lock().unwrap();
        all.iter().filter(|s| s.name == name).cloned().collect()
    }
}

/// Runs `work` with a subscriber that captures every span.
async fn captured<F: Future<Output = ()>>(work: F) -> Capture {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    work.with_subscriber(subscriber).await;
    capture
}

/// A session's span and its statements' carry the OpenTelemetry attributes; no query text
/// unless the bind asks; failures recorded; no password anywhere.
async fn spans_carry_the_attributes<B: Suite>() {
    let db = TestDb::new(B::KIND).await;
    let url = match B::KIND {
        // Trust authentication ignores the password: a sentinel that must never show.
        Kind::Postgres => db.url.replacen("postgres@", "postgres:sentinel-pw-7@", 1),
        _ => db.url.clone(),
    };
    let config = BindConfig::new(url.as_str()).application_name(db.tag.as_str());
    let manager = BindManager::builder()
        .bind("main", config.clone())
        .bind("texts", config.trace_query_text(true))
        .build()
        .unwrap();
    create_table::<B>(&manager, &db).await; // outside the capture
    let capture = captured(async {
        let request = tracing::info_span!("request");
        async {
            let mut session = manager.session::<B::Db>("main").unwrap();
            insert(&mut session, &db, 1).await.unwrap();
            let count = format!("SELECT COUNT(*) FROM {}", db.table);
            let n = fetch_i64(&mut session, sql(count)).await.unwrap();
            assert_eq!(n, 1);
            session.commit().await.unwrap();
            let failed = sqlx::query("SELECT * FROM dbscope_no_such_table")
                .fetch_optional(&mut session)
                .await;
            assert!(failed.is_err());
            drop(session);
            let mut texts = manager.session::<B::Db>("texts").unwrap();
            sqlx::query("SELECT 1").execute(&mut texts).await.unwrap();
        }
        .instrument(request)
        .await;
    })
    .await;

    let sessions = capture.spans("db.session");
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let (system, address, port) = match B::KIND {
        Kind::Postgres => ("postgresql", Some("127.0.0.1"), Some("5432")),
        Kind::MySql => ("mysql", Some("127.0.0.1"), Some("3306")),
        _ => ("sqlite", None, None),
    };
    for span in &sessions {
        assert_eq!(span.parent, Some("request"));
        assert_eq!(span.fields["db.system.name"], system);
        assert_eq!(
            span.fields.get("server.address").map(String::as_str),
            address
        );
        assert_eq!(span.fields.get("server.port").map(String::as_str), port);
        assert!(span.fields.contains_key("db.namespace"), "{span:?}");
    }
    assert_eq!(sessions[0].fields[POOL], "main");
    if B::KIND == Kind::Postgres {
        assert_eq!(sessions[0].fields["db.namespace"], "test");
    }
    let statements = capture.spans("db.statement");
    assert_eq!(statements.len(), 4, "{statements:?}");
    assert!(statements.iter().all(|s| s.parent == Some("db.session")));
    let ops: Vec<_> = statements
        .iter()
        .map(|s| {
            s.fields
                .get("db.operation.name")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(ops, ["INSERT", "SELECT", "SELECT", "SELECT"]);
    assert!(
        statements[..3]
            .iter()
            .all(|s| !s.fields.contains_key("db.query.text"))
    );
    assert_eq!(statements[3].fields["db.query.text"], "SELECT 1");
    assert!(!statements[1].fields.contains_key("error.type"));
    assert_eq!(statements[2].fields["otel.status_code"], "ERROR");
    assert!(!statements[2].fields["error.type"].is_empty());
    let all = capture.0.lock().unwrap();
    for span in all.iter() {
        for value in span.fields.values() {
            assert!(!value.contains("sentinel-pw-7"), "{span:?}");
        }
    }
}

macro_rules! suite {
    ($module:ident, $suite:ty) => {
        common::async_tests!($module, $suite:
            pool_metrics_count_known_work,
            connection_gauges_follow_every_way_out,
            checkout_timeout_is_counted,
            scope_outcomes_are_counted,
            prometheus_render_names_every_metric,
            spans_carry_the_attributes,
        );
    };
}

suite!(sqlite, common::SqliteFile);
suite!(sqlite_memory, common::SqliteMemory);
suite!(postgres, common::Pg);
suite!(mariadb, common::MySql);
