//! The kubelet stand-in (`/bin/kubelet` in test images): behaves like the
//! patched kubelet on the one-byte system socket protocol.
//!
//! At start it records its argv to `/run/kios-e2e/kubelet.argv` and the
//! descriptors it inherited to `/run/kios-e2e/kubelet.fds`, prints
//! `KIOS-E2E kubelet started pid=N argv=<json>` and `KIOS-E2E kubelet
//! crio-socket=present|absent` (whether cri-o's socket existed when it was
//! started), connects to
//! `/run/system.sock` (retrying while it is absent), keeps the connection
//! open and waits for the byte 0x01. Then it prints `KIOS-E2E kubelet
//! shutdown-event`, "evicts pods" for its grace period, prints `KIOS-E2E
//! kubelet grace-done`, prints `KIOS-E2E kubelet continue-sent` and writes
//! 0x02 (printing `continue-failed` if that write fails), then waits to be
//! killed. An admin `script=` starts only once it is connected.
//! SIGTERM: exit 0 (unless `ignore_sigterm=true`, see [`super::watch_sigterm`]).
//!
//! `/etc/kios-e2e/kubelet.conf` keys:
//! - `grace_ms=N`: the grace period; else `shutdownGracePeriod` of
//!   `/etc/kubernetes/config.yaml`; else 30 s (the image default);
//! - `answer_shutdown=false`: never answer 0x01 (tests init's timeout);
//! - `refresh_lock_ms=N`: send 0x02 every N ms with no shutdown in progress
//!   (the real kubelet does this when it refreshes its lock; init must
//!   ignore it);
//! - `crash_times=K` + `exit_code=C` (default 1): exit with C right after
//!   start for the first K starts of this boot (counted in
//!   `/run/kios-e2e/kubelet.starts`), printing `KIOS-E2E kubelet crashing
//!   start=S code=C mono_ms=T`;
//! - `mode=upstream`: behave like the upstream kubelet on the system
//!   D-Bus instead (logind's inhibitor locks; see [`super::upstream`]);
//! - `connect_timeout_ms=N`: give up connecting after N ms (default 10000;
//!   exit 1);
//! - `flood_lines=N`, `flood_line_bytes=B`: what SIGUSR1 writes to stdout
//!   (see [`super::flood`]);
//! - `regrow=true`: once per boot, once connected, start a process tree
//!   that ignores SIGTERM and grows back when part of it is killed (see
//!   [`super::regrow`]);
//! - `script=PATH` (+ `debug_cgroup=NAME`): once per boot, run an admin
//!   script in a child that looks like a `kubectl debug node` pod (see
//!   [`super::debugpod`]).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{count_start, emit, monotonic_ms, record_argv, watch_sigterm, Config, RUN_DIR};

/// The system socket the patched kubelet connects to.
pub const SYSTEM_SOCKET: &str = "/run/system.sock";

/// The kubelet's configuration (for `shutdownGracePeriod`).
pub const KUBELET_CONFIG: &str = "/etc/kubernetes/config.yaml";

/// Grace when nothing says otherwise (the image's config.yaml value).
pub const DEFAULT_GRACE_MS: u64 = 30_000;

const CMD_CONTINUE_SHUTDOWN: u8 = 0x02;
const EVENT_SHUTDOWN: u8 = 0x01;

/// Runs the stand-in; returns the exit code.
pub fn main(argv: Vec<String>) -> i32 {
    if argv.get(1).map(String::as_str) == Some(super::debugpod::ARG) {
        return super::debugpod::main(argv.get(2).map(String::as_str));
    }
    if argv.get(1).map(String::as_str) == Some(super::regrow::ARG) {
        return super::regrow::main(
            argv.get(2).map(String::as_str),
            argv.get(3).map(String::as_str),
        );
    }
    let inherited = super::open_fds();
    // Before anything else: did cri-o's socket exist when we were started?
    let crio_socket = Path::new(super::crio::SOCKET).exists();
    watch_sigterm("kubelet", || emit("kubelet sigterm"));
    let config = Config::load("kubelet");
    let start = count_start("kubelet");
    let json = record_argv("kubelet", &argv);
    super::record_fds("kubelet", &inherited);
    emit(&format!(
        "kubelet started pid={} argv={json}",
        std::process::id()
    ));
    emit(&format!(
        "kubelet crio-socket={}",
        if crio_socket { "present" } else { "absent" }
    ));

    if start <= config.u64_or("crash_times", 0) {
        let code = config.i32_or("exit_code", 1);
        emit(&format!(
            "kubelet crashing start={start} code={code} mono_ms={}",
            monotonic_ms()
        ));
        return code;
    }

    if config.get("mode") == Some("upstream") {
        return super::upstream::main(&config);
    }

    let timeout = Duration::from_millis(config.u64_or("connect_timeout_ms", 10_000));
    let mut stream = match connect(timeout) {
        Ok(stream) => stream,
        Err(e) => {
            emit(&format!("kubelet cannot-connect {SYSTEM_SOCKET}: {e}"));
            return 1;
        }
    };
    emit("kubelet connected");

    // The admin script starts only once the kubelet is connected, so what it
    // does (status, shutdown) sees graceful shutdown armed, as on a real node.
    if let Some(script) = config.get("script") {
        start_script_once(script);
    }
    if config.bool_or("regrow", false) {
        start_regrow_once();
    }

    let refresh = config.u64_or("refresh_lock_ms", 0);
    if refresh > 0 {
        start_lock_refresher(&stream, refresh);
    }

    let answer = config.bool_or("answer_shutdown", true);
    let mut shutting_down = false;
    let mut buf = [0u8; 64];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                emit("kubelet socket-closed");
                super::park_forever();
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                emit(&format!("kubelet socket-error {e}"));
                super::park_forever();
            }
        };
        for &byte in &buf[..n] {
            if byte != EVENT_SHUTDOWN {
                emit(&format!("kubelet unexpected-byte 0x{byte:02x}"));
                continue;
            }
            if shutting_down {
                emit("kubelet shutdown-event-again");
                continue;
            }
            shutting_down = true;
            emit("kubelet shutdown-event");
            if !answer {
                emit("kubelet not-answering");
                continue;
            }
            let grace = grace_ms(&config);
            emit(&format!("kubelet evicting grace_ms={grace}"));
            std::thread::sleep(Duration::from_millis(grace));
            emit("kubelet grace-done");
            // Recorded before the byte goes out: init stops the kubelet
            // within a millisecond of reading it.
            emit("kubelet continue-sent");
            if let Err(e) = stream.write_all(&[CMD_CONTINUE_SHUTDOWN]) {
                emit(&format!("kubelet continue-failed {e}"));
            }
        }
    }
}

