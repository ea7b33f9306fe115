//! Service supervision as a state machine: cri-o and the kubelet, their
//! states, pids, restart counts, last exits and the crash back-off.
//!
//! Pure: no processes, no clocks of its own. The runtime feeds it events
//! (started, exited, cri-o socket seen, restart requested, shutdown) with the
//! current time and acts on what it returns (start this service now, TERM
//! this pid, KILL that one). That keeps every transition unit-testable.
//!
//! Rules:
//! - cri-o starts first; the kubelet only once cri-o's socket exists
//!   (`crio_ready`). When cri-o exits its readiness is withdrawn until its
//!   next instance creates the socket again; a running kubelet is left alone.
//! - A crash restarts the service after [`BackoffPolicy::delay`]: the first
//!   restart is immediate, later ones wait longer, up to a cap; a service
//!   that ran for [`BackoffPolicy::stable_after`] starts over at zero.
//! - An administrator's `restart` (or the kubelet config appearing) sends
//!   TERM, KILL after [`STOP_TIMEOUT`], and starts the service again at once
//!   when it is gone; that is not a crash and does not grow the back-off.
//! - One start per accepted `restart`: every administrator's request that
//!   is accepted is owed one start of the service, and the starts happen
//!   one after the other (a request while the service is stopping queues a
//!   further stop-and-start after the one under way). At most
//!   [`MAX_PENDING_RESTARTS`] requests per service wait for their start;
//!   the next one is refused ([`RestartAction::Busy`]).
//! - After [`Supervisor::stop_all`] (shutdown) nothing starts again.

use std::time::{Duration, Instant};

use kios_protocol::{ExitStatus, ServiceName, ServiceState, ServiceStatus};

use crate::runtime::reaper::Exit;

/// How long a service gets between TERM and KILL on `restart`.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted `restart` requests of one service still waiting for their
/// start; one more is refused with `busy`.
pub const MAX_PENDING_RESTARTS: u32 = 128;

/// A point in time on both clocks: monotonic for scheduling, epoch
/// milliseconds for what clients see.
///
/// The wall clock may jump either way between two readings (it starts at
/// 1970 on a machine without an RTC until NTP steps it); nothing here
/// computes a duration or a deadline from `epoch_ms`. A `*_ms` time in the
/// future (a back-off's end) is `epoch_ms` plus a monotonic delay, so it
/// is right on the clock as it read at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub epoch_ms: u64,
}

impl Now {
    /// The current time.
    pub fn current() -> Now {
        Now {
            mono: Instant::now(),
            epoch_ms: crate::boot::milestones::epoch_ms(),
        }
    }

    /// The wall-clock time `delay` from now, saturating.
    pub fn epoch_ms_after(&self, delay: Duration) -> u64 {
        self.epoch_ms.saturating_add(millis(delay))
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The crash back-off schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay before the n-th consecutive restart (index n-1); the last one
    /// repeats.
    pub steps: Vec<Duration>,
    /// A service that ran this long before exiting counts as stable: its
    /// crash count starts over.
    pub stable_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        let ms = Duration::from_millis;
        BackoffPolicy {
            steps: vec![
                ms(0),
                ms(500),
                ms(1_000),
                ms(2_000),
                ms(4_000),
                ms(8_000),
                ms(16_000),
                ms(30_000),
            ],
            stable_after: Duration::from_secs(60),
        }
    }
}

impl BackoffPolicy {
    /// The delay before restarting after `consecutive_crashes` crashes in a
    /// row (1 = the first crash).
    pub fn delay(&self, consecutive_crashes: u32) -> Duration {
        if consecutive_crashes == 0 {
            return Duration::ZERO;
        }
        let index = (consecutive_crashes as usize - 1).min(self.steps.len().saturating_sub(1));
        self.steps.get(index).copied().unwrap_or(Duration::ZERO)
    }
}

/// Why a service is being stopped by init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `restart` from the socket: start again at once.
    AdminRestart,
    /// kubelet.conf / bootstrap-kubelet.conf appeared: start again at once
    /// with the new flags.
    ConfigChanged,
    /// The node shuts down: do not start again.
    Shutdown,
}

/// One supervised service.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: ServiceName,
    pub state: ServiceState,
    pub pid: Option<u32>,
    /// When the current state began.
    pub since_ms: u64,
    /// Starts after the first one.
    pub restarts: u32,
    /// Crashes in a row (reset by a stable run).
    pub consecutive_crashes: u32,
    pub last_exit: Option<ExitStatus>,
    /// When a back-off ends.
    pub next_start: Option<Instant>,
    pub next_start_ms: Option<u64>,
    /// When the running process was started.
    pub started_at: Option<Instant>,
    /// Set while init is stopping the process on purpose.
    pub stop_reason: Option<StopReason>,
    /// When KILL follows the TERM of a deliberate stop.
    pub kill_at: Option<Instant>,
    /// The argv the running process was started with.
    pub argv: Vec<String>,
    /// Accepted administrator restarts not yet served by a start.
    pub pending_restarts: u32,
    starts: u32,
}

