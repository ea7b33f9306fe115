//! What the service stand-ins share: their `key=value` configuration, the
//! `KIOS-E2E` progress lines (stdout, the console, the events file), argv
//! recording as JSON, and the SIGTERM watcher.
//!
//! The stand-ins replace cri-o, the kubelet and pinns in test images. Tests
//! configure them through `/etc/kios-e2e/*.conf` (in the image, or on the
//! data partition's /etc overlay) and observe them through the lines they
//! print and the files they write under `/run/kios-e2e/`.
//!
//! `/etc/kios-e2e/common.conf` keys (all stand-ins):
//! - `events=PATH`: where progress lines are appended (default
//!   `/run/kios-e2e/events`); the namespace harness points this at the
//!   sandbox's root so the lines survive the sandbox.
//! - `console=auto|true|false`: also write progress lines to /dev/console.
//!   `auto` (default) writes unless the root filesystem is the namespace
//!   harness's overlay (mount source `kios-e2e-sandbox`), whose /dev/console
//!   would be the host's.
//! - `kmsg=true`: also write progress lines to /dev/kmsg, as
//!   `kios-e2e: <text>` (default false). In a VM they then share the kernel
//!   log's one order and timestamps with kios-init's own lines, which the
//!   console's separate tty output does not guarantee (a printk can
//!   overtake tty output still in the serial driver's buffer).

pub mod crio;
pub mod debugpod;
pub mod kubelet;
pub mod regrow;
pub mod upstream;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

/// Directory for the stand-ins' runtime records (argv, start counts, markers).
pub const RUN_DIR: &str = "/run/kios-e2e";

/// Directory of the stand-ins' configuration files.
pub const CONF_DIR: &str = "/etc/kios-e2e";

/// Default events file.
pub const DEFAULT_EVENTS: &str = "/run/kios-e2e/events";

/// Mount source of the namespace harness's root overlay.
pub const SANDBOX_ROOT_SOURCE: &str = "kios-e2e-sandbox";

/// Every progress line starts with this.
pub const PREFIX: &str = "KIOS-E2E";

/// Longest configuration file read (a guard against nonsense).
const MAX_CONF_BYTES: u64 = 64 * 1024;

/// A parsed `key=value` configuration file. `#` starts a comment line;
/// blank lines are ignored; keys and values are trimmed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    values: BTreeMap<String, String>,
}

impl Config {
    /// Parses configuration text. Lines without `=` are ignored (and
    /// reported by [`Config::parse_with_warnings`]).
    pub fn parse(text: &str) -> Config {
        Config::parse_with_warnings(text).0
    }

    /// Parses configuration text, returning the lines it could not use.
    pub fn parse_with_warnings(text: &str) -> (Config, Vec<String>) {
        let mut values = BTreeMap::new();
        let mut warnings = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some((key, value)) if !key.trim().is_empty() => {
                    values.insert(key.trim().to_string(), value.trim().to_string());
                }
                _ => warnings.push(line.to_string()),
            }
        }
        (Config { values }, warnings)
    }

    /// Loads `/etc/kios-e2e/<name>.conf`; a missing or unreadable file is an
    /// empty configuration (the defaults).
    pub fn load(name: &str) -> Config {
        Config::load_path(&Path::new(CONF_DIR).join(format!("{name}.conf")))
    }

    /// Loads a configuration file; missing or unreadable means empty.
    pub fn load_path(path: &Path) -> Config {
        match read_limited(path, MAX_CONF_BYTES) {
            Some(text) => {
                let (config, warnings) = Config::parse_with_warnings(&text);
                for warning in warnings {
                    eprintln!(
                        "{PREFIX} warning: {}: ignoring line without key=value: {warning}",
                        path.display()
                    );
                }
                config
            }
            None => Config::default(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// An unsigned number, or `default` when absent or not a number (the
    /// latter with a warning on stderr).
    pub fn u64_or(&self, key: &str, default: u64) -> u64 {
        match self.get(key) {
            None => default,
            Some(text) => text.parse().unwrap_or_else(|_| {
                eprintln!("{PREFIX} warning: {key}={text} is not a number; using {default}");
                default
            }),
        }
    }

    /// A signed exit code, or `default`.
    pub fn i32_or(&self, key: &str, default: i32) -> i32 {
        match self.get(key) {
            None => default,
            Some(text) => text.parse().unwrap_or_else(|_| {
                eprintln!("{PREFIX} warning: {key}={text} is not a number; using {default}");
                default
            }),
        }
    }

    /// A boolean (`true/false`, `yes/no`, `1/0`, `on/off`), or `default`.
    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some("true" | "yes" | "1" | "on") => true,
            Some("false" | "no" | "0" | "off") => false,
            Some(text) => {
                eprintln!("{PREFIX} warning: {key}={text} is not a boolean; using {default}");
                default
            }
        }
    }
}

