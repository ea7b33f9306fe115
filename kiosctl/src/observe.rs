//! `ps`, `logs kernel|init` and `audit`: their requests and renderers.
//! `ps` prints the process tree with each process's role; the kernel log
//! prints like `dmesg` (levels coloured on a terminal, `-o wide` adds wall
//! time, `-o json` one record per line); `audit` lists who changed what.

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use kios_protocol::{
    AuditEntry, AuditReply, Event, KernelLogReply, KmsgRecord, ProcessInfo, PsReply, Request,
};

use crate::exit::Exit;
use crate::output::Color;
use crate::render::{self, table, View};
use crate::session::Session;

/// Text from the node as shown in a table: the escaped form of
/// `kios_protocol::path` word by word (`\xNN` for control, white-space
/// other than the separating space, zero-width and direction-changing
/// characters, `\\` for a backslash), so a command line cannot move the
/// cursor, fake a table row or disguise its name; `kios_protocol::path::
/// unescape` gives the text back.
pub fn escape(text: &str) -> String {
    kios_protocol::path::escape_words(text)
}

/// A kernel log message: /dev/kmsg already sends printable ASCII with its
/// own `\xNN` escapes (a backslash is `\x5c`), which `unescape` reads
/// too, so such a message is shown as sent; anything else (init's
/// in-memory lines in the sandbox, a message from elsewhere) is escaped.
pub fn escape_message(text: &str) -> String {
    if text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        text.to_string()
    } else {
        escape(text)
    }
}

fn user(uid: u32) -> String {
    if uid == 0 {
        "root".to_string()
    } else {
        uid.to_string()
    }
}

fn kib(kib: u64) -> String {
    match kib {
        k if k >= 1024 * 1024 => format!("{:.1}G", k as f64 / (1024.0 * 1024.0)),
        k if k >= 1024 => format!("{:.1}M", k as f64 / 1024.0),
        k => format!("{k}K"),
    }
}

fn cpu(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        render::short_duration(ms)
    }
}

/// Processes in tree order (parents before children, siblings by pid),
/// each with its depth. Processes whose parent is not listed are roots.
pub fn tree(processes: &[ProcessInfo]) -> Vec<(usize, &ProcessInfo)> {
    let pids: HashSet<u32> = processes.iter().map(|p| p.pid).collect();
    let mut children: BTreeMap<u32, Vec<&ProcessInfo>> = BTreeMap::new();
    let mut roots = Vec::new();
    for p in processes {
        if p.ppid != p.pid && pids.contains(&p.ppid) {
            children.entry(p.ppid).or_default().push(p);
        } else {
            roots.push(p);
        }
    }
    let mut out = Vec::with_capacity(processes.len());
    let mut seen = HashSet::new();
    let mut stack: Vec<(usize, &ProcessInfo)> = roots.into_iter().rev().map(|p| (0, p)).collect();
    while let Some((depth, p)) = stack.pop() {
        if !seen.insert(p.pid) {
            continue;
        }
        out.push((depth, p));
        if let Some(kids) = children.get(&p.pid) {
            stack.extend(kids.iter().rev().map(|k| (depth + 1, *k)));
        }
    }
    // A parent cycle (pid reuse while /proc was read) leaves some unvisited.
    for p in processes {
        if !seen.contains(&p.pid) {
            out.push((0, p));
        }
    }
    out
}

const COMMAND_WIDTH: usize = 90;

/// `text` (in the escaped form) cut to `max` characters with `...`, never
/// inside an escape (`\\` or `\xNN`).
fn cut(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let keep = max.saturating_sub(3);
    let mut end = 0;
    let mut kept = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        let len = match (c, chars.peek().map(|&(_, n)| n)) {
            ('\\', Some('\\')) => 2,
            ('\\', Some('x')) => 4,
            _ => 1,
        };
        if kept + len > keep {
            break;
        }
        for _ in 1..len {
            chars.next();
        }
        kept += len;
        end = chars.peek().map_or(text.len(), |&(j, _)| j);
    }
    let mut cut = text[..end].to_string();
    cut.push_str("...");
    cut
}

