//! The report: each cell's results, the ratios per task count, the sweep's tables, the goals.

use std::sync::Arc;

use dbscope_benches::sessions::Run;
use dbscope_benches::{Measured, Summary, per_round, verdict};

use crate::contenders::{Contender, Db};
use dbscope_benches::latency::Latencies;

/// Goal: dbscope / the hand-written loop at 16 and 32 tasks (within 3 %).
const GOAL_VS_HAND_WRITTEN: f64 = 0.97;
/// Goal: dbscope / the best `PgPool` configuration at 16 and 32 tasks.
const GOAL_VS_SQLX: f64 = 1.3;
/// The task counts those two goals are judged at.
const GOAL_TASKS: [usize; 2] = [16, 32];
/// The task count of the goals on throughput and p99 under contention.
const CONTENDED_TASKS: usize = 256;

const WIDTH: usize = 44;

/// What the rounds measured, cell by cell (cell = task count index × contenders + contender).
pub(crate) struct Report<'a> {
    pub(crate) contenders: &'a [Arc<Contender>],
    /// The task counts, ascending.
    pub(crate) tasks: &'a [usize],
    /// `runs[cell][round]`.
    pub(crate) runs: &'a [Vec<Run>],
    pub(crate) latencies: &'a [Latencies],
}

impl Report<'_> {
    /// Prints all of it.
    pub(crate) fn print(&self) {
        println!(
            "\nresults: sessions/s, median over the rounds (min–max); client CPU per session; \
             latency of all the rounds' sessions, p50 and p99, and the rounds' own p99 (min–max)"
        );
        for t in 0..self.tasks.len() {
            self.print_task_count(t);
        }
        self.print_tables();
        self.print_goals();
    }

    fn cell(&self, tasks: usize, contender: usize) -> usize {
        tasks * self.contenders.len() + contender
    }

    fn median(&self, cell: usize) -> f64 {
        Summary::of(self.runs[cell].iter().map(Measured::per_second)).median
    }

    fn p99(&self, cell: usize) -> f64 {
        self.latencies[cell].quantile(0.99)
    }

    /// The contenders on `db`, by index.
    fn on(&self, db: Db) -> impl Iterator<Item = usize> + '_ {
        (0..self.contenders.len()).filter(move |&c| self.contenders[c].db() == db)
    }

    fn dbscope(&self, db: Db) -> usize {
        self.on(db)
            .find(|&c| self.contenders[c].is_dbscope())
            .expect("dbscope runs on every backend")
    }

    fn print_task_count(&self, t: usize) {
        println!("\n{} tasks", self.tasks[t]);
        for c in 0..self.contenders.len() {
            let cell = self.cell(t, c);
            let rate = Summary::of(self.runs[cell].iter().map(Measured::per_second));
            let cpu = self.runs[cell]
                .iter()
                .map(Run::cpu_us)
                .collect::<Option<Vec<f64>>>()
                .map_or_else(
                    || "CPU n/a".to_owned(),
                    |cpu| format!("CPU {:5.1} µs", Summary::of(cpu).median),
                );
            let latencies = &self.latencies[cell];
            let round_p99 = Summary::of(latencies.round_p99().iter().copied());
            println!(
                "  {:<WIDTH$} {:<24} {cpu}   p50 {:>7.3} ms   p99 {:>7.3} ms (rounds {:.3}–{:.3})",
                self.contenders[c].name(),
                rate.to_string(),
                latencies.quantile(0.5),
                latencies.quantile(0.99),
                round_p99.min,
                round_p99.max,
            );
        }
        println!("  ratios: dbscope / other, of the medians; and round by round: median (min–max)");
        for db in [Db::Postgres, Db::Sqlite] {
            let ours = self.cell(t, self.dbscope(db));
            for other in self.on(db).filter(|&c| !self.contenders[c].is_dbscope()) {
                let theirs = self.cell(t, other);
                println!(
                    "    dbscope / {:<WIDTH$} {:>5.2}x   {:.2}",
                    self.contenders[other].name(),
                    self.median(ours) / self.median(theirs),
                    per_round(self.runs, ours, theirs),
                );
            }
        }
    }

    /// The sweep as two markdown tables, ready for a note.
    fn print_tables(&self) {
        let header = |what: &str| {
            let counts: String = self.tasks.iter().map(|n| format!(" {n} |")).collect();
            let rule: String = self.tasks.iter().map(|_| "---|").collect();
            println!("\n| {what} |{counts}\n|---|{rule}");
        };
        header("sessions/s (median), tasks on 8 connections");
        for (c, contender) in self.contenders.iter().enumerate() {
            let row: String = (0..self.tasks.len())
                .map(|t| format!(" {:.1}k |", self.median(self.cell(t, c)) / 1e3))
                .collect();
            println!("| {} |{row}", contender.name());
        }
        header("latency p50 / p99, ms");
        for (c, contender) in self.contenders.iter().enumerate() {
            let row: String = (0..self.tasks.len())
                .map(|t| {
                    let latencies = &self.latencies[self.cell(t, c)];
                    format!(
                        " {:.2} / {:.2} |",
                        latencies.quantile(0.5),
                        latencies.quantile(0.99)
                    )
                })
                .collect();
            println!("| {} |{row}", contender.name());
        }
    }

    fn print_goals(&self) {
        println!("\ngoals of issue 14 (on the medians; p99 of all the rounds' sessions)");
        match self.tasks.iter().position(|&n| n == CONTENDED_TASKS) {
            Some(t) => {
                for db in [Db::Postgres, Db::Sqlite] {
                    self.print_contended_goals(t, db);
                }
            }
            None => println!("  not judged: {CONTENDED_TASKS} tasks are not in the sweep"),
        }
        for n in GOAL_TASKS {
            match self.tasks.iter().position(|&m| m == n) {
                Some(t) => self.print_uncontended_goals(t),
                None => println!("  not judged: {n} tasks are not in the sweep"),
            }
        }
    }

    /// At 256 tasks: no contender above dbscope, and dbscope's p99 no worse than sqlx's best.
    fn print_contended_goals(&self, t: usize, db: Db) {
        let label = match db {
            Db::Postgres => "PostgreSQL",
            Db::Sqlite => "SQLite",
        };
        let ours = self.cell(t, self.dbscope(db));
        let others = || {
            self.on(db)
                .filter(|&c| !self.contenders[c].is_dbscope())
                .map(|c| (c, self.cell(t, c)))
        };
        let (top, top_cell) = others()
            .max_by(|a, b| self.median(a.1).total_cmp(&self.median(b.1)))
            .expect("every backend has peers");
        println!(
            "  {}  {label}, {CONTENDED_TASKS} tasks: no contender's throughput above dbscope's: \
             dbscope {:.0}/s, the highest other {} {:.0}/s ({:.2}x)",
            verdict(self.median(ours) >= self.median(top_cell)),
            self.median(ours),
            self.contenders[top].name(),
            self.median(top_cell),
            self.median(ours) / self.median(top_cell),
        );
        let (best, best_cell) = others()
            .filter(|&(c, _)| self.contenders[c].is_sqlx_pool())
            .min_by(|a, b| self.p99(a.1).total_cmp(&self.p99(b.1)))
            .expect("every backend has a sqlx pool");
        println!(
            "  {}  {label}, {CONTENDED_TASKS} tasks: dbscope's p99 no worse than sqlx's: dbscope \
             {:.3} ms, the best sqlx pool {} {:.3} ms",
            verdict(self.p99(ours) <= self.p99(best_cell)),
            self.p99(ours),
            self.contenders[best].name(),
            self.p99(best_cell),
        );
    }

    /// At 16 or 32 tasks: within 3 % of the hand-written loop, ≥ 1.3× the best `PgPool`.
    fn print_uncontended_goals(&self, t: usize) {
        let n = self.tasks[t];
        let ours = self.median(self.cell(t, self.dbscope(Db::Postgres)));
        let hand = self
            .on(Db::Postgres)
            .find(|&c| matches!(*self.contenders[c], Contender::HandWritten(_)))
            .expect("the hand-written loop runs");
        let vs_hand = ours / self.median(self.cell(t, hand));
        println!(
            "  {}  {n} tasks: dbscope within 3% of the hand-written loop: {vs_hand:.3}x ({:+.1}%)",
            verdict(vs_hand >= GOAL_VS_HAND_WRITTEN),
            (vs_hand - 1.0) * 100.0
        );
        let best = self
            .on(Db::Postgres)
            .filter(|&c| self.contenders[c].is_sqlx_pool())
            .max_by(|&a, &b| {
                self.median(self.cell(t, a))
                    .total_cmp(&self.median(self.cell(t, b)))
            })
            .expect("sqlx's PgPools run");
        let vs_sqlx = ours / self.median(self.cell(t, best));
        println!(
            "  {}  {n} tasks: dbscope >= {GOAL_VS_SQLX}x the best PgPool ({}): {vs_sqlx:.2}x",
            verdict(vs_sqlx >= GOAL_VS_SQLX),
            self.contenders[best].name(),
        );
    }
}
