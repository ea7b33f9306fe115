//! The syscall layer of kios-init: the only module with `unsafe`.
//!
//! Every operation of the boot and teardown plans that touches the machine
//! goes through the [`Sys`] trait, so the plans are unit-tested against the
//! recording fake in [`fake`] without root. [`LinuxSys`] is the real
//! implementation. The runtime's effects go through it too (signals, the
//! umask, service spawning with its output pipe, sync and reboot), so the
//! whole shutdown is a unit test. The free functions below are for the one
//! place with no `Sys` at hand: the last-resort path after a bug.

pub mod clock;
pub mod fake;
pub mod process;
pub mod sender;

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;

/// Mount flags, as the kernel's `MS_*` bits.
pub type MountFlags = u64;

pub const MS_RDONLY: MountFlags = libc::MS_RDONLY as MountFlags;
pub const MS_NOSUID: MountFlags = libc::MS_NOSUID as MountFlags;
pub const MS_NODEV: MountFlags = libc::MS_NODEV as MountFlags;
pub const MS_NOEXEC: MountFlags = libc::MS_NOEXEC as MountFlags;
pub const MS_REMOUNT: MountFlags = libc::MS_REMOUNT as MountFlags;
pub const MS_BIND: MountFlags = libc::MS_BIND as MountFlags;
pub const MS_REC: MountFlags = libc::MS_REC as MountFlags;
pub const MS_SHARED: MountFlags = libc::MS_SHARED as MountFlags;

/// `finit_module` flag: the file is compressed and the kernel decompresses
/// it (Linux 6.4+, CONFIG_MODULE_DECOMPRESS).
pub const MODULE_INIT_COMPRESSED_FILE: i32 = 4;

/// One mount(2) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountCall<'a> {
    pub source: Option<&'a str>,
    pub target: &'a Path,
    pub fstype: Option<&'a str>,
    pub flags: MountFlags,
    pub data: Option<&'a str>,
}

/// A service started by [`Sys::spawn_service`].
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    /// The read end of the service's stdout and stderr (non-blocking,
    /// close-on-exec); `None` when there is nothing to read (the fake).
    pub output: Option<OwnedFd>,
}

