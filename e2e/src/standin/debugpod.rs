//! The admin script runner of the kubelet stand-in: a child process that
//! looks like a `kubectl debug node` pod and runs scripted commands, so VM
//! tests can act as an administrator and read the results on the console.
//!
//! The child enters a new mount namespace (slave propagation, so nothing
//! leaks back to the host), mounts a tmpfs root holding `/bin/kiosctl`
//! (bind-mounted from the host), `/host` (a recursive bind of the real
//! `/`), `/dev` (a recursive bind) and a `/proc`, and chroots into it:
//! kiosctl must find the socket at `/host/run/system.sock`, exactly as in
//! a debug pod. With `debug_cgroup=NAME` in kubelet.conf it first moves
//! itself into the cgroup `/sys/fs/cgroup/NAME` (like a pod's processes).
//!
//! Script lines (blank lines and `#` comments are skipped; `<n>` is the
//! 1-based line number in the script; words are split on whitespace, no
//! quoting):
//! - `kiosctl ARGS...`: prints `KIOS-E2E BEGIN <n> kiosctl ARGS`, then the
//!   command's stdout and stderr lines as they come, unprefixed, then
//!   `KIOS-E2E END <n> rc=<code>` (128+N when killed by signal N; `timeout`
//!   when it ran longer than 60 s and was killed);
//! - `sleep MS`;
//! - `signal <SIG> <PID>`: kill(2) from the debug child, e.g. `signal TERM
//!   1`; prints `KIOS-E2E signal <SIG> <PID> ok` or `... error <why>`;
//! - `plant PATH`: creates an executable file at `/host/PATH`; prints
//!   `KIOS-E2E planted PATH`;
//! - `wait-file PATH MS`: waits up to MS for `/host/PATH` to exist; prints
//!   `KIOS-E2E wait-file PATH found` or `... timeout`;
//! - `host PROGRAM ARGS...`: runs PROGRAM of the node in init's mount
//!   namespace, as an intruder in a privileged pod would (`/host/bin/nsenter
//!   -t 1 -m`), with its output in a BEGIN/END block like `kiosctl`.
//!
//! The runner prints `KIOS-E2E debug-pod ready` once inside its root and
//! `KIOS-E2E debug-pod done` at the end. All output goes to stdout, the
//! events file and the console, like every stand-in line.

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{emit, emit_raw, open_sinks, Config, RUN_DIR};

/// The argument that makes the kubelet stand-in run a script.
pub const ARG: &str = "--kios-e2e-debug-pod";

/// Longest a scripted kiosctl may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest script read.
const MAX_SCRIPT_BYTES: usize = 64 * 1024;

/// One parsed script line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Kiosctl(Vec<String>),
    Sleep(u64),
    Signal { signal: String, pid: i32 },
    Plant(String),
    WaitFile { path: String, ms: u64 },
    Host(Vec<String>),
}

/// Parses one script line; `Ok(None)` for blank and comment lines.
pub fn parse_line(line: &str) -> Result<Option<Step>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&first, rest)) = words.split_first() else {
        return Ok(None);
    };
    if first.starts_with('#') {
        return Ok(None);
    }
    let number = |text: &str| -> Result<u64, String> {
        text.parse()
            .map_err(|_| format!("'{text}' is not a number of milliseconds"))
    };
    match (first, rest) {
        ("kiosctl", args) => Ok(Some(Step::Kiosctl(
            args.iter().map(|a| a.to_string()).collect(),
        ))),
        ("sleep", [ms]) => Ok(Some(Step::Sleep(number(ms)?))),
        ("signal", [signal, pid]) => {
            parse_signal(signal)?;
            let pid = pid
                .parse()
                .map_err(|_| format!("'{pid}' is not a process id"))?;
            Ok(Some(Step::Signal {
                signal: signal.to_string(),
                pid,
            }))
        }
        ("plant", [path]) => Ok(Some(Step::Plant(path.to_string()))),
        ("host", [_, ..]) => Ok(Some(Step::Host(
            rest.iter().map(|a| a.to_string()).collect(),
        ))),
        ("wait-file", [path, ms]) => Ok(Some(Step::WaitFile {
            path: path.to_string(),
            ms: number(ms)?,
        })),
        (verb, _) => Err(format!("cannot understand '{verb}' with these arguments")),
    }
}

