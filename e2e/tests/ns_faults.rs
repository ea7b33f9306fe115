//! Namespace sandbox faults (issue 11): a cri-o that never creates its
//! socket, a cri-o that dies before it is ready, /etc/kubernetes files
//! that are malformed, huge, binary or not files at all, a full /var/log
//! under a log flood, a process tree that ignores SIGTERM and grows back,
//! and a pid limit that makes every spawn fail. Each time the kernel log
//! says what is wrong, `status` shows it, and the node keeps doing
//! everything else, shutdown included.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use kios_e2e::cgroup::PidsCgroup;
use kios_e2e::ns::{Sandbox, SandboxConfig, DEFAULT_WAIT};
use nix::sys::signal::Signal;

/// A sandbox whose kubelet evicts its pods in 100 ms at shutdown.
fn fault(name: &str) -> SandboxConfig {
    SandboxConfig::new(name).kubelet_conf("grace_ms=100\n")
}

/// A graceful poweroff that must complete.
fn shuts_down(sandbox: &Sandbox) -> Result<()> {
    let reply = sandbox.request("shutdown poweroff")?;
    ensure!(reply["ok"] == true, "shutdown: {reply}");
    let ended = sandbox.wait_end(Duration::from_secs(30))?;
    ensure!(
        ended.is_poweroff(),
        "ended {ended:?}\n{}",
        sandbox.diagnostics()
    );
    Ok(())
}

#[test]
fn crio_that_never_creates_its_socket_keeps_the_kubelet_waiting_not_init() -> Result<()> {
    let sandbox = Sandbox::boot(fault("crio-no-socket").crio_conf("listen_delay_ms=3600000\n"))?;
    sandbox.wait_event("crio started", DEFAULT_WAIT)?;
    let kubelet = sandbox.wait_service("kubelet", DEFAULT_WAIT, |s| s["state"] == "waiting")?;
    ensure!(
        kubelet["pid"].is_null(),
        "a kubelet runs without cri-o: {kubelet}"
    );
    let status = sandbox.status()?;
    ensure!(
        Sandbox::service(&status, "crio")?["state"] == "starting",
        "{status}"
    );
    ensure!(
        sandbox.count_events("kubelet started") == 0,
        "the kubelet started without cri-o's socket"
    );
    // Everything else works: other verbs, a restart of cri-o, shutdown.
    ensure!(sandbox.request("boot")?["ok"] == true);
    ensure!(sandbox.request("restart crio")?["ok"] == true);
    sandbox.wait_events("crio started", 2, DEFAULT_WAIT)?;
    shuts_down(&sandbox)
}

#[test]
fn crio_that_dies_before_it_is_ready_is_restarted_and_the_kubelet_follows() -> Result<()> {
    let sandbox = Sandbox::boot(
        fault("crio-dies-early")
            .crio_conf("exit_before_listen=true\nexit_after_ms=100\nexit_code=3\ncrash_times=2\n"),
    )?;
    // Two early deaths, then a cri-o that listens; only then a kubelet.
    sandbox.wait_events("crio started", 3, Duration::from_secs(30))?;
    sandbox.wait_event("kubelet connected", Duration::from_secs(30))?;
    let status = sandbox.status()?;
    let crio = Sandbox::service(&status, "crio")?;
    ensure!(
        crio["state"] == "running" && crio["restarts"] == 2,
        "crio after two early deaths: {crio}\n{}",
        sandbox.diagnostics()
    );
    ensure!(
        crio["last_exit"]["code"] == 3,
        "the last exit is not shown: {crio}"
    );
    ensure!(
        sandbox.count_events("kubelet started") == 1,
        "the kubelet started {} times",
        sandbox.count_events("kubelet started")
    );
    let log = sandbox.init_log();
    ensure!(
        log.lines()
            .any(|l| l.contains("crio") && l.contains("code 3")),
        "no kernel-log line for cri-o's exit code\n{}",
        sandbox.diagnostics()
    );
    shuts_down(&sandbox)
}

