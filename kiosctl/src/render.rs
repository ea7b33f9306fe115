//! Rendering replies for people: tables (tabled, no borders, columns three
//! spaces apart), durations and ages (humantime, two units: "3h 12m",
//! "12s ago"), timestamps (RFC 3339, UTC) and plain event lines.
//!
//! Every function here is pure: it takes the reply, the view options and
//! "now" (from the node's clock where the reply carries it) and returns
//! text, so the snapshots in tests/ pin the exact output.

use std::time::{Duration, UNIX_EPOCH};

use kios_protocol::{
    BootReply, ClientInfo, Dialect, Event, ExitStatus, FileInfo, FilesReply, LogLine, LogindChange,
    LogindEvent, Milestone, ServiceState, ServiceStatus, ShutdownPhase, ShutdownStatus,
    StatusReply, VerifyReply, VersionReply,
};
use tabled::builder::Builder;
use tabled::settings::{Padding, Style};

use crate::output::{Color, Painter};

/// How a reply is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// `-o wide`: more columns.
    pub wide: bool,
    /// `--no-headers`: rows only.
    pub no_headers: bool,
    pub painter: Painter,
}

/// Replaces control characters (escape sequences from a service's output,
/// stray newlines in a file name) so they cannot corrupt a terminal or a
/// table; tabs become spaces.
pub fn sanitize(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| match c {
            '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// A table with no borders, columns three spaces apart, no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>], no_headers: bool) -> String {
    if rows.is_empty() && no_headers {
        return String::new();
    }
    let mut builder = Builder::default();
    if !no_headers {
        builder.push_record(headers.iter().map(|h| h.to_string()));
    }
    for row in rows {
        builder.push_record(row.iter().map(|cell| sanitize_cell(cell)));
    }
    let mut table = builder.build();
    table.with(Style::empty()).with(Padding::new(0, 3, 0, 0));
    let mut text = String::new();
    for line in table.to_string().lines() {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Cells may carry colour (ESC sequences made by [`Painter`]); everything
/// else that is a control character goes.
fn sanitize_cell(cell: &str) -> String {
    if !cell.chars().any(|c| c.is_control() && c != '\x1b') {
        return cell.to_string();
    }
    cell.chars()
        .map(|c| match c {
            '\x1b' => c,
            '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// "3h 12m", "5m 2s", "12s", "2days 4h": the two largest units.
pub fn short_duration(ms: u64) -> String {
    let secs = ms / 1000;
    let truncated = match secs {
        s if s >= 86_400 => s - s % 3_600,
        s if s >= 3_600 => s - s % 60,
        s => s,
    };
    let text = humantime::format_duration(Duration::from_secs(truncated)).to_string();
    text.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// `status`'s clock line: "wall clock stepped 2 times since boot, last
/// backward by 3days" (uptime and ages do not depend on it: uptime is
/// monotonic, ages are measured against the node's `now_ms`).
pub fn clock_steps_text(steps: u64, last_ms: i64) -> String {
    let count = if steps == 1 {
        "once".to_string()
    } else {
        format!("{steps} times")
    };
    let direction = if last_ms < 0 { "backward" } else { "forward" };
    format!(
        "wall clock stepped {count} since boot, last {direction} by {} (uptime is monotonic; see the kernel log)",
        short_duration(last_ms.unsigned_abs())
    )
}

/// "12s ago", "3h 12m ago", "just now"; "in 4s" for times after `now_ms`.
pub fn age(at_ms: u64, now_ms: u64) -> String {
    if at_ms > now_ms {
        let ahead = at_ms - now_ms;
        // Within a second either way is clock noise between node and us.
        return if ahead < 1000 {
            "just now".to_string()
        } else {
            format!("in {}", short_duration(ahead))
        };
    }
    let ago = now_ms - at_ms;
    if ago < 1000 {
        "just now".to_string()
    } else {
        format!("{} ago", short_duration(ago))
    }
}

/// `2026-11-29T08:00:50.123Z`.
pub fn timestamp(at_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at_ms)).to_string()
}

/// Seconds with millisecond precision: `1.532s`.
pub fn seconds(ms: f64) -> String {
    format!("{:.3}s", ms / 1000.0)
}

fn state_color(state: ServiceState) -> Color {
    match state {
        ServiceState::Running => Color::Green,
        ServiceState::Starting | ServiceState::Waiting | ServiceState::Stopping => Color::Yellow,
        ServiceState::Backoff | ServiceState::Stopped => Color::Red,
    }
}

/// `exit 1`, `signal 9`, or `-`.
pub fn exit_text(exit: Option<&ExitStatus>) -> String {
    match exit {
        None => "-".to_string(),
        Some(ExitStatus {
            signal: Some(signal),
            ..
        }) => format!("signal {signal}"),
        Some(ExitStatus {
            code: Some(code), ..
        }) => format!("exit {code}"),
        Some(ExitStatus { .. }) => "exited".to_string(),
    }
}

fn last_exit(exit: Option<&ExitStatus>, now_ms: u64) -> String {
    match exit {
        None => "-".to_string(),
        Some(e) => format!("{}, {}", exit_text(Some(e)), age(e.at_ms, now_ms)),
    }
}

/// The node's clock at the time of a status reply (`now_ms`; from an
/// older init, `boot_ms + uptime_ms`).
pub fn status_now(status: &StatusReply) -> u64 {
    match status.node.now_ms {
        0 => status.node.boot_ms.saturating_add(status.node.uptime_ms),
        now => now,
    }
}

fn shutdown_text(shutdown: Option<&ShutdownStatus>, now_ms: u64) -> String {
    match shutdown {
        None => "none".to_string(),
        Some(s) => {
            let force = if s.force { ", force" } else { "" };
            format!(
                "{} ({}{force}), requested {} by {}",
                s.phase,
                s.mode,
                age(s.since_ms, now_ms),
                s.requested_by
            )
        }
    }
}

fn phase_color(phase: ShutdownPhase) -> Color {
    match phase {
        ShutdownPhase::Draining | ShutdownPhase::Stopping => Color::Yellow,
        ShutdownPhase::Unmounting | ShutdownPhase::Syncing | ShutdownPhase::Final => Color::Red,
    }
}

fn service_row(s: &ServiceStatus, now_ms: u64, view: View) -> Vec<String> {
    let mut row = vec![
        s.name.to_string(),
        view.painter.paint(s.state.as_str(), state_color(s.state)),
        s.pid.map_or("-".to_string(), |p| p.to_string()),
        short_duration(now_ms.saturating_sub(s.since_ms)),
        s.restarts.to_string(),
        last_exit(s.last_exit.as_ref(), now_ms),
    ];
    if view.wide {
        row.push(timestamp(s.since_ms));
        row.push(s.next_start_ms.map_or("-".to_string(), |t| age(t, now_ms)));
    }
    row
}

/// The services table of `status` (also the top of the live view).
pub fn services_table(services: &[ServiceStatus], now_ms: u64, view: View) -> String {
    let mut headers = vec!["SERVICE", "STATE", "PID", "FOR", "RESTARTS", "LAST EXIT"];
    if view.wide {
        headers.extend(["SINCE", "NEXT START"]);
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| service_row(s, now_ms, view))
        .collect();
    table(&headers, &rows, view.no_headers)
}

fn dialect_text(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Silent => "silent",
        Dialect::Legacy => "legacy",
        Dialect::Line => "line",
    }
}

fn clients_table(clients: &[ClientInfo], now_ms: u64) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                opt(c.pid.map(|p| p.to_string())),
                opt(c.uid.map(|u| u.to_string())),
                opt(c.command.clone()),
                dialect_text(c.dialect).to_string(),
                if c.kubelet { "yes" } else { "no" }.to_string(),
                age(c.since_ms, now_ms),
            ]
        })
        .collect();
    table(
        &[
            "CLIENT",
            "PID",
            "UID",
            "COMMAND",
            "DIALECT",
            "KUBELET",
            "CONNECTED",
        ],
        &rows,
        false,
    )
}