fn connect(timeout: Duration) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(SYSTEM_SOCKET) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn start_lock_refresher(stream: &UnixStream, every_ms: u64) {
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(e) => {
            emit(&format!("kubelet error cannot clone socket: {e}"));
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("refresh-lock".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(every_ms));
            if writer.write_all(&[CMD_CONTINUE_SHUTDOWN]).is_err() {
                return;
            }
            emit("kubelet refresh-lock");
        });
    if let Err(e) = spawned {
        emit(&format!("kubelet error cannot start the refresher: {e}"));
    }
}

/// The grace period: `grace_ms`, else config.yaml's `shutdownGracePeriod`,
/// else [`DEFAULT_GRACE_MS`].
pub fn grace_ms(config: &Config) -> u64 {
    if config.get("grace_ms").is_some() {
        return config.u64_or("grace_ms", DEFAULT_GRACE_MS);
    }
    std::fs::read_to_string(KUBELET_CONFIG)
        .ok()
        .and_then(|text| shutdown_grace_period_ms(&text))
        .unwrap_or(DEFAULT_GRACE_MS)
}

/// `shutdownGracePeriod` of a KubeletConfiguration (top-level key only).
pub fn shutdown_grace_period_ms(yaml: &str) -> Option<u64> {
    yaml.lines().find_map(|line| {
        let value = line.strip_prefix("shutdownGracePeriod:")?;
        let value = value.split('#').next().unwrap_or("");
        super::parse_go_duration_ms(value)
    })
}

/// Starts the regrowing tree once per boot (marker `/run/kios-e2e/regrow.started`).
fn start_regrow_once() {
    let _ = std::fs::create_dir_all(RUN_DIR);
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(Path::new(RUN_DIR).join("regrow.started"));
    if created.is_ok() {
        // Not waited for: its own exit is what the tree reacts to.
        let _ = super::regrow::start_one(super::regrow::Role::Keeper);
    }
}

/// Starts the admin script once per boot (marker `/run/kios-e2e/script.done`).
fn start_script_once(script: &str) {
    let marker = Path::new(RUN_DIR).join("script.done");
    let _ = std::fs::create_dir_all(RUN_DIR);
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker);
    if created.is_err() {
        return;
    }
    match Command::new("/proc/self/exe")
        .arg(super::debugpod::ARG)
        .arg(script)
        .spawn()
    {
        Ok(mut child) => {
            let _ = std::thread::Builder::new()
                .name("script".into())
                .spawn(move || {
                    let _ = child.wait();
                });
        }
        Err(e) => emit(&format!("kubelet error cannot start script {script}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_from_kubelet_configuration() {
        let yaml = "apiVersion: kubelet.config.k8s.io/v1beta1\n\
                    kind: KubeletConfiguration\n\
                    shutdownGracePeriod: 1m5s # total\n\
                    shutdownGracePeriodCriticalPods: 10s\n";
        assert_eq!(shutdown_grace_period_ms(yaml), Some(65_000));
        assert_eq!(shutdown_grace_period_ms("kind: X\n"), None);
        assert_eq!(
            shutdown_grace_period_ms("  shutdownGracePeriod: 5s\n"),
            None,
            "only the top-level key counts"
        );
    }

    #[test]
    fn grace_ms_key_wins() {
        assert_eq!(grace_ms(&Config::parse("grace_ms=250")), 250);
    }
}
