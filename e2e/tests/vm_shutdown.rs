//! VM scenario 5 (issue 5): graceful shutdown three ways, on one node whose
//! data disk carries over from boot to boot:
//!
//! 1. `kiosctl shutdown` from the debug-pod-like admin script;
//! 2. the ACPI power button (qemu monitor `system_powerdown`);
//! 3. `signal TERM 1` (SIGTERM to PID 1) from the debug session.
//!
//! Each time: the kubelet stand-in got the shutdown event and finished its
//! grace, qemu exits by itself (the guest powered off), the data partition
//! is fsck-clean, a file written under /var/log before the shutdown is
//! on the partition and seen by the next boot (a fourth boot checks the
//! third file), and /var/log/kios-audit.log on it names what ended the boot
//! (kiosctl's pid, the power button's device, SIGTERM).

use std::time::{Duration, Instant};

use kios_e2e::vm::{deadline, service, Must, Node, NodeSpec, Script, Vm};

fn mark(n: u32) -> String {
    format!("/var/log/kios-e2e-mark-{n}")
}

/// The script of boot `n`: check the previous boot's mark, write this
/// boot's, report status (the test's cue that the node is ready).
fn script(n: u32) -> (Script, u32) {
    let mut s = Script::new();
    if n > 1 {
        s.wait_file(&mark(n - 1), 5000);
    }
    s.plant(&mark(n));
    let status = s.kiosctl("status -o json");
    (s, status)
}

/// Waits for the status cue and checks the kubelet is connected (so the
/// shutdown will wait for its grace), and for the previous boot's mark.
fn ready(vm: &mut Vm, n: u32, status_n: u32) {
    if n > 1 {
        vm.wait_for(
            &format!("KIOS-E2E wait-file {} found", mark(n - 1)),
            deadline::BOOT,
        )
        .must();
    }
    vm.wait_for(&format!("KIOS-E2E planted {}", mark(n)), deadline::BOOT)
        .must();
    let status = vm.wait_admin(status_n, deadline::COMMAND).must();
    assert_eq!(status.rc, Some(0), "{}", status.text());
    let status = status.json().expect("status JSON");
    assert_eq!(service(&status, "kubelet")["state"], "running", "{status}");
    assert_eq!(
        status["node"]["graceful_shutdown_armed"], true,
        "the kubelet is connected: {status}"
    );
}

/// The audit entry that ended the last boot, from
/// /var/log/kios-audit.log on the data partition.
fn last_shutdown(node: &Node) -> serde_json::Value {
    let text = node.disk().read_file("/meta/log/kios-audit.log").must();
    let text = String::from_utf8_lossy(text.as_deref().unwrap_or_default()).into_owned();
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["shutdown"] == true)
        .unwrap_or_else(|| panic!("no shutdown in the audit file:\n{text}"))
}

/// After a shutdown was requested: the kubelet's grace ran, qemu powered
/// off by itself, the partition is clean and holds this boot's mark.
fn powered_off(node: &Node, vm: &mut Vm, n: u32, how: &str) -> Duration {
    let asked = Instant::now();
    vm.wait_for("KIOS-E2E kubelet shutdown-event", deadline::COMMAND)
        .must();
    vm.wait_for("KIOS-E2E kubelet grace-done", deadline::COMMAND)
        .must();
    let status = vm.wait_exit(deadline::POWER_OFF).must();
    let took = asked.elapsed();
    assert!(status.success(), "qemu exit {status} after {how}");
    let texts = vm.console().texts().join("\n");
    assert!(
        texts.contains("reboot: Power down"),
        "{how}: the guest powered off (console {})",
        vm.config().console_path().display()
    );
    assert!(!texts.contains("Kernel panic"), "{how}: kernel panic");
    // Every process of this node exits on SIGTERM; nothing can survive
    // SIGKILL but kernel threads, which a real kernel has (a namespace
    // does not) and which must not hold the stopping phase up.
    assert!(
        !texts.contains("processes are left after SIGKILL"),
        "{how}: init waited for processes that cannot be left after SIGKILL \
         (kernel threads counted by kill(-1, 0)?); console {}",
        vm.config().console_path().display()
    );
    node.disk()
        .fsck()
        .unwrap_or_else(|e| panic!("after {how}: {e}"));
    let planted = node
        .disk()
        .read_file(&format!("/meta/log/kios-e2e-mark-{n}"))
        .must();
    assert!(planted.is_some(), "{} persisted across {how}", mark(n));
    took
}

