//! The one owner of `waitpid(-1)`: on every SIGCHLD the runtime drains every
//! exited child here, supervised or not (orphans reparented to PID 1 are
//! reaped silently; the caller maps pids to services).
//!
//! Nothing else in kios-init may wait for a child: a second waiter would
//! steal exit statuses from the supervisor.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It called exit with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// The shell convention: the code, or 128 + the signal number.
    pub fn as_shell_code(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// One reaped process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: u32,
    pub exit: Exit,
}

/// The most children reaped in one drain before yielding back to the event
/// loop; the signal source drains again at once when a drain hit it
/// (sources.rs: no SIGCHLD may be left to wake it).
pub const MAX_REAP_PER_DRAIN: usize = 4096;

/// Reaps every child that has exited, without blocking, and returns them in
/// the order reaped. Errors other than "no children" are returned after what
/// was reaped so far, for the caller to log; they never stop init.
pub fn reap_all(out: &mut Vec<Reaped>) -> Result<(), Errno> {
    for _ in 0..MAX_REAP_PER_DRAIN {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return Ok(()),
            Ok(WaitStatus::Exited(pid, code)) => out.push(Reaped {
                pid: pid.as_raw() as u32,
                exit: Exit::Code(code),
            }),
            Ok(WaitStatus::Signaled(pid, signal, _core)) => out.push(Reaped {
                pid: pid.as_raw() as u32,
                exit: Exit::Signal(signal as i32),
            }),
            // Stop/continue/ptrace reports are not exits; keep draining.
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => return Ok(()),
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// `waitpid(-1)` in a test binary would steal the children of other tests
    /// running in parallel, so the real check runs in a fresh copy of this
    /// test binary that runs only [`reaps_in_isolation`].
    const INNER: &str = "KIOS_REAPER_TEST_INNER";

    #[test]
    fn exit_codes_and_signals_are_told_apart() {
        let exe = std::env::current_exe().unwrap();
        let out = Command::new(exe)
            .args([
                "--exact",
                "runtime::reaper::tests::reaps_in_isolation",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INNER, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("REAPED-OK"), "inner test did not run: {text}");
    }

    #[test]
    fn reaps_in_isolation() {
        if std::env::var_os(INNER).is_none() {
            return;
        }
        let a = Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap()
            .id();
        let b = Command::new("/bin/sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .unwrap()
            .id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = Vec::new();
        while found.len() < 2 && Instant::now() < deadline {
            reap_all(&mut found).unwrap();
            std::thread::yield_now();
        }
        found.sort_by_key(|r| r.pid);
        let mut want = vec![
            Reaped {
                pid: a,
                exit: Exit::Code(7),
            },
            Reaped {
                pid: b,
                exit: Exit::Signal(9),
            },
        ];
        want.sort_by_key(|r| r.pid);
        assert_eq!(found, want);
        // Nothing left: a further drain is a clean no-op.
        let mut more = Vec::new();
        assert_eq!(reap_all(&mut more), Ok(()));
        assert!(more.is_empty());
        println!("REAPED-OK");
    }

    #[test]
    fn shell_codes() {
        assert_eq!(Exit::Signal(9).as_shell_code(), 137);
        assert_eq!(Exit::Code(3).as_shell_code(), 3);
        assert_eq!(Exit::Code(3).to_string(), "exit code 3");
        assert_eq!(Exit::Signal(15).to_string(), "signal 15");
    }
}
