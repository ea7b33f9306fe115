//! Who sent init's shutdown signals (SIGTERM, SIGPWR, SIGINT). tokio's
//! signal streams say only that a signal came; the kernel also says from
//! whom (`si_pid`, `si_uid` of the siginfo), and the audit wants it. An
//! extra action on each of these signals stores the sender in an atomic
//! (the only thing a signal handler may safely do here); the owner takes it
//! when it handles the signal's event.
//!
//! The action is registered before tokio's handler for the same signal, so
//! within one delivery it runs first: by the time tokio wakes the loop the
//! sender is stored. Two signals of one kind before the owner looks are one
//! event for tokio; the sender kept is the last one's.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// The signals whose senders are kept.
pub const WATCHED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGPWR, libc::SIGINT];

/// Per watched signal: 0 when nothing is stored, else `KNOWN | [KERNEL] |
/// uid << 32 | pid`.
static SENDERS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
const KNOWN: u64 = 1 << 63;
const KERNEL: u64 = 1 << 62;
/// `si_code` of a signal the kernel itself sent (Ctrl-Alt-Del).
const SI_KERNEL: libc::c_int = 0x80;

/// Who sent a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalSender {
    /// The sender's pid in init's PID namespace: 0 for the kernel, or for a
    /// process outside that namespace (a sandbox's host).
    pub pid: u32,
    pub uid: u32,
    /// Sent by the kernel, not by kill(2) (Ctrl-Alt-Del's SIGINT).
    pub kernel: bool,
}

fn slot(signo: libc::c_int) -> Option<&'static AtomicU64> {
    WATCHED
        .iter()
        .position(|&s| s == signo)
        .map(|i| &SENDERS[i])
}

fn pack(pid: libc::pid_t, uid: libc::uid_t, kernel: bool) -> u64 {
    // uid keeps 30 bits here: (uid_t)-1 and its neighbours are no users.
    let kernel = if kernel { KERNEL } else { 0 };
    KNOWN | kernel | (u64::from(uid & 0x3fff_ffff) << 32) | u64::from(pid.max(0) as u32)
}

fn unpack(v: u64) -> Option<SignalSender> {
    (v & KNOWN != 0).then_some(SignalSender {
        pid: v as u32,
        uid: ((v >> 32) & 0x3fff_ffff) as u32,
        kernel: v & KERNEL != 0,
    })
}

/// Adds the recording action to every watched signal. Call before tokio
/// registers its own handlers (see the module's words on order).
pub fn watch() -> io::Result<()> {
    (0..WATCHED.len()).try_for_each(watch_one)
}

fn watch_one(i: usize) -> io::Result<()> {
    let action = move |info: &libc::siginfo_t| {
        // SAFETY: these signals are sent by kill(2) or by the kernel
        // (Ctrl-Alt-Del), whose siginfo carries the kill fields; an
        // atomic store is async-signal-safe.
        let (pid, uid) = unsafe { (info.si_pid(), info.si_uid()) };
        let kernel = info.si_code == SI_KERNEL;
        SENDERS[i].store(pack(pid, uid, kernel), Ordering::Release);
    };
    // SAFETY: the action only reads the siginfo and stores an atomic: no
    // allocation, no lock, nothing that is not async-signal-safe.
    unsafe { signal_hook_registry::register_sigaction(WATCHED[i], action) }?;
    Ok(())
}

/// Who sent the last `signo` not yet taken; `None` when nothing was
/// recorded.
pub fn take(signo: libc::c_int) -> Option<SignalSender> {
    unpack(slot(signo)?.swap(0, Ordering::Acquire))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_pid_and_uid_and_nothing_is_not_a_sender() {
        let sender = |pid, uid, kernel| Some(SignalSender { pid, uid, kernel });
        assert_eq!(unpack(pack(4242, 1000, false)), sender(4242, 1000, false));
        assert_eq!(unpack(pack(0, 0, true)), sender(0, 0, true), "the kernel");
        assert_eq!(unpack(pack(0, 0, false)), sender(0, 0, false));
        assert_eq!(unpack(pack(-5, 7, false)), sender(0, 7, false));
        assert_eq!(unpack(0), None);
    }

    #[test]
    fn a_signal_to_ourselves_records_our_pid_and_uid() {
        // SIGPWR alone: the test harness does not use it (SIGINT and
        // SIGTERM keep their default for the test run). Once an action is
        // registered, signal-hook-registry's handler replaces the default
        // (terminate).
        watch_one(1).unwrap();
        assert_eq!(take(libc::SIGPWR), None);
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGPWR).unwrap();
        let me = std::process::id();
        let uid = nix::unistd::getuid().as_raw();
        let sender = SignalSender {
            pid: me,
            uid,
            kernel: false,
        };
        assert_eq!(take(libc::SIGPWR), Some(sender));
        assert_eq!(take(libc::SIGPWR), None, "taken once");
        assert_eq!(take(libc::SIGHUP), None, "not watched");
    }
}
