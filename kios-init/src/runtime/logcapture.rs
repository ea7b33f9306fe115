//! Service output: the bytes cri-o and the kubelet write to their pipe are
//! split into lines (bounded length), kept in an in-memory tail per service
//! (bounded bytes) for `logs`, and handed to ONE writer thread that appends
//! them to `/var/log/crio.log` and `/var/log/kubelet.log`.
//!
//! The event loop never waits for the disk: lines go to the writer through a
//! bounded channel, and when it is full they are dropped and counted; the
//! count is written into the file as a note once the writer catches up.
//! Lines the writer cannot write (`/var/log` full, read-only or gone) are
//! dropped and counted too: the first one of a run of failures says so in
//! the kernel log, once, and the file gets a note with the count when it
//! can be written again. Every dropped line, for either reason, adds to one
//! counter since boot ([`LogHub::lines_dropped`], `log_lines_dropped` in
//! `status`). The
//! writer rotates a file at [`ROTATE_BYTES`] (one old copy, `.1`) and reopens
//! its files when `/var/log` became a different filesystem (the data
//! partition was mounted after it first opened them). Fan-out to `logs -f`
//! followers is done by the caller (the server's client registry).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kios_protocol::ServiceName;

/// The longest line kept; longer output is cut into pieces of this size.
pub const MAX_LINE_BYTES: usize = 4096;
/// Bytes of output kept in memory per service for `logs`.
pub const TAIL_BYTES: usize = 32 * 1024;
/// Lines waiting for the writer thread before new ones are dropped.
pub const WRITER_QUEUE: usize = 128;
/// A log file is rotated (to `NAME.1`) when it reaches this size.
pub const ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// How often the writer checks whether `/var/log` changed under it.
const REOPEN_CHECK: Duration = Duration::from_secs(1);
/// At most one kernel-log notice per service this often that the writer's
/// queue is full (a flood); the count is in `status` and in the file.
const BEHIND_NOTICE_EVERY: Duration = Duration::from_secs(60);

/// Cuts a byte stream into lines of at most `max` bytes (without the
/// newline). Invalid UTF-8 is replaced, a trailing `\r` dropped.
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            partial: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feeds bytes; complete lines are appended to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<String>) {
        while !data.is_empty() {
            let room = self.max - self.partial.len();
            let window = &data[..data.len().min(room + 1)];
            match window.iter().position(|b| *b == b'\n') {
                Some(nl) if nl <= room => {
                    self.partial.extend_from_slice(&data[..nl]);
                    out.push(self.take());
                    data = &data[nl + 1..];
                }
                _ => {
                    let n = data.len().min(room);
                    self.partial.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.partial.len() >= self.max && !data.is_empty() {
                        // Over-long line (the next byte is not its newline,
                        // or the window above would have found it): emit
                        // what we have, go on with the rest.
                        out.push(self.take());
                    }
                }
            }
        }
    }

    /// The unterminated rest, at end of stream.
    pub fn finish(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            None
        } else {
            Some(self.take())
        }
    }

    fn take(&mut self) -> String {
        let mut bytes = std::mem::take(&mut self.partial);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

/// The most recent lines of one service, bounded in bytes.
#[derive(Debug, Default)]
pub struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    cap: usize,
}

impl Tail {
    pub fn new(cap: usize) -> Tail {
        Tail {
            lines: VecDeque::new(),
            bytes: 0,
            cap,
        }
    }

