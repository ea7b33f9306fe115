//! The event sources of the runtime that are neither the socket nor the
//! power button: the signals with the reaper (SIGCHLD), the inotify
//! reader, the wall-clock step watch, the readers of the services' output
//! pipes, and the spawner that
//! starts them (and the shutdown's blocking steps) for the owner. Each only
//! reads and sends [`Event`]s; none touches the state.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::runtime::supervisor::Now;
use crate::sys::clock::{ClockWatch, Tick};
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

/// The signals init handles, registered before any child exists.
pub struct Signals {
    pub chld: Option<Signal>,
    pub term: Option<Signal>,
    pub pwr: Option<Signal>,
    pub int: Option<Signal>,
}

impl Signals {
    /// Registers every signal; a failure is logged and leaves `None`.
    pub fn register() -> Signals {
        Signals {
            chld: register(SignalKind::child(), "SIGCHLD"),
            term: register(SignalKind::terminate(), "SIGTERM"),
            int: register(SignalKind::interrupt(), "SIGINT"),
            pwr: register(SignalKind::from_raw(libc::SIGPWR), "SIGPWR"),
        }
    }
}

/// The shutdown signals, forever, each sent as it is. (SIGCHLD is the
/// owner's own: [`Reaping`].)
pub async fn signals(mut signals: Signals, events: Events) {
    loop {
        let signal = tokio::select! {
            _ = recv(&mut signals.term) => ShutdownSignal::Term,
            _ = recv(&mut signals.pwr) => ShutdownSignal::Pwr,
            _ = recv(&mut signals.int) => ShutdownSignal::Int,
        };
        if !events.send(Event::Signal(signal)).await {
            return;
        }
    }
}

/// SIGCHLD and the reaper, polled by the owner's own loop
/// ([`crate::runtime::run_owner`]): that loop is the event loop's main
/// future, which tokio's local set polls first at every turn, so an exit
/// is reaped at the first turn after its SIGCHLD, not after every client
/// task the same wake-up made ready (60 busy clients: about 1 ms).
pub struct Reaping {
    chld: Option<Signal>,
    /// SIGCHLD's own flag is set (see [`CHLD_ARRIVED`]): looked at before
    /// every event.
    flagged: bool,
    /// Without a SIGCHLD handler: when the next drain is due.
    fallback_at: Option<tokio::time::Instant>,
    fallback_every: Duration,
    /// A drain that stopped at its cap left children unreaped, and their
    /// SIGCHLDs may all have been merged into the one already taken: drain
    /// again at once (after the loop has had its turn) instead of waiting
    /// for another child to exit.
    drain_again: bool,
}

impl Reaping {
    /// On every SIGCHLD; without a handler (`None`), every [`FALLBACK_REAP`].
    pub fn new(chld: Option<Signal>) -> Reaping {
        Reaping::with_fallback(chld, FALLBACK_REAP)
    }

    fn with_fallback(chld: Option<Signal>, every: Duration) -> Reaping {
        let fallback_at = chld.is_none().then(|| tokio::time::Instant::now() + every);
        let flagged = chld.is_some() && flag_chld();
        Reaping {
            chld,
            flagged,
            fallback_at,
            fallback_every: every,
            drain_again: false,
        }
    }

    /// Until a drain is due.
    pub async fn due(&mut self) {
        if self.drain_again {
            return;
        }
        match self.fallback_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => recv(&mut self.chld).await,
        }
    }

    /// A SIGCHLD arrived since the last drain, whether or not tokio's
    /// signal stream has seen it yet (only with the flag registered).
    pub fn arrived(&self) -> bool {
        self.flagged && CHLD_ARRIVED.load(Ordering::Acquire)
    }

    /// Reaps every exited child (at most [`reaper::MAX_REAP_PER_DRAIN`]);
    /// the event, if anything was found.
    pub fn drain(&mut self) -> Option<Event> {
        // Cleared before waitpid: a child that exits during the drain sets
        // it again (at worst one drain that finds nothing).
        CHLD_ARRIVED.store(false, Ordering::Release);
        if let Some(at) = self.fallback_at.as_mut() {
            *at = tokio::time::Instant::now() + self.fallback_every;
        }
        let mut reaped = Vec::new();
        let error = reaper::reap_all(&mut reaped).err();
        self.drain_again = error.is_none() && reaped.len() >= reaper::MAX_REAP_PER_DRAIN;
        if reaped.is_empty() && error.is_none() {
            return None;
        }
        Some(Event::Reaped { reaped, error })
    }
}

/// Set by an action of init's own on SIGCHLD, next to tokio's handler.
/// tokio's stream learns of a signal when the loop next reads its signal
/// pipe, and a loop busy with clients does that once per turn of all of
/// them (60 loading clients: about 1 ms); the owner looks at this flag
/// before every event, so an exit is reaped before the next request.
static CHLD_ARRIVED: AtomicBool = AtomicBool::new(false);

