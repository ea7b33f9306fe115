//! The runtime: after the boot path, one single-threaded tokio event loop
//! that supervises cri-o and the kubelet, reaps every child, serves the
//! system socket, captures service output and runs the shutdown.
//!
//! Flow: signals are registered before any child exists; the system socket
//! is bound before any service starts; /init is deleted; cri-o starts; its
//! socket appearing (inotify, no polling) lets the kubelet start. From then
//! on the loop reacts to SIGCHLD (reap, restart), SIGTERM/SIGPWR/SIGINT
//! (shutdown), inotify (cri-o socket, kubelet config, new input devices),
//! the supervisor's timer (back-off ends, KILL deadlines) and wake-ups from
//! socket handlers.
//!
//! One inotify instance serves everything and is never closed: closing one
//! makes the kernel wait for an RCU grace period (~19 ms).

pub mod logcapture;
pub mod logind;
pub mod power_button;
pub mod reaper;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod supervisor;

use std::cell::RefCell;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use kios_protocol::{PowerMode, ServiceName};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;

use crate::boot::milestones::Milestones;
use crate::runtime::logcapture::{LineSplitter, LogHub, LogWriter, MAX_LINE_BYTES};
use crate::runtime::state::{kill_signaller, NodeInfo, Paths, Shared, State};
use crate::runtime::supervisor::{BackoffPolicy, Now, StopReason, Supervisor};
use crate::sys::process::InotifyFd;
use power_button::OpenDevices;

/// What the runtime needs from main.
pub struct RuntimeConfig {
    pub paths: Paths,
    pub node: NodeInfo,
    /// Deleted once the socket is open (the image's /init), like the original.
    pub delete_after_start: Option<PathBuf>,
    /// Watch /dev/input for the power button.
    pub power_button: bool,
    pub policy: BackoffPolicy,
}

