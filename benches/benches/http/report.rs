//! The report: each measurement's line, the results over the rounds, the ratios (of the median
//! requests/s, round by round, by CPU time per request) and the goals.

use dbscope_benches::{Summary, per_round, verdict};

use crate::contenders::{Contender, Kind, SqlxPool};
use crate::costs::Costs;
use crate::measure::Run;

/// Goal: dbscope layer / best axum-sqlx-tx configuration.
const GOAL_VS_AXUM_SQLX_TX: f64 = 1.3;
/// Goal: dbscope layer / hand-written dbscope session handler (within 5 %).
const GOAL_VS_SESSION_HANDLER: f64 = 0.95;
/// Goal: dbscope layer in autocommit mode / best bare select on a `PgPool`.
const GOAL_AUTOCOMMIT_VS_BARE: f64 = 0.9;
/// The Python seed's figure for the same endpoint (requests/s), and the goal for the read
/// route with safe methods read-only: 25 times it.
const SEED_REQUESTS_PER_SECOND: f64 = 950.0;
const GOAL_READ_ONLY_VS_SEED: f64 = 25.0;

pub(crate) fn print_run(name: &str, run: &Run) {
    println!(
        "  {name:<48} {:>8.0} req/s   {}",
        run.per_second,
        costs_text(run.costs)
    );
}

fn costs_text(costs: Option<Costs>) -> String {
    costs.map_or_else(|| "costs n/a".to_owned(), |costs| costs.to_string())
}

/// The figures of the report, per contender.
struct Figures<'a> {
    contenders: &'a [Contender],
    runs: &'a [Vec<Run>],
    /// Median requests/s.
    rates: Vec<f64>,
    /// Median costs, when measured.
    costs: Vec<Option<Costs>>,
}

impl Figures<'_> {
    fn index(&self, kind: Kind) -> usize {
        self.contenders
            .iter()
            .position(|c| c.kind == kind)
            .expect("every contender is present")
    }

    fn name(&self, i: usize) -> &'static str {
        self.contenders[i].kind.name()
    }

    /// `ours / other` of the median requests/s.
    fn ratio(&self, ours: usize, other: usize) -> f64 {
        self.rates[ours] / self.rates[other]
    }

    /// The same ratio taken round by round: each round runs the contenders close together in
    /// time, so it shows how much of a gap is noise.
    fn per_round(&self, ours: usize, other: usize) -> Summary {
        per_round(self.runs, ours, other)
    }

    /// The requests/s ratio on a machine of our own: `other`'s CPU time per request over ours.
    fn cpu_ratio(&self, ours: usize, other: usize) -> Option<f64> {
        let (ours, other) = (self.costs[ours]?, self.costs[other]?);
        Some(other.ours() / ours.ours())
    }

    fn print_ratio(&self, ours: usize, other: usize) {
        let label = format!("{} / {}", self.name(ours), self.name(other));
        println!(
            "  {label:<84} {:>5.2}x   {:<18} {}",
            self.ratio(ours, other),
            format!("{:.2}", self.per_round(ours, other)),
            self.cpu_ratio(ours, other)
                .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}x"))
        );
    }

    fn print_goal(&self, goal: &str, ours: usize, other: usize, at_least: f64) {
        let ratio = self.ratio(ours, other);
        let by_cpu = self.cpu_ratio(ours, other).map_or_else(String::new, |r| {
            format!("; by CPU per request {r:.2}x, {}", verdict(r >= at_least))
        });
        println!(
            "  {}  {goal}: {ratio:.2}x ({:+.1}%){by_cpu}",
            verdict(ratio >= at_least),
            (ratio - 1.0) * 100.0
        );
    }
}

