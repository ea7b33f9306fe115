//! Everything the runtime knows, in one place: node facts, the boot
//! timeline, the supervisor, the shutdown, the connected clients and the
//! service output. One task owns it (the runtime's owner, `owner.rs`);
//! everything else reaches it with events, so there is one writer and no
//! shared borrow to get wrong.
//!
//! The methods here are the state changes that must also tell someone
//! (watchers get events).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kios_protocol::{
    BootReply, ClientInfo, DatapartStatus, ErrorBody, ErrorCode, Event, InhibitorInfo,
    LogindChange, LogindEvent, NodeStatus, PowerMode, RestartReply, ServiceName, StatusReply,
};
use nix::sys::signal::Signal;

use crate::boot::milestones::Milestones;
use crate::runtime::audit::AuditLog;
use crate::runtime::clock::ClockSteps;
use crate::runtime::logcapture::LogHub;
use crate::runtime::logind::bus::Inhibitor;
use crate::runtime::logind::{BusEvent, BusHandle};
use crate::runtime::server::clients::Clients;
use crate::runtime::shutdown::{Requested, Shutdown};
use crate::runtime::supervisor::{millis, Now, RestartAction, StopReason, Supervisor};
use crate::sys::Sys;

/// Where the runtime finds things (tests point these into temp dirs).
#[derive(Debug, Clone)]
pub struct Paths {
    pub socket: PathBuf,
    /// The system bus socket kios-init serves logind on.
    pub bus_socket: PathBuf,
    pub crio_socket: PathBuf,
    pub etc_kubernetes: PathBuf,
    pub log_dir: PathBuf,
    pub inventory: PathBuf,
    /// The root `verify` walks.
    pub root: PathBuf,
    pub proc_root: PathBuf,
    /// The overlay upper dir of /etc, when the data partition is mounted.
    pub etc_upper: Option<PathBuf>,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            socket: PathBuf::from(kios_protocol::SOCKET_PATH),
            bus_socket: PathBuf::from(crate::runtime::logind::SYSTEM_BUS_SOCKET),
            crio_socket: PathBuf::from("/var/run/crio/crio.sock"),
            etc_kubernetes: PathBuf::from("/etc/kubernetes"),
            log_dir: PathBuf::from("/var/log"),
            inventory: PathBuf::from("/lib/kios/inventory"),
            root: PathBuf::from("/"),
            proc_root: PathBuf::from("/proc"),
            etc_upper: None,
        }
    }
}

/// Facts about the node fixed at boot.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub kernel: String,
    pub datapart: Option<DatapartStatus>,
    pub boot_warnings: Vec<String>,
    /// VERSION_ID and BUILD_ID of the image's /etc/os-release.
    pub release: kios_rootfs::ImageRelease,
}

pub struct State {
    pub node: NodeInfo,
    pub milestones: Milestones,
    pub supervisor: Supervisor,
    pub shutdown: Shutdown,
    pub clients: Clients,
    pub logs: LogHub,
    /// State-changing requests and shutdown triggers (`audit`).
    pub audit: AuditLog,
    pub paths: Paths,
    /// The machine: signals go through it.
    pub sys: Arc<dyn Sys>,
    /// The system bus component (logind for the upstream kubelet), once
    /// its socket is bound.
    pub bus: Option<BusHandle>,
    /// The logind delay inhibitor locks held, as the bus reported them.
    pub inhibitors: BTreeMap<u64, Inhibitor>,
    /// The wall clock's steps since boot (shown, never measured with).
    pub clock: ClockSteps,
}

impl State {
    pub fn new(
        node: NodeInfo,
        milestones: Milestones,
        supervisor: Supervisor,
        logs: LogHub,
        paths: Paths,
        sys: Arc<dyn Sys>,
    ) -> State {
        let audit = AuditLog::in_memory(milestones.start_epoch_ms());
        let clock = ClockSteps::new(milestones.start_instant(), milestones.start_epoch_ms());
        State {
            node,
            milestones,
            supervisor,
            shutdown: Shutdown::new(),
            clients: Clients::new(),
            audit,
            logs,
            paths,
            sys,
            bus: None,
            inhibitors: BTreeMap::new(),
            clock,
        }
    }

    pub fn kubelet_pid(&self) -> Option<u32> {
        self.supervisor.kubelet.pid
    }

    /// The `status` reply.
    pub fn status(&self, now: Now) -> StatusReply {
        let clients = self.clients.infos(self.kubelet_pid());
        self.status_with(now, clients)
    }