#[test]
fn bad_etc_kubernetes_files_are_logged_and_the_kubelet_starts_without_them() -> Result<()> {
    let mut binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    binary.extend_from_slice(b"\nzone: a\n");
    let sandbox = Sandbox::boot_ready(
        fault("bad-etc-kubernetes")
            // Binary: whatever survives the character filter, and warnings.
            .file("/etc/kubernetes/node-labels", binary)
            // Huge: over the 64 KiB limit, so not used at all.
            .file("/etc/kubernetes/node-ip", vec![b'1'; 200 * 1024])
            // Not a file at all: config.yaml is a directory.
            .file("/etc/kubernetes/config.yaml/oops", "x"),
    )?;
    let argv = sandbox.recorded_argv("kubelet")?;
    ensure!(
        !argv.iter().any(|a| a == "--node-ip"),
        "a 200 KiB node-ip was used: {argv:?}"
    );
    let log = sandbox.init_log();
    for needle in ["node-labels line", "larger than 65536 bytes"] {
        ensure!(
            log.contains(needle),
            "no kernel-log line with '{needle}'\n{}",
            sandbox.diagnostics()
        );
    }
    ensure!(sandbox.status()?["ok"] == true);
    shuts_down(&sandbox)
}

/// `log_lines_dropped` of a status reply.
fn lines_dropped(sandbox: &Sandbox) -> Result<u64> {
    let status = sandbox.status()?;
    status["node"]["log_lines_dropped"]
        .as_u64()
        .with_context(|| format!("no log_lines_dropped in {status}"))
}

#[test]
fn a_full_var_log_drops_lines_with_a_count_and_blocks_nothing() -> Result<()> {
    const FLOOD_LINES: u64 = 5_000;
    // /var/log a 64 KiB tmpfs of the sandbox's own mount namespace: full
    // after the first floods' few hundred lines.
    let sandbox = Sandbox::boot_ready(
        SandboxConfig::new("var-log-full")
            .kubelet_conf(&format!(
                "grace_ms=100\nflood_lines={FLOOD_LINES}\nflood_line_bytes=200\n"
            ))
            .setup("mount -t tmpfs -o size=64k,mode=0755 kios-e2e-varlog var/log"),
    )?;
    let full = sandbox
        .mounts()?
        .into_iter()
        .any(|m| m.mount_point == "/var/log" && m.fstype == "tmpfs");
    ensure!(
        full,
        "/var/log is not the small tmpfs: {:?}",
        sandbox.mounts()?
    );
    ensure!(
        lines_dropped(&sandbox)? == 0,
        "lines dropped before the flood"
    );

    let kubelet = Sandbox::service(&sandbox.status()?, "kubelet")?["pid"]
        .as_i64()
        .context("kubelet pid")? as i32;
    sandbox.kill_ns_pid(kubelet, Signal::SIGUSR1)?;
    sandbox.wait_event("kubelet flood-done", Duration::from_secs(60))?;
    let first = sandbox.wait_for("lines dropped", DEFAULT_WAIT, || {
        lines_dropped(&sandbox).ok().filter(|n| *n > 0)
    })?;
    // A second flood: the count grows, the node goes on.
    sandbox.kill_ns_pid(kubelet, Signal::SIGUSR1)?;
    sandbox.wait_events("kubelet flood-done", 2, Duration::from_secs(60))?;
    // Nothing is lost uncounted: every flood line is in the file or in the
    // count. (Not "every line of the second flood dropped": a few lines
    // still fit in what the disk has left, the last page of the file.)
    let written = || -> usize {
        std::fs::read(sandbox.path("/var/log/kubelet.log"))
            .map(|bytes| {
                bytes
                    .split(|&b| b == b'\n')
                    .filter(|l| l.starts_with(b"kubelet flood line "))
                    .count()
            })
            .unwrap_or(0)
    };
    let second = sandbox
        .wait_for("both floods written or counted", DEFAULT_WAIT, || {
            let dropped = lines_dropped(&sandbox).ok()?;
            (dropped > first && written() as u64 + dropped >= 2 * FLOOD_LINES).then_some(dropped)
        })
        .with_context(|| {
            format!(
                "dropped {:?}, written {} of {}",
                lines_dropped(&sandbox),
                written(),
                2 * FLOOD_LINES
            )
        })?;
    // Every line still reached the in-memory tail.
    let reply = sandbox.request("logs kubelet 5")?;
    let last = format!("kubelet flood line {} ", FLOOD_LINES - 1);
    ensure!(
        reply["lines"].as_array().is_some_and(|lines| lines
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.starts_with(&last)))),
        "the tail does not end with the flood: {reply}"
    );
    // Said once per run of drops in the kernel log, not per line: a run
    // ends when a line fits again (then init says so), and the next drop
    // starts another.
    let log = sandbox.init_log();
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    let notices = count("cannot write /var/log/kubelet.log");
    let recovered = count("/var/log/kubelet.log is written again");
    ensure!(
        notices >= 1 && notices <= recovered + 1 && (notices as u64) * 100 < second,
        "{notices} kernel-log notices of the full /var/log ({recovered} recoveries) \
         for {second} dropped lines\n{}",
        sandbox.diagnostics()
    );
    // Everything else still works: kiosctl shows the count, a restart,
    // and the shutdown completes.
    let shown = sandbox.kiosctl(&["status"])?;
    let text = String::from_utf8_lossy(&shown.stdout);
    ensure!(
        text.contains("lines of service output dropped"),
        "kiosctl status does not show the drops:\n{text}"
    );
    ensure!(sandbox.request("restart kubelet")?["ok"] == true);
    sandbox.wait_events("kubelet connected", 2, DEFAULT_WAIT)?;
    eprintln!(
        "/var/log full: {first} then {second} lines dropped, {} written, {notices} notice",
        written()
    );
    shuts_down(&sandbox)
}