/// `kiosctl ps`.
pub fn ps_table(reply: &PsReply, view: View) -> String {
    let mut headers = vec![
        "PID",
        "USER",
        "AGE",
        "CPU",
        "RSS",
        "ROLE",
        "POD/CONTAINER",
        "COMMAND",
    ];
    if view.wide {
        headers.extend(["PPID", "CGROUP", "EXE", "WHY"]);
    }
    let mut rows = Vec::new();
    for (depth, p) in tree(&reply.processes) {
        let role = if p.role == "unexpected" {
            view.painter.paint("UNEXPECTED", Color::Red)
        } else {
            p.role.clone()
        };
        let pod = match (&p.pod, &p.container) {
            (Some(pod), Some(c)) => format!("{}/{}", escape(pod), escape(c)),
            (Some(pod), None) => escape(pod),
            (None, Some(c)) => escape(c),
            (None, None) => "-".to_string(),
        };
        let indent = if depth == 0 {
            String::new()
        } else {
            format!("{}\\_ ", "  ".repeat(depth.min(16) - 1))
        };
        let command = format!("{indent}{}", escape(&p.command));
        let mut row = vec![
            p.pid.to_string(),
            user(p.uid),
            render::short_duration(p.age_ms),
            cpu(p.cpu_ms),
            kib(p.rss_kib),
            role,
            pod,
            if view.wide {
                command
            } else {
                cut(command, COMMAND_WIDTH)
            },
        ];
        if view.wide {
            row.extend([
                p.ppid.to_string(),
                kios_protocol::path::escape_str(&p.cgroup),
                p.exe
                    .as_deref()
                    .map_or("-".to_string(), kios_protocol::path::escape_str),
                p.why.clone(),
            ]);
        }
        rows.push(row);
    }
    let mut text = table(&headers, &rows, view.no_headers);
    if view.no_headers {
        return text;
    }
    let listed_threads = reply.processes.iter().any(|p| p.role == "kernel-thread");
    if reply.kernel_threads > 0 && !listed_threads {
        text.push_str(&format!(
            "({} kernel threads not listed; -a lists them)\n",
            reply.kernel_threads
        ));
    }
    let mut summary = format!("{} processes", reply.processes.len());
    if reply.unexpected == 0 {
        summary.push_str(", none unexpected");
    } else {
        let note = format!(
            ", {} UNEXPECTED (not init, cri-o, the kubelet, a conmon or a container; verify reports them too)",
            reply.unexpected
        );
        summary.push_str(&view.painter.paint(&note, Color::Red));
    }
    if reply.truncated {
        summary.push_str("; the node has more processes than init reads at once");
    }
    text.push('\n');
    text.push_str(&summary);
    text.push('\n');
    text
}

pub fn ps(s: &mut Session, all: bool) -> Result<Exit> {
    let reply: PsReply = s.ask(&Request::Ps { all })?;
    if !s.json {
        s.out.write(&ps_table(&reply, s.view))?;
    }
    Ok(Exit::Ok)
}

fn level_color(level: u8) -> Option<Color> {
    match level {
        0..=3 => Some(Color::Red),
        4 => Some(Color::Yellow),
        5 => Some(Color::Bold),
        7 => Some(Color::Dim),
        _ => None,
    }
}

/// One record: `[   12.345678] info    message`; wide puts the wall time
/// (boot time plus the record's offset) first.
pub fn record_line(r: &KmsgRecord, boot_ms: u64, view: View) -> String {
    let level = format!("{:<7}", r.level_name());
    let level = match level_color(r.level) {
        Some(color) => view.painter.paint(&level, color),
        None => level,
    };
    let mut line = format!(
        "[{:>5}.{:06}] {level} {}",
        r.usec / 1_000_000,
        r.usec % 1_000_000,
        escape_message(&r.message)
    );
    if view.wide {
        line = format!("{}  {line}", render::timestamp(boot_ms + r.usec / 1000));
    }
    line
}

/// The note a follower's gap becomes.
pub fn missed_line(count: u64) -> String {
    format!("-- {count} kernel log lines missed (overwritten in the kernel's ring buffer or read too slowly) --")
}

pub fn kernel_log(s: &mut Session, request: Request) -> Result<Exit> {
    let follow = request.is_streaming();
    // One record per line with -o json: not the reply line.
    let reply: KernelLogReply = {
        let json = std::mem::replace(&mut s.json, false);
        let reply = s.ask(&request);
        s.json = json;
        reply?
    };
    for r in &reply.records {
        let line = if s.json {
            serde_json::to_string(r)?
        } else {
            record_line(r, reply.boot_ms, s.view)
        };
        s.out.line(&line)?;
    }
    s.out.flush()?;
    if !follow {
        return Ok(Exit::Ok);
    }
    while let Some(raw) = s.conn.next_event()? {
        match Event::decode(&raw) {
            Ok(Event::Kmsg(r)) if s.json => s.out.line(&serde_json::to_string(&r)?)?,
            Ok(Event::Kmsg(r)) => s.out.line(&record_line(&r, reply.boot_ms, s.view))?,
            Ok(Event::KmsgMissed { .. }) if s.json => s.out.line(&raw)?,
            Ok(Event::KmsgMissed { count }) => s
                .out
                .line(&s.view.painter.paint(&missed_line(count), Color::Yellow))?,
            _ => {}
        }
        s.out.flush()?;
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        b"kiosctl: the node closed the connection; logs --follow ended\n",
    );
    Ok(Exit::Ok)
}

/// `by` of an entry, for one line.
pub fn audit_by(e: &AuditEntry) -> String {
    escape(&e.by)
}

