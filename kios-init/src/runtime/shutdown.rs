//! The graceful node shutdown as a state machine: its status (phase, mode,
//! who asked, force) and the stages it walks. Pure: the runtime's owner
//! feeds it the facts ([`Facts`]) and the time after every event, and
//! performs the [`Action`]s it returns; it never waits or polls on its own.
//!
//! Phases, in order:
//! 1. `draining`: the legacy byte 0x01 goes to every legacy or silent client
//!    (the patched kubelet) and a `shutdown` event to watchers; init waits
//!    for `continue-shutdown` (0x02), at most the kubelet's
//!    shutdownGracePeriod plus [`DRAIN_MARGIN`]. Skipped when no client that
//!    could be the kubelet is connected, or with `force`; cut short when the
//!    last such client disconnects.
//! 2. `stopping`: services are no longer restarted; TERM to every process,
//!    KILL to what is left after [`STOP_GRACE`], and every child reaped.
//!    `force` on the first request skips only the kubelet's grace: processes
//!    still get their TERM grace (the client that asked can print its reply
//!    and exit; containers can close their files). A `force` added by a later
//!    request, while a shutdown is already under way, cuts this grace too.
//! 3. `unmounting`: the system socket and its connections close (watchers
//!    have seen this phase), the log writer closes its files, then every
//!    filesystem is unmounted children first (read-only remount as the
//!    fallback).
//! 4. `syncing`, 5. `final`: sync, then reboot(2) to power off or restart.
//!
//! A second request with `force` skips the waits still ahead. Every phase is
//! logged with how long the previous one took, and shown in `status`/`watch`.
//! Each blocking step ([`Job`]) runs off the event loop and has a bound: a
//! hung disk or writer does not keep the node from powering off.

use std::time::{Duration, Instant};

use kios_protocol::{PowerMode, ShutdownPhase, ShutdownStatus};

/// Added to the kubelet's shutdownGracePeriod before init stops waiting.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(5);
/// The longest grace period init honours (a typo like `30000h` in the
/// kubelet's config must not keep a node from powering off for years).
pub const MAX_DRAIN: Duration = Duration::from_secs(24 * 3600);
/// Between TERM and KILL for every process.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long init waits for the KILLed processes to be reaped.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
/// Loop turns given to the client tasks to write what is queued (the
/// `unmounting` event) before they are told to close.
pub const FLUSH_TURNS: u8 = 4;
/// While processes are stopping, how often init looks again without an
/// event (processes that are not init's descendants raise no SIGCHLD here).
pub const RECHECK: Duration = Duration::from_millis(100);
/// Bound on closing the system socket's connections.
pub const SOCKET_CLOSE_WAIT: Duration = Duration::from_millis(500);
/// Bound on the log writer's final flush.
pub const LOG_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Bound on unmounting and on syncing (each): a hung disk must not keep the
/// node from powering off.
pub const DISK_WAIT: Duration = Duration::from_secs(30);

/// What a shutdown request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// A new shutdown began (in `draining`).
    Started,
    /// One was in progress; `force` now skips its remaining waits.
    Forced,
    /// One was in progress already; nothing changed.
    AlreadyInProgress,
}

