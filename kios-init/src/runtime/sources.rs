//! The event sources of the runtime that are neither the socket nor the
//! power button: shutdown signals, the reaper (SIGCHLD), the inotify
//! reader, the readers of the services' output pipes, and the spawner that
//! starts them (and the shutdown's blocking steps) for the owner. Each only
//! reads and sends [`Event`]s; none touches the state.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use kios_protocol::ServiceName;
use nix::sys::inotify::InotifyEvent;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::runtime::event::{Event, Events, ShutdownSignal};
use crate::runtime::logcapture::{LineSplitter, MAX_LINE_BYTES};
use crate::runtime::owner::Spawner;
use crate::runtime::power_button;
use crate::runtime::reaper;
use crate::runtime::shutdown::Job;
use crate::sys::process::InotifyFd;

/// Without a SIGCHLD handler (its registration failed), how often the
/// reaper drains anyway, so zombies and crashed services are still noticed.
pub const FALLBACK_REAP: Duration = Duration::from_secs(1);

/// A registered signal, or `None` (logged) when registration failed.
pub fn register(kind: SignalKind, name: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            crate::kerr!("cannot handle {name}: {e}");
            None
        }
    }
}

async fn recv(signal: &mut Option<Signal>) {
    match signal {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// The shutdown signals (registered before any child exists), forever.
pub async fn shutdown_signals(
    mut term: Option<Signal>,
    mut pwr: Option<Signal>,
    mut int: Option<Signal>,
    events: Events,
) {
    loop {
        let which = tokio::select! {
            _ = recv(&mut term) => ShutdownSignal::Term,
            _ = recv(&mut pwr) => ShutdownSignal::Pwr,
            _ = recv(&mut int) => ShutdownSignal::Int,
        };
        if !events.send(Event::Signal(which)).await {
            return;
        }
    }
}

/// The reaper: on every SIGCHLD (or every [`FALLBACK_REAP`] without one),
/// drains every exited child and sends what it found.
pub async fn reaper(mut sigchld: Option<Signal>, events: Events) {
    loop {
        match sigchld.as_mut() {
            Some(s) => {
                if s.recv().await.is_none() {
                    sigchld = None;
                }
            }
            None => tokio::time::sleep(FALLBACK_REAP).await,
        }
        let mut reaped = Vec::new();
        let error = reaper::reap_all(&mut reaped).err();
        if reaped.is_empty() && error.is_none() {
            continue;
        }
        if !events.send(Event::Reaped { reaped, error }).await {
            return;
        }
    }
}

/// Reads the runtime's inotify instance until reading fails for good.
pub async fn inotify_reader(fd: Rc<AsyncFd<InotifyFd>>, events: Events) {
    loop {
        let batch = match read_inotify(&fd).await {
            Some(batch) => Event::Inotify(batch),
            // A persistent read error must not spin the loop.
            None => Event::InotifyFailed,
        };
        let failed = matches!(batch, Event::InotifyFailed);
        if !events.send(batch).await || failed {
            return;
        }
    }
}

/// Waits for and reads a batch of inotify events; `None` when reading
/// fails (then inotify is given up, with a kernel log line).
async fn read_inotify(fd: &AsyncFd<InotifyFd>) -> Option<Vec<InotifyEvent>> {
    loop {
        let mut guard = match fd.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                crate::kerr!("inotify: {e}");
                return std::future::pending().await;
            }
        };
        match guard.try_io(|inner| {
            inner
                .get_ref()
                .0
                .read_events()
                .map_err(std::io::Error::from)
        }) {
            Ok(Ok(events)) => return Some(events),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                crate::kerr!("inotify: cannot read events: {e}; no more file watching");
                return None;
            }
            Err(_would_block) => continue,
        }
    }
}

/// Reads a service's output until every writer closed the pipe.
pub async fn pump_output(service: ServiceName, fd: AsyncFd<File>, events: Events) {
    let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
    let mut lines = Vec::new();
    loop {
        let Ok(mut guard) = fd.readable().await else {
            break;
        };
        // Not live across an await: on the stack, not in the task's memory.
        let mut buf = [0u8; 4096];
        let read = guard.try_io(|inner| {
            let mut file: &File = inner.get_ref();
            file.read(&mut buf)
        });
        match read {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => splitter.push(&buf[..n], &mut lines),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => break,
            Err(_would_block) => {}
        }
        if !lines.is_empty() {
            let batch = std::mem::take(&mut lines);
            if !events
                .send(Event::Output {
                    service,
                    lines: batch,
                })
                .await
            {
                return;
            }
        }
    }
    if let Some(rest) = splitter.finish() {
        events
            .send(Event::Output {
                service,
                lines: vec![rest],
            })
            .await;
    }
}

/// The real spawner: tasks on the event loop, steps on the blocking pool.
pub struct LoopSpawner {
    pub events: Events,
}

impl Spawner for LoopSpawner {
    fn output(&self, service: ServiceName, pid: u32, read_end: OwnedFd) {
        match crate::sys::process::async_file(File::from(read_end)) {
            Ok(fd) => {
                tokio::task::spawn_local(pump_output(service, fd, self.events.clone()));
            }
            Err(e) => crate::kwarn!("cannot watch the output pipe of pid {pid}: {e}"),
        }
    }

    fn input_device(&self, path: &Path) -> bool {
        let Some(fd) = power_button::open_device(path) else {
            return false;
        };
        tokio::task::spawn_local(power_button::read_device(
            path.to_path_buf(),
            fd,
            self.events.clone(),
        ));
        true
    }

    fn job(&self, job: Job, work: Box<dyn FnOnce() + Send>) -> bool {
        let events = self.events.clone();
        tokio::task::spawn_local(async move {
            // A step that panicked counts as done: the node goes on.
            if let Err(e) = tokio::task::spawn_blocking(work).await {
                crate::kerr!("shutdown: a blocking step failed: {e}");
            }
            events.send(Event::JobDone(job)).await;
        });
        false
    }
}
