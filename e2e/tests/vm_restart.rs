//! VM scenario 2 (issue 5): `kiosctl restart crio` and `kiosctl restart
//! kubelet` from the debug-pod-like admin script each give the service a
//! new pid; restarting cri-o leaves the kubelet alone.
//!
//! The script polls `status` after the cri-o restart (a bounded number of
//! times) and the test takes the first reply where the new cri-o runs: the
//! guest cannot be told when to look, so it looks repeatedly.

use std::time::Instant;

use kios_e2e::vm::{deadline, service, starts, Must, Node, NodeSpec, Script};

/// Status polls after the cri-o restart, and the pause between them.
const POLLS: usize = 15;
const POLL_MS: u64 = 200;

fn pid(status: &serde_json::Value, name: &str) -> u64 {
    service(status, name)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} pid in {status}"))
}

#[test]
fn restart_gives_crio_and_kubelet_new_pids() {
    let t0 = Instant::now();
    let mut spec = NodeSpec::new("vm_restart");
    let mut script = Script::new();
    let before_n = script.kiosctl("status -o json");
    let restart_crio_n = script.kiosctl("restart crio");
    let mut polls = Vec::new();
    for _ in 0..POLLS {
        script.sleep_ms(POLL_MS);
        polls.push(script.kiosctl("status -o json"));
    }
    let restart_kubelet_n = script.kiosctl("restart kubelet");
    spec.script = Some(script);

    let mut node = Node::prepare(&spec).must();
    let mut vm = node.boot().must();

    let before = vm.wait_admin(before_n, deadline::BOOT).must();
    assert_eq!(before.rc, Some(0), "{}", before.text());
    let before = before.json().expect("status JSON");
    let (crio_before, kubelet_before) = (pid(&before, "crio"), pid(&before, "kubelet"));

    let restart = vm.wait_admin(restart_crio_n, deadline::COMMAND).must();
    assert_eq!(restart.rc, Some(0), "restart crio:\n{}", restart.text());

    let mut after = None;
    for n in polls {
        let poll = vm.wait_admin(n, deadline::COMMAND).must();
        let Some(status) = poll.json() else { continue };
        let crio = service(&status, "crio");
        if crio["state"] == "running" && crio["pid"].as_u64().is_some_and(|p| p != crio_before) {
            after = Some(status);
            break;
        }
    }
    let after = after.unwrap_or_else(|| {
        panic!(
            "no status within {POLLS} polls showed a new running cri-o; console {}",
            vm.config().console_path().display()
        )
    });
    let crio_after = pid(&after, "crio");
    assert_ne!(crio_after, crio_before);
    assert_eq!(
        pid(&after, "kubelet"),
        kubelet_before,
        "restarting cri-o must not restart the kubelet: {after}"
    );
    let crio_starts: Vec<u32> = starts(vm.console().lines(), "crio")
        .iter()
        .map(|s| s.pid)
        .collect();
    assert!(
        crio_starts.contains(&(crio_after as u32)),
        "the new cri-o ({crio_after}) printed its start: {crio_starts:?}"
    );

    // The kubelet restart ends the kubelet that runs this script; the new
    // kubelet announces itself on the console.
    vm.wait_line("a second kubelet start", deadline::COMMAND, |l| {
        l.contains("KIOS-E2E kubelet started pid=")
            && !l.contains(&format!("pid={kubelet_before} "))
    })
    .must();
    let kubelet_pids: Vec<u32> = starts(vm.console().lines(), "kubelet")
        .iter()
        .map(|s| s.pid)
        .collect();
    assert_eq!(kubelet_pids.len(), 2, "{kubelet_pids:?}");
    assert_eq!(kubelet_pids[0] as u64, kubelet_before);
    assert_ne!(kubelet_pids[1], kubelet_pids[0]);
    if let Ok(restart) = vm.admin(restart_kubelet_n) {
        // The END line may be lost with the old kubelet; when it is there
        // it must be a success.
        if restart.rc.is_some() {
            assert_eq!(restart.rc, Some(0), "restart kubelet:\n{}", restart.text());
        }
    }
    eprintln!(
        "vm_restart: prepare {:?}, boot + both restarts {:?}, whole test {:?}",
        node.prepare_time,
        vm.elapsed(),
        t0.elapsed()
    );
}
