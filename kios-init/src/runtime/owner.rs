//! The one owner of the runtime's [`State`]: it takes the events of every
//! source (`event.rs`) one at a time, changes the state, answers requests,
//! and acts: starts services, sends KILLs, drives the shutdown machine
//! (`shutdown.rs`) and performs its actions. Nothing else writes the state,
//! so no borrow is shared and a stuck client cannot hold one.
//!
//! Every effect on the machine goes through `Sys`; starting the tasks that
//! read pipes, input devices and blocking steps goes through [`Spawner`], so
//! the whole owner (the shutdown included) runs in unit tests against the
//! recording fake without a tokio runtime.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use kios_protocol::{PowerMode, ServiceName, ServiceState};
use nix::sys::inotify::{AddWatchFlags, InotifyEvent, WatchDescriptor};
use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::runtime::audit;
use crate::runtime::event::{Answer, ClientEvent, Event, ShutdownSignal};
use crate::runtime::logind::BusCommand;
use crate::runtime::power_button;
use crate::runtime::reaper::Reaped;
use crate::runtime::server::clients::{Peer, MAX_CLIENTS};
use crate::runtime::server::handlers::{self, guarded, Outcome};
use crate::runtime::server::inventory::ExpectedPids;
use crate::runtime::shutdown::{Action, Facts, Job};
use crate::runtime::state::State;
use crate::runtime::supervisor::{Now, StopReason};
use crate::sys::process::InotifyFd;
use crate::sys::Sys;

/// Without inotify (it failed), how often cri-o's socket is looked for.
pub const FALLBACK_WATCH: Duration = Duration::from_millis(100);

/// What the owner starts that runs beside it: the tasks that read a
/// service's output or an input device, and the shutdown's blocking steps.
/// The runtime's spawner puts them on the event loop and the blocking pool;
/// tests run them inline or not at all.
pub trait Spawner {
    /// Reads a service's output pipe until it closes.
    fn output(&self, service: ServiceName, pid: u32, read_end: OwnedFd);
    /// Reads an input device for power-button presses (`false`: it could
    /// not be read; nothing started).
    fn input_device(&self, path: &Path) -> bool;
    /// Runs a blocking shutdown step; its end comes back as
    /// [`Event::JobDone`]. `true`: it ran to its end already (inline).
    fn job(&self, job: Job, work: Box<dyn FnOnce() + Send>) -> bool;
}

/// What an inotify watch is for.
#[derive(Debug, Default)]
struct Watches {
    crio_dir: Option<WatchDescriptor>,
    etc_kubernetes: Option<WatchDescriptor>,
    /// Watching the parent of /etc/kubernetes until it exists.
    etc: Option<WatchDescriptor>,
    input: Option<WatchDescriptor>,
    /// Watching /dev until /dev/input exists.
    dev: Option<WatchDescriptor>,
}

/// Things that happen once per boot.
#[derive(Debug, Default)]
struct Once {
    config_restart: bool,
    crio_socket_seen: bool,
    crio_started: bool,
    kubelet_started: bool,
}

/// The owner: the state and what it needs to act.
pub struct Owner {
    pub state: State,
    spawner: Box<dyn Spawner>,
    inotify: Option<Rc<AsyncFd<InotifyFd>>>,
    watches: Watches,
    once: Once,
    /// Input devices being read.
    devices: HashSet<PathBuf>,
    power_button: bool,
    /// Tells the accept loop to close the listening socket (shutdown).
    stop_serving: Rc<Notify>,
    /// Blocking steps that ended inline, not yet told to the shutdown.
    pending: Vec<Job>,
    /// Service output went to `logs -f` followers: let their tasks write it
    /// before the next event, so a burst of output does not fill the
    /// queue of a follower that reads (and cut it off).
    followers_fed: bool,
}

/// The facts the shutdown machine asks about, read from the state.
struct StateFacts<'a> {
    clients: &'a crate::runtime::server::clients::Clients,
    kubelet_pid: Option<u32>,
    sys: &'a dyn Sys,
    config: PathBuf,
    delay_locks: usize,
}

impl Facts for StateFacts<'_> {
    fn kubelet_candidates(&self) -> usize {
        self.clients.could_be_kubelet(self.kubelet_pid)
    }
    fn processes_left(&self) -> bool {
        self.sys.any_process_left()
    }
    fn clients_left(&self) -> usize {
        self.clients.len()
    }
    fn kubelet_grace(&self) -> Duration {
        crate::boot::grace::kubelet_shutdown_grace(&self.config)
    }
    fn delay_locks_held(&self) -> usize {
        self.delay_locks
    }
}

impl Owner {
    pub fn new(
        state: State,
        spawner: Box<dyn Spawner>,
        inotify: Option<Rc<AsyncFd<InotifyFd>>>,
        power_button: bool,
        stop_serving: Rc<Notify>,
    ) -> Owner {
        Owner {
            state,
            spawner,
            inotify,
            watches: Watches::default(),
            once: Once::default(),
            devices: HashSet::new(),
            power_button,
            stop_serving,
            pending: Vec::new(),
            followers_fed: false,
        }
    }

    /// The watches of the start: cri-o's socket directory, /etc/kubernetes
    /// and (unless disabled) /dev/input.
    pub fn start_watching(&mut self) {
        self.watch_crio_dir();
        self.watch_etc_kubernetes();
        if self.power_button {
            self.watch_input();
        }
    }

    /// Whether the node is done: reboot(2) was called (and returned).
    pub fn ended(&self) -> bool {
        self.state.shutdown.ended()
    }

