//! The runtime: after the boot path, one single-threaded tokio event loop
//! that supervises cri-o and the kubelet, reaps every child, serves the
//! system socket, captures service output and runs the shutdown.
//!
//! One task, the owner (`owner.rs`), owns the [`State`]. Every other task is
//! an event source (`event.rs`): the shutdown signals and the reaper
//! (`sources.rs`, one task), the inotify reader, the service output pumps, the power
//! button readers (`power_button.rs`), the socket's accept loop and client
//! tasks (`server/`), the wall-clock step watch (`sources.rs`, on
//! `sys::clock`'s timerfd), and the shutdown's blocking steps. They send events
//! over one bounded queue; requests get their answers on oneshots. The
//! owner's own timer covers back-off ends, KILL deadlines and the
//! shutdown's bounds.
//!
//! Flow: signals are registered before any child exists; the system socket
//! is bound before any service starts; /init is deleted; cri-o starts; its
//! socket appearing (inotify, no polling) lets the kubelet start.
//!
//! One inotify instance serves everything and is never closed: closing one
//! makes the kernel wait for an RCU grace period (~19 ms).

pub mod audit;
pub mod blocking;
pub mod clock;
pub mod event;
pub mod logcapture;
pub mod logind;
pub mod owner;
pub mod power_button;
pub mod reaper;
pub mod server;
pub mod shutdown;
pub mod sources;
pub mod state;
pub mod supervisor;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use nix::sys::inotify::{InitFlags, Inotify};
use tokio::sync::Notify;

use crate::boot::milestones::Milestones;
use crate::runtime::event::{Event, Events, Queue};
use crate::runtime::logcapture::{LogHub, LogWriter};
use crate::runtime::owner::Owner;
use crate::runtime::sources::LoopSpawner;
use crate::runtime::state::{NodeInfo, Paths, State};
use crate::runtime::supervisor::{BackoffPolicy, Now, Supervisor};
use crate::sys::Sys;

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
pub fn run(config: RuntimeConfig, milestones: Milestones, sys: Arc<dyn Sys>) -> ! {
    // Before any child or thread exists: only this thread gets the priority.
    if let Err(e) = crate::sys::process::raise_loop_priority() {
        crate::kwarn!(
            "cannot give the event loop nice {}: {e}; it runs at nice 0",
            crate::sys::process::LOOP_NICE
        );
    }
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
                local.block_on(&runtime, main_loop(config, milestones, sys))
            }));
            match ran {
                // reboot(2) returned: it failed; like the original, exit.
                Ok(()) => std::process::exit(1),
                Err(_) => crate::kerr!("bug: the event loop panicked"),
            }
        }
        Err(e) => crate::kerr!("cannot start the event loop: {e}"),
    }
    // A shutdown was under way: the node must still go down, not hang half
    // stopped.
    if let Some(mode) = owner::shutdown_under_way() {
        crate::kerr!("ending the node now ({mode}) after the failure");
        crate::sys::final_reboot(mode.into());
    }
    // Only reached if the loop could not run: stay alive (PID 1 must not
    // exit) and keep reaping, so at least zombies do not pile up.
    crate::kerr!("no event loop: services are not supervised; only reaping");
    loop {
        let _ = nix::sys::wait::waitpid(None, None);
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

async fn main_loop(config: RuntimeConfig, milestones: Milestones, sys: Arc<dyn Sys>) {
    // Services inherit the umask (posix_spawn has no umask attribute).
    sys.umask(0o022);
    // Signals first: no child exists yet, so no exit can be missed. The
    // senders' recorder goes before tokio's handlers (see sys::sender).
    if let Err(e) = crate::sys::sender::watch() {
        crate::kwarn!("cannot record who sends shutdown signals: {e}");
    }
    let mut signals = sources::Signals::register();
    let reaping = sources::Reaping::new(signals.chld.take());
    let (events, rx) = Events::channel();
    tokio::task::spawn_local(sources::signals(signals, events.clone()));

    let writer = match LogWriter::start(config.paths.log_dir.clone()) {
        Ok(writer) => Some(writer),
        Err(e) => {
            crate::kerr!("cannot start the log writer: {e}; service output is kept in memory only");
            None
        }
    };
    let mut state = State::new(
        config.node,
        milestones,
        Supervisor::new(config.policy, Now::current()),
        LogHub::new(writer),
        config.paths.clone(),
        sys.clone(),
    );
    // The audit trail goes to the data partition's /var/log, like service logs.
    match audit::AuditLog::start(config.paths.log_dir.clone(), state.audit.boot_ms()) {
        Ok(log) => state.audit = log,
        Err(e) => {
            crate::kerr!(
                "cannot start the audit writer: {e}; audit entries are kept in memory only"
            )
        }
    }

    // The socket before any service: the kubelet connects at start.
    let stop_serving = Rc::new(Notify::new());
    match server::bind(&config.paths.socket, &*sys) {
        Ok(listener) => {
            tokio::task::spawn_local(server::serve(
                listener,
                events.clone(),
                stop_serving.clone(),
            ));
            state.milestone("socket");
        }
        Err(e) => {
            crate::kerr!("system socket: {e}; graceful shutdown through the kubelet is impossible")
        }
    }
    // The system bus too: the upstream kubelet asks logind at start.
    start_bus(&mut state, &events);
    if let Some(path) = &config.delete_after_start {
        match sys.remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => crate::kwarn!("cannot delete {}: {e}", path.display()),
        }
    }

    let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(std::io::Error::from)
        .and_then(crate::sys::process::async_inotify)
    {
        Ok(fd) => Some(Rc::new(fd)),
        Err(e) => {
            crate::kerr!("inotify: {e}; the kubelet cannot wait for cri-o's socket");
            None
        }
    };
    if let Some(fd) = &inotify {
        tokio::task::spawn_local(sources::inotify_reader(fd.clone(), events.clone()));
    }
    // Steps of the wall clock are only reported: the node works without.
    match crate::sys::clock::ClockWatch::new().and_then(crate::sys::clock::async_clock_watch) {
        Ok(watch) => {
            tokio::task::spawn_local(sources::clock_steps(watch, events.clone()));
        }
        Err(e) => crate::kwarn!(
            "cannot watch the wall clock (timerfd): {e}; its steps will not be reported"
        ),
    }
    let spawner = Box::new(LoopSpawner { events });
    let mut owner = Owner::new(state, spawner, inotify, config.power_button, stop_serving);
    owner.start_watching();
    run_owner(&mut owner, rx, Some(reaping)).await;
}

