//! A recording fake of [`Sys`](super::Sys) for unit tests: an in-memory
//! file tree, scripted errors, and the ordered list of every call made.

use super::{MountCall, MountFlags, PowerMode, Spawned, Sys};
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<String>,
        target: String,
        fstype: Option<String>,
        flags: MountFlags,
        data: Option<String>,
    },
    Umount(String),
    UmountDetach(String),
    Mkdir(String, u32),
    Write(String, String),
    FinitModule(String, i32),
    SetHostname(String),
    LinkUp(String),
    DisableCad,
    WaitDir(String),
    EndWatch,
    ProcessName(String),
    Pipe,
    Kill(u32, Signal),
    KillAll(Signal),
    Umask(u32),
    ReleaseBootPages,
    Spawn(Vec<String>),
    RemoveFile(String),
    Sync,
    Reboot(PowerMode),
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<PathBuf, Vec<u8>>,
    dirs: BTreeSet<PathBuf>,
    calls: Vec<Call>,
    /// Errors to return, keyed by (operation, path), consumed in order.
    errors: BTreeMap<(String, String), Vec<i32>>,
    hostname: String,
    release: String,
    /// Files that appear after the n-th wait_for_dir_change call.
    appear_after_wait: Vec<(usize, PathBuf, Vec<u8>)>,
    waits: usize,
    /// What `any_process_left` answers.
    processes_left: bool,
    /// The pid the next spawned service gets.
    next_pid: u32,
    /// What `signal_sender` answers, taken once per signal.
    signal_senders: BTreeMap<i32, crate::sys::sender::SignalSender>,
}

/// The fake machine. Paths are absolute; parents of added files exist.
#[derive(Debug, Default)]
pub struct FakeSys {
    state: Mutex<State>,
}

impl FakeSys {
    pub fn new() -> Self {
        let fake = FakeSys::default();
        {
            let mut s = fake.lock();
            s.dirs.insert(PathBuf::from("/"));
            s.hostname = "localhost".into();
            s.release = "6.1.0-test".into();
            s.next_pid = 100;
        }
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_parents(s: &mut State, path: &Path) {
        let mut p = path.parent();
        while let Some(dir) = p {
            s.dirs.insert(dir.to_path_buf());
            p = dir.parent();
        }
    }

    /// Add a file (and its parent directories).
    /// What the next `signal_sender(signo)` answers.
    pub fn signal_from(&self, signo: i32, sender: crate::sys::sender::SignalSender) {
        self.lock().signal_senders.insert(signo, sender);
    }

    pub fn add_file(&self, path: &str, content: impl Into<Vec<u8>>) -> &Self {
        let mut s = self.lock();
        let p = PathBuf::from(path);
        Self::add_parents(&mut s, &p);
        s.files.insert(p, content.into());
        self
    }

    /// Add a directory (and its parents).
    pub fn add_dir(&self, path: &str) -> &Self {
        let mut s = self.lock();
        let p = PathBuf::from(path);
        Self::add_parents(&mut s, &p);
        s.dirs.insert(p);
        self
    }

    /// Make the next call of `op` ("mount", "umount", "finit_module",
    /// "mkdir", "write", "sethostname", "link_up", "cad", "kill" (path: the
    /// pid), "kill_all" (path ""), "spawn" (path: the program), "remove", "list_dir") on
    /// `path` fail
    /// with `errno`. Several errors queue up in order.
    pub fn fail(&self, op: &str, path: &str, errno: i32) -> &Self {
        self.lock()
            .errors
            .entry((op.into(), path.into()))
            .or_default()
            .push(errno);
        self
    }

    /// Make a file appear once `wait_for_dir_change` has been called `n` times.
    pub fn appear_after_waits(&self, n: usize, path: &str, content: impl Into<Vec<u8>>) -> &Self {
        self.lock()
            .appear_after_wait
            .push((n, PathBuf::from(path), content.into()));
        self
    }

    pub fn set_release(&self, release: &str) -> &Self {
        self.lock().release = release.into();
        self
    }

    /// What `any_process_left` answers from now on (at first: none left).
    pub fn set_processes_left(&self, left: bool) -> &Self {
        self.lock().processes_left = left;
        self
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Only the mount calls, as (target, fstype, flags).
    pub fn mounts(&self) -> Vec<(String, Option<String>, MountFlags)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Mount {
                    target,
                    fstype,
                    flags,
                    ..
                } => Some((target, fstype, flags)),
                _ => None,
            })
            .collect()
    }

    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.lock().files.get(Path::new(path)).cloned()
    }

    fn take_error(s: &mut State, op: &str, path: &Path) -> io::Result<()> {
        let key = (op.to_string(), path.to_string_lossy().into_owned());
        if let Some(q) = s.errors.get_mut(&key) {
            if !q.is_empty() {
                let e = q.remove(0);
                return Err(io::Error::from_raw_os_error(e));
            }
        }
        Ok(())
    }
}

