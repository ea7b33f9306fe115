//! The runtime side's `unsafe` needs, kept in `sys` like every other:
//! - starting supervised services with `posix_spawn(3)` (musl runs it as
//!   `clone(CLONE_VM|CLONE_VFORK)`: no copy of init's page tables, so a
//!   crashed kubelet is replaced fast). The child gets a new session, every
//!   signal at its default and none blocked, stdin from /dev/null, stdout and
//!   stderr on the given pipe, `PATH=/bin HOME=/` and nothing else. Right
//!   before spawning, every descriptor of init above 2 is marked
//!   close-on-exec (`close_range(CLOSE_RANGE_CLOEXEC)`), so the child gets
//!   exactly 0-2 even if something in init opened a descriptor without the
//!   flag. The child is never waited on here: the one reaper
//!   (`crate::runtime::reaper`) collects every exit;
//! - the event loop's CPU priority ([`raise_loop_priority`]) and the
//!   SIGCHLD flag the owner's loop looks at before every event
//!   ([`flag_sigchld`]);
//! - dropping the page mappings of boot's code once boot is over
//!   ([`release_boot_pages`]);
//! - registering owned descriptors (pipes, input devices, inotify) with
//!   tokio's reactor (`AsyncFd::register` is `unsafe`: the descriptor must
//!   stay open and the same while registered, which owning types guarantee).
//!
//! Owned by the runtime engineer.

use std::ffi::{CString, NulError};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// The whole environment a service gets: nothing of init's boot parameters.
pub const SERVICE_ENV: [&str; 2] = ["PATH=/bin", "HOME=/"];

/// `close_range(2)` flag: mark the descriptors close-on-exec instead of
/// closing them.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

fn nul_error(e: NulError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("argument with a NUL byte: {e}"),
    )
}

/// Marks every descriptor of this process above 2 close-on-exec. Init opens
/// everything with the flag already; this makes sure of it before a spawn.
/// ENOSYS (kernel < 5.11) is ignored.
pub fn mark_all_cloexec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on
    // descriptors; it closes nothing and touches no memory.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// Checks a libc return code of the posix_spawn family (errno as result).
fn check(what: &str, rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::from_raw_os_error(rc);
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

/// The address ranges of `exe`'s read-only mappings (code, read-only
/// data) in a `/proc/PID/smaps` text that hold no page of their own
/// (`Anonymous: 0 kB`: nothing was ever written there, by a debugger's
/// breakpoint say), so that dropping their pages loses nothing.
fn program_mappings(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut current = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first == "Anonymous:" {
            if let Some(range) = current.take() {
                if fields.next() == Some("0") {
                    found.push(range);
                }
            }
            continue;
        }
        // A mapping's header: "lo-hi perms offset dev inode path".
        let Some((lo, hi)) = first.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        let perms = fields.next().unwrap_or("");
        let path = fields.skip(3).collect::<Vec<_>>().join(" ");
        let path = path.strip_suffix(" (deleted)").unwrap_or(&path);
        current = ((perms == "r-xp" || perms == "r--p") && path == exe).then_some((lo, hi));
    }
    found
}

/// Drops this process's page mappings of its own program file (its code
/// and read-only data; never a written page), once boot is over: what the
/// running node executes maps back in at its next use, and the pages only
/// boot ran (mounts, modules, the first start of everything) stop counting
/// in init's resident memory. The pages stay in the page cache (the image's
/// /init is in RAM), so mapping one back costs a minor fault. The layout
/// (kios-init/layout/README.md) puts what runs after this call apart from
/// what ran only before it, so the two share no 64 KiB fault-around window.
/// Returns the bytes of address range dropped.
#[inline(never)]
pub fn release_boot_pages() -> io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for (lo, hi) in program_mappings(&smaps, exe) {
        // SAFETY: [lo, hi) is a whole mapping of the program file, read
        // only and without a private page: dropping its page table entries
        // loses no data (the next access maps the file's page again).
        let rc = unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        released += hi - lo;
    }
    Ok(released)
}

/// Sets `flag` at every SIGCHLD, from an action of init's own next to
/// tokio's handler (see `runtime::sources::Reaping`).
pub fn flag_sigchld(flag: &'static std::sync::atomic::AtomicBool) -> io::Result<()> {
    let action = move || flag.store(true, std::sync::atomic::Ordering::Release);
    // SAFETY: the action stores an atomic, which is async-signal-safe: no
    // allocation, no lock.
    unsafe { signal_hook_registry::register(libc::SIGCHLD, action) }?;
    Ok(())
}

