//! When a process exec'd or a task exited, as the kernel says it: the
//! process connector (netlink, `NETLINK_CONNECTOR`, the `cn_proc`
//! multicast group) sends an event for every exec and every exit with the
//! kernel's `CLOCK_MONOTONIC` time of it.
//!
//! The budgets bench times "new kubelet running" with it: the instant is
//! the kernel's, not when a watcher happened to look, and waiting for it
//! costs no CPU (a host that polls `/proc` every few microseconds takes
//! most of one core of a 2-core machine from the init it measures). Needs
//! `CAP_NET_ADMIN` in the initial namespaces and a kernel with
//! `CONFIG_PROC_EVENTS`; [`ProcEvents::open`] says why when it cannot.
//!
//! One socket per measurement: opened before the clock starts, so its
//! buffer holds only the events of one window; an overflow (`ENOBUFS`) is
//! an error, never a missed exec taken for a late one.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{bind, recv, send, setsockopt, sockopt, MsgFlags, NetlinkAddr};
use nix::time::{clock_gettime, ClockId};

const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;
/// Events are small; 8 MiB holds far more than any window of the bench.
const RCVBUF: usize = 8 << 20;

/// What the kernel reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The process exec'd.
    Exec,
    /// One of its tasks (threads) exited; the process is gone once the
    /// last one did.
    Exit,
}

/// An exec or an exit the kernel reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    /// The process (thread group).
    pub pid: i32,
    /// The task (thread) itself.
    pub tid: i32,
    /// `CLOCK_MONOTONIC` at the event, in nanoseconds.
    pub at_ns: u64,
}

/// A subscription to the kernel's exec and exit events.
pub struct ProcEvents {
    fd: OwnedFd,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (the clock of [`Event::at_ns`]
/// and of `std::time::Instant` on Linux).
pub fn monotonic_ns() -> u64 {
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64,
        // Cannot fail for this clock on Linux; 0 makes any figure absurd.
        Err(_) => 0,
    }
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

impl ProcEvents {
    /// Subscribes; every exec and exit from now on is reported.
    pub fn open() -> io::Result<ProcEvents> {
        // socket2: nix's protocol list has no NETLINK_CONNECTOR.
        let socket = socket2::Socket::new(
            socket2::Domain::from(libc::AF_NETLINK),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::from(NETLINK_CONNECTOR)),
        )?;
        let fd = OwnedFd::from(socket);
        // Forced past rmem_max (root); the plain size if that is refused.
        if setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &RCVBUF);
        }
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, CN_IDX_PROC),
        )?;
        let events = ProcEvents { fd };
        events.control(PROC_CN_MCAST_LISTEN)?;
        Ok(events)
    }

    fn control(&self, op: u32) -> io::Result<()> {
        let message = control_message(op);
        send(
            std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            &message,
            MsgFlags::empty(),
        )?;
        Ok(())
    }

    /// The next exec or exit, or `None` once `deadline` passed.
    pub fn next(&mut self, deadline: Instant) -> io::Result<Option<Event>> {
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = left.max(Duration::from_millis(1)).as_millis().min(60_000) as u16;
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            let fd = std::os::fd::AsRawFd::as_raw_fd(&self.fd);
            let n = match recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(Errno::ENOBUFS) => return Err(io::Error::other(
                    "the process connector's events overflowed the socket buffer: events were lost",
                )),
                Err(e) => return Err(e.into()),
            };
            if let Some(event) = parse_event(&buf[..n]) {
                return Ok(Some(event));
            }
        }
    }
}

impl Drop for ProcEvents {
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

/// An exec or exit event from one datagram (`None` for every other
/// event, and for anything too short to be one).
fn parse_event(datagram: &[u8]) -> Option<Event> {
    // struct proc_event: what, cpu, timestamp_ns, then (exec's and exit's
    // alike) process_pid and process_tgid.
    let event = datagram.get(NLMSG_HDR + CN_MSG_HDR..)?;
    let idx = u32_at(datagram, NLMSG_HDR)?;
    if idx != CN_IDX_PROC {
        return None;
    }
    let kind = match u32_at(event, 0)? {
        PROC_EVENT_EXEC => Kind::Exec,
        PROC_EVENT_EXIT => Kind::Exit,
        _ => return None,
    };
    let at_ns = u64::from_ne_bytes(event.get(8..16)?.try_into().ok()?);
    let tid = u32_at(event, 16)?;
    let tgid = u32_at(event, 20)?;
    Some(Event {
        kind,
        pid: tgid as i32,
        tid: tid as i32,
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
    fn an_exec_or_exit_gives_its_process_and_time_and_nothing_else_is_one() {
        let exec = event(PROC_EVENT_EXEC, 123_456_789, 41, 40);
        assert_eq!(
            parse_event(&exec),
            Some(Event {
                kind: Kind::Exec,
                pid: 40,
                tid: 41,
                at_ns: 123_456_789
            })
        );
        assert_eq!(
            parse_event(&event(PROC_EVENT_EXIT, 5, 41, 40)).map(|e| (e.kind, e.pid, e.tid)),
            Some((Kind::Exit, 40, 41))
        );
        // fork (0x1) and uid (0x4) events are neither.
        assert_eq!(parse_event(&event(0x1, 5, 41, 40)), None);
        assert_eq!(parse_event(&event(0x4, 5, 41, 40)), None);
        // Cut short anywhere: nothing, no panic.
        for len in 0..exec.len() {
            assert_eq!(parse_event(&exec[..len]), None, "cut at {len}");
        }
    }

    /// The real connector: a child's exec is reported, at a time between
    /// the spawn and the child's end (the bench runs as root; so do these
    /// tests).
    #[test]
    fn the_kernel_reports_a_childs_exec_and_exit_with_their_times() {
        let mut events =
            ProcEvents::open().expect("the process connector (root, CONFIG_PROC_EVENTS)");
        let before = monotonic_ns();
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        let pid = child.id() as i32;
        assert!(child.wait().expect("true ends").success());
        let after = monotonic_ns();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Other processes of the machine exec and exit too: ours are the
        // ones with the child's pid, its exec and then its exit.
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let event = events
                .next(deadline)
                .expect("events")
                .expect("the exec and exit of true within 5 s");
            if event.pid == pid {
                seen.push(event);
            }
        }
        assert_eq!((seen[0].kind, seen[1].kind), (Kind::Exec, Kind::Exit));
        for event in &seen {
            assert!(
                event.at_ns >= before && event.at_ns <= after,
                "{event:?} outside {before}..{after}"
            );
        }
        assert!(seen[0].at_ns <= seen[1].at_ns);
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