/// The machine as the boot plan, the runtime and the shutdown see it.
///
/// Errors are `io::Error` carrying the errno (`raw_os_error`), so callers
/// can tell EBUSY, EEXIST or ENOENT apart. `Send + Sync`: the shutdown runs
/// its unmounting on a blocking thread.
pub trait Sys: Send + Sync {
    fn mount(&self, call: &MountCall<'_>) -> io::Result<()>;
    /// umount2(target, 0).
    fn umount(&self, target: &Path) -> io::Result<()>;
    /// umount2(target, MNT_DETACH): lazy detach, for busy pseudo file
    /// systems only (they hold no data to flush).
    fn umount_detach(&self, target: &Path) -> io::Result<()>;
    /// mkdir -p with `mode` for every directory created.
    fn create_dir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    fn path_exists(&self, path: &Path) -> bool;
    /// Read a whole (small) file, failing when it is larger than `limit`.
    fn read_file(&self, path: &Path, limit: usize) -> io::Result<Vec<u8>>;
    /// Read `len` bytes at `offset` (block devices, image files).
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Names of the entries of a directory (unsorted, without . and ..).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Write to an existing file (sysctls under /proc/sys).
    fn write_existing(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// finit_module(open(path), params, flags).
    fn finit_module(&self, path: &Path, params: &str, flags: i32) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    fn hostname(&self) -> io::Result<String>;
    /// uname -r.
    fn kernel_release(&self) -> io::Result<String>;
    /// The kernel's recent log messages, oldest first (see
    /// [`crate::boot::kernlog`]); empty when they cannot be read.
    fn kernel_messages(&self) -> Vec<String>;
    /// Who sent the last `signo` (one of [`sender::WATCHED`]) not yet asked
    /// about, taken once. `None` when nothing was recorded.
    fn signal_sender(&self, signo: i32) -> Option<sender::SignalSender>;
    /// Set IFF_UP on a network interface.
    fn set_link_up(&self, ifname: &str) -> io::Result<()>;
    /// reboot(RB_DISABLE_CAD): Ctrl-Alt-Del sends SIGINT to init instead
    /// of rebooting at once.
    fn disable_ctrl_alt_del(&self) -> io::Result<()>;
    /// Wait until something is created in `dir` or `timeout` passes
    /// (whichever first). Used while waiting for a block device.
    fn wait_for_dir_change(&self, dir: &Path, timeout: Duration) -> io::Result<()>;
    /// Stop the watch [`Sys::wait_for_dir_change`] set up (events would
    /// otherwise queue for the life of the process).
    fn end_dir_watch(&self);
    /// [`set_process_name`] (best effort).
    fn set_process_name(&self, name: &str);
    /// pipe2(O_CLOEXEC) with the read end non-blocking: (read, write).
    /// A logind inhibitor lock is such a pipe (the peer gets the write end).
    fn pipe(&self) -> io::Result<(OwnedFd, OwnedFd)>;
    /// kill(pid, signal) to one process. Pids that would address a group,
    /// every process or init itself (0, 1, above `i32::MAX`) are refused
    /// with EINVAL.
    fn kill(&self, pid: u32, signal: Signal) -> io::Result<()>;
    /// kill(-1, signal): every process except init.
    fn kill_all(&self, signal: Signal) -> io::Result<()>;
    /// Whether a process other than init is left that still matters (see
    /// [`any_process_left`]).
    fn any_process_left(&self) -> bool;
    /// umask(2); returns the previous mask.
    fn umask(&self, mask: u32) -> u32;
    /// Once boot is over: drops the page mappings of init's own program
    /// (see [`process::release_boot_pages`]); returns the bytes dropped.
    fn release_boot_pages(&self) -> io::Result<usize>;
    /// Starts a service (`argv[0]` an absolute path) with stdin from
    /// /dev/null and stdout plus stderr on a fresh pipe; returns once the
    /// child runs the program (see [`process::spawn_service`]).
    fn spawn_service(&self, argv: &[String]) -> io::Result<Spawned>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// sync(2).
    fn sync(&self);
    /// sync(2), then reboot(2) to power off or restart. Returns only if the
    /// reboot failed (in a child PID namespace the kernel ends init instead).
    fn reboot(&self, mode: PowerMode) -> io::Error;
}

/// The real machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSys;

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// An inotify descriptor kept for the life of the process: closing one
/// waits for an RCU grace period (~19 ms), which the boot path must not pay.
struct DirWatch {
    fd: OwnedFd,
    dir: std::path::PathBuf,
    /// The watch descriptor, -1 when nothing is watched.
    wd: i32,
}

static DIR_WATCH: Mutex<Option<DirWatch>> = Mutex::new(None);

impl LinuxSys {
    fn ensure_watch(dir: &Path) -> io::Result<RawFd> {
        let mut guard = DIR_WATCH.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = guard.as_ref() {
            if w.dir == dir {
                return Ok(w.fd.as_raw_fd());
            }
        }
        let fd = match guard.take() {
            Some(w) => {
                if w.wd >= 0 {
                    // SAFETY: w.fd is a valid inotify descriptor, w.wd one of its watches.
                    unsafe { libc::inotify_rm_watch(w.fd.as_raw_fd(), w.wd) };
                }
                w.fd
            }
            None => {
                // SAFETY: inotify_init1 takes only flags and returns a new fd or -1.
                let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
                if raw < 0 {
                    return Err(last_err());
                }
                // SAFETY: raw is a fresh descriptor that nothing else owns.
                unsafe { OwnedFd::from_raw_fd(raw) }
            }
        };
        let c = cpath(dir)?;
        let mask = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ATTRIB;
        // SAFETY: fd is a valid inotify descriptor, c a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            let e = last_err();
            *guard = Some(DirWatch {
                fd,
                dir: std::path::PathBuf::new(),
                wd: -1,
            });
            return Err(e);
        }
        let raw = fd.as_raw_fd();
        *guard = Some(DirWatch {
            fd,
            dir: dir.to_path_buf(),
            wd,
        });
        Ok(raw)
    }

    /// Stop watching (the descriptor itself stays open: see [`DirWatch`]).
    fn end_watch() {
        let mut guard = DIR_WATCH.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = guard.as_mut() {
            if w.wd >= 0 {
                // SAFETY: w.fd is a valid inotify descriptor, w.wd one of its watches.
                unsafe { libc::inotify_rm_watch(w.fd.as_raw_fd(), w.wd) };
            }
            w.wd = -1;
            w.dir = std::path::PathBuf::new();
            // Drop what is queued, including the kernel's IN_IGNORED.
            drain_events(w.fd.as_raw_fd());
        }
    }
}

impl Sys for LinuxSys {
    fn mount(&self, call: &MountCall<'_>) -> io::Result<()> {
        let source = call.source.map(cstring).transpose()?;
        let target = cpath(call.target)?;
        let fstype = call.fstype.map(cstring).transpose()?;
        let data = call.data.map(cstring).transpose()?;
        // SAFETY: every pointer is either null or a NUL-terminated string that
        // outlives the call; mount(2) does not keep them.
        let rc = unsafe {
            libc::mount(
                source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                target.as_ptr(),
                fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                call.flags as libc::c_ulong,
                data.as_ref()
                    .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(last_err())
        }
    }

    fn umount(&self, target: &Path) -> io::Result<()> {
        let t = cpath(target)?;
        // SAFETY: t is a NUL-terminated path valid for the call.
        let rc = unsafe { libc::umount2(t.as_ptr(), 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(last_err())
        }
    }

    fn umount_detach(&self, target: &Path) -> io::Result<()> {
        let t = cpath(target)?;
        // SAFETY: t is a NUL-terminated path valid for the call.
        let rc = unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
        if rc == 0 {
            Ok(())
        } else {
            Err(last_err())
        }
    }

    fn create_dir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
    }

    fn path_exists(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }

    fn read_file(&self, path: &Path, limit: usize) -> io::Result<Vec<u8>> {
        let f = File::open(path)?;
        let mut buf = Vec::new();
        f.take(limit as u64 + 1).read_to_end(&mut buf)?;
        if buf.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file larger than {limit} bytes"),
            ));
        }
        Ok(buf)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    fn write_existing(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(data)
    }

