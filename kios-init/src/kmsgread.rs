//! Reading the kernel log for `logs kernel|init`: the parser of /dev/kmsg
//! records, the two sources (the device, or with `kios.log=stderr` the
//! bounded in-memory ring of init's own lines, since a sandbox has no
//! kernel log of its own), the bounded backlog read and the follower.
//!
//! Nothing here runs on the event loop: the backlog is read on the
//! blocking pool, a follower is a thread of its own (at most
//! [`MAX_FOLLOWERS`]) that hands records over a bounded channel with
//! `try_send`. A follower never waits for its client: what does not fit is
//! counted, and what the kernel overwrote before it was read (EPIPE from
//! /dev/kmsg) shows as a gap in the sequence numbers; both are reported as
//! one `kmsg-missed` count.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use kios_protocol::KmsgRecord;
use tokio::sync::mpsc;

/// Largest record /dev/kmsg hands out (the kernel's limit is below 8 KiB).
const RECORD_BUF: usize = 8192;
/// Most records one backlog read looks at (the kernel ring holds far fewer).
pub const MAX_BACKLOG_RECORDS: usize = 200_000;
/// Simultaneous `logs kernel|init follow` clients.
pub const MAX_FOLLOWERS: usize = 4;
/// Records queued for one follower's client.
pub const FOLLOW_QUEUE: usize = 256;
/// How often an idle follower checks that its client is still there.
const IDLE_CHECK: Duration = Duration::from_millis(500);
/// Records of init's own lines kept in memory with `kios.log=stderr`.
pub const MEMORY_RECORDS: usize = 1024;
/// How init's lines start.
pub const INIT_PREFIX: &str = "kiOS:";

/// Parses one /dev/kmsg record: `prio,seq,usec,flags[,...];message\n`
/// followed by optional ` KEY=VALUE` continuation lines (dropped).
pub fn parse_record(raw: &[u8]) -> Option<KmsgRecord> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text.split_once(';')?;
    let mut fields = head.split(',');
    let prio: u64 = fields.next()?.parse().ok()?;
    let seq: u64 = fields.next()?.parse().ok()?;
    let usec: u64 = fields.next()?.parse().ok()?;
    let message = rest.split('\n').next().unwrap_or("").to_string();
    Some(KmsgRecord {
        seq,
        level: (prio & 7) as u8,
        usec,
        init: message.starts_with(INIT_PREFIX),
        message,
    })
}

/// Which records a request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    pub init_only: bool,
    /// Only records at or after this many microseconds since boot.
    pub min_usec: Option<u64>,
}

impl Filter {
    pub fn wants(&self, r: &KmsgRecord) -> bool {
        (!self.init_only || r.init) && self.min_usec.is_none_or(|min| r.usec >= min)
    }
}

/// What a source gives next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Record(KmsgRecord),
    /// Records were overwritten before they were read (EPIPE); the reader
    /// goes on with the oldest one left.
    Overwritten,
    /// Nothing more for now.
    End,
}

/// A kernel log to read: the device or the in-memory ring.
pub trait Source: Send {
    fn next(&mut self) -> io::Result<Next>;
    /// Waits (at most `timeout`) for a record; false on timeout.
    fn wait(&mut self, timeout: Duration) -> bool;
    /// Microseconds since boot now (for `since`).
    fn now_usec(&self) -> u64;
}

/// /dev/kmsg opened for reading, non-blocking: each read is one record.
pub struct Device {
    file: File,
    buf: Vec<u8>,
}

impl Device {
    pub fn open(path: &Path) -> io::Result<Device> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        Ok(Device {
            file,
            buf: vec![0; RECORD_BUF],
        })
    }
}

impl Source for Device {
    fn next(&mut self) -> io::Result<Next> {
        loop {
            match self.file.read(&mut self.buf) {
                Ok(0) => return Ok(Next::End),
                // A record that does not parse is skipped, not fatal.
                Ok(n) => match parse_record(&self.buf[..n]) {
                    Some(r) => return Ok(Next::Record(r)),
                    None => continue,
                },
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => return Ok(Next::Overwritten),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Next::End),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn wait(&mut self, timeout: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as i32)
            .unwrap_or(PollTimeout::ZERO);
        matches!(poll(&mut fds, ms), Ok(n) if n > 0)
    }

    fn now_usec(&self) -> u64 {
        uptime_usec().unwrap_or(0)
    }
}

fn uptime_usec() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let us = crate::decimal::scaled(text.split_whitespace().next()?, 1_000_000)?;
    u64::try_from(us).ok()
}