/// `kiosctl status`: the node, then the services (and, wide, the socket's
/// clients). With `--no-headers` only the service rows remain.
pub fn status(reply: &StatusReply, view: View) -> String {
    let now = status_now(reply);
    let services = services_table(&reply.services, now, view);
    if view.no_headers {
        return services;
    }
    let node = &reply.node;
    let datapart = match &node.datapart {
        None => "none (datapart=none: nothing persists)".to_string(),
        Some(d) if d.mounted && d.read_only => view.painter.paint(
            &format!(
                "{} (mounted READ-ONLY): {}",
                d.device.as_deref().unwrap_or("?"),
                d.problem.as_deref().unwrap_or("the device refuses writes")
            ),
            Color::Yellow,
        ),
        Some(d) if d.mounted => format!("{} (mounted)", d.device.as_deref().unwrap_or("?")),
        Some(d) => {
            let problem = d.problem.as_deref().unwrap_or("not mounted");
            let text = format!(
                "not mounted (wanted {}): {problem}",
                if d.wanted.is_empty() {
                    "auto"
                } else {
                    &d.wanted
                }
            );
            view.painter.paint(&text, Color::Red)
        }
    };
    let shutdown = match &node.shutdown {
        None => "none".to_string(),
        Some(s) => view
            .painter
            .paint(&shutdown_text(Some(s), now), phase_color(s.phase)),
    };
    let kubelet_client = reply.clients.iter().find(|c| c.kubelet);
    let graceful = if let Some(lock) = node.inhibitors.first() {
        format!(
            "armed (logind inhibitor held by pid {} ({}); a shutdown waits for its release)",
            lock.pid.map_or("?".to_string(), |p| p.to_string()),
            sanitize(&lock.who)
        )
    } else if node.graceful_shutdown_armed {
        match kubelet_client.and_then(|c| c.pid) {
            Some(pid) => format!(
                "armed (the kubelet, pid {pid}, is connected; a shutdown waits for it to drain pods)"
            ),
            None if kubelet_client.is_some() || reply.clients.is_empty() => {
                "armed (the kubelet is connected; a shutdown waits for it to drain pods)"
                    .to_string()
            }
            None => "armed (a client that may be the kubelet is connected; a shutdown waits for it)"
                .to_string(),
        }
    } else {
        view.painter.paint(
            "not armed (no kubelet connection; a shutdown will not drain pods)",
            Color::Yellow,
        )
    };
    let mut uptime = short_duration(node.uptime_ms);
    if view.wide {
        uptime = format!("{uptime} (since {})", timestamp(node.boot_ms));
    }
    let facts = vec![
        vec!["hostname".to_string(), node.hostname.clone()],
        vec!["kernel".to_string(), node.kernel.clone()],
        vec!["uptime".to_string(), uptime],
        vec!["datapart".to_string(), datapart],
        vec!["shutdown".to_string(), shutdown],
        vec!["graceful".to_string(), graceful],
    ];
    let mut facts = facts;
    if node.log_lines_dropped > 0 {
        facts.push(vec![
            "logs".to_string(),
            view.painter.paint(
                &format!(
                    "{} lines of service output dropped (/var/log full or unwritable, or a \
                     flood; see the kernel log)",
                    node.log_lines_dropped
                ),
                Color::Yellow,
            ),
        ]);
    }
    if node.clock_steps > 0 {
        facts.push(vec![
            "clock".to_string(),
            view.painter.paint(
                &clock_steps_text(node.clock_steps, node.last_clock_step_ms),
                Color::Yellow,
            ),
        ]);
    }
    if let Some(previous) = &node.previous_shutdown {
        facts.push(vec![
            "previous".to_string(),
            crate::observe::previous_shutdown(previous),
        ]);
    }
    let mut text = table(&[], &facts, true);
    text.push('\n');
    text.push_str(&services);
    if view.wide {
        text.push('\n');
        if reply.clients.is_empty() {
            text.push_str("no socket clients\n");
        } else {
            text.push_str(&clients_table(&reply.clients, now));
        }
    }
    text
}