    fn finit_module(&self, path: &Path, params: &str, flags: i32) -> io::Result<()> {
        let f = File::open(path)?;
        let p = cstring(params)?;
        // SAFETY: finit_module takes a valid open fd (f lives past the call),
        // a NUL-terminated parameter string and integer flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                f.as_raw_fd(),
                p.as_ptr(),
                flags as libc::c_int,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(last_err())
        }
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        // SAFETY: the pointer and length describe the bytes of `name`.
        let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(last_err())
        }
    }

    fn hostname(&self) -> io::Result<String> {
        uname_field(|u| &u.nodename)
    }

    fn kernel_release(&self) -> io::Result<String> {
        uname_field(|u| &u.release)
    }

    fn kernel_messages(&self) -> Vec<String> {
        crate::boot::kernlog::recent_kernel_messages()
    }

    fn signal_sender(&self, signo: i32) -> Option<sender::SignalSender> {
        sender::take(signo)
    }

    fn set_link_up(&self, ifname: &str) -> io::Result<()> {
        let name = ifname.as_bytes();
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: plain socket(2) call; the result is checked below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(last_err());
        }
        // SAFETY: raw is a fresh descriptor owned by nobody else.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags of `req`,
        // which lives for the whole call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
            return Err(last_err());
        }
        // SAFETY: the kernel filled ifru_flags above; reading the union field
        // that was written.
        unsafe {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        }
        // SAFETY: SIOCSIFFLAGS reads `req`, valid for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
            return Err(last_err());
        }
        Ok(())
    }

    fn disable_ctrl_alt_del(&self) -> io::Result<()> {
        // SAFETY: reboot(2) with RB_DISABLE_CAD only flips the kernel's
        // Ctrl-Alt-Del behaviour (EINVAL in a child PID namespace).
        let rc = unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
        if rc == 0 {
            Ok(())
        } else {
            Err(last_err())
        }
    }

    fn end_dir_watch(&self) {
        LinuxSys::end_watch()
    }

    fn set_process_name(&self, name: &str) {
        set_process_name(name)
    }

    fn pipe(&self) -> io::Result<(OwnedFd, OwnedFd)> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let flags = OFlag::from_bits_truncate(fcntl(&read, FcntlArg::F_GETFL)?);
        fcntl(&read, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok((read, write))
    }

    fn kill(&self, pid: u32, signal: Signal) -> io::Result<()> {
        let raw = match i32::try_from(pid) {
            Ok(raw) if raw > 1 => raw,
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal).map_err(io::Error::from)
    }

    fn kill_all(&self, signal: Signal) -> io::Result<()> {
        kill_all(signal).map_err(io::Error::from)
    }

    fn any_process_left(&self) -> bool {
        any_process_left()
    }

    fn umask(&self, mask: u32) -> u32 {
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
            mask as libc::mode_t,
        ));
        old.bits()
    }

    fn release_boot_pages(&self) -> io::Result<usize> {
        process::release_boot_pages()
    }

    fn spawn_service(&self, argv: &[String]) -> io::Result<Spawned> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let flags = fcntl(&read_end, FcntlArg::F_GETFL)?;
        fcntl(
            &read_end,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )?;
        let pid = process::spawn_service(argv, write_end)?;
        Ok(Spawned {
            pid,
            output: Some(read_end),
        })
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync(&self) {
        sync()
    }

    fn reboot(&self, mode: PowerMode) -> io::Error {
        sync();
        let cmd = match mode {
            PowerMode::PowerOff => libc::RB_POWER_OFF,
            PowerMode::Restart => libc::RB_AUTOBOOT,
        };
        // SAFETY: reboot(2) with a valid command; it does not return on success.
        unsafe {
            libc::reboot(cmd);
        }
        last_err()
    }

    fn wait_for_dir_change(&self, dir: &Path, timeout: Duration) -> io::Result<()> {
        let fd = LinuxSys::ensure_watch(dir)?;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: pfd is one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = last_err();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
        // Their content does not matter: the caller rescans.
        drain_events(fd);
        Ok(())
    }
}

