//! The harness dbscope's benchmarks share (`benches/*.rs`, `benches/http/`, `benches/sweep/`):
//! their settings from the environment, the warm-up and the interleaved rounds, medians, CPU
//! readings from `/proc`, histograms of each session's latency, the report's ratios and
//! verdicts, and the checks on the PostgreSQL server before and after measuring.
//!
//! Not a public API: it changes with the benchmarks.

pub mod cpu;
pub mod latency;
pub mod rounds;
pub mod server;
pub mod sessions;
pub mod settings;
pub mod summary;

use std::fmt;
use std::process::ExitCode;

pub use rounds::{Failure, Ids, Measured, Rounds, Step, WARM_UP, per_round};
pub use server::{Admin, Backends, BlockingAdmin, Table};
pub use settings::Settings;
pub use summary::Summary;

/// Any error of setup or teardown.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The exit code of a benchmark: 0 when every measurement and every check passed (whether or not
/// the goals were met), 1 when a measurement or the teardown's checks failed (said on stderr).
pub fn exit_code(outcome: Result<u64, Failure>, teardown: Result<(), BoxError>) -> ExitCode {
    match (outcome, teardown) {
        (Ok(_), Ok(())) => ExitCode::SUCCESS,
        (Err(failure), _) => {
            eprintln!("\nBENCHMARK FAILED: {failure}");
            ExitCode::from(1)
        }
        (Ok(_), Err(e)) => {
            eprintln!("\nBENCHMARK FAILED at teardown: {e}");
            ExitCode::from(1)
        }
    }
}

/// Exit code 2, for a problem before anything was measured: bad settings, failed setup.
pub fn setup_problem(message: impl fmt::Display) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(2)
}

/// The teardown's heading, and what each of the benchmark's dbscope binds (named `label`) did.
pub fn print_teardown(label: &str, binds: &[dbscope::BindStatus]) {
    println!("\nteardown");
    for bind in binds {
        println!(
            "  {label}: opened {} connections, discarded {}, checkout timeouts {}",
            bind.opened, bind.discarded, bind.timeouts
        );
    }
}

/// `PASS` or `MISS`, for a goal.
pub fn verdict(met: bool) -> &'static str {
    if met { "PASS" } else { "MISS" }
}