impl Service {
    fn new(name: ServiceName, now: Now) -> Service {
        Service {
            name,
            state: ServiceState::Waiting,
            pid: None,
            since_ms: now.epoch_ms,
            restarts: 0,
            consecutive_crashes: 0,
            last_exit: None,
            next_start: None,
            next_start_ms: None,
            started_at: None,
            stop_reason: None,
            kill_at: None,
            argv: Vec::new(),
            pending_restarts: 0,
            starts: 0,
        }
    }

    fn set_state(&mut self, state: ServiceState, now: Now) {
        if self.state != state {
            self.state = state;
            self.since_ms = now.epoch_ms;
        }
    }

    /// The wire view of this service.
    pub fn status(&self) -> ServiceStatus {
        ServiceStatus {
            name: self.name,
            state: self.state,
            pid: self.pid,
            since_ms: self.since_ms,
            restarts: self.restarts,
            last_exit: self.last_exit,
            next_start_ms: self.next_start_ms,
        }
    }
}

/// What a `restart` request led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartAction {
    /// Send TERM to this pid; the service starts again when it is reaped.
    Terminate { pid: u32 },
    /// It was already being stopped; it starts again when it is reaped.
    AlreadyStopping { pid: u32 },
    /// Not running (back-off or waiting): it starts as soon as it may.
    StartWhenReady,
    /// The node is shutting down.
    ShuttingDown,
    /// [`MAX_PENDING_RESTARTS`] requests already wait for their start:
    /// refused, nothing changes.
    Busy,
}

/// What the runtime must do after a child exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitOutcome {
    pub service: ServiceName,
    /// Was it a crash (counted for back-off), rather than a stop init asked for?
    pub crashed: bool,
    /// The delay before the next start, when one is scheduled.
    pub restart_in: Option<Duration>,
}

/// Both services and the rules that move them.
#[derive(Debug, Clone)]
pub struct Supervisor {
    pub crio: Service,
    pub kubelet: Service,
    pub policy: BackoffPolicy,
    /// cri-o's socket exists (for the current cri-o instance).
    pub crio_ready: bool,
    /// Shutdown: nothing starts again.
    pub stopping_all: bool,
}

impl Supervisor {
    pub fn new(policy: BackoffPolicy, now: Now) -> Supervisor {
        Supervisor {
            crio: Service::new(ServiceName::Crio, now),
            kubelet: Service::new(ServiceName::Kubelet, now),
            policy,
            crio_ready: false,
            stopping_all: false,
        }
    }

    pub fn service(&self, name: ServiceName) -> &Service {
        match name {
            ServiceName::Crio => &self.crio,
            ServiceName::Kubelet => &self.kubelet,
        }
    }

    /// The wall clock was stepped by `delta_ms`: each service's `since_ms`
    /// follows (see `State::clock_set`).
    pub fn wall_clock_moved(&mut self, delta_ms: i64) {
        for service in [&mut self.crio, &mut self.kubelet] {
            service.since_ms = crate::runtime::clock::moved(service.since_ms, delta_ms);
        }
    }

    pub fn service_mut(&mut self, name: ServiceName) -> &mut Service {
        match name {
            ServiceName::Crio => &mut self.crio,
            ServiceName::Kubelet => &mut self.kubelet,
        }
    }