/// `kiosctl audit`: newest last; earlier boots marked.
pub fn audit_table(reply: &AuditReply, view: View) -> String {
    let mut headers = vec!["TIME", "BOOT", "ACTION", "BY", "OUTCOME"];
    if view.wide {
        headers.extend(["PID", "UID", "COMMAND"]);
    }
    let boot_of = |e: &AuditEntry| {
        if e.boot_ms == reply.boot_ms {
            "this".to_string()
        } else {
            format!("since {}", render::timestamp(e.boot_ms))
        }
    };
    let rows: Vec<Vec<String>> = reply
        .entries
        .iter()
        .map(|e| {
            let outcome = match e.outcome.as_str() {
                "ok" | "started" | "forced" => e.outcome.clone(),
                other => view.painter.paint(other, Color::Red),
            };
            let mut row = vec![
                render::timestamp(e.at_ms),
                boot_of(e),
                escape(&e.action),
                audit_by(e),
                outcome,
            ];
            if view.wide {
                row.extend([
                    e.pid.map_or("-".into(), |p| p.to_string()),
                    e.uid.map_or("-".into(), |u| u.to_string()),
                    escape(e.command.as_deref().unwrap_or("-")),
                ]);
            }
            row
        })
        .collect();
    if rows.is_empty() && !view.no_headers {
        return "no audit entries (nothing changed the node's state yet)\n".to_string();
    }
    table(&headers, &rows, view.no_headers)
}

pub fn audit(s: &mut Session, lines: usize) -> Result<Exit> {
    let reply: AuditReply = s.ask(&Request::Audit { lines })?;
    if !s.json {
        s.out.write(&audit_table(&reply, s.view))?;
    }
    Ok(Exit::Ok)
}

/// The `status` line about what ended the previous boot.
pub fn previous_shutdown(e: &AuditEntry) -> String {
    format!(
        "boot ended by '{}' from {} at {} ({})",
        escape(&e.action),
        audit_by(e),
        render::timestamp(e.at_ms),
        e.outcome
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid,
            uid: 0,
            age_ms: 0,
            cpu_ms: 0,
            rss_kib: 0,
            role: "x".into(),
            why: String::new(),
            pod: None,
            container: None,
            command: String::new(),
            cgroup: String::new(),
            exe: None,
        }
    }

    #[test]
    fn tree_orders_parents_first_and_survives_cycles() {
        let procs = vec![p(1, 0), p(5, 1), p(7, 5), p(6, 1), p(9, 10), p(10, 9)];
        let order: Vec<(usize, u32)> = tree(&procs).iter().map(|(d, p)| (*d, p.pid)).collect();
        assert_eq!(order, vec![(0, 1), (1, 5), (2, 7), (1, 6), (0, 9), (0, 10)]);
    }

    #[test]
    fn escape_shows_controls_bidi_and_zero_width_characters_reversibly() {
        for (text, shown) in [
            ("sh -c 'a\nb'\u{1b}[2J", "sh -c 'a\\x0ab'\\x1b[2J"),
            ("plain words", "plain words"),
            // A right-to-left override that would show "sleep 300" as "003 peels".
            ("\u{202e}sleep 300", "\\xe2\\x80\\xaesleep 300"),
            (
                "sleep\u{2066} 300\u{2069}",
                "sleep\\xe2\\x81\\xa6 300\\xe2\\x81\\xa9",
            ),
            ("a\u{200f}b", "a\\xe2\\x80\\x8fb"),
            // A zero-width space inside a name that then reads "kubelet".
            ("/bin/kube\u{200b}let", "/bin/kube\\xe2\\x80\\x8blet"),
            (
                "x\u{feff}\u{2060}\u{200d}",
                "x\\xef\\xbb\\xbf\\xe2\\x81\\xa0\\xe2\\x80\\x8d",
            ),
            ("C:\\dir", "C:\\\\dir"),
        ] {
            assert_eq!(escape(text), shown, "{text:?}");
            assert_eq!(
                kios_protocol::path::unescape(shown).unwrap(),
                text.as_bytes(),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_cut_command_never_ends_inside_an_escape() {
        let shown = escape("abcdef\u{202e}gh");
        assert_eq!(shown, "abcdef\\xe2\\x80\\xaegh");
        for max in 4..shown.len() {
            let cut = cut(shown.clone(), max);
            assert!(cut.chars().count() <= max, "{max}: {cut}");
            let body = cut.strip_suffix("...").unwrap();
            assert!(kios_protocol::path::unescape(body).is_ok(), "{max}: {cut}");
        }
        assert_eq!(cut("a\\\\bcdef".to_string(), 6), "a\\\\...");
        assert_eq!(cut("a\\\\bcdef".to_string(), 5), "a...");
        assert_eq!(cut("short".to_string(), 5), "short");
    }

    #[test]
    fn kernel_messages_keep_the_kernels_escapes_and_escape_the_rest() {
        // As /dev/kmsg sends it: printable ASCII, a backslash as \x5c.
        let kernel = "usb 1-1: name \\x5cx41\\x0a";
        assert_eq!(escape_message(kernel), kernel);
        assert_eq!(
            escape_message("kiOS: request 'restart kubelet'"),
            "kiOS: request 'restart kubelet'"
        );
        assert_eq!(
            escape_message("kiOS: a\u{202e}b c\\d"),
            "kiOS: a\\xe2\\x80\\xaeb c\\\\d"
        );
        assert_eq!(escape_message("kiOS: \u{1b}[2J"), "kiOS: \\x1b[2J");
    }
}