pub(crate) fn report(contenders: &[Contender], runs: &[Vec<Run>]) {
    let figures = Figures {
        contenders,
        runs,
        rates: runs
            .iter()
            .map(|r| Summary::of(r.iter().map(|run| run.per_second)).median)
            .collect(),
        costs: runs
            .iter()
            .map(|r| {
                let all: Option<Vec<Costs>> = r.iter().map(|run| run.costs).collect();
                all.map(|all| Costs::median(&all))
            })
            .collect(),
    };
    println!(
        "\nresults: requests/s, median over the rounds (min–max); per request, medians: CPU µs \
         and loopback packets"
    );
    for (i, runs) in runs.iter().enumerate() {
        let rate = Summary::of(runs.iter().map(|run| run.per_second));
        println!(
            "  {:<48} {:<22} {}",
            figures.name(i),
            rate.to_string(),
            costs_text(figures.costs[i])
        );
    }

    let noise = figures
        .costs
        .iter()
        .flatten()
        .map(|c| c.others() / c.ours())
        .fold(0.0, f64::max);
    if noise > 0.1 {
        println!(
            "\nNOTE: other processes used up to {:.0}% of the CPU time these requests did: the \
             requests/s figures measure the machine's load as much as the contenders; the CPU \
             ratios below do not",
            noise * 100.0
        );
    }

    let layer = figures.index(Kind::Layer);
    let autocommit = figures.index(Kind::LayerAutocommit);
    let session = figures.index(Kind::SessionHandler);
    println!(
        "\nratios: of the median requests/s; round by round: median (min–max); by CPU per \
         request (theirs / ours: the ratio on a machine of our own)"
    );
    for other in [
        Kind::AxumSqlxTx(SqlxPool::Defaults),
        Kind::AxumSqlxTx(SqlxPool::NoTest),
        Kind::PgPoolTx(SqlxPool::Defaults),
        Kind::PgPoolTx(SqlxPool::NoTest),
        Kind::SessionHandler,
    ] {
        figures.print_ratio(layer, figures.index(other));
    }
    for other in [
        Kind::PgPoolSelect(SqlxPool::Defaults),
        Kind::PgPoolSelect(SqlxPool::NoTest),
        Kind::SessionAutocommit,
    ] {
        figures.print_ratio(autocommit, figures.index(other));
    }
    figures.print_ratio(autocommit, layer);
    let read_only = figures.index(Kind::LayerReadOnly);
    for other in [Kind::LayerAutocommit, Kind::Layer] {
        figures.print_ratio(read_only, figures.index(other));
    }

    // Against sqlx, the goals name its defaults; the stricter line is against the configuration
    // without a ping on acquire (the way dbscope's default health check runs in steady use).
    println!("\ngoals (on the median requests/s, and on the CPU time per request)");
    for pool in [SqlxPool::Defaults, SqlxPool::NoTest] {
        let other = figures.index(Kind::AxumSqlxTx(pool));
        figures.print_goal(
            &format!(
                "dbscope layer >= {GOAL_VS_AXUM_SQLX_TX}x {}",
                figures.name(other)
            ),
            layer,
            other,
            GOAL_VS_AXUM_SQLX_TX,
        );
    }
    figures.print_goal(
        "dbscope layer within 5% of the dbscope session handler",
        layer,
        session,
        GOAL_VS_SESSION_HANDLER,
    );
    for pool in [SqlxPool::Defaults, SqlxPool::NoTest] {
        let other = figures.index(Kind::PgPoolSelect(pool));
        figures.print_goal(
            &format!(
                "dbscope layer, autocommit >= {GOAL_AUTOCOMMIT_VS_BARE}x {}",
                figures.name(other)
            ),
            autocommit,
            other,
            GOAL_AUTOCOMMIT_VS_BARE,
        );
    }
    let rate = figures.rates[read_only];
    let goal = SEED_REQUESTS_PER_SECOND * GOAL_READ_ONLY_VS_SEED;
    println!(
        "  {}  {} >= {GOAL_READ_ONLY_VS_SEED}x the Python seed's {SEED_REQUESTS_PER_SECOND:.0} \
         req/s ({goal:.0} req/s): {rate:.0} req/s, {:.1}x",
        verdict(rate >= goal),
        figures.name(read_only),
        rate / SEED_REQUESTS_PER_SECOND
    );
}