/// `kiosctl boot`: the milestones with their offset from init's start and
/// the step from the one before.
pub fn boot(reply: &BootReply, view: View) -> String {
    let mut headers = vec!["MILESTONE", "OFFSET", "STEP"];
    if view.wide {
        headers.push("AT");
    }
    let mut previous: Option<&Milestone> = None;
    let mut rows = Vec::new();
    for m in &reply.milestones {
        let step = match previous {
            None => "-".to_string(),
            Some(p) => format!("+{}", seconds((m.offset_ms - p.offset_ms).max(0.0))),
        };
        let mut row = vec![m.name.clone(), seconds(m.offset_ms), step];
        if view.wide {
            row.push(timestamp(m.at_ms));
        }
        rows.push(row);
        previous = Some(m);
    }
    table(&headers, &rows, view.no_headers)
}

/// The first sentence of a `why`, at most `max` characters.
pub fn first_sentence(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let sentence = match flat.find(". ") {
        Some(end) => &flat[..=end],
        None => flat.as_str(),
    };
    if sentence.chars().count() <= max {
        return sentence.to_string();
    }
    let cut: String = sentence.chars().take(max.saturating_sub(3)).collect();
    format!("{}...", cut.trim_end())
}

/// At most `max` items joined with commas, then `+N` for the rest; `-`
/// for none.
pub fn short_list(items: &[String], max: usize) -> String {
    if items.is_empty() {
        return "-".to_string();
    }
    let mut text = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    if items.len() > max {
        text.push_str(&format!(" +{}", items.len() - max));
    }
    text
}