    /// The `status` response line as the socket sends it (with its
    /// newline): [`State::status`] encoded, its client list encoded only
    /// when it changed (`Clients::encoded_infos`).
    pub fn status_line(&mut self, now: Now) -> Vec<u8> {
        let head = self.status_with(now, Vec::new());
        let clients = self.clients.encoded_infos(self.supervisor.kubelet.pid);
        kios_protocol::encode_status_line(&head.node, &head.services, clients)
    }

    fn status_with(&self, now: Now, clients: Vec<ClientInfo>) -> StatusReply {
        let kubelet_pid = self.kubelet_pid();
        let boot_ms = self.milestones.start_epoch_ms();
        let hostname = self.sys.hostname().unwrap_or_default();
        StatusReply {
            node: NodeStatus {
                hostname,
                kernel: self.node.kernel.clone(),
                boot_ms,
                // Monotonic: a wall clock stepped back or forth since boot
                // changes neither uptime nor ages measured against now_ms.
                uptime_ms: millis(
                    now.mono
                        .saturating_duration_since(self.milestones.start_instant()),
                ),
                now_ms: now.epoch_ms,
                datapart: self.node.datapart.clone(),
                shutdown: self.shutdown.status().cloned(),
                graceful_shutdown_armed: self.clients.could_be_kubelet(kubelet_pid) > 0
                    || !self.inhibitors.is_empty(),
                inhibitors: self
                    .inhibitors
                    .values()
                    .map(|i| InhibitorInfo {
                        pid: i.pid,
                        command: i.command.clone(),
                        who: i.who.clone(),
                        why: i.why.clone(),
                        mode: i.mode.clone(),
                        since_ms: i.since_ms,
                    })
                    .collect(),
                previous_shutdown: self.audit.previous_shutdown(),
                log_lines_dropped: self.logs.lines_dropped(),
                clock_steps: self.clock.count,
                last_clock_step_ms: self.clock.last_delta_ms,
            },
            services: self.supervisor.statuses(),
            clients,
        }
    }

    /// The `boot` reply.
    pub fn boot_reply(&self) -> BootReply {
        BootReply {
            milestones: self
                .milestones
                .list()
                .iter()
                .map(to_wire_milestone)
                .collect(),
        }
    }

    /// Records a boot milestone and tells watchers.
    pub fn milestone(&mut self, name: &str) {
        self.milestones.record(name);
        if let Some(last) = self.milestones.list().last() {
            let event = Event::Milestone(to_wire_milestone(last));
            self.clients.emit(&event);
        }
    }

    /// Tells watchers a service changed.
    pub fn service_changed(&mut self, name: ServiceName) {
        let event = Event::Service(self.supervisor.service(name).status());
        self.clients.emit(&event);
    }

    /// Tells watchers the shutdown began or changed phase.
    pub fn shutdown_changed(&mut self) {
        if let Some(status) = self.shutdown.status().cloned() {
            self.clients.emit(&Event::Shutdown(status));
        }
    }

    /// What the system bus reported: locks are mirrored here for `status`
    /// and the drain, watchers get an event, the drain is woken.
    pub fn bus_event(&mut self, event: BusEvent, now_ms: u64) {
        let logind = |change, lock: Option<&Inhibitor>| LogindEvent {
            change,
            at_ms: now_ms,
            pid: lock.and_then(|l| l.pid),
            who: lock.map(|l| l.who.clone()),
            held_ms: None,
            start: None,
            clients: None,
        };
        let wire = match event {
            BusEvent::ClientConnected { .. } | BusEvent::ClientGone { .. } => None,
            BusEvent::DelayChanged { .. } => None,
            BusEvent::InhibitorTaken(lock) => {
                let event = logind(LogindChange::LockTaken, Some(&lock));
                self.inhibitors.insert(lock.id, lock);
                Some(event)
            }
            BusEvent::InhibitorReleased { inhibitor, held_ms } => {
                self.inhibitors.remove(&inhibitor.id);
                Some(LogindEvent {
                    held_ms: Some(held_ms),
                    ..logind(LogindChange::LockReleased, Some(&inhibitor))
                })
            }
            BusEvent::SignalSent { start, clients } => {
                crate::kinfo!(
                    "shutdown: PrepareForShutdown({start}) sent to {clients} system bus client(s)"
                );
                Some(LogindEvent {
                    start: Some(start),
                    clients: Some(u32::try_from(clients).unwrap_or(u32::MAX)),
                    ..logind(LogindChange::SignalSent, None)
                })
            }
        };
        if let Some(event) = wire {
            self.clients.emit(&Event::Logind(event));
        }
    }