/// Binds the system bus and starts its component; its events go into the
/// owner's queue like every other source's.
fn start_bus(state: &mut State, events: &Events) {
    let config = crate::runtime::logind::BusConfig {
        socket: state.paths.bus_socket.clone(),
        kubelet_config: state.paths.etc_kubernetes.join("config.yaml"),
    };
    match crate::runtime::logind::start(config, state.sys.clone()) {
        Ok((handle, mut bus_events)) => {
            state.bus = Some(handle);
            let events = events.clone();
            tokio::task::spawn_local(async move {
                while let Some(event) = bus_events.recv().await {
                    if !events.send(Event::Bus(event)).await {
                        return;
                    }
                }
            });
        }
        Err(e) => crate::kerr!(
            "system bus: {e}; the upstream kubelet's graceful node shutdown is impossible"
        ),
    }
}

/// The owner's loop: one event (or wake-up) at a time, then whatever is due,
/// until reboot(2) was called.
pub async fn run_owner(owner: &mut Owner, mut rx: Queue, mut reaping: Option<sources::Reaping>) {
    owner.after(Now::current());
    while !owner.ended() {
        // A child exited: reaped (and a service restarted) before the next
        // event, even before tokio's signal stream has seen the SIGCHLD.
        if reaping.as_ref().is_some_and(sources::Reaping::arrived) {
            reap(owner, &mut reaping);
        } else if owner.wants_turn() {
            tokio::task::yield_now().await;
            owner.turn_passed();
        } else {
            let wake = owner.next_wake(std::time::Instant::now());
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => owner.handle(event, Now::current()),
                    // Every source is gone (only in tests): nothing more comes.
                    None => return,
                },
                _ = reap_due(&mut reaping) => reap(owner, &mut reaping),
                _ = sleep_until_opt(wake) => {}
            }
        }
        owner.after(Now::current());
    }
}

/// Drains the exited children and hands what was found to the owner.
fn reap(owner: &mut Owner, reaping: &mut Option<sources::Reaping>) {
    if let Some(event) = reaping.as_mut().and_then(sources::Reaping::drain) {
        owner.handle(event, Now::current());
    }
}

async fn reap_due(reaping: &mut Option<sources::Reaping>) {
    match reaping {
        Some(r) => r.due().await,
        None => std::future::pending::<()>().await,
    }
}

async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending::<()>().await,
    }
}

/// The node facts `status` shows, from the boot report (and what
/// `datapart=` asked for, in the configuration it carries).
pub fn node_info(report: &crate::boot::BootReport) -> NodeInfo {
    use crate::boot::datapart::DatapartSpec;
    use crate::boot::DatapartStatus as Boot;
    let wanted_text = match &report.config.datapart {
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
            read_only: false,
        }),
        Boot::ReadOnly { device, reason } => Some(kios_protocol::DatapartStatus {
            device: Some(device.clone()),
            mounted: true,
            wanted: wanted_text,
            problem: Some(reason.clone()),
            read_only: true,
        }),
        Boot::Missing { wanted, reason } => Some(kios_protocol::DatapartStatus {
            device: None,
            mounted: false,
            wanted: wanted.clone(),
            problem: Some(reason.clone()),
            read_only: false,
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
        release: report.release.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::datapart::DatapartSpec;
    use crate::boot::{BootConfig, BootReport, DatapartStatus};

    fn report(datapart: DatapartStatus, wanted: DatapartSpec) -> BootReport {
        BootReport {
            datapart,
            hostname: "node-a".into(),
            warnings: vec!["a warning".into()],
            release: Default::default(),
            config: BootConfig {
                datapart: wanted,
                ..BootConfig::default()
            },
        }
    }

    #[test]
    fn node_info_shows_the_data_partition_as_status_does() {
        let none = node_info(&report(DatapartStatus::Disabled, DatapartSpec::None));
        assert_eq!(none.datapart, None);
        assert_eq!(none.boot_warnings, vec!["a warning".to_string()]);
        assert!(!none.kernel.is_empty());

        let mounted = node_info(&report(
            DatapartStatus::Mounted {
                device: "/dev/vda1".into(),
            },
            DatapartSpec::Auto,
        ));
        let d = mounted.datapart.unwrap();
        assert_eq!(
            (d.device.as_deref(), d.mounted, d.wanted.as_str()),
            (Some("/dev/vda1"), true, "auto")
        );
        assert_eq!(d.problem, None);

        let missing = node_info(&report(
            DatapartStatus::Missing {
                wanted: "/dev/sdz1".into(),
                reason: "timed out".into(),
            },
            DatapartSpec::Device("/dev/sdz1".into()),
        ));
        let d = missing.datapart.unwrap();
        assert_eq!((d.device, d.mounted), (None, false));
        assert_eq!(d.wanted, "/dev/sdz1");
        assert_eq!(d.problem.as_deref(), Some("timed out"));
    }
}
