//! The live view of `kiosctl watch` on a terminal: the node's status is
//! fetched once, then every event updates it and the screen is redrawn in
//! place with crossterm (once a second too, so ages move). Ctrl-C quits;
//! no raw mode and no alternate screen, so nothing needs restoring.
//!
//! [`LiveState`] and [`frame`] are pure and unit-tested; [`live`] does the
//! I/O.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use crossterm::cursor::MoveTo;
use crossterm::queue;
use crossterm::style::Print;
use crossterm::terminal::{Clear, ClearType};
use kios_protocol::{Event, Request, StatusReply, WatchReply};

use crate::client::Line;
use crate::exit::Exit;
use crate::output::{Color, Painter};
use crate::render::{self, View};
use crate::session::Session;

/// Most events kept for the screen.
pub const MAX_EVENTS: usize = 200;

/// What the screen shows.
pub struct LiveState {
    pub status: StatusReply,
    /// Newest last: `(at_ms, summary)`.
    pub events: VecDeque<(u64, String)>,
    /// The node's clock minus ours, from the status reply.
    pub clock_offset_ms: i64,
    pub closed: bool,
}

impl LiveState {
    pub fn new(status: StatusReply, local_now_ms: u64) -> LiveState {
        let node_now = i64::try_from(render::status_now(&status)).unwrap_or(i64::MAX);
        let local_now = i64::try_from(local_now_ms).unwrap_or(i64::MAX);
        LiveState {
            status,
            events: VecDeque::new(),
            clock_offset_ms: node_now.saturating_sub(local_now),
            closed: false,
        }
    }

    /// The node's clock now.
    pub fn node_now(&self, local_now_ms: u64) -> u64 {
        let local_now = i64::try_from(local_now_ms).unwrap_or(i64::MAX);
        local_now.saturating_add(self.clock_offset_ms).max(0) as u64
    }

    /// Applies one event line (unknown kinds are listed as sent).
    pub fn apply(&mut self, raw: &str, local_now_ms: u64) {
        let entry = match Event::decode(raw) {
            Ok(event) => {
                let at = render::event_time(&event);
                match &event {
                    Event::Service(service) => {
                        match self
                            .status
                            .services
                            .iter_mut()
                            .find(|s| s.name == service.name)
                        {
                            Some(slot) => *slot = service.clone(),
                            None => self.status.services.push(service.clone()),
                        }
                    }
                    Event::Shutdown(shutdown) => {
                        self.status.node.shutdown = Some(shutdown.clone());
                    }
                    Event::Milestone(_)
                    | Event::Log(_)
                    | Event::Logind(_)
                    | Event::Kmsg(_)
                    | Event::KmsgMissed { .. } => {}
                }
                (at, render::event_summary(&event))
            }
            Err(_) => (self.node_now(local_now_ms), render::sanitize(raw)),
        };
        self.events.push_back(entry);
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }
}

/// Cuts a line to `width` visible characters; colour sequences (`ESC [ ... m`)
/// take no room and a cut line ends with a reset.
fn clip(line: &str, width: usize) -> String {
    let mut out = String::new();
    let mut visible = 0;
    let mut chars = line.chars().peekable();
    let mut coloured = false;
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            out.push(c);
            for d in chars.by_ref() {
                out.push(d);
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            coloured = true;
            continue;
        }
        if visible == width {
            if coloured {
                out.push_str("\x1b[0m");
            }
            return out;
        }
        out.push(c);
        visible += 1;
    }
    out
}

/// The screen for a terminal of `width` x `height`: header, services, and
/// as many recent events as fit.
pub fn frame(
    state: &LiveState,
    local_now_ms: u64,
    painter: Painter,
    width: usize,
    height: usize,
) -> Vec<String> {
    let now = state.node_now(local_now_ms);
    let node = &state.status.node;
    let mut lines = Vec::new();
    lines.push(clip(
        &format!(
            "{}   up {}   {}   (Ctrl-C quits)",
            node.hostname,
            // Uptime is monotonic; what passed since the reply, on the
            // node's clock, is added (a wall-clock jump since boot does
            // not show as uptime).
            render::short_duration(
                node.uptime_ms
                    .saturating_add(now.saturating_sub(render::status_now(&state.status)))
            ),
            render::timestamp(now)
        ),
        width,
    ));
    let shutdown = match &node.shutdown {
        None => "shutdown: none".to_string(),
        Some(s) => painter.paint(
            &clip(
                &format!(
                    "shutdown: {} ({}), requested {} by {}",
                    s.phase,
                    s.mode,
                    render::age(s.since_ms, now),
                    s.requested_by
                ),
                width,
            ),
            Color::Yellow,
        ),
    };
    lines.push(shutdown);
    if state.closed {
        lines.push(painter.paint("the node closed the connection", Color::Red));
    }
    lines.push(String::new());
    let view = View {
        wide: false,
        no_headers: false,
        painter,
    };
    lines.extend(
        render::services_table(&state.status.services, now, view)
            .lines()
            .map(|line| clip(line, width)),
    );
    lines.push(String::new());
    lines.push(painter.paint("EVENTS", Color::Bold));
    let room = height.saturating_sub(lines.len() + 1);
    let skip = state.events.len().saturating_sub(room);
    for (at, summary) in state.events.iter().skip(skip) {
        let time = render::timestamp(*at);
        let clock = time.get(11..23).unwrap_or(&time);
        lines.push(clip(&format!("{clock}  {summary}"), width));
    }
    lines
}

