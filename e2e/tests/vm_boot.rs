//! VM scenario 1 (issue 5): a cold boot of the kiOS image on Debian's stock
//! kernel with a data partition found by its GPT type GUID. `kiosctl status`
//! (run from the debug-pod-like admin script) shows cri-o and the kubelet
//! running and the partition mounted, `kiosctl boot` shows the timeline, and
//! the kubelet's argv comes from files on the data partition's /etc overlay.

use std::time::Instant;

use kios_e2e::vm::{deadline, service, starts, Must, Node, NodeSpec, Script};

#[test]
fn cold_boot_status_datapart_timeline_and_overlay_argv() {
    let t0 = Instant::now();
    let mut spec = NodeSpec::new("vm_boot");
    spec.disk = spec
        .disk
        .etc_file(
            "kubernetes/node-labels",
            "# set on the data partition\nrole: e2e-vm\n\n  zone: lab-1   # trailing comment\n",
        )
        .etc_file("kubernetes/node-ip", "  10.0.2.15  \n");
    let mut script = Script::new();
    let status_n = script.kiosctl("status -o json");
    let boot_n = script.kiosctl("boot -o json");
    let boot_table_n = script.kiosctl("boot");
    spec.script = Some(script);

    let mut node = Node::prepare(&spec).must();
    let mut vm = node.boot().must();

    // The image lists the administrator's modules, no crc32c: ext4's soft
    // dependency brings it, as modprobe would (docs/boot.md).
    assert!(!kios_e2e::vm::EARLY_MODULES
        .iter()
        .any(|m| m.contains("crc32c")));
    let modules = vm.wait_for("kiOS: loaded modules:", deadline::BOOT).must();
    assert!(
        modules.text.contains(" crc32c_generic ") && modules.text.contains(" ext4 "),
        "{}",
        modules.text
    );

    vm.wait_for("KIOS-E2E kubelet started", deadline::BOOT)
        .must();
    let to_kubelet = vm.elapsed();

    let status = vm.wait_admin(status_n, deadline::COMMAND).must();
    assert_eq!(status.rc, Some(0), "kiosctl status:\n{}", status.text());
    let status = status.json().expect("kiosctl status -o json prints JSON");
    for name in ["crio", "kubelet"] {
        let s = service(&status, name);
        assert_eq!(s["state"], "running", "{name} in {status}");
        assert!(
            s["pid"].as_u64().is_some_and(|p| p > 1),
            "{name} pid in {status}"
        );
    }
    let datapart = &status["node"]["datapart"];
    assert_eq!(datapart["device"], "/dev/vda1", "datapart in {status}");
    assert_eq!(datapart["mounted"], true, "datapart in {status}");
    assert_eq!(
        datapart["wanted"], "auto",
        "found by its type GUID (datapart=auto): {status}"
    );
    let kernel = status["node"]["kernel"].as_str().unwrap_or_default();
    assert!(
        kernel.contains(&kios_e2e::vm::kernel().must().version),
        "kernel {kernel:?}"
    );

    let boot = vm.wait_admin(boot_n, deadline::COMMAND).must();
    assert_eq!(boot.rc, Some(0), "kiosctl boot:\n{}", boot.text());
    let boot = boot.json().expect("kiosctl boot -o json prints JSON");
    let milestones = boot["milestones"].as_array().expect("milestones array");
    assert!(milestones.len() >= 5, "too few milestones: {boot}");
    let times: Vec<u64> = milestones
        .iter()
        .map(|m| m["at_ms"].as_u64().expect("at_ms"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "timeline out of order: {boot}"
    );
    assert!(
        milestones
            .iter()
            .all(|m| m["name"].as_str().is_some_and(|n| !n.is_empty())),
        "unnamed milestone: {boot}"
    );
    let table = vm.wait_admin(boot_table_n, deadline::COMMAND).must();
    assert_eq!(table.rc, Some(0), "kiosctl boot:\n{}", table.text());
    let first = milestones[0]["name"].as_str().unwrap_or_default();
    assert!(
        table.text().contains(first),
        "table lacks {first}:\n{}",
        table.text()
    );

    let kubelet = starts(vm.console().lines(), "kubelet");
    let argv = kubelet[0]
        .argv
        .clone()
        .expect("kubelet argv on the console");
    assert_eq!(
        argv,
        [
            "/bin/kubelet",
            "--config",
            "/etc/kubernetes/config.yaml",
            "--node-labels",
            "role=e2e-vm,zone=lab-1",
            "--node-ip",
            "10.0.2.15",
        ],
        "kubelet argv from the overlay"
    );
    assert_eq!(
        starts(vm.console().lines(), "crio").len(),
        1,
        "cri-o started once"
    );
    eprintln!(
        "vm_boot: prepare {:?}, qemu start to kubelet {to_kubelet:?}, whole test {:?}",
        node.prepare_time,
        t0.elapsed()
    );
}
