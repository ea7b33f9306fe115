//! VM scenario (issue 13): the node boots the way a machine does. qemu
//! starts OVMF (UEFI, no Secure Boot) with nothing but the builder's GPT
//! disk image: the firmware finds the EFI system partition and starts
//! `EFI/BOOT/BOOTX64.EFI` (the unified kernel image), its stub starts the
//! kernel with the image's command line and initramfs, the kernel starts
//! kios-init, which finds the data partition (partition 2) by its type
//! GUID. Then `kiosctl status` and `version` (the image's version and build
//! id), a graceful power-off, a fsck-clean data partition, and a second
//! boot from the same disk that finds the file the first boot wrote.

use std::time::{Duration, Instant};

use kios_e2e::vm::{deadline, service, Must, Node, NodeSpec, Script, Vm};

const MARK: &str = "/var/log/kios-e2e-uefi-mark";

/// Waits for the kubelet stand-in; returns the time since qemu started
/// (firmware start to the kubelet's exec).
fn until_kubelet(vm: &mut Vm) -> Duration {
    vm.wait_for("KIOS-E2E kubelet started", deadline::FIRMWARE_BOOT)
        .must();
    vm.elapsed()
}

/// After `kiosctl shutdown`: the grace ran, the guest powered off, the data
/// partition is clean.
fn powered_off(node: &Node, vm: &mut Vm, boot: u32) -> Duration {
    let asked = Instant::now();
    vm.wait_for("KIOS-E2E kubelet grace-done", deadline::COMMAND)
        .must();
    let status = vm.wait_exit(deadline::POWER_OFF).must();
    assert!(status.success(), "boot {boot}: qemu exit {status}");
    let texts = vm.console().texts().join("\n");
    assert!(
        texts.contains("reboot: Power down"),
        "boot {boot}: the guest powered off (console {})",
        vm.config().console_path().display()
    );
    node.disk()
        .fsck()
        .unwrap_or_else(|e| panic!("after boot {boot}: {e}"));
    asked.elapsed()
}

#[test]
fn firmware_boots_the_disk_image_and_its_data_persists() {
    let t0 = Instant::now();
    let mut spec = NodeSpec::new("vm_uefi");
    spec.uefi = true;
    let mut script = Script::new();
    script.plant(MARK);
    let status_n = script.kiosctl("status -o json");
    let version_n = script.kiosctl("version -o json");
    let files_n = script.kiosctl("files /lib/kios/cmdline");
    script.kiosctl("shutdown");
    spec.script = Some(script);
    let mut node = Node::prepare(&spec).must();
    let prepared = t0.elapsed();
    let image = node
        .disk_image()
        .expect("a UEFI node has a disk image")
        .clone();
    let efi_bytes = std::fs::metadata(&image.efi).map(|m| m.len()).unwrap_or(0);

    // Boot 1.
    let mut vm = node.boot().must();
    let config = vm.config().clone();
    assert!(config.firmware.is_some());
    let args = config.qemu_args().join(" ");
    assert!(!args.contains("-kernel"), "no -kernel: {args}");
    let to_kubelet_1 = until_kubelet(&mut vm);

    let status = vm.wait_admin(status_n, deadline::COMMAND).must();
    assert_eq!(status.rc, Some(0), "kiosctl status:\n{}", status.text());
    let status = status.json().expect("status JSON");
    for name in ["crio", "kubelet"] {
        assert_eq!(service(&status, name)["state"], "running", "{status}");
    }
    let datapart = &status["node"]["datapart"];
    assert_eq!(
        datapart["device"], "/dev/vda2",
        "partition 2 of the disk: {status}"
    );
    assert_eq!(datapart["mounted"], true, "{status}");
    assert_eq!(
        datapart["wanted"], "auto",
        "found by its type GUID: {status}"
    );

    let version = vm.wait_admin(version_n, deadline::COMMAND).must();
    assert_eq!(version.rc, Some(0), "kiosctl version:\n{}", version.text());
    let version = version.json().expect("version JSON");
    assert_eq!(
        version["image_version"].as_str(),
        image.release.version.as_deref(),
        "{version}"
    );
    assert_eq!(
        version["build_id"].as_str(),
        image.release.build_id.as_deref(),
        "{version}"
    );
    assert!(image.release.build_id.is_some(), "{:?}", image.release);

    let files = vm.wait_admin(files_n, deadline::COMMAND).must();
    assert_eq!(files.rc, Some(0), "kiosctl files:\n{}", files.text());
    assert!(files.text().contains(".cmdline"), "{}", files.text());

    let t = powered_off(&node, &mut vm, 1);
    // The firmware started the disk's executable, whose stub started the
    // kernel with the image's own command line (no -append exists).
    let texts = vm.console().texts().join("\n");
    assert!(texts.contains("BdsDxe: starting"), "OVMF booted the disk");
    assert!(texts.contains("EFI stub:"), "the kernel's EFI stub ran");
    assert!(texts.contains("efi: EFI v"), "the kernel runs on UEFI");
    assert!(
        texts.contains(&format!("Kernel command line: {}", image.cmdline)),
        "the .cmdline section reached the kernel: {:?}",
        image.cmdline
    );
    let mark = node
        .disk()
        .read_file(&format!("/meta/log/{}", MARK.rsplit('/').next().unwrap()))
        .must();
    assert!(mark.is_some(), "boot 1 wrote {MARK} on the data partition");

    // Boot 2 from the same disk (and the same firmware variables).
    let mut script = Script::new();
    script.wait_file(MARK, 5000);
    let status_n = script.kiosctl("status -o json");
    script.kiosctl("shutdown");
    node.set_script(&script).must();
    let mut vm = node.boot().must();
    let to_kubelet_2 = until_kubelet(&mut vm);
    vm.wait_for(&format!("KIOS-E2E wait-file {MARK} found"), deadline::BOOT)
        .must();
    let status = vm.wait_admin(status_n, deadline::COMMAND).must();
    assert_eq!(status.rc, Some(0), "kiosctl status:\n{}", status.text());
    let t2 = powered_off(&node, &mut vm, 2);

    eprintln!(
        "vm_uefi: unified kernel image {efi_bytes} bytes, disk {} MiB raw; \
         prepare {:.1}s; firmware start to kubelet exec {:.1}s (boot 1), {:.1}s (boot 2); \
         shutdown to power-off {:.1}s, {:.1}s; total {:.1}s",
        kios_e2e::vm::node::UEFI_DISK_MIB,
        prepared.as_secs_f64(),
        to_kubelet_1.as_secs_f64(),
        to_kubelet_2.as_secs_f64(),
        t.as_secs_f64(),
        t2.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