/// The `pid=N` of a stand-in event line.
fn pid_of(event: &str) -> Result<i32> {
    event
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.trim_end_matches(':').parse().ok())
        .ok_or_else(|| anyhow!("no pid in {event:?}"))
}

#[test]
fn a_tree_that_ignores_sigterm_and_grows_back_is_killed_and_shutdown_completes() -> Result<()> {
    let sandbox = Sandbox::boot_ready(
        SandboxConfig::new("regrowing-tree").kubelet_conf("grace_ms=100\nregrow=true\n"),
    )?;
    // The first process of the tree and its child.
    let started = sandbox.wait_events("regrow started", 2, DEFAULT_WAIT)?;
    // Killing one grows the tree back.
    let victim = pid_of(&started[1])?;
    sandbox.kill_ns_pid(victim, Signal::SIGKILL)?;
    sandbox.wait_events("regrow started", 3, DEFAULT_WAIT)?;
    ensure!(
        sandbox.count_events("regrow child-died") >= 1,
        "the killed process was not noticed\n{}",
        sandbox.diagnostics()
    );
    // The node answers and supervises as before.
    let status = sandbox.status()?;
    ensure!(
        Sandbox::service(&status, "kubelet")?["state"] == "running",
        "{status}"
    );

    let reply = sandbox.request("shutdown poweroff")?;
    ensure!(reply["ok"] == true, "shutdown: {reply}");
    // SIGTERM to every process: the tree ignores it and grows.
    let before_term = sandbox.count_events("regrow started");
    sandbox.wait_event("regrow sigterm-ignored", DEFAULT_WAIT)?;
    sandbox.wait_events("regrow started", before_term + 1, DEFAULT_WAIT)?;
    // Init still answers while it waits out the TERM grace.
    let status = sandbox.status()?;
    ensure!(
        status["node"]["shutdown"]["phase"] == "stopping",
        "status during the TERM grace: {status}\n{}",
        sandbox.diagnostics()
    );
    // SIGKILL to every process at once ends the tree; the shutdown goes on.
    let ended = sandbox.wait_end(Duration::from_secs(30))?;
    ensure!(
        ended.is_poweroff(),
        "ended {ended:?}\n{}",
        sandbox.diagnostics()
    );
    let log = sandbox.init_log();
    ensure!(
        log.contains(
            "processes still run 5 s after SIGTERM; sending SIGKILL to every process left"
        ),
        "no kernel-log line for the KILL\n{}",
        sandbox.diagnostics()
    );
    ensure!(
        !log.contains("processes are left after SIGKILL"),
        "the tree survived SIGKILL\n{}",
        sandbox.diagnostics()
    );
    ensure!(
        log.contains("shutdown: powering off"),
        "{}",
        sandbox.diagnostics()
    );
    Ok(())
}

