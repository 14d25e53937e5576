//! Where a request's time went: the CPU time of this server, the load client and the
//! PostgreSQL backends of the pools, the other processes', and the loopback packets, per request,
//! from counters read in `/proc` before and after a measurement (Linux).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use dbscope_benches::cpu::{self, MachineCpu};
use dbscope_benches::{Admin, Summary};

/// Per request: CPU time in µs, and loopback packets.
#[derive(Clone, Copy)]
pub(crate) struct Costs {
    /// This process: the HTTP server, the handlers, the pools.
    server: f64,
    /// The load client.
    client: f64,
    /// The PostgreSQL backends of the benchmark's pooled connections.
    postgres: f64,
    /// The whole machine (every process, the kernel).
    machine: f64,
    /// The share of the machine's CPU time that was busy.
    busy: f64,
    /// Packets sent on the loopback interface (the whole machine's): the HTTP request and
    /// answer, and each round trip with PostgreSQL, are two.
    loopback: f64,
}

impl Costs {
    /// The CPU time of the benchmark's own work: server, client, PostgreSQL backends. On a
    /// saturated machine, requests/s = cores / this; unlike requests/s, it does not move with
    /// other processes' load.
    pub(crate) fn ours(&self) -> f64 {
        self.server + self.client + self.postgres
    }

    /// Other processes' CPU time (and what the kernel does for no process in particular).
    pub(crate) fn others(&self) -> f64 {
        self.machine - self.ours()
    }

    /// Costs built field by field by `of`, given how to read the field from a `Costs`: the
    /// medians of several measurements, the weighted mean of two.
    pub(crate) fn each_field(of: impl Fn(fn(&Costs) -> f64) -> f64) -> Costs {
        Costs {
            server: of(|c| c.server),
            client: of(|c| c.client),
            postgres: of(|c| c.postgres),
            machine: of(|c| c.machine),
            busy: of(|c| c.busy),
            loopback: of(|c| c.loopback),
        }
    }

    /// The medians, field by field.
    pub(crate) fn median(all: &[Costs]) -> Costs {
        Costs::each_field(|field| Summary::of(all.iter().map(field)).median)
    }
}

impl fmt::Display for Costs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "srv {:5.1} cli {:5.1} pg {:5.1} = {:5.1} | others {:5.1} busy {:3.0}% | lo {:4.1}",
            self.server,
            self.client,
            self.postgres,
            self.ours(),
            self.others(),
            self.busy * 100.0,
            self.loopback
        )
    }
}

/// The counters `Costs` come from, read before and after a measurement (Linux).
pub(crate) struct Counters {
    server: Duration,
    postgres: HashMap<i32, Duration>,
    machine: MachineCpu,
    loopback: u64,
}

impl Counters {
    pub(crate) async fn read(admin: &mut Admin) -> Option<Self> {
        let pids = admin.backend_pids().await.ok()?;
        let postgres = pids
            .into_iter()
            .filter_map(|pid| Some((pid, cpu::cpu_time(&format!("/proc/{pid}/stat"))?)))
            .collect();
        Some(Self {
            server: cpu::process_cpu_time()?,
            postgres,
            machine: MachineCpu::read()?,
            loopback: cpu::loopback_packets()?,
        })
    }

    /// The costs per request of the `requests` served between `before` and `self`.
    pub(crate) fn since(
        &self,
        before: &Counters,
        requests: u64,
        client: Option<Duration>,
    ) -> Option<Costs> {
        let per_request = |time: Duration| time.as_secs_f64() * 1e6 / requests.max(1) as f64;
        // A backend that started during the measurement counts whole.
        let postgres = self
            .postgres
            .iter()
            .map(|(pid, after)| {
                after.saturating_sub(*before.postgres.get(pid).unwrap_or(&Duration::ZERO))
            })
            .sum();
        let (busy, total) = self.machine.since(before.machine);
        Some(Costs {
            server: per_request(self.server.saturating_sub(before.server)),
            client: per_request(client?),
            postgres: per_request(postgres),
            machine: per_request(busy),
            busy: busy.as_secs_f64() / total.as_secs_f64().max(1e-9),
            loopback: (self.loopback - before.loopback) as f64 / requests.max(1) as f64,
        })
    }
}
