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

/// Issue 14: with a data partition, /var/log is mounted noexec and verify
/// looks inside it; an intruder who plants a program there and remounts
/// /var/log with exec (from a privileged pod, in init's mount namespace)
/// is seen twice: the program and the remount.
#[test]
fn verify_reports_a_program_in_var_log_and_a_remount() {
    let t0 = Instant::now();
    const KWORKER: &str = "/var/log/kworker";
    let mut spec = NodeSpec::new("vm_verify_areas");
    let mut script = Script::new();
    let version_n = script.kiosctl("version");
    let clean_n = script.kiosctl("verify -o json");
    script.plant(KWORKER);
    let remount_n = script.host("/bin/busybox mount -o remount,exec /var/log");
    let dirty_n = script.kiosctl("verify -o json");
    let table_n = script.kiosctl("verify");
    spec.script = Some(script);

    let mut node = Node::prepare(&spec).must();
    let mut vm = node.boot().must();

    let version = vm.wait_admin(version_n, deadline::BOOT).must();
    assert!(
        version.text().contains("inventory  sha256:") && version.text().contains("build "),
        "version names the image: {}",
        version.text()
    );
    let clean = vm.wait_admin(clean_n, deadline::COMMAND).must();
    let report = clean
        .json()
        .unwrap_or_else(|| panic!("verify JSON:\n{}", clean.text()));
    let bad: Vec<&Value> = findings(&report)
        .iter()
        .filter(|f| f["problem"] != "overridden")
        .collect();
    assert!(
        bad.is_empty(),
        "a fresh node with a data partition: {report}"
    );
    assert_eq!(clean.rc, Some(0), "{}", clean.text());

    let remount = vm.wait_admin(remount_n, deadline::COMMAND).must();
    assert_eq!(remount.rc, Some(0), "remount: {}", remount.text());
    let started = Instant::now();
    let dirty = vm.wait_admin(dirty_n, deadline::COMMAND).must();
    let report = dirty
        .json()
        .unwrap_or_else(|| panic!("verify JSON:\n{}", dirty.text()));
    assert_eq!(dirty.rc, Some(1), "{}", dirty.text());
    let has = |path: &str, problem: &str| {
        findings(&report)
            .iter()
            .any(|f| f["path"] == path && f["problem"] == problem)
    };
    assert!(has(KWORKER, "executable"), "the program: {report}");
    assert!(has("/var/log", "mount"), "the remount: {report}");
    let table = vm.wait_admin(table_n, deadline::COMMAND).must();
    assert!(table.text().contains(KWORKER), "{}", table.text());
    assert!(
        table.text().contains("not looked into"),
        "the summary names what is out of scope: {}",
        table.text()
    );
    eprintln!(
        "vm_verify_areas: findings {}, verify after the plant answered within {:?}; table:\n{}\nwhole test {:?}",
        findings(&report).len(),
        started.elapsed(),
        table.text(),
        t0.elapsed()
    );
}