/// Init's own lines kept in memory (`kios.log=stderr`), numbered and
/// stamped like kernel records; oldest dropped first.
pub struct MemoryLog {
    inner: Mutex<MemoryInner>,
    grew: Condvar,
}

struct MemoryInner {
    start: Option<Instant>,
    next_seq: u64,
    records: VecDeque<KmsgRecord>,
}

/// The process-wide ring the logger fills with `kios.log=stderr`.
pub static MEMORY: MemoryLog = MemoryLog::new();

impl MemoryLog {
    pub const fn new() -> MemoryLog {
        MemoryLog {
            inner: Mutex::new(MemoryInner {
                start: None,
                next_seq: 0,
                records: VecDeque::new(),
            }),
            grew: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one line (already bounded by the logger) at `level`.
    pub fn push(&self, level: u8, message: String) {
        let mut m = self.lock();
        let start = *m.start.get_or_insert_with(Instant::now);
        let seq = m.next_seq;
        m.next_seq += 1;
        if m.records.len() >= MEMORY_RECORDS {
            m.records.pop_front();
        }
        m.records.push_back(KmsgRecord {
            seq,
            level: level & 7,
            usec: start.elapsed().as_micros() as u64,
            init: message.starts_with(INIT_PREFIX),
            message,
        });
        drop(m);
        self.grew.notify_all();
    }

    /// The messages kept, oldest first (for tests to find a line).
    #[cfg(test)]
    pub fn messages(&self) -> Vec<String> {
        self.lock()
            .records
            .iter()
            .map(|r| r.message.clone())
            .collect()
    }

    /// Epoch ms of the ring's time zero (init's first line).
    fn zero_epoch_ms(&self) -> u64 {
        let elapsed = self
            .lock()
            .start
            .map_or(0, |s| s.elapsed().as_millis() as u64);
        epoch_ms().saturating_sub(elapsed)
    }

    fn now_usec(&self) -> u64 {
        self.lock()
            .start
            .map_or(0, |s| s.elapsed().as_micros() as u64)
    }
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog::new()
    }
}

/// A reader of a [`MemoryLog`], from its oldest record on.
pub struct MemoryReader {
    log: &'static MemoryLog,
    next_seq: u64,
}

impl MemoryReader {
    pub fn new(log: &'static MemoryLog) -> MemoryReader {
        MemoryReader { log, next_seq: 0 }
    }
}

impl Source for MemoryReader {
    fn next(&mut self) -> io::Result<Next> {
        let m = self.log.lock();
        let Some(first) = m.records.front().map(|r| r.seq) else {
            return Ok(Next::End);
        };
        if self.next_seq < first {
            // Like /dev/kmsg: say so once, then go on with the oldest.
            let overwritten = self.next_seq > 0;
            self.next_seq = first;
            if overwritten {
                return Ok(Next::Overwritten);
            }
        }
        let index = (self.next_seq - first) as usize;
        match m.records.get(index) {
            Some(r) => {
                self.next_seq += 1;
                Ok(Next::Record(r.clone()))
            }
            None => Ok(Next::End),
        }
    }

    fn wait(&mut self, timeout: Duration) -> bool {
        let m = self.log.lock();
        if m.next_seq > self.next_seq {
            return true;
        }
        let (m, _) = self
            .log
            .grew
            .wait_timeout(m, timeout)
            .unwrap_or_else(|e| e.into_inner());
        m.next_seq > self.next_seq
    }