    /// The wall clock was set (`now` read after it): one kernel-log line,
    /// counted in `status` when it moved.
    pub fn clock_set(&mut self, now: Now) {
        let step = self.clock.stepped(now);
        if step.delta_ms == 0 {
            crate::kinfo!("{}", step.message);
            return;
        }
        crate::knotice!("{}", step.message);
        // The times that ages are measured from (a service's since, a
        // client's, a lock's, the shutdown's) move with the clock, so
        // `now_ms - since_ms` stays the real age. What is history (exits,
        // log lines, milestones, the audit) keeps the time as it was read.
        let delta = step.delta_ms;
        self.supervisor.wall_clock_moved(delta);
        self.clients.wall_clock_moved(delta);
        for lock in self.inhibitors.values_mut() {
            lock.since_ms = crate::runtime::clock::moved(lock.since_ms, delta);
        }
        self.shutdown.wall_clock_moved(delta);
    }

    /// One line of a service's output.
    /// Returns how many followers it was queued for.
    pub fn log_line(&mut self, service: ServiceName, line: String, now_ms: u64) -> usize {
        let followers = self.clients.emit_log(service, now_ms, &line);
        self.logs.line(service, line);
        followers
    }

    /// `restart <service>` (and the legacy 0x03/0x04, and the kubelet
    /// config restart): TERM now, start again as soon as it is reaped.
    pub fn restart(
        &mut self,
        name: ServiceName,
        reason: StopReason,
        now: Now,
    ) -> Result<RestartReply, ErrorBody> {
        if self.shutdown.is_active() {
            return Err(shutting_down());
        }
        let old_pid = match self.supervisor.request_restart(name, reason, now) {
            RestartAction::Terminate { pid } => {
                if let Err(e) = self.sys.kill(pid, Signal::SIGTERM) {
                    crate::kwarn!("restart {name}: cannot send SIGTERM to pid {pid}: {e}");
                }
                Some(pid)
            }
            RestartAction::AlreadyStopping { pid } => Some(pid),
            RestartAction::StartWhenReady => None,
            RestartAction::ShuttingDown => return Err(shutting_down()),
            RestartAction::Busy => {
                return Err(ErrorBody::new(
                    ErrorCode::Busy,
                    format!(
                        "{} restarts of {name} are already waiting; try again later",
                        crate::runtime::supervisor::MAX_PENDING_RESTARTS
                    ),
                ))
            }
        };
        self.service_changed(name);
        Ok(RestartReply {
            service: name,
            old_pid,
        })
    }

    /// A shutdown request from anywhere. Returns what it did.
    pub fn request_shutdown(
        &mut self,
        mode: PowerMode,
        force: bool,
        requested_by: &str,
        now: Now,
    ) -> Requested {
        let requested = self
            .shutdown
            .request(mode, force, requested_by, now.epoch_ms);
        match requested {
            Requested::Started => {
                crate::kinfo!(
                    "shutdown ({mode}{}) requested by {requested_by}",
                    if force { ", force" } else { "" }
                );
                self.shutdown_changed();
            }
            Requested::Forced => {
                crate::kinfo!("shutdown forced by {requested_by}: skipping the remaining waits");
                self.shutdown_changed();
            }
            Requested::AlreadyInProgress => {
                // Still in the kernel log: every trigger is, with its origin.
                crate::kinfo!(
                    "shutdown ({mode}{}) requested by {requested_by}: one is already in progress",
                    if force { ", force" } else { "" }
                );
            }
        }
        requested
    }
}

fn shutting_down() -> ErrorBody {
    ErrorBody::new(ErrorCode::ShuttingDown, "the node is shutting down")
}

fn to_wire_milestone(m: &crate::boot::milestones::Milestone) -> kios_protocol::Milestone {
    kios_protocol::Milestone {
        name: m.name.clone(),
        at_ms: m.at_ms,
        offset_ms: m.offset_us as f64 / 1000.0,
    }
}

#[cfg(test)]
pub mod testing {
    //! A `State` for unit tests: no processes, every effect recorded by the
    //! fake machine.
    use super::*;
    use crate::runtime::supervisor::BackoffPolicy;
    use crate::sys::fake::{Call, FakeSys};

    pub struct TestState {
        pub state: State,
        pub sys: Arc<FakeSys>,
    }

    impl TestState {
        /// The signals sent to single processes so far.
        pub fn signals(&self) -> Vec<(u32, Signal)> {
            self.sys
                .calls()
                .into_iter()
                .filter_map(|c| match c {
                    Call::Kill(pid, signal) => Some((pid, signal)),
                    _ => None,
                })
                .collect()
        }
    }