#[test]
fn graceful_shutdown_three_ways_keeps_the_data_partition_clean() {
    let t0 = Instant::now();
    let mut spec = NodeSpec::new("vm_shutdown");
    let (first, status_n) = script(1);
    let shutdown_n = {
        let mut s = first;
        let n = s.kiosctl("shutdown");
        spec.script = Some(s);
        n
    };
    let mut node = Node::prepare(&spec).must();
    let mut timings = Vec::new();

    // 1. kiosctl shutdown.
    let mut vm = node.boot().must();
    ready(&mut vm, 1, status_n);
    let took = powered_off(&node, &mut vm, 1, "kiosctl shutdown");
    if let Ok(cmd) = vm.admin(shutdown_n) {
        if cmd.rc.is_some() {
            assert_eq!(cmd.rc, Some(0), "kiosctl shutdown:\n{}", cmd.text());
        }
    }
    let log = node.disk().read_file("/meta/log/kubelet.log").must();
    let log = String::from_utf8_lossy(log.as_deref().unwrap_or_default()).into_owned();
    assert!(
        log.contains("KIOS-E2E kubelet grace-done"),
        "the kubelet's output reached /var/log/kubelet.log on the data partition:\n{log}"
    );
    timings.push(("kiosctl shutdown", took));
    let ended = last_shutdown(&node);
    assert!(
        ended["action"] == "shutdown poweroff"
            && ended["command"] == "kiosctl"
            && ended["uid"] == 0
            && ended["by"]
                .as_str()
                .is_some_and(|b| b.starts_with("socket pid ") && b.ends_with(" uid 0 (kiosctl)")),
        "the audit names kiosctl: {ended}"
    );
    drop(vm);

    // 2. The ACPI power button.
    let (s, status_n) = script(2);
    node.set_script(&s).must();
    let mut vm = node.boot().must();
    ready(&mut vm, 2, status_n);
    vm.power_button().must();
    timings.push((
        "power button",
        powered_off(&node, &mut vm, 2, "power button"),
    ));
    let ended = last_shutdown(&node);
    assert!(
        ended["action"] == "shutdown poweroff"
            && ended["outcome"] == "started"
            && ended["pid"].is_null()
            && ended["by"]
                .as_str()
                .is_some_and(|b| b.starts_with("power button (/dev/input/event")),
        "the audit names the power button: {ended}"
    );
    drop(vm);

    // 3. SIGTERM to PID 1 from the debug session.
    let (mut s, status_n) = script(3);
    s.signal("TERM", 1);
    node.set_script(&s).must();
    let mut vm = node.boot().must();
    ready(&mut vm, 3, status_n);
    // The kubelet may print its shutdown event before the debug child
    // reports its kill(2), so the report is checked afterwards.
    let took = powered_off(&node, &mut vm, 3, "SIGTERM to PID 1");
    timings.push(("signal TERM 1", took));
    assert!(
        vm.console()
            .texts()
            .iter()
            .any(|l| l.contains("KIOS-E2E signal TERM 1 ok")),
        "the debug session sent SIGTERM to PID 1"
    );
    let ended = last_shutdown(&node);
    assert!(
        ended["action"] == "shutdown poweroff"
            && ended["by"] == "SIGTERM"
            && ended["outcome"] == "started",
        "the audit names SIGTERM: {ended}"
    );
    drop(vm);

    // The third mark is seen by a fourth boot.
    let mut s = Script::new();
    s.wait_file(&mark(3), 5000);
    node.set_script(&s).must();
    let mut vm = node.boot().must();
    vm.wait_for(
        &format!("KIOS-E2E wait-file {} found", mark(3)),
        deadline::BOOT,
    )
    .must();
    drop(vm);

    for (how, took) in &timings {
        eprintln!("vm_shutdown: {how}: request to qemu exit {took:?}");
    }
    eprintln!(
        "vm_shutdown: prepare {:?}, whole test (4 boots) {:?}",
        node.prepare_time,
        t0.elapsed()
    );
}
