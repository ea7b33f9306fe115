//! VM scenario of issue 10: the upstream kubelet's graceful node shutdown
//! on the stock kernel. The kubelet stand-in runs in `mode=upstream` (zbus
//! on kios-init's system bus, as the kubelet does through godbus) and holds
//! a logind delay lock; the ACPI power button (qemu monitor
//! `system_powerdown`) makes kios-init emit `PrepareForShutdown(true)`; the
//! stand-in evicts for its grace, closes the lock's descriptor, and only
//! then does the node power off, its data partition fsck-clean.
//!
//! The order is read from the kernel log on the console: the stand-in also
//! writes its progress lines to /dev/kmsg (common.conf `kmsg=true`), so its
//! lines and kios-init's share one order and one clock (the stand-in's tty
//! output to the console could be overtaken by a later printk).

use std::time::Instant;

use kios_e2e::vm::{deadline, Must, Node, NodeSpec};

/// The stand-in's eviction time.
const GRACE_MS: u64 = 1500;

/// A kernel log line on the console: its timestamp in seconds and its text.
/// The record may start mid-line: the serial console's printk can cut into
/// tty output (a stand-in's `KIOS-E2E` line) that was being written.
fn kernel_line(line: &str) -> Option<(f64, &str)> {
    let mut from = 0;
    while let Some(open) = line[from..].find('[') {
        let rest = &line[from + open + 1..];
        if let Some((stamp, text)) = rest.split_once(']') {
            let stamp = stamp.trim();
            if !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                if let Ok(at) = stamp.parse() {
                    return Some((at, text.trim_start()));
                }
            }
        }
        from += open + 1;
    }
    None
}

/// Finds each needle in order, each after the previous one; returns the
/// timestamps. Panics naming the first step that is missing or out of order.
fn in_order(kernel: &[(f64, &str)], steps: &[&str], console: &str) -> Vec<f64> {
    let mut at = 0;
    let mut stamps = Vec::new();
    for step in steps {
        let Some(found) = kernel[at..].iter().position(|(_, t)| t.contains(step)) else {
            let anywhere = kernel.iter().any(|(_, t)| t.contains(step));
            let log: Vec<String> = kernel
                .iter()
                .filter(|(_, t)| t.starts_with("kiOS: s") || t.starts_with("kios-e2e:"))
                .map(|(at, t)| format!("[{at:.6}] {t}"))
                .collect();
            panic!(
                "{step:?} is {} in the kernel log (console {console}):\n{}",
                if anywhere { "out of order" } else { "missing" },
                log.join("\n")
            );
        };
        stamps.push(kernel[at + found].0);
        at += found + 1;
    }
    stamps
}

#[test]
fn the_power_button_waits_for_the_upstream_kubelets_lock() {
    let t0 = Instant::now();
    let mut spec = NodeSpec::new("vm_logind");
    spec.kubelet_conf = vec!["mode=upstream".into(), format!("grace_ms={GRACE_MS}")];
    spec.disk
        .etc
        .push(("kios-e2e/common.conf".into(), b"kmsg=true\n".to_vec()));
    let mut node = Node::prepare(&spec).must();
    let mut vm = node.boot().must();
    let console = vm.config().console_path().display().to_string();

    // The image's config.yaml says shutdownGracePeriod: 30s; init adds its
    // 5 s margin. 1.5 s of eviction fit, so no KillUnit.
    vm.wait_for(
        "KIOS-E2E kubelet upstream delay usec=35000000",
        deadline::BOOT,
    )
    .must();
    vm.wait_for("KIOS-E2E kubelet upstream subscribed", deadline::COMMAND)
        .must();

    let pressed = Instant::now();
    vm.power_button().must();
    vm.wait_for(
        "KIOS-E2E kubelet prepare-for-shutdown start=true",
        deadline::COMMAND,
    )
    .must();
    vm.wait_for("KIOS-E2E kubelet lock-released", deadline::COMMAND)
        .must();
    let status = vm.wait_exit(deadline::POWER_OFF).must();
    let shutdown_took = pressed.elapsed();
    assert!(status.success(), "qemu exit {status} (console {console})");

    let texts: Vec<String> = vm.console().texts().iter().map(|l| l.to_string()).collect();
    let kernel: Vec<(f64, &str)> = texts.iter().filter_map(|l| kernel_line(l)).collect();
    let evicting = format!("kios-e2e: kubelet evicting grace_ms={GRACE_MS}");
    let steps = [
        "kios-e2e: kubelet upstream inhibited",
        "kiOS: shutdown (poweroff) requested by power button",
        // Logged before the bus task writes the signal (one thread): the
        // line that says it was sent may come after the stand-in's.
        "kiOS: shutdown: draining: shutdown event sent to 0 client(s), 1 logind inhibitor lock(s) held",
        "kios-e2e: kubelet prepare-for-shutdown start=true",
        &evicting,
        "kios-e2e: kubelet grace-done",
        "kios-e2e: kubelet lock-released",
        "(kubelet) released after",
        "kiOS: shutdown: every logind inhibitor lock was released: the kubelet drained",
        "reboot: Power down",
    ];
    let stamps = in_order(&kernel, &steps, &console);
    let (drain, evict, done, released, off) =
        (stamps[2], stamps[4], stamps[5], stamps[6], stamps[9]);
    // Guest time: the stand-in evicted for its grace before it let go, and
    // the power-off came after the release.
    let grace = GRACE_MS as f64 / 1000.0;
    assert!(
        done - evict >= grace * 0.99,
        "evicted {:.3} s, grace {grace} s (console {console})",
        done - evict
    );
    assert!(
        released - drain >= grace * 0.99,
        "lock held {:.3} s",
        released - drain
    );
    assert!(off >= released);
    // Init's own measure of the lock, from its log line.
    let held_ms: u64 = kernel
        .iter()
        .find_map(|(_, t)| {
            let (_, after) = t.split_once("(kubelet) released after ")?;
            after.strip_suffix(" ms")?.parse().ok()
        })
        .expect("init logs how long the lock was held");
    assert!(
        held_ms >= GRACE_MS,
        "init says the lock was held {held_ms} ms"
    );
    assert!(
        kernel.iter().any(|(_, t)| t
            .contains("kiOS: shutdown: PrepareForShutdown(true) sent to 1 system bus client(s)")),
        "init reports the signal sent to the one client (console {console})"
    );
    for bad in [
        "did not answer within its grace period",
        "Kernel panic",
        "kubelet upstream error",
    ] {
        assert!(
            !texts.iter().any(|l| l.contains(bad)),
            "{bad:?} on the console {console}"
        );
    }
    node.disk()
        .fsck()
        .unwrap_or_else(|e| panic!("after the power button: {e}"));

    eprintln!(
        "vm_logind: drain start to power-off {:.3} s guest time, lock held {held_ms} ms, \
         power button to qemu exit {shutdown_took:?}; prepare {:?}, whole test {:?}",
        off - drain,
        node.prepare_time,
        t0.elapsed()
    );
}
