//! Namespace sandbox tests of the upstream kubelet's graceful node shutdown
//! (issue 10): kios-init answers logind on the system bus. The kubelet
//! stand-in in `mode=upstream` speaks D-Bus through zbus; python3-dbus
//! (libdbus) is the independent client; raw writes and our socket-peer as
//! uid 65534 send what no client would.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use kios_e2e::ns::{Sandbox, SandboxConfig, DEFAULT_WAIT};

const BUS: &str = "/var/run/dbus/system_bus_socket";
const GRACE_MS: u64 = 800;

fn upstream(name: &str, extra: &str) -> SandboxConfig {
    SandboxConfig::new(name).kubelet_conf(&format!("mode=upstream\n{extra}"))
}

/// Boots and waits until the upstream stand-in holds its lock and listens.
fn boot_locked(config: SandboxConfig) -> Result<Sandbox> {
    let sandbox = Sandbox::boot(config)?;
    sandbox.wait_event("kubelet upstream subscribed", DEFAULT_WAIT)?;
    Ok(sandbox)
}

fn inhibitors(sandbox: &Sandbox) -> Result<Vec<serde_json::Value>> {
    let status = sandbox.status()?;
    Ok(status["node"]["inhibitors"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

#[test]
fn the_upstream_kubelets_lock_delays_poweroff_until_it_is_released() -> Result<()> {
    let sandbox = boot_locked(upstream("logind-drain", &format!("grace_ms={GRACE_MS}\n")))?;
    // status: who arms graceful shutdown.
    let status = sandbox.status()?;
    let kubelet = Sandbox::service(&status, "kubelet")?;
    let locks = inhibitors(&sandbox)?;
    ensure!(locks.len() == 1, "inhibitors: {status}");
    ensure!(
        locks[0]["who"] == "kubelet"
            && locks[0]["mode"] == "delay"
            && locks[0]["pid"] == kubelet["pid"],
        "inhibitor: {status}"
    );
    ensure!(
        status["node"]["graceful_shutdown_armed"] == true,
        "{status}"
    );
    let text = sandbox.kiosctl(&["status"])?;
    let text = String::from_utf8_lossy(&text.stdout);
    ensure!(
        text.contains(&format!(
            "logind inhibitor held by pid {} (kubelet)",
            kubelet["pid"]
        )),
        "kiosctl status: {text}"
    );
    // A watcher sees the signal go out.
    let mut watch = sandbox.client()?;
    let reply = watch.request("watch")?;
    ensure!(reply["ok"] == true, "watch: {reply}");

    let started = Instant::now();
    let reply = sandbox.request("shutdown")?;
    ensure!(reply["ok"] == true, "shutdown: {reply}");
    sandbox.wait_event("kubelet prepare-for-shutdown start=true", DEFAULT_WAIT)?;
    let mut saw_signal = false;
    for _ in 0..20 {
        let event = watch.read_value()?;
        if event["event"] == "logind" && event["change"] == "signal-sent" {
            ensure!(event["clients"] == 1 && event["start"] == true, "{event}");
            saw_signal = true;
            break;
        }
    }
    ensure!(saw_signal, "no signal-sent event");
    sandbox.wait_event("kubelet lock-released", DEFAULT_WAIT)?;
    let ended = sandbox.wait_end(Duration::from_secs(30))?;
    ensure!(
        ended.is_poweroff(),
        "ended {ended:?}\n{}",
        sandbox.diagnostics()
    );
    ensure!(
        started.elapsed() >= Duration::from_millis(GRACE_MS),
        "init did not wait for the eviction"
    );
    let log = sandbox.init_log();
    ensure!(
        log.contains("every logind inhibitor lock was released"),
        "init log: {log}"
    );
    ensure!(log.contains("released after"), "init log: {log}");
    Ok(())
}

#[test]
fn the_bound_ends_a_kubelet_that_never_releases_its_lock() -> Result<()> {
    let sandbox = boot_locked(upstream("logind-bound", "answer_shutdown=false\n").file(
        "/etc/kubernetes/config.yaml",
        "kind: KubeletConfiguration\nshutdownGracePeriod: 1s\n",
    ))?;
    let started = Instant::now();
    sandbox.signal_init(nix::sys::signal::Signal::SIGTERM)?;
    sandbox.wait_event("kubelet not-answering", DEFAULT_WAIT)?;
    let ended = sandbox.wait_end(Duration::from_secs(40))?;
    let took = started.elapsed();
    ensure!(ended.is_poweroff(), "ended {ended:?}");
    // 1 s of grace plus init's 5 s margin: InhibitDelayMaxUSec.
    ensure!(
        took >= Duration::from_secs(6),
        "init did not wait the bound ({took:?})"
    );
    ensure!(
        !sandbox
            .events()
            .iter()
            .any(|e| e == "kubelet lock-released"),
        "the stand-in released although told not to"
    );
    Ok(())
}

#[test]
fn a_dropped_connection_reconnects_and_the_old_lock_is_released() -> Result<()> {
    let sandbox = boot_locked(upstream(
        "logind-drop",
        &format!("grace_ms={GRACE_MS}\ndrop_after_ms=100\n"),
    ))?;
    sandbox.wait_event("kubelet upstream dropped", DEFAULT_WAIT)?;
    sandbox.wait_event("kubelet upstream old-lock-released", DEFAULT_WAIT)?;
    // Exactly one lock is left: the old one went with its descriptor.
    sandbox.wait_for("one lock", DEFAULT_WAIT, || {
        inhibitors(&sandbox).ok().filter(|l| l.len() == 1)
    })?;
    ensure!(
        sandbox.init_log().contains("released after"),
        "{}",
        sandbox.init_log()
    );
    // The new connection still drains the node.
    sandbox.request("shutdown")?;
    sandbox.wait_event("kubelet lock-released", DEFAULT_WAIT)?;
    ensure!(sandbox.wait_end(Duration::from_secs(30))?.is_poweroff());
    Ok(())
}

#[test]
fn killunit_makes_init_reread_the_kubelets_grace() -> Result<()> {
    // Init reads 1 s at boot; the kubelet starts with 8 s (its config was
    // changed), finds 6 s too short, writes its drop-in, calls KillUnit
    // and finds 13 s.
    let sandbox = boot_locked(upstream("logind-killunit", "set_config_grace=8s\n").file(
        "/etc/kubernetes/config.yaml",
        "kind: KubeletConfiguration\nshutdownGracePeriod: 1s\n",
    ))?;
    let line = sandbox.wait_event("kubelet upstream killunit", DEFAULT_WAIT)?;
    ensure!(
        line == "kubelet upstream killunit before=6000000 after=13000000",
        "{line}"
    );
    ensure!(
        sandbox
            .read("/etc/systemd/logind.conf.d/99-kubelet.conf")?
            .contains("InhibitDelayMaxSec=8"),
        "no drop-in"
    );
    Ok(())
}

const PYTHON_CLIENT: &str = r#"
import os, sys, dbus
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib
DBusGMainLoop(set_as_default=True)
bus = dbus.SystemBus()
print("unique", bus.get_unique_name(), flush=True)
L, P, M = "org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager"
delay = bus.call_blocking(L, P, "org.freedesktop.DBus.Properties", "Get", "ss", (M, "InhibitDelayMaxUSec"))
print("delay", int(delay), flush=True)
fd = bus.call_blocking(L, P, M, "Inhibit", "ssss", ("shutdown", "python", "test", "delay"))
lock = fd.take()
os.fstat(lock)
print("locked", flush=True)
try:
    bus.call_blocking(L, P, M, "PowerOff", "b", (False,))
except dbus.DBusException as e:
    print("error", e.get_dbus_name(), flush=True)
loop = GLib.MainLoop()
def prepare(start):
    print("signal", bool(start), flush=True)
    os.close(lock)
    loop.quit()
bus.add_signal_receiver(prepare, "PrepareForShutdown", M, None, P)
print("subscribed", flush=True)
GLib.timeout_add_seconds(20, loop.quit)
loop.run()
"#;

#[test]
fn libdbus_takes_a_lock_receives_the_signal_and_init_waits_for_it() -> Result<()> {
    // The default (legacy) kubelet stand-in too: both at once.
    let sandbox =
        Sandbox::boot_ready(SandboxConfig::new("logind-python").kubelet_conf("grace_ms=200\n"))?;
    let address = format!("unix:path={}", sandbox.path(BUS).display());
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PYTHON_CLIENT])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run /usr/bin/python3 (packages python3-dbus, python3-gi)")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let next = |lines: &mut Vec<String>| -> Result<String> {
        let line = rx
            .recv_timeout(DEFAULT_WAIT)
            .map_err(|_| anyhow!("python said only {lines:?}"))?;
        lines.push(line.clone());
        Ok(line)
    };
    ensure!(next(&mut lines)?.starts_with("unique :1."), "{lines:?}");
    ensure!(next(&mut lines)? == "delay 35000000", "{lines:?}");
    ensure!(next(&mut lines)? == "locked", "{lines:?}");
    ensure!(
        next(&mut lines)? == "error org.freedesktop.DBus.Error.UnknownMethod",
        "{lines:?}"
    );
    ensure!(next(&mut lines)? == "subscribed", "{lines:?}");
    let locks = inhibitors(&sandbox)?;
    ensure!(locks.len() == 1 && locks[0]["who"] == "python", "{locks:?}");
    let started = Instant::now();
    sandbox.request("shutdown")?;
    ensure!(next(&mut lines)? == "signal True", "{lines:?}");
    let status = child.wait()?;
    ensure!(status.success(), "python: {status:?}");
    ensure!(sandbox.wait_end(Duration::from_secs(30))?.is_poweroff());
    ensure!(started.elapsed() >= Duration::from_millis(200));
    Ok(())
}

