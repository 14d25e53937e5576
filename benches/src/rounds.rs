//! The warm-up and the interleaved rounds: which contender runs next and for how long, and what
//! the runs counted; the ids the contenders read; a measurement's failure.
//!
//! Every contender is warmed up once (opening its pool's connections); then each round runs
//! every contender for the round's time, forwards in even rounds and backwards in odd ones
//! (0 1 2, 2 1 0, 0 1 2, ...). Neighbours in the list run back to back in every round, so a
//! ratio between neighbours is taken under the same conditions, and over two rounds every
//! contender's mean position is the same, so drift on the machine (PostgreSQL shares it) spreads
//! over all of them.
//!
//! A round can be cut into slices (`BENCH_SLICES`): the round's time per contender is then
//! spent in that many passes over the contenders, each pass in the other direction from the
//! last (0 1 2, 2 1 0, 0 1 2 for three slices), and a contender's slices add up to its run of the
//! round. Drift that lasts a few seconds (a checkpoint, another job, where the scheduler put the
//! server's threads) then falls on every contender of the round alike, instead of on the one
//! that happened to run through it.

use std::fmt;
use std::time::Duration;

use crate::{Settings, Summary};

/// How long each contender runs in the warm-up.
pub const WARM_UP: Duration = Duration::from_secs(1);

/// What a measurement counted.
pub trait Measured: Copy {
    /// Units of work done: sessions, requests.
    fn count(&self) -> u64;
    /// Units of work per second.
    fn per_second(&self) -> f64;
    /// Both runs as one: the work of both over the time of both (a round's slices).
    fn merge(&self, other: &Self) -> Self;
}

/// The seconds a run took: its count over its rate.
pub fn seconds<R: Measured>(run: &R) -> f64 {
    if run.per_second() > 0.0 {
        run.count() as f64 / run.per_second()
    } else {
        0.0
    }
}

/// `a` and `b` weighted by the work of their runs (a per-unit cost of two slices).
pub fn weighted<R: Measured>(a: (&R, f64), b: (&R, f64)) -> f64 {
    let (wa, wb) = (a.0.count() as f64, b.0.count() as f64);
    if wa + wb == 0.0 {
        (a.1 + b.1) / 2.0
    } else {
        (a.1 * wa + b.1 * wb) / (wa + wb)
    }
}

/// One measurement to take.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// The contender's index.
    pub contender: usize,
    /// How long to run it.
    pub duration: Duration,
    warm_up: bool,
}

impl Step {
    /// Whether this is the contender's warm-up (which the report leaves out).
    pub fn is_warm_up(&self) -> bool {
        self.warm_up
    }
}

/// The plan of the measurements, and their results: `runs[contender][round]`.
#[derive(Debug)]
pub struct Rounds<R> {
    contenders: usize,
    rounds: usize,
    slices: usize,
    round_time: Duration,
    /// Steps handed out so far.
    taken: usize,
    runs: Vec<Vec<R>>,
    /// Per contender, how many slices of the current round it has run, and their runs merged.
    partial: Vec<(usize, Option<R>)>,
    total: u64,
}

impl<R: Measured> Rounds<R> {
    /// The plan for `contenders` contenders.
    pub fn new(contenders: usize, settings: &Settings) -> Self {
        Self {
            contenders,
            rounds: settings.rounds,
            slices: settings.slices.max(1),
            round_time: settings.round_time,
            taken: 0,
            runs: vec![Vec::with_capacity(settings.rounds); contenders],
            partial: vec![(0, None); contenders],
            total: 0,
        }
    }

    /// The next measurement, or `None` when all are taken; prints the heading of the warm-up and
    /// of each round as it begins.
    pub fn next_step(&mut self) -> Option<Step> {
        let (n, taken) = (self.contenders, self.taken);
        if n == 0 || taken >= n * (self.rounds * self.slices + 1) {
            return None;
        }
        self.taken += 1;
        if taken < n {
            if taken == 0 {
                println!("warm-up ({:.1} s each)", WARM_UP.as_secs_f64());
            }
            return Some(Step {
                contender: taken,
                duration: WARM_UP,
                warm_up: true,
            });
        }
        // Passes over the contenders, one per slice of each round, alternating direction.
        let (pass, slot) = ((taken - n) / n, (taken - n) % n);
        if slot == 0 && pass % self.slices == 0 {
            println!("round {}/{}", pass / self.slices + 1, self.rounds);
        }
        let contender = if pass % 2 == 0 { slot } else { n - 1 - slot };
        Some(Step {
            contender,
            duration: self.round_time / self.slices as u32,
            warm_up: false,
        })
    }

    /// Keeps what `step` counted (a warm-up only adds to the total); returns the contender's
    /// run of the round once its last slice is in.
    pub fn record(&mut self, step: Step, run: R) -> Option<R> {
        self.total += run.count();
        if step.warm_up {
            return None;
        }
        let (slices, earlier) = &mut self.partial[step.contender];
        let merged = match earlier.take() {
            Some(earlier) => earlier.merge(&run),
            None => run,
        };
        *slices += 1;
        if *slices == self.slices {
            *slices = 0;
            self.runs[step.contender].push(merged);
            Some(merged)
        } else {
            *earlier = Some(merged);
            None
        }
    }