    fn now_usec(&self) -> u64 {
        self.log.now_usec()
    }
}

fn epoch_ms() -> u64 {
    crate::boot::milestones::epoch_ms()
}

/// Opens the kernel log a request reads, and the wall time of its zero.
pub fn open(kmsg: Option<&Path>) -> io::Result<(Box<dyn Source>, u64)> {
    match kmsg {
        Some(path) => {
            let device = Device::open(path)?;
            let boot_ms = epoch_ms().saturating_sub(device.now_usec() / 1000);
            Ok((Box::new(device), boot_ms))
        }
        None => Ok((Box::new(MemoryReader::new(&MEMORY)), MEMORY.zero_epoch_ms())),
    }
}

/// The last `lines` records `filter` wants, oldest first, and the sequence
/// number the source is at (for a follower to go on from). Bounded by
/// [`MAX_BACKLOG_RECORDS`].
pub fn backlog(
    source: &mut dyn Source,
    filter: Filter,
    lines: usize,
) -> io::Result<Vec<KmsgRecord>> {
    let mut kept: VecDeque<KmsgRecord> = VecDeque::with_capacity(lines.min(1024));
    for _ in 0..MAX_BACKLOG_RECORDS {
        match source.next()? {
            Next::Record(r) if filter.wants(&r) => {
                if kept.len() >= lines {
                    kept.pop_front();
                }
                kept.push_back(r);
            }
            Next::Record(_) | Next::Overwritten => {}
            Next::End => break,
        }
    }
    Ok(kept.into())
}

/// A message from a follower to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    Record(KmsgRecord),
    Missed(u64),
}

static FOLLOWERS: AtomicUsize = AtomicUsize::new(0);

/// A claim on one of the [`MAX_FOLLOWERS`] follower slots.
pub struct FollowerSlot(());

impl FollowerSlot {
    pub fn claim() -> Option<FollowerSlot> {
        FOLLOWERS
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_FOLLOWERS).then_some(n + 1)
            })
            .ok()
            .map(|_| FollowerSlot(()))
    }
}

