//! The events the runtime's owner receives, one enum for every source, and
//! [`Events`], the sending handle each source holds.
//!
//! Every source is a task (or a blocking thread's completion) that only
//! reads the outside world and sends what it saw; the owner (`owner.rs`)
//! is the only code that changes [`State`](crate::runtime::state::State).
//! The queue is bounded ([`EVENT_QUEUE`]): a source that outruns the owner
//! waits in its own task, the owner never waits for a source. A request
//! that needs an answer carries a oneshot sender for it.
//!
//! A new source adds a variant here, an arm in `Owner::handle`, and a task
//! that sends it; see ARCHITECTURE.md ("The runtime: one owner").

use std::path::PathBuf;

use kios_protocol::{Dialect, LegacyCommand, Request, Response, ServiceName};
use nix::errno::Errno;
use nix::sys::inotify::InotifyEvent;
use tokio::sync::{mpsc, oneshot};

use crate::runtime::reaper::Reaped;
use crate::runtime::server::clients::{Peer, Registration};
use crate::runtime::server::inventory::ExpectedPids;
use crate::runtime::shutdown::Job;
use crate::runtime::state::Paths;

/// Events waiting for the owner before their sources have to wait.
pub const EVENT_QUEUE: usize = 128;

/// A signal that asks for a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGTERM: power off.
    Term,
    /// SIGPWR: power off.
    Pwr,
    /// SIGINT, which Ctrl-Alt-Del becomes: reboot.
    Int,
}

/// Something the owner must know about.
pub enum Event {
    /// A shutdown signal arrived.
    Signal(ShutdownSignal),
    /// The reaper drained exited children (after a SIGCHLD); `error` is a
    /// waitpid failure other than "no children", after what was reaped.
    Reaped {
        reaped: Vec<Reaped>,
        error: Option<Errno>,
    },
    /// The runtime's inotify instance reported these.
    Inotify(Vec<InotifyEvent>),
    /// Reading inotify failed for good: no more file watching.
    InotifyFailed,
    /// Complete lines a service wrote (and, at the end of its output, the
    /// unterminated rest).
    Output {
        service: ServiceName,
        lines: Vec<String>,
    },
    /// The power button was pressed on this input device.
    PowerButton { device: PathBuf },
    /// This input device is no longer read (it went away).
    InputDeviceGone { device: PathBuf },
    /// A socket client.
    Client(ClientEvent),
    /// The system bus (logind for the upstream kubelet) reported this.
    Bus(crate::runtime::logind::BusEvent),
    /// A blocking step of the shutdown finished.
    JobDone(Job),
    /// The wall clock was set (stepped, or set to what it read); `at` is
    /// both clocks read after the watch was re-armed.
    ClockSet { at: crate::runtime::supervisor::Now },
    /// Tests: run this on the state, in the owner.
    #[cfg(test)]
    Inspect(Box<dyn FnOnce(&mut crate::runtime::state::State)>),
}

/// What a socket connection tells the owner.
pub enum ClientEvent {
    /// A new connection asks to be registered. `None` as the answer: the
    /// registry is full.
    Connect {
        pid: Option<i32>,
        uid: Option<u32>,
        command: Option<String>,
        reply: oneshot::Sender<Option<(Peer, Registration)>>,
    },
    /// The client's dialect is known now.
    Dialect { id: u64, dialect: Dialect },
    /// A line-dialect request; the answer comes back on `reply`.
    Request {
        peer: Peer,
        request: Request,
        reply: oneshot::Sender<Answer>,
    },
    /// A legacy byte (no answer in that dialect).
    Legacy { peer: Peer, command: LegacyCommand },
    /// The connection closed.
    Gone { id: u64 },
}

/// The owner's answer to a line-dialect request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived, one per request
pub enum Answer {
    /// Write this.
    Response(Response),
    /// Write this line (with its newline), encoded by its handler.
    Encoded(Vec<u8>),
    /// Run `verify` off the event loop with these, then write its response.
    Verify {
        paths: Paths,
        expected: ExpectedPids,
    },
    /// Read /proc off the event loop for `ps`, then write its response.
    Ps {
        proc_root: std::path::PathBuf,
        expected: ExpectedPids,
        all: bool,
    },
    /// Read (and maybe follow) the kernel log off the event loop.
    KernelLog(crate::runtime::server::kernel::KernelLogRequest),
}

/// Urgent events the owner takes in a row while ordinary ones wait; then
/// one ordinary event, so a flood of urgent ones cannot starve `status`.
pub const URGENT_RUN: u32 = 32;

impl Event {
    /// Whether this event goes ahead of the ordinary ones: everything but
    /// service output and requests that only read. A child's exit, a
    /// signal, `restart` or `shutdown` must not wait behind sixty clients'
    /// `status` requests. Each client waits for the answer to a request
    /// before it sends anything more, so one client's events keep their
    /// order; service output is only shown, and lands where it always
    /// does, in the order it was read.
    pub fn is_urgent(&self) -> bool {
        match self {
            Event::Output { .. } => false,
            Event::Client(ClientEvent::Request { request, .. }) => request.changes_state(),
            _ => true,
        }
    }
}