fn read_limited(path: &Path, limit: u64) -> Option<String> {
    use std::io::Read;
    let file = File::open(path).ok()?;
    let mut text = String::new();
    file.take(limit).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Where progress lines go besides stdout.
struct Sinks {
    events: Option<File>,
    console: Option<File>,
    kmsg: Option<File>,
}

static SINKS: OnceLock<std::sync::Mutex<Sinks>> = OnceLock::new();

fn sinks() -> &'static std::sync::Mutex<Sinks> {
    SINKS.get_or_init(|| {
        let common = Config::load("common");
        let events_path = common.get("events").unwrap_or(DEFAULT_EVENTS).to_string();
        let events = open_append(Path::new(&events_path));
        let console = match common.get("console").unwrap_or("auto") {
            "true" | "yes" | "1" | "on" => open_console(),
            "false" | "no" | "0" | "off" => None,
            _ if root_is_sandbox() => None,
            _ => open_console(),
        };
        let kmsg = if common.bool_or("kmsg", false) {
            OpenOptions::new().write(true).open("/dev/kmsg").ok()
        } else {
            None
        };
        std::sync::Mutex::new(Sinks {
            events,
            console,
            kmsg,
        })
    })
}

/// Opens the sinks now (before a chroot hides their paths).
pub fn open_sinks() {
    let _ = sinks();
}

fn open_append(path: &Path) -> Option<File> {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    OpenOptions::new().create(true).append(true).open(path).ok()
}

fn open_console() -> Option<File> {
    OpenOptions::new().write(true).open("/dev/console").ok()
}

/// Whether `/` is the namespace harness's overlay (see the module docs).
pub fn root_is_sandbox() -> bool {
    let Some(text) = read_limited(Path::new("/proc/self/mountinfo"), 1 << 20) else {
        return false;
    };
    root_source_in_mountinfo(&text).as_deref() == Some(SANDBOX_ROOT_SOURCE)
}

/// The mount source of the last mount on `/` in a mountinfo text.
pub fn root_source_in_mountinfo(text: &str) -> Option<String> {
    let mut source = None;
    for line in text.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = before.split(' ').nth(4);
        if mount_point == Some("/") {
            source = after.split(' ').nth(1).map(str::to_string);
        }
    }
    source
}

/// Prints `KIOS-E2E <text>` to stdout, the events file and the console.
/// Each sink gets the whole line in one write, so lines from several
/// processes do not interleave mid-line.
pub fn emit(text: &str) {
    let line = format!("{PREFIX} {text}\n");
    emit_raw(&line);
}

/// Writes an already formatted line (ending in `\n`) to every sink.
pub fn emit_raw(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(line.as_bytes());
    let _ = stdout.flush();
    drop(stdout);
    if let Ok(mut sinks) = sinks().lock() {
        if let Some(events) = sinks.events.as_mut() {
            let _ = events.write_all(line.as_bytes());
        }
        if let Some(console) = sinks.console.as_mut() {
            let _ = console.write_all(line.as_bytes());
        }
        if let Some(kmsg) = sinks.kmsg.as_mut() {
            // One write is one record; notice level (5) reaches the console.
            let text = line.strip_prefix(PREFIX).unwrap_or(line).trim();
            let _ = kmsg.write_all(format!("<5>kios-e2e: {text}\n").as_bytes());
        }
    }
}

/// A JSON array of strings (argv as recorded by the stand-ins).
pub fn json_string_array<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, item.as_ref());
    }
    out.push(']');
    out
}

fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// This process's argv, lossily decoded.
pub fn argv() -> Vec<String> {
    std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Writes argv as a JSON array to `/run/kios-e2e/<name>.argv` and returns
/// the JSON.
pub fn record_argv(name: &str, argv: &[String]) -> String {
    let json = json_string_array(argv);
    let _ = std::fs::create_dir_all(RUN_DIR);
    let path = Path::new(RUN_DIR).join(format!("{name}.argv"));
    if let Err(e) = std::fs::write(&path, format!("{json}\n")) {
        eprintln!("{PREFIX} warning: cannot write {}: {e}", path.display());
    }
    json
}

/// The file descriptors open in this process right now, as
/// `(fd, target)` pairs (the descriptor used to list them left out). Call
/// first thing in main to see what the parent let the process inherit.
pub fn open_fds() -> Vec<(i32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let own_dir = format!("/proc/{}/fd", std::process::id());
    let mut fds: Vec<(i32, String)> = entries
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            let target = target.to_string_lossy().into_owned();
            (target != own_dir).then_some((fd, target))
        })
        .collect();
    fds.sort();
    fds
}

/// Writes `/run/kios-e2e/<name>.fds`: one `FD TARGET` line per descriptor
/// inherited at start (see [`open_fds`]).
pub fn record_fds(name: &str, fds: &[(i32, String)]) {
    let _ = std::fs::create_dir_all(RUN_DIR);
    let text: String = fds
        .iter()
        .map(|(fd, target)| format!("{fd} {target}\n"))
        .collect();
    let path = Path::new(RUN_DIR).join(format!("{name}.fds"));
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("{PREFIX} warning: cannot write {}: {e}", path.display());
    }
}

/// Adds one to the counter file `/run/kios-e2e/<name>.starts` and returns
/// the new count (1 for the first start of this boot).
pub fn count_start(name: &str) -> u64 {
    let _ = std::fs::create_dir_all(RUN_DIR);
    let path = Path::new(RUN_DIR).join(format!("{name}.starts"));
    let previous: u64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let count = previous + 1;
    if let Err(e) = std::fs::write(&path, format!("{count}\n")) {
        eprintln!("{PREFIX} warning: cannot write {}: {e}", path.display());
    }
    count
}

/// Milliseconds on CLOCK_MONOTONIC (shared with the host in a namespace
/// sandbox, so tests can compare times across the boundary).
pub fn monotonic_ms() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64) * 1000 + (ts.tv_nsec() as u64) / 1_000_000,
        Err(_) => 0,
    }
}