    /// Units of work done in all, warm-up included.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// What each contender's rounds counted: `runs[contender][round]`.
    pub fn runs(&self) -> &[Vec<R>] {
        &self.runs
    }
}

/// What went wrong in a measurement.
#[derive(Debug)]
pub struct Failure {
    contender: &'static str,
    count: u64,
    /// What `count` counts: `error(s)`, `problem(s)`.
    what: &'static str,
    first: String,
}

impl Failure {
    /// `errors` errors, the first of them `first`.
    pub fn errors(contender: &'static str, errors: u64, first: impl Into<String>) -> Self {
        Self {
            contender,
            count: errors,
            what: "error(s)",
            first: first.into(),
        }
    }

    /// `problems` problems (failed requests, wrong answers, failed checks), the first `first`.
    pub fn problems(contender: &'static str, problems: u64, first: impl Into<String>) -> Self {
        Self {
            what: "problem(s)",
            ..Self::errors(contender, problems, first)
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {}; first: {}",
            self.contender, self.count, self.what, self.first
        )
    }
}

/// A cheap xorshift over the ids `1..=rows`, one stream per seed (a task, a thread, a
/// connection).
#[derive(Debug)]
pub struct Ids {
    state: u64,
    rows: u64,
}

impl Ids {
    /// The stream of `seed` over `1..=rows`.
    pub fn new(seed: u64, rows: i32) -> Self {
        Self {
            state: 0x9E37_79B9_7F4A_7C15 ^ (seed + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            rows: u64::try_from(rows).expect("a positive row count"),
        }
    }

    /// The next id.
    pub fn next_id(&mut self) -> i32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % self.rows) as i32 + 1
    }
}

/// `ours / other` of the per-second figures, round by round: each round runs the contenders
/// close together in time, so it shows how much of a gap is noise.
pub fn per_round<R: Measured>(runs: &[Vec<R>], ours: usize, other: usize) -> Summary {
    Summary::of(
        runs[ours]
            .iter()
            .zip(&runs[other])
            .map(|(o, t)| o.per_second() / t.per_second()),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Measured, Rounds};
    use crate::Settings;

    #[derive(Clone, Copy)]
    struct One;

    impl Measured for One {
        fn count(&self) -> u64 {
            1
        }
        fn per_second(&self) -> f64 {
            1.0
        }
        fn merge(&self, _: &Self) -> Self {
            One
        }
    }

    #[test]
    fn warms_up_each_contender_then_alternates_the_direction_every_round() {
        let settings = Settings {
            url: String::new(),
            rounds: 3,
            slices: 1,
            round_time: Duration::from_secs(2),
        };
        let mut rounds = Rounds::<One>::new(3, &settings);
        let mut order = Vec::new();
        while let Some(step) = rounds.next_step() {
            order.push(step.contender);
            rounds.record(step, One);
        }
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 2, 1, 0, 0, 1, 2]);
        assert_eq!(rounds.total(), 12);
        assert!(rounds.runs().iter().all(|runs| runs.len() == 3));
    }

    /// Counts its units; merging adds them up.
    #[derive(Clone, Copy)]
    struct Units(u64);

    impl Measured for Units {
        fn count(&self) -> u64 {
            self.0
        }
        fn per_second(&self) -> f64 {
            self.0 as f64
        }
        fn merge(&self, other: &Self) -> Self {
            Units(self.0 + other.0)
        }
    }

    #[test]
    fn slices_a_round_into_passes_of_alternating_direction_and_merges_them() {
        let settings = Settings {
            url: String::new(),
            rounds: 2,
            slices: 3,
            round_time: Duration::from_secs(3),
        };
        let mut rounds = Rounds::<Units>::new(2, &settings);
        let (mut order, mut finished) = (Vec::new(), Vec::new());
        let mut units = 0;
        while let Some(step) = rounds.next_step() {
            order.push(step.contender);
            if !step.is_warm_up() {
                assert_eq!(step.duration, Duration::from_secs(1));
            }
            units += 1;
            if let Some(run) = rounds.record(step, Units(units)) {
                finished.push((step.contender, run.0));
            }
        }
        // Warm-up, then round 1 (three passes), then round 2 (three more).
        assert_eq!(order, [0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0]);
        // Round 1: contender 0 ran steps 3, 6, 7; contender 1 steps 4, 5, 8.
        assert_eq!(finished[..2], [(0, 3 + 6 + 7), (1, 4 + 5 + 8)]);
        assert_eq!(finished.len(), 4);
        assert_eq!(rounds.runs()[0].len(), 2);
        assert_eq!(rounds.runs()[0][0].0, 16);
        assert_eq!(rounds.total(), (1..=14).sum::<u64>());
    }
}
