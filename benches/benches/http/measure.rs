//! One measurement: the load client run against one contender, its tally checked, and what the
//! requests cost.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use dbscope_benches::rounds::{seconds, weighted};
use dbscope_benches::{Admin, Failure, Measured};

use crate::CLIENT_FLAG;
use crate::client::Tally;
use crate::contenders::Contender;
use crate::costs::{Costs, Counters};

/// What one measurement counted.
#[derive(Clone, Copy)]
pub(crate) struct Run {
    requests: u64,
    pub(crate) per_second: f64,
    /// Where the machine's time went (Linux).
    pub(crate) costs: Option<Costs>,
}

impl Measured for Run {
    fn count(&self) -> u64 {
        self.requests
    }

    fn per_second(&self) -> f64 {
        self.per_second
    }

    fn merge(&self, other: &Self) -> Self {
        let requests = self.requests + other.requests;
        let secs = seconds(self) + seconds(other);
        Run {
            requests,
            per_second: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            // Per request, weighed by the requests of each slice.
            costs: self.costs.zip(other.costs).map(|(a, b)| {
                Costs::each_field(|field| weighted((self, field(&a)), (other, field(&b))))
            }),
        }
    }
}

/// Runs the load client against `contender` for `duration`, and counts.
pub(crate) async fn measure(
    admin: &mut Admin,
    contender: &Contender,
    duration: Duration,
    connections: usize,
) -> Result<Run, Failure> {
    let name = contender.kind.name();
    let before = Counters::read(admin).await;
    let tally = run_client(contender.addr, duration, connections)
        .await
        .map_err(|first| Failure::problems(name, 1, first))?;
    let after = Counters::read(admin).await;

    let problems = tally.non_2xx + tally.errors;
    if problems > 0 {
        return Err(Failure::problems(
            name,
            problems,
            format!(
                "{} non-2xx, {} errors; {}",
                tally.non_2xx,
                tally.errors,
                tally.first_problem.unwrap_or_default()
            ),
        ));
    }
    let requests = tally.ok;
    let costs = before
        .zip(after)
        .and_then(|(before, after)| after.since(&before, requests, tally.cpu));
    Ok(Run {
        requests,
        per_second: requests as f64 / tally.elapsed.as_secs_f64(),
        costs,
    })
}

/// Starts the load client (this binary, again) and reads its tally.
async fn run_client(
    addr: SocketAddr,
    duration: Duration,
    connections: usize,
) -> Result<Tally, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg(CLIENT_FLAG)
        .arg(addr.to_string())
        .arg(duration.as_secs_f64().to_string())
        .arg(connections.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    // Waiting for the child blocks a thread: not one of the runtime's workers, which serve.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|e| format!("waiting for the load client failed: {e}"))?
        .map_err(|e| format!("cannot start the load client: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "the load client failed ({}): {stdout}",
            output.status
        ));
    }
    serde_json::from_str(stdout.trim()).map_err(|e| format!("load client said {stdout:?}: {e}"))
}