    pub fn test_state() -> TestState {
        let sys = Arc::new(FakeSys::new());
        let state = State::new(
            NodeInfo {
                kernel: "6.1.0-test".into(),
                datapart: None,
                boot_warnings: vec![],
                release: Default::default(),
            },
            Milestones::new(),
            Supervisor::new(BackoffPolicy::default(), Now::current()),
            LogHub::new(None),
            Paths::default(),
            sys.clone(),
        );
        TestState { state, sys }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::test_state;
    use crate::sys::Sys;

    /// A step of the wall clock moves the times ages are measured from:
    /// a service's and a client's age read the same just after the step
    /// as just before it, back or forward; history keeps its times.
    #[test]
    fn ages_stay_right_across_a_wall_clock_step() {
        use crate::runtime::server::clients::Peer;
        use crate::runtime::supervisor::Now;
        use kios_protocol::ServiceName;
        use std::time::Duration;
        let mut t = test_state();
        let start = t.state.milestones.start_instant();
        let boot_ms = t.state.milestones.start_epoch_ms();
        let day: i64 = 86_400_000;
        // The clocks `mono_ms` after init started, the wall moved by `moved`.
        let at = |mono_ms: u64, moved: i64| Now {
            mono: start + Duration::from_millis(mono_ms),
            epoch_ms: (i128::from(boot_ms) + i128::from(mono_ms) + i128::from(moved)).max(0) as u64,
        };
        t.state.supervisor.crio.since_ms = boot_ms + 1_000;
        let peer = Peer {
            id: 1,
            pid: Some(77),
            uid: Some(0),
            command: Some("kiosctl".into()),
        };
        let _registration = t.state.clients.register(peer, boot_ms + 2_000);
        let ages = |t: &super::testing::TestState, now: Now| {
            let status = t.state.status(now);
            let now_ms = status.node.now_ms;
            let crio = status
                .services
                .iter()
                .find(|s| s.name == ServiceName::Crio)
                .map(|s| now_ms.saturating_sub(s.since_ms));
            let client = status
                .clients
                .first()
                .map(|c| now_ms.saturating_sub(c.since_ms));
            (crio, client)
        };
        assert_eq!(ages(&t, at(10_000, 0)), (Some(9_000), Some(8_000)));
        for (mono, moved) in [(10_000, -3 * day), (20_000, -2 * day)] {
            t.state.clock_set(at(mono, moved));
            assert_eq!(
                ages(&t, at(mono, moved)),
                (Some(mono - 1_000), Some(mono - 2_000)),
                "after a step to {moved} ms"
            );
        }
        // Stepped to before 1970: saturates at 0, no wrap.
        t.state.clock_set(at(30_000, -(boot_ms as i64) - day));
        assert_eq!(t.state.supervisor.crio.since_ms, 0);
    }

    /// Uptime is monotonic; `now_ms` is the wall clock as read, whatever
    /// it did since boot; `boot_ms` (this boot's identity) never moves.
    #[test]
    fn uptime_ignores_wall_clock_steps_and_now_ms_shows_them() {
        use crate::runtime::supervisor::Now;
        use std::time::Duration;
        let t = test_state();
        let start = t.state.milestones.start_instant();
        let boot_ms = t.state.milestones.start_epoch_ms();
        let at = |mono_ms: u64, epoch_ms: u64| Now {
            mono: start + Duration::from_millis(mono_ms),
            epoch_ms,
        };
        // Stepped back to 1970, 10 s after boot.
        let node = t.state.status(at(10_000, 5)).node;
        assert_eq!(
            (node.uptime_ms, node.now_ms, node.boot_ms),
            (10_000, 5, boot_ms)
        );
        // Stepped forward a year, 20 s after boot.
        let year = 365 * 86_400_000;
        let node = t.state.status(at(20_000, boot_ms + year)).node;
        assert_eq!((node.uptime_ms, node.now_ms), (20_000, boot_ms + year));
        // At the end of the wall clock's range: nothing overflows.
        let node = t.state.status(at(30_000, u64::MAX)).node;
        assert_eq!((node.uptime_ms, node.now_ms), (30_000, u64::MAX));
    }

    #[test]
    fn status_names_the_node_as_the_machine_does() {
        let t = test_state();
        t.sys.sethostname("worker-7").unwrap();
        let now = crate::runtime::supervisor::Now::current();
        assert_eq!(t.state.status(now).node.hostname, "worker-7");
    }
}
