//! VM scenario 3 (issue 5): crashes under a real kernel. cri-o crashes once,
//! 300 ms after it started, and is restarted with a new pid; the kubelet
//! crashes on each of its first four starts and init backs off: the first
//! restart is immediate, then the pauses between starts grow. `status`
//! afterwards counts the restarts and keeps the last exit codes.
//!
//! The pauses are measured from the console: the time the harness first saw
//! each `KIOS-E2E kubelet started` line (polled every 20 ms).

use std::time::{Duration, Instant};

use kios_e2e::vm::{deadline, service, starts, Must, Node, NodeSpec, Script};

const KUBELET_CRASHES: usize = 4;

#[test]
fn crash_is_restarted_and_crash_loop_backs_off() {
    let t0 = Instant::now();
    let mut spec = NodeSpec::new("vm_crash");
    spec.crio_conf = vec![
        "exit_after_ms=300".into(),
        "exit_code=3".into(),
        "crash_times=1".into(),
    ];
    spec.kubelet_conf = vec![
        "grace_ms=500".into(),
        format!("crash_times={KUBELET_CRASHES}"),
        "exit_code=7".into(),
    ];
    let mut script = Script::new();
    let status_n = script.kiosctl("status -o json");
    spec.script = Some(script);

    let mut node = Node::prepare(&spec).must();
    let mut vm = node.boot().must();

    // One start per crash plus the one that stays up (and runs the script).
    for i in 0..=KUBELET_CRASHES {
        vm.wait_line(&format!("kubelet start {}", i + 1), deadline::BOOT, |l| {
            l.contains("KIOS-E2E kubelet started pid=")
        })
        .must();
    }
    let status = vm.wait_admin(status_n, deadline::COMMAND).must();
    assert_eq!(status.rc, Some(0), "{}", status.text());
    let status = status.json().expect("status JSON");

    let kubelet = starts(vm.console().lines(), "kubelet");
    assert_eq!(kubelet.len(), KUBELET_CRASHES + 1);
    let mut pids: Vec<u32> = kubelet.iter().map(|s| s.pid).collect();
    pids.dedup();
    assert_eq!(pids.len(), KUBELET_CRASHES + 1, "each start a new pid");
    let gaps: Vec<Duration> = kubelet
        .windows(2)
        .map(|w| w[1].seen.duration_since(w[0].seen))
        .collect();
    eprintln!("vm_crash: pauses between kubelet starts {gaps:?}");
    assert!(
        gaps[0] < Duration::from_millis(1500),
        "the first restart is immediate: {gaps:?}"
    );
    for w in gaps[1..].windows(2) {
        assert!(w[1] > w[0], "back-off grows: {gaps:?}");
    }
    assert!(
        gaps[KUBELET_CRASHES - 1] >= gaps[0] * 2 + Duration::from_millis(500),
        "back-off grows well beyond the immediate restart: {gaps:?}"
    );

    let k = service(&status, "kubelet");
    assert_eq!(k["state"], "running", "{status}");
    assert_eq!(k["restarts"], KUBELET_CRASHES as u64, "{status}");
    assert_eq!(k["last_exit"]["code"], 7, "{status}");
    assert_eq!(
        k["pid"].as_u64(),
        Some(u64::from(*pids.last().unwrap_or(&0)))
    );

    let crio = starts(vm.console().lines(), "crio");
    assert_eq!(crio.len(), 2, "cri-o crashed once and came back");
    assert_ne!(crio[0].pid, crio[1].pid);
    let c = service(&status, "crio");
    assert_eq!(c["state"], "running", "{status}");
    assert_eq!(c["restarts"], 1, "{status}");
    assert_eq!(c["last_exit"]["code"], 3, "{status}");
    assert_eq!(c["pid"].as_u64(), Some(u64::from(crio[1].pid)));
    eprintln!(
        "vm_crash: prepare {:?}, boot through the crash loop {:?}, whole test {:?}",
        node.prepare_time,
        vm.elapsed(),
        t0.elapsed()
    );
}
