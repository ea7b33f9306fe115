//! VM scenario 6 (issue 5): `kiosctl reboot` runs the graceful shutdown and
//! restarts the machine; the node comes back up in the same qemu (no
//! `-no-reboot` here) and serves `status` again. After the reboot `status`
//! and `audit` name the previous shutdown's requester (issue 15: the audit
//! log on the data partition survives the reboot).
//!
//! The admin script runs once per boot, so the second boot asks for status
//! (and then a reboot again); the test stops the VM once it has seen the
//! second boot's status.

use std::time::Instant;

use kios_e2e::vm::{deadline, service, Must, Node, NodeSpec, Script};

#[test]
fn reboot_comes_back_and_serves_status() {
    let t0 = Instant::now();
    let mut spec = NodeSpec::new("vm_reboot");
    let mut script = Script::new();
    let status_n = script.kiosctl("status -o json");
    let audit_n = script.kiosctl("audit -o json");
    script.kiosctl("reboot");
    spec.script = Some(script);

    let mut node = Node::prepare(&spec).must();
    let mut config = node.next_config();
    config.allow_reboot = true;
    let mut vm = node.boot_with(config).must();

    let first = vm.wait_admin(status_n, deadline::BOOT).must();
    assert_eq!(first.rc, Some(0), "{}", first.text());
    let first = first.json().expect("status JSON");
    let first_boot_ms = first["node"]["boot_ms"].as_u64().expect("boot_ms");

    vm.wait_for("KIOS-E2E kubelet shutdown-event", deadline::COMMAND)
        .must();
    vm.wait_for("KIOS-E2E kubelet grace-done", deadline::COMMAND)
        .must();
    vm.wait_for("reboot: Restarting system", deadline::POWER_OFF)
        .must();
    let rebooted_at = vm.elapsed();
    vm.wait_for("Linux version", deadline::BOOT).must();

    let second = vm.wait_admin(status_n, deadline::BOOT).must();
    assert_eq!(second.rc, Some(0), "{}", second.text());
    let second = second.json().expect("status JSON");
    for name in ["crio", "kubelet"] {
        assert_eq!(service(&second, name)["state"], "running", "{second}");
    }
    assert_eq!(second["node"]["datapart"]["mounted"], true, "{second}");
    let second_boot_ms = second["node"]["boot_ms"].as_u64().expect("boot_ms");
    assert!(
        second_boot_ms > first_boot_ms,
        "a new init: boot_ms {first_boot_ms} then {second_boot_ms}"
    );
    // What ended the first boot, from the audit log on the data partition.
    let previous = &second["node"]["previous_shutdown"];
    assert_eq!(previous["action"], "shutdown reboot", "{second}");
    assert_eq!(
        previous["boot_ms"].as_u64(),
        Some(first_boot_ms),
        "{second}"
    );
    assert_eq!(previous["command"], "kiosctl", "{second}");
    assert!(
        previous["by"]
            .as_str()
            .is_some_and(|by| by.starts_with("socket pid ") && by.ends_with("uid 0 (kiosctl)")),
        "{previous}"
    );
    let audit = vm.wait_admin(audit_n, deadline::COMMAND).must();
    assert_eq!(audit.rc, Some(0), "{}", audit.text());
    let audit = audit.json().expect("audit JSON");
    let entries = audit["entries"].as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e == previous),
        "audit lists the reboot that status names: {audit}"
    );
    let boots = vm
        .console()
        .texts()
        .iter()
        .filter(|l| l.contains("Linux version"))
        .count();
    assert_eq!(boots, 2, "two kernel boots on the console");
    eprintln!(
        "vm_reboot: prepare {:?}, reboot at {rebooted_at:?}, second status at {:?}, whole test {:?}",
        node.prepare_time,
        vm.elapsed(),
        t0.elapsed()
    );
}