/// Runs the node until it powers off or reboots. Never returns.
pub fn run(config: RuntimeConfig, milestones: Milestones) -> ! {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        // Init has a handful of descriptors; the default (1024 events per
        // poll) costs 12 KiB of memory for nothing.
        .max_io_events_per_tick(64)
        .build();
    match runtime {
        Ok(runtime) => {
            let local = tokio::task::LocalSet::new();
            // A panic in the loop itself (a bug) must not end PID 1.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                local.block_on(&runtime, main_loop(config, milestones))
            }));
            if ran.is_err() {
                crate::kerr!("bug: the event loop panicked");
            }
        }
        Err(e) => crate::kerr!("cannot start the event loop: {e}"),
    }
    // Only reached if the loop could not run: stay alive (PID 1 must not
    // exit) and keep reaping, so at least zombies do not pile up.
    crate::kerr!("no event loop: services are not supervised; only reaping");
    loop {
        let _ = nix::sys::wait::waitpid(None, None);
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
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

struct Runtime {
    shared: Shared,
    inotify: Option<AsyncFd<InotifyFd>>,
    watches: Watches,
    reaped: Rc<Notify>,
    shutdown_started: bool,
    config_restart_done: bool,
    crio_socket_seen_once: bool,
    kubelet_started_once: bool,
    crio_started_once: bool,
    devices: OpenDevices,
    power_button: bool,
}

fn signal_or_log(kind: SignalKind, name: &str) -> Option<Signal> {
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

async fn main_loop(config: RuntimeConfig, milestones: Milestones) {
    // Services inherit the umask (posix_spawn has no umask attribute).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // Signals first: no child exists yet, so no exit can be missed.
    let mut sigchld = signal_or_log(SignalKind::child(), "SIGCHLD");
    let mut sigterm = signal_or_log(SignalKind::terminate(), "SIGTERM");
    let mut sigint = signal_or_log(SignalKind::interrupt(), "SIGINT");
    let mut sigpwr = signal_or_log(SignalKind::from_raw(libc::SIGPWR), "SIGPWR");

    let writer = match LogWriter::start(config.paths.log_dir.clone()) {
        Ok(writer) => Some(writer),
        Err(e) => {
            crate::kerr!("cannot start the log writer: {e}; service output is kept in memory only");
            None
        }
    };
    let now = Now::current();
    let state = State::new(
        config.node,
        milestones,
        Supervisor::new(config.policy, now),
        LogHub::new(writer),
        config.paths.clone(),
        kill_signaller(),
    );
    let shared: Shared = Rc::new(RefCell::new(state));

    // The socket before any service: the kubelet connects at start.
    match crate::runtime::server::bind(&config.paths.socket) {
        Ok(listener) => {
            tokio::task::spawn_local(crate::runtime::server::serve(listener, shared.clone()));
            shared.borrow_mut().milestone("socket");
        }
        Err(e) => {
            crate::kerr!("system socket: {e}; graceful shutdown through the kubelet is impossible")
        }
    }
    // The system bus too: the upstream kubelet asks logind at start.
    start_bus(&shared, &config.paths);
    if let Some(path) = &config.delete_after_start {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => crate::kwarn!("cannot delete {}: {e}", path.display()),
        }
    }

    let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(std::io::Error::from)
        .and_then(crate::sys::process::async_inotify)
    {
        Ok(fd) => Some(fd),
        Err(e) => {
            crate::kerr!("inotify: {e}; the kubelet cannot wait for cri-o's socket");
            None
        }
    };
    let mut rt = Runtime {
        shared: shared.clone(),
        inotify,
        watches: Watches::default(),
        reaped: Rc::new(Notify::new()),
        shutdown_started: false,
        config_restart_done: false,
        crio_socket_seen_once: false,
        kubelet_started_once: false,
        crio_started_once: false,
        devices: OpenDevices::default(),
        power_button: config.power_button,
    };
    rt.watch_crio_dir();
    rt.watch_etc_kubernetes();
    if rt.power_button {
        rt.watch_input();
    }

    let wake = shared.borrow().wake.clone();
    let no_sigchld = sigchld.is_none();
    rt.tick();
    loop {
        let deadline = shared.borrow().supervisor.next_deadline();
        tokio::select! {
            _ = recv(&mut sigchld) => rt.reap(),
            _ = recv(&mut sigterm) => rt.signal_shutdown(PowerMode::Poweroff, "SIGTERM"),
            _ = recv(&mut sigpwr) => rt.signal_shutdown(PowerMode::Poweroff, "SIGPWR"),
            _ = recv(&mut sigint) => rt.signal_shutdown(PowerMode::Reboot, "ctrl-alt-del (SIGINT)"),
            events = read_inotify(rt.inotify.as_ref()) => match events {
                Some(events) => rt.on_inotify(events),
                // A persistent read error must not spin the loop.
                None => rt.inotify = None,
            },
            _ = fallback_reap_tick(no_sigchld) => rt.reap(),
            // Without inotify, look for cri-o's socket now and then.
            _ = fallback_watch_tick(rt.inotify.is_none()) => {}
            _ = sleep_until_opt(deadline) => {}
            _ = wake.notified() => {}
        }
        rt.tick();
    }
}

/// Serves logind on the system bus socket; its events go into the state.
fn start_bus(shared: &Shared, paths: &crate::runtime::state::Paths) {
    let config = crate::runtime::logind::BusConfig {
        socket: paths.bus_socket.clone(),
        kubelet_config: paths.etc_kubernetes.join("config.yaml"),
    };
    match crate::runtime::logind::start(config, Rc::new(crate::sys::LinuxSys)) {
        Ok((handle, mut events)) => {
            shared.borrow_mut().bus = Some(handle);
            let shared = shared.clone();
            tokio::task::spawn_local(async move {
                while let Some(event) = events.recv().await {
                    shared
                        .borrow_mut()
                        .bus_event(event, Now::current().epoch_ms);
                }
            });
        }
        Err(e) => crate::kerr!(
            "system bus: {e}; the upstream kubelet's graceful node shutdown is impossible"
        ),
    }
}

async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending::<()>().await,
    }
}