    /// Both services, cri-o first.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        vec![self.crio.status(), self.kubelet.status()]
    }

    /// The service running as `pid`, if any.
    pub fn service_of_pid(&self, pid: u32) -> Option<ServiceName> {
        ServiceName::ALL
            .into_iter()
            .find(|name| self.service(*name).pid == Some(pid))
    }

    /// Services that should be started now, cri-o first. A kubelet whose
    /// time has come but whose precondition (the cri-o socket) is missing
    /// moves to `waiting`.
    pub fn due(&mut self, now: Now) -> Vec<ServiceName> {
        let mut due = Vec::new();
        if self.stopping_all {
            return due;
        }
        for name in ServiceName::ALL {
            let crio_ready = self.crio_ready;
            let service = self.service_mut(name);
            let time_has_come = match service.state {
                ServiceState::Waiting => true,
                ServiceState::Backoff => service.next_start.is_none_or(|at| at <= now.mono),
                ServiceState::Starting
                | ServiceState::Running
                | ServiceState::Stopping
                | ServiceState::Stopped => false,
            };
            if !time_has_come {
                continue;
            }
            if name == ServiceName::Kubelet && !crio_ready {
                service.next_start = None;
                service.next_start_ms = None;
                service.set_state(ServiceState::Waiting, now);
                continue;
            }
            due.push(name);
        }
        due
    }

    /// A process for `name` was started as `pid` with `argv`.
    pub fn started(&mut self, name: ServiceName, pid: u32, argv: Vec<String>, now: Now) {
        let crio_ready = self.crio_ready;
        let service = self.service_mut(name);
        if service.starts > 0 {
            service.restarts = service.restarts.saturating_add(1);
        }
        service.starts = service.starts.saturating_add(1);
        service.pending_restarts = service.pending_restarts.saturating_sub(1);
        service.pid = Some(pid);
        service.argv = argv;
        service.started_at = Some(now.mono);
        service.next_start = None;
        service.next_start_ms = None;
        service.stop_reason = None;
        service.kill_at = None;
        // cri-o is `starting` until its socket appears; the kubelet has no
        // readiness signal of its own and counts as running once exec'd.
        let state = match name {
            ServiceName::Crio if !crio_ready => ServiceState::Starting,
            ServiceName::Crio | ServiceName::Kubelet => ServiceState::Running,
        };
        service.set_state(state, now);
    }

    /// Starting `name` failed (e.g. the binary is missing): handled like a
    /// crash with exit code 127, so the back-off applies.
    pub fn start_failed(&mut self, name: ServiceName, now: Now) -> ExitOutcome {
        let service = self.service_mut(name);
        service.starts = service.starts.saturating_add(1);
        // A start was attempted: that serves a request as a start would.
        service.pending_restarts = service.pending_restarts.saturating_sub(1);
        if service.starts > 1 {
            service.restarts = service.restarts.saturating_add(1);
        }
        service.started_at = Some(now.mono);
        self.crashed(name, Exit::Code(127), now)
    }

    /// cri-o's socket appeared.
    pub fn crio_socket_ready(&mut self, now: Now) {
        self.crio_ready = true;
        if self.crio.state == ServiceState::Starting {
            self.crio.set_state(ServiceState::Running, now);
        }
    }

    /// A child was reaped. Returns what happened to the service it was, or
    /// `None` for any other process (an orphan).
    pub fn exited(&mut self, pid: u32, exit: Exit, now: Now) -> Option<ExitOutcome> {
        let name = self.service_of_pid(pid)?;
        if name == ServiceName::Crio {
            self.crio_ready = false;
        }
        let stopping_all = self.stopping_all;
        let service = self.service_mut(name);
        service.pid = None;
        service.last_exit = Some(exit_status(exit, now));
        service.kill_at = None;
        let reason = service.stop_reason.take();
        if stopping_all || reason == Some(StopReason::Shutdown) {
            service.next_start = None;
            service.next_start_ms = None;
            service.set_state(ServiceState::Stopped, now);
            return Some(ExitOutcome {
                service: name,
                crashed: false,
                restart_in: None,
            });
        }
        if matches!(
            reason,
            Some(StopReason::AdminRestart | StopReason::ConfigChanged)
        ) {
            // Deliberate: start again at once, the back-off is not touched.
            service.next_start = Some(now.mono);
            service.next_start_ms = Some(now.epoch_ms);
            service.set_state(ServiceState::Backoff, now);
            return Some(ExitOutcome {
                service: name,
                crashed: false,
                restart_in: Some(Duration::ZERO),
            });
        }
        Some(self.crashed(name, exit, now))
    }

    fn crashed(&mut self, name: ServiceName, exit: Exit, now: Now) -> ExitOutcome {
        let policy = self.policy.clone();
        let service = self.service_mut(name);
        service.pid = None;
        service.last_exit = Some(exit_status(exit, now));
        let ran = service
            .started_at
            .map(|at| now.mono.saturating_duration_since(at))
            .unwrap_or(Duration::ZERO);
        if ran >= policy.stable_after {
            service.consecutive_crashes = 0;
        }
        service.consecutive_crashes = service.consecutive_crashes.saturating_add(1);
        let delay = policy.delay(service.consecutive_crashes);
        service.next_start = Some(now.mono + delay);
        service.next_start_ms = Some(now.epoch_ms_after(delay));
        service.set_state(ServiceState::Backoff, now);
        ExitOutcome {
            service: name,
            crashed: true,
            restart_in: Some(delay),
        }
    }

    /// An administrator (or a config change) asks to restart `name`.
    ///
    /// An administrator's request ([`StopReason::AdminRestart`]) that is
    /// accepted is owed one start: the next start serves the oldest
    /// request, and while requests remain owed after a start the service
    /// is stopped again ([`Supervisor::queued_restarts`]). A config change
    /// joins whatever stop is under way and owes nothing of its own.
    pub fn request_restart(
        &mut self,
        name: ServiceName,
        reason: StopReason,
        now: Now,
    ) -> RestartAction {
        if self.stopping_all {
            return RestartAction::ShuttingDown;
        }
        let service = self.service_mut(name);
        let admin = reason == StopReason::AdminRestart;
        if admin && service.pending_restarts >= MAX_PENDING_RESTARTS {
            return RestartAction::Busy;
        }
        if admin {
            service.pending_restarts += 1;
        }
        match (service.state, service.pid) {
            (ServiceState::Stopping, Some(pid)) => {
                if service.stop_reason != Some(StopReason::Shutdown) {
                    service.stop_reason = Some(reason);
                }
                RestartAction::AlreadyStopping { pid }
            }
            (_, Some(pid)) => {
                service.stop_reason = Some(reason);
                service.kill_at = Some(now.mono + STOP_TIMEOUT);
                service.set_state(ServiceState::Stopping, now);
                RestartAction::Terminate { pid }
            }
            (_, None) => {
                // In back-off: skip the rest of the wait. Waiting: nothing to do.
                if service.state == ServiceState::Backoff {
                    service.next_start = Some(now.mono);
                    service.next_start_ms = Some(now.epoch_ms);
                }
                RestartAction::StartWhenReady
            }
        }
    }

    /// The services whose accepted restarts are not all served yet and
    /// whose current process is running (not already being stopped): each
    /// is moved to `stopping` for its next restart; send TERM to the pids
    /// returned. Called after starts, so the restarts run one by one.
    pub fn queued_restarts(&mut self, now: Now) -> Vec<u32> {
        let mut pids = Vec::new();
        if self.stopping_all {
            return pids;
        }
        for name in ServiceName::ALL {
            let service = self.service_mut(name);
            let running = matches!(
                service.state,
                ServiceState::Starting | ServiceState::Running
            );
            if let (true, true, Some(pid)) = (service.pending_restarts > 0, running, service.pid) {
                service.stop_reason = Some(StopReason::AdminRestart);
                service.kill_at = Some(now.mono + STOP_TIMEOUT);
                service.set_state(ServiceState::Stopping, now);
                pids.push(pid);
            }
        }
        pids
    }

    /// Shutdown: nothing starts again. Returns the pids still running (the
    /// shutdown signals every process itself).
    pub fn stop_all(&mut self, now: Now) -> Vec<u32> {
        self.stopping_all = true;
        let mut pids = Vec::new();
        for name in ServiceName::ALL {
            let service = self.service_mut(name);
            service.next_start = None;
            service.next_start_ms = None;
            service.pending_restarts = 0;
            match service.pid {
                Some(pid) => {
                    service.stop_reason = Some(StopReason::Shutdown);
                    service.kill_at = None;
                    service.set_state(ServiceState::Stopping, now);
                    pids.push(pid);
                }
                None => service.set_state(ServiceState::Stopped, now),
            }
        }
        pids
    }

    /// The pids whose deliberate stop ran out of time: send them KILL.
    /// Each is returned once.
    pub fn overdue_kills(&mut self, now: Now) -> Vec<u32> {
        let mut pids = Vec::new();
        for name in ServiceName::ALL {
            let service = self.service_mut(name);
            if let (Some(at), Some(pid)) = (service.kill_at, service.pid) {
                if at <= now.mono {
                    service.kill_at = None;
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// The next moment the supervisor has something to do (a back-off that
    /// ends or a KILL that is due), for the runtime's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.stopping_all {
            return None;
        }
        ServiceName::ALL
            .into_iter()
            .flat_map(|name| {
                let service = self.service(name);
                let backoff = match service.state {
                    ServiceState::Backoff => service.next_start,
                    _ => None,
                };
                [backoff, service.kill_at]
            })
            .flatten()
            .min()
    }
}

fn exit_status(exit: Exit, now: Now) -> ExitStatus {
    match exit {
        Exit::Code(code) => ExitStatus {
            code: Some(code),
            signal: None,
            at_ms: now.epoch_ms,
        },
        Exit::Signal(signal) => ExitStatus {
            code: None,
            signal: Some(signal),
            at_ms: now.epoch_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Clock {
        start: Instant,
        now: Now,
    }

    impl Clock {
        fn new() -> Clock {
            let start = Instant::now();
            Clock {
                start,
                now: Now {
                    mono: start,
                    epoch_ms: 1_000_000,
                },
            }
        }
        fn advance(&mut self, d: Duration) -> Now {
            self.now.mono += d;
            self.now.epoch_ms =
                1_000_000 + self.now.mono.duration_since(self.start).as_millis() as u64;
            self.now
        }
    }

    fn boot(sup: &mut Supervisor, now: Now) -> (u32, u32) {
        assert_eq!(
            sup.due(now),
            vec![ServiceName::Crio],
            "kubelet waits for cri-o's socket"
        );
        sup.started(ServiceName::Crio, 100, vec!["/bin/crio".into()], now);
        assert_eq!(sup.crio.state, ServiceState::Starting);
        assert_eq!(sup.kubelet.state, ServiceState::Waiting);
        assert!(sup.due(now).is_empty());
        sup.crio_socket_ready(now);
        assert_eq!(sup.crio.state, ServiceState::Running);
        assert_eq!(sup.due(now), vec![ServiceName::Kubelet]);
        sup.started(ServiceName::Kubelet, 200, vec!["/bin/kubelet".into()], now);
        assert_eq!(sup.kubelet.state, ServiceState::Running);
        (100, 200)
    }

    #[test]
    fn backoff_schedule_starts_immediate_grows_and_caps() {
        let policy = BackoffPolicy::default();
        let got: Vec<u64> = (0..=10)
            .map(|n| policy.delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            got,
            vec![0, 0, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(30));
        let empty = BackoffPolicy {
            steps: vec![],
            stable_after: Duration::from_secs(1),
        };
        assert_eq!(empty.delay(3), Duration::ZERO);
    }

    #[test]
    fn crio_first_then_kubelet_after_socket() {
        let mut clock = Clock::new();
        let mut sup = Supervisor::new(BackoffPolicy::default(), clock.now);
        boot(&mut sup, clock.advance(Duration::from_millis(5)));
        assert_eq!(sup.crio.restarts, 0);
        assert_eq!(sup.service_of_pid(200), Some(ServiceName::Kubelet));
        assert_eq!(sup.service_of_pid(999), None);
    }

    #[test]
    fn crash_loop_backs_off_and_stable_run_resets() {
        let mut clock = Clock::new();
        let mut sup = Supervisor::new(BackoffPolicy::default(), clock.now);
        let (_, mut kubelet) = boot(&mut sup, clock.now);
        let mut delays = Vec::new();
        for _ in 0..4 {
            let now = clock.advance(Duration::from_millis(10));
            let outcome = sup.exited(kubelet, Exit::Code(1), now).unwrap();
            assert!(outcome.crashed);
            let delay = outcome.restart_in.unwrap();
            delays.push(delay.as_millis() as u64);
            assert_eq!(sup.kubelet.state, ServiceState::Backoff);
            assert_eq!(
                sup.kubelet.next_start_ms,
                Some(now.epoch_ms + delay.as_millis() as u64)
            );
            assert_eq!(sup.kubelet.last_exit.unwrap().code, Some(1));
            if delay > Duration::ZERO {
                assert!(sup.due(now).is_empty(), "not before the back-off ends");
                assert_eq!(sup.next_deadline(), Some(now.mono + delay));
            }
            let now = clock.advance(delay);
            assert_eq!(sup.due(now), vec![ServiceName::Kubelet]);
            kubelet += 1;
            sup.started(ServiceName::Kubelet, kubelet, vec![], now);
        }
        assert_eq!(delays, vec![0, 500, 1000, 2000]);
        assert_eq!(sup.kubelet.restarts, 4);
        // A run longer than stable_after: the next crash restarts at once.
        let now = clock.advance(Duration::from_secs(61));
        let outcome = sup.exited(kubelet, Exit::Signal(9), now).unwrap();
        assert_eq!(outcome.restart_in, Some(Duration::ZERO));
        assert_eq!(sup.kubelet.last_exit.unwrap().signal, Some(9));
        assert_eq!(sup.kubelet.last_exit.unwrap().code, None);
    }

    #[test]
    fn crio_exit_withdraws_readiness_and_kubelet_waits() {
        let mut clock = Clock::new();
        let mut sup = Supervisor::new(BackoffPolicy::default(), clock.now);
        let (crio, kubelet) = boot(&mut sup, clock.now);
        let now = clock.advance(Duration::from_millis(1));
        sup.exited(crio, Exit::Code(2), now).unwrap();
        assert!(!sup.crio_ready);
        assert_eq!(
            sup.kubelet.state,
            ServiceState::Running,
            "a running kubelet is left alone"
        );
        // The kubelet crashes while cri-o is down: it waits for the socket.
        sup.exited(kubelet, Exit::Code(1), now).unwrap();
        assert_eq!(sup.due(now), vec![ServiceName::Crio]);
        assert_eq!(sup.kubelet.state, ServiceState::Waiting);
        assert_eq!(sup.kubelet.next_start_ms, None);
        sup.started(ServiceName::Crio, 300, vec![], now);
        assert_eq!(sup.crio.state, ServiceState::Starting);
        assert!(sup.due(now).is_empty());
        sup.crio_socket_ready(now);
        assert_eq!(sup.due(now), vec![ServiceName::Kubelet]);
    }

    #[test]
    fn admin_restart_terms_then_restarts_at_once_without_backoff() {
        let mut clock = Clock::new();
        let mut sup = Supervisor::new(BackoffPolicy::default(), clock.now);
        let (_, kubelet) = boot(&mut sup, clock.now);
        // Make the crash count non-zero first.
        let now = clock.advance(Duration::from_millis(1));
        sup.exited(kubelet, Exit::Code(1), now).unwrap();
        sup.due(now);
        sup.started(ServiceName::Kubelet, 201, vec![], now);
        let crashes = sup.kubelet.consecutive_crashes;

        let now = clock.advance(Duration::from_millis(1));
        let action = sup.request_restart(ServiceName::Kubelet, StopReason::AdminRestart, now);
        assert_eq!(action, RestartAction::Terminate { pid: 201 });
        assert_eq!(sup.kubelet.state, ServiceState::Stopping);
        assert_eq!(
            sup.request_restart(ServiceName::Kubelet, StopReason::AdminRestart, now),
            RestartAction::AlreadyStopping { pid: 201 }
        );
        // Not dead within STOP_TIMEOUT: KILL, once.
        assert_eq!(sup.next_deadline(), Some(now.mono + STOP_TIMEOUT));
        assert!(sup.overdue_kills(now).is_empty());
        let later = clock.advance(STOP_TIMEOUT);
        assert_eq!(sup.overdue_kills(later), vec![201]);
        assert!(sup.overdue_kills(later).is_empty());
        let outcome = sup.exited(201, Exit::Signal(9), later).unwrap();
        assert!(!outcome.crashed);
        assert_eq!(outcome.restart_in, Some(Duration::ZERO));
        assert_eq!(sup.kubelet.consecutive_crashes, crashes);
        assert_eq!(sup.due(later), vec![ServiceName::Kubelet]);
    }

    #[test]
    fn every_accepted_restart_gets_one_start_and_the_129th_is_busy() {
        let mut clock = Clock::new();
        let mut sup = Supervisor::new(BackoffPolicy::default(), clock.now);
        let (_, mut kubelet) = boot(&mut sup, clock.now);
        let now = clock.advance(Duration::from_millis(1));
        let first = sup.request_restart(ServiceName::Kubelet, StopReason::AdminRestart, now);
        assert_eq!(first, RestartAction::Terminate { pid: kubelet });
        for _ in 1..MAX_PENDING_RESTARTS {
            assert_eq!(
                sup.request_restart(ServiceName::Kubelet, StopReason::AdminRestart, now),
                RestartAction::AlreadyStopping { pid: kubelet }
            );
        }
        assert_eq!(sup.kubelet.pending_restarts, MAX_PENDING_RESTARTS);
        assert_eq!(
            sup.request_restart(ServiceName::Kubelet, StopReason::AdminRestart, now),
            RestartAction::Busy
        );
        assert_eq!(sup.kubelet.pending_restarts, MAX_PENDING_RESTARTS);
        // A config change joins the stop under way and owes nothing.
        assert_eq!(
            sup.request_restart(ServiceName::Kubelet, StopReason::ConfigChanged, now),
            RestartAction::AlreadyStopping { pid: kubelet }
        );
        assert_eq!(sup.kubelet.pending_restarts, MAX_PENDING_RESTARTS);
        // Nothing else is stopped while the current one stops.
        assert!(sup.queued_restarts(now).is_empty());

        let mut starts = 0;
        loop {
            let now = clock.advance(Duration::from_millis(1));
            let outcome = sup.exited(kubelet, Exit::Code(0), now).unwrap();
            assert!(!outcome.crashed);
            assert_eq!(sup.due(now), vec![ServiceName::Kubelet]);
            kubelet += 1;
            sup.started(ServiceName::Kubelet, kubelet, vec![], now);
            starts += 1;
            assert!(sup.due(now).is_empty(), "one kubelet at a time");
            match sup.queued_restarts(now).as_slice() {
                [] => break,
                [pid] => {
                    assert_eq!(*pid, kubelet);
                    assert_eq!(sup.kubelet.state, ServiceState::Stopping);
                    assert!(sup.queued_restarts(now).is_empty(), "TERM once");
                }
                more => panic!("two stops at once: {more:?}"),
            }
            assert!(starts <= MAX_PENDING_RESTARTS, "more starts than requests");
        }
        assert_eq!(starts, MAX_PENDING_RESTARTS);
        assert_eq!(sup.kubelet.restarts, MAX_PENDING_RESTARTS);
        assert_eq!(sup.kubelet.state, ServiceState::Running);
        assert_eq!(sup.kubelet.pending_restarts, 0);
        // The queue is free again.
        let now = clock.advance(Duration::from_millis(1));
        assert_eq!(
            sup.request_restart(ServiceName::Kubelet, StopReason::AdminRestart, now),
            RestartAction::Terminate { pid: kubelet }
        );
    }

    #[test]
    fn restarts_asked_without_a_process_are_each_served_and_shutdown_drops_them() {
        let mut clock = Clock::new();
        let mut sup = Supervisor::new(BackoffPolicy::default(), clock.now);
        let (crio, _) = boot(&mut sup, clock.now);
        let now = clock.advance(Duration::from_millis(1));
        sup.exited(crio, Exit::Code(1), now).unwrap();
        // In back-off with no process: two requests, two starts.
        for _ in 0..2 {
            assert_eq!(
                sup.request_restart(ServiceName::Crio, StopReason::AdminRestart, now),
                RestartAction::StartWhenReady
            );
        }
        assert_eq!(sup.due(now), vec![ServiceName::Crio]);
        sup.started(ServiceName::Crio, 101, vec![], now);
        assert_eq!(sup.queued_restarts(now), vec![101]);
        // The shutdown owes nothing.
        sup.stop_all(now);
        assert_eq!(sup.crio.pending_restarts, 0);
        assert!(sup.queued_restarts(now).is_empty());
    }

    #[test]
    fn restart_in_backoff_skips_the_wait() {
        let mut clock = Clock::new();
        let mut sup = Supervisor::new(BackoffPolicy::default(), clock.now);
        let (crio, _) = boot(&mut sup, clock.now);
        let now = clock.advance(Duration::from_millis(1));
        sup.exited(crio, Exit::Code(1), now).unwrap();
        sup.due(now);
        sup.started(ServiceName::Crio, 101, vec![], now);
        sup.exited(101, Exit::Code(1), now).unwrap();
        assert!(sup.due(now).is_empty(), "second crash waits 500 ms");
        assert_eq!(
            sup.request_restart(ServiceName::Crio, StopReason::AdminRestart, now),
            RestartAction::StartWhenReady
        );
        assert_eq!(sup.due(now), vec![ServiceName::Crio]);
    }

    #[test]
    fn stop_all_stops_everything_and_nothing_restarts() {
        let mut clock = Clock::new();
        let mut sup = Supervisor::new(BackoffPolicy::default(), clock.now);
        let (crio, kubelet) = boot(&mut sup, clock.now);
        let now = clock.advance(Duration::from_millis(1));
        let mut pids = sup.stop_all(now);
        pids.sort();
        assert_eq!(pids, vec![crio, kubelet]);
        assert_eq!(sup.crio.state, ServiceState::Stopping);
        assert_eq!(
            sup.request_restart(ServiceName::Crio, StopReason::AdminRestart, now),
            RestartAction::ShuttingDown
        );
        sup.exited(crio, Exit::Signal(15), now).unwrap();
        sup.exited(kubelet, Exit::Code(0), now).unwrap();
        assert_eq!(sup.crio.state, ServiceState::Stopped);
        assert_eq!(sup.kubelet.state, ServiceState::Stopped);
        assert!(sup.due(clock.advance(Duration::from_secs(100))).is_empty());
        assert_eq!(sup.next_deadline(), None);
    }

    #[test]
    fn failed_start_backs_off_like_a_crash() {
        let mut clock = Clock::new();
        let mut sup = Supervisor::new(BackoffPolicy::default(), clock.now);
        let now = clock.now;
        assert_eq!(sup.due(now), vec![ServiceName::Crio]);
        let first = sup.start_failed(ServiceName::Crio, now);
        assert_eq!(first.restart_in, Some(Duration::ZERO));
        assert_eq!(sup.crio.last_exit.unwrap().code, Some(127));
        assert_eq!(sup.due(now), vec![ServiceName::Crio]);
        let second = sup.start_failed(ServiceName::Crio, clock.advance(Duration::from_millis(1)));
        assert_eq!(second.restart_in, Some(Duration::from_millis(500)));
        assert_eq!(sup.crio.restarts, 1);
    }

    /// The kubelet crash-loops for an hour of simulated time, each instance
    /// living a second: the back-off climbs to its cap and stays there,
    /// every restart is counted, nothing kept per service grows, and a
    /// stable run afterwards starts the back-off over.
    #[test]
    fn an_hour_of_crash_loop_holds_the_cap_and_a_stable_run_resets_it() {
        let mut clock = Clock::new();
        let mut sup = Supervisor::new(BackoffPolicy::default(), clock.now);
        let (_, mut kubelet) = boot(&mut sup, clock.now);
        let policy = sup.policy.clone();
        let cap = *policy.steps.last().unwrap();
        let argv = vec!["/bin/kubelet".to_string(), "--v=2".to_string()];
        let start = clock.now.mono;
        let mut delays = Vec::new();
        while clock.now.mono.duration_since(start) < Duration::from_secs(3600) {
            let now = clock.advance(Duration::from_secs(1));
            let outcome = sup.exited(kubelet, Exit::Code(1), now).unwrap();
            assert!(outcome.crashed);
            let delay = outcome.restart_in.unwrap();
            delays.push(delay);
            assert_eq!(sup.kubelet.state, ServiceState::Backoff);
            if delay > Duration::ZERO {
                // The timer is the back-off's end; nothing starts before it.
                assert_eq!(sup.next_deadline(), Some(now.mono + delay));
                let early = clock.advance(delay - Duration::from_millis(1));
                assert!(sup.due(early).is_empty(), "started before its back-off");
                clock.advance(Duration::from_millis(1));
            }
            let now = clock.now;
            assert_eq!(sup.due(now), vec![ServiceName::Kubelet]);
            kubelet += 1;
            sup.started(ServiceName::Kubelet, kubelet, argv.clone(), now);
            // Per-service state does not grow with the restarts.
            assert_eq!(sup.kubelet.argv.len(), argv.len());
        }
        let crashes = delays.len() as u32;
        // The climb (8 crashes, 69.5 s with their 1 s runs and the first
        // 30 s wait), then one crash every 31 s until the hour is up: 8 + 114.
        assert_eq!(crashes, 122);
        let climb = policy.steps.len() - 1;
        assert_eq!(&delays[..=climb], &policy.steps[..]);
        assert!(delays[climb..].iter().all(|d| *d == cap), "held at the cap");
        assert_eq!(sup.kubelet.restarts, crashes);
        assert_eq!(sup.kubelet.consecutive_crashes, crashes);
        assert_eq!(sup.crio.restarts, 0, "cri-o is left alone");
        assert_eq!(sup.crio.state, ServiceState::Running);

        // A run of stable_after: the next crash restarts at once, the one
        // after waits the first step again, not the cap.
        let now = clock.advance(policy.stable_after);
        let outcome = sup.exited(kubelet, Exit::Code(1), now).unwrap();
        assert_eq!(outcome.restart_in, Some(Duration::ZERO));
        assert_eq!(sup.kubelet.consecutive_crashes, 1);
        assert_eq!(sup.due(now), vec![ServiceName::Kubelet]);
        kubelet += 1;
        sup.started(ServiceName::Kubelet, kubelet, argv.clone(), now);
        let now = clock.advance(Duration::from_secs(1));
        let outcome = sup.exited(kubelet, Exit::Code(1), now).unwrap();
        assert_eq!(outcome.restart_in, Some(policy.steps[1]));
        assert_eq!(sup.kubelet.restarts, crashes + 1);
    }

    /// The wall clock stepped back 15 minutes and forward a day mid-loop
    /// (`epoch_ms` is what `Now::current` read): deadlines and the
    /// stable-run rule follow the monotonic clock alone, so there is no
    /// restart storm and no stuck timer; the times clients see are the
    /// wall clock as it read, never overflowing.
    #[test]
    fn wall_clock_jumps_change_no_deadline_and_overflow_nothing() {
        let mut clock = Clock::new();
        let mut sup = Supervisor::new(BackoffPolicy::default(), clock.now);
        let (_, mut kubelet) = boot(&mut sup, clock.now);
        let crash = |sup: &mut Supervisor, now: Now, pid: u32| {
            sup.exited(pid, Exit::Code(1), now)
                .unwrap()
                .restart_in
                .unwrap()
        };
        // Climb to a 2 s back-off.
        for _ in 0..4 {
            let now = clock.advance(Duration::from_millis(10));
            let delay = crash(&mut sup, now, kubelet);
            let now = clock.advance(delay);
            assert_eq!(sup.due(now), vec![ServiceName::Kubelet]);
            kubelet += 1;
            sup.started(ServiceName::Kubelet, kubelet, vec![], now);
        }
        let now = clock.advance(Duration::from_millis(10));
        let delay = crash(&mut sup, now, kubelet);
        assert_eq!(delay, Duration::from_secs(4));
        let deadline = sup.next_deadline().unwrap();

        // Back 15 minutes: the deadline is where it was, nothing is due
        // early, and it is due when the monotonic time comes.
        let mut back = clock.advance(Duration::from_millis(1));
        back.epoch_ms -= 900_000;
        assert!(sup.due(back).is_empty());
        assert_eq!(sup.next_deadline(), Some(deadline));
        let mut at = clock.advance(delay);
        at.epoch_ms -= 900_000;
        assert_eq!(sup.due(at), vec![ServiceName::Kubelet]);
        kubelet += 1;
        sup.started(ServiceName::Kubelet, kubelet, vec![], at);
        assert_eq!(sup.kubelet.since_ms, at.epoch_ms, "the wall clock as read");

        // Forward a day right after: the run was short on the monotonic
        // clock, so the back-off climbs on (no reset by the wall clock).
        let mut ahead = clock.advance(Duration::from_millis(10));
        ahead.epoch_ms += 86_400_000;
        let delay = crash(&mut sup, ahead, kubelet);
        assert_eq!(delay, Duration::from_secs(8));
        assert_eq!(sup.next_deadline(), Some(ahead.mono + delay));
        assert_eq!(sup.kubelet.next_start_ms, Some(ahead.epoch_ms + 8_000));
        assert_eq!(sup.kubelet.last_exit.unwrap().at_ms, ahead.epoch_ms);

        // A wall clock at the end of time: saturates, never wraps.
        let mut end = clock.advance(delay);
        assert_eq!(sup.due(end), vec![ServiceName::Kubelet]);
        kubelet += 1;
        sup.started(ServiceName::Kubelet, kubelet, vec![], end);
        end = clock.advance(Duration::from_millis(10));
        end.epoch_ms = u64::MAX - 5;
        let delay = crash(&mut sup, end, kubelet);
        assert_eq!(delay, Duration::from_secs(16));
        assert_eq!(sup.kubelet.next_start_ms, Some(u64::MAX));
        assert_eq!(sup.next_deadline(), Some(end.mono + delay));
        // An admin restart and its KILL deadline: monotonic too.
        let mut zero = clock.advance(delay);
        zero.epoch_ms = 0;
        assert_eq!(sup.due(zero), vec![ServiceName::Kubelet]);
        kubelet += 1;
        sup.started(ServiceName::Kubelet, kubelet, vec![], zero);
        let action = sup.request_restart(ServiceName::Kubelet, StopReason::AdminRestart, zero);
        assert_eq!(action, RestartAction::Terminate { pid: kubelet });
        assert_eq!(sup.next_deadline(), Some(zero.mono + STOP_TIMEOUT));
    }

    #[test]
    fn wall_times_convert_without_wrapping() {
        use std::time::{SystemTime, UNIX_EPOCH};
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        let now = Now {
            mono: Instant::now(),
            epoch_ms: u64::MAX - 1,
        };
        assert_eq!(now.epoch_ms_after(Duration::from_secs(1)), u64::MAX);
        let epoch_ms_of = crate::boot::milestones::epoch_ms_of;
        assert_eq!(epoch_ms_of(UNIX_EPOCH + Duration::from_millis(42)), 42);
        // A clock set before 1970 reads as 0, not as a panic or a wrap.
        assert_eq!(epoch_ms_of(UNIX_EPOCH - Duration::from_secs(10)), 0);
        if let Some(far) = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(u64::MAX / 2)) {
            assert_eq!(epoch_ms_of(far), u64::MAX);
        }
    }

    #[test]
    fn orphans_are_not_services() {
        let clock = Clock::new();
        let mut sup = Supervisor::new(BackoffPolicy::default(), clock.now);
        assert_eq!(sup.exited(4242, Exit::Code(0), clock.now), None);
    }
}