/// `TERM`, `SIGTERM` or a number.
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("unknown signal {n}"));
    }
    let name = if text.starts_with("SIG") {
        text.to_string()
    } else {
        format!("SIG{text}")
    };
    Signal::from_str(&name).map_err(|_| format!("unknown signal '{text}'"))
}

/// Runs the script at `script` (a path as the kubelet sees it); returns
/// the exit code.
pub fn main(script: Option<&str>) -> i32 {
    let Some(script) = script else {
        emit("debug-pod error no script given");
        return 2;
    };
    // Before anything else: the sinks must be open before the chroot.
    open_sinks();
    let text = match std::fs::read(script) {
        Ok(bytes) if bytes.len() <= MAX_SCRIPT_BYTES => {
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Ok(_) => {
            emit(&format!(
                "debug-pod error script {script} is larger than {MAX_SCRIPT_BYTES} bytes"
            ));
            return 1;
        }
        Err(e) => {
            emit(&format!("debug-pod error cannot read script {script}: {e}"));
            return 1;
        }
    };
    let config = Config::load("kubelet");
    if let Some(cgroup) = config.get("debug_cgroup") {
        if let Err(e) = join_cgroup(cgroup) {
            emit(&format!(
                "debug-pod warning cannot join cgroup {cgroup}: {e}"
            ));
        }
    }
    if let Err(e) = enter_debug_root() {
        emit(&format!(
            "debug-pod error cannot set up the debug root: {e}"
        ));
        return 1;
    }
    emit("debug-pod ready");
    for (index, line) in text.lines().enumerate() {
        let n = index + 1;
        match parse_line(line) {
            Ok(None) => {}
            Ok(Some(step)) => run_step(n, &step),
            Err(why) => emit(&format!("script-error {n} {why}")),
        }
    }
    emit("debug-pod done");
    0
}

fn join_cgroup(name: &str) -> std::io::Result<()> {
    let dir = Path::new("/sys/fs/cgroup").join(name.trim_start_matches('/'));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cgroup.procs"), "0")
}

fn io_err(what: &str, e: nix::Error) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// Builds the debug pod's root and chroots into it.
fn enter_debug_root() -> std::io::Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| io_err("unshare mount namespace", e))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| io_err("make / a slave", e))?;
    let root = PathBuf::from(RUN_DIR).join("debug-root");
    std::fs::create_dir_all(&root)?;
    nix::mount::mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(|e| io_err("mount tmpfs", e))?;
    for dir in ["bin", "host", "dev", "proc"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::write(root.join("bin/kiosctl"), b"")?;
    nix::mount::mount(
        Some("/bin/kiosctl"),
        &root.join("bin/kiosctl"),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| io_err("bind /bin/kiosctl", e))?;
    nix::mount::mount(
        Some("/"),
        &root.join("host"),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| io_err("rbind / at /host", e))?;
    // A pod has /dev (kiosctl's stdin is /dev/null) and /proc.
    nix::mount::mount(
        Some("/dev"),
        &root.join("dev"),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| io_err("rbind /dev", e))?;
    nix::mount::mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| io_err("mount /proc", e))?;
    nix::unistd::chroot(&root).map_err(|e| io_err("chroot", e))?;
    std::env::set_current_dir("/")?;
    Ok(())
}