/// `kiosctl files`: one row per inventory entry.
pub fn files(reply: &FilesReply, view: View) -> String {
    let mut headers = vec!["PATH", "KIND", "MODE", "OWNER", "COMPONENT"];
    if view.wide {
        headers.extend(["SIZE", "TARGET", "USED BY", "WHY"]);
    } else {
        headers.push("WHY");
    }
    let rows: Vec<Vec<String>> = reply
        .files
        .iter()
        .map(|f| {
            let mut row = vec![
                f.path.clone(),
                f.kind.clone(),
                f.mode.clone(),
                f.owner.clone(),
                f.component.clone(),
            ];
            if view.wide {
                row.push(f.size.map_or("-".to_string(), |s| s.to_string()));
                row.push(f.target.clone().unwrap_or_else(|| "-".to_string()));
                row.push(short_list(&f.used_by, 3));
                row.push(first_sentence(&f.why, 200));
            } else {
                row.push(first_sentence(&f.why, 60));
            }
            row
        })
        .collect();
    table(&headers, &rows, view.no_headers)
}

/// Wraps text at `width` columns. The text starts at column `indent`
/// (after a key the caller wrote) and so does every further line.
pub fn wrap(text: &str, width: usize, indent: usize) -> String {
    let mut out = String::new();
    let mut column = indent;
    let mut first = true;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if !first && column + 1 + len > width {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            column = indent;
        } else if !first {
            out.push(' ');
            column += 1;
        }
        out.push_str(word);
        column += len;
        first = false;
    }
    out
}

/// `kiosctl files PATH`: every field of one entry, the reason in full.
pub fn file_detail(file: &FileInfo) -> String {
    const KEY: usize = 11;
    let mut fields: Vec<(&str, String)> = vec![
        ("path", file.path.clone()),
        ("kind", file.kind.clone()),
        ("mode", file.mode.clone()),
        ("owner", file.owner.clone()),
        ("component", file.component.clone()),
    ];
    if let Some(target) = &file.target {
        fields.push(("target", target.clone()));
    }
    if let Some(size) = file.size {
        fields.push(("size", size.to_string()));
    }
    if let Some(sha) = &file.sha256 {
        fields.push(("sha256", sha.clone()));
    }
    if !file.used_by.is_empty() {
        fields.push(("used by", file.used_by.join(", ")));
    }
    fields.push(("why", file.why.clone()));
    if let Some(notes) = &file.notes {
        fields.push(("notes", notes.clone()));
    }
    let mut text = String::new();
    for (key, value) in fields {
        text.push_str(&format!(
            "{key:<KEY$}{}\n",
            wrap(&sanitize(&value), 78, KEY)
        ));
    }
    text
}

fn problem_color(problem: &str) -> Color {
    if problem == "overridden" {
        Color::Dim
    } else {
        Color::Red
    }
}

