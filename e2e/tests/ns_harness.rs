//! Self-tests of the namespace harness and the stand-ins, with a stand-in
//! init (a busybox script) instead of kios-init, so they tell harness bugs
//! from init bugs: the overlay root (staged files keep the image's
//! directory modes, whiteouts hide files), events, argv records, process
//! listing, the end of a sandbox by reboot(2), Drop, and the kubelet
//! stand-in's one-byte protocol against a socket served by the test.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kios_e2e::ns::{Sandbox, SandboxConfig, DEFAULT_WAIT};
use nix::sys::signal::Signal;

/// A stand-in init: mounts /proc and /run, starts the cri-o stand-in,
/// starts the kubelet stand-in once /run/system.sock exists (served by
/// the test), and powers off (`busybox poweroff -f`: reboot(2)) when
/// /run/poweroff appears.
const FAKE_INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t devtmpfs devtmpfs /dev
$B mount -t tmpfs -o mode=0755 tmpfs /run
/bin/crio --listen /var/run/crio/crio.sock </dev/null &
while [ ! -S /run/system.sock ]; do $B usleep 2000; done
/bin/kubelet --config /etc/kubernetes/config.yaml </dev/null &
while [ ! -e /run/poweroff ]; do $B usleep 2000; done
exec $B poweroff -f
"#;

fn fake(name: &str) -> SandboxConfig {
    SandboxConfig::new(name).file_mode("/init", FAKE_INIT, 0o755)
}

/// Serves /run/system.sock inside the sandbox from this test process.
fn serve_system_socket(sandbox: &Sandbox) -> Result<UnixListener> {
    sandbox.wait_file("/run", DEFAULT_WAIT)?;
    sandbox.wait_event("crio started", DEFAULT_WAIT)?;
    let listener = UnixListener::bind(sandbox.path("/run/system.sock"))
        .context("cannot bind the system socket inside the sandbox")?;
    Ok(listener)
}