/// The shutdown: what handlers and `status` see, and the stage the owner
/// drives.
#[derive(Debug)]
pub struct Shutdown {
    status: Option<ShutdownStatus>,
    continued: bool,
    /// `force` arrived after the shutdown had begun: skip every wait left.
    hurry: bool,
    phase_started: Option<Instant>,
    stage: Stage,
    /// The blocking steps that finished (reported by the owner).
    done: Vec<Job>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            status: None,
            continued: false,
            hurry: false,
            phase_started: None,
            stage: Stage::Idle,
            done: Vec::new(),
        }
    }

    /// The wire view; `None` unless a shutdown is in progress.
    /// The wall clock was stepped by `delta_ms`: the shown start of the
    /// shutdown and of its phase follow (see `State::clock_set`); its
    /// bounds are on the monotonic clock already.
    pub fn wall_clock_moved(&mut self, delta_ms: i64) {
        if let Some(status) = self.status.as_mut() {
            status.since_ms = crate::runtime::clock::moved(status.since_ms, delta_ms);
            status.phase_since_ms = crate::runtime::clock::moved(status.phase_since_ms, delta_ms);
        }
    }

    pub fn status(&self) -> Option<&ShutdownStatus> {
        self.status.as_ref()
    }

    pub fn is_active(&self) -> bool {
        self.status.is_some()
    }

    pub fn phase(&self) -> Option<ShutdownPhase> {
        self.status.as_ref().map(|s| s.phase)
    }

    pub fn mode(&self) -> Option<PowerMode> {
        self.status.as_ref().map(|s| s.mode)
    }

    pub fn force(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.force)
    }

    /// A later request added `force`: the remaining waits are skipped,
    /// the TERM grace of the stopping phase included.
    pub fn hurry(&self) -> bool {
        self.hurry
    }

    pub fn continued(&self) -> bool {
        self.continued
    }

    /// A shutdown request from a signal, the power button or the socket.
    /// The first one decides the mode; later ones can only add `force`.
    pub fn request(
        &mut self,
        mode: PowerMode,
        force: bool,
        requested_by: &str,
        now_ms: u64,
    ) -> Requested {
        match self.status.as_mut() {
            None => {
                self.status = Some(ShutdownStatus {
                    phase: ShutdownPhase::Draining,
                    mode,
                    since_ms: now_ms,
                    requested_by: requested_by.to_string(),
                    force,
                    phase_since_ms: now_ms,
                });
                self.phase_started = Some(Instant::now());
                Requested::Started
            }
            Some(status) if force && !status.force => {
                status.force = true;
                self.hurry = true;
                Requested::Forced
            }
            Some(_) => Requested::AlreadyInProgress,
        }
    }

    /// `continue-shutdown` / 0x02. `None` when no shutdown is in progress
    /// (nothing changes: the kubelet sends it when refreshing its lock).
    pub fn continue_shutdown(&mut self) -> Option<ShutdownPhase> {
        let phase = self.phase()?;
        if phase == ShutdownPhase::Draining && !self.continued {
            self.continued = true;
        }
        Some(phase)
    }

    /// Moves to `phase`; returns how long the previous phase took.
    pub fn enter(&mut self, phase: ShutdownPhase, now_ms: u64) -> Option<Duration> {
        self.enter_at(phase, Instant::now(), now_ms)
    }

    fn enter_at(&mut self, phase: ShutdownPhase, at: Instant, now_ms: u64) -> Option<Duration> {
        let status = self.status.as_mut()?;
        status.phase = phase;
        status.phase_since_ms = now_ms;
        let took = self
            .phase_started
            .map(|started| at.saturating_duration_since(started));
        self.phase_started = Some(at);
        took
    }
}

/// How the draining wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// The kubelet sent continue-shutdown.
    Continued,
    /// `force`.
    Forced,
    /// Every logind delay inhibitor lock (the upstream kubelet's) was
    /// released, and no legacy client is left to wait for.
    Released,
    /// No client that could be the kubelet was (or is still) connected.
    NoKubelet,
    /// The grace period plus margin ran out.
    TimedOut,
}

impl DrainEnd {
    pub fn describe(self) -> &'static str {
        match self {
            DrainEnd::Continued => "the kubelet finished its graceful node shutdown",
            DrainEnd::Forced => "forced: not waiting for the kubelet",
            DrainEnd::Released => "every logind inhibitor lock was released: the kubelet drained",
            DrainEnd::NoKubelet => "no kubelet connected to the system socket: nothing to wait for",
            DrainEnd::TimedOut => {
                "the kubelet did not answer within its grace period: going on without it"
            }
        }
    }
}

/// logind delay inhibitor locks during a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Locks {
    /// Held now.
    pub held: usize,
    /// Held when the drain began.
    pub at_start: usize,
}