    /// The next moment the owner has something to do without an event.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let fallback = self.inotify.is_none().then(|| now + FALLBACK_WATCH);
        [
            self.state.supervisor.next_deadline(),
            self.state.shutdown.next_wake(now),
            fallback,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether client tasks must run once before the next event: the
    /// shutdown waits for them to write what is queued, or log lines were
    /// just queued for followers.
    pub fn wants_turn(&self) -> bool {
        self.followers_fed || self.state.shutdown.wants_turn()
    }

    /// The event loop turned once (see [`Owner::wants_turn`]).
    pub fn turn_passed(&mut self) {
        self.followers_fed = false;
        self.state.shutdown.turn_passed();
    }

    /// Takes one event.
    pub fn handle(&mut self, event: Event, now: Now) {
        match event {
            Event::Signal(signal) => {
                let (mode, by, signo) = match signal {
                    ShutdownSignal::Term => (PowerMode::Poweroff, "SIGTERM", libc::SIGTERM),
                    ShutdownSignal::Pwr => (PowerMode::Poweroff, "SIGPWR", libc::SIGPWR),
                    ShutdownSignal::Int => {
                        (PowerMode::Reboot, "ctrl-alt-del (SIGINT)", libc::SIGINT)
                    }
                };
                let sender = audit::SignalPeer::of(self.state.sys.signal_sender(signo));
                let requested = self
                    .state
                    .request_shutdown(mode, false, &sender.describe(by), now);
                audit::signal_trigger(&mut self.state, mode, by, &sender, requested, now.epoch_ms);
            }
            Event::Reaped { reaped, error } => self.reaped(&reaped, error, now),
            Event::Inotify(events) => self.on_inotify(events),
            Event::InotifyFailed => self.inotify = None,
            Event::Output { service, lines } => {
                for line in lines {
                    if self.state.log_line(service, line, now.epoch_ms) > 0 {
                        self.followers_fed = true;
                    }
                }
            }
            Event::PowerButton { device } => {
                let by = format!("power button ({})", device.display());
                let mode = PowerMode::Poweroff;
                let requested = self.state.request_shutdown(mode, false, &by, now);
                audit::shutdown_trigger(&mut self.state, mode, &by, requested, now.epoch_ms);
            }
            Event::InputDeviceGone { device } => {
                self.devices.remove(&device);
            }
            Event::Client(client) => self.client(client, now),
            Event::Bus(event) => self.state.bus_event(event, now.epoch_ms),
            Event::JobDone(job) => self.state.shutdown.job_done(job),
            Event::ClockSet { at } => self.state.clock_set(at),
            #[cfg(test)]
            Event::Inspect(f) => f(&mut self.state),
        }
    }

    /// After every event or wake-up: what is due (KILLs, starts), then the
    /// shutdown as far as it can go now.
    pub fn after(&mut self, now: Now) {
        self.tick(now);
        self.drive_shutdown(now);
    }

    fn client(&mut self, event: ClientEvent, now: Now) {
        match event {
            ClientEvent::Connect {
                pid,
                uid,
                command,
                reply,
            } => {
                if self.state.clients.len() >= MAX_CLIENTS {
                    let _ = reply.send(None);
                    return;
                }
                let peer = Peer {
                    id: self.state.clients.next_id(),
                    pid,
                    uid,
                    command,
                };
                let registration = self.state.clients.register(peer.clone(), now.epoch_ms);
                // The kubelet (re)connecting while a shutdown drains has
                // missed the broadcast: it gets the shutdown byte at once.
                let kubelet = self.state.kubelet_pid();
                let is_kubelet =
                    matches!((peer.pid, kubelet), (Some(a), Some(b)) if a > 0 && a as u32 == b);
                if is_kubelet
                    && self.state.shutdown.phase() == Some(kios_protocol::ShutdownPhase::Draining)
                {
                    self.state.clients.send_legacy_shutdown(peer.id);
                }
                if let Err(Some((peer, _))) = reply.send(Some((peer, registration))) {
                    // The accept loop is gone: so is the connection.
                    self.state.clients.remove(peer.id);
                }
            }
            ClientEvent::Dialect { id, dialect } => self.state.clients.set_dialect(id, dialect),
            ClientEvent::Request {
                peer,
                request,
                reply,
            } => {
                let verb = request.verb();
                let state = &mut self.state;
                let outcome = guarded(verb, || handlers::handle(state, &peer, request, now));
                let expected = ExpectedPids {
                    init: std::process::id(),
                    crio: self.state.supervisor.crio.pid,
                    kubelet: self.state.supervisor.kubelet.pid,
                    // 0: the peer is outside init's PID namespace.
                    peer: peer.pid.filter(|p| *p > 0).map(|p| p as u32),
                };
                let answer = match outcome {
                    Ok(Outcome::Reply(response)) => Answer::Response(response),
                    Ok(Outcome::Encoded(line)) => Answer::Encoded(line),
                    Err(body) => Answer::Response(Err(body)),
                    Ok(Outcome::Verify) => Answer::Verify {
                        paths: self.state.paths.clone(),
                        expected,
                    },
                    Ok(Outcome::Ps { all }) => Answer::Ps {
                        proc_root: self.state.paths.proc_root.clone(),
                        expected,
                        all,
                    },
                    Ok(Outcome::KernelLog(request)) => Answer::KernelLog(request),
                };
                // A client that hung up meanwhile needs no answer.
                let _ = reply.send(answer);
            }
            ClientEvent::Legacy { peer, command } => {
                let state = &mut self.state;
                // No response in the legacy dialect; a panic is logged.
                let _ = guarded("legacy command", || {
                    handlers::handle_legacy(state, &peer, command, now)
                });
            }
            ClientEvent::Gone { id } => self.state.clients.remove(id),
        }
    }

    /// Walks the shutdown as far as the facts allow now.
    fn drive_shutdown(&mut self, now: Now) {
        loop {
            for job in std::mem::take(&mut self.pending) {
                self.state.shutdown.job_done(job);
            }
            let facts = StateFacts {
                clients: &self.state.clients,
                kubelet_pid: self.state.supervisor.kubelet.pid,
                sys: &*self.state.sys,
                config: self.state.paths.etc_kubernetes.join("config.yaml"),
                delay_locks: self.state.inhibitors.len(),
            };
            let Some(action) = self.state.shutdown.advance(&facts, now.mono, now.epoch_ms) else {
                if self.pending.is_empty() {
                    return;
                }
                continue;
            };
            self.perform(action, now);
        }
    }

    fn perform(&mut self, action: Action, now: Now) {
        match action {
            Action::Drain { bound, locks } => {
                if let Some(mode) = self.state.shutdown.mode() {
                    note_shutdown_mode(mode);
                }
                let sent = self.state.clients.broadcast_legacy_shutdown();
                // The upstream kubelet: PrepareForShutdown(true) on the system bus.
                if let Some(bus) = &self.state.bus {
                    if !bus.send(BusCommand::PrepareForShutdown(true)) {
                        crate::kwarn!("shutdown: the system bus did not take PrepareForShutdown");
                    }
                }
                crate::kinfo!(
                    "shutdown: draining: shutdown event sent to {sent} client(s), {locks} logind inhibitor lock(s) held; waiting up to {} ms for the kubelet",
                    bound.as_millis()
                );
            }
            Action::PhaseChanged => self.state.shutdown_changed(),
            Action::StopServices => {
                self.state.supervisor.stop_all(now);
                for name in ServiceName::ALL {
                    self.state.service_changed(name);
                }
                if let Err(e) = self.state.sys.kill_all(Signal::SIGTERM) {
                    crate::kwarn!("shutdown: SIGTERM to every process: {e}");
                }
            }
            Action::KillAll => {
                if let Err(e) = self.state.sys.kill_all(Signal::SIGKILL) {
                    crate::kwarn!("shutdown: SIGKILL to every process: {e}");
                }
            }
            Action::CloseSocket => {
                self.stop_serving.notify_one();
                self.state.clients.close_all();
                if let Some(bus) = self.state.bus.take() {
                    bus.send(BusCommand::Stop);
                }
            }
            Action::Run(job) => {
                let work: Box<dyn FnOnce() + Send> = match job {
                    Job::CloseLogs => {
                        // Service logs and the audit log: both on the data partition.
                        let writers = [
                            self.state.logs.close_writer(),
                            self.state.audit.close_writer(),
                        ];
                        Box::new(move || {
                            for handle in writers.into_iter().flatten() {
                                let _ = handle.join();
                            }
                        })
                    }
                    Job::Unmount => {
                        let sys = self.state.sys.clone();
                        let device = self.datapart_device();
                        Box::new(move || {
                            let report =
                                crate::boot::teardown::unmount_all_with(&*sys, device.as_deref());
                            crate::kinfo!(
                                "shutdown: unmounted {}, remounted read-only {}, failed {}",
                                report.unmounted,
                                report.remounted_ro.len(),
                                report.failed.len()
                            );
                            for (target, error) in &report.failed {
                                crate::kerr!("shutdown: cannot unmount {target}: {error}");
                            }
                        })
                    }
                    Job::Sync => {
                        let sys = self.state.sys.clone();
                        Box::new(move || sys.sync())
                    }
                };
                if self.spawner.job(job, work) {
                    self.pending.push(job);
                }
            }
            Action::Reboot(mode) => {
                let error = self.state.sys.reboot(mode.into());
                crate::kerr!("shutdown: reboot failed: {error}");
            }
        }
    }

    /// The data partition device mounted at boot (teardown may remount
    /// exactly that file system read-only at the superblock level).
    fn datapart_device(&self) -> Option<String> {
        self.state
            .node
            .datapart
            .as_ref()
            .filter(|d| d.mounted)
            .and_then(|d| d.device.clone())
    }

    /// Acts on whatever is due: KILLs, starts.
    fn tick(&mut self, now: Now) {
        let kills = self.state.supervisor.overdue_kills(now);
        for pid in kills {
            crate::kwarn!("pid {pid} did not stop within its time; sending SIGKILL");
            if let Err(e) = self.state.sys.kill(pid, Signal::SIGKILL) {
                crate::kwarn!("cannot SIGKILL pid {pid}: {e}");
            }
        }
        for name in self.state.supervisor.due(now) {
            self.start(name, now);
        }
        // Kubelet states may have changed to `waiting` in due(). Cheap, and
        // covers a socket created before the watch existed.
        let waiting = self.state.supervisor.kubelet.state == ServiceState::Waiting;
        if waiting && self.state.supervisor.crio.pid.is_some() {
            self.recheck_crio_socket();
            let now = later(now);
            for name in self.state.supervisor.due(now) {
                self.start(name, now);
            }
        }
        // Accepted restarts still owed a start: stop the service again now
        // that its last start happened (one at a time, never two at once).
        // Not once a shutdown began: the kubelet drains, nothing restarts.
        if !self.state.shutdown.is_active() {
            for pid in self.state.supervisor.queued_restarts(now) {
                let Some(name) = self.state.supervisor.service_of_pid(pid) else {
                    continue;
                };
                let left = self.state.supervisor.service(name).pending_restarts;
                crate::kinfo!(
                    "restart {name}: stopping pid {pid} ({left} requested restarts to go)"
                );
                if let Err(e) = self.state.sys.kill(pid, Signal::SIGTERM) {
                    crate::kwarn!("restart {name}: cannot send SIGTERM to pid {pid}: {e}");
                }
                self.state.service_changed(name);
            }
        }
    }

    fn start(&mut self, name: ServiceName, now: Now) {
        let argv = match name {
            ServiceName::Crio => crate::boot::argv::crio_argv(),
            ServiceName::Kubelet => {
                crate::boot::argv::kubelet_argv(&self.state.paths.etc_kubernetes)
            }
        };
        if name == ServiceName::Crio {
            // cri-o is not running: a socket file left is stale, and its
            // removal makes the next one a fresh inotify event.
            let _ = self.state.sys.remove_file(&self.state.paths.crio_socket);
        }
        match self.state.sys.spawn_service(&argv) {
            Ok(spawned) => {
                // After exec succeeded: spawn returns once the child exec'd.
                let pid = spawned.pid;
                self.state.supervisor.started(name, pid, argv, later(now));
                let first = match name {
                    ServiceName::Crio => !std::mem::replace(&mut self.once.crio_started, true),
                    ServiceName::Kubelet => {
                        !std::mem::replace(&mut self.once.kubelet_started, true)
                    }
                };
                if first {
                    self.state.milestone(match name {
                        ServiceName::Crio => "crio-start",
                        ServiceName::Kubelet => "kubelet-start",
                    });
                }
                if first && name == ServiceName::Kubelet {
                    // Boot is over: its code stops counting in init's
                    // memory (what runs from now on maps back in).
                    if let Err(e) = self.state.sys.release_boot_pages() {
                        crate::kwarn!("cannot drop boot's code pages: {e}");
                    }
                }
                self.state.service_changed(name);
                crate::kinfo!("started {name} (pid {pid})");
                if let Some(read_end) = spawned.output {
                    self.spawner.output(name, pid, read_end);
                }
            }
            Err(e) => {
                let outcome = self.state.supervisor.start_failed(name, later(now));
                // EAGAIN from clone (its kind; the message names the step):
                // the kernel refused a new task.
                let hint = if e.kind() == std::io::ErrorKind::WouldBlock {
                    " (no new process allowed: a pid limit, pids.max of the node's cgroup or RLIMIT_NPROC, or kernel.pid_max reached)"
                } else {
                    ""
                };
                crate::kerr!(
                    "cannot start {name} ({}): {e}{hint}; retry in {} ms",
                    argv.first().map(String::as_str).unwrap_or("?"),
                    outcome.restart_in.unwrap_or_default().as_millis()
                );
                self.state.service_changed(name);
            }
        }
    }

    /// Exited children: the supervisor learns first, what is due restarts
    /// at once, then the exits are logged (a crashed kubelet is back within
    /// the budget).
    fn reaped(&mut self, reaped: &[Reaped], error: Option<nix::errno::Errno>, now: Now) {
        let mut outcomes = Vec::new();
        for r in reaped {
            if let Some(outcome) = self.state.supervisor.exited(r.pid, r.exit, now) {
                outcomes.push((r, outcome));
            }
        }
        self.tick(now);
        for (r, outcome) in outcomes {
            let name = outcome.service;
            let service = self.state.supervisor.service(name);
            // Restarted in this very turn: say how long reaping to exec took.
            let restarted = match (service.pid, service.started_at) {
                (Some(pid), Some(at)) if at >= now.mono => {
                    format!(
                        "restarted as pid {pid} in {} us (reap to exec)",
                        at.duration_since(now.mono).as_micros()
                    )
                }
                _ => match outcome.restart_in {
                    Some(delay) => format!("restart in {} ms", delay.as_millis()),
                    None => "not restarted".to_string(),
                },
            };
            if outcome.crashed {
                crate::kwarn!("{name} (pid {}) ended with {}; {restarted}", r.pid, r.exit);
            } else {
                crate::kinfo!("{name} (pid {}) ended with {}; {restarted}", r.pid, r.exit);
            }
            self.state.service_changed(name);
        }
        if let Some(errno) = error {
            crate::kerr!("waitpid: {errno}");
        }
    }

    fn add_watch(&self, path: &Path, flags: AddWatchFlags) -> Option<WatchDescriptor> {
        let fd = self.inotify.as_ref()?;
        match fd.get_ref().0.add_watch(path, flags) {
            Ok(wd) => Some(wd),
            Err(e) => {
                if e != nix::errno::Errno::ENOENT {
                    crate::kwarn!("inotify: cannot watch {}: {e}", path.display());
                }
                None
            }
        }
    }

    fn watch_crio_dir(&mut self) {
        let socket = self.state.paths.crio_socket.clone();
        let Some(dir) = socket.parent() else {
            return;
        };
        if let Err(e) = self.state.sys.create_dir_all(dir, 0o755) {
            crate::kwarn!("cannot create {}: {e}", dir.display());
        }
        self.watches.crio_dir =
            self.add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO);
    }

