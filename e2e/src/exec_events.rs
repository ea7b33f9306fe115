//! When a process exec'd, as the kernel says it: the process connector
//! (netlink, `NETLINK_CONNECTOR`, the `cn_proc` multicast group) sends an
//! event for every exec with the kernel's `CLOCK_MONOTONIC` time of it.
//!
//! The budgets bench times "new kubelet running" with it: the instant is
//! the kernel's, not when a watcher happened to look, and waiting for it
//! costs no CPU (a host that polls `/proc` every few microseconds takes
//! most of one core of a 2-core machine from the init it measures). Needs
//! `CAP_NET_ADMIN` in the initial namespaces and a kernel with
//! `CONFIG_PROC_EVENTS`; [`ExecEvents::open`] says why when it cannot.
//!
//! One socket per measurement: opened before the clock starts, so its
//! buffer holds only the events of one window; an overflow (`ENOBUFS`) is
//! an error, never a missed exec taken for a late one.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::libc;

const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
const PROC_EVENT_EXEC: u32 = 0x2;
const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;
/// Events are small; 8 MiB holds far more than any window of the bench.
const RCVBUF: libc::c_int = 8 << 20;

/// An exec the kernel reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exec {
    /// The process (thread group) that exec'd.
    pub pid: i32,
    /// `CLOCK_MONOTONIC` at the exec, in nanoseconds.
    pub at_ns: u64,
}

/// A subscription to the kernel's exec events.
pub struct ExecEvents {
    fd: OwnedFd,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (the clock of [`Exec::at_ns`]
/// and of `std::time::Instant` on Linux).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call fills; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An `Instant` on the same nanosecond scale as [`monotonic_ns`] (both
/// read `CLOCK_MONOTONIC`; the error is the time between two reads).
pub fn instant_ns(at: Instant) -> u64 {
    let (now, now_ns) = (Instant::now(), monotonic_ns());
    match now.checked_duration_since(at) {
        Some(ago) => now_ns.saturating_sub(ago.as_nanos() as u64),
        None => now_ns + at.duration_since(now).as_nanos() as u64,
    }
}

impl ExecEvents {
    /// Subscribes; every exec from now on is reported.
    pub fn open() -> io::Result<ExecEvents> {
        // SAFETY: plain system call; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Forced past rmem_max (root); the plain size if that is refused.
        for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: the option value is a c_int that outlives the call.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    &RCVBUF as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: `addr` is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let events = ExecEvents { fd };
        events.control(PROC_CN_MCAST_LISTEN)?;
        Ok(events)
    }

    fn control(&self, op: u32) -> io::Result<()> {
        let message = control_message(op);
        // SAFETY: the buffer is valid for its length; the socket is bound.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                message.as_ptr() as *const libc::c_void,
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next exec, or `None` once `deadline` passed.
    pub fn next(&mut self, deadline: Instant) -> io::Result<Option<Exec>> {
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.max(Duration::from_millis(1)).as_millis().min(60_000) as libc::c_int;
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if ready == 0 {
                continue;
            }
            // SAFETY: the buffer is valid for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        return Err(io::Error::other(
                            "the process connector's events overflowed the socket buffer: execs were lost",
                        ))
                    }
                    _ => return Err(e),
                }
            }
            if let Some(exec) = parse_exec(&buf[..n as usize]) {
                return Ok(Some(exec));
            }
        }
    }
}

impl Drop for ExecEvents {
    fn drop(&mut self) {
        // The kernel counts listeners; closing alone does not uncount one.
        let _ = self.control(PROC_CN_MCAST_IGNORE);
    }
}

/// The subscription request: a netlink header, a connector header for the
/// process connector, and the operation.
fn control_message(op: u32) -> Vec<u8> {
    let total = NLMSG_HDR + CN_MSG_HDR + 4;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes()); // nlmsg_len
    m.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes()); // nlmsg_type
    m.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
    m.extend_from_slice(&std::process::id().to_ne_bytes()); // nlmsg_pid
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes()); // cn_msg.id.idx
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes()); // cn_msg.id.val
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // ack
    m.extend_from_slice(&4u16.to_ne_bytes()); // len
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&op.to_ne_bytes());
    m
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// An exec event from one datagram (`None` for every other event, and for
/// anything too short to be one).
fn parse_exec(datagram: &[u8]) -> Option<Exec> {
    // struct proc_event: what, cpu, timestamp_ns, then exec's
    // process_pid and process_tgid.
    let event = datagram.get(NLMSG_HDR + CN_MSG_HDR..)?;
    let idx = u32_at(datagram, NLMSG_HDR)?;
    if idx != CN_IDX_PROC || u32_at(event, 0)? != PROC_EVENT_EXEC {
        return None;
    }
    let at_ns = u64::from_ne_bytes(event.get(8..16)?.try_into().ok()?);
    let tgid = u32_at(event, 20)?;
    Some(Exec {
        pid: tgid as i32,
        at_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(what: u32, at_ns: u64, pid: u32, tgid: u32) -> Vec<u8> {
        let mut d = control_message(0);
        d.truncate(NLMSG_HDR + CN_MSG_HDR);
        d.extend_from_slice(&what.to_ne_bytes());
        d.extend_from_slice(&1u32.to_ne_bytes());
        d.extend_from_slice(&at_ns.to_ne_bytes());
        d.extend_from_slice(&pid.to_ne_bytes());
        d.extend_from_slice(&tgid.to_ne_bytes());
        d
    }

    #[test]
    fn an_exec_gives_its_process_and_time_and_nothing_else_is_one() {
        let exec = event(PROC_EVENT_EXEC, 123_456_789, 41, 40);
        assert_eq!(
            parse_exec(&exec),
            Some(Exec {
                pid: 40,
                at_ns: 123_456_789
            })
        );
        // fork (0x1) and exit (0x80000000) events are not execs.
        assert_eq!(parse_exec(&event(0x1, 5, 41, 40)), None);
        assert_eq!(parse_exec(&event(0x8000_0000, 5, 41, 40)), None);
        // Cut short anywhere: nothing, no panic.
        for len in 0..exec.len() {
            assert_eq!(parse_exec(&exec[..len]), None, "cut at {len}");
        }
    }

    /// The real connector: a child's exec is reported, at a time between
    /// the spawn and the child's end (the bench runs as root; so do these
    /// tests).
    #[test]
    fn the_kernel_reports_a_childs_exec_with_its_time() {
        let mut events =
            ExecEvents::open().expect("the process connector (root, CONFIG_PROC_EVENTS)");
        let before = monotonic_ns();
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        let pid = child.id() as i32;
        assert!(child.wait().expect("true ends").success());
        let after = monotonic_ns();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Other processes of the machine exec too: ours is the one with
        // the child's pid.
        let exec = loop {
            let exec = events
                .next(deadline)
                .expect("events")
                .expect("the exec of true within 5 s");
            if exec.pid == pid {
                break exec;
            }
        };
        assert!(
            exec.at_ns >= before && exec.at_ns <= after,
            "exec at {} outside {before}..{after}",
            exec.at_ns
        );
    }

    #[test]
    fn an_instant_maps_onto_the_monotonic_clock() {
        let before = monotonic_ns();
        let at = Instant::now();
        let after = monotonic_ns();
        let ns = instant_ns(at);
        // Within the reads around it (a little slack for the two reads
        // instant_ns makes itself).
        assert!(
            ns + 50_000 >= before && ns <= after + 50_000,
            "{before} {ns} {after}"
        );
        let later = instant_ns(at + Duration::from_millis(10));
        assert!(later.abs_diff(ns + 10_000_000) < 50_000, "{ns} {later}");
    }
}