#[test]
fn a_pid_limit_fails_the_kubelet_start_visibly_and_lifting_it_lets_the_kubelet_start() -> Result<()>
{
    // Declared first, dropped last: the sandbox's processes leave it first.
    let cgroup = PidsCgroup::create("pid-limit")?;
    let sandbox = Sandbox::boot_ready(fault("pid-limit").cgroup(cgroup.dir()))?;
    ensure!(
        cgroup.procs().contains(&sandbox.init_pid()),
        "init is not in {}: {:?}",
        cgroup.dir().display(),
        cgroup.procs()
    );
    let kubelet = Sandbox::service(&sandbox.status()?, "kubelet")?;
    let pid = kubelet["pid"]
        .as_i64()
        .ok_or_else(|| anyhow!("no kubelet pid: {kubelet}"))?;

    // No new task at all (the ones there stay), then the kubelet dies.
    cgroup.set_max(Some(1))?;
    sandbox.kill_ns_pid(pid as i32, Signal::SIGKILL)?;
    sandbox.wait_log("cannot start kubelet", DEFAULT_WAIT)?;
    // Back-off retries, and each failure is a visible state.
    sandbox.wait_for(
        "three failed kubelet starts",
        Duration::from_secs(20),
        || (sandbox.init_log().matches("cannot start kubelet").count() >= 3).then_some(()),
    )?;
    let log = sandbox.init_log();
    ensure!(
        log.contains("no new process allowed: a pid limit"),
        "the failure does not say why\n{}",
        sandbox.diagnostics()
    );
    let status = sandbox.status()?;
    let kubelet = Sandbox::service(&status, "kubelet")?;
    ensure!(
        kubelet["state"] == "backoff"
            && kubelet["pid"].is_null()
            && kubelet["last_exit"]["code"] == 127
            && kubelet["restarts"].as_u64() >= Some(3)
            && kubelet["next_start_ms"].is_u64(),
        "the failed start is not shown: {kubelet}\n{}",
        sandbox.diagnostics()
    );
    // The node keeps answering: cri-o is untouched, a request that needs a
    // thread is refused with a reason instead of losing its connection.
    ensure!(
        Sandbox::service(&status, "crio")?["state"] == "running",
        "{status}"
    );
    let ps = sandbox.request("ps")?;
    ensure!(
        ps["ok"] == true || ps["error"]["code"] == "unavailable",
        "ps under the pid limit: {ps}"
    );
    ensure!(sandbox.request("boot")?["ok"] == true);
    ensure!(
        sandbox.status()?["clients"].as_array().map(Vec::len)
            == status["clients"].as_array().map(Vec::len),
        "a client slot was lost"
    );

    // Lifted: the next back-off retry starts the kubelet.
    cgroup.set_max(None)?;
    sandbox.wait_events("kubelet connected", 2, Duration::from_secs(40))?;
    let kubelet = sandbox.wait_service("kubelet", DEFAULT_WAIT, |s| s["state"] == "running")?;
    ensure!(kubelet["pid"].is_u64(), "{kubelet}");
    ensure!(sandbox.request("ps")?["ok"] == true, "ps after the limit");
    shuts_down(&sandbox)
}
