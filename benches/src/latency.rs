//! Each session's latency, in histograms: one per task or thread while it runs (nothing shared
//! between them), merged per round and over the rounds afterwards.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The slowest session a histogram tells apart; slower ones count as this.
const HIGHEST: Duration = Duration::from_secs(60);

/// An empty histogram of nanoseconds, 1 µs to [`HIGHEST`], 3 significant digits (about 128 KiB).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, HIGHEST.as_nanos() as u64, 3).expect("the bounds are valid")
}

/// Records one session's latency.
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    histogram.saturating_record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
}

/// One cell's latencies: the sessions of the round in progress, and those of every round done.
#[derive(Debug)]
pub struct Latencies {
    round: Histogram<u64>,
    all: Histogram<u64>,
    /// The 99th percentile of each round done, in ms.
    round_p99: Vec<f64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// None yet.
    pub fn new() -> Self {
        Self {
            round: histogram(),
            all: histogram(),
            round_p99: Vec::new(),
        }
    }

    /// Adds a measurement (a round's slice) of the round in progress.
    pub fn add(&mut self, measured: &Histogram<u64>) {
        self.round
            .add(measured)
            .expect("histograms of the same bounds add up");
    }

    /// Ends the round in progress.
    pub fn end_round(&mut self) {
        self.round_p99.push(ms(self.round.value_at_quantile(0.99)));
        self.all
            .add(&self.round)
            .expect("histograms of the same bounds add up");
        self.round.reset();
    }

    /// The `q` quantile of every round's sessions, in ms.
    pub fn quantile(&self, q: f64) -> f64 {
        ms(self.all.value_at_quantile(q))
    }

    /// The 99th percentile of each round done, in ms.
    pub fn round_p99(&self) -> &[f64] {
        &self.round_p99
    }
}

/// The 50th and 99th percentiles of `histogram`, in ms.
pub fn p50_p99(histogram: &Histogram<u64>) -> (f64, f64) {
    (
        ms(histogram.value_at_quantile(0.5)),
        ms(histogram.value_at_quantile(0.99)),
    )
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}