/// Blocks SIGTERM in this thread (call first in main, before any thread is
/// spawned, so every thread inherits the mask) and starts a thread that
/// waits for it and then runs `on_term`, which must end the process.
/// With `ignore_sigterm=true` in `/etc/kios-e2e/<name>.conf` (read when the
/// signal arrives) it prints `KIOS-E2E <name> sigterm-ignored` instead and
/// lives on, like a service that does not stop: only SIGKILL ends it.
///
/// The same thread takes SIGUSR1: a log flood (see [`flood`]) on a thread
/// of its own, so a TERM during a flood still ends the process.
pub fn watch_sigterm(name: &'static str, on_term: impl FnOnce() + Send + 'static) {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGUSR1);
    if let Err(e) = set.thread_block() {
        eprintln!("{PREFIX} warning: cannot block SIGTERM: {e}");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("sigterm".into())
        .spawn(move || {
            let mut on_term = Some(on_term);
            loop {
                let signal = set.wait();
                if let Ok(Signal::SIGUSR1) = signal {
                    let spawned = std::thread::Builder::new()
                        .name("flood".into())
                        .spawn(move || flood(name));
                    if let Err(e) = spawned {
                        emit(&format!("{name} error cannot start a flood: {e}"));
                    }
                    continue;
                }
                if let Ok(Signal::SIGTERM) = signal {
                    if Config::load(name).bool_or("ignore_sigterm", false) {
                        emit(&format!("{name} sigterm-ignored"));
                        continue;
                    }
                    if let Some(on_term) = on_term.take() {
                        on_term();
                    }
                    std::process::exit(0);
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("{PREFIX} warning: cannot start the SIGTERM thread: {e}");
    }
}

/// A log flood, on SIGUSR1: `flood_lines` lines (default 20000) of
/// `flood_line_bytes` bytes each (default 200, at most 65536) written to
/// stdout (the service's output pipe to init) as fast as init takes them,
/// then `KIOS-E2E <name> flood-done lines=N` (also to the events file).
/// Keys of `/etc/kios-e2e/<name>.conf`, read when the signal arrives. The
/// lines go to stdout only, never to the events file.
pub fn flood(name: &str) {
    let config = Config::load(name);
    let lines = config.u64_or("flood_lines", 20_000);
    let bytes = config.u64_or("flood_line_bytes", 200).clamp(32, 65_536) as usize;
    let mut written = 0u64;
    {
        let mut stdout = std::io::stdout().lock();
        let mut line = Vec::with_capacity(bytes + 1);
        for n in 0..lines {
            line.clear();
            line.extend_from_slice(format!("{name} flood line {n} ").as_bytes());
            line.resize(bytes, b'x');
            line.push(b'\n');
            if stdout.write_all(&line).is_err() {
                break;
            }
            written += 1;
        }
        let _ = stdout.flush();
    }
    emit(&format!("{name} flood-done lines={written}"));
}

/// Waits until the process is killed or SIGTERM ends it.
pub fn park_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Parses a Go-style duration as found in a KubeletConfiguration
/// (`30s`, `1m30s`, `500ms`, `2h`), to milliseconds.
pub fn parse_go_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim().trim_matches('"').trim_matches('\'');
    if text.is_empty() {
        return None;
    }
    if text == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * factor;
    }
    Some(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_keys_values_comments_and_blank_lines() {
        let (config, warnings) = Config::parse_with_warnings(
            "# c\n\n grace_ms = 250 \nanswer_shutdown=false\nnonsense\n",
        );
        assert_eq!(config.get("grace_ms"), Some("250"));
        assert_eq!(config.u64_or("grace_ms", 1), 250);
        assert!(!config.bool_or("answer_shutdown", true));
        assert_eq!(config.u64_or("missing", 7), 7);
        assert_eq!(warnings, vec!["nonsense".to_string()]);
    }

    #[test]
    fn config_bad_numbers_fall_back_to_the_default() {
        let config = Config::parse("grace_ms=soon\nexit_code=-3\nflag=maybe");
        assert_eq!(config.u64_or("grace_ms", 9), 9);
        assert_eq!(config.i32_or("exit_code", 1), -3);
        assert!(config.bool_or("flag", true));
    }

    #[test]
    fn json_array_escapes_quotes_backslashes_and_controls() {
        assert_eq!(
            json_string_array(["/bin/kubelet", "a\"b", "c\\d", "e\nf", "\u{1}"]),
            r#"["/bin/kubelet","a\"b","c\\d","e\nf","\u0001"]"#
        );
        assert_eq!(json_string_array(Vec::<String>::new()), "[]");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration_ms("30s"), Some(30_000));
        assert_eq!(parse_go_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_go_duration_ms("\"500ms\""), Some(500));
        assert_eq!(parse_go_duration_ms("1.5s"), Some(1500));
        assert_eq!(parse_go_duration_ms("2h"), Some(7_200_000));
        assert_eq!(parse_go_duration_ms("0"), Some(0));
        assert_eq!(parse_go_duration_ms("30"), None);
        assert_eq!(parse_go_duration_ms("s"), None);
        assert_eq!(parse_go_duration_ms("3 days"), None);
    }

    #[test]
    fn root_source_is_the_last_mount_on_slash() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    30 22 0:40 / / rw shared:5 - overlay kios-e2e-sandbox rw,lowerdir=x\n\
                    31 30 0:41 / /proc rw - proc proc rw\n";
        assert_eq!(
            root_source_in_mountinfo(text).as_deref(),
            Some(SANDBOX_ROOT_SOURCE)
        );
        assert_eq!(root_source_in_mountinfo("garbage\n"), None);
    }
}
