//! The graceful node shutdown: its state (phase, mode, who asked, force)
//! and the driver that walks the phases.
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

use std::rc::Rc;
use std::time::{Duration, Instant};

use kios_protocol::{PowerMode, ShutdownPhase, ShutdownStatus};
use tokio::sync::Notify;

use crate::runtime::logind::BusCommand;
use crate::runtime::state::Shared;
use crate::runtime::supervisor::Now;

/// Added to the kubelet's shutdownGracePeriod before init stops waiting.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(5);
/// The longest grace period init honours (a typo like `30000h` in the
/// kubelet's config must not keep a node from powering off for years).
pub const MAX_DRAIN: Duration = Duration::from_secs(24 * 3600);
/// Between TERM and KILL for every process.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long init waits for the KILLed processes to be reaped.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
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

/// The shutdown state shared by handlers, signals and the driver.
#[derive(Debug)]
pub struct Shutdown {
    status: Option<ShutdownStatus>,
    continued: bool,
    /// `force` arrived after the shutdown had begun: skip every wait left.
    hurry: bool,
    phase_started: Option<Instant>,
    /// Wakes the driver: continue-shutdown, force, a client gone.
    pub progress: Rc<Notify>,
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
            progress: Rc::new(Notify::new()),
        }
    }

    /// The wire view; `None` unless a shutdown is in progress.
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
                self.progress.notify_one();
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
            self.progress.notify_one();
        }
        Some(phase)
    }

    /// Moves to `phase`; returns how long the previous phase took.
    pub fn enter(&mut self, phase: ShutdownPhase, now_ms: u64) -> Option<Duration> {
        let status = self.status.as_mut()?;
        status.phase = phase;
        status.phase_since_ms = now_ms;
        let took = self.phase_started.map(|at| at.elapsed());
        self.phase_started = Some(Instant::now());
        took
    }
}

/// How the driver's draining wait ended.
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

/// Moves the shutdown to `phase`, logs how long the last one took, tells
/// watchers.
fn enter(shared: &Shared, phase: ShutdownPhase) {
    let mut state = shared.borrow_mut();
    let now = Now::current();
    let previous = state.shutdown.phase();
    if let Some(took) = state.shutdown.enter(phase, now.epoch_ms) {
        match previous {
            Some(prev) => {
                crate::kinfo!("shutdown: {prev} took {} ms; now {phase}", took.as_millis())
            }
            None => crate::kinfo!("shutdown: now {phase}"),
        }
    }
    state.shutdown_changed();
}

/// Waits until `done` holds, `progress` or `reaped` fire and it is checked
/// again, or `deadline` passes. Returns whether `done` held.
async fn wait_until(
    shared: &Shared,
    reaped: &Notify,
    deadline: tokio::time::Instant,
    done: impl Fn(&Shared) -> bool,
) -> bool {
    let progress = shared.borrow().shutdown.progress.clone();
    loop {
        if done(shared) {
            return true;
        }
        tokio::select! {
            _ = progress.notified() => {}
            _ = reaped.notified() => {}
            // A safety net for exits that raise no SIGCHLD here (processes
            // that are not descendants of init, e.g. in another namespace).
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::time::sleep_until(deadline) => return done(shared),
        }
    }
}

fn to_sys_mode(mode: PowerMode) -> crate::sys::PowerMode {
    match mode {
        PowerMode::Poweroff => crate::sys::PowerMode::PowerOff,
        PowerMode::Reboot => crate::sys::PowerMode::Restart,
    }
}

/// Runs a blocking step on the blocking pool with a bound; `false` if it
/// did not finish in time (it is left running; the node goes on).
async fn blocking_step<F: FnOnce() + Send + 'static>(what: &str, bound: Duration, step: F) -> bool {
    match tokio::time::timeout(bound, tokio::task::spawn_blocking(step)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            crate::kerr!("shutdown: {what} failed: {e}");
            false
        }
        Err(_) => {
            crate::kerr!(
                "shutdown: {what} did not finish within {} s; going on",
                bound.as_secs()
            );
            false
        }
    }
}

