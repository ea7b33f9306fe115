//! The cri-o stand-in (`/bin/crio` in test images).
//!
//! Records its argv to `/run/kios-e2e/crio.argv` and the descriptors it
//! inherited to `/run/kios-e2e/crio.fds` (`FD TARGET` lines), prints `KIOS-E2E crio
//! started pid=N`, listens on `/var/run/crio/crio.sock` (accepting and
//! closing connections) and exits 0 on SIGTERM, removing the socket (unless
//! `ignore_sigterm=true`, see [`super::watch_sigterm`]).
//!
//! `/etc/kios-e2e/crio.conf` keys:
//! - `listen_delay_ms=N`: wait before creating the socket (default 0);
//! - `exit_after_ms=N` + `exit_code=C` (default 1): exit with C after N ms,
//!   to simulate a crash; with `crash_times=K` only the first K starts of
//!   this boot do so (counted in `/run/kios-e2e/crio.starts`); with
//!   `exit_before_listen=true` it does so before creating its socket (a
//!   cri-o that dies before it is ready);
//! - `orphans=N` + `orphan_ms=M` (default 100): at start, leave N orphaned
//!   grandchildren that exit M ms later, for init to reap. Each prints
//!   `KIOS-E2E crio orphan pid=P` and `KIOS-E2E crio orphan-exit pid=P`;
//! - `zombies=N` (at most 10,000): after start, hand init N zombies at
//!   once: a child starts N grandchildren that exit at once, waits until
//!   all have exited without reaping them, and exits, so all N are
//!   reparented to init in one go. Then prints
//!   `KIOS-E2E crio zombies-handed n=N`.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{count_start, emit, monotonic_ms, record_argv, watch_sigterm, Config};

/// Where cri-o listens (the flag init passes, `--listen`).
pub const SOCKET: &str = "/var/run/crio/crio.sock";

const ORPHAN_PARENT_ARG: &str = "--kios-e2e-orphan-parent";
const ORPHAN_ARG: &str = "--kios-e2e-orphan";
const ZOMBIE_PARENT_ARG: &str = "--kios-e2e-zombie-parent";
const ZOMBIE_ARG: &str = "--kios-e2e-zombie";

/// Runs the stand-in; returns the exit code.
pub fn main(argv: Vec<String>) -> i32 {
    match argv.get(1).map(String::as_str) {
        Some(ORPHAN_PARENT_ARG) => return orphan_parent(argv.get(2)),
        Some(ORPHAN_ARG) => return orphan(argv.get(2)),
        Some(ZOMBIE_PARENT_ARG) => return zombie_parent(argv.get(2)),
        Some(ZOMBIE_ARG) => return 0,
        _ => {}
    }
    let inherited = super::open_fds();
    watch_sigterm("crio", || {
        let _ = std::fs::remove_file(SOCKET);
        emit("crio sigterm");
    });
    let config = Config::load("crio");
    let start = count_start("crio");
    record_argv("crio", &argv);
    super::record_fds("crio", &inherited);
    emit(&format!(
        "crio started pid={} start={start}",
        std::process::id()
    ));

    let orphans = config.u64_or("orphans", 0).min(64);
    let orphan_ms = config.u64_or("orphan_ms", 100);
    for _ in 0..orphans {
        leave_orphan(orphan_ms);
    }
    let zombies = config.u64_or("zombies", 0).min(10_000);
    if zombies > 0 {
        std::thread::spawn(move || {
            match Command::new("/proc/self/exe")
                .arg(ZOMBIE_PARENT_ARG)
                .arg(zombies.to_string())
                .status()
            {
                Ok(status) if status.success() => emit(&format!("crio zombies-handed n={zombies}")),
                Ok(status) => emit(&format!("crio error zombie parent: {status}")),
                Err(e) => emit(&format!("crio error cannot start zombie parent: {e}")),
            }
        });
    }

    if config.bool_or("exit_before_listen", false) {
        if let Some(code) = crash(&config, start) {
            return code;
        }
    }
    let delay = config.u64_or("listen_delay_ms", 0);
    if delay > 0 {
        std::thread::sleep(Duration::from_millis(delay));
    }
    match listen() {
        Ok(listener) => {
            emit(&format!("crio listening path={SOCKET}"));
            let spawned = std::thread::Builder::new()
                .name("accept".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        drop(stream);
                    }
                });
            if let Err(e) = spawned {
                emit(&format!("crio error cannot start accept thread: {e}"));
            }
        }
        Err(e) => {
            emit(&format!("crio error cannot listen on {SOCKET}: {e}"));
            return 1;
        }
    }

    if let Some(code) = crash(&config, start) {
        return code;
    }
    super::park_forever()
}