    pub fn push(&mut self, line: String) {
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.bytes > self.cap {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<String> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines.iter().skip(skip).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// A message to the writer thread.
#[derive(Debug)]
enum WriterMsg {
    Line(ServiceName, String),
    Dropped(ServiceName, u64),
    /// Flush, close the files and end the thread (shutdown, before unmounting).
    Close,
}

/// The event loop's handle on the writer thread.
#[derive(Debug)]
pub struct LogWriter {
    tx: SyncSender<WriterMsg>,
    dropped: [u64; 2],
    /// Every line dropped since boot, by this side or the thread.
    lost: Arc<AtomicU64>,
    behind_notice: [Option<Instant>; 2],
    thread: Option<JoinHandle<()>>,
}

fn index(service: ServiceName) -> usize {
    match service {
        ServiceName::Crio => 0,
        ServiceName::Kubelet => 1,
    }
}

impl LogWriter {
    /// Starts the writer thread for files in `dir` (normally `/var/log`).
    pub fn start(dir: PathBuf) -> io::Result<LogWriter> {
        let (tx, rx) = mpsc::sync_channel(WRITER_QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let thread_lost = lost.clone();
        let thread = std::thread::Builder::new()
            .name("kios-logwriter".into())
            .stack_size(128 * 1024)
            .spawn(move || writer_thread(dir, rx, thread_lost))?;
        Ok(LogWriter {
            tx,
            dropped: [0; 2],
            lost,
            behind_notice: [None, None],
            thread: Some(thread),
        })
    }

    /// The count of lines dropped since boot, shared with the thread.
    pub fn lost(&self) -> Arc<AtomicU64> {
        self.lost.clone()
    }

    fn drop_line(&mut self, i: usize, service: ServiceName) {
        if self.dropped[i] == 0 {
            let due = self.behind_notice[i].is_none_or(|at| at.elapsed() >= BEHIND_NOTICE_EVERY);
            if due {
                self.behind_notice[i] = Some(Instant::now());
                crate::kwarn!(
                    "{service} output: the log writer is behind; lines are dropped and counted \
                     (status: log_lines_dropped)"
                );
            }
        }
        self.dropped[i] += 1;
        self.lost.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues a line; never blocks. When the queue is full the line is
    /// dropped and counted.
    pub fn write(&mut self, service: ServiceName, line: &str) {
        let i = index(service);
        if self.dropped[i] > 0 {
            match self
                .tx
                .try_send(WriterMsg::Dropped(service, self.dropped[i]))
            {
                Ok(()) => self.dropped[i] = 0,
                Err(_) => {
                    self.drop_line(i, service);
                    return;
                }
            }
        }
        match self.tx.try_send(WriterMsg::Line(service, line.to_string())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.drop_line(i, service)
            }
        }
    }

    /// Lines dropped and not yet noted in the file, per service.
    pub fn dropped(&self, service: ServiceName) -> u64 {
        self.dropped[index(service)]
    }

    /// Asks the thread to flush and close its files; returns its handle so
    /// the caller can wait for it (off the event loop, with a bound).
    pub fn close(mut self) -> Option<JoinHandle<()>> {
        // A full queue: wait is not an option on the event loop; the thread
        // ends anyway when the sender is dropped below.
        let _ = self.tx.try_send(WriterMsg::Close);
        self.thread.take()
    }
}

struct OpenLog {
    file: io::BufWriter<File>,
    size: u64,
}

struct WriterState {
    dir: PathBuf,
    files: [Option<OpenLog>; 2],
    dir_dev: Option<u64>,
    last_check: Instant,
    last_open_failure: [Option<Instant>; 2],
    /// Why the last open failed, for the notice.
    open_error: [Option<String>; 2],
    /// Lines of output in a file's buffer since its last successful flush
    /// (lost with the buffer when the flush fails).
    unflushed: [u64; 2],
    /// While writing fails: lines dropped since it began.
    failing: [Option<u64>; 2],
    lost: Arc<AtomicU64>,
}

fn file_name(service: ServiceName) -> &'static str {
    match service {
        ServiceName::Crio => "crio.log",
        ServiceName::Kubelet => "kubelet.log",
    }
}

fn dir_device(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir).ok().map(|m| m.dev())
}

impl WriterState {
    fn new(dir: PathBuf, lost: Arc<AtomicU64>) -> WriterState {
        let dir_dev = dir_device(&dir);
        WriterState {
            dir,
            files: [None, None],
            dir_dev,
            last_check: Instant::now(),
            last_open_failure: [None, None],
            open_error: [None, None],
            unflushed: [0; 2],
            failing: [None, None],
            lost,
        }
    }

    /// `count` lines of `service` could not be written: counted, and the
    /// first of a run of failures is said in the kernel log.
    fn lose(&mut self, service: ServiceName, count: u64, why: &str) {
        let i = index(service);
        self.lost.fetch_add(count, Ordering::Relaxed);
        match self.failing[i].as_mut() {
            Some(dropped) => *dropped += count,
            None => {
                self.failing[i] = Some(count);
                crate::kwarn!(
                    "cannot write {}: {why}; dropping {service} output until it can be \
                     written again (counted in status: log_lines_dropped)",
                    self.dir.join(file_name(service)).display()
                );
            }
        }
    }

    /// Closes a file whose write failed, without writing its buffer again.
    fn discard(&mut self, i: usize) {
        if let Some(open) = self.files[i].take() {
            let (_file, _lost_buffer) = open.file.into_parts();
        }
        self.unflushed[i] = 0;
        self.last_open_failure[i] = Some(Instant::now());
    }

    /// Flushes one file. After a run of failures, a successful flush ends
    /// it: a note with the count goes into the file and the kernel log.
    fn flush_one(&mut self, service: ServiceName) {
        let i = index(service);
        let Some(open) = self.files[i].as_mut() else {
            return;
        };
        match open.file.flush() {
            Ok(()) => {
                self.unflushed[i] = 0;
                if let Some(dropped) = self.failing[i].take() {
                    let path = self.dir.join(file_name(service));
                    crate::kinfo!(
                        "{} is written again; {dropped} lines of {service} output were dropped",
                        path.display()
                    );
                    let note = format!(
                        "kios-init: {dropped} lines of output dropped ({} could not be written)",
                        path.display()
                    );
                    let noted = open
                        .file
                        .write_all(note.as_bytes())
                        .and_then(|()| open.file.write_all(b"\n"))
                        .and_then(|()| open.file.flush());
                    match noted {
                        Ok(()) => open.size += note.len() as u64 + 1,
                        Err(_) => self.discard(i),
                    }
                }
            }
            Err(e) => {
                let count = self.unflushed[i];
                self.discard(i);
                self.lose(service, count, &e.to_string());
            }
        }
    }

    fn check_reopen(&mut self) {
        if self.last_check.elapsed() < REOPEN_CHECK {
            return;
        }
        self.last_check = Instant::now();
        let dev = dir_device(&self.dir);
        if dev != self.dir_dev {
            // /var/log is now another filesystem: close the old files (their
            // lines stay where they were) and open fresh ones there.
            self.flush();
            self.files = [None, None];
            self.last_open_failure = [None, None];
            self.dir_dev = dev;
        }
    }

    fn file(&mut self, service: ServiceName) -> Option<&mut OpenLog> {
        let i = index(service);
        if self.files[i].is_none() {
            if let Some(at) = self.last_open_failure[i] {
                if at.elapsed() < REOPEN_CHECK {
                    return None;
                }
            }
            let path = self.dir.join(file_name(service));
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(file) => {
                    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    self.files[i] = Some(OpenLog {
                        file: io::BufWriter::with_capacity(4 * 1024, file),
                        size,
                    });
                    self.last_open_failure[i] = None;
                    self.unflushed[i] = 0;
                }
                Err(e) => {
                    self.last_open_failure[i] = Some(Instant::now());
                    self.open_error[i] = Some(e.to_string());
                    return None;
                }
            }
        }
        self.files[i].as_mut()
    }

    fn rotate(&mut self, service: ServiceName) {
        let i = index(service);
        self.flush_one(service);
        if let Some(mut open) = self.files[i].take() {
            let _ = open.file.flush();
        }
        let path = self.dir.join(file_name(service));
        let old = self.dir.join(format!("{}.1", file_name(service)));
        let _ = std::fs::rename(&path, &old);
    }

    /// Writes one line of output (`output`) or one of init's notes about
    /// it; only output lines are counted when they cannot be written.
    fn write_line(&mut self, service: ServiceName, line: &str, output: bool) {
        let i = index(service);
        let counted = u64::from(output);
        let written = self.file(service).map(|open| {
            open.file
                .write_all(line.as_bytes())
                .and_then(|()| open.file.write_all(b"\n"))
                .map(|()| {
                    open.size += line.len() as u64 + 1;
                    open.size >= ROTATE_BYTES
                })
        });
        match written {
            None => {
                let why = self.open_error[i]
                    .clone()
                    .unwrap_or_else(|| "it cannot be opened".to_string());
                self.lose(service, counted, &why);
            }
            Some(Ok(needs_rotation)) => {
                self.unflushed[i] += counted;
                if needs_rotation {
                    self.rotate(service);
                }
            }
            Some(Err(e)) => {
                // Disk full or gone: the buffer is lost with this line;
                // close, try again later.
                let count = self.unflushed[i] + counted;
                self.discard(i);
                self.lose(service, count, &e.to_string());
            }
        }
    }

    fn flush(&mut self) {
        for service in ServiceName::ALL {
            self.flush_one(service);
        }
    }
}

fn writer_thread(dir: PathBuf, rx: Receiver<WriterMsg>, lost: Arc<AtomicU64>) {
    let mut state = WriterState::new(dir, lost);
    while let Ok(first) = rx.recv() {
        state.check_reopen();
        let mut next = Some(first);
        // Write what is queued, then flush once.
        while let Some(msg) = next {
            match msg {
                WriterMsg::Line(service, line) => state.write_line(service, &line, true),
                WriterMsg::Dropped(service, count) => state.write_line(
                    service,
                    &format!("kios-init: {count} lines of output dropped (log writer too slow)"),
                    false,
                ),
                WriterMsg::Close => {
                    state.flush();
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        state.flush();
    }
    state.flush();
}

/// The runtime's view of all service output: tails and the writer.
#[derive(Debug)]
pub struct LogHub {
    tails: [Tail; 2],
    writer: Option<LogWriter>,
    lost: Arc<AtomicU64>,
}

impl LogHub {
    pub fn new(writer: Option<LogWriter>) -> LogHub {
        let lost = writer
            .as_ref()
            .map_or_else(|| Arc::new(AtomicU64::new(0)), LogWriter::lost);
        LogHub {
            tails: [Tail::new(TAIL_BYTES), Tail::new(TAIL_BYTES)],
            writer,
            lost,
        }
    }

    /// Lines of service output that never reached their log file since
    /// boot (the writer behind, or the file not writable).
    pub fn lines_dropped(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Records one line of `service`'s output.
    pub fn line(&mut self, service: ServiceName, line: String) {
        if let Some(writer) = self.writer.as_mut() {
            writer.write(service, &line);
        }
        self.tails[index(service)].push(line);
    }

    pub fn tail(&self, service: ServiceName) -> &Tail {
        &self.tails[index(service)]
    }

    /// Stops the file writer (shutdown): later lines stay in memory only.
    pub fn close_writer(&mut self) -> Option<JoinHandle<()>> {
        self.writer.take().and_then(LogWriter::close)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> (Vec<String>, Option<String>) {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        let rest = s.finish();
        (out, rest)
    }

    #[test]
    fn splits_lines_across_chunks() {
        let (lines, rest) = split(100, &[b"one\ntw", b"o\r\n", b"\nthree"]);
        assert_eq!(lines, vec!["one", "two", ""]);
        assert_eq!(rest.as_deref(), Some("three"));
    }

    #[test]
    fn cuts_overlong_lines() {
        let (lines, rest) = split(4, &[b"abcdefghij\nxy\n"]);
        assert_eq!(lines, vec!["abcd", "efgh", "ij", "xy"]);
        assert_eq!(rest, None);
        // Exactly max bytes followed by a newline is one line.
        let (lines, _) = split(4, &[b"abcd\nef\n"]);
        assert_eq!(lines, vec!["abcd", "ef"]);
        let (lines, _) = split(4, &[b"ab", b"cd", b"\nef\n"]);
        assert_eq!(lines, vec!["abcd", "ef"]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let (lines, _) = split(100, &[b"a\xffb\n"]);
        assert_eq!(lines, vec!["a\u{fffd}b"]);
    }

    #[test]
    fn tail_is_bounded_in_bytes_and_returns_the_newest() {
        let mut tail = Tail::new(10);
        for word in ["aaaa", "bbbb", "cccc", "dd"] {
            tail.push(word.to_string());
        }
        assert_eq!(tail.last(10), vec!["bbbb", "cccc", "dd"]);
        assert_eq!(tail.last(2), vec!["cccc", "dd"]);
        assert_eq!(tail.last(0), Vec::<String>::new());
        tail.push("x".repeat(50));
        assert!(tail.is_empty(), "a line larger than the cap is not kept");
    }

    fn wait_for(path: &Path, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.contains(want) || Instant::now() > deadline {
                return text;
            }
            std::thread::yield_now();
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kios-logcapture-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writer_appends_per_service_and_closes() {
        let dir = tempdir("append");
        let mut hub = LogHub::new(Some(LogWriter::start(dir.clone()).unwrap()));
        hub.line(ServiceName::Crio, "crio says hi".into());
        hub.line(ServiceName::Kubelet, "kubelet says hi".into());
        let handle = hub.close_writer().unwrap();
        handle.join().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("crio.log")).unwrap(),
            "crio says hi\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("kubelet.log")).unwrap(),
            "kubelet says hi\n"
        );
        // After close, lines still reach the tail.
        hub.line(ServiceName::Crio, "late".into());
        assert_eq!(
            hub.tail(ServiceName::Crio).last(5),
            vec!["crio says hi", "late"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn full_queue_drops_counts_and_notes() {
        let dir = tempdir("drops");
        // A writer whose thread is not draining: build the channel by hand.
        let (tx, rx) = mpsc::sync_channel(2);
        let lost = Arc::new(AtomicU64::new(0));
        let mut writer = LogWriter {
            tx,
            dropped: [0; 2],
            lost: lost.clone(),
            behind_notice: [None, None],
            thread: None,
        };
        for i in 0..5 {
            writer.write(ServiceName::Kubelet, &format!("line {i}"));
        }
        assert_eq!(writer.dropped(ServiceName::Kubelet), 3);
        assert_eq!(lost.load(Ordering::Relaxed), 3);
        let thread_dir = dir.clone();
        let thread_lost = lost.clone();
        let thread = std::thread::spawn(move || writer_thread(thread_dir, rx, thread_lost));
        // Once there is room again, the note goes first, then the line.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            writer.write(ServiceName::Kubelet, "after");
            if writer.dropped(ServiceName::Kubelet) == 0 || Instant::now() > deadline {
                break;
            }
            std::thread::yield_now();
        }
        let text = wait_for(&dir.join("kubelet.log"), "after");
        assert!(text.starts_with("line 0\nline 1\n"), "{text}");
        assert!(text.contains("lines of output dropped"), "{text}");
        drop(writer);
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotation_keeps_one_old_file() {
        let dir = tempdir("rotate");
        let mut state = WriterState::new(dir.clone(), Arc::default());
        let big = "x".repeat(1024 * 1024);
        for _ in 0..11 {
            state.write_line(ServiceName::Crio, &big, true);
        }
        state.write_line(ServiceName::Crio, "fresh", true);
        state.flush();
        let old = std::fs::metadata(dir.join("crio.log.1")).unwrap().len();
        assert!(old >= ROTATE_BYTES, "{old}");
        let new = std::fs::read_to_string(dir.join("crio.log")).unwrap();
        assert!(new.ends_with("fresh\n"));
        assert!((new.len() as u64) < ROTATE_BYTES);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_dir_drops_lines_without_failing() {
        let dir = std::env::temp_dir().join(format!(
            "kios-logcapture-{}-missing/none",
            std::process::id()
        ));
        let lost = Arc::new(AtomicU64::new(0));
        let mut state = WriterState::new(dir.clone(), lost.clone());
        state.write_line(ServiceName::Crio, "lost", true);
        state.write_line(ServiceName::Crio, "lost too", true);
        state.flush();
        assert!(!dir.join("crio.log").exists());
        assert_eq!(lost.load(Ordering::Relaxed), 2, "every line counted");
        assert_eq!(state.failing[0], Some(2));
    }

    #[test]
    fn a_full_disk_drops_and_counts_lines_then_notes_them_when_writable_again() {
        // /dev/full: every write fails with ENOSPC, as a full /var/log does.
        let dir = tempdir("full");
        let lost = Arc::new(AtomicU64::new(0));
        let mut state = WriterState::new(dir.clone(), lost.clone());
        let full = std::fs::OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .unwrap();
        state.files[1] = Some(OpenLog {
            file: io::BufWriter::with_capacity(4 * 1024, full),
            size: 0,
        });
        // Buffered lines, then the flush fails: all of them are counted.
        for n in 0..10 {
            state.write_line(ServiceName::Kubelet, &format!("line {n}"), true);
        }
        state.flush();
        assert_eq!(lost.load(Ordering::Relaxed), 10);
        assert!(state.files[1].is_none(), "the failing file is closed");
        // Lines while it stays closed are counted too; notes are not.
        state.write_line(ServiceName::Kubelet, "while closed", true);
        state.write_line(ServiceName::Kubelet, "a note", false);
        assert_eq!(lost.load(Ordering::Relaxed), 11);
        assert_eq!(state.failing[1], Some(11));
        // Writable again (the retry time has passed): the note first.
        state.last_open_failure[1] = None;
        state.write_line(ServiceName::Kubelet, "back", true);
        state.flush();
        assert_eq!(state.failing[1], None);
        let text = std::fs::read_to_string(dir.join("kubelet.log")).unwrap();
        assert_eq!(
            text,
            format!(
                "back\nkios-init: 11 lines of output dropped ({} could not be written)\n",
                dir.join("kubelet.log").display()
            )
        );
        assert_eq!(lost.load(Ordering::Relaxed), 11);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