/// Clients give way while an exit waits to be reaped: a client task that
/// answers or reads on yields once, so the turn ends and the owner (polled
/// first at the next turn) reaps and restarts before more clients are
/// served. Traced under 60 loading clients: each reply written woke its
/// client, which took the CPU from the loop, and the reap waited behind
/// the whole turn (1 to 2 ms).
pub async fn give_way_to_reaping() {
    if CHLD_ARRIVED.load(Ordering::Acquire) {
        tokio::task::yield_now().await;
    }
}

/// Registers the flag's action; `false` (logged) if that failed, and then
/// SIGCHLD is seen through tokio's stream only.
fn flag_chld() -> bool {
    match crate::sys::process::flag_sigchld(&CHLD_ARRIVED) {
        Ok(()) => true,
        Err(e) => {
            crate::kwarn!(
                "cannot flag SIGCHLD as it arrives: {e}; exits are reaped at the loop's next turn"
            );
            false
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

/// Watches the wall clock for steps until the watch fails: each set of
/// the clock re-arms the timerfd, then sends [`Event::ClockSet`] with the
/// time read after re-arming (so a set in between is in that reading;
/// the owner works out the step). Waiting for room in the queue happens
/// here, never in the owner; sets meanwhile are one more cancel to read.
pub async fn clock_steps(watch: AsyncFd<ClockWatch>, events: Events) {
    loop {
        let mut guard = match watch.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                crate::kerr!("wall clock watch: {e}; its steps will not be reported");
                return;
            }
        };
        match guard.try_io(|inner| inner.get_ref().read()) {
            Ok(Ok(Tick::Stepped)) => {
                let rearmed = watch.get_ref().arm();
                let at = Now::current();
                if !events.send(Event::ClockSet { at }).await {
                    return;
                }
                if let Err(e) = rearmed {
                    crate::kerr!(
                        "wall clock watch: cannot re-arm the timerfd: {e}; later steps will not be reported"
                    );
                    return;
                }
            }
            Ok(Ok(Tick::Expired)) => {
                crate::kwarn!(
                    "wall clock watch: the timer at the end of the kernel's time range expired; \
                     later steps will not be reported"
                );
                return;
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                crate::kerr!("wall clock watch: cannot read the timerfd: {e}; later steps will not be reported");
                return;
            }
            Err(_would_block) => {}
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
        // The buffer lives in this block only, so it is on the stack, not
        // in the task's memory (the send below is an await).
        let ended = {
            let mut buf = [0u8; 4096];
            let read = guard.try_io(|inner| {
                let mut file: &File = inner.get_ref();
                file.read(&mut buf)
            });
            match read {
                Ok(Ok(0)) => true,
                Ok(Ok(n)) => {
                    splitter.push(&buf[..n], &mut lines);
                    false
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => false,
                Ok(Err(_)) => true,
                Err(_would_block) => false,
            }
        };
        drop(guard);
        if ended {
            break;
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
            // A step that panicked, or got no thread, counts as done: the
            // node goes on.
            if let Err(e) = crate::runtime::blocking::run("shutdown-step", work).await {
                crate::kerr!("shutdown: a blocking step failed: {e}");
            }
            events.send(Event::JobDone(job)).await;
        });
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flag is set by the signal itself: tokio's stream is never
    /// polled here, and yet the loop would know to reap. (Nothing but the
    /// action sets it, so without one this cannot pass; exits of other
    /// tests' children set it too, which changes nothing here. No drain:
    /// waitpid(-1) would take other tests' children.)
    #[test]
    fn a_sigchld_is_flagged_before_tokio_reads_its_signal_pipe() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let stream = signal(SignalKind::child()).expect("a SIGCHLD stream");
        let reaping = Reaping::new(Some(stream));
        assert!(reaping.flagged, "the action is registered");
        CHLD_ARRIVED.store(false, Ordering::Release);
        let status = std::process::Command::new("true")
            .status()
            .expect("true runs");
        assert!(status.success());
        // The handler may run on another thread a moment after the exit.
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        while !reaping.arrived() {
            assert!(std::time::Instant::now() < give_up, "SIGCHLD never flagged");
            std::thread::yield_now();
        }
        // A stream-less reaping (the fallback) never says so.
        assert!(!Reaping::with_fallback(None, FALLBACK_REAP).arrived());
    }

    /// The owner's loop polls `due` afresh at every event: without SIGCHLD
    /// the fallback drain must still come due (its deadline is kept, not
    /// restarted by each poll).
    #[test]
    fn without_sigchld_a_drain_comes_due_however_often_the_loop_turns() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut reaping = Reaping::with_fallback(None, Duration::from_millis(50));
            let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
            let mut turns = 0u32;
            loop {
                tokio::select! {
                    _ = reaping.due() => break,
                    // An event every 2 ms, as a busy loop gets them.
                    _ = tokio::time::sleep(Duration::from_millis(2)) => turns += 1,
                }
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "no drain after {turns} turns"
                );
            }
        });
    }
}
