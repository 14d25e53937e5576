//! What the CLI prints: progress on stderr as it happens, results on stdout (text or JSON),
//! every byte passed through the scrubber first.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use dbscope::{Config, Direction, MigrateEvent};

/// Removes every bind's password from text about to be printed. dbscope's own messages never
/// hold one; this is the second line of defence, for a driver's text quoting a URL.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    pub(crate) fn new(config: &Config) -> Self {
        let mut secrets = Vec::new();
        for bind in config.binds.values() {
            let Some(url) = &bind.url else { continue };
            if let Ok(parsed) = url::Url::parse(url.expose())
                && let Some(password) = parsed.password()
            {
                secrets.push(percent_decode(password));
                secrets.push(password.to_owned());
            }
        }
        // Short ones would mask ordinary words; the library's masking already covers them.
        secrets.retain(|s| s.len() >= 3);
        Self { secrets }
    }

    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), "***");
        }
        out
    }
}

/// `%XX` escapes decoded (a URL's password as the server gets it).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The output format of stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned lines for people.
    Text,
    /// One JSON document, for scripts.
    Json,
}

/// Where everything is printed.
#[derive(Clone, Debug)]
pub(crate) struct Out {
    pub(crate) scrubber: Scrubber,
    pub(crate) format: Format,
    /// The width of the bind column: the longest bind name.
    pub(crate) width: usize,
}

impl Out {
    /// One progress line on stderr: the bind, aligned, then what happened.
    pub(crate) fn progress(&self, bind: &str, what: &str) {
        let line = format!("{bind:<width$}  {what}\n", width = self.width);
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(self.scrubber.scrub(&line).as_bytes());
    }

    /// A line of the text output on stdout.
    pub(crate) fn line(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(self.scrubber.scrub(&format!("{text}\n")).as_bytes());
    }

    /// The JSON output on stdout.
    pub(crate) fn json(&self, value: &serde_json::Value) {
        let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
        self.line(&text);
    }

    /// A message on stderr (an error, a refusal).
    pub(crate) fn error(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(
            self.scrubber
                .scrub(&format!("dbscope: {text}\n"))
                .as_bytes(),
        );
    }

    /// The progress callback of a migration run.
    pub(crate) fn events(&self) -> impl Fn(&MigrateEvent<'_>) + Send + Sync + 'static {
        let out = Arc::new(self.clone());
        move |event| match event {
            MigrateEvent::BindStarted { bind, backend } => {
                out.progress(bind, &format!("connecting ({backend})"));
            }
            MigrateEvent::WaitingForLock { bind } => out.progress(
                bind,
                "waiting for the migration lock (another migrator holds it)",
            ),
            MigrateEvent::MigrationStarted {
                bind,
                version,
                description,
                direction,
            } => out.progress(
                bind,
                &format!("{} {version} {description}", verb(*direction)),
            ),
            MigrateEvent::MigrationFinished {
                bind,
                version,
                direction,
                elapsed,
                ..
            } => out.progress(
                bind,
                &format!("{} {version} in {}", done(*direction), ms(*elapsed)),
            ),
            MigrateEvent::BindFinished {
                bind,
                done,
                elapsed,
                error,
            } => match error {
                None => out.progress(bind, &format!("finished: {done} in {}", ms(*elapsed))),
                Some(e) => out.progress(bind, &format!("failed: {}", chain(e))),
            },
            _ => {}
        }
    }
}

impl Out {
    /// The progress callback of `status`, which reads and changes nothing.
    pub(crate) fn status_events(&self) -> impl Fn(&MigrateEvent<'_>) + Send + Sync + 'static {
        let out = Arc::new(self.clone());
        move |event| match event {
            MigrateEvent::BindStarted { bind, backend } => {
                out.progress(bind, &format!("reading migrations ({backend})"));
            }
            MigrateEvent::BindFinished {
                bind,
                elapsed,
                error,
                ..
            } => match error {
                None => out.progress(bind, &format!("read in {}", ms(*elapsed))),
                Some(e) => out.progress(bind, &format!("failed: {}", chain(e))),
            },
            _ => {}
        }
    }
}

fn verb(direction: Direction) -> &'static str {
    match direction {
        Direction::Up => "applying",
        _ => "reverting",
    }
}

fn done(direction: Direction) -> &'static str {
    match direction {
        Direction::Up => "applied",
        _ => "reverted",
    }
}

/// A duration in milliseconds, with one decimal below 10 ms.
pub(crate) fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// An error's message and its causes, `: `-separated.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