    fn watch_etc_kubernetes(&mut self) {
        let dir = self.state.paths.etc_kubernetes.clone();
        self.watches.etc_kubernetes = self.add_watch(
            &dir,
            AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO,
        );
        if self.watches.etc_kubernetes.is_none() && self.watches.etc.is_none() {
            if let Some(parent) = dir.parent() {
                self.watches.etc = self.add_watch(
                    parent,
                    AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
                );
            }
        }
    }

    fn watch_input(&mut self) {
        let dir = Path::new(power_button::INPUT_DIR);
        self.watches.input = self.add_watch(dir, AddWatchFlags::IN_CREATE);
        if self.watches.input.is_some() {
            for name in power_button::event_devices(dir) {
                self.open_input(&dir.join(name));
            }
        } else if self.watches.dev.is_none() {
            self.watches.dev = self.add_watch(Path::new("/dev"), AddWatchFlags::IN_CREATE);
        }
    }

    /// Starts reading one event device (a no-op if it is read already).
    fn open_input(&mut self, path: &Path) {
        if !self.devices.contains(path) && self.spawner.input_device(path) {
            self.devices.insert(path.to_path_buf());
        }
    }

    fn on_inotify(&mut self, events: Vec<InotifyEvent>) {
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                crate::kwarn!("inotify: event queue overflowed; re-checking");
                self.recheck_crio_socket();
                self.kubelet_config_changed();
                continue;
            }
            let name = event.name.as_ref().and_then(|n| n.to_str()).unwrap_or("");
            let wd = Some(event.wd);
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                // The watched directory is gone.
                for slot in [
                    &mut self.watches.crio_dir,
                    &mut self.watches.etc_kubernetes,
                    &mut self.watches.etc,
                    &mut self.watches.input,
                    &mut self.watches.dev,
                ] {
                    if *slot == wd {
                        *slot = None;
                    }
                }
                // cri-o's socket directory must stay watched: recreate it
                // (not while shutting down: unmounting removes watches).
                if self.watches.crio_dir.is_none() && !self.state.shutdown.is_active() {
                    self.watch_crio_dir();
                }
                continue;
            }
            if wd == self.watches.crio_dir {
                let socket = &self.state.paths.crio_socket;
                if socket.file_name().and_then(|n| n.to_str()) == Some(name) {
                    self.crio_socket_appeared();
                }
            } else if wd == self.watches.etc_kubernetes {
                if name == "kubelet.conf" || name == "bootstrap-kubelet.conf" {
                    self.kubelet_config_changed();
                }
            } else if wd == self.watches.etc {
                let dir = &self.state.paths.etc_kubernetes;
                if dir.file_name().and_then(|n| n.to_str()) == Some(name) {
                    self.watch_etc_kubernetes();
                    // Files may have been written before the watch existed.
                    self.kubelet_config_changed();
                }
            } else if wd == self.watches.input {
                if power_button::is_event_device(name) {
                    self.open_input(&Path::new(power_button::INPUT_DIR).join(name));
                }
            } else if wd == self.watches.dev && name == "input" && self.watches.input.is_none() {
                self.watch_input();
            }
        }
    }

    fn recheck_crio_socket(&mut self) {
        if self.state.sys.path_exists(&self.state.paths.crio_socket) {
            self.crio_socket_appeared();
        }
    }

    fn crio_socket_appeared(&mut self) {
        let supervisor = &mut self.state.supervisor;
        if supervisor.crio.pid.is_none() || supervisor.crio_ready {
            return;
        }
        supervisor.crio_socket_ready(Now::current());
        if !std::mem::replace(&mut self.once.crio_socket_seen, true) {
            self.state.milestone("crio-socket");
        }
        self.state.service_changed(ServiceName::Crio);
    }

    /// kubelet.conf or bootstrap-kubelet.conf appeared: restart the kubelet
    /// once if its flags would change.
    fn kubelet_config_changed(&mut self) {
        if self.once.config_restart || self.state.supervisor.kubelet.pid.is_none() {
            // Done already, or not running: it picks the file up at start.
            return;
        }
        let argv = crate::boot::argv::kubelet_argv(&self.state.paths.etc_kubernetes);
        if argv == self.state.supervisor.kubelet.argv {
            return;
        }
        self.once.config_restart = true;
        crate::kinfo!(
            "kubelet configuration appeared in {}: restarting the kubelet once with its new flags",
            self.state.paths.etc_kubernetes.display()
        );
        if let Err(e) = self.state.restart(
            ServiceName::Kubelet,
            StopReason::ConfigChanged,
            Now::current(),
        ) {
            crate::kwarn!("kubelet config restart: {}", e.message);
        }
    }
}

