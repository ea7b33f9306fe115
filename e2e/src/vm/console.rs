//! The VM's serial console, as qemu writes it to a file (`-serial file:`).
//!
//! [`Console`] reads the file incrementally into lines, each stamped with
//! the host time it was first seen (the crash-loop test measures back-off
//! from these). A cursor makes successive waits consume the log in order.
//! [`parse_admin_blocks`] turns the kubelet stand-in's admin script output
//! (`KIOS-E2E BEGIN <n> <command>` ... `KIOS-E2E END <n> rc=<code>`) into
//! [`AdminCommand`]s.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::VmError;

/// Prefix of every line the stand-ins print.
pub const MARKER: &str = "KIOS-E2E ";

/// Longest console line kept (a runaway line is cut, never buffered forever).
const MAX_LINE: usize = 1 << 20;

/// One console line and when the harness first saw it.
#[derive(Debug, Clone)]
pub struct Line {
    pub seen: Instant,
    pub text: String,
}

/// The console log of one boot (or of several boots written to one file).
#[derive(Debug)]
pub struct Console {
    path: PathBuf,
    read_bytes: u64,
    partial: Vec<u8>,
    lines: Vec<Line>,
    cursor: usize,
}

impl Console {
    pub fn new(path: &Path) -> Console {
        Console {
            path: path.to_owned(),
            read_bytes: 0,
            partial: Vec::new(),
            lines: Vec::new(),
            cursor: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what qemu appended since the last call. A missing file is an
    /// empty console (qemu creates it when it starts).
    pub fn poll(&mut self) -> Result<(), VmError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(VmError::io("open", &self.path, e)),
        };
        file.seek(SeekFrom::Start(self.read_bytes))
            .map_err(|e| VmError::io("seek", &self.path, e))?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh)
            .map_err(|e| VmError::io("read", &self.path, e))?;
        self.read_bytes += fresh.len() as u64;
        self.push_bytes(&fresh, Instant::now());
        Ok(())
    }

    /// Splits bytes into lines (`\r` dropped); an unfinished line waits.
    fn push_bytes(&mut self, bytes: &[u8], seen: Instant) {
        for &b in bytes {
            match b {
                b'\n' => {
                    let text = String::from_utf8_lossy(&self.partial).into_owned();
                    self.partial.clear();
                    self.lines.push(Line { seen, text });
                }
                b'\r' => {}
                _ if self.partial.len() < MAX_LINE => self.partial.push(b),
                _ => {}
            }
        }
    }

    /// Every complete line so far.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// The text of every complete line so far.
    pub fn texts(&self) -> Vec<&str> {
        self.lines.iter().map(|l| l.text.as_str()).collect()
    }

    /// The first line at or after the cursor that matches; moves the cursor
    /// past it.
    pub fn take_match(&mut self, matches: &dyn Fn(&str) -> bool) -> Option<Line> {
        let found = self.lines[self.cursor..]
            .iter()
            .position(|l| matches(&l.text))?;
        let index = self.cursor + found;
        self.cursor = index + 1;
        Some(self.lines[index].clone())
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        let mut out: Vec<&str> = self.lines[start..]
            .iter()
            .map(|l| l.text.as_str())
            .collect();
        let partial = String::from_utf8_lossy(&self.partial);
        if !partial.is_empty() {
            out.push(&partial);
            return out.join("\n");
        }
        out.join("\n")
    }

    /// The admin script blocks printed so far.
    pub fn admin_blocks(&self) -> Vec<AdminCommand> {
        parse_admin_blocks(self.lines.iter().map(|l| l.text.as_str()))
    }
}

/// A service stand-in start seen on the console (`KIOS-E2E <service>
/// started pid=N ...`).
#[derive(Debug, Clone)]
pub struct Started {
    pub seen: Instant,
    pub pid: u32,
    /// The argv the kubelet stand-in recorded (`argv=<json>`), if printed.
    pub argv: Option<Vec<String>>,
}