/// Read and drop every queued event of a non-blocking inotify descriptor.
fn drain_events(fd: RawFd) {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is writable for its full length; fd is non-blocking.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
    }
}

fn uname_field(pick: impl Fn(&libc::utsname) -> &[libc::c_char; 65]) -> io::Result<String> {
    // SAFETY: utsname is plain old data; all-zero is valid.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(last_err());
    }
    let field = pick(&u);
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// How the machine ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerMode {
    PowerOff,
    Restart,
}

impl From<kios_protocol::PowerMode> for PowerMode {
    fn from(mode: kios_protocol::PowerMode) -> PowerMode {
        match mode {
            kios_protocol::PowerMode::Poweroff => PowerMode::PowerOff,
            kios_protocol::PowerMode::Reboot => PowerMode::Restart,
        }
    }
}

/// Rename the process: `comm` via PR_SET_NAME, and the command line
/// (`/proc/1/cmdline`, what `ps` shows) by overwriting the original argv
/// area in place (its bounds come from /proc/self/stat, so this part needs
/// /proc mounted; call again after the base mounts). When the argv area is
/// too short for the name, PR_SET_MM_ARG_START/END (needs
/// CAP_SYS_RESOURCE) points the kernel at a buffer that lives for the rest
/// of the process. Best effort: failures are ignored (the name is cosmetic).
pub fn set_process_name(name: &str) {
    let mut comm = [0u8; 16];
    for (dst, src) in comm.iter_mut().zip(name.as_bytes().iter().take(15)) {
        *dst = *src;
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
    let Some((start, end)) = argv_area() else {
        return;
    };
    let len = end.saturating_sub(start) as usize;
    if len > name.len() && start != 0 {
        let bytes = name.as_bytes();
        // SAFETY: [start, end) is this process's argv area as the kernel
        // reports it: mapped, writable memory that held the argument strings
        // at exec. We overwrite only that range; std copies arguments out of
        // it on each `env::args()` call and keeps no borrowed slices into it.
        unsafe {
            let p = start as *mut u8;
            std::ptr::write_bytes(p, 0, len);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        }
        return;
    }
    let Ok(c) = CString::new(name) else { return };
    let bytes: &'static [u8] = Box::leak(c.into_bytes_with_nul().into_boxed_slice());
    let start = bytes.as_ptr() as libc::c_ulong;
    let end = start + bytes.len() as libc::c_ulong;
    let set = |opt: libc::c_int, v: libc::c_ulong| -> bool {
        // SAFETY: PR_SET_MM_ARG_* only records addresses; they point into a
        // leaked buffer that stays valid and readable for the process life.
        unsafe { libc::prctl(libc::PR_SET_MM, opt as libc::c_ulong, v, 0, 0) == 0 }
    };
    // The kernel checks start <= end after each call: try both orders.
    if !(set(libc::PR_SET_MM_ARG_START, start) && set(libc::PR_SET_MM_ARG_END, end)) {
        let _ = set(libc::PR_SET_MM_ARG_END, end) && set(libc::PR_SET_MM_ARG_START, start);
    }
}

/// The argv area of this process (arg_start, arg_end of /proc/self/stat).
fn argv_area() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_argv_area(&stat)
}

/// Fields 48 and 49 of a /proc/<pid>/stat line (the command name in
/// parentheses may itself contain spaces and parentheses).
pub fn parse_argv_area(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state).
    let start = fields.get(48 - 3)?.parse().ok()?;
    let end = fields.get(49 - 3)?.parse().ok()?;
    (start < end).then_some((start, end))
}