/// The time of a step inside a turn that began at `now`: the clock as it
/// reads (a spawn takes time, and `reaped` measures reap to exec with it),
/// never earlier than `now` (tests drive the owner on a made-up clock
/// ahead of the real one).
fn later(now: Now) -> Now {
    let current = Now::current();
    if current.mono >= now.mono {
        current
    } else {
        now
    }
}

/// The mode of a shutdown under way, for the last-resort path: if the
/// event loop dies of a bug mid-shutdown, the node still ends that way.
static SHUTDOWN_MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn note_shutdown_mode(mode: PowerMode) {
    let value = match mode {
        PowerMode::Poweroff => 1,
        PowerMode::Reboot => 2,
    };
    SHUTDOWN_MODE.store(value, std::sync::atomic::Ordering::Relaxed);
}

/// The mode of the shutdown that was under way, if one was.
pub fn shutdown_under_way() -> Option<PowerMode> {
    match SHUTDOWN_MODE.load(std::sync::atomic::Ordering::Relaxed) {
        1 => Some(PowerMode::Poweroff),
        2 => Some(PowerMode::Reboot),
        _ => None,
    }
}

#[cfg(test)]
pub mod testing {
    //! Spawners for tests: nothing runs beside the owner.
    use super::*;

    /// Starts no reader. Blocking steps run at once, in the caller
    /// ([`INLINE_SPAWNER`]), or never finish, like on a hung disk
    /// ([`HUNG_SPAWNER`]).
    pub struct TestSpawner {
        pub run_jobs: bool,
    }

    pub const INLINE_SPAWNER: TestSpawner = TestSpawner { run_jobs: true };
    pub const HUNG_SPAWNER: TestSpawner = TestSpawner { run_jobs: false };

    impl Spawner for TestSpawner {
        fn output(&self, _service: ServiceName, _pid: u32, _read_end: OwnedFd) {}
        fn input_device(&self, _path: &Path) -> bool {
            false
        }
        fn job(&self, _job: Job, work: Box<dyn FnOnce() + Send>) -> bool {
            if self.run_jobs {
                work();
            }
            self.run_jobs
        }
    }
}

#[cfg(test)]
mod tests {
    //! The whole shutdown against the recording fake, on a made-up clock:
    //! phase order, the drain bound, force, requests during each phase, and
    //! what is unmounted in which order. No namespace, no tokio runtime.
    use super::testing::{HUNG_SPAWNER, INLINE_SPAWNER};
    use super::*;
    use crate::runtime::server::clients::Registration;
    use crate::runtime::shutdown::{
        DISK_WAIT, DRAIN_MARGIN, KILL_WAIT, LOG_CLOSE_WAIT, SOCKET_CLOSE_WAIT, STOP_GRACE,
    };
    use crate::runtime::state::testing::{test_state, TestState};
    use crate::sys::fake::{Call, FakeSys};
    use kios_protocol::{
        Dialect, ErrorCode, LegacyCommand, Reply, Request, Response, ShutdownPhase,
    };
    use std::sync::Arc;
    use tokio::sync::oneshot;

    /// Parents before children in mount order, so the right order to
    /// unmount is the reverse of each branch.
    const MOUNTINFO: &str = "\
1 0 0:2 / / rw - rootfs rootfs rw
20 1 0:20 / /proc rw - proc proc rw
25 1 0:24 / /run rw - tmpfs tmpfs rw
30 25 253:1 / /run/kios/datapart rw - ext4 /dev/vda1 rw
32 1 253:1 /meta/log /var/log rw - ext4 /dev/vda1 rw
33 32 0:40 / /var/log/pods rw - tmpfs tmpfs rw
";

    struct Node {
        owner: Owner,
        sys: Arc<FakeSys>,
        t0: Now,
        dir: PathBuf,
    }

    fn node(name: &str, spawner: Box<dyn Spawner>) -> Node {
        let TestState { mut state, sys } = test_state();
        let dir = std::env::temp_dir().join(format!("kios-owner-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc-kubernetes")).unwrap();
        state.paths.etc_kubernetes = dir.join("etc-kubernetes");
        state.paths.crio_socket = dir.join("crio/crio.sock");
        sys.add_file("/proc/self/mountinfo", MOUNTINFO);
        sys.set_processes_left(true);
        let owner = Owner::new(state, spawner, None, false, Rc::new(Notify::new()));
        let mut node = Node {
            owner,
            sys,
            t0: Now::current(),
            dir,
        };
        node.at(0, None);
        node
    }

    impl Drop for Node {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Node {
        fn now(&self, ms: u64) -> Now {
            Now {
                mono: self.t0.mono + Duration::from_millis(ms),
                epoch_ms: self.t0.epoch_ms + ms,
            }
        }

        /// At `ms` after the start: the event (if any), then what is due,
        /// with as many loop turns as the shutdown asks for.
        fn at(&mut self, ms: u64, event: Option<Event>) {
            let now = self.now(ms);
            if let Some(event) = event {
                self.owner.handle(event, now);
            }
            self.owner.after(now);
            while self.owner.wants_turn() {
                self.owner.turn_passed();
                self.owner.after(now);
            }
        }

        fn phase(&self) -> Option<ShutdownPhase> {
            self.owner.state.shutdown.phase()
        }

        fn connect(&mut self, ms: u64, pid: i32) -> (Peer, Registration) {
            let (reply, mut answer) = oneshot::channel();
            let connect = ClientEvent::Connect {
                pid: Some(pid),
                uid: Some(0),
                command: Some("test".into()),
                reply,
            };
            self.at(ms, Some(Event::Client(connect)));
            answer.try_recv().unwrap().expect("registered")
        }

        fn request(&mut self, ms: u64, peer: &Peer, request: Request) -> Response {
            let request_for_decode = request.clone();
            let (reply, mut answer) = oneshot::channel();
            let event = ClientEvent::Request {
                peer: peer.clone(),
                request,
                reply,
            };
            self.at(ms, Some(Event::Client(event)));
            match answer.try_recv().unwrap() {
                Answer::Response(response) => response,
                Answer::Encoded(line) => {
                    let line = std::str::from_utf8(&line).expect("a line of UTF-8");
                    assert!(line.ends_with('\n'), "{line:?}");
                    kios_protocol::decode_response(&request_for_decode, line.trim_end())
                        .expect("an encoded line decodes")
                }
                Answer::Verify { .. } | Answer::Ps { .. } | Answer::KernelLog(_) => {
                    panic!("unexpected work off the loop")
                }
            }
        }

        /// The calls of the shutdown's effects, in order.
        fn effects(&self) -> Vec<Call> {
            self.sys
                .calls()
                .into_iter()
                .filter(|c| {
                    matches!(
                        c,
                        Call::KillAll(_)
                            | Call::Umount(_)
                            | Call::UmountDetach(_)
                            | Call::Mount { .. }
                            | Call::Sync
                            | Call::Reboot(_)
                    )
                })
                .collect()
        }
    }

    fn shutdown(mode: PowerMode, force: bool) -> Request {
        Request::Shutdown { mode, force }
    }

    /// A node whose cri-o socket exists, one turn in: cri-o and the
    /// kubelet started.
    fn booted(name: &str) -> Node {
        let mut n = node(name, Box::new(INLINE_SPAWNER));
        let socket = n.owner.state.paths.crio_socket.clone();
        n.sys.add_file(socket.to_str().unwrap(), "");
        n.at(1, None);
        n
    }

    /// One child's exit, as the reaper reports it.
    fn exited(pid: u32, exit: crate::runtime::reaper::Exit) -> Event {
        Event::Reaped {
            reaped: vec![Reaped { pid, exit }],
            error: None,
        }
    }