fn run_step(n: usize, step: &Step) {
    match step {
        Step::Kiosctl(args) => run_kiosctl(n, args),
        Step::Host(args) => run_on_host(n, args),
        Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(*ms)),
        Step::Signal { signal, pid } => {
            let result = parse_signal(signal).and_then(|sig| {
                nix::sys::signal::kill(Pid::from_raw(*pid), sig).map_err(|e| e.to_string())
            });
            match result {
                Ok(()) => emit(&format!("signal {signal} {pid} ok")),
                Err(why) => emit(&format!("signal {signal} {pid} error {why}")),
            }
        }
        Step::Plant(path) => match plant(path) {
            Ok(()) => emit(&format!("planted {path}")),
            Err(e) => emit(&format!("plant-error {path} {e}")),
        },
        Step::WaitFile { path, ms } => {
            let host = host_path(path);
            let deadline = Instant::now() + Duration::from_millis(*ms);
            loop {
                if host.exists() {
                    emit(&format!("wait-file {path} found"));
                    break;
                }
                if Instant::now() >= deadline {
                    emit(&format!("wait-file {path} timeout"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn host_path(path: &str) -> PathBuf {
    Path::new("/host").join(path.trim_start_matches('/'))
}

fn plant(path: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let target = host_path(path);
    std::fs::write(&target, b"#!/bin/sh\necho planted by kios-e2e\n")?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
}

fn run_on_host(n: usize, args: &[String]) {
    emit(&format!("BEGIN {n} host {}", args.join(" ")));
    let mut argv: Vec<String> = ["-t", "1", "-m", "--"].map(String::from).to_vec();
    argv.extend(args.iter().cloned());
    let rc = match spawn_merged("/host/bin/nsenter", &argv) {
        Ok(rc) => rc,
        Err(e) => {
            emit_raw(&format!("cannot run /host/bin/nsenter: {e}\n"));
            "127".to_string()
        }
    };
    emit(&format!("END {n} rc={rc}"));
}

fn run_kiosctl(n: usize, args: &[String]) {
    emit(&format!("BEGIN {n} kiosctl {}", args.join(" ")));
    let rc = match spawn_merged("/bin/kiosctl", args) {
        Ok(rc) => rc,
        Err(e) => {
            let found = match std::fs::metadata("/bin/kiosctl") {
                Ok(meta) => format!("it exists, {} bytes", meta.len()),
                Err(e) => format!("it cannot be found: {e}"),
            };
            emit_raw(&format!("cannot run /bin/kiosctl ({found}): {e}\n"));
            "127".to_string()
        }
    };
    emit(&format!("END {n} rc={rc}"));
}

/// Runs `program` with stdout and stderr on one pipe, printing its lines
/// as they come; returns the exit code as text.
fn spawn_merged(program: &str, args: &[String]) -> std::io::Result<String> {
    let (read_end, write_end): (OwnedFd, OwnedFd) =
        nix::unistd::pipe().map_err(|e| io_err("pipe", e))?;
    let write_clone = write_end.try_clone()?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(write_clone))
        .spawn()?;
    // The Command (and its copies of the write end) is gone: EOF comes when
    // kiosctl and anything it started have exited.
    let reader = std::thread::spawn(move || {
        let reader = BufReader::new(std::fs::File::from(read_end));
        for line in reader.split(b'\n') {
            match line {
                Ok(line) => emit_raw(&format!("{}\n", String::from_utf8_lossy(&line))),
                Err(_) => break,
            }
        }
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let rc = loop {
        match child.try_wait()? {
            Some(status) => {
                break match (
                    status.code(),
                    std::os::unix::process::ExitStatusExt::signal(&status),
                ) {
                    (Some(code), _) => code.to_string(),
                    (None, Some(sig)) => (128 + sig).to_string(),
                    (None, None) => "unknown".to_string(),
                }
            }
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break "timeout".to_string();
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let _ = reader.join();
    Ok(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_lines() {
        assert_eq!(parse_line("   "), Ok(None));
        assert_eq!(parse_line("# a comment"), Ok(None));
        assert_eq!(
            parse_line("kiosctl -o json status"),
            Ok(Some(Step::Kiosctl(vec![
                "-o".into(),
                "json".into(),
                "status".into()
            ])))
        );
        assert_eq!(parse_line("kiosctl"), Ok(Some(Step::Kiosctl(vec![]))));
        assert_eq!(parse_line("sleep 250"), Ok(Some(Step::Sleep(250))));
        assert_eq!(
            parse_line("signal TERM 1"),
            Ok(Some(Step::Signal {
                signal: "TERM".into(),
                pid: 1
            }))
        );
        assert_eq!(
            parse_line("plant /bin/evil"),
            Ok(Some(Step::Plant("/bin/evil".into())))
        );
        assert_eq!(
            parse_line("wait-file /run/x 500"),
            Ok(Some(Step::WaitFile {
                path: "/run/x".into(),
                ms: 500
            }))
        );
    }

    #[test]
    fn bad_script_lines_are_errors() {
        assert!(parse_line("sleep soon").is_err());
        assert!(parse_line("sleep").is_err());
        assert!(parse_line("signal NOPE 1").is_err());
        assert!(parse_line("signal TERM one").is_err());
        assert!(parse_line("rm -rf /").is_err());
    }

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGINT"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn host_paths_stay_under_host() {
        assert_eq!(host_path("/bin/x"), PathBuf::from("/host/bin/x"));
        assert_eq!(host_path("bin/x"), PathBuf::from("/host/bin/x"));
    }
}