/// The nice value of init's event loop: ahead of every process it starts
/// when the CPUs are contended, so reaping, restarts and the socket keep
/// time on a node whose cores are busy.
pub const LOOP_NICE: i32 = -10;

/// `sched_setscheduler(2)` flag: children (threads included) start with
/// the default policy and, for a negative nice value, nice 0.
const SCHED_RESET_ON_FORK: libc::c_int = 0x4000_0000;

/// Gives the calling thread (the event loop's) nice [`LOOP_NICE`], with
/// `SCHED_RESET_ON_FORK` set first: every thread and process it creates
/// afterwards, the services and init's blocking threads among them, starts
/// at nice 0 like any process. (musl's `sched_setscheduler` is a stub that
/// fails: the system call is made directly.)
pub fn raise_loop_priority() -> io::Result<()> {
    // The kernel's struct sched_param is one int, the static priority (0
    // for SCHED_OTHER); musl's type carries fields the kernel never reads.
    let priority: libc::c_int = 0;
    // SAFETY: `priority` is a valid kernel sched_param that outlives the
    // call; pid 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_OTHER | SCHED_RESET_ON_FORK,
            &priority as *const libc::c_int,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain system call on the calling thread (Linux nice values
    // are per thread); no memory is passed.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, LOOP_NICE) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The attributes and file actions of one spawn, destroyed on drop.
struct SpawnSetup {
    attr: libc::posix_spawnattr_t,
    actions: libc::posix_spawn_file_actions_t,
    attr_init: bool,
    actions_init: bool,
}

impl Drop for SpawnSetup {
    fn drop(&mut self) {
        // SAFETY: each object is destroyed once, and only if initialised.
        unsafe {
            if self.actions_init {
                libc::posix_spawn_file_actions_destroy(&mut self.actions);
            }
            if self.attr_init {
                libc::posix_spawnattr_destroy(&mut self.attr);
            }
        }
    }
}

/// Starts `argv[0]` (an absolute path) with `argv[1..]`, stdin from
/// /dev/null and stdout plus stderr to `output` (the write end of the
/// service's log pipe). Returns the child's pid once it runs the program.
pub fn spawn_service(argv: &[String], output: OwnedFd) -> io::Result<u32> {
    let Some(program) = argv.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv"));
    };
    let program = CString::new(program.as_str()).map_err(nul_error)?;
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(nul_error)?;
    let env: Vec<CString> = SERVICE_ENV
        .iter()
        .map(|e| CString::new(*e))
        .collect::<Result<_, _>>()
        .map_err(nul_error)?;
    let mut arg_ptrs: Vec<*mut libc::c_char> = args.iter().map(|a| a.as_ptr() as *mut _).collect();
    arg_ptrs.push(std::ptr::null_mut());
    let mut env_ptrs: Vec<*mut libc::c_char> = env.iter().map(|e| e.as_ptr() as *mut _).collect();
    env_ptrs.push(std::ptr::null_mut());
    let stdin = empty_stdin()?;

    // SAFETY: all-zero bytes are a valid "not yet initialised" value for
    // this plain C struct; posix_spawnattr_init below initialises it before
    // any other use (SpawnSetup's Drop destroys it only if it did).
    let attr: libc::posix_spawnattr_t = unsafe { std::mem::zeroed() };
    // SAFETY: the same for the file actions and posix_spawn_file_actions_init.
    let actions: libc::posix_spawn_file_actions_t = unsafe { std::mem::zeroed() };
    let mut setup = SpawnSetup {
        attr,
        actions,
        attr_init: false,
        actions_init: false,
    };
    // SAFETY (whole block): every pointer passed is valid for the call:
    // `setup` lives until after posix_spawn returns; the argv/envp arrays
    // are NUL-terminated arrays of pointers into CStrings that outlive the
    // call; the descriptors are open (owned by `stdin` and `output`);
    // sigset_t values are initialised by sigemptyset/sigfillset first.
    unsafe {
        check(
            "posix_spawnattr_init",
            libc::posix_spawnattr_init(&mut setup.attr),
        )?;
        setup.attr_init = true;
        check(
            "posix_spawn_file_actions_init",
            libc::posix_spawn_file_actions_init(&mut setup.actions),
        )?;
        setup.actions_init = true;

        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let flags = libc::POSIX_SPAWN_SETSID as libc::c_int
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        check(
            "posix_spawnattr_setflags",
            libc::posix_spawnattr_setflags(&mut setup.attr, flags as libc::c_short),
        )?;
        check(
            "posix_spawnattr_setsigmask",
            libc::posix_spawnattr_setsigmask(&mut setup.attr, &none),
        )?;
        check(
            "posix_spawnattr_setsigdefault",
            libc::posix_spawnattr_setsigdefault(&mut setup.attr, &all),
        )?;
        for (fd, target) in [
            (stdin.as_raw_fd(), 0),
            (output.as_raw_fd(), 1),
            (output.as_raw_fd(), 2),
        ] {
            check(
                "posix_spawn_file_actions_adddup2",
                libc::posix_spawn_file_actions_adddup2(&mut setup.actions, fd, target),
            )?;
        }

        mark_all_cloexec();
        let mut pid: libc::pid_t = 0;
        let rc = libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            &setup.actions,
            &setup.attr,
            arg_ptrs.as_ptr(),
            env_ptrs.as_ptr(),
        );
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(pid as u32)
    }
}