/// The sending side of the owner's queue, cloned into every source: two
/// lanes of [`EVENT_QUEUE`] events each, urgent and ordinary
/// ([`Event::is_urgent`]).
#[derive(Clone)]
pub struct Events {
    urgent: mpsc::Sender<Event>,
    ordinary: mpsc::Sender<Event>,
}

impl Events {
    /// The queue and its receiving end (the owner's).
    pub fn channel() -> (Events, Queue) {
        let (urgent, urgent_rx) = mpsc::channel(EVENT_QUEUE);
        let (ordinary, ordinary_rx) = mpsc::channel(EVENT_QUEUE);
        let queue = Queue {
            urgent: urgent_rx,
            ordinary: ordinary_rx,
            run: 0,
        };
        (Events { urgent, ordinary }, queue)
    }

    fn lane(&self, event: &Event) -> &mpsc::Sender<Event> {
        if event.is_urgent() {
            &self.urgent
        } else {
            &self.ordinary
        }
    }

    /// Sends `event`, waiting while its lane is full. `false` when the
    /// owner is gone (the node is ending): the source should stop.
    pub async fn send(&self, event: Event) -> bool {
        self.lane(&event).send(event).await.is_ok()
    }

    /// Sends `event` if there is room now (the owner's own follow-ups).
    pub fn try_send(&self, event: Event) -> bool {
        self.lane(&event).try_send(event).is_ok()
    }
}

/// The owner's end of the queue: urgent events first, at most
/// [`URGENT_RUN`] of them in a row while ordinary ones wait.
pub struct Queue {
    urgent: mpsc::Receiver<Event>,
    ordinary: mpsc::Receiver<Event>,
    /// Urgent events taken since the last ordinary one.
    run: u32,
}

impl Queue {
    /// The next event; `None` once every sender is gone and both lanes are
    /// empty. Cancel-safe: an event is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<Event> {
        if self.run >= URGENT_RUN {
            if let Ok(event) = self.ordinary.try_recv() {
                self.run = 0;
                return Some(event);
            }
        }
        tokio::select! {
            biased;
            Some(event) = self.urgent.recv() => {
                self.run = self.run.saturating_add(1);
                Some(event)
            }
            Some(event) = self.ordinary.recv() => {
                self.run = 0;
                Some(event)
            }
            else => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::server::clients::Peer;

    fn output(n: usize) -> Event {
        Event::Output {
            service: ServiceName::Kubelet,
            lines: vec![n.to_string()],
        }
    }

    fn request(request: Request) -> Event {
        let (reply, _) = oneshot::channel();
        let peer = Peer {
            id: 1,
            pid: Some(7),
            uid: Some(0),
            command: None,
        };
        Event::Client(ClientEvent::Request {
            peer,
            request,
            reply,
        })
    }

    fn line(event: &Event) -> String {
        match event {
            Event::Output { lines, .. } => lines.join(""),
            Event::InotifyFailed => "urgent".into(),
            _ => "other".into(),
        }
    }

    /// Every event left, in the order the owner takes them, as [`line`]s.
    fn drain(mut queue: Queue) -> Vec<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut got = Vec::new();
            while let Some(event) = queue.recv().await {
                got.push(line(&event));
            }
            got
        })
    }

    #[test]
    fn only_output_and_reading_requests_are_ordinary() {
        assert!(!output(1).is_urgent());
        assert!(!request(Request::Status).is_urgent());
        assert!(!request(Request::Ps { all: true }).is_urgent());
        assert!(request(Request::Restart {
            service: ServiceName::Kubelet
        })
        .is_urgent());
        assert!(Event::Reaped {
            reaped: vec![],
            error: None
        }
        .is_urgent());
        assert!(Event::Signal(ShutdownSignal::Term).is_urgent());
        assert!(Event::Client(ClientEvent::Gone { id: 1 }).is_urgent());
    }

    #[test]
    fn urgent_events_go_first_and_each_lane_keeps_its_order() {
        let (events, queue) = Events::channel();
        for n in 0..3 {
            assert!(events.try_send(output(n)));
        }
        assert!(events.try_send(Event::InotifyFailed));
        assert!(events.try_send(Event::InotifyFailed));
        drop(events);
        let got = drain(queue);
        assert_eq!(got, ["urgent", "urgent", "0", "1", "2"]);
    }

    #[test]
    fn a_run_of_urgent_events_lets_an_ordinary_one_through() {
        let (events, queue) = Events::channel();
        assert!(events.try_send(output(0)));
        for _ in 0..URGENT_RUN + 5 {
            assert!(events.try_send(Event::InotifyFailed));
        }
        assert!(events.try_send(output(1)));
        drop(events);
        let got = drain(queue);
        let first_ordinary = got.iter().position(|l| l == "0").unwrap();
        assert_eq!(first_ordinary, URGENT_RUN as usize, "{got:?}");
        assert_eq!(got.len(), URGENT_RUN as usize + 7);
        assert_eq!(got.last().map(String::as_str), Some("1"));
        assert_eq!(
            got.iter().filter(|l| *l == "urgent").count(),
            URGENT_RUN as usize + 5
        );
    }
}