    fn phases_seen(reg: &mut Registration) -> Vec<ShutdownPhase> {
        let mut phases = Vec::new();
        while let Ok(bytes) = reg.rx.try_recv() {
            let text = String::from_utf8_lossy(&bytes).trim_end().to_string();
            if let Ok(kios_protocol::Event::Shutdown(status)) = kios_protocol::Event::decode(&text)
            {
                if phases.last() != Some(&status.phase) {
                    phases.push(status.phase);
                }
            }
        }
        phases
    }

    #[test]
    fn the_whole_shutdown_walks_its_phases_in_order_and_unmounts_children_first() {
        let mut n = node("order", Box::new(INLINE_SPAWNER));
        let (kubelet, mut kubelet_reg) = n.connect(1, 4000);
        let (watcher, mut watcher_reg) = n.connect(2, 4001);
        n.at(
            2,
            Some(Event::Client(ClientEvent::Dialect {
                id: watcher.id,
                dialect: Dialect::Line,
            })),
        );
        assert!(matches!(
            n.request(3, &watcher, Request::Watch),
            Ok(Reply::Watch(_))
        ));

        n.at(10, Some(Event::Signal(ShutdownSignal::Term)));
        assert_eq!(n.phase(), Some(ShutdownPhase::Draining));
        assert_eq!(
            &*kubelet_reg.rx.try_recv().unwrap(),
            &[0x01],
            "the kubelet is told"
        );
        assert!(n.effects().is_empty(), "nothing stopped while draining");

        // The kubelet is done: 0x02.
        let continued = ClientEvent::Legacy {
            peer: kubelet.clone(),
            command: LegacyCommand::ContinueShutdown,
        };
        n.at(500, Some(Event::Client(continued)));
        assert_eq!(n.phase(), Some(ShutdownPhase::Stopping));
        assert_eq!(n.effects(), vec![Call::KillAll(Signal::SIGTERM)]);

        // Processes get their TERM grace, then KILL.
        let term_at = 500;
        n.at(term_at + STOP_GRACE.as_millis() as u64 - 1, None);
        assert_eq!(n.effects().len(), 1, "no KILL within the TERM grace");
        n.at(term_at + STOP_GRACE.as_millis() as u64, None);
        assert_eq!(n.effects().last(), Some(&Call::KillAll(Signal::SIGKILL)));
        assert_eq!(n.phase(), Some(ShutdownPhase::Stopping));

        // The last one is reaped: unmounting; the socket closes, and waits
        // for its clients to go.
        n.sys.set_processes_left(false);
        let reaped = Event::Reaped {
            reaped: vec![],
            error: None,
        };
        n.at(6000, Some(reaped));
        assert_eq!(n.phase(), Some(ShutdownPhase::Unmounting));
        assert_eq!(
            n.effects().len(),
            2,
            "nothing unmounted while clients are connected"
        );
        for id in [kubelet.id, watcher.id] {
            n.at(6001, Some(Event::Client(ClientEvent::Gone { id })));
        }

        let mut want = vec![
            Call::KillAll(Signal::SIGTERM),
            Call::KillAll(Signal::SIGKILL),
        ];
        want.extend(
            [
                "/var/log/pods",
                "/var/log",
                "/run/kios/datapart",
                "/run",
                "/proc",
            ]
            .map(|t| Call::Umount(t.into())),
        );
        want.extend([Call::Sync, Call::Reboot(crate::sys::PowerMode::PowerOff)]);
        assert_eq!(n.effects(), want);
        assert_eq!(n.phase(), Some(ShutdownPhase::Final));
        assert!(n.owner.ended());
        assert_eq!(
            phases_seen(&mut watcher_reg),
            vec![
                ShutdownPhase::Draining,
                ShutdownPhase::Stopping,
                ShutdownPhase::Unmounting
            ],
            "watchers see `unmounting` before their connection closes"
        );
    }

    #[test]
    fn the_drain_waits_for_the_kubelet_only_up_to_its_grace_plus_the_margin() {
        let mut n = node("bound", Box::new(INLINE_SPAWNER));
        std::fs::write(
            n.owner.state.paths.etc_kubernetes.join("config.yaml"),
            "shutdownGracePeriod: 2s\n",
        )
        .unwrap();
        let _kubelet = n.connect(1, 4000);
        n.at(100, Some(Event::Signal(ShutdownSignal::Int)));
        let bound = (Duration::from_secs(2) + DRAIN_MARGIN).as_millis() as u64;
        // The owner sleeps until the bound; nothing polls in between.
        assert_eq!(
            n.owner.state.shutdown.next_wake(n.now(100).mono),
            Some(n.now(100 + bound).mono)
        );
        n.at(100 + bound - 1, None);
        assert_eq!(n.phase(), Some(ShutdownPhase::Draining));
        n.at(100 + bound, None);
        assert_eq!(n.phase(), Some(ShutdownPhase::Stopping));
        assert_eq!(n.owner.state.shutdown.mode(), Some(PowerMode::Reboot));
    }

    #[test]
    fn no_kubelet_means_no_drain_and_a_kubelet_that_leaves_ends_it() {
        let mut alone = node("alone", Box::new(INLINE_SPAWNER));
        alone.at(1, Some(Event::Signal(ShutdownSignal::Pwr)));
        assert_eq!(alone.phase(), Some(ShutdownPhase::Stopping));

        let mut n = node("leaves", Box::new(INLINE_SPAWNER));
        let (kubelet, _reg) = n.connect(1, 4000);
        n.at(2, Some(Event::Signal(ShutdownSignal::Term)));
        assert_eq!(n.phase(), Some(ShutdownPhase::Draining));
        n.at(3, Some(Event::Client(ClientEvent::Gone { id: kubelet.id })));
        assert_eq!(n.phase(), Some(ShutdownPhase::Stopping));
    }

    #[test]
    fn force_on_the_first_request_skips_the_drain_but_not_the_term_grace() {
        let mut n = node("force-first", Box::new(INLINE_SPAWNER));
        let (_kubelet, _reg) = n.connect(1, 4000);
        let (admin, _admin_reg) = n.connect(2, 4001);
        let reply = n.request(3, &admin, shutdown(PowerMode::Poweroff, true));
        assert!(matches!(reply, Ok(Reply::Shutdown(_))), "{reply:?}");
        assert_eq!(n.phase(), Some(ShutdownPhase::Stopping));
        n.at(3 + STOP_GRACE.as_millis() as u64 - 1, None);
        assert_eq!(n.effects(), vec![Call::KillAll(Signal::SIGTERM)]);
        n.at(3 + STOP_GRACE.as_millis() as u64, None);
        assert_eq!(n.effects().last(), Some(&Call::KillAll(Signal::SIGKILL)));
    }

    #[test]
    fn a_later_force_skips_every_wait_left() {
        let mut n = node("force-later", Box::new(INLINE_SPAWNER));
        let (_kubelet, _reg) = n.connect(1, 4000);
        let (admin, _admin_reg) = n.connect(2, 4001);
        n.at(3, Some(Event::Signal(ShutdownSignal::Term)));
        assert_eq!(n.phase(), Some(ShutdownPhase::Draining));
        n.request(4, &admin, shutdown(PowerMode::Poweroff, true))
            .unwrap();
        // The drain ends and the TERM grace is cut: KILL in the same turn.
        assert_eq!(n.phase(), Some(ShutdownPhase::Stopping));
        assert_eq!(
            n.effects(),
            vec![
                Call::KillAll(Signal::SIGTERM),
                Call::KillAll(Signal::SIGKILL)
            ]
        );
        // Still bounded: what survives SIGKILL is given up on after KILL_WAIT.
        n.at(4 + KILL_WAIT.as_millis() as u64, None);
        assert_eq!(n.phase(), Some(ShutdownPhase::Unmounting));
    }