fn local_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn draw(s: &mut Session, state: &LiveState) -> Result<()> {
    // Serial consoles and some pseudo-terminals report 0x0: assume 80x24.
    let (width, height) = match crossterm::terminal::size() {
        Ok((w, h)) if w > 0 && h > 0 => (w, h),
        _ => (80, 24),
    };
    let lines = frame(
        state,
        local_now_ms(),
        s.out.painter,
        width as usize,
        height as usize,
    );
    let w = s.out.writer();
    queue!(w, MoveTo(0, 0))?;
    for line in lines {
        queue!(w, Print(line), Clear(ClearType::UntilNewLine), Print("\n"))?;
    }
    queue!(w, Clear(ClearType::FromCursorDown))?;
    s.out.flush()?;
    Ok(())
}

/// Runs the live view until the node closes the connection (then shows the
/// last state and exits 0) or the user presses Ctrl-C.
pub fn live(s: &mut Session) -> Result<Exit> {
    s.conn.send(&Request::Status)?;
    s.conn.send(&Request::Watch)?;
    let status = s.conn.reply::<StatusReply>(&Request::Status)?.body?;
    let _ = s.conn.reply::<WatchReply>(&Request::Watch)?.body?;
    let mut state = LiveState::new(status, local_now_ms());
    queue!(s.out.writer(), Clear(ClearType::All))?;
    draw(s, &state)?;
    loop {
        match s.conn.next_event_or_tick(Duration::from_secs(1))? {
            Line::Text(raw) => state.apply(&raw, local_now_ms()),
            Line::Tick => {}
            Line::Closed => {
                state.closed = true;
                draw(s, &state)?;
                return Ok(Exit::Ok);
            }
        }
        draw(s, &state)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kios_protocol::{NodeStatus, ServiceName, ServiceState, ServiceStatus};

    fn service(
        name: ServiceName,
        state: ServiceState,
        pid: Option<u32>,
        since: u64,
    ) -> ServiceStatus {
        ServiceStatus {
            name,
            state,
            pid,
            since_ms: since,
            restarts: 0,
            last_exit: None,
            next_start_ms: None,
        }
    }

    fn status() -> StatusReply {
        StatusReply {
            node: NodeStatus {
                hostname: "node-a".into(),
                kernel: "6.1.0".into(),
                boot_ms: 1_000_000,
                uptime_ms: 60_000,
                now_ms: 1_060_000,
                datapart: None,
                shutdown: None,
                graceful_shutdown_armed: true,
                previous_shutdown: None,
                inhibitors: vec![],
                log_lines_dropped: 0,
                clock_steps: 0,
                last_clock_step_ms: 0,
            },
            services: vec![
                service(
                    ServiceName::Crio,
                    ServiceState::Running,
                    Some(10),
                    1_001_000,
                ),
                service(
                    ServiceName::Kubelet,
                    ServiceState::Running,
                    Some(20),
                    1_002_000,
                ),
            ],
            clients: vec![],
        }
    }

    #[test]
    fn events_update_the_services_and_the_shutdown() {
        // Our clock is 500 ms behind the node's.
        let mut state = LiveState::new(status(), 1_060_000 - 500);
        assert_eq!(state.node_now(1_059_500), 1_060_000);
        state.apply(
            r#"{"event":"service","name":"kubelet","state":"backoff","pid":null,"since_ms":1060000,"restarts":1,"last_exit":{"code":null,"signal":9,"at_ms":1060000},"next_start_ms":1061000}"#,
            1_059_500,
        );
        state.apply(
            r#"{"event":"shutdown","phase":"draining","mode":"poweroff","since_ms":1061000,"requested_by":"SIGTERM","force":false,"phase_since_ms":1061000}"#,
            1_060_500,
        );
        state.apply(r#"{"event":"future-thing","x":1}"#, 1_060_500);
        assert_eq!(state.status.services[1].state, ServiceState::Backoff);
        assert!(state.status.node.shutdown.is_some());
        let lines = frame(&state, 1_061_500, Painter { enabled: false }, 100, 40);
        let text = lines.join("\n");
        assert!(text.starts_with("node-a   up 1m 2s   "), "{text}");
        assert!(
            text.contains("shutdown: draining (poweroff), requested 1s ago by SIGTERM"),
            "{text}"
        );
        assert!(text.contains("kubelet   backoff   -"), "{text}");
        assert!(
            text.contains("service    kubelet backoff restarts 1 after signal 9"),
            "{text}"
        );
        assert!(
            text.ends_with(r#"{"event":"future-thing","x":1}"#),
            "{text}"
        );
    }

    #[test]
    fn the_frame_fits_the_terminal() {
        let mut state = LiveState::new(status(), 1_060_000);
        for i in 0..100 {
            state.apply(
                &format!(
                    r#"{{"event":"milestone","name":"m{i}","at_ms":1060000,"offset_ms":1.0}}"#
                ),
                1_060_000,
            );
        }
        let lines = frame(&state, 1_060_000, Painter { enabled: false }, 30, 20);
        assert!(lines.len() < 20, "{} lines", lines.len());
        assert!(lines.iter().all(|l| l.chars().count() <= 30), "{lines:?}");
        assert!(lines.last().is_some_and(|l| l.contains("m99")), "{lines:?}");
    }

    #[test]
    fn clipping_skips_colour_codes() {
        let red = "\x1b[31mabcdef\x1b[0m";
        assert_eq!(clip(red, 3), "\x1b[31mabc\x1b[0m");
        assert_eq!(clip(red, 10), red);
        assert_eq!(clip("abcdef", 2), "ab");
    }
}