fn enoent() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

impl Sys for FakeSys {
    fn mount(&self, call: &MountCall<'_>) -> io::Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::Mount {
            source: call.source.map(str::to_string),
            target: call.target.to_string_lossy().into_owned(),
            fstype: call.fstype.map(str::to_string),
            flags: call.flags,
            data: call.data.map(str::to_string),
        });
        Self::take_error(&mut s, "mount", call.target)?;
        if !s.dirs.contains(call.target) && !s.files.contains_key(call.target) {
            return Err(enoent());
        }
        Ok(())
    }

    fn umount(&self, target: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.calls
            .push(Call::Umount(target.to_string_lossy().into_owned()));
        Self::take_error(&mut s, "umount", target)
    }

    fn umount_detach(&self, target: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.calls
            .push(Call::UmountDetach(target.to_string_lossy().into_owned()));
        Self::take_error(&mut s, "umount_detach", target)
    }

    fn create_dir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        let mut s = self.lock();
        if s.dirs.contains(path) {
            return Ok(());
        }
        s.calls
            .push(Call::Mkdir(path.to_string_lossy().into_owned(), mode));
        Self::take_error(&mut s, "mkdir", path)?;
        Self::add_parents(&mut s, path);
        s.dirs.insert(path.to_path_buf());
        Ok(())
    }

    fn path_exists(&self, path: &Path) -> bool {
        let s = self.lock();
        s.dirs.contains(path) || s.files.contains_key(path)
    }

    fn read_file(&self, path: &Path, limit: usize) -> io::Result<Vec<u8>> {
        let s = self.lock();
        let data = s.files.get(path).ok_or_else(enoent)?;
        if data.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file larger than {limit} bytes"),
            ));
        }
        Ok(data.clone())
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let s = self.lock();
        let data = s.files.get(path).ok_or_else(enoent)?;
        let start =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        data.get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut s = self.lock();
        Self::take_error(&mut s, "list_dir", path)?;
        if !s.dirs.contains(path) {
            return Err(enoent());
        }
        let mut names = BTreeSet::new();
        for p in s.dirs.iter().chain(s.files.keys()) {
            if p.parent() == Some(path) {
                if let Some(n) = p.file_name() {
                    names.insert(n.to_string_lossy().into_owned());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    fn write_existing(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::Write(
            path.to_string_lossy().into_owned(),
            String::from_utf8_lossy(data).into_owned(),
        ));
        Self::take_error(&mut s, "write", path)?;
        match s.files.get_mut(path) {
            Some(f) => {
                *f = data.to_vec();
                Ok(())
            }
            None => Err(enoent()),
        }
    }

    fn finit_module(&self, path: &Path, _params: &str, flags: i32) -> io::Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::FinitModule(
            path.to_string_lossy().into_owned(),
            flags,
        ));
        Self::take_error(&mut s, "finit_module", path)?;
        if !s.files.contains_key(path) {
            return Err(enoent());
        }
        Ok(())
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::SetHostname(name.into()));
        Self::take_error(&mut s, "sethostname", Path::new(""))?;
        s.hostname = name.into();
        Ok(())
    }

    fn hostname(&self) -> io::Result<String> {
        Ok(self.lock().hostname.clone())
    }

    fn kernel_release(&self) -> io::Result<String> {
        Ok(self.lock().release.clone())
    }

    fn signal_sender(&self, signo: i32) -> Option<crate::sys::sender::SignalSender> {
        self.lock().signal_senders.remove(&signo)
    }

    /// The lines of the fake's /dev/kmsg file (plain messages).
    fn kernel_messages(&self) -> Vec<String> {
        let s = self.lock();
        s.files
            .get(Path::new("/dev/kmsg"))
            .map(|b| {
                String::from_utf8_lossy(b)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_link_up(&self, ifname: &str) -> io::Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::LinkUp(ifname.into()));
        Self::take_error(&mut s, "link_up", Path::new(ifname))
    }

    fn disable_ctrl_alt_del(&self) -> io::Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::DisableCad);
        Self::take_error(&mut s, "cad", Path::new(""))
    }

    fn end_dir_watch(&self) {
        self.lock().calls.push(Call::EndWatch);
    }

    fn set_process_name(&self, name: &str) {
        self.lock().calls.push(Call::ProcessName(name.into()));
    }

    /// A real pipe (a descriptor cannot be faked), recorded; scripted
    /// errors with `fail("pipe", "", errno)`.
    fn pipe(&self) -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
        let mut s = self.lock();
        s.calls.push(Call::Pipe);
        Self::take_error(&mut s, "pipe", Path::new(""))?;
        drop(s);
        super::LinuxSys.pipe()
    }

    fn kill(&self, pid: u32, signal: Signal) -> io::Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::Kill(pid, signal));
        if pid <= 1 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Self::take_error(&mut s, "kill", Path::new(&pid.to_string()))
    }

    fn kill_all(&self, signal: Signal) -> io::Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::KillAll(signal));
        Self::take_error(&mut s, "kill_all", Path::new(""))
    }

    fn any_process_left(&self) -> bool {
        self.lock().processes_left
    }

    fn umask(&self, mask: u32) -> u32 {
        self.lock().calls.push(Call::Umask(mask));
        0o022
    }

    fn release_boot_pages(&self) -> io::Result<usize> {
        self.lock().calls.push(Call::ReleaseBootPages);
        Ok(0)
    }

    fn spawn_service(&self, argv: &[String]) -> io::Result<Spawned> {
        let mut s = self.lock();
        s.calls.push(Call::Spawn(argv.to_vec()));
        let program = argv.first().map(String::as_str).unwrap_or("");
        Self::take_error(&mut s, "spawn", Path::new(program))?;
        let pid = s.next_pid;
        s.next_pid += 1;
        Ok(Spawned { pid, output: None })
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.calls
            .push(Call::RemoveFile(path.to_string_lossy().into_owned()));
        Self::take_error(&mut s, "remove", path)?;
        s.files.remove(path).map(drop).ok_or_else(enoent)
    }

    fn sync(&self) {
        self.lock().calls.push(Call::Sync);
    }

    fn reboot(&self, mode: PowerMode) -> io::Error {
        self.lock().calls.push(Call::Reboot(mode));
        io::Error::other("the fake machine does not end")
    }

    fn wait_for_dir_change(&self, dir: &Path, _timeout: Duration) -> io::Result<()> {
        let mut s = self.lock();
        s.calls
            .push(Call::WaitDir(dir.to_string_lossy().into_owned()));
        s.waits += 1;
        let n = s.waits;
        let due: Vec<(PathBuf, Vec<u8>)> = s
            .appear_after_wait
            .iter()
            .filter(|(k, _, _)| *k == n)
            .map(|(_, p, c)| (p.clone(), c.clone()))
            .collect();
        for (p, c) in due {
            Self::add_parents(&mut s, &p);
            s.files.insert(p, c);
        }
        Ok(())
    }
}