/// Without a SIGCHLD handler (its registration failed), reap once a second
/// so zombies and crashed services are still noticed.
async fn fallback_reap_tick(needed: bool) {
    if needed {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// Without inotify (it failed), a wake-up every 100 ms so the tick sees
/// cri-o's socket appear.
async fn fallback_watch_tick(needed: bool) {
    if needed {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// Waits for and reads a batch of inotify events; `None` when reading
/// fails (then inotify is given up, with a kernel log line).
async fn read_inotify(fd: Option<&AsyncFd<InotifyFd>>) -> Option<Vec<InotifyEvent>> {
    let Some(fd) = fd else {
        return std::future::pending().await;
    };
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

impl Runtime {
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
        let socket = self.shared.borrow().paths.crio_socket.clone();
        let Some(dir) = socket.parent() else {
            return;
        };
        if let Err(e) = std::fs::create_dir_all(dir) {
            crate::kwarn!("cannot create {}: {e}", dir.display());
        }
        self.watches.crio_dir =
            self.add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO);
    }

    fn watch_etc_kubernetes(&mut self) {
        let dir = self.shared.borrow().paths.etc_kubernetes.clone();
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
            power_button::scan(&self.shared, &self.devices, dir);
        } else if self.watches.dev.is_none() {
            self.watches.dev = self.add_watch(Path::new("/dev"), AddWatchFlags::IN_CREATE);
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
                let shutting_down = self.shared.borrow().shutdown.is_active();
                if self.watches.crio_dir.is_none() && !shutting_down {
                    self.watch_crio_dir();
                }
                continue;
            }
            if wd == self.watches.crio_dir {
                let crio_socket = self.shared.borrow().paths.crio_socket.clone();
                if crio_socket.file_name().and_then(|n| n.to_str()) == Some(name) {
                    self.crio_socket_appeared();
                }
            } else if wd == self.watches.etc_kubernetes {
                if name == "kubelet.conf" || name == "bootstrap-kubelet.conf" {
                    self.kubelet_config_changed();
                }
            } else if wd == self.watches.etc {
                let dir = self.shared.borrow().paths.etc_kubernetes.clone();
                if dir.file_name().and_then(|n| n.to_str()) == Some(name) {
                    self.watch_etc_kubernetes();
                    // Files may have been written before the watch existed.
                    self.kubelet_config_changed();
                }
            } else if wd == self.watches.input {
                if power_button::is_event_device(name) {
                    let path = Path::new(power_button::INPUT_DIR).join(name);
                    power_button::open_device(&self.shared, &self.devices, &path);
                }
            } else if wd == self.watches.dev && name == "input" && self.watches.input.is_none() {
                self.watch_input();
            }
        }
    }

    fn recheck_crio_socket(&mut self) {
        let exists = self.shared.borrow().paths.crio_socket.exists();
        if exists {
            self.crio_socket_appeared();
        }
    }

    fn crio_socket_appeared(&mut self) {
        let mut state = self.shared.borrow_mut();
        if state.supervisor.crio.pid.is_none() || state.supervisor.crio_ready {
            return;
        }
        state.supervisor.crio_socket_ready(Now::current());
        if !self.crio_socket_seen_once {
            self.crio_socket_seen_once = true;
            state.milestone("crio-socket");
        }
        state.service_changed(ServiceName::Crio);
    }

    /// kubelet.conf or bootstrap-kubelet.conf appeared: restart the kubelet
    /// once if its flags would change.
    fn kubelet_config_changed(&mut self) {
        if self.config_restart_done {
            return;
        }
        let mut state = self.shared.borrow_mut();
        if state.supervisor.kubelet.pid.is_none() {
            // Not running: it picks the file up when it starts.
            return;
        }
        let argv = crate::boot::argv::kubelet_argv(&state.paths.etc_kubernetes);
        if argv == state.supervisor.kubelet.argv {
            return;
        }
        self.config_restart_done = true;
        crate::kinfo!(
            "kubelet configuration appeared in {}: restarting the kubelet once with its new flags",
            state.paths.etc_kubernetes.display()
        );
        if let Err(e) = state.restart(
            ServiceName::Kubelet,
            StopReason::ConfigChanged,
            Now::current(),
        ) {
            crate::kwarn!("kubelet config restart: {}", e.message);
        }
    }

    fn signal_shutdown(&mut self, mode: PowerMode, by: &str) {
        self.shared
            .borrow_mut()
            .request_shutdown(mode, false, by, Now::current());
    }

    /// Drains every exited child, then restarts what is due at once.
    fn reap(&mut self) {
        let mut reaped = Vec::new();
        let result = reaper::reap_all(&mut reaped);
        let now = Now::current();
        let mut outcomes = Vec::new();
        {
            let mut state = self.shared.borrow_mut();
            for r in &reaped {
                if let Some(outcome) = state.supervisor.exited(r.pid, r.exit, now) {
                    outcomes.push((r, outcome));
                }
            }
        }
        // Restart first, log after: a crashed kubelet is back within the budget.
        self.tick();
        let mut state = self.shared.borrow_mut();
        for (r, outcome) in outcomes {
            let name = outcome.service;
            let service = state.supervisor.service(name);
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
            state.service_changed(name);
        }
        if let Err(errno) = result {
            crate::kerr!("waitpid: {errno}");
        }
        self.reaped.notify_one();
    }

    /// Acts on whatever is due: KILLs, starts, the shutdown driver.
    fn tick(&mut self) {
        let now = Now::current();
        let (kills, due) = {
            let mut state = self.shared.borrow_mut();
            (
                state.supervisor.overdue_kills(now),
                state.supervisor.due(now),
            )
        };
        for pid in kills {
            let signaller = self.shared.borrow().signaller.clone();
            crate::kwarn!("pid {pid} did not stop within its time; sending SIGKILL");
            if let Err(e) = signaller(pid, nix::sys::signal::Signal::SIGKILL) {
                crate::kwarn!("cannot SIGKILL pid {pid}: {e}");
            }
        }
        for name in due {
            self.start(name);
        }
        let start_shutdown = !self.shutdown_started && self.shared.borrow().shutdown.is_active();
        if start_shutdown {
            self.shutdown_started = true;
            let mode = self.shared.borrow().shutdown.mode();
            let driver = tokio::task::spawn_local(crate::runtime::shutdown::drive(
                self.shared.clone(),
                self.reaped.clone(),
            ));
            // The driver never returns; if it ends, it panicked (a bug).
            // The node must still go down, not hang half stopped.
            tokio::task::spawn_local(async move {
                let failure = driver.await;
                crate::kerr!("bug: the shutdown driver failed ({failure:?}); ending the node now");
                crate::boot::teardown::sync_all();
                crate::sys::final_reboot(match mode {
                    Some(PowerMode::Reboot) => crate::sys::PowerMode::Restart,
                    _ => crate::sys::PowerMode::PowerOff,
                })
            });
        }
        // Kubelet states may have changed to `waiting` in due().
        let waiting =
            self.shared.borrow().supervisor.kubelet.state == kios_protocol::ServiceState::Waiting;
        if waiting {
            // Cheap, and covers a socket created before the watch existed.
            if self.shared.borrow().supervisor.crio.pid.is_some() {
                self.recheck_crio_socket();
                let due = self.shared.borrow_mut().supervisor.due(Now::current());
                for name in due {
                    self.start(name);
                }
            }
        }
    }

    fn start(&mut self, name: ServiceName) {
        let paths = self.shared.borrow().paths.clone();
        let argv = match name {
            ServiceName::Crio => crate::boot::argv::crio_argv(),
            ServiceName::Kubelet => crate::boot::argv::kubelet_argv(&paths.etc_kubernetes),
        };
        if name == ServiceName::Crio {
            // cri-o is not running: a socket file left is stale, and its
            // removal makes the next one a fresh inotify event.
            let _ = std::fs::remove_file(&paths.crio_socket);
        }
        match spawn_with_pipe(&argv) {
            Ok((pid, output)) => {
                // After exec succeeded: spawn returns once the child exec'd.
                let now = Now::current();
                let mut state = self.shared.borrow_mut();
                state.supervisor.started(name, pid, argv, now);
                let first = match name {
                    ServiceName::Crio => !std::mem::replace(&mut self.crio_started_once, true),
                    ServiceName::Kubelet => {
                        !std::mem::replace(&mut self.kubelet_started_once, true)
                    }
                };
                if first {
                    state.milestone(match name {
                        ServiceName::Crio => "crio-start",
                        ServiceName::Kubelet => "kubelet-start",
                    });
                }
                state.service_changed(name);
                drop(state);
                crate::kinfo!("started {name} (pid {pid})");
                if let Some(output) = output {
                    tokio::task::spawn_local(pump_output(self.shared.clone(), name, output));
                }
            }
            Err(e) => {
                let outcome = self
                    .shared
                    .borrow_mut()
                    .supervisor
                    .start_failed(name, Now::current());
                crate::kerr!(
                    "cannot start {name} ({}): {e}; retry in {} ms",
                    argv.first().map(String::as_str).unwrap_or("?"),
                    outcome.restart_in.unwrap_or_default().as_millis()
                );
                self.shared.borrow_mut().service_changed(name);
            }
        }
    }
}

/// Starts `argv` with its output on a fresh pipe; returns the pid and the
/// pipe's read end (None if it could not be watched: output is then lost,
/// the service still runs).
fn spawn_with_pipe(argv: &[String]) -> std::io::Result<(u32, Option<AsyncFd<File>>)> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    set_nonblocking(&read_end)?;
    let pid = crate::sys::process::spawn_service(argv, write_end)?;
    let reader = match crate::sys::process::async_file(File::from(read_end)) {
        Ok(fd) => Some(fd),
        Err(e) => {
            crate::kwarn!("cannot watch the output pipe of pid {pid}: {e}");
            None
        }
    };
    Ok((pid, reader))
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// Reads a service's output until every writer closed the pipe.
async fn pump_output(shared: Shared, name: ServiceName, fd: AsyncFd<File>) {
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
            let now_ms = Now::current().epoch_ms;
            let mut state = shared.borrow_mut();
            for line in lines.drain(..) {
                state.log_line(name, line, now_ms);
            }
        }
    }
    if let Some(rest) = splitter.finish() {
        shared
            .borrow_mut()
            .log_line(name, rest, Now::current().epoch_ms);
    }
}