/// Every start of `service` (`crio` or `kubelet`) in the lines, in order.
pub fn starts(lines: &[Line], service: &str) -> Vec<Started> {
    let prefix = format!("{MARKER}{service} started pid=");
    lines
        .iter()
        .filter_map(|line| {
            let at = line.text.find(&prefix)?;
            let rest = &line.text[at + prefix.len()..];
            let pid_text: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let pid = pid_text.parse().ok()?;
            let argv = rest
                .find(" argv=")
                .and_then(|i| serde_json::from_str::<Vec<String>>(&rest[i + 6..]).ok());
            Some(Started {
                seen: line.seen,
                pid,
                argv,
            })
        })
        .collect()
}

/// One command of the admin script as the kubelet stand-in reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCommand {
    /// The command's number in the script (from the BEGIN line).
    pub n: u32,
    /// The command line, e.g. `kiosctl status -o json`.
    pub command: String,
    /// Its stdout and stderr lines, in order.
    pub output: Vec<String>,
    /// Its exit code; `None` when the END line never came (the node went
    /// down or the console was cut).
    pub rc: Option<i32>,
}

impl AdminCommand {
    /// The output as one string.
    pub fn text(&self) -> String {
        self.output.join("\n")
    }

    /// The JSON object the command printed (`-o json`): the first line that
    /// parses as one, else the first object in the whole output (for
    /// pretty-printed JSON over several lines).
    pub fn json(&self) -> Option<serde_json::Value> {
        let one_line = self.output.iter().find_map(|line| {
            let start = line.find('{')?;
            serde_json::from_str::<serde_json::Value>(&line[start..]).ok()
        });
        if one_line.is_some() {
            return one_line;
        }
        let text = self.output.join("\n");
        let start = text.find('{')?;
        serde_json::Deserializer::from_str(&text[start..])
            .into_iter::<serde_json::Value>()
            .next()
            .and_then(Result::ok)
    }
}

/// True for a kernel log line on the console (`[    1.234567] ...`): those
/// interleave with command output and are not part of it.
fn is_kernel_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some(end) = rest.find(']') else {
        return false;
    };
    let stamp = rest[..end].trim();
    !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// Parses `KIOS-E2E BEGIN <n> <command>` / output / `KIOS-E2E END <n> rc=<code>`
