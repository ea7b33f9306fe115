//! Named boot milestones with timestamps: wall-clock epoch milliseconds and
//! an offset from init start on CLOCK_MONOTONIC (`std::time::Instant`).
//! They feed the `boot` verb of the socket and the kernel log.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Most milestones kept; later ones are dropped (the boot plan has ~10).
pub const MILESTONE_LIMIT: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Milestone {
    pub name: String,
    /// Wall clock, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Microseconds since [`Milestones::new`] (monotonic clock).
    pub offset_us: u64,
}

#[derive(Debug, Clone)]
pub struct Milestones {
    start: Instant,
    start_epoch_ms: u64,
    list: Vec<Milestone>,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Milestones {
    /// Start the clock: offsets are measured from now.
    pub fn new() -> Self {
        Milestones {
            start: Instant::now(),
            start_epoch_ms: epoch_ms(),
            list: Vec::new(),
        }
    }

    /// Record that `name` was reached now.
    pub fn record(&mut self, name: &str) {
        if self.list.len() >= MILESTONE_LIMIT {
            return;
        }
        let offset_us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.list.push(Milestone {
            name: name.to_string(),
            at_ms: epoch_ms(),
            offset_us,
        });
    }

    pub fn list(&self) -> &[Milestone] {
        &self.list
    }

    /// Wall clock at [`Milestones::new`], milliseconds since the epoch.
    pub fn start_epoch_ms(&self) -> u64 {
        self.start_epoch_ms
    }

    /// The monotonic instant the offsets are measured from.
    pub fn start_instant(&self) -> Instant {
        self.start
    }
}

impl Default for Milestones {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_keep_order_and_monotonic_offsets() {
        let mut m = Milestones::new();
        m.record("mounts");
        m.record("modules");
        m.record("datapart");
        let names: Vec<&str> = m.list().iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["mounts", "modules", "datapart"]);
        assert!(m
            .list()
            .windows(2)
            .all(|w| w[0].offset_us <= w[1].offset_us));
        assert!(m.list()[0].at_ms >= m.start_epoch_ms());
    }

    #[test]
    fn milestones_are_bounded() {
        let mut m = Milestones::new();
        for i in 0..(MILESTONE_LIMIT + 10) {
            m.record(&format!("m{i}"));
        }
        assert_eq!(m.list().len(), MILESTONE_LIMIT);
    }
}
