//! The process-wide logger of kios-init: kernel log lines
//! `<N>kiOS: message` written to /dev/kmsg.
//!
//! Logging never fails and never panics. Before /dev is mounted the lines
//! wait in a bounded buffer (oldest dropped first, with a count of what was
//! dropped) and [`flush_pending`] writes them once /dev/kmsg can be opened.
//! [`LogTarget::Stderr`] (boot parameter `kios.log=stderr`) writes to
//! stderr instead, so the namespace harness never writes to the host's
//! kernel log.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

/// Syslog severity, as the number in `<N>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Emerg,
    Alert,
    Crit,
    Err,
    Warning,
    Notice,
    Info,
    Debug,
}

impl Level {
    pub fn number(self) -> u8 {
        self as u8
    }

    fn name(self) -> &'static str {
        match self {
            Level::Emerg => "emerg",
            Level::Alert => "alert",
            Level::Crit => "crit",
            Level::Err => "error",
            Level::Warning => "warning",
            Level::Notice => "notice",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Kmsg,
    Stderr,
}

/// Lines kept while /dev/kmsg cannot be opened.
pub const PENDING_LIMIT: usize = 256;
/// Longest message written (the kernel truncates records near 1 KiB).
pub const LINE_LIMIT: usize = 900;
const KMSG_PATH: &str = "/dev/kmsg";

struct Logger {
    target: LogTarget,
    kmsg: Option<File>,
    pending: VecDeque<String>,
    dropped: usize,
}

// Unit tests run as root on a developer machine: they must never write to
// the host's kernel log.
const DEFAULT_TARGET: LogTarget = if cfg!(test) {
    LogTarget::Stderr
} else {
    LogTarget::Kmsg
};

static LOGGER: Mutex<Logger> = Mutex::new(Logger {
    target: DEFAULT_TARGET,
    kmsg: None,
    pending: VecDeque::new(),
    dropped: 0,
});

fn logger() -> std::sync::MutexGuard<'static, Logger> {
    LOGGER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Choose where lines go. Switching to stderr writes the buffered lines
/// there at once.
pub fn set_target(t: LogTarget) {
    let mut l = logger();
    l.target = t;
    if t == LogTarget::Stderr {
        let pending: Vec<String> = l.pending.drain(..).collect();
        let dropped = std::mem::take(&mut l.dropped);
        drop(l);
        let mut err = std::io::stderr().lock();
        if dropped > 0 {
            let _ = writeln!(err, "kiOS: warning: {dropped} early log lines dropped");
        }
        for line in pending {
            let _ = err.write_all(line.as_bytes());
        }
    }
}

/// The current target.
pub fn target() -> LogTarget {
    logger().target
}

/// Format one kernel log record: `<N>kiOS: msg\n`, with control characters
/// replaced by spaces and the message cut at [`LINE_LIMIT`] bytes.
pub fn format_record(level: Level, msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(LINE_LIMIT) + 12);
    out.push('<');
    out.push(char::from(b'0' + level.number()));
    out.push_str(">kiOS: ");
    let mut used = 0;
    for c in msg.chars() {
        let c = if c.is_control() { ' ' } else { c };
        used += c.len_utf8();
        if used > LINE_LIMIT {
            break;
        }
        out.push(c);
    }
    out.push('\n');
    out
}