    #[test]
    fn requests_in_every_phase_get_their_answers() {
        let mut n = node("requests", Box::new(HUNG_SPAWNER));
        let (_kubelet, _reg) = n.connect(1, 4000);
        let (admin, _admin_reg) = n.connect(2, 4001);
        n.at(
            2,
            Some(Event::Client(ClientEvent::Dialect {
                id: admin.id,
                dialect: Dialect::Line,
            })),
        );
        n.request(3, &admin, shutdown(PowerMode::Reboot, false))
            .unwrap();
        let check = |n: &mut Node, ms: u64, phase: ShutdownPhase| {
            assert_eq!(n.phase(), Some(phase));
            match n.request(ms, &admin, Request::Status) {
                Ok(Reply::Status(s)) => {
                    assert_eq!(s.node.shutdown.map(|s| s.phase), Some(phase))
                }
                other => panic!("{other:?}"),
            }
            let restart = Request::Restart {
                service: ServiceName::Crio,
            };
            match n.request(ms, &admin, restart) {
                Err(e) => assert_eq!(e.code, ErrorCode::ShuttingDown),
                other => panic!("{other:?}"),
            }
            // A second request keeps the first one's mode.
            match n.request(ms, &admin, shutdown(PowerMode::Poweroff, false)) {
                Ok(Reply::Shutdown(r)) => {
                    assert_eq!((r.mode, r.phase), (PowerMode::Reboot, phase))
                }
                other => panic!("{other:?}"),
            }
            match n.request(ms, &admin, Request::ContinueShutdown) {
                Ok(Reply::ContinueShutdown(r)) => assert_eq!(r.phase, phase),
                other => panic!("{other:?}"),
            }
        };
        // continue-shutdown from the check ends the drain.
        check(&mut n, 4, ShutdownPhase::Draining);
        assert_eq!(n.phase(), Some(ShutdownPhase::Stopping));
        check(&mut n, 5, ShutdownPhase::Stopping);
        n.sys.set_processes_left(false);
        n.at(6, None);
        check(&mut n, 7, ShutdownPhase::Unmounting);
        assert_eq!(
            n.effects(),
            vec![Call::KillAll(Signal::SIGTERM)],
            "nothing unmounted while clients are connected"
        );
    }

    #[test]
    fn a_hung_writer_or_disk_does_not_keep_the_node_up() {
        let mut n = node("hung", Box::new(HUNG_SPAWNER));
        n.sys.set_processes_left(false);
        let (client, _reg) = n.connect(1, 4000);
        n.at(2, Some(Event::Client(ClientEvent::Gone { id: client.id })));
        n.at(3, Some(Event::Signal(ShutdownSignal::Term)));
        assert_eq!(n.phase(), Some(ShutdownPhase::Unmounting));
        // The clients are gone: the log writer is closing and never ends.
        let mut t = 3;
        assert_eq!(
            n.owner.state.shutdown.next_wake(n.now(t).mono),
            Some(n.now(t + LOG_CLOSE_WAIT.as_millis() as u64).mono)
        );
        t += LOG_CLOSE_WAIT.as_millis() as u64;
        n.at(t, None);
        assert_eq!(n.phase(), Some(ShutdownPhase::Unmounting), "unmounting now");
        t += DISK_WAIT.as_millis() as u64;
        n.at(t, None);
        assert_eq!(n.phase(), Some(ShutdownPhase::Syncing));
        t += DISK_WAIT.as_millis() as u64 - 1;
        n.at(t, None);
        assert!(!n.owner.ended());
        n.at(t + 1, None);
        assert!(n.owner.ended());
        assert_eq!(
            n.effects(),
            vec![
                Call::KillAll(Signal::SIGTERM),
                Call::Reboot(crate::sys::PowerMode::PowerOff)
            ]
        );
    }

    #[test]
    fn clients_that_never_close_are_waited_for_only_briefly() {
        let mut n = node("stuck-client", Box::new(INLINE_SPAWNER));
        n.sys.set_processes_left(false);
        let (_client, _reg) = n.connect(1, 4000);
        let (admin, _admin_reg) = n.connect(2, 4001);
        n.request(3, &admin, shutdown(PowerMode::Poweroff, true))
            .unwrap();
        assert_eq!(n.phase(), Some(ShutdownPhase::Unmounting));
        assert_eq!(
            n.owner.state.shutdown.next_wake(n.now(3).mono),
            Some(n.now(3 + SOCKET_CLOSE_WAIT.as_millis() as u64).mono),
            "no polling for the clients to go"
        );
        n.at(3 + SOCKET_CLOSE_WAIT.as_millis() as u64, None);
        assert!(n.owner.ended());
    }

    /// Steps of the wall clock (issue 11): each set the watch reports is
    /// counted in `status` with its signed size, uptime stays monotonic,
    /// restarts still work after each, and the node still shuts down.
    #[test]
    fn wall_clock_steps_show_in_status_and_change_nothing_else() {
        let mut n = booted("clock-steps");
        let (admin, _reg) = n.connect(2, 4000);
        let start = n.owner.state.milestones.start_instant();
        let boot_ms = n.owner.state.milestones.start_epoch_ms();
        let day: i64 = 86_400_000;
        // The clocks as the watch reads them `mono_ms` after init started,
        // the wall clock moved by `moved_ms` in all.
        let set = |mono_ms: u64, moved_ms: i64| Event::ClockSet {
            at: Now {
                mono: start + Duration::from_millis(mono_ms),
                epoch_ms: (i128::from(boot_ms) + i128::from(mono_ms) + i128::from(moved_ms)) as u64,
            },
        };
        let status = |n: &mut Node, ms: u64| match n.request(ms, &admin, Request::Status) {
            Ok(Reply::Status(s)) => s,
            other => panic!("{other:?}"),
        };
        let before = status(&mut n, 3);
        assert_eq!(
            (before.node.clock_steps, before.node.last_clock_step_ms),
            (0, 0)
        );

        let mut t = 1_000;
        for (moved, steps, last) in [(-3 * day, 1, -3 * day), (-2 * day, 2, day)] {
            n.at(t, Some(set(t, moved)));
            let s = status(&mut n, t);
            assert_eq!(
                (s.node.clock_steps, s.node.last_clock_step_ms),
                (steps, last)
            );
            // The test's own clock did not move: uptime is what the
            // monotonic clock says since the start, not boot_ms + a step.
            let mono = n.now(t).mono.saturating_duration_since(start);
            assert_eq!(s.node.uptime_ms, mono.as_millis() as u64);
            // The node keeps doing everything else: a restart, a new kubelet.
            let old = n.owner.state.supervisor.kubelet.pid.expect("kubelet runs");
            let restart = Request::Restart {
                service: ServiceName::Kubelet,
            };
            assert!(matches!(
                n.request(t, &admin, restart),
                Ok(Reply::Restart(_))
            ));
            let reaped = exited(old, crate::runtime::reaper::Exit::Signal(15));
            n.at(t + 10, Some(reaped));
            let new = n.owner.state.supervisor.kubelet.pid.expect("restarted");
            assert_ne!(new, old);
            t += 1_000;
        }
        // A set to the time it had is logged, not counted.
        n.at(t, Some(set(t, -2 * day)));
        let s = status(&mut n, t);
        assert_eq!((s.node.clock_steps, s.node.last_clock_step_ms), (2, day));

        // And the node still shuts down, to the end.
        n.sys.set_processes_left(false);
        n.at(t, Some(Event::Client(ClientEvent::Gone { id: admin.id })));
        n.at(t, Some(Event::Signal(ShutdownSignal::Term)));
        let end = t + 120_000;
        while !n.owner.ended() && t < end {
            t += 100;
            n.at(t, None);
        }
        assert!(n.owner.ended(), "phase {:?}", n.phase());
        assert_eq!(
            n.effects().last(),
            Some(&Call::Reboot(crate::sys::PowerMode::PowerOff))
        );
    }