/// blocks. Other stand-in lines and kernel log lines inside a block are not
/// output. A BEGIN with no END yields a command with `rc: None`.
pub fn parse_admin_blocks<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<AdminCommand> {
    let mut done = Vec::new();
    let mut open: Option<AdminCommand> = None;
    for line in lines {
        // The marker may follow other text on the same console line when a
        // kernel message was cut into it; look for it anywhere.
        let marked = line.find(MARKER).map(|i| &line[i + MARKER.len()..]);
        if let Some(rest) = marked {
            if let Some(begin) = rest.strip_prefix("BEGIN ") {
                let (n, command) = begin.split_once(' ').unwrap_or((begin, ""));
                if let Ok(n) = n.trim().parse() {
                    if let Some(unfinished) = open.take() {
                        done.push(unfinished);
                    }
                    open = Some(AdminCommand {
                        n,
                        command: command.trim().to_owned(),
                        output: Vec::new(),
                        rc: None,
                    });
                    continue;
                }
            }
            if let Some(end) = rest.strip_prefix("END ") {
                let mut words = end.split_whitespace();
                let n: Option<u32> = words.next().and_then(|w| w.parse().ok());
                let rc: Option<i32> = words
                    .next()
                    .and_then(|w| w.strip_prefix("rc="))
                    .and_then(|w| w.parse().ok());
                if let (Some(n), Some(mut cmd)) = (n, open.take()) {
                    if cmd.n == n {
                        cmd.rc = rc;
                        done.push(cmd);
                    } else {
                        open = Some(cmd);
                    }
                }
            }
            continue;
        }
        if is_kernel_line(line) {
            continue;
        }
        if let Some(cmd) = open.as_mut() {
            cmd.output.push(line.to_owned());
        }
    }
    if let Some(unfinished) = open {
        done.push(unfinished);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_with_output_rc_and_noise() {
        let log = "\
[    1.000000] kiOS: booting
KIOS-E2E kubelet started pid=90 argv=[]
KIOS-E2E BEGIN 1 kiosctl status -o json
{\"ok\":true,\"services\":[]}
[    2.500000] kiOS: restart requested by pid 120
KIOS-E2E crio started pid=77
KIOS-E2E END 1 rc=0
between blocks
KIOS-E2E BEGIN 2 kiosctl verify
/bin/evil  unexpected
KIOS-E2E END 2 rc=1
KIOS-E2E BEGIN 3 kiosctl shutdown
";
        let blocks = parse_admin_blocks(log.lines());
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0].n, 1);
        assert_eq!(blocks[0].command, "kiosctl status -o json");
        assert_eq!(blocks[0].output, vec!["{\"ok\":true,\"services\":[]}"]);
        assert_eq!(blocks[0].rc, Some(0));
        assert_eq!(blocks[0].json().unwrap()["ok"], true);
        assert_eq!(blocks[1].output, vec!["/bin/evil  unexpected"]);
        assert_eq!(blocks[1].rc, Some(1));
        assert_eq!(blocks[2].command, "kiosctl shutdown");
        assert_eq!(blocks[2].rc, None);
    }

    #[test]
    fn pretty_json_over_several_lines() {
        let cmd = AdminCommand {
            n: 1,
            command: "kiosctl boot -o json".into(),
            output: vec![
                "{".into(),
                "  \"ok\": true".into(),
                "}".into(),
                "trailer".into(),
            ],
            rc: Some(0),
        };
        assert_eq!(cmd.json().unwrap()["ok"], true);
        let none = AdminCommand {
            output: vec!["no json".into()],
            ..cmd
        };
        assert!(none.json().is_none());
    }

    #[test]
    fn mismatched_end_does_not_close_block() {
        let log = "KIOS-E2E BEGIN 4 kiosctl boot\nline\nKIOS-E2E END 5 rc=0\nKIOS-E2E END 4 rc=3\n";
        let blocks = parse_admin_blocks(log.lines());
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].rc, Some(3));
        assert_eq!(blocks[0].output, vec!["line"]);
    }

    #[test]
    fn starts_parse_pid_and_argv() {
        let mut console = Console::new(Path::new("/nonexistent"));
        console.push_bytes(
            b"KIOS-E2E crio started pid=70 start=1\n\
KIOS-E2E kubelet started pid=91 argv=[\"/bin/kubelet\",\"--config\",\"/etc/kubernetes/config.yaml\"]\n\
KIOS-E2E kubelet shutdown-event\n\
KIOS-E2E crio started pid=75 start=2\n",
            Instant::now(),
        );
        let crio = starts(console.lines(), "crio");
        assert_eq!(crio.iter().map(|s| s.pid).collect::<Vec<_>>(), vec![70, 75]);
        assert!(crio[0].argv.is_none());
        let kubelet = starts(console.lines(), "kubelet");
        assert_eq!(kubelet.len(), 1);
        assert_eq!(kubelet[0].pid, 91);
        assert_eq!(
            kubelet[0].argv.as_deref().unwrap(),
            ["/bin/kubelet", "--config", "/etc/kubernetes/config.yaml"]
        );
    }

    #[test]
    fn kernel_lines_are_recognised() {
        assert!(is_kernel_line("[    0.123456] Linux version"));
        assert!(!is_kernel_line("[ok] not the kernel"));
        assert!(!is_kernel_line("plain"));
        assert!(!is_kernel_line("[] empty"));
    }

    #[test]
    fn console_splits_lines_and_keeps_partial() {
        let mut console = Console::new(Path::new("/nonexistent/console.log"));
        let now = Instant::now();
        console.push_bytes(b"one\r\ntw", now);
        assert_eq!(console.texts(), vec!["one"]);
        console.push_bytes(b"o\nthree\n", now);
        assert_eq!(console.texts(), vec!["one", "two", "three"]);
        let hit = console.take_match(&|l| l.starts_with('t')).unwrap();
        assert_eq!(hit.text, "two");
        let hit = console.take_match(&|l| l.starts_with('t')).unwrap();
        assert_eq!(hit.text, "three");
        assert!(console.take_match(&|l| l.starts_with('t')).is_none());
        // a missing file is an empty console, not an error
        console.poll().unwrap();
    }
}