/// `exit_after_ms`: sleeps, then the exit code to crash with (for the
/// first `crash_times` starts).
fn crash(config: &Config, start: u64) -> Option<i32> {
    let crash_times = config.u64_or("crash_times", 0);
    config.get("exit_after_ms")?;
    let after = config.u64_or("exit_after_ms", 0);
    if crash_times != 0 && start > crash_times {
        return None;
    }
    std::thread::sleep(Duration::from_millis(after));
    let code = config.i32_or("exit_code", 1);
    let _ = std::fs::remove_file(SOCKET);
    emit(&format!(
        "crio exiting code={code} start={start} mono_ms={}",
        monotonic_ms()
    ));
    Some(code)
}

fn listen() -> std::io::Result<UnixListener> {
    if let Some(dir) = Path::new(SOCKET).parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(SOCKET) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(SOCKET)
}

/// Starts a child that starts a grandchild and exits at once: the
/// grandchild is reparented to init.
fn leave_orphan(orphan_ms: u64) {
    let result = Command::new("/proc/self/exe")
        .arg(ORPHAN_PARENT_ARG)
        .arg(orphan_ms.to_string())
        .status();
    if let Err(e) = result {
        emit(&format!("crio error cannot start orphan parent: {e}"));
    }
}

fn orphan_parent(ms: Option<&String>) -> i32 {
    let ms = ms.map(String::as_str).unwrap_or("100");
    match Command::new("/proc/self/exe")
        .arg(ORPHAN_ARG)
        .arg(ms)
        .spawn()
    {
        // Exit without waiting: the grandchild becomes init's.
        Ok(_child) => 0,
        Err(e) => {
            emit(&format!("crio error cannot start orphan: {e}"));
            1
        }
    }
}

fn orphan(ms: Option<&String>) -> i32 {
    let ms: u64 = ms.and_then(|m| m.parse().ok()).unwrap_or(100);
    let pid = std::process::id();
    emit(&format!("crio orphan pid={pid}"));
    std::thread::sleep(Duration::from_millis(ms));
    emit(&format!("crio orphan-exit pid={pid}"));
    0
}

/// Starts `n` children that exit at once, waits (a pipe each child holds
/// reaches end of file) until all have exited, never reaps them, exits:
/// init inherits `n` zombies at once.
fn zombie_parent(n: Option<&String>) -> i32 {
    let n: u64 = n.and_then(|n| n.parse().ok()).unwrap_or(0);
    let (reader, writer) = match nix::unistd::pipe() {
        Ok(ends) => ends,
        Err(e) => {
            emit(&format!("crio error zombie pipe: {e}"));
            return 1;
        }
    };
    for _ in 0..n {
        let out = match writer.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                emit(&format!("crio error zombie pipe: {e}"));
                return 1;
            }
        };
        match Command::new("/proc/self/exe")
            .arg(ZOMBIE_ARG)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(out))
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            // Never waited for: dropping a Child does not reap it.
            Ok(_child) => {}
            Err(e) => {
                emit(&format!("crio error cannot start zombie: {e}"));
                return 1;
            }
        }
    }
    drop(writer);
    let mut reader = std::fs::File::from(reader);
    let mut buf = [0u8; 64];
    while let Ok(read) = std::io::Read::read(&mut reader, &mut buf) {
        if read == 0 {
            break;
        }
    }
    0
}
