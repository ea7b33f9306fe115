//! The kubelet's graceful-shutdown budget: `shutdownGracePeriod` from its
//! KubeletConfiguration (/etc/kubernetes/config.yaml, YAML or JSON), as a
//! Go duration string ("30s", "1m30s", "1.5h"). Default 30 s when the file,
//! the key or a valid value is missing.

use std::path::Path;
use std::time::Duration;

/// The kubelet's default (and the image's) grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Largest config file read.
pub const CONFIG_LIMIT: usize = 1024 * 1024;
/// Longest grace period accepted (anything longer is treated as invalid).
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

/// A Go duration string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?}")]
    Invalid(String),
    #[error("negative duration {0:?}")]
    Negative(String),
    #[error("duration {0:?} out of range")]
    OutOfRange(String),
}

/// Parse a Go duration: an optional sign, then one or more
/// `<decimal number><unit>` with units ns, us, µs, ms, s, m, h; or "0".
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let invalid = || DurationError::Invalid(s.to_string());
    let (neg, mut rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let out_of_range = || DurationError::OutOfRange(s.to_string());
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(invalid());
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let unit_ns: u64 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        // Digits and one dot at most: only an overflow fails here.
        let ns = crate::decimal::scaled(num, unit_ns).ok_or_else(out_of_range)?;
        total_ns = total_ns.checked_add(ns).ok_or_else(out_of_range)?;
    }
    if neg && total_ns > 0 {
        return Err(DurationError::Negative(s.to_string()));
    }
    if total_ns > MAX_GRACE.as_nanos() {
        return Err(out_of_range());
    }
    // At most MAX_GRACE: fits in u64 nanoseconds.
    Ok(Duration::from_nanos(total_ns as u64))
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

/// Find the raw value of the top-level `shutdownGracePeriod` in a
/// KubeletConfiguration (YAML block style or JSON).
pub fn find_grace_value(text: &str) -> Option<String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(trimmed).ok()?;
        return v.get("shutdownGracePeriod")?.as_str().map(str::to_string);
    }
    for line in text.lines() {
        // Top level only: nested keys are indented.
        if line.starts_with(char::is_whitespace) {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if unquote(key) != "shutdownGracePeriod" {
            continue;
        }
        let value = value.trim();
        let value = if value.starts_with('"') || value.starts_with('\'') {
            // A quoted value may contain '#'; a comment follows the quote.
            let q = value.chars().next().unwrap_or('"');
            match value[1..].find(q) {
                Some(end) => &value[1..end + 1],
                None => return None,
            }
        } else {
            value.split('#').next().unwrap_or("").trim()
        };
        return Some(value.to_string());
    }
    None
}

/// The grace period the kubelet will use, and why when it is the default.
pub fn grace_from_text(text: &str) -> Result<Duration, String> {
    match find_grace_value(text) {
        None => Err("shutdownGracePeriod not set".into()),
        Some(v) => parse_go_duration(&v).map_err(|e| format!("shutdownGracePeriod: {e}")),
    }
}

/// The kubelet's shutdownGracePeriod from `config_yaml`, default 30 s.
/// Unreadable or invalid values are logged and give the default.
pub fn kubelet_shutdown_grace(config_yaml: &Path) -> Duration {
    let text = match std::fs::metadata(config_yaml) {
        Ok(m) if m.len() > CONFIG_LIMIT as u64 => {
            crate::kwarn!(
                "read {}: larger than {CONFIG_LIMIT} bytes; grace period {}s",
                config_yaml.display(),
                DEFAULT_GRACE.as_secs()
            );
            return DEFAULT_GRACE;
        }
        Ok(_) => match std::fs::read(config_yaml) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                crate::kwarn!(
                    "read {}: {e}; grace period {}s",
                    config_yaml.display(),
                    DEFAULT_GRACE.as_secs()
                );
                return DEFAULT_GRACE;
            }
        },
        Err(_) => return DEFAULT_GRACE,
    };
    match grace_from_text(&text) {
        Ok(d) => d,
        Err(why) => {
            if find_grace_value(&text).is_some() {
                crate::kwarn!(
                    "{}: {why}; grace period {}s",
                    config_yaml.display(),
                    DEFAULT_GRACE.as_secs()
                );
            }
            DEFAULT_GRACE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_duration_table() {
        let ok: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("1m30s", Duration::from_secs(90)),
            ("1m", Duration::from_secs(60)),
            ("2h", Duration::from_secs(7200)),
            ("1.5h", Duration::from_secs(5400)),
            ("500ms", Duration::from_millis(500)),
            ("1s500ms", Duration::from_millis(1500)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("+5s", Duration::from_secs(5)),
            ("-0s", Duration::ZERO),
            (" 45s ", Duration::from_secs(45)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_go_duration(s), Ok(*want), "{s:?}");
        }
        for bad in ["", "30", "s", "1x", "1.2.3s", "abc", "1m 30s", ".s", "-"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should fail");
        }
        assert!(matches!(
            parse_go_duration("-5s"),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(
            parse_go_duration("25h"),
            Err(DurationError::OutOfRange(_))
        ));
    }

    #[test]
    fn grace_from_config_table() {
        let cases: &[(&str, Option<Duration>)] = &[
            (
                "kind: KubeletConfiguration\nshutdownGracePeriod: 45s\n",
                Some(Duration::from_secs(45)),
            ),
            (
                "shutdownGracePeriod: \"1m30s\"  # comment\n",
                Some(Duration::from_secs(90)),
            ),
            (
                "shutdownGracePeriod: '2m'\n",
                Some(Duration::from_secs(120)),
            ),
            (
                "shutdownGracePeriod: 10s # grace\n",
                Some(Duration::from_secs(10)),
            ),
            ("shutdownGracePeriodCriticalPods: 10s\n", None),
            ("nested:\n  shutdownGracePeriod: 5s\n", None),
            ("shutdownGracePeriod: soon\n", None),
            ("", None),
            (
                "{\"kind\":\"KubeletConfiguration\",\"shutdownGracePeriod\":\"20s\"}",
                Some(Duration::from_secs(20)),
            ),
            ("{\"shutdownGracePeriod\": 20}", None),
        ];
        for (text, want) in cases {
            assert_eq!(grace_from_text(text).ok(), *want, "{text:?}");
        }
    }

    #[test]
    fn missing_config_gives_default() {
        assert_eq!(
            kubelet_shutdown_grace(Path::new("/nonexistent-kios/config.yaml")),
            DEFAULT_GRACE
        );
    }

    #[test]
    fn config_file_is_read() {
        let p = std::env::temp_dir().join(format!("kios-grace-{}.yaml", std::process::id()));
        std::fs::write(
            &p,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nshutdownGracePeriod: 1m\n",
        )
        .expect("write config");
        assert_eq!(kubelet_shutdown_grace(&p), Duration::from_secs(60));
        std::fs::write(&p, "shutdownGracePeriod: nonsense\n").expect("write config");
        assert_eq!(kubelet_shutdown_grace(&p), DEFAULT_GRACE);
        let _ = std::fs::remove_file(&p);
    }
}