/// Decides whether draining is over, given the facts at this moment. The
/// legacy kubelet (continue-shutdown, or no candidate left) and the
/// upstream one (no delay lock left) must both be done.
pub fn drain_end(
    shutdown: &Shutdown,
    kubelet_candidates: usize,
    locks: Locks,
    deadline_passed: bool,
) -> Option<DrainEnd> {
    let legacy_done = shutdown.continued() || kubelet_candidates == 0;
    if legacy_done && locks.held == 0 {
        Some(if shutdown.continued() {
            DrainEnd::Continued
        } else if locks.at_start > 0 {
            DrainEnd::Released
        } else {
            DrainEnd::NoKubelet
        })
    } else if shutdown.force() {
        Some(DrainEnd::Forced)
    } else if deadline_passed {
        Some(DrainEnd::TimedOut)
    } else {
        None
    }
}

/// A blocking step of the shutdown: the owner runs it off the event loop
/// and reports it done with [`Shutdown::job_done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// The log writer flushes and closes its files (they live on the data
    /// partition).
    CloseLogs,
    /// Every filesystem, children first.
    Unmount,
    /// sync(2).
    Sync,
}

impl Job {
    fn bound(self) -> Duration {
        match self {
            Job::CloseLogs => LOG_CLOSE_WAIT,
            Job::Unmount | Job::Sync => DISK_WAIT,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Job::CloseLogs => "closing the log files",
            Job::Unmount => "unmounting",
            Job::Sync => "sync",
        }
    }
}

/// What the owner must do for the shutdown now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Draining began: tell the kubelet (the legacy byte and logind's
    /// PrepareForShutdown(true)) and log the bound and the locks held.
    Drain { bound: Duration, locks: usize },
    /// The phase changed: tell watchers.
    PhaseChanged,
    /// Stop restarting services, then TERM every process.
    StopServices,
    /// KILL every process left.
    KillAll,
    /// Stop accepting and tell every client to close.
    CloseSocket,
    /// Start a blocking step.
    Run(Job),
    /// reboot(2): power off or restart.
    Reboot(PowerMode),
}

/// Where in its walk the shutdown is. Stages without a deadline or a
/// condition are passed through at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Idle,
    Draining {
        deadline: Instant,
        /// Delay inhibitor locks held when draining began.
        locks_at_start: usize,
    },
    EnterStopping,
    Terminating {
        deadline: Instant,
    },
    Killing {
        deadline: Instant,
    },
    EnterUnmounting,
    /// Loop turns left before the socket closes.
    Flushing {
        turns: u8,
    },
    ClosingSocket {
        deadline: Instant,
    },
    Running {
        job: Job,
        deadline: Instant,
    },
    EnterSyncing,
    EnterFinal,
    /// reboot(2) was called.
    Ended,
}

/// What the shutdown asks of the rest of the node when deciding.
pub trait Facts {
    /// Connected clients that could be the kubelet.
    fn kubelet_candidates(&self) -> usize;
    /// Whether a process other than init still matters.
    fn processes_left(&self) -> bool;
    /// Connected clients.
    fn clients_left(&self) -> usize;
    /// The kubelet's shutdownGracePeriod (read when draining begins).
    fn kubelet_grace(&self) -> Duration;
    /// logind delay inhibitor locks held (the upstream kubelet's).
    fn delay_locks_held(&self) -> usize;
}