impl Drop for FollowerSlot {
    fn drop(&mut self) {
        FOLLOWERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Follows `source` after `last_seq` until the receiver is gone: what
/// `filter` wants goes to `tx` with `try_send`; records that do not fit and
/// records the kernel overwrote are counted and sent as one
/// [`Followed::Missed`] as soon as there is room.
pub fn follow(
    mut source: Box<dyn Source>,
    filter: Filter,
    mut last_seq: Option<u64>,
    tx: mpsc::Sender<Followed>,
) {
    let mut missed: u64 = 0;
    loop {
        if tx.is_closed() {
            return;
        }
        match source.next() {
            Ok(Next::Record(r)) => {
                if let Some(last) = last_seq {
                    if r.seq <= last {
                        continue;
                    }
                    missed += r.seq - last - 1;
                }
                last_seq = Some(r.seq);
                if !filter.wants(&r) {
                    continue;
                }
                if missed > 0 {
                    match tx.try_send(Followed::Missed(missed)) {
                        Ok(()) => missed = 0,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            missed += 1;
                            continue;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                match tx.try_send(Followed::Record(r)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => missed += 1,
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Ok(Next::Overwritten) => {}
            Ok(Next::End) => {
                if missed > 0 && tx.try_send(Followed::Missed(missed)).is_ok() {
                    missed = 0;
                }
                source.wait(IDLE_CHECK);
            }
            Err(e) => {
                crate::kwarn!("logs follow: cannot read the kernel log: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_marks_init_lines() {
        let r = parse_record(b"6,1234,5678901,-;kiOS: cri-o started (pid 97)\n").unwrap();
        assert_eq!(r.seq, 1234);
        assert_eq!(r.level, 6);
        assert_eq!(r.usec, 5_678_901);
        assert!(r.init);
        assert_eq!(r.message, "kiOS: cri-o started (pid 97)");
        // Facility bits are dropped; continuation lines are not the message.
        let r = parse_record(b"30,7,1,c,more;usb 1-1: new device\n SUBSYSTEM=usb\n").unwrap();
        assert_eq!(r.level, 6);
        assert!(!r.init);
        assert_eq!(r.message, "usb 1-1: new device");
        for bad in [&b""[..], b"6,1;x", b"a,b,c;x", b"no separator"] {
            assert_eq!(parse_record(bad), None, "{bad:?}");
        }
    }

    /// A scripted source: records by sequence number, an EPIPE where told.
    struct Script {
        items: VecDeque<Next>,
    }

    impl Source for Script {
        fn next(&mut self) -> io::Result<Next> {
            Ok(self.items.pop_front().unwrap_or(Next::End))
        }
        fn wait(&mut self, _: Duration) -> bool {
            std::thread::sleep(Duration::from_millis(1));
            false
        }
        fn now_usec(&self) -> u64 {
            0
        }
    }

    fn rec(seq: u64, message: &str) -> Next {
        Next::Record(KmsgRecord {
            seq,
            level: 6,
            usec: seq * 10,
            init: message.starts_with(INIT_PREFIX),
            message: message.to_string(),
        })
    }

    #[test]
    fn backlog_keeps_the_last_lines_the_filter_wants() {
        let mut s = Script {
            items: (0..50)
                .map(|i| rec(i, if i % 2 == 0 { "kiOS: x" } else { "kernel" }))
                .collect(),
        };
        let filter = Filter {
            init_only: true,
            min_usec: Some(100),
        };
        let got = backlog(&mut s, filter, 3).unwrap();
        let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![44, 46, 48]);
    }

    #[test]
    fn a_follower_reports_what_the_ring_overwrote() {
        let items = vec![
            rec(5, "a"),
            rec(6, "b"),
            Next::Overwritten,
            rec(20, "c"),
            rec(21, "d"),
        ];
        let (tx, mut rx) = mpsc::channel(16);
        let script = Script {
            items: items.into(),
        };
        let filter = Filter {
            init_only: false,
            min_usec: None,
        };
        let t = std::thread::spawn(move || follow(Box::new(script), filter, Some(5), tx));
        let mut got = Vec::new();
        while got.len() < 4 {
            got.push(rx.blocking_recv().unwrap());
        }
        drop(rx);
        t.join().unwrap();
        let kinds: Vec<String> = got
            .iter()
            .map(|f| match f {
                Followed::Record(r) => r.message.clone(),
                Followed::Missed(n) => format!("missed {n}"),
            })
            .collect();
        // 5 was in the reply already; 7..=19 were overwritten.
        assert_eq!(kinds, vec!["b", "missed 13", "c", "d"]);
    }

    #[test]
    fn a_slow_client_costs_records_not_time() {
        let items: VecDeque<Next> = (1..=100).map(|i| rec(i, "x")).collect();
        let (tx, mut rx) = mpsc::channel(4);
        let script = Script { items };
        let filter = Filter {
            init_only: false,
            min_usec: None,
        };
        let t = std::thread::spawn(move || follow(Box::new(script), filter, None, tx));
        // Let the follower run through everything with a full queue.
        std::thread::sleep(Duration::from_millis(50));
        let mut records = 0;
        let mut missed = 0;
        while records + missed < 100 {
            match rx.blocking_recv().unwrap() {
                Followed::Record(_) => records += 1,
                Followed::Missed(n) => missed += n,
            }
        }
        assert_eq!(records, 4, "the queue's worth");
        assert_eq!(missed, 96, "the rest, counted once the client reads again");
        drop(rx);
        t.join().unwrap();
    }

    #[test]
    fn the_memory_ring_is_bounded_and_says_when_it_wrapped() {
        static LOG: MemoryLog = MemoryLog::new();
        for i in 0..(MEMORY_RECORDS + 10) {
            LOG.push(6, format!("kiOS: line {i}"));
        }
        let mut reader = MemoryReader::new(&LOG);
        match reader.next().unwrap() {
            Next::Record(r) => assert_eq!(r.seq, 10),
            other => panic!("{other:?}"),
        }
        reader.next_seq = 1; // fell behind
        assert_eq!(reader.next().unwrap(), Next::Overwritten);
        assert!(matches!(reader.next().unwrap(), Next::Record(r) if r.seq == 10));
        assert!(reader.wait(Duration::from_millis(1)));
    }

    #[test]
    fn followers_are_bounded() {
        let slots: Vec<FollowerSlot> = std::iter::from_fn(FollowerSlot::claim)
            .take(MAX_FOLLOWERS + 1)
            .collect();
        assert_eq!(slots.len(), MAX_FOLLOWERS);
        drop(slots);
        assert!(FollowerSlot::claim().is_some());
    }
}
