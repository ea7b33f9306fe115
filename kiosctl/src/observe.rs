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

/// Control characters as visible escapes (`\n`, `\u{1b}`): a command line
/// cannot move the cursor or fake a table row.
pub fn escape(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
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

fn cut(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max.saturating_sub(3)).collect();
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
            (Some(pod), Some(c)) => format!("{pod}/{c}"),
            (Some(pod), None) => pod.clone(),
            (None, Some(c)) => c.clone(),
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
            escape(&pod),
            if view.wide {
                command
            } else {
                cut(command, COMMAND_WIDTH)
            },
        ];
        if view.wide {
            row.extend([
                p.ppid.to_string(),
                escape(&p.cgroup),
                escape(p.exe.as_deref().unwrap_or("-")),
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
        escape(&r.message)
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
    fn escape_shows_control_characters() {
        assert_eq!(escape("sh -c 'a\nb'\u{1b}[2J"), "sh -c 'a\\nb'\\u{1b}[2J");
        assert_eq!(escape("plain"), "plain");
    }
}
