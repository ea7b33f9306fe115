//! The audit trail: every state-changing request (restart, shutdown,
//! continue, force; refused ones too) and every shutdown trigger (signal,
//! power button, Ctrl-Alt-Del, the kubelet), with time, peer and outcome.
//!
//! Kept in memory in a bounded ring ([`RING_ENTRIES`]) and appended as JSON
//! lines to `/var/log/kios-audit.log` on the data partition by a writer
//! thread of its own behind a bounded channel (`try_send`: the event loop
//! never waits for the disk). The file is bounded: past [`FILE_BYTES`] it
//! moves to `kios-audit.log.1` (one old file kept). At start the thread
//! reads the tail of the file (at most [`TAIL_BYTES`]) so `audit` can show
//! earlier boots and `status` what ended the previous one.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kios_protocol::{AuditEntry, PowerMode};

use crate::runtime::server::clients::Peer;
use crate::runtime::shutdown::Requested;
use crate::runtime::state::State;
use crate::sys::sender::SignalSender;

/// Entries of this boot kept in memory.
pub const RING_ENTRIES: usize = 256;
/// Entries of earlier boots kept in memory (from the file's tail).
pub const PREVIOUS_ENTRIES: usize = 256;
/// Entries waiting for the writer thread.
pub const WRITER_QUEUE: usize = 64;
/// Size at which the file moves to `.1`.
pub const FILE_BYTES: u64 = 256 * 1024;
/// How much of the file's end is read at start.
pub const TAIL_BYTES: u64 = 64 * 1024;
/// The file name in the log directory.
pub const FILE_NAME: &str = "kios-audit.log";

enum Msg {
    Entry(String),
    Close,
}

/// This boot's entries, the earlier boots' (once the writer has read them)
/// and the writer.
pub struct AuditLog {
    boot_ms: u64,
    ring: VecDeque<AuditEntry>,
    dropped: u64,
    previous: Arc<Mutex<Vec<AuditEntry>>>,
    writer: Option<(SyncSender<Msg>, JoinHandle<()>)>,
}

impl AuditLog {
    /// Memory only (tests, or no log directory).
    pub fn in_memory(boot_ms: u64) -> AuditLog {
        AuditLog {
            boot_ms,
            ring: VecDeque::new(),
            dropped: 0,
            previous: Arc::new(Mutex::new(Vec::new())),
            writer: None,
        }
    }

    /// With the writer thread appending to `dir/kios-audit.log`.
    pub fn start(dir: PathBuf, boot_ms: u64) -> io::Result<AuditLog> {
        let mut log = AuditLog::in_memory(boot_ms);
        let (tx, rx) = mpsc::sync_channel(WRITER_QUEUE);
        let previous = log.previous.clone();
        let thread = std::thread::Builder::new()
            .name("kios-audit".into())
            .stack_size(128 * 1024)
            .spawn(move || writer_thread(&dir.join(FILE_NAME), boot_ms, &previous, rx))?;
        log.writer = Some((tx, thread));
        Ok(log)
    }

    /// When this boot's init started (epoch ms).
    pub fn boot_ms(&self) -> u64 {
        self.boot_ms
    }

    /// Records one entry; never blocks.
    pub fn record(&mut self, mut entry: AuditEntry) {
        entry.boot_ms = self.boot_ms;
        if let Some((tx, _)) = &self.writer {
            if let Ok(line) = serde_json::to_string(&entry) {
                match tx.try_send(Msg::Entry(line)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                        self.dropped += 1;
                        crate::kwarn!("audit: the log writer is behind; entry kept in memory only");
                    }
                }
            }
        }
        if self.ring.len() >= RING_ENTRIES {
            self.ring.pop_front();
        }
        self.ring.push_back(entry);
    }

    /// The last `n` entries, earlier boots first, oldest first.
    pub fn entries(&self, n: usize) -> Vec<AuditEntry> {
        let previous = self.previous.lock().map(|p| p.clone()).unwrap_or_default();
        let all: Vec<AuditEntry> = previous
            .into_iter()
            .chain(self.ring.iter().cloned())
            .collect();
        let skip = all.len().saturating_sub(n);
        all.into_iter().skip(skip).collect()
    }

    /// The entry that ended the previous boot, when the file has one.
    pub fn previous_shutdown(&self) -> Option<AuditEntry> {
        let previous = self.previous.lock().ok()?;
        previous.iter().rev().find(|e| e.shutdown).cloned()
    }

    /// Asks the writer to flush and end; its handle, for the shutdown to
    /// wait on (off the event loop, bounded).
    pub fn close_writer(&mut self) -> Option<JoinHandle<()>> {
        let (tx, thread) = self.writer.take()?;
        let _ = tx.try_send(Msg::Close);
        Some(thread)
    }
}