    /// The kubelet crash-loops for an hour of simulated time through the
    /// whole owner (reaper events, output, the timer): one start per
    /// back-off end and never two kubelets, the cap held, every restart
    /// counted, and nothing the node keeps grows once its bound is
    /// reached; a stable run then starts the back-off over.
    #[test]
    fn an_hour_of_kubelet_crash_loop_grows_nothing_and_holds_the_cap() {
        use crate::runtime::reaper::Exit;
        let mut n = booted("crash-loop");
        let mut pid = n.owner.state.supervisor.kubelet.pid.expect("kubelet up");
        let cap = Duration::from_secs(30);
        let reaped = |pid| exited(pid, Exit::Code(1));
        // What the node keeps, once the kubelet's tail is full.
        let kept = |n: &Node| {
            let s = &n.owner.state;
            [
                s.logs.tail(ServiceName::Kubelet).len(),
                s.logs.tail(ServiceName::Crio).len(),
                s.milestones.list().len(),
                s.audit.entries(usize::MAX).len(),
                s.clients.len(),
                s.inhibitors.len(),
                s.supervisor.kubelet.argv.len(),
            ]
        };
        let mut t = 1;
        let mut crashes = 0u32;
        let mut at_cap = 0u32;
        let mut baseline = None;
        while t < 3_600_000 {
            // Each instance prints 1 KiB and lives a second.
            t += 1000;
            let lines = vec!["E".repeat(256); 4];
            let output = Event::Output {
                service: ServiceName::Kubelet,
                lines,
            };
            n.at(t, Some(output));
            n.at(t, Some(reaped(pid)));
            crashes += 1;
            let sup = &n.owner.state.supervisor;
            if sup.kubelet.pid.is_none() {
                // Backing off: the owner's timer is the back-off's end.
                let deadline = sup.next_deadline().expect("a back-off timer");
                let delay = deadline.duration_since(n.now(t).mono);
                assert!(delay <= cap, "{delay:?}");
                if delay == cap {
                    at_cap += 1;
                }
                let ms = delay.as_millis() as u64;
                n.at(t + ms - 1, None);
                assert_eq!(n.owner.state.supervisor.kubelet.pid, None, "early start");
                t += ms;
                n.at(t, None);
            }
            pid = n.owner.state.supervisor.kubelet.pid.expect("restarted");
            if crashes == 60 {
                baseline = Some(kept(&n));
            }
        }
        // As in the supervisor's test: 8 crashes to the cap, then 114.
        assert_eq!(crashes, 122, "the climb, then one crash every 31 s");
        assert_eq!(at_cap, crashes - 7);
        let kubelet = &n.owner.state.supervisor.kubelet;
        assert_eq!(kubelet.restarts, crashes);
        assert_eq!(kubelet.state, ServiceState::Running);
        assert_eq!(n.owner.state.supervisor.crio.restarts, 0);
        assert_eq!(Some(kept(&n)), baseline, "something grew");
        let tail = n.owner.state.logs.tail(ServiceName::Kubelet);
        assert!(tail.len() * 256 <= crate::runtime::logcapture::TAIL_BYTES);
        let spawns = n
            .sys
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Spawn(_)))
            .count();
        assert_eq!(spawns as u32, 1 + 1 + crashes, "one start per crash");

