//! Noticing a step of the wall clock: a timerfd on `CLOCK_REALTIME`
//! armed with `TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET` at the end of
//! the kernel's time range. It never expires; its read fails with
//! `ECANCELED` whenever the clock is set (settimeofday, clock_settime,
//! `date -s`, an NTP step), and is re-armed after each.
//!
//! Straight libc (nix's timerfd is behind its `time` feature, which
//! kios-init does not otherwise need). The runtime's reader is
//! `runtime::sources::clock_steps`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The kernel's `TFD_TIMER_CANCEL_ON_SET` (not in every libc release).
const TFD_TIMER_CANCEL_ON_SET: libc::c_int = 1 << 1;

/// What a read of the watch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// The wall clock was set (the read failed with ECANCELED).
    Stepped,
    /// The far-future timer expired: the clock passed the end of the
    /// kernel's range. Never seen in practice.
    Expired,
}

/// The timerfd (non-blocking, close-on-exec).
#[derive(Debug)]
pub struct ClockWatch(OwnedFd);

impl ClockWatch {
    /// Creates and arms the watch.
    pub fn new() -> io::Result<ClockWatch> {
        // SAFETY: timerfd_create takes a clock id and flags and returns a
        // new descriptor or -1.
        let raw = unsafe {
            libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let watch = ClockWatch(unsafe { OwnedFd::from_raw_fd(raw) });
        watch.arm()?;
        Ok(watch)
    }

    /// (Re-)arms the timer: absolute expiry at the largest time the kernel
    /// takes (it clamps any later second to its own end, past year 2262),
    /// cancelled on every set of the clock.
    pub fn arm(&self) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                // time_t is a C long on Linux (libc's alias is deprecated
                // on musl, where it may widen).
                tv_sec: libc::c_long::MAX as _,
                tv_nsec: 0,
            },
        };
        // SAFETY: the descriptor is a timerfd owned by self; `spec` is a
        // valid itimerspec for the call; the old value is not asked for.
        let rc = unsafe {
            libc::timerfd_settime(
                self.0.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Reads the timer without blocking: `WouldBlock` when nothing
    /// happened.
    pub fn read(&self) -> io::Result<Tick> {
        let mut expirations = [0u8; 8];
        // SAFETY: the buffer is writable for its 8 bytes, what a timerfd
        // read writes; the descriptor is non-blocking.
        let n = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                expirations.as_mut_ptr().cast(),
                expirations.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ECANCELED) => Ok(Tick::Stepped),
                _ => Err(e),
            };
        }
        Ok(Tick::Expired)
    }
}

impl AsRawFd for ClockWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Registers the watch with the reactor (inside the tokio runtime).
pub fn async_clock_watch(watch: ClockWatch) -> io::Result<tokio::io::unix::AsyncFd<ClockWatch>> {
    // SAFETY: `ClockWatch` owns its descriptor (closed only on drop), so the
    // fd stays open and the same for the life of the AsyncFd that owns it.
    unsafe { tokio::io::unix::AsyncFd::register(watch).map_err(io::Error::from) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Setting the clock needs CAP_SYS_TIME (the VM test does it); here:
    /// the watch arms, and reads nothing while the clock is not set.
    #[test]
    fn an_armed_watch_reads_nothing_until_the_clock_is_set() {
        let watch = ClockWatch::new().expect("timerfd");
        let e = watch.read().expect_err("nothing yet");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        watch.arm().expect("re-arm");
        assert_eq!(
            watch.read().expect_err("still nothing").kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
