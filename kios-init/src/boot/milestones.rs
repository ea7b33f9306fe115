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

/// The wall clock now, in milliseconds since the Unix epoch (see
/// [`epoch_ms_of`]).
pub fn epoch_ms() -> u64 {
    epoch_ms_of(SystemTime::now())
}

/// A wall-clock time in milliseconds since the Unix epoch: 0 for a clock
/// set before 1970, `u64::MAX` past what fits. The wall clock can be
/// stepped either way at any moment (an RTC-less machine starts at 1970
/// until NTP corrects it), so kios-init uses it only to show when things
/// happened; durations and deadlines come from the monotonic clock.
pub fn epoch_ms_of(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
        self.record_at(name, Instant::now(), epoch_ms());
    }

    /// Record that `name` was reached at `at` (monotonic), when the wall
    /// clock read `at_ms`. The offset comes from the monotonic clock only:
    /// a wall clock stepped between two milestones moves their `at_ms`,
    /// never their order or the time between them.
    fn record_at(&mut self, name: &str, at: Instant, at_ms: u64) {
        if self.list.len() >= MILESTONE_LIMIT {
            return;
        }
        let offset_us =
            u64::try_from(at.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX);
        self.list.push(Milestone {
            name: name.to_string(),
            at_ms,
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
    fn a_wall_clock_step_moves_at_ms_but_not_offsets() {
        let mut m = Milestones::new();
        let start = m.start_instant();
        let boot = m.start_epoch_ms();
        let ms = std::time::Duration::from_millis;
        m.record_at("mounts", start + ms(10), boot + 10);
        // NTP steps an RTC-less clock from 1970 to now, then back 1 s.
        m.record_at("crio-start", start + ms(20), 1_795_939_250_000);
        m.record_at("kubelet-start", start + ms(30), 1_795_939_249_000);
        let got: Vec<(u64, u64)> = m.list().iter().map(|x| (x.at_ms, x.offset_us)).collect();
        assert_eq!(
            got,
            [
                (boot + 10, 10_000),
                (1_795_939_250_000, 20_000),
                (1_795_939_249_000, 30_000)
            ]
        );
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
