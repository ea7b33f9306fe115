//! VM scenario 4 (issue 5): `kiosctl verify` on the booted image. Fresh, it
//! is clean; files the data partition's /etc overlay overrides are reported
//! as `overridden` (which keeps it clean); after the admin plants an extra
//! binary in /bin, verify reports it as unexpected and exits 1.

use std::time::Instant;

use kios_e2e::vm::{deadline, Must, Node, NodeSpec, Script};
use serde_json::Value;

const PLANTED: &str = "/bin/kios-e2e-planted";

fn findings(report: &Value) -> &Vec<Value> {
    report["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings array in {report}"))
}

#[test]
fn verify_clean_then_reports_planted_binary() {
    let t0 = Instant::now();
    let mut spec = NodeSpec::new("vm_verify");
    spec.disk = spec
        .disk
        .etc_file("kubernetes/node-labels", "role: verify\n");
    let mut script = Script::new();
    let clean_n = script.kiosctl("verify -o json");
    script.plant(PLANTED);
    let dirty_n = script.kiosctl("verify -o json");
    let table_n = script.kiosctl("verify");
    spec.script = Some(script);

    let mut node = Node::prepare(&spec).must();
    let mut vm = node.boot().must();

    let clean = vm.wait_admin(clean_n, deadline::BOOT).must();
    let report = clean
        .json()
        .unwrap_or_else(|| panic!("verify JSON:\n{}", clean.text()));
    assert_eq!(report["clean"], true, "fresh image: {report}");
    assert_eq!(clean.rc, Some(0), "{}", clean.text());
    assert!(
        report["checked"].as_u64().is_some_and(|n| n > 20),
        "{report}"
    );
    for f in findings(&report) {
        assert_eq!(
            f["problem"], "overridden",
            "only overrides on a fresh node: {f}"
        );
    }
    let labels = findings(&report)
        .iter()
        .find(|f| f["path"] == "/etc/kubernetes/node-labels")
        .unwrap_or_else(|| panic!("the node-labels override is reported: {report}"));
    assert_eq!(labels["problem"], "overridden");
    assert!(
        labels["detail"].as_str().is_some_and(|d| d.contains("etc")),
        "the detail says where the override lives: {labels}"
    );

    vm.wait_for(&format!("KIOS-E2E planted {PLANTED}"), deadline::COMMAND)
        .must();
    let dirty = vm.wait_admin(dirty_n, deadline::COMMAND).must();
    let report = dirty
        .json()
        .unwrap_or_else(|| panic!("verify JSON:\n{}", dirty.text()));
    assert_eq!(report["clean"], false, "{report}");
    assert_eq!(dirty.rc, Some(1), "verify exits 1 with findings");
    let planted = findings(&report)
        .iter()
        .find(|f| f["path"] == PLANTED)
        .unwrap_or_else(|| panic!("{PLANTED} is reported: {report}"));
    assert_eq!(planted["problem"], "unexpected", "{planted}");
    let not_override: Vec<&Value> = findings(&report)
        .iter()
        .filter(|f| f["problem"] != "overridden")
        .collect();
    assert_eq!(
        not_override.len(),
        1,
        "only the plant is a problem: {report}"
    );

    let table = vm.wait_admin(table_n, deadline::COMMAND).must();
    assert_eq!(table.rc, Some(1));
    assert!(table.text().contains(PLANTED), "{}", table.text());
    eprintln!(
        "vm_verify: prepare {:?}, boot + 3 verifies {:?}, whole test {:?}",
        node.prepare_time,
        vm.elapsed(),
        t0.elapsed()
    );
}
