//! CPU time and packet counts from `/proc` (Linux; `None` elsewhere). The kernel counts CPU time
//! in ticks of 10 ms (USER_HZ is 100 on Linux): plenty over a round of seconds.

use std::time::Duration;

/// The CPU time this process has used so far, user + system, all threads.
pub fn process_cpu_time() -> Option<Duration> {
    cpu_time("/proc/self/stat")
}

/// The CPU time a process has used so far, user + system, from its `/proc/<pid>/stat`.
pub fn cpu_time(stat_path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    stat_cpu_time(&stat)
}

/// The user + system time in the text of a `/proc/<pid>/stat`.
fn stat_cpu_time(stat: &str) -> Option<Duration> {
    // After the command name (in parentheses, which may hold spaces) come fields 3, 4, …;
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(ticks_to_time(ticks(14)? + ticks(15)?))
}

fn ticks_to_time(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

/// The machine's CPU time so far, all cores, from `/proc/stat`, in ticks.
#[derive(Clone, Copy, Debug)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    /// The machine's counters now.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        // user nice system idle iowait irq softirq steal (guest time is inside user already)
        let n: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let idle = n.get(3)? + n.get(4)?;
        let total: u64 = n.iter().sum();
        Some(Self {
            busy: total - idle,
            total,
        })
    }

    /// Busy and total time between `before` and `self`.
    pub fn since(self, before: MachineCpu) -> (Duration, Duration) {
        (
            ticks_to_time(self.busy.saturating_sub(before.busy)),
            ticks_to_time(self.total.saturating_sub(before.total)),
        )
    }
}

/// Packets sent so far on the loopback interface, from `/proc/net/dev`.
pub fn loopback_packets() -> Option<u64> {
    let dev = std::fs::read_to_string("/proc/net/dev").ok()?;
    let line = dev.lines().find(|l| l.trim_start().starts_with("lo:"))?;
    // lo: rx bytes, packets, errs, drop, fifo, frame, compressed, multicast; tx bytes, packets …
    let fields: Vec<&str> = line.split_once(':')?.1.split_whitespace().collect();
    fields.get(9)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn reads_utime_and_stime_after_a_command_name_with_spaces() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 1 1 1";
        assert_eq!(super::stat_cpu_time(stat), Some(Duration::from_millis(100)));
    }
}
