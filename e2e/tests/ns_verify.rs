//! Namespace sandbox tests of `verify` (issue 4): clean on a fresh root;
//! a planted binary, a changed byte, a new setuid bit, a file replaced by a
//! symlink and a stray process are each reported.
//!
//! The /etc override case (a file of the data partition's /etc overlay
//! reported as `overridden`) needs a data partition, which this sandbox
//! does not have (`datapart=none`): the VM tests cover it.

use std::os::unix::fs::PermissionsExt;

use anyhow::{ensure, Context, Result};
use kios_e2e::ns::{Sandbox, SandboxConfig};
use serde_json::Value;

fn verify(sandbox: &Sandbox) -> Result<Value> {
    let reply = sandbox.request("verify")?;
    ensure!(
        reply["ok"] == true,
        "verify failed: {reply}\n{}",
        sandbox.diagnostics()
    );
    Ok(reply)
}

fn findings(reply: &Value) -> Vec<Value> {
    reply["findings"].as_array().cloned().unwrap_or_default()
}

fn finding_for<'a>(findings: &'a [Value], path: &str) -> Option<&'a Value> {
    findings.iter().find(|f| f["path"] == path)
}

#[test]
fn verify_is_clean_on_a_fresh_root() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("verify-clean").pristine())?;
    let reply = verify(&sandbox)?;
    let bad: Vec<Value> = findings(&reply)
        .into_iter()
        .filter(|f| f["problem"] != "overridden")
        .collect();
    ensure!(
        reply["clean"] == true && bad.is_empty(),
        "a fresh root is not clean: {bad:#?}\n{}",
        sandbox.diagnostics()
    );
    ensure!(
        reply["checked"].as_u64() > Some(20),
        "checked: {}",
        reply["checked"]
    );
    Ok(())
}

#[test]
fn verify_reports_each_kind_of_tampering() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("verify-tamper").pristine())?;

    // An 8th binary in /bin.
    std::fs::write(sandbox.path("/bin/evil"), b"#!/bin/sh\necho evil\n")?;
    std::fs::set_permissions(
        sandbox.path("/bin/evil"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    let reply = verify(&sandbox)?;
    let found = findings(&reply);
    let f = finding_for(&found, "/bin/evil")
        .with_context(|| format!("planted binary not reported: {found:#?}"))?;
    ensure!(f["problem"] == "unexpected", "planted binary: {f}");
    ensure!(
        reply["clean"] == false,
        "verify says clean with a planted binary"
    );

    // One byte changed.
    let hosts = sandbox.path("/etc/hosts");
    let mut content = std::fs::read(&hosts)?;
    ensure!(!content.is_empty(), "/etc/hosts is empty in the image");
    content[0] ^= 0x20;
    std::fs::write(&hosts, &content)?;
    let found = findings(&verify(&sandbox)?);
    let f = finding_for(&found, "/etc/hosts")
        .with_context(|| format!("changed byte not reported: {found:#?}"))?;
    ensure!(f["problem"] == "modified", "changed byte: {f}");
    ensure!(
        f["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "no detail: {f}"
    );

    // A new setuid bit.
    let busybox = sandbox.path("/bin/busybox");
    let mode = std::fs::metadata(&busybox)?.permissions().mode();
    std::fs::set_permissions(
        &busybox,
        std::fs::Permissions::from_mode((mode & 0o7777) | 0o4000),
    )?;
    let found = findings(&verify(&sandbox)?);
    let f = found
        .iter()
        .find(|f| f["path"] == "/bin/busybox" && f["problem"] == "setuid")
        .with_context(|| format!("setuid not reported: {found:#?}"))?;
    ensure!(
        f["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "no detail: {f}"
    );

    // A file replaced by a symlink.
    let resolv = sandbox.path("/etc/resolv.conf");
    std::fs::remove_file(&resolv)?;
    std::os::unix::fs::symlink("/tmp/resolv.conf", &resolv)?;
    let found = findings(&verify(&sandbox)?);
    let f = finding_for(&found, "/etc/resolv.conf")
        .with_context(|| format!("symlink swap not reported: {found:#?}"))?;
    ensure!(f["problem"] == "kind", "symlink swap: {f}");

    // A stray process in init's PID namespace.
    let mut stray = sandbox.spawn_inside("/bin/busybox", &["sleep", "300"])?;
    let stray_ns_pid = sandbox
        .wait_process("busybox", kios_e2e::ns::DEFAULT_WAIT)?
        .ns_pid;
    let found = findings(&verify(&sandbox)?);
    // Kill the stray by pid before judging (it is ours).
    let _ = stray.kill();
    let _ = stray.wait();
    let f = found
        .iter()
        .find(|f| f["problem"] == "process")
        .with_context(|| format!("stray process not reported: {found:#?}"))?;
    let detail = f["detail"].as_str().unwrap_or("");
    let text = format!("{} {detail}", f["path"]);
    ensure!(
        text.contains(&stray_ns_pid.to_string())
            && (text.contains("busybox") || text.contains("sleep")),
        "the process finding should name the pid {stray_ns_pid} and the program: {f}"
    );
    Ok(())
}

#[test]
fn files_explains_an_entry_and_rejects_unknown_paths() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("files").pristine())?;
    let reply = sandbox.request("files /bin/kubelet")?;
    ensure!(reply["ok"] == true, "files /bin/kubelet: {reply}");
    let files = reply["files"].as_array().context("files without files")?;
    ensure!(files.len() == 1, "files /bin/kubelet: {reply}");
    let kubelet = &files[0];
    ensure!(
        kubelet["path"] == "/bin/kubelet" && kubelet["kind"] == "file",
        "{kubelet}"
    );
    ensure!(
        kubelet["why"].as_str().is_some_and(|w| w.len() > 20),
        "no explanation for /bin/kubelet: {kubelet}"
    );
    let all = sandbox.request("files")?;
    let count = all["files"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(count > 20, "files lists {count} entries: {all}");
    let unknown = sandbox.request("files /bin/nope")?;
    ensure!(
        unknown["ok"] == false && unknown["error"]["code"] == "unknown-path",
        "files /bin/nope: {unknown}"
    );
    Ok(())
}
