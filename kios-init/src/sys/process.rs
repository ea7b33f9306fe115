//! The runtime side's `unsafe` needs, kept in `sys` like every other:
//! - starting supervised services: fork/exec through `std::process::Command`
//!   with pre-exec steps (new session, every inherited descriptor above 2
//!   marked close-on-exec, umask 022). The child is never waited on here: the
//!   one reaper (`crate::reaper`) collects every exit;
//! - registering owned descriptors (pipes, input devices, inotify) with
//!   tokio's reactor (`AsyncFd::register` is `unsafe`: the descriptor must
//!   stay open and the same while registered, which owning types guarantee).
//!
//! Owned by the runtime engineer.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The whole environment a service gets: nothing of init's boot parameters.
pub const SERVICE_ENV: [(&str, &str); 2] = [("PATH", "/bin"), ("HOME", "/")];

/// `close_range(2)` flag: mark the descriptors close-on-exec instead of
/// closing them (std's exec-error pipe must stay usable until exec).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Starts `argv[0]` with `argv[1..]`, stdin from /dev/null and stdout plus
/// stderr to `output` (the write end of the service's log pipe). Returns the
/// child's pid. The child runs in its own session with umask 022, PATH=/bin
/// and HOME=/, in `/`, with no descriptors beyond 0-2.
pub fn spawn_service(argv: &[String], output: OwnedFd) -> io::Result<u32> {
    let Some((program, args)) = argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv"));
    };
    let stderr = output.try_clone()?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(SERVICE_ENV)
        .current_dir("/")
        .stdin(empty_stdin()?)
        .stdout(Stdio::from(output))
        .stderr(Stdio::from(stderr));
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, umask, close_range); it touches
    // no memory shared with the parent and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            // A new session: the services are not in init's process group and
            // have no controlling terminal. Failure (already a leader) is harmless.
            libc::setsid();
            libc::umask(0o022);
            // Every descriptor above stderr closes at exec. Descriptors Rust
            // opened are close-on-exec already; this also covers any a library
            // opened without the flag. ENOSYS (kernel < 5.11) is ignored.
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
    let child = command.spawn()?;
    // Dropping a std Child neither waits nor kills: the reaper owns the exit.
    Ok(child.id())
}

/// /dev/null, or when it is missing (no devtmpfs) the read end of a pipe
/// whose write end is already closed: either way the service reads EOF.
fn empty_stdin() -> io::Result<Stdio> {
    match File::open("/dev/null") {
        Ok(null) => Ok(Stdio::from(null)),
        Err(_) => {
            let (read_end, _write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            Ok(Stdio::from(read_end))
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

    fn wait(pid: u32) -> nix::sys::wait::WaitStatus {
        // Tests run outside PID 1: waiting on our own child directly is fine.
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None)
            .unwrap_or(nix::sys::wait::WaitStatus::StillAlive)
    }

    #[test]
    fn child_gets_minimal_env_null_stdin_and_no_extra_fds() {
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        // An inheritable descriptor that must not reach the child.
        let leaky = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let script = "echo env=$(env | sort | tr '\\n' ' '); \
                      echo fds=$(ls /proc/self/fd | sort -n | tr '\\n' ' '); \
                      read x && echo stdin=data || echo stdin=eof; \
                      echo sid=$(cut -d' ' -f6 /proc/self/stat) pid=$$; umask";
        let argv: Vec<String> = ["/bin/sh", "-c", script]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let pid = spawn_service(&argv, write_end).unwrap();
        let _ = nix::unistd::close(leaky);
        let mut out = String::new();
        std::fs::File::from(read_end)
            .read_to_string(&mut out)
            .unwrap();
        assert!(
            matches!(wait(pid), nix::sys::wait::WaitStatus::Exited(_, 0)),
            "{out}"
        );
        assert!(
            out.contains("env=HOME=/ PATH=/bin PWD=/ ") || out.contains("env=HOME=/ PATH=/bin "),
            "{out}"
        );
        assert!(!out.contains("CARGO"), "{out}");
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
        assert!(out.trim_end().ends_with("0022"), "{out}");
    }

    #[test]
    fn missing_program_is_an_error_not_a_child() {
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let argv = vec!["/nonexistent/kios-test-binary".to_string()];
        let err = spawn_service(&argv, w).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(spawn_service(
            &[],
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap().1
        )
        .is_err());
    }
}