/// The node facts `status` shows, from the boot report and what
/// `datapart=` asked for.
pub fn node_info(
    report: &crate::boot::BootReport,
    wanted: &crate::boot::datapart::DatapartSpec,
) -> NodeInfo {
    use crate::boot::datapart::DatapartSpec;
    use crate::boot::DatapartStatus as Boot;
    let wanted_text = match wanted {
        DatapartSpec::Auto => "auto".to_string(),
        DatapartSpec::None => "none".to_string(),
        DatapartSpec::Device(path) => path.display().to_string(),
    };
    let datapart = match &report.datapart {
        Boot::Disabled => None,
        Boot::Mounted { device } => Some(kios_protocol::DatapartStatus {
            device: Some(device.clone()),
            mounted: true,
            wanted: wanted_text,
            problem: None,
        }),
        Boot::Missing { wanted, reason } => Some(kios_protocol::DatapartStatus {
            device: None,
            mounted: false,
            wanted: wanted.clone(),
            problem: Some(reason.clone()),
        }),
    };
    let kernel = nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.release().to_str().map(str::to_string))
        .unwrap_or_default();
    NodeInfo {
        kernel,
        datapart,
        boot_warnings: report.warnings.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::datapart::DatapartSpec;
    use crate::boot::{BootReport, DatapartStatus};

    fn report(datapart: DatapartStatus) -> BootReport {
        BootReport {
            datapart,
            hostname: "node-a".into(),
            warnings: vec!["a warning".into()],
        }
    }

    #[test]
    fn node_info_shows_the_data_partition_as_status_does() {
        let none = node_info(&report(DatapartStatus::Disabled), &DatapartSpec::None);
        assert_eq!(none.datapart, None);
        assert_eq!(none.boot_warnings, vec!["a warning".to_string()]);
        assert!(!none.kernel.is_empty());

        let mounted = node_info(
            &report(DatapartStatus::Mounted {
                device: "/dev/vda1".into(),
            }),
            &DatapartSpec::Auto,
        );
        let d = mounted.datapart.unwrap();
        assert_eq!(
            (d.device.as_deref(), d.mounted, d.wanted.as_str()),
            (Some("/dev/vda1"), true, "auto")
        );
        assert_eq!(d.problem, None);

        let missing = node_info(
            &report(DatapartStatus::Missing {
                wanted: "/dev/sdz1".into(),
                reason: "timed out".into(),
            }),
            &DatapartSpec::Device("/dev/sdz1".into()),
        );
        let d = missing.datapart.unwrap();
        assert_eq!((d.device, d.mounted), (None, false));
        assert_eq!(d.wanted, "/dev/sdz1");
        assert_eq!(d.problem.as_deref(), Some("timed out"));
    }
}