/// Stops accepting and closes every client, waiting (bounded) for their
/// tasks to write what is queued and let go of their sockets.
async fn close_socket(shared: &Shared) {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    {
        let mut state = shared.borrow_mut();
        state.stop_serving.notify_one();
        state.clients.close_all();
        if let Some(bus) = state.bus.take() {
            bus.send(BusCommand::Stop);
        }
    }
    let deadline = tokio::time::Instant::now() + SOCKET_CLOSE_WAIT;
    while !shared.borrow().clients.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Walks the shutdown phases to the end: the machine powers off or
/// reboots. `reaped` is notified by the runtime after every reap.
pub async fn drive(shared: Shared, reaped: Rc<Notify>) -> ! {
    let Some(mode) = shared.borrow().shutdown.mode() else {
        // Never spawned without a shutdown; still, power off rather than hang.
        crate::kerr!("bug: shutdown driver started without a shutdown");
        crate::sys::final_reboot(crate::sys::PowerMode::PowerOff);
    };

    // 1. Draining.
    let (sent, grace, locks_at_start) = {
        let mut state = shared.borrow_mut();
        let sent = state.clients.broadcast_legacy_shutdown();
        // The upstream kubelet: PrepareForShutdown(true) on the system bus.
        if let Some(bus) = &state.bus {
            if !bus.send(BusCommand::PrepareForShutdown(true)) {
                crate::kwarn!("shutdown: the system bus did not take PrepareForShutdown");
            }
        }
        let config = state.paths.etc_kubernetes.join("config.yaml");
        let grace = crate::boot::grace::kubelet_shutdown_grace(&config);
        (sent, grace, state.inhibitors.len())
    };
    let bound = grace.min(MAX_DRAIN) + DRAIN_MARGIN;
    crate::kinfo!(
        "shutdown: draining: shutdown event sent to {sent} client(s), {locks_at_start} logind inhibitor lock(s) held; waiting up to {} ms for the kubelet",
        bound.as_millis()
    );
    let deadline = tokio::time::Instant::now() + bound;
    let facts = |shared: &Shared, deadline_passed: bool| {
        let state = shared.borrow();
        let candidates = state.clients.could_be_kubelet(state.kubelet_pid());
        let locks = Locks {
            held: state.inhibitors.len(),
            at_start: locks_at_start,
        };
        drain_end(&state.shutdown, candidates, locks, deadline_passed)
    };
    wait_until(&shared, &reaped, deadline, |shared| {
        facts(shared, false).is_some()
    })
    .await;
    let end = facts(&shared, true).unwrap_or(DrainEnd::TimedOut);
    match end {
        DrainEnd::TimedOut => crate::kwarn!("shutdown: {}", end.describe()),
        _ => crate::kinfo!("shutdown: {}", end.describe()),
    }

    // 2. Stopping.
    enter(&shared, ShutdownPhase::Stopping);
    {
        let mut state = shared.borrow_mut();
        state.supervisor.stop_all(Now::current());
        for name in kios_protocol::ServiceName::ALL {
            state.service_changed(name);
        }
    }
    let nothing_left = |_: &Shared| !crate::sys::any_process_left();
    if let Err(e) = crate::sys::kill_all(nix::sys::signal::Signal::SIGTERM) {
        crate::kwarn!("shutdown: SIGTERM to every process: {e}");
    }
    let term_deadline = tokio::time::Instant::now() + STOP_GRACE;
    let all_gone = wait_until(&shared, &reaped, term_deadline, |shared| {
        shared.borrow().shutdown.hurry() || nothing_left(shared)
    })
    .await
        && nothing_left(&shared);
    if !all_gone {
        crate::kinfo!("shutdown: sending SIGKILL to every process left");
        if let Err(e) = crate::sys::kill_all(nix::sys::signal::Signal::SIGKILL) {
            crate::kwarn!("shutdown: SIGKILL to every process: {e}");
        }
        let kill_deadline = tokio::time::Instant::now() + KILL_WAIT;
        if !wait_until(&shared, &reaped, kill_deadline, nothing_left).await {
            crate::kerr!("shutdown: processes are left after SIGKILL; going on");
        }
    }

    // 3. Unmounting: the log files first, they live on the data partition;
    // then the system socket: the listener and every accepted connection
    // hold a reference on /run. Watchers have seen `unmounting` by then.
    enter(&shared, ShutdownPhase::Unmounting);
    close_socket(&shared).await;
    let writer = shared.borrow_mut().logs.close_writer();
    if let Some(handle) = writer {
        blocking_step("closing the log files", LOG_CLOSE_WAIT, move || {
            let _ = handle.join();
        })
        .await;
    }
    blocking_step("unmounting", DISK_WAIT, || {
        let report = crate::boot::teardown::unmount_all(&crate::sys::LinuxSys);
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
    .await;

    // 4. Syncing.
    enter(&shared, ShutdownPhase::Syncing);
    blocking_step("sync", DISK_WAIT, crate::boot::teardown::sync_all).await;

    // 5. Final.
    enter(&shared, ShutdownPhase::Final);
    crate::kinfo!(
        "shutdown: {}",
        match mode {
            PowerMode::Poweroff => "powering off",
            PowerMode::Reboot => "rebooting",
        }
    );
    crate::sys::final_reboot(to_sys_mode(mode))
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

    #[test]
    fn force_and_continue_wake_the_driver() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut s = Shutdown::new();
        s.request(PowerMode::Poweroff, false, "x", 1);
        let progress = s.progress.clone();
        s.continue_shutdown();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), progress.notified())
                .await
                .unwrap();
        });
    }
}