/// /dev/null, or when it is missing (no devtmpfs) the read end of a pipe
/// whose write end is already closed: either way the service reads EOF.
fn empty_stdin() -> io::Result<OwnedFd> {
    match File::open("/dev/null") {
        Ok(null) => Ok(OwnedFd::from(null)),
        Err(_) => {
            let (read_end, _write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            Ok(read_end)
        }
    }
}

/// Registers a file (pipe end, input device) with the reactor. Must be
/// called inside the tokio runtime; the file should be non-blocking.
pub fn async_file(file: File) -> io::Result<tokio::io::unix::AsyncFd<File>> {
    // SAFETY: `File` owns its descriptor: it stays open and refers to the same
    // file description until the File is dropped, which happens only when the
    // AsyncFd (its owner) is dropped; `as_raw_fd` always returns that fd.
    unsafe { tokio::io::unix::AsyncFd::register(file).map_err(io::Error::from) }
}

/// sendmsg(2) of `bytes` with one descriptor attached (SCM_RIGHTS), without
/// blocking; returns how many bytes went (the descriptor travels with the
/// first of them). The caller's copy of `fd` stays its own to close.
pub fn send_with_fd(socket: BorrowedFd<'_>, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let fds = [fd.as_raw_fd()];
    let cmsgs = [ControlMessage::ScmRights(&fds)];
    let iov = [io::IoSlice::new(bytes)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    sendmsg::<UnixAddr>(socket.as_raw_fd(), &iov, &cmsgs, flags, None).map_err(io::Error::from)
}

/// recvmsg(2) into `buf`, blocking, with up to four descriptors received
/// (SCM_RIGHTS, close-on-exec); the counterpart of [`send_with_fd`], for
/// tests that play the peer.
pub fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::FromRawFd;
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<UnixAddr>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this
            // process for this message; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok((msg.bytes, fds))
}

/// An inotify instance that can be registered with the reactor.
pub struct InotifyFd(pub nix::sys::inotify::Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers an inotify instance (created with IN_NONBLOCK) with the reactor.
pub fn async_inotify(
    inotify: nix::sys::inotify::Inotify,
) -> io::Result<tokio::io::unix::AsyncFd<InotifyFd>> {
    // SAFETY: `Inotify` owns its descriptor (it closes it on drop only), so
    // the fd stays open and the same for the life of the AsyncFd that owns it.
    unsafe { tokio::io::unix::AsyncFd::register(InotifyFd(inotify)).map_err(io::Error::from) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const SMAPS: &str = "\
00200000-00223000 r--p 00000000 00:2f 12                                 /init (deleted)
Rss:                 140 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
00223000-002bd000 r-xp 00022000 00:2f 12                                 /init (deleted)
Rss:                 312 kB
Anonymous:             0 kB
002bd000-002be000 rw-p 000bb000 00:2f 12                                 /init (deleted)
Anonymous:             4 kB
002be000-002bf000 r--p 000bc000 00:2f 12                                 /init (deleted)
Anonymous:             4 kB
7f02a9839000-7f02a983c000 r-xp 00000000 00:00 0 
Anonymous:             0 kB
7f02a983c000-7f02a983d000 r-xp 00000000 00:2f 13                         /init.old
Anonymous:             0 kB
7ffd13cde000-7ffd13cff000 rw-p 00000000 00:00 0                          [stack]
Anonymous:            36 kB
";

    #[test]
    fn program_mappings_are_the_programs_read_only_ones_never_written() {
        assert_eq!(
            program_mappings(SMAPS, "/init"),
            [(0x200000, 0x223000), (0x223000, 0x2bd000)]
        );
        // Not deleted: the same file.
        let live = SMAPS.replace(" (deleted)", "");
        assert_eq!(program_mappings(&live, "/init").len(), 2);
        // A breakpoint written into the code: that mapping is left alone.
        let written = SMAPS.replacen(
            "Rss:                 312 kB\nAnonymous:             0 kB",
            "Rss:                 312 kB\nAnonymous:             4 kB",
            1,
        );
        assert_eq!(program_mappings(&written, "/init"), [(0x200000, 0x223000)]);
        assert!(program_mappings(SMAPS, "/other").is_empty());
        assert!(program_mappings("garbage\nzz-yy r-xp\nAnonymous: 0 kB\n", "/init").is_empty());
    }

    /// Resident KiB of this process's code (its r-xp mappings of itself).
    fn own_code_resident_kib() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let mut kib = 0;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first
                .split_once('-')
                .is_some_and(|(lo, _)| usize::from_str_radix(lo, 16).is_ok())
            {
                inside = line.contains(" r-xp ") && line.ends_with(&*exe.to_string_lossy());
            } else if inside && first == "Rss:" {
                kib += line
                    .split_whitespace()
                    .nth(1)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap();
            }
        }
        kib
    }

    #[test]
    fn release_boot_pages_drops_the_programs_pages_and_it_runs_on() {
        let before = own_code_resident_kib();
        assert!(before > 0);
        let released = release_boot_pages().unwrap();
        let after = own_code_resident_kib();
        assert!(released > 0);
        // What ran since (the read of smaps, the parse) mapped some back.
        assert!(
            after < before,
            "code resident: {before} KiB before, {after} KiB after"
        );
        // And the code still runs, from pages mapped back on demand.
        assert_eq!(program_mappings(SMAPS, "/init").len(), 2);
    }

    fn wait(pid: u32) -> nix::sys::wait::WaitStatus {
        // Tests run outside PID 1: waiting on our own child directly is fine.
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None)
            .unwrap_or(nix::sys::wait::WaitStatus::StillAlive)
    }

    #[test]
    fn child_gets_minimal_env_null_stdin_own_session_and_no_extra_fds() {
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        // A descriptor opened WITHOUT close-on-exec must still not reach the child.
        let leaky = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let script = "echo env=$(env | sort | tr '\\n' ' '); \
                      echo fds=$(ls /proc/self/fd | sort -n | tr '\\n' ' '); \
                      read x && echo stdin=data || echo stdin=eof; \
                      echo sid=$(cut -d' ' -f6 /proc/self/stat) pid=$$; \
                      echo sigpipe=$(grep SigIgn /proc/self/status)";
        let argv: Vec<String> = ["/bin/sh", "-c", script]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let pid = spawn_service(&argv, write_end).unwrap();
        drop(leaky);
        let mut out = String::new();
        std::fs::File::from(read_end)
            .read_to_string(&mut out)
            .unwrap();
        assert!(
            matches!(wait(pid), nix::sys::wait::WaitStatus::Exited(_, 0)),
            "{out}"
        );
        let env_line = out.lines().find(|l| l.starts_with("env=")).unwrap();
        let vars: Vec<&str> = env_line[4..]
            .split_whitespace()
            .filter(|v| !v.starts_with("PWD=") && !v.starts_with("SHLVL=") && !v.starts_with("_="))
            .collect();
        assert_eq!(vars, vec!["HOME=/", "PATH=/bin"], "{out}");
        // ls itself opens one descriptor for the directory it lists.
        let fds_line = out.lines().find(|l| l.starts_with("fds=")).unwrap();
        let fds: Vec<u32> = fds_line[4..]
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        assert!(fds.iter().filter(|f| **f > 2).count() <= 1, "{out}");
        assert!(out.contains("stdin=eof"), "{out}");
        let sid_line = out.lines().find(|l| l.starts_with("sid=")).unwrap();
        let parts: Vec<&str> = sid_line.split_whitespace().collect();
        assert_eq!(
            parts[0][4..],
            parts[1][4..],
            "child is its own session leader: {out}"
        );
        // SIGPIPE is not ignored (the test harness, like init, ignores it).
        let ign = out.lines().find(|l| l.starts_with("sigpipe=")).unwrap();
        let mask = u64::from_str_radix(ign.rsplit(' ').next().unwrap().trim(), 16).unwrap();
        assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
    }

    #[test]
    fn missing_program_is_an_error_not_a_child() {
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let argv = vec!["/nonexistent/kios-test-binary".to_string()];
        let err = spawn_service(&argv, w).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        assert!(spawn_service(&[], w).is_err());
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let bad = vec!["/bin/sh\0x".to_string()];
        assert_eq!(
            spawn_service(&bad, w).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