impl Shutdown {
    /// The next step, given the facts and the time now: call again until it
    /// returns `None`, performing each action in between.
    pub fn advance(&mut self, facts: &dyn Facts, now: Instant, now_ms: u64) -> Option<Action> {
        let mode = self.mode()?;
        match self.stage {
            Stage::Idle => {
                let bound = facts.kubelet_grace().min(MAX_DRAIN) + DRAIN_MARGIN;
                let locks = facts.delay_locks_held();
                self.stage = Stage::Draining {
                    deadline: now + bound,
                    locks_at_start: locks,
                };
                Some(Action::Drain { bound, locks })
            }
            Stage::Draining {
                deadline,
                locks_at_start,
            } => {
                let locks = Locks {
                    held: facts.delay_locks_held(),
                    at_start: locks_at_start,
                };
                let end = drain_end(self, facts.kubelet_candidates(), locks, now >= deadline)?;
                match end {
                    DrainEnd::TimedOut => crate::kwarn!("shutdown: {}", end.describe()),
                    _ => crate::kinfo!("shutdown: {}", end.describe()),
                }
                self.stage = Stage::EnterStopping;
                Some(self.change_phase(ShutdownPhase::Stopping, now, now_ms))
            }
            Stage::EnterStopping => {
                self.stage = Stage::Terminating {
                    deadline: now + STOP_GRACE,
                };
                Some(Action::StopServices)
            }
            Stage::Terminating { deadline } => {
                let left = facts.processes_left();
                if left && !self.hurry && now < deadline {
                    return None;
                }
                if left {
                    if self.hurry {
                        crate::kinfo!("shutdown: forced: sending SIGKILL to every process left");
                    } else {
                        crate::kwarn!(
                            "shutdown: processes still run {} s after SIGTERM; sending SIGKILL to every process left",
                            STOP_GRACE.as_secs()
                        );
                    }
                    self.stage = Stage::Killing {
                        deadline: now + KILL_WAIT,
                    };
                    return Some(Action::KillAll);
                }
                self.stage = Stage::EnterUnmounting;
                self.advance(facts, now, now_ms)
            }
            Stage::Killing { deadline } => {
                let left = facts.processes_left();
                if left && now < deadline {
                    return None;
                }
                if left {
                    crate::kerr!("shutdown: processes are left after SIGKILL; going on");
                }
                self.stage = Stage::EnterUnmounting;
                self.advance(facts, now, now_ms)
            }
            Stage::EnterUnmounting => {
                // The log files first, they live on the data partition; then
                // the system socket: the listener and every accepted
                // connection hold a reference on /run. Watchers see
                // `unmounting` before their connection closes.
                self.stage = Stage::Flushing { turns: FLUSH_TURNS };
                Some(self.change_phase(ShutdownPhase::Unmounting, now, now_ms))
            }
            Stage::Flushing { turns } => {
                if turns > 0 {
                    return None;
                }
                self.stage = Stage::ClosingSocket {
                    deadline: now + SOCKET_CLOSE_WAIT,
                };
                Some(Action::CloseSocket)
            }
            Stage::ClosingSocket { deadline } => {
                if facts.clients_left() > 0 && now < deadline {
                    return None;
                }
                Some(self.run(Job::CloseLogs, now))
            }
            Stage::Running { job, deadline } => {
                if self.done.contains(&job) {
                    self.done.clear();
                } else if now >= deadline {
                    crate::kerr!(
                        "shutdown: {} did not finish within {} s; going on",
                        job.describe(),
                        job.bound().as_secs()
                    );
                } else {
                    return None;
                }
                match job {
                    Job::CloseLogs => Some(self.run(Job::Unmount, now)),
                    Job::Unmount => {
                        self.stage = Stage::EnterSyncing;
                        Some(self.change_phase(ShutdownPhase::Syncing, now, now_ms))
                    }
                    Job::Sync => {
                        self.stage = Stage::EnterFinal;
                        Some(self.change_phase(ShutdownPhase::Final, now, now_ms))
                    }
                }
            }
            Stage::EnterSyncing => Some(self.run(Job::Sync, now)),
            Stage::EnterFinal => {
                crate::kinfo!(
                    "shutdown: {}",
                    match mode {
                        PowerMode::Poweroff => "powering off",
                        PowerMode::Reboot => "rebooting",
                    }
                );
                self.stage = Stage::Ended;
                Some(Action::Reboot(mode))
            }
            Stage::Ended => None,
        }
    }

    /// Moves to `phase` and logs how long the last one took.
    fn change_phase(&mut self, phase: ShutdownPhase, now: Instant, now_ms: u64) -> Action {
        let previous = self.phase();
        if let (Some(took), Some(prev)) = (self.enter_at(phase, now, now_ms), previous) {
            crate::kinfo!("shutdown: {prev} took {} ms; now {phase}", took.as_millis());
        }
        Action::PhaseChanged
    }

    fn run(&mut self, job: Job, now: Instant) -> Action {
        self.stage = Stage::Running {
            job,
            deadline: now + job.bound(),
        };
        Action::Run(job)
    }

