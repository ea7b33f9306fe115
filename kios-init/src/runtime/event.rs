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

/// The sending side of the owner's queue, cloned into every source.
#[derive(Clone)]
pub struct Events(mpsc::Sender<Event>);

impl Events {
    /// A queue of [`EVENT_QUEUE`] events and its receiving end (the owner's).
    pub fn channel() -> (Events, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        (Events(tx), rx)
    }

    /// Sends `event`, waiting while the queue is full. `false` when the
    /// owner is gone (the node is ending): the source should stop.
    pub async fn send(&self, event: Event) -> bool {
        self.0.send(event).await.is_ok()
    }

    /// Sends `event` if there is room now (the owner's own follow-ups).
    pub fn try_send(&self, event: Event) -> bool {
        self.0.try_send(event).is_ok()
    }
}