/// `kiosctl verify`: the findings, then a one-line verdict.
pub fn verify(reply: &VerifyReply, view: View) -> String {
    let rows: Vec<Vec<String>> = reply
        .findings
        .iter()
        .map(|f| {
            vec![
                f.path.clone(),
                view.painter.paint(&f.problem, problem_color(&f.problem)),
                f.detail.clone(),
            ]
        })
        .collect();
    let mut text = table(&["PATH", "PROBLEM", "DETAIL"], &rows, view.no_headers);
    if view.no_headers {
        return text;
    }
    let is_override = |f: &&kios_protocol::Finding| f.problem == "overridden";
    let problems = reply.findings.iter().filter(|f| !is_override(f)).count();
    // One overridden file can differ in several ways (mode, size, ...):
    // count files.
    let overridden = reply
        .findings
        .iter()
        .filter(is_override)
        .map(|f| f.path.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if !text.is_empty() {
        text.push('\n');
    }
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let overrides = if overridden > 0 {
        format!(
            ", {} on the data partition",
            plural(overridden, "/etc override", "/etc overrides")
        )
    } else {
        String::new()
    };
    let verdict = if reply.clean {
        view.painter.paint("clean", Color::Green)
    } else {
        view.painter.paint("NOT CLEAN", Color::Red)
    };
    text.push_str(&format!(
        "{verdict}: checked {}, {}{overrides}\n",
        plural(reply.checked as usize, "entry", "entries"),
        plural(problems, "problem", "problems"),
    ));
    if !reply.out_of_scope.is_empty() {
        let areas: Vec<String> = reply.out_of_scope.iter().map(|p| sanitize(p)).collect();
        text.push_str(&format!(
            "not looked into (cri-o's and the kubelet's): {}\n",
            areas.join(", ")
        ));
    }
    text
}

/// The image a node booted, as `version` names it (lines `build` and
/// `inventory`; nothing for a node that does not say).
pub fn image_identity(reply: &VersionReply) -> String {
    let mut text = String::new();
    if let Some(v) = &reply.image_version {
        text.push_str(&format!("image      kiOS {}\n", sanitize(v)));
    }
    if let Some(id) = &reply.build_id {
        text.push_str(&format!("build      {}\n", sanitize(id)));
    }
    if let Some(sha) = &reply.inventory_sha256 {
        text.push_str(&format!("inventory  sha256:{}\n", sanitize(sha)));
    }
    text
}

/// When an event happened.
pub fn event_time(event: &Event) -> u64 {
    match event {
        Event::Service(s) => s.since_ms,
        Event::Shutdown(s) => s.phase_since_ms.max(s.since_ms),
        Event::Milestone(m) => m.at_ms,
        Event::Log(l) => l.at_ms,
        // Kernel records carry time since boot, not wall time.
        Event::Kmsg(_) | Event::KmsgMissed { .. } => 0,
        Event::Logind(l) => l.at_ms,
    }
}

/// An event as one line of text without its time: what `watch` prints to a
/// pipe (after a timestamp) and what the live view lists.
pub fn event_summary(event: &Event) -> String {
    match event {
        Event::Service(s) => {
            let mut text = format!("service    {} {}", s.name, s.state);
            if let Some(pid) = s.pid {
                text.push_str(&format!(" pid {pid}"));
            }
            text.push_str(&format!(" restarts {}", s.restarts));
            if s.state == ServiceState::Backoff || s.state == ServiceState::Stopped {
                if let Some(exit) = &s.last_exit {
                    text.push_str(&format!(" after {}", exit_text(Some(exit))));
                }
            }
            text
        }
        Event::Shutdown(s) => {
            let force = if s.force { " force" } else { "" };
            format!(
                "shutdown   {} ({}{force}) requested by {}",
                s.phase, s.mode, s.requested_by
            )
        }
        Event::Milestone(m) => format!("milestone  {} at {}", m.name, seconds(m.offset_ms)),
        Event::Log(LogLine { service, line, .. }) => {
            format!("log        {service}: {}", sanitize(line))
        }
        Event::Kmsg(r) => format!("kernel     {}", sanitize(&r.message)),
        Event::KmsgMissed { count } => format!("kernel     {count} lines missed"),
        Event::Logind(l) => logind_summary(l),
    }
}

fn logind_summary(l: &LogindEvent) -> String {
    let holder = format!(
        "pid {} ({})",
        l.pid.map_or("?".to_string(), |p| p.to_string()),
        sanitize(l.who.as_deref().unwrap_or("?"))
    );
    match l.change {
        LogindChange::LockTaken => format!("logind     inhibitor lock taken by {holder}"),
        LogindChange::LockReleased => format!(
            "logind     inhibitor lock of {holder} released after {}",
            seconds(l.held_ms.unwrap_or(0) as f64)
        ),
        LogindChange::SignalSent => format!(
            "logind     PrepareForShutdown({}) sent to {} bus client(s)",
            l.start.unwrap_or(true),
            l.clients.unwrap_or(0)
        ),
    }
}

/// `watch` to a pipe: `<timestamp>  <summary>`.
pub fn event_line(event: &Event) -> String {
    format!("{}  {}", timestamp(event_time(event)), event_summary(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_two_units() {
        assert_eq!(short_duration(0), "0s");
        assert_eq!(short_duration(999), "0s");
        assert_eq!(short_duration(12_000), "12s");
        assert_eq!(short_duration(302_000), "5m 2s");
        assert_eq!(short_duration((3 * 3600 + 12 * 60 + 5) * 1000), "3h 12m");
        assert_eq!(short_duration((3 * 3600 + 5) * 1000), "3h");
        assert_eq!(
            short_duration((2 * 86_400 + 4 * 3600 + 120) * 1000),
            "2days 4h"
        );
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(1_000, 13_000), "12s ago");
        assert_eq!(age(13_000, 13_500), "just now");
        assert_eq!(age(17_000, 13_000), "in 4s");
        assert_eq!(age(13_200, 13_000), "just now");
    }

    #[test]
    fn timestamps_are_utc_milliseconds() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_795_939_250_123), "2026-11-29T08:00:50.123Z");
    }

    #[test]
    fn tables_have_no_trailing_spaces_and_respect_no_headers() {
        let rows = vec![
            vec!["a".to_string(), "1".to_string()],
            vec!["bbb".to_string(), "".to_string()],
        ];
        assert_eq!(table(&["X", "Y"], &rows, false), "X     Y\na     1\nbbb\n");
        assert_eq!(table(&["X", "Y"], &rows, true), "a     1\nbbb\n");
        assert_eq!(table(&["X", "Y"], &[], true), "");
    }

    #[test]
    fn colour_codes_do_not_count_towards_widths() {
        let painter = Painter { enabled: true };
        let rows = vec![
            vec![painter.paint("running", Color::Green), "1".to_string()],
            vec!["x".to_string(), "2".to_string()],
        ];
        let text = table(&["STATE", "N"], &rows, false);
        let plain: String = text.replace("\x1b[32m", "").replace("\x1b[0m", "");
        assert_eq!(plain, "STATE     N\nrunning   1\nx         2\n");
    }

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        assert_eq!(sanitize("a\x1b[2Jb\tc"), "a\u{fffd}[2Jb c");
        let rows = vec![vec!["evil\nname".to_string()]];
        assert_eq!(table(&["P"], &rows, true), "evil\u{fffd}name\n");
    }

    #[test]
    fn first_sentence_is_bounded() {
        assert_eq!(first_sentence("One. Two.", 60), "One.");
        assert_eq!(first_sentence("abcdefghij", 8), "abcde...");
        assert_eq!(first_sentence("a\n  b", 60), "a b");
    }

    #[test]
    fn long_lists_are_cut() {
        let items: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        assert_eq!(short_list(&items, 3), "a,b,c +2");
        assert_eq!(short_list(&items[..2], 3), "a,b");
        assert_eq!(short_list(&[], 3), "-");
    }

    #[test]
    fn wrap_indents_continuation_lines() {
        assert_eq!(wrap("aa bb cc dd", 10, 2), "aa bb cc\n  dd");
        assert_eq!(wrap("", 8, 2), "");
    }
}