    /// A blocking step finished (late ones, after their bound, are ignored).
    pub fn job_done(&mut self, job: Job) {
        if matches!(self.stage, Stage::Running { job: running, .. } if running == job) {
            self.done.push(job);
        }
    }

    /// Whether the shutdown waits for the event loop to turn (client tasks
    /// writing what is queued) rather than for an event or a time.
    pub fn wants_turn(&self) -> bool {
        matches!(self.stage, Stage::Flushing { turns } if turns > 0)
    }

    /// The event loop turned once.
    pub fn turn_passed(&mut self) {
        if let Stage::Flushing { turns } = &mut self.stage {
            *turns = turns.saturating_sub(1);
        }
    }

    /// When to look again without an event.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        match self.stage {
            Stage::Draining { deadline, .. }
            | Stage::ClosingSocket { deadline }
            | Stage::Running { deadline, .. } => Some(deadline),
            Stage::Terminating { deadline } | Stage::Killing { deadline } => {
                Some(deadline.min(now + RECHECK))
            }
            Stage::Idle if self.is_active() => Some(now),
            Stage::Idle
            | Stage::EnterStopping
            | Stage::EnterUnmounting
            | Stage::Flushing { .. }
            | Stage::EnterSyncing
            | Stage::EnterFinal
            | Stage::Ended => None,
        }
    }

    /// Whether reboot(2) was asked for.
    pub fn ended(&self) -> bool {
        self.stage == Stage::Ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn force_on_the_first_request_keeps_the_term_grace_a_later_one_does_not() {
        let mut first = Shutdown::new();
        first.request(PowerMode::Poweroff, true, "socket", 1);
        assert!(first.force(), "the kubelet's grace is skipped");
        assert!(!first.hurry(), "processes still get their TERM grace");

        let mut later = Shutdown::new();
        later.request(PowerMode::Poweroff, false, "SIGTERM", 1);
        assert!(!later.hurry());
        later.request(PowerMode::Poweroff, true, "socket", 2);
        assert!(later.force() && later.hurry(), "every wait left is skipped");
    }

    #[test]
    fn first_request_decides_mode_later_ones_only_force() {
        let mut s = Shutdown::new();
        assert!(!s.is_active());
        assert_eq!(s.continue_shutdown(), None, "no shutdown: nothing changes");
        assert!(!s.continued());
        assert_eq!(
            s.request(PowerMode::Reboot, false, "ctrl-alt-del", 10),
            Requested::Started
        );
        assert_eq!(s.phase(), Some(ShutdownPhase::Draining));
        assert_eq!(
            s.request(PowerMode::Poweroff, false, "SIGTERM", 11),
            Requested::AlreadyInProgress
        );
        assert_eq!(s.mode(), Some(PowerMode::Reboot));
        assert_eq!(
            s.request(PowerMode::Poweroff, true, "socket", 12),
            Requested::Forced
        );
        assert!(s.force());
        assert_eq!(
            s.request(PowerMode::Poweroff, true, "socket", 13),
            Requested::AlreadyInProgress
        );
        let status = s.status().unwrap();
        assert_eq!(status.requested_by, "ctrl-alt-del");
        assert_eq!(status.since_ms, 10);
    }

    #[test]
    fn continue_only_counts_while_draining() {
        let mut s = Shutdown::new();
        s.request(PowerMode::Poweroff, false, "SIGTERM", 1);
        assert_eq!(s.continue_shutdown(), Some(ShutdownPhase::Draining));
        assert!(s.continued());
        s.enter(ShutdownPhase::Stopping, 2);
        assert_eq!(s.continue_shutdown(), Some(ShutdownPhase::Stopping));
        assert_eq!(s.status().unwrap().phase_since_ms, 2);
    }

    #[test]
    fn drain_ends_for_the_right_reason() {
        let mut s = Shutdown::new();
        s.request(PowerMode::Poweroff, false, "SIGTERM", 1);
        let none = Locks::default();
        let held = Locks {
            held: 1,
            at_start: 1,
        };
        let released = Locks {
            held: 0,
            at_start: 1,
        };
        assert_eq!(drain_end(&s, 1, none, false), None);
        assert_eq!(drain_end(&s, 0, none, false), Some(DrainEnd::NoKubelet));
        assert_eq!(drain_end(&s, 1, none, true), Some(DrainEnd::TimedOut));
        // The upstream kubelet's lock alone, then released.
        assert_eq!(drain_end(&s, 0, held, false), None);
        assert_eq!(drain_end(&s, 0, held, true), Some(DrainEnd::TimedOut));
        assert_eq!(drain_end(&s, 0, released, false), Some(DrainEnd::Released));
        // Both kubelets: the legacy one answered, the lock still held.
        let mut both = Shutdown::new();
        both.request(PowerMode::Poweroff, false, "SIGTERM", 1);
        both.continue_shutdown();
        assert_eq!(drain_end(&both, 1, held, false), None);
        assert_eq!(
            drain_end(&both, 1, released, false),
            Some(DrainEnd::Continued)
        );
        s.request(PowerMode::Poweroff, true, "socket", 2);
        assert_eq!(drain_end(&s, 1, none, false), Some(DrainEnd::Forced));
        assert_eq!(drain_end(&s, 0, held, false), Some(DrainEnd::Forced));
        s.continue_shutdown();
        assert_eq!(drain_end(&s, 1, none, true), Some(DrainEnd::Continued));
    }

    /// Facts for the machine alone: one kubelet candidate, processes left.
    struct Kubelet;

    impl Facts for Kubelet {
        fn kubelet_candidates(&self) -> usize {
            1
        }
        fn processes_left(&self) -> bool {
            true
        }
        fn clients_left(&self) -> usize {
            1
        }
        fn kubelet_grace(&self) -> Duration {
            Duration::from_secs(30)
        }
        fn delay_locks_held(&self) -> usize {
            0
        }
    }

    /// The upstream kubelet alone: no legacy client, `held` delay locks.
    struct Upstream {
        held: std::cell::Cell<usize>,
    }

    impl Facts for Upstream {
        fn kubelet_candidates(&self) -> usize {
            0
        }
        fn processes_left(&self) -> bool {
            true
        }
        fn clients_left(&self) -> usize {
            0
        }
        fn kubelet_grace(&self) -> Duration {
            Duration::from_secs(30)
        }
        fn delay_locks_held(&self) -> usize {
            self.held.get()
        }
    }

    /// Every action until the machine waits.
    fn actions(s: &mut Shutdown, now: Instant) -> Vec<Action> {
        std::iter::from_fn(|| s.advance(&Kubelet, now, 0)).collect()
    }

    #[test]
    fn force_and_continue_end_the_drain_at_once() {
        let t0 = Instant::now();
        let mut s = Shutdown::new();
        assert!(actions(&mut s, t0).is_empty(), "no shutdown: nothing to do");
        s.request(PowerMode::Poweroff, false, "x", 1);
        let bound = Duration::from_secs(30) + DRAIN_MARGIN;
        assert_eq!(actions(&mut s, t0), vec![Action::Drain { bound, locks: 0 }]);
        assert_eq!(s.next_wake(t0), Some(t0 + bound));
        s.continue_shutdown();
        assert_eq!(
            actions(&mut s, t0),
            vec![Action::PhaseChanged, Action::StopServices]
        );
        assert_eq!(s.phase(), Some(ShutdownPhase::Stopping));

        let mut forced = Shutdown::new();
        forced.request(PowerMode::Poweroff, false, "x", 1);
        actions(&mut forced, t0);
        forced.request(PowerMode::Poweroff, true, "socket", 2);
        assert_eq!(
            actions(&mut forced, t0),
            vec![Action::PhaseChanged, Action::StopServices, Action::KillAll],
            "a later force skips the TERM grace too"
        );
    }

    /// The wall clock jumps while the node shuts down: every bound is on
    /// the monotonic clock; `since_ms` and `phase_since_ms` show the wall
    /// clock as it read.
    #[test]
    fn wall_clock_jumps_do_not_move_the_shutdown_bounds() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let run = |s: &mut Shutdown, at: Instant, now_ms: u64| -> Vec<Action> {
            std::iter::from_fn(|| s.advance(&Kubelet, at, now_ms)).collect()
        };
        let mut s = Shutdown::new();
        s.request(PowerMode::Poweroff, false, "SIGTERM", 1_000_000);
        let bound = Duration::from_secs(30) + DRAIN_MARGIN;
        assert_eq!(
            run(&mut s, t0, 1_000_000),
            vec![Action::Drain { bound, locks: 0 }]
        );
        // Back to 1970, then to the end of time: still draining.
        assert!(run(&mut s, t0 + ms(1), 0).is_empty());
        assert!(run(&mut s, t0 + bound - ms(1), u64::MAX).is_empty());
        assert_eq!(s.phase(), Some(ShutdownPhase::Draining));
        assert_eq!(s.next_wake(t0 + ms(1)), Some(t0 + bound));
        // The bound, on the monotonic clock.
        assert_eq!(
            run(&mut s, t0 + bound, 5),
            vec![Action::PhaseChanged, Action::StopServices]
        );
        let status = s.status().unwrap();
        assert_eq!((status.since_ms, status.phase_since_ms), (1_000_000, 5));
        // The TERM grace too: KILL exactly STOP_GRACE later.
        let term = t0 + bound;
        assert_eq!(s.next_wake(term), Some(term + RECHECK));
        assert!(run(&mut s, term + STOP_GRACE - ms(1), u64::MAX).is_empty());
        assert_eq!(run(&mut s, term + STOP_GRACE, 0), vec![Action::KillAll]);
        let killed = term + STOP_GRACE;
        assert!(run(&mut s, killed + KILL_WAIT - ms(1), 7).is_empty());
        assert_eq!(
            run(&mut s, killed + KILL_WAIT, 8),
            vec![Action::PhaseChanged]
        );
        assert_eq!(s.phase(), Some(ShutdownPhase::Unmounting));
    }

    /// A held delay lock, drained three ways: released, the bound, force.
    #[test]
    fn a_held_delay_lock_ends_the_drain_when_released_bound_or_forced() {
        let t0 = Instant::now();
        let bound = Duration::from_secs(30) + DRAIN_MARGIN;
        let start = |facts: &Upstream| {
            let mut s = Shutdown::new();
            s.request(PowerMode::Poweroff, false, "power button", 1);
            let first: Vec<_> = std::iter::from_fn(|| s.advance(facts, t0, 0)).collect();
            assert_eq!(first, vec![Action::Drain { bound, locks: 1 }]);
            s
        };
        let run = |s: &mut Shutdown, facts: &Upstream, at: Instant| -> Vec<Action> {
            std::iter::from_fn(|| s.advance(facts, at, 0)).collect()
        };
        let stopping = vec![Action::PhaseChanged, Action::StopServices];

        // Released: waits while held, ends the turn the lock goes.
        let facts = Upstream {
            held: std::cell::Cell::new(1),
        };
        let mut s = start(&facts);
        let later = t0 + Duration::from_secs(5);
        assert!(
            run(&mut s, &facts, later).is_empty(),
            "the lock holds the drain"
        );
        assert_eq!(s.phase(), Some(ShutdownPhase::Draining));
        facts.held.set(0);
        assert_eq!(run(&mut s, &facts, later), stopping);
        assert_eq!(s.phase(), Some(ShutdownPhase::Stopping));

        // Never released: the bound ends it.
        let facts = Upstream {
            held: std::cell::Cell::new(1),
        };
        let mut s = start(&facts);
        assert_eq!(s.next_wake(t0), Some(t0 + bound));
        assert!(run(&mut s, &facts, t0 + bound - Duration::from_millis(1)).is_empty());
        assert_eq!(run(&mut s, &facts, t0 + bound), stopping);

        // force: no wait for the lock.
        let mut s = start(&facts);
        s.request(PowerMode::Poweroff, true, "socket", 2);
        assert_eq!(
            run(&mut s, &facts, t0),
            vec![Action::PhaseChanged, Action::StopServices, Action::KillAll]
        );
    }
}