/// The entries of earlier boots in the last [`TAIL_BYTES`] of `path`.
pub fn read_previous(path: &Path, boot_ms: u64) -> Vec<AuditEntry> {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(TAIL_BYTES);
        if file.seek(SeekFrom::Start(start)).is_ok() {
            let mut bytes = Vec::new();
            let _ = file.take(TAIL_BYTES).read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
            if start > 0 {
                // The first line is cut.
                text = text
                    .split_once('\n')
                    .map(|(_, r)| r.to_string())
                    .unwrap_or_default();
            }
        }
    }
    let mut entries: Vec<AuditEntry> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<AuditEntry>(l).ok())
        .filter(|e| e.boot_ms != boot_ms)
        .collect();
    let skip = entries.len().saturating_sub(PREVIOUS_ENTRIES);
    entries.drain(..skip);
    entries
}

fn writer_thread(path: &Path, boot_ms: u64, previous: &Mutex<Vec<AuditEntry>>, rx: Receiver<Msg>) {
    let earlier = read_previous(path, boot_ms);
    if let Ok(mut p) = previous.lock() {
        *p = earlier;
    }
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Entry(line) => append(path, &line),
            Msg::Close => return,
        }
    }
}

/// Appends one line and syncs it: the reason for a reboot must survive it.
fn append(path: &Path, line: &str) {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size >= FILE_BYTES {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        let _ = std::fs::rename(path, old);
    }
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| {
            f.write_all(format!("{line}\n").as_bytes())?;
            f.sync_data()
        });
    if let Err(e) = written {
        crate::kwarn!("audit: cannot append to {}: {e}", path.display());
    }
}

/// How a shutdown request ended, as the audit log says it.
pub fn requested_outcome(requested: Requested) -> &'static str {
    match requested {
        Requested::Started => "started",
        Requested::Forced => "forced",
        Requested::AlreadyInProgress => "already-in-progress",
    }
}

/// An entry for a request from a socket peer.
pub fn from_peer(
    peer: &Peer,
    action: String,
    by: String,
    outcome: &str,
    shutdown: bool,
    at_ms: u64,
) -> AuditEntry {
    AuditEntry {
        pid: peer.pid,
        uid: peer.uid,
        command: peer.command.clone(),
        ..trigger(action, &by, outcome, shutdown, at_ms)
    }
}

/// Records a shutdown trigger that is not a socket request (a signal, the
/// power button).
pub fn shutdown_trigger(
    state: &mut State,
    mode: PowerMode,
    by: &str,
    requested: Requested,
    at_ms: u64,
) {
    let entry = trigger(
        format!("shutdown {mode}"),
        by,
        requested_outcome(requested),
        requested == Requested::Started,
        at_ms,
    );
    state.audit.record(entry);
}

/// Who sent a shutdown signal, as the audit and the kernel log name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalPeer {
    sender: Option<SignalSender>,
    /// The sender's /proc/PID/comm, read when the signal is handled (gone
    /// when the sender has exited since).
    command: Option<String>,
}

impl SignalPeer {
    pub fn of(sender: Option<SignalSender>) -> SignalPeer {
        let command = sender
            .filter(|s| s.pid > 0 && !s.kernel)
            .and_then(|s| i32::try_from(s.pid).ok())
            .and_then(crate::runtime::server::read_comm);
        SignalPeer { sender, command }
    }

