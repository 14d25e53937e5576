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

/// Splits the outcomes of a measurement's tasks or threads (each its session count and its
/// histogram, or its error) into the counts, for `Run::tally`, and the histograms, for
/// [`merged`] once the clock has stopped.
pub fn split<E>(
    outcomes: Vec<Result<(u64, Histogram<u64>), E>>,
) -> (Vec<Result<u64, E>>, Vec<Histogram<u64>>) {
    let mut histograms = Vec::with_capacity(outcomes.len());
    let counts = outcomes
        .into_iter()
        .map(|outcome| {
            outcome.map(|(done, histogram)| {
                histograms.push(histogram);
                done
            })
        })
        .collect();
    (counts, histograms)
}

/// All of `histograms` in one.
pub fn merged(histograms: &[Histogram<u64>]) -> Histogram<u64> {
    let mut merged = histogram();
    for histogram in histograms {
        merged
            .add(histogram)
            .expect("histograms of the same bounds add up");
    }
    merged
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_histogram(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut histogram = histogram();
        for ms in values {
            record(&mut histogram, Duration::from_millis(ms));
        }
        histogram
    }

    /// Within the histogram's 3 significant digits.
    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= want / 500.0
    }

    #[test]
    fn rounds_merge_and_keep_their_own_p99() {
        let mut latencies = Latencies::new();
        latencies.add(&ms_histogram(1..=50));
        latencies.add(&ms_histogram(51..=100)); // a second slice of the same round
        latencies.end_round();
        latencies.add(&ms_histogram(std::iter::repeat_n(1_000, 100)));
        latencies.end_round();

        let round_p99 = latencies.round_p99();
        assert_eq!(round_p99.len(), 2);
        assert!(
            close(round_p99[0], 99.0),
            "first round's p99: {}",
            round_p99[0]
        );
        assert!(
            close(round_p99[1], 1_000.0),
            "second round's p99: {}",
            round_p99[1]
        );
        assert!(close(latencies.quantile(0.5), 100.0), "p50 of both rounds");
        assert!(close(latencies.quantile(1.0), 1_000.0), "the slowest");
    }

    #[test]
    fn the_slowest_sessions_count_at_the_bound() {
        let mut histogram = histogram();
        record(&mut histogram, HIGHEST * 2);
        assert!(close(ms(histogram.max()), ms(HIGHEST.as_nanos() as u64)));
    }
}