/// Runs socket-peer as uid 65534 (with just the capabilities to reach the
/// sandbox's socket) and returns what the bus answered to `input`.
fn as_nobody(sandbox: &Sandbox, input: &[u8]) -> Result<String> {
    let mut child = sandbox
        .peer_as_nobody(BUS)?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("setpriv + socket-peer")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(input)?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn non_root_peers_are_refused_and_garbage_changes_nothing() -> Result<()> {
    let sandbox = boot_locked(upstream("logind-refuse", &format!("grace_ms={GRACE_MS}\n")))?;
    let before = sandbox.status()?;
    // uid 65534, honest or claiming root: rejected, never OK.
    for claim in ["3635353334", "30"] {
        let reply = as_nobody(
            &sandbox,
            format!("\0AUTH EXTERNAL {claim}\r\nBEGIN\r\n").as_bytes(),
        )?;
        ensure!(
            reply.starts_with("REJECTED EXTERNAL\r\n"),
            "reply: {reply:?}"
        );
        ensure!(!reply.contains("OK "), "reply: {reply:?}");
    }
    // Garbage before and after authentication: that connection closes.
    for garbage in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        [b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n".as_slice(), &[0xff; 64]].concat(),
        [
            b"\0AUTH EXTERNAL 30\r\nBEGIN\r\nl\x01\x00\x01".as_slice(),
            &[0xff; 12],
        ]
        .concat(),
    ] {
        let mut s = UnixStream::connect(sandbox.path(BUS))?;
        s.set_read_timeout(Some(DEFAULT_WAIT))?;
        s.write_all(&garbage)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .context("the bus did not close a connection that sent garbage")?;
    }
    let after = sandbox.status()?;
    ensure!(
        inhibitors(&sandbox)?.len() == 1,
        "the kubelet's lock is gone"
    );
    for name in ["crio", "kubelet"] {
        let (b, a) = (
            Sandbox::service(&before, name)?,
            Sandbox::service(&after, name)?,
        );
        ensure!(
            b["pid"] == a["pid"] && a["state"] == "running",
            "{name}: {b} -> {a}"
        );
    }
    ensure!(sandbox.has_ended()?.is_none(), "init ended");
    // And the bus still serves.
    sandbox.request("shutdown")?;
    sandbox.wait_event("kubelet lock-released", DEFAULT_WAIT)?;
    ensure!(sandbox.wait_end(Duration::from_secs(30))?.is_poweroff());
    Ok(())
}
