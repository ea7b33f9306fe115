//! Wall-clock steps as the owner sees them: how far each went, how many
//! there were, and the one kernel-log line for each.
//!
//! The source (`sources::clock_steps`, on the timerfd of `sys::clock`)
//! only says "the clock was set" and when ([`Now`], read after it re-armed
//! the watch). The step is the change of the wall-minus-monotonic offset
//! since the last one (or since init started): so two sets close together
//! are never counted twice, and any slewing between steps (at most 0.05%
//! with NTP) is in the next step's figure. Nothing in kios-init measures
//! with the wall clock (ARCHITECTURE.md), so a step changes only what is
//! shown; the line says so.

use std::time::Instant;

use crate::runtime::supervisor::{millis, Now};

/// What the owner knows about the wall clock's steps since boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockSteps {
    /// Wall clock minus monotonic time since `start`, in milliseconds, as
    /// of the last step (or the start).
    offset_ms: i128,
    start: Instant,
    /// Steps seen (sets that moved the clock by at least a millisecond).
    pub count: u64,
    /// The last step, signed: negative backward.
    pub last_delta_ms: i64,
}

/// One set of the clock, as the owner handled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Signed milliseconds (0: set to the time it had).
    pub delta_ms: i64,
    /// The kernel-log line.
    pub message: String,
}

impl ClockSteps {
    /// The clocks at init's start: the wall clock read `start_epoch_ms` at
    /// the monotonic `start`.
    pub fn new(start: Instant, start_epoch_ms: u64) -> ClockSteps {
        ClockSteps {
            offset_ms: i128::from(start_epoch_ms),
            start,
            count: 0,
            last_delta_ms: 0,
        }
    }

    fn offset_at(&self, now: Now) -> i128 {
        let mono = millis(now.mono.saturating_duration_since(self.start));
        i128::from(now.epoch_ms) - i128::from(mono)
    }

    /// The clock was set; `now` read after it. Returns what to log.
    pub fn stepped(&mut self, now: Now) -> Step {
        let offset = self.offset_at(now);
        let delta = offset - self.offset_ms;
        self.offset_ms = offset;
        let delta_ms = i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX });
        if delta_ms != 0 {
            self.count = self.count.saturating_add(1);
            self.last_delta_ms = delta_ms;
        }
        Step {
            delta_ms,
            message: describe(delta_ms, now.epoch_ms),
        }
    }
}

/// A wall-clock time recorded before a step of `delta_ms`, as the stepped
/// clock reads it (saturating): what keeps an age (`now_ms - since_ms`)
/// right across the step.
pub fn moved(ms: u64, delta_ms: i64) -> u64 {
    let moved = i128::from(ms) + i128::from(delta_ms);
    u64::try_from(moved.max(0)).unwrap_or(u64::MAX)
}

/// The kernel-log line of one set of the clock.
pub fn describe(delta_ms: i64, now_ms: u64) -> String {
    let now = rfc3339(now_ms);
    if delta_ms == 0 {
        return format!("wall clock set to the time it had (now {now}); nothing moved");
    }
    let direction = if delta_ms < 0 { "backward" } else { "forward" };
    let abs = delta_ms.unsigned_abs();
    let amount = if abs.is_multiple_of(1000) {
        format!("{}", abs / 1000)
    } else {
        format!("{}.{:03}", abs / 1000, abs % 1000)
    };
    format!(
        "wall clock stepped {direction} by {amount} s (now {now}); uptime, back-off and \
         shutdown bounds follow the monotonic clock"
    )
}

/// `2026-12-04T17:40:00.123Z` for epoch milliseconds (UTC, proleptic
/// Gregorian calendar).
pub fn rfc3339(epoch_ms: u64) -> String {
    let secs = epoch_ms / 1000;
    let ms = epoch_ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The date `days` after 1970-01-01: (year, month 1-12, day 1-31). Counts
/// in 400-year eras of 146,097 days that start on 1 March, so the leap day
/// is the last day of an era's year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Days since 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 0 = March ... 11 = February.
    let m = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * m + 2) / 5 + 1;
    let month = if m < 10 { m + 3 } else { m - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_577_836_800_000), "2020-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_314_096_789), "2026-12-03T16:08:16.789Z");
        assert_eq!(rfc3339(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(rfc3339(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        // The end of the range prints, far in the future.
        assert!(rfc3339(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn a_step_is_the_change_of_wall_minus_monotonic() {
        let start = Instant::now();
        let boot = 1_796_314_096_000;
        let mut clock = ClockSteps::new(start, boot);
        let at = |mono_ms: u64, epoch_ms: u64| Now {
            mono: start + Duration::from_millis(mono_ms),
            epoch_ms,
        };
        // 10 s after boot the clock is set back three days.
        let back = clock.stepped(at(10_000, boot + 10_000 - 259_200_000));
        assert_eq!(back.delta_ms, -259_200_000);
        assert_eq!(
            back.message,
            "wall clock stepped backward by 259200 s (now 2026-11-30T16:08:26.000Z); uptime, \
             back-off and shutdown bounds follow the monotonic clock"
        );
        assert_eq!((clock.count, clock.last_delta_ms), (1, -259_200_000));
        // 5 s later forward a day and 1.5 s.
        let forward = clock.stepped(at(15_000, boot + 15_000 - 259_200_000 + 86_401_500));
        assert_eq!(forward.delta_ms, 86_401_500);
        assert!(
            forward.message.starts_with(
                "wall clock stepped forward by 86401.500 s (now 2026-12-01T16:08:32.500Z)"
            ),
            "{}",
            forward.message
        );
        assert_eq!((clock.count, clock.last_delta_ms), (2, 86_401_500));
        // Set to the time it had: said, not counted.
        let same = clock.stepped(at(20_000, boot + 20_000 - 259_200_000 + 86_401_500));
        assert_eq!(same.delta_ms, 0);
        assert!(same.message.contains("the time it had"), "{}", same.message);
        assert_eq!((clock.count, clock.last_delta_ms), (2, 86_401_500));
    }

    #[test]
    fn steps_to_the_ends_of_the_range_saturate() {
        let start = Instant::now();
        let mut clock = ClockSteps::new(start, 1_000);
        let to_zero = clock.stepped(Now {
            mono: start + Duration::from_secs(1),
            epoch_ms: 0,
        });
        assert_eq!(to_zero.delta_ms, -2_000);
        let to_max = clock.stepped(Now {
            mono: start + Duration::from_secs(2),
            epoch_ms: u64::MAX,
        });
        assert_eq!(to_max.delta_ms, i64::MAX);
        assert!(to_max.message.contains("forward"), "{}", to_max.message);
        assert_eq!(clock.count, 2);
    }
}