        // A minute of stable running: the next crash restarts at once.
        t += 60_000;
        n.at(t, Some(reaped(pid)));
        let kubelet = &n.owner.state.supervisor.kubelet;
        assert!(kubelet.pid.is_some(), "restarted in the same turn");
        assert_eq!(kubelet.consecutive_crashes, 1);
        assert_eq!(kubelet.restarts, crashes + 1);
    }

    /// Boot's code pages are dropped once, right after the first kubelet
    /// start (cri-o's start is still boot), and never again.
    #[test]
    fn boot_pages_are_released_once_at_the_first_kubelet_start() {
        use crate::runtime::reaper::Exit;
        let mut n = booted("boot-pages");
        let pid = n.owner.state.supervisor.kubelet.pid.expect("kubelet up");
        let order = |n: &Node| -> Vec<&'static str> {
            n.sys
                .calls()
                .into_iter()
                .filter_map(|c| match c {
                    Call::Spawn(argv) if argv[0].ends_with("crio") => Some("crio"),
                    Call::Spawn(_) => Some("kubelet"),
                    Call::ReleaseBootPages => Some("release"),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(order(&n), ["crio", "kubelet", "release"]);
        n.at(2, Some(exited(pid, Exit::Code(1))));
        assert!(n.owner.state.supervisor.kubelet.pid.is_some(), "restarted");
        assert_eq!(order(&n), ["crio", "kubelet", "release", "kubelet"]);
    }

    /// Spawning fails (the kernel refuses a new task: a pid limit): the
    /// failure is a crash with exit code 127 that backs off, the node goes
    /// on, and the kubelet starts once spawning works again.
    #[test]
    fn a_refused_spawn_backs_off_and_the_kubelet_starts_once_spawning_works() {
        let mut n = node("spawn-fails", Box::new(INLINE_SPAWNER));
        let socket = n.owner.state.paths.crio_socket.clone();
        n.sys.add_file(socket.to_str().unwrap(), "");
        let argv0 = crate::boot::argv::kubelet_argv(&n.owner.state.paths.etc_kubernetes)[0].clone();
        for _ in 0..3 {
            n.sys.fail("spawn", &argv0, libc::EAGAIN);
        }
        n.at(1, None);
        let kubelet = &n.owner.state.supervisor.kubelet;
        assert_eq!(kubelet.state, ServiceState::Backoff);
        assert_eq!(kubelet.last_exit.map(|e| e.code), Some(Some(127)));
        // Retries at once (fails), after 500 ms (fails), after 1 s (works).
        let mut t = 1;
        for want in [0, 500, 1000] {
            let deadline = n.owner.state.supervisor.next_deadline().unwrap();
            assert_eq!(deadline.duration_since(n.now(t).mono).as_millis(), want);
            t += want as u64;
            n.at(t, None);
        }
        let kubelet = &n.owner.state.supervisor.kubelet;
        assert!(kubelet.pid.is_some(), "started once spawning works");
        assert_eq!(kubelet.restarts, 3);
        assert_eq!(n.owner.state.supervisor.crio.restarts, 0);
    }

    #[test]
    fn each_accepted_restart_is_one_start_and_the_queue_is_bounded() {
        use crate::runtime::supervisor::MAX_PENDING_RESTARTS;
        let mut n = node("restart-queue", Box::new(INLINE_SPAWNER));
        let (admin, _reg) = n.connect(1, 4000);
        let mut accepted = 0;
        let mut busy = 0;
        for _ in 0..=MAX_PENDING_RESTARTS {
            let restart = Request::Restart {
                service: ServiceName::Crio,
            };
            match n.request(2, &admin, restart) {
                Ok(Reply::Restart(_)) => accepted += 1,
                Err(e) if e.code == ErrorCode::Busy => busy += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((accepted, busy), (MAX_PENDING_RESTARTS, 1));
        let spawns = |n: &Node| {
            n.sys
                .calls()
                .into_iter()
                .filter(|c| matches!(c, Call::Spawn(_)))
                .count()
        };
        let terms = |n: &Node| {
            n.sys
                .calls()
                .into_iter()
                .filter(|c| matches!(c, Call::Kill(_, Signal::SIGTERM)))
                .count()
        };
        assert_eq!(
            (spawns(&n), terms(&n)),
            (1, 1),
            "one TERM, nothing started yet"
        );
        let mut t = 3;
        while let Some(pid) = n.owner.state.supervisor.crio.pid {
            if n.owner.state.supervisor.crio.state != ServiceState::Stopping {
                break;
            }
            n.at(t, Some(exited(pid, crate::runtime::reaper::Exit::Code(0))));
            t += 1;
            // Every TERM so far went to a process that was started before it.
            assert!(terms(&n) <= spawns(&n), "a stop before its start");
            assert!(t < 1000, "restarts never end");
        }
        assert_eq!(
            spawns(&n),
            1 + MAX_PENDING_RESTARTS as usize,
            "one start per accepted request"
        );
        assert_eq!(terms(&n), MAX_PENDING_RESTARTS as usize);
        assert_eq!(n.owner.state.supervisor.crio.restarts, MAX_PENDING_RESTARTS);
        // Free again: the next request is accepted.
        let restart = Request::Restart {
            service: ServiceName::Crio,
        };
        assert!(matches!(
            n.request(t, &admin, restart),
            Ok(Reply::Restart(_))
        ));
    }

    #[test]
    fn a_crashed_service_is_restarted_in_the_turn_that_reaps_it() {
        let mut n = node("restart", Box::new(INLINE_SPAWNER));
        let crio = n.owner.state.supervisor.crio.pid.expect("cri-o started");
        n.at(
            10,
            Some(exited(crio, crate::runtime::reaper::Exit::Signal(9))),
        );
        let again = n.owner.state.supervisor.crio.pid.expect("cri-o restarted");
        assert_ne!(again, crio);
        let spawns = n
            .sys
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Spawn(_)))
            .count();
        assert_eq!(spawns, 2);
    }

    /// (action, by, outcome, shutdown, pid, uid, command) of every entry.
    type Seen = (
        String,
        String,
        String,
        bool,
        Option<i32>,
        Option<u32>,
        Option<String>,
    );

    fn audited(n: &Node) -> Vec<Seen> {
        n.owner
            .state
            .audit
            .entries(usize::MAX)
            .into_iter()
            .map(|e| {
                (
                    e.action, e.by, e.outcome, e.shutdown, e.pid, e.uid, e.command,
                )
            })
            .collect()
    }

    fn trigger(action: &str, by: &str, outcome: &str, shutdown: bool) -> Seen {
        (
            action.to_string(),
            by.to_string(),
            outcome.to_string(),
            shutdown,
            None,
            None,
            None,
        )
    }

    #[test]
    fn every_shutdown_trigger_is_audited_with_its_origin_and_mode() {
        let device = PathBuf::from("/dev/input/event-audit-unit-test");
        let cases = [
            (
                Event::Signal(ShutdownSignal::Term),
                PowerMode::Poweroff,
                "SIGTERM".to_string(),
            ),
            (
                Event::Signal(ShutdownSignal::Pwr),
                PowerMode::Poweroff,
                "SIGPWR".to_string(),
            ),
            (
                Event::Signal(ShutdownSignal::Int),
                PowerMode::Reboot,
                "ctrl-alt-del (SIGINT)".to_string(),
            ),
            (
                Event::PowerButton {
                    device: device.clone(),
                },
                PowerMode::Poweroff,
                format!("power button ({})", device.display()),
            ),
        ];
        for (i, (event, mode, by)) in cases.into_iter().enumerate() {
            let mut n = node(&format!("audit-trigger-{i}"), Box::new(INLINE_SPAWNER));
            n.at(10, Some(event));
            assert_eq!(n.owner.state.shutdown.mode(), Some(mode), "{by}");
            let action = format!("shutdown {mode}");
            assert_eq!(
                audited(&n),
                vec![trigger(&action, &by, "started", true)],
                "{by}"
            );
            let entry = &n.owner.state.audit.entries(1)[0];
            assert_eq!(entry.at_ms, n.now(10).epoch_ms, "{by}");
            // A second trigger while the first runs changes nothing and is
            // audited as such; it does not end the boot.
            n.at(20, Some(Event::Signal(ShutdownSignal::Term)));
            assert_eq!(n.owner.state.shutdown.mode(), Some(mode), "{by}");
            assert_eq!(
                audited(&n)[1],
                trigger("shutdown poweroff", "SIGTERM", "already-in-progress", false),
                "{by}"
            );
        }
        // The power button's kernel log line names the device.
        let lines = crate::kmsgread::MEMORY.messages();
        let wanted = format!(
            "shutdown (poweroff) requested by power button ({})",
            device.display()
        );
        assert!(
            lines.iter().any(|l| l.ends_with(&wanted)),
            "no '{wanted}' in {lines:#?}"
        );
        let again = format!(
            "requested by power button ({}): one is already in progress",
            device.display()
        );
        assert!(
            !lines.iter().any(|l| l.ends_with(&again)),
            "the button was pressed once"
        );
    }

    #[test]
    fn a_signal_is_audited_with_its_sender() {
        use crate::sys::sender::SignalSender;
        // The sender is this test process: its /proc/PID/comm is real.
        let me = std::process::id();
        let comm = crate::runtime::server::read_comm(me as i32).unwrap();
        let mut n = node("audit-sender", Box::new(INLINE_SPAWNER));
        let kill = SignalSender {
            pid: me,
            uid: 0,
            kernel: false,
        };
        n.sys.signal_from(libc::SIGTERM, kill);
        n.at(10, Some(Event::Signal(ShutdownSignal::Term)));
        // Ctrl-Alt-Del: the kernel sends SIGINT (si_code SI_KERNEL, pid 0).
        let kernel = SignalSender {
            pid: 0,
            uid: 0,
            kernel: true,
        };
        n.sys.signal_from(libc::SIGINT, kernel);
        n.at(20, Some(Event::Signal(ShutdownSignal::Int)));
        // A sandbox's host: outside init's PID namespace, pid 0 but kill(2).
        let outside = SignalSender {
            pid: 0,
            uid: 1000,
            kernel: false,
        };
        n.sys.signal_from(libc::SIGPWR, outside);
        n.at(30, Some(Event::Signal(ShutdownSignal::Pwr)));
        // Taken once: a later SIGTERM without a recorded sender is bare.
        n.at(40, Some(Event::Signal(ShutdownSignal::Term)));
        let seen = |by: &str, outcome: &str, shutdown, pid, uid, command: Option<&str>| -> Seen {
            let action = if by.starts_with("ctrl") {
                "shutdown reboot"
            } else {
                "shutdown poweroff"
            };
            (
                action.to_string(),
                by.to_string(),
                outcome.to_string(),
                shutdown,
                pid,
                uid,
                command.map(str::to_string),
            )
        };
        assert_eq!(
            audited(&n),
            vec![
                seen(
                    "SIGTERM",
                    "started",
                    true,
                    Some(me as i32),
                    Some(0),
                    Some(&comm)
                ),
                seen(
                    "ctrl-alt-del (SIGINT)",
                    "already-in-progress",
                    false,
                    None,
                    None,
                    None
                ),
                seen(
                    "SIGPWR",
                    "already-in-progress",
                    false,
                    None,
                    Some(1000),
                    None
                ),
                seen("SIGTERM", "already-in-progress", false, None, None, None),
            ]
        );
        // The kernel log names each sender.
        let lines = crate::kmsgread::MEMORY.messages();
        for wanted in [
            format!("shutdown (poweroff) requested by SIGTERM from pid {me} uid 0 ({comm})"),
            "shutdown (reboot) requested by ctrl-alt-del (SIGINT) from the kernel: one is already in progress".to_string(),
            "shutdown (poweroff) requested by SIGPWR from outside init's PID namespace (uid 1000): one is already in progress".to_string(),
        ] {
            assert!(
                lines.iter().any(|l| l.ends_with(&wanted)),
                "no '{wanted}' in {lines:#?}"
            );
        }
        // status names the first requester, with its pid.
        let requested_by = n
            .owner
            .state
            .shutdown
            .status()
            .map(|s| s.requested_by.clone());
        assert_eq!(
            requested_by.as_deref(),
            Some(format!("SIGTERM from pid {me} uid 0 ({comm})").as_str())
        );
    }

    #[test]
    fn a_trigger_during_a_shutdown_is_in_the_kernel_log_too() {
        let device = PathBuf::from("/dev/input/event-audit-unit-test-again");
        let mut n = node("audit-again", Box::new(INLINE_SPAWNER));
        n.at(10, Some(Event::Signal(ShutdownSignal::Int)));
        n.at(
            20,
            Some(Event::PowerButton {
                device: device.clone(),
            }),
        );
        let by = format!("power button ({})", device.display());
        assert_eq!(
            audited(&n),
            vec![
                trigger("shutdown reboot", "ctrl-alt-del (SIGINT)", "started", true),
                trigger("shutdown poweroff", &by, "already-in-progress", false),
            ]
        );
        // The reboot asked first stands.
        assert_eq!(n.owner.state.shutdown.mode(), Some(PowerMode::Reboot));
        let wanted = format!("shutdown (poweroff) requested by {by}: one is already in progress");
        let lines = crate::kmsgread::MEMORY.messages();
        assert!(
            lines.iter().any(|l| l.ends_with(&wanted)),
            "no '{wanted}' in {lines:#?}"
        );
    }

    #[test]
    fn legacy_bytes_are_audited_with_the_peer_through_the_owner() {
        let mut n = node("audit-legacy", Box::new(INLINE_SPAWNER));
        let (kubelet, _reg) = n.connect(1, 31_001);
        let legacy = |peer: &Peer, command| {
            Some(Event::Client(ClientEvent::Legacy {
                peer: peer.clone(),
                command,
            }))
        };
        n.at(2, legacy(&kubelet, LegacyCommand::RestartKubelet));
        n.at(3, legacy(&kubelet, LegacyCommand::RestartCrio));
        n.at(4, legacy(&kubelet, LegacyCommand::SoftShutdown));
        n.at(5, legacy(&kubelet, LegacyCommand::ContinueShutdown));
        let by = |byte: u8| format!("socket pid 31001 uid 0 (test) (legacy 0x0{byte})");
        let peer = |action: &str, byte: u8, outcome: &str, shutdown: bool| -> Seen {
            (
                action.to_string(),
                by(byte),
                outcome.to_string(),
                shutdown,
                Some(31_001),
                Some(0),
                Some("test".to_string()),
            )
        };
        assert_eq!(
            audited(&n),
            vec![
                peer("restart kubelet", 3, "ok", false),
                peer("restart crio", 4, "ok", false),
                peer("shutdown poweroff", 1, "started", true),
                peer("continue-shutdown", 2, "ok", false),
            ]
        );
    }
}