#[test]
fn harness_overlay_events_processes_and_poweroff() -> Result<()> {
    let sandbox = Sandbox::boot(
        fake("harness-basics")
            .file("/etc/kubernetes/node-ip", "10.0.0.1\n")
            .remove("/etc/kubernetes/node-labels")
            .crio_conf("listen_delay_ms=20\n"),
    )?;
    let _listener = serve_system_socket(&sandbox)?;
    sandbox.wait_event("crio listening", DEFAULT_WAIT)?;
    sandbox.wait_event("kubelet connected", DEFAULT_WAIT)?;

    // argv records.
    ensure!(
        sandbox.recorded_argv("crio")? == ["/bin/crio", "--listen", "/var/run/crio/crio.sock"],
        "crio argv {:?}",
        sandbox.recorded_argv("crio")?
    );
    let fds = sandbox.read("/run/kios-e2e/crio.fds")?;
    ensure!(
        fds.lines()
            .next()
            .is_some_and(|l| l.starts_with("0 ") && l.ends_with("/dev/null")),
        "crio.fds: {fds}"
    );
    let started = sandbox.wait_event("kubelet started", DEFAULT_WAIT)?;
    ensure!(
        started.contains(r#"argv=["/bin/kubelet","--config","/etc/kubernetes/config.yaml"]"#),
        "kubelet start line: {started}"
    );

    // The overlay: staged files, image directory modes kept, whiteouts.
    ensure!(sandbox.read("/etc/kubernetes/node-ip")? == "10.0.0.1\n");
    ensure!(
        !sandbox.path("/etc/kubernetes/node-labels").exists(),
        "whiteout did not hide node-labels"
    );
    let image = kios_e2e::artifacts::image_tree()?;
    for dir in ["/", "/etc", "/etc/kubernetes"] {
        let inside = std::fs::metadata(sandbox.path(dir))?.mode();
        let lower = std::fs::metadata(image.join(dir.trim_start_matches('/')))?.mode();
        ensure!(
            inside == lower,
            "{dir} mode {inside:o} differs from the image's {lower:o}"
        );
    }
    ensure!(
        sandbox.path("/bin/kubelet").is_file(),
        "the image is not visible"
    );

    // Processes of the namespace, with pids inside and out.
    let procs = sandbox.processes();
    ensure!(
        sandbox.host_pid_of(1) == Some(sandbox.init_pid()),
        "{procs:?}"
    );
    for comm in ["crio", "kubelet"] {
        ensure!(
            procs.iter().any(|p| p.comm == comm),
            "no {comm} in {procs:?}"
        );
    }

    // SIGTERM to the cri-o stand-in: exit 0, socket removed.
    let crio = procs.iter().find(|p| p.comm == "crio").context("crio")?;
    sandbox.kill_ns_pid(crio.ns_pid, Signal::SIGTERM)?;
    sandbox.wait_event("crio sigterm", DEFAULT_WAIT)?;
    sandbox.wait_for("crio.sock removed", DEFAULT_WAIT, || {
        (!sandbox.path("/var/run/crio/crio.sock").exists()).then_some(())
    })?;

    // reboot(POWER_OFF) in a PID namespace ends init with SIGINT.
    sandbox.write("/run/poweroff", "")?;
    let ended = sandbox.wait_end(DEFAULT_WAIT)?;
    ensure!(
        ended.is_poweroff(),
        "ended {ended:?}\n{}",
        sandbox.diagnostics()
    );
    // Events outlive the sandbox (they are on the root overlay's upper dir).
    ensure!(
        sandbox.count_events("kubelet connected") == 1,
        "{:?}",
        sandbox.events()
    );
    Ok(())
}

#[test]
fn kubelet_standin_speaks_the_one_byte_protocol() -> Result<()> {
    let sandbox =
        Sandbox::boot(fake("harness-kubelet").kubelet_conf("grace_ms=300\nrefresh_lock_ms=40\n"))?;
    let listener = serve_system_socket(&sandbox)?;
    let (mut kubelet, _) = listener.accept()?;
    kubelet.set_read_timeout(Some(DEFAULT_WAIT))?;
    // The lock refresher sends 0x02 with no shutdown in progress.
    let mut byte = [0u8; 1];
    kubelet.read_exact(&mut byte)?;
    ensure!(byte[0] == 0x02, "refresh byte {:#x}", byte[0]);
    sandbox.wait_event("kubelet refresh-lock", DEFAULT_WAIT)?;

    let sent = Instant::now();
    kubelet.write_all(&[0x01])?;
    sandbox.wait_event("kubelet shutdown-event", DEFAULT_WAIT)?;
    sandbox.wait_event("kubelet evicting grace_ms=300", DEFAULT_WAIT)?;
    sandbox.wait_event("kubelet continue-sent", DEFAULT_WAIT)?;
    ensure!(
        sent.elapsed() >= Duration::from_millis(300),
        "grace not taken"
    );
    let events = sandbox.events();
    let done = events.iter().position(|e| e == "kubelet grace-done");
    let event = events.iter().position(|e| e == "kubelet shutdown-event");
    ensure!(
        matches!((event, done), (Some(e), Some(d)) if e < d),
        "{events:?}"
    );

    // SIGTERM: exit 0 (the namespace's init is the parent; it does not
    // reap, so look for the event and the zombie's state).
    let kubelet_proc = sandbox
        .processes()
        .into_iter()
        .find(|p| p.comm == "kubelet")
        .context("no kubelet process")?;
    sandbox.kill_ns_pid(kubelet_proc.ns_pid, Signal::SIGTERM)?;
    sandbox.wait_event("kubelet sigterm", DEFAULT_WAIT)?;
    Ok(())
}

#[test]
fn kubelet_standin_crash_times_and_crio_orphans() -> Result<()> {
    let sandbox = Sandbox::boot(
        fake("harness-crash")
            .kubelet_conf("crash_times=1\nexit_code=4\n")
            .crio_conf("orphans=2\norphan_ms=10\n"),
    )?;
    let _listener = serve_system_socket(&sandbox)?;
    let crash = sandbox.wait_event("kubelet crashing", DEFAULT_WAIT)?;
    ensure!(
        crash.contains("start=1") && crash.contains("code=4"),
        "{crash}"
    );
    sandbox.wait_events("crio orphan-exit", 2, DEFAULT_WAIT)?;
    ensure!(sandbox.read("/run/kios-e2e/kubelet.starts")?.trim() == "1");
    Ok(())
}

#[test]
fn dropping_a_sandbox_kills_its_namespace() -> Result<()> {
    let sandbox = Sandbox::boot(fake("harness-drop"))?;
    sandbox.wait_event("crio started", DEFAULT_WAIT)?;
    let hosts: Vec<i32> = sandbox.processes().iter().map(|p| p.host_pid).collect();
    ensure!(hosts.len() >= 2, "processes {hosts:?}");
    drop(sandbox);
    let deadline = Instant::now() + DEFAULT_WAIT;
    while hosts
        .iter()
        .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    {
        ensure!(
            Instant::now() < deadline,
            "sandbox processes survived the drop: {hosts:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

#[test]
fn nsenter_runs_inside_and_the_nobody_peer_is_uid_65534() -> Result<()> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    use std::io::{BufRead, BufReader};

    let sandbox = Sandbox::boot(fake("harness-peers"))?;
    let listener = serve_system_socket(&sandbox)?;

    // nsenter: the program runs in the sandbox's root and namespaces.
    let output = sandbox.run_inside("/bin/busybox", &["cat", "/run/kios-e2e/crio.argv"])?;
    ensure!(output.status.success(), "nsenter: {output:?}");
    ensure!(
        String::from_utf8_lossy(&output.stdout).trim()
            == r#"["/bin/crio","--listen","/var/run/crio/crio.sock"]"#,
        "nsenter output: {output:?}"
    );

    // The kubelet stand-in connects first; then the nobody client.
    let (_kubelet, _) = listener.accept()?;
    let server = std::thread::spawn(move || -> Result<(u32, Vec<String>)> {
        let (stream, _) = listener.accept()?;
        let uid = getsockopt(&stream, PeerCredentials)?.uid();
        let mut writer = stream.try_clone()?;
        let mut lines = Vec::new();
        for line in BufReader::new(stream).lines().take(2) {
            let line = line?;
            writer.write_all(format!("{{\"ok\":false,\"echo\":\"{line}\"}}\n").as_bytes())?;
            lines.push(line);
        }
        Ok((uid, lines))
    });
    let replies = sandbox.request_as_nobody(&["restart kubelet", "shutdown"])?;
    let (uid, lines) = server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    ensure!(uid == 65534, "the peer's uid is {uid}");
    ensure!(
        lines == ["restart kubelet", "shutdown"],
        "server got {lines:?}"
    );
    ensure!(
        replies.len() == 2 && replies[1]["echo"] == "shutdown",
        "replies {replies:?}"
    );
    Ok(())
}

#[test]
fn kubelet_standin_runs_an_admin_script_like_a_debug_pod() -> Result<()> {
    let script = "# an admin session\n\
                  plant /tmp/planted\n\
                  wait-file /tmp/planted 2000\n\
                  wait-file /tmp/never 10\n\
                  kiosctl --help\n\
                  bogus line\n\
                  signal TERM 999999\n";
    let sandbox = Sandbox::boot(
        fake("harness-script")
            .file("/etc/kios-e2e/script", script)
            .kubelet_conf("script=/etc/kios-e2e/script\n"),
    )?;
    let _listener = serve_system_socket(&sandbox)?;
    sandbox.wait_event("debug-pod done", DEFAULT_WAIT)?;
    let events = sandbox.events();
    for expected in [
        "debug-pod ready",
        "planted /tmp/planted",
        "wait-file /tmp/planted found",
        "wait-file /tmp/never timeout",
        "BEGIN 5 kiosctl --help",
    ] {
        ensure!(
            events.iter().any(|e| e == expected),
            "no '{expected}' in {events:#?}"
        );
    }
    ensure!(events.iter().any(|e| e == "END 5 rc=0"), "{events:#?}");
    ensure!(
        events.iter().any(|e| e.starts_with("script-error 6 ")),
        "{events:#?}"
    );
    ensure!(
        events
            .iter()
            .any(|e| e.starts_with("signal TERM 999999 error")),
        "{events:#?}"
    );
    // The plant went through /host to the real root.
    ensure!(
        sandbox.path("/tmp/planted").is_file(),
        "not planted on the host root"
    );
    // The debug pod's mounts stayed in its own namespace.
    let init_mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", sandbox.init_pid()))?;
    ensure!(
        !init_mounts.contains("debug-root"),
        "debug pod mounts leaked: {init_mounts}"
    );
    // Once per boot: a restarted kubelet does not run it again.
    ensure!(sandbox.path("/run/kios-e2e/script.done").exists());
    Ok(())
}

#[test]
fn kubelet_standin_reports_whether_crio_listened_before_it_started() -> Result<()> {
    // The stand-in init starts the kubelet as soon as the system socket
    // exists, while cri-o still waits 5 s: the kubelet must say so, which is
    // what lets ns_boot catch an init that does not wait for cri-o.
    let sandbox = Sandbox::boot(fake("harness-no-crio").crio_conf("listen_delay_ms=5000\n"))?;
    let _listener = serve_system_socket(&sandbox)?;
    let seen = sandbox.wait_event("kubelet crio-socket=", DEFAULT_WAIT)?;
    ensure!(seen == "kubelet crio-socket=absent", "{seen}");
    Ok(())
}