    /// `SIGTERM from pid 42 uid 0 (kill)`, `... from the kernel`, `... from
    /// outside init's PID namespace (uid 0)`, or `by` alone when the sender
    /// is unknown.
    pub fn describe(&self, by: &str) -> String {
        match self.sender {
            None => by.to_string(),
            Some(s) if s.kernel => format!("{by} from the kernel"),
            Some(s) if s.pid == 0 => {
                format!("{by} from outside init's PID namespace (uid {})", s.uid)
            }
            Some(s) => format!(
                "{by} from pid {} uid {} ({})",
                s.pid,
                s.uid,
                self.command.as_deref().unwrap_or("exited")
            ),
        }
    }
}

/// Records a shutdown signal with its sender: pid (when it is in init's
/// PID namespace), uid and command, as a socket peer's request is.
pub fn signal_trigger(
    state: &mut State,
    mode: PowerMode,
    by: &str,
    peer: &SignalPeer,
    requested: Requested,
    at_ms: u64,
) {
    let mut entry = trigger(
        format!("shutdown {mode}"),
        by,
        requested_outcome(requested),
        requested == Requested::Started,
        at_ms,
    );
    if let Some(s) = peer.sender.filter(|s| !s.kernel) {
        entry.pid = i32::try_from(s.pid).ok().filter(|&pid| pid > 0);
        entry.uid = Some(s.uid);
        entry.command = peer.command.clone();
    }
    state.audit.record(entry);
}

/// An entry for a trigger that is not a socket peer (signal, power button).
pub fn trigger(action: String, by: &str, outcome: &str, shutdown: bool, at_ms: u64) -> AuditEntry {
    AuditEntry {
        at_ms,
        boot_ms: 0,
        action,
        by: by.to_string(),
        pid: None,
        uid: None,
        command: None,
        outcome: outcome.to_string(),
        shutdown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kios-audit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entry(action: &str, shutdown: bool) -> AuditEntry {
        trigger(action.to_string(), "SIGTERM", "started", shutdown, 5)
    }

    #[test]
    fn the_ring_is_bounded_and_newest_last() {
        let mut log = AuditLog::in_memory(1);
        for i in 0..(RING_ENTRIES + 5) {
            log.record(entry(&format!("restart {i}"), false));
        }
        let all = log.entries(usize::MAX);
        assert_eq!(all.len(), RING_ENTRIES);
        assert_eq!(all[0].action, "restart 5");
        assert_eq!(
            log.entries(2)[1].action,
            format!("restart {}", RING_ENTRIES + 4)
        );
        assert!(all.iter().all(|e| e.boot_ms == 1));
    }

    #[test]
    fn the_file_carries_the_previous_boots_shutdown_into_the_next() {
        let dir = temp_dir("boots");
        let mut first = AuditLog::start(dir.clone(), 100).unwrap();
        first.record(entry("restart kubelet", false));
        first.record(entry("shutdown reboot", true));
        first.close_writer().unwrap().join().unwrap();

        let mut second = AuditLog::start(dir.clone(), 200).unwrap();
        second.record(entry("restart crio", false));
        // The writer reads the file before it writes anything of its own.
        second.close_writer().unwrap().join().unwrap();
        let previous = second.previous_shutdown().expect("previous shutdown");
        assert_eq!(previous.action, "shutdown reboot");
        assert_eq!(previous.boot_ms, 100);
        let actions: Vec<String> = second.entries(10).into_iter().map(|e| e.action).collect();
        assert_eq!(
            actions,
            vec!["restart kubelet", "shutdown reboot", "restart crio"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_file_is_bounded_and_a_cut_line_is_skipped() {
        let dir = temp_dir("bounded");
        let path = dir.join(FILE_NAME);
        let line = serde_json::to_string(&AuditEntry {
            boot_ms: 7,
            ..entry("shutdown poweroff", true)
        })
        .unwrap();
        let mut text = String::from("garbage that is not json\n");
        while (text.len() as u64) < FILE_BYTES + 10 {
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(&path, &text).unwrap();
        let previous = read_previous(&path, 8);
        assert!(!previous.is_empty() && previous.len() <= PREVIOUS_ENTRIES);
        append(&path, &line);
        assert!(dir.join(format!("{FILE_NAME}.1")).exists());
        assert!(std::fs::metadata(&path).unwrap().len() < 1024);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