/// kill(-1, sig): every process except init itself.
fn kill_all(sig: nix::sys::signal::Signal) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), sig)
}

/// Whether any process other than init is left that still matters:
/// kernel threads (PF_KTHREAD; visible in the initial PID namespace, where
/// `kill(-1, 0)` would always succeed because of them) and zombies (they
/// hold no files; the reaper collects them) do not count. Reads /proc; if
/// /proc cannot be read, falls back to `kill(-1, 0) != ESRCH`.
pub fn any_process_left() -> bool {
    let own = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return kill_minus_one_finds_someone();
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == own {
            continue;
        }
        // A process that ended between readdir and this read is gone.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if process_counts(&stat) {
            return true;
        }
    }
    false
}

fn kill_minus_one_finds_someone() -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// The kernel's PF_KTHREAD task flag.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether a /proc/<pid>/stat line is a live user process (not a kernel
/// thread, not a zombie). An unparsable line counts (be safe: wait).
pub fn process_counts(stat: &str) -> bool {
    let Some(close) = stat.rfind(')') else {
        return true;
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state), fields[6] field 9 (flags).
    let state = fields.first().copied().unwrap_or("");
    let Some(flags) = fields.get(6).and_then(|f| f.parse::<u64>().ok()) else {
        return true;
    };
    if flags & PF_KTHREAD != 0 {
        return false;
    }
    !matches!(state, "Z" | "X" | "x")
}

/// sync(2).
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// [`Sys::reboot`] on the real machine; if it returns (it failed), exit
/// with status 1. In a child PID namespace the kernel ends init with SIGINT
/// (power off) or SIGHUP (restart).
pub fn final_reboot(mode: PowerMode) -> ! {
    let error = LinuxSys.reboot(mode);
    crate::kerr!("reboot: {error}");
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_watch_wakes_on_a_new_entry_and_times_out_otherwise() {
        let dir = std::env::temp_dir().join(format!("kios-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create dir");
        // Nothing happens: the wait ends at its timeout.
        let t = std::time::Instant::now();
        LinuxSys
            .wait_for_dir_change(&dir, Duration::from_millis(50))
            .expect("wait");
        assert!(t.elapsed() >= Duration::from_millis(50));
        // The watch exists now; a new entry is pending before the next wait,
        // which must return at once instead of after 20 s.
        std::fs::write(dir.join("vda1"), b"").expect("create entry");
        let t = std::time::Instant::now();
        LinuxSys
            .wait_for_dir_change(&dir, Duration::from_secs(20))
            .expect("wait");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        // Watch ended: a new entry no longer wakes a wait.
        LinuxSys.end_dir_watch();
        std::fs::write(dir.join("vda2"), b"").expect("create entry");
        let guard = DIR_WATCH.lock().unwrap_or_else(|e| e.into_inner());
        let raw = guard
            .as_ref()
            .map(|w| (w.fd.as_raw_fd(), w.wd))
            .expect("fd kept open");
        drop(guard);
        assert_eq!(raw.1, -1);
        let mut pfd = libc::pollfd {
            fd: raw.0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd; timeout 0 only checks readiness.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        assert_eq!(ready, 0, "no event after the watch ended");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn which_processes_count_as_left() {
        // pid (comm) state ppid pgrp session tty tpgid flags ...
        assert!(process_counts("84 (crio) S 1 84 84 0 -1 4194560 100 0"));
        assert!(process_counts(
            "90 (we (ird) name) R 1 90 90 0 -1 4194304 1"
        ));
        assert!(!process_counts("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0"));
        assert!(!process_counts("15 (ksoftirqd/0) S 2 0 0 0 -1 69238848 0"));
        assert!(!process_counts("87 (kubelet) Z 1 87 87 0 -1 4227332 0"));
        assert!(process_counts("garbage"));
        assert!(process_counts("1 (x) S"));
    }

    #[test]
    fn argv_area_from_stat() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = "140737488347000".into();
        fields[49 - 3] = "140737488347006".into();
        let line = format!("1 (we ird) name)) {}", fields.join(" "));
        assert_eq!(
            parse_argv_area(&line),
            Some((140737488347000, 140737488347006))
        );
        assert_eq!(parse_argv_area("1 (init) S 0"), None);
        assert_eq!(parse_argv_area("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").expect("read own stat");
        let (start, end) = parse_argv_area(&own).expect("own argv area");
        assert!(end > start);
    }
}