/// Log one message. Never fails; never blocks for long.
pub fn log(level: Level, msg: std::fmt::Arguments<'_>) {
    let text = msg.to_string();
    let mut l = logger();
    // Unit tests run as root on a developer machine: whatever target a
    // test sets, they never write to the host's kernel log.
    let target = if cfg!(test) {
        LogTarget::Stderr
    } else {
        l.target
    };
    match target {
        LogTarget::Stderr => {
            drop(l);
            // No kernel log of our own (the sandbox): `logs kernel|init`
            // reads init's lines from a bounded ring instead.
            let record = format_record(level, &text);
            let message = record.get(3..).unwrap_or("").trim_end().to_string();
            crate::kmsgread::MEMORY.push(level.number(), message);
            let line = format!("kiOS: {}: {}\n", level.name(), text);
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        LogTarget::Kmsg => {
            let record = format_record(level, &text);
            if l.kmsg.is_none() {
                l.kmsg = open_kmsg();
            }
            if l.kmsg.is_some() && l.pending.is_empty() {
                if let Some(f) = l.kmsg.as_mut() {
                    if f.write_all(record.as_bytes()).is_ok() {
                        return;
                    }
                }
            }
            if l.kmsg.is_some() {
                // Pending lines first, in order, then this one.
                push_pending(&mut l, record);
                flush_locked(&mut l);
                return;
            }
            push_pending(&mut l, record);
        }
    }
}

fn push_pending(l: &mut Logger, record: String) {
    if l.pending.len() >= PENDING_LIMIT {
        l.pending.pop_front();
        l.dropped += 1;
    }
    l.pending.push_back(record);
}

fn open_kmsg() -> Option<File> {
    if cfg!(test) {
        return None;
    }
    std::fs::OpenOptions::new().write(true).open(KMSG_PATH).ok()
}

fn flush_locked(l: &mut Logger) {
    let Some(mut f) = l.kmsg.take() else { return };
    if l.dropped > 0 {
        let note = format_record(
            Level::Warning,
            &format!("{} early log lines dropped", l.dropped),
        );
        if f.write_all(note.as_bytes()).is_ok() {
            l.dropped = 0;
        }
    }
    while let Some(line) = l.pending.pop_front() {
        if f.write_all(line.as_bytes()).is_err() {
            // A record the kernel refuses (EINVAL) is dropped; anything else
            // keeps the rest for the next attempt.
            l.dropped += 1;
        }
    }
    l.kmsg = Some(f);
}

/// Open /dev/kmsg (once /dev is mounted) and write the buffered lines.
/// Bounded by [`PENDING_LIMIT`].
pub fn flush_pending() {
    let mut l = logger();
    if l.target != LogTarget::Kmsg {
        return;
    }
    if l.kmsg.is_none() {
        l.kmsg = open_kmsg();
    }
    flush_locked(&mut l);
}

/// Number of lines waiting for /dev/kmsg (for tests and diagnostics).
pub fn pending_len() -> usize {
    logger().pending.len()
}

/// Log at info level, `format!` style.
#[macro_export]
macro_rules! kinfo {
    ($($arg:tt)*) => { $crate::kmsg::log($crate::kmsg::Level::Info, format_args!($($arg)*)) };
}

/// Log at notice level, `format!` style.
#[macro_export]
macro_rules! knotice {
    ($($arg:tt)*) => { $crate::kmsg::log($crate::kmsg::Level::Notice, format_args!($($arg)*)) };
}

/// Log at warning level, `format!` style.
#[macro_export]
macro_rules! kwarn {
    ($($arg:tt)*) => { $crate::kmsg::log($crate::kmsg::Level::Warning, format_args!($($arg)*)) };
}

/// Log at error level, `format!` style.
#[macro_export]
macro_rules! kerr {
    ($($arg:tt)*) => { $crate::kmsg::log($crate::kmsg::Level::Err, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_has_level_and_prefix() {
        assert_eq!(
            format_record(Level::Err, "mount failed"),
            "<3>kiOS: mount failed\n"
        );
        assert_eq!(format_record(Level::Info, "x"), "<6>kiOS: x\n");
        assert_eq!(format_record(Level::Emerg, "x"), "<0>kiOS: x\n");
        assert_eq!(format_record(Level::Debug, "x"), "<7>kiOS: x\n");
    }

    #[test]
    fn early_lines_are_bounded_and_flushed_in_order_with_a_drop_count() {
        let mut l = Logger {
            target: LogTarget::Kmsg,
            kmsg: None,
            pending: VecDeque::new(),
            dropped: 0,
        };
        for i in 0..(PENDING_LIMIT + 44) {
            push_pending(&mut l, format_record(Level::Info, &format!("line {i}")));
        }
        assert_eq!(l.pending.len(), PENDING_LIMIT);
        assert_eq!(l.dropped, 44);
        let path = std::env::temp_dir().join(format!("kios-kmsg-{}", std::process::id()));
        l.kmsg = Some(File::create(&path).expect("create fake kmsg"));
        flush_locked(&mut l);
        assert!(l.pending.is_empty());
        assert_eq!(l.dropped, 0);
        let text = std::fs::read_to_string(&path).expect("read fake kmsg");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), PENDING_LIMIT + 1);
        assert_eq!(lines[0], "<4>kiOS: 44 early log lines dropped");
        assert_eq!(lines[1], "<6>kiOS: line 44");
        assert_eq!(
            lines[PENDING_LIMIT],
            format!("<6>kiOS: line {}", PENDING_LIMIT + 43)
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn record_replaces_control_characters() {
        assert_eq!(format_record(Level::Warning, "a\nb\tc"), "<4>kiOS: a b c\n");
    }

    #[test]
    fn record_is_bounded_at_a_char_boundary() {
        let long = "é".repeat(LINE_LIMIT);
        let r = format_record(Level::Info, &long);
        assert!(r.len() <= LINE_LIMIT + 12, "{}", r.len());
        assert!(r.ends_with("é\n"));
    }
}
