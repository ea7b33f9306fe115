//! Self-test of the qemu harness without kios-init: the stock kernel boots a
//! tiny busybox initramfs that loads the early modules, mounts the data
//! partition by its device, writes a file, waits for the ACPI power button
//! (pressed through the qemu monitor) on its event device and powers off.
//! Proves the kernel fetch, module closure, disk image, console parsing,
//! the monitor, `-no-reboot` exit, fsck and read-back, independently of the
//! image under test.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::disk::{DataDisk, DiskLayout};
use super::qemu::{Vm, VmConfig};
use super::{kernel, test_dir, Must, VmError, EARLY_MODULES};

/// Module files (relative to the module root) to insmod in modprobe's
/// order (the shared planner of kios-init and the builder), each with
/// whether it is optional (a soft dependency such as crc32c_intel, which a
/// CPU without SSE4.2 refuses).
fn load_order(modules_root: &Path, names: &[&str]) -> Result<Vec<(String, bool)>, String> {
    use kios_rootfs::modprobe::{ModuleIndex, Problem};
    let read = |f: &str| fs::read_to_string(modules_root.join(f)).unwrap_or_default();
    let index = ModuleIndex::parse(
        &read("modules.dep"),
        &read("modules.softdep"),
        &read("modules.alias"),
        &read("modules.builtin"),
    );
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let plan = index.plan(&names);
    if let Some(p) = plan
        .problems
        .iter()
        .find(|p| !matches!(p, Problem::SoftNotFound { .. }))
    {
        return Err(format!("modules of {}: {p:?}", modules_root.display()));
    }
    Ok(plan
        .steps
        .into_iter()
        .map(|s| (s.path, !s.required))
        .collect())
}

fn build_busybox_initramfs(dir: &Path, modules_root: &Path) -> Result<std::path::PathBuf, VmError> {
    let root = dir.join("selftest-root");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("bin")).map_err(|e| VmError::io("create", &root, e))?;
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .map_err(|e| VmError::io("copy", Path::new("/bin/busybox"), e))?;
    let order = load_order(modules_root, EARLY_MODULES).map_err(VmError::Image)?;
    let mut insmods = String::new();
    for (i, (module, optional)) in order.iter().enumerate() {
        let dest = root.join(format!("m/{i:02}.ko"));
        fs::create_dir_all(root.join("m")).map_err(|e| VmError::io("create", &root, e))?;
        fs::copy(modules_root.join(module), &dest)
            .map_err(|e| VmError::io("copy", &modules_root.join(module), e))?;
        let failed = if *optional {
            "SELFTEST-INSMOD-SKIPPED"
        } else {
            "SELFTEST-INSMOD-FAILED"
        };
        insmods.push_str(&format!(
            "$b insmod /m/{i:02}.ko || echo {failed} {module}\n"
        ));
    }
    let init = format!(
        "#!/bin/busybox sh\n\
         b=/bin/busybox\n\
         $b mkdir -p /proc /sys /dev /mnt\n\
         $b mount -t proc proc /proc\n\
         $b mount -t sysfs sys /sys\n\
         $b mount -t devtmpfs dev /dev\n\
         {insmods}\
         i=0; while [ ! -b /dev/vda1 ] && [ $i -lt 100 ]; do $b sleep 0.1; i=$((i+1)); done\n\
         $b mount -t ext4 /dev/vda1 /mnt && echo SELFTEST-MOUNTED\n\
         echo SELFTEST-GREETING $($b cat /mnt/meta/etc/greeting)\n\
         echo written-in-vm > /mnt/meta/log/selftest.txt\n\
         $b umount /mnt && echo SELFTEST-UNMOUNTED\n\
         dev=\n\
         for e in /sys/class/input/event*; do $b grep -q 'Power Button' $e/device/name && dev=/dev/input/${{e##*/}}; done\n\
         echo SELFTEST-WAITING-POWER $dev\n\
         $b dd if=$dev of=/dev/null bs=24 count=1 2>/dev/null && echo SELFTEST-POWER-PRESSED\n\
         $b sync\n\
         echo SELFTEST-DONE\n\
         $b poweroff -f\n"
    );
    let init_path = root.join("init");
    fs::write(&init_path, init).map_err(|e| VmError::io("write", &init_path, e))?;
    super::run_tool(Command::new("chmod").arg("0755").arg(&init_path), "chmod")?;
    let cpio = dir.join("selftest.cpio");
    super::run_tool(
        Command::new("sh")
            .arg("-c")
            .arg("find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 > \"$1\"")
            .arg("sh")
            .arg(&cpio)
            .current_dir(&root),
        "cpio",
    )?;
    Ok(cpio)
}

