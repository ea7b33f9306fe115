//! Decimal numbers without floating point: parsing `12.5` into integer
//! units and printing microseconds as milliseconds with fixed places.
//!
//! kios-init reads a few decimals (boot parameters, the kubelet's grace
//! period, /proc/uptime) and prints a few durations. Doing it with f64
//! links the float parser and printer into PID 1 (about 12 KB of code that
//! lives in RAM for the node's life); integers do the same job exactly.

use std::fmt;

/// Most fraction digits that count: beyond 18 the value is below a
/// nanosecond of an hour.
const FRACTION_DIGITS: usize = 18;

/// `int.frac` (ASCII digits, at least one in all, one optional dot) times
/// `unit`, truncated toward zero. `None` when the text is not such a number
/// or the result overflows.
pub fn scaled(text: &str, unit: u64) -> Option<u128> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    let unit = u128::from(unit);
    let mut whole: u128 = 0;
    for b in int.bytes() {
        whole = whole.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
    }
    let mut total = whole.checked_mul(unit)?;
    let frac = &frac[..frac.len().min(FRACTION_DIGITS)];
    if !frac.is_empty() {
        let mut value: u128 = 0;
        for b in frac.bytes() {
            value = value * 10 + u128::from(b - b'0');
        }
        // value < 10^18 and unit < 2^64: the product fits in u128.
        let part = value * unit / 10u128.pow(frac.len() as u32);
        total = total.checked_add(part)?;
    }
    Some(total)
}

/// Microseconds shown as milliseconds with `places` decimals (0 to 3),
/// truncated: `Millis::new(1409_234, 1)` prints `1409.2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis {
    us: u64,
    places: u8,
}

impl Millis {
    pub fn new(us: u64, places: u8) -> Millis {
        Millis {
            us,
            places: places.min(3),
        }
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.us / 1000;
        if self.places == 0 {
            return write!(f, "{whole}");
        }
        let divisor = 10u64.pow(3 - u32::from(self.places));
        let frac = (self.us % 1000) / divisor;
        write!(
            f,
            "{whole}.{frac:0width$}",
            width = usize::from(self.places)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_reads_integers_and_fractions_exactly() {
        assert_eq!(scaled("30", 1_000_000_000), Some(30_000_000_000));
        assert_eq!(scaled("1.5", 3_600_000_000_000), Some(5_400_000_000_000));
        assert_eq!(scaled(".25", 1000), Some(250));
        assert_eq!(scaled("2.", 1000), Some(2000));
        assert_eq!(scaled("0.0000001", 1_000_000_000), Some(100));
        // Truncated, not rounded: 1/3 of a microsecond is no nanosecond.
        assert_eq!(scaled("0.0000000009", 1_000_000_000), Some(0));
        assert_eq!(scaled("12345.67", 1_000_000), Some(12_345_670_000));
        // Fraction digits past 18 are read and ignored.
        assert_eq!(scaled("1.0000000000000000000000009", 1), Some(1));
    }

    #[test]
    fn scaled_refuses_what_is_not_a_plain_decimal() {
        for bad in [
            "", ".", "-1", "+1", "1e3", "inf", "NaN", "1.2.3", " 1", "1 ", "0x10", "1_0",
        ] {
            assert_eq!(scaled(bad, 1), None, "{bad:?}");
        }
        // Overflow is refused, not wrapped.
        assert_eq!(scaled(&"9".repeat(40), u64::MAX), None);
        assert_eq!(scaled(&"9".repeat(60), 1), None);
    }

    #[test]
    fn millis_prints_fixed_places_truncated() {
        assert_eq!(Millis::new(1_409_234, 1).to_string(), "1409.2");
        assert_eq!(Millis::new(1_409_234, 2).to_string(), "1409.23");
        assert_eq!(Millis::new(5, 2).to_string(), "0.00");
        assert_eq!(Millis::new(12_050, 2).to_string(), "12.05");
        assert_eq!(Millis::new(999, 3).to_string(), "0.999");
        assert_eq!(Millis::new(999, 0).to_string(), "0");
        assert_eq!(
            Millis::new(u64::MAX, 9).to_string(),
            "18446744073709551.615"
        );
    }
}