#[test]
fn stock_kernel_boots_mounts_the_data_partition_and_powers_off() {
    let kernel = kernel().must();
    let modules_root = kernel
        .modules_root
        .clone()
        .expect("the stock kernel has modules");
    let test_dir = test_dir("harness-selftest").must();
    let dir = test_dir.path().to_owned();
    let initramfs = build_busybox_initramfs(&dir, &modules_root).must();
    let disk = DataDisk::create(
        &dir,
        &DiskLayout::default().etc_file("greeting", "hello-from-host\n"),
    )
    .must();
    let sgdisk = Command::new("sgdisk")
        .args(["-i", "1"])
        .arg(disk.image())
        .output()
        .must();
    let info = String::from_utf8_lossy(&sgdisk.stdout).to_lowercase();
    assert!(info.contains(super::disk::DATA_PARTITION_TYPE), "{info}");

    let mut config = VmConfig::new(&dir, "boot1", kernel, &initramfs);
    config.disk = Some(disk.image().to_owned());
    let started = Instant::now();
    let mut vm = Vm::start(config).must();
    vm.wait_for("SELFTEST-MOUNTED", Duration::from_secs(60))
        .must();
    let greeting = vm
        .wait_for("SELFTEST-GREETING", Duration::from_secs(10))
        .must();
    assert!(
        greeting.text.ends_with("hello-from-host"),
        "{}",
        greeting.text
    );
    vm.wait_for("SELFTEST-UNMOUNTED", Duration::from_secs(10))
        .must();
    let waiting = vm
        .wait_for("SELFTEST-WAITING-POWER", Duration::from_secs(10))
        .must();
    assert!(
        waiting.text.contains("/dev/input/event"),
        "{}",
        waiting.text
    );
    // The script prints its cue just before `dd` opens the device, and a
    // press before the open is lost: press again until it is seen (and the
    // guest may power off between a press and the next).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A failed press means qemu has gone: the console decides below.
        let _ = vm.power_button();
        match vm.wait_for("SELFTEST-POWER-PRESSED", Duration::from_secs(1)) {
            Ok(_) => break,
            Err(VmError::Timeout { .. }) if Instant::now() < deadline => continue,
            Err(e) => panic!("{e}"),
        }
    }
    vm.wait_exit(Duration::from_secs(30)).must();
    assert!(
        !vm.console()
            .texts()
            .iter()
            .any(|l| l.contains("SELFTEST-INSMOD-FAILED")),
        "{}",
        vm.console().tail(80)
    );
    eprintln!("selftest VM: boot to power-off {:?}", started.elapsed());
    drop(vm);

    disk.fsck().must();
    let back = disk.read_file("/meta/log/selftest.txt").must();
    assert_eq!(back.as_deref(), Some(&b"written-in-vm\n"[..]));
    assert_eq!(disk.read_file("/meta/log/absent.txt").must(), None);
    disk.write_file("/meta/etc/greeting", b"second\n").must();
    assert_eq!(
        disk.read_file("/meta/etc/greeting").must().as_deref(),
        Some(&b"second\n"[..])
    );
    disk.fsck().must();
}
