//! Namespace sandbox tests of `verify` (issue 4): clean on a fresh root;
//! a planted binary, a changed byte, a new setuid bit, a file replaced by a
//! symlink and a stray process are each reported.
//!
//! Issue 14's blind spots, each as an intruder with root would use them: a
//! name that is not UTF-8, a valid inventory of another build copied over
//! /lib/kios/inventory, and the mount table (a remount of /tmp with exec,
//! a bind over /bin/kubelet, a program in /tmp). Hostile trees (FIFOs,
//! sparse files of many GiB, a tree deeper than PATH_MAX, symlink loops,
//! links to /proc/kcore) keep verify bounded and init responsive. Mounts
//! below the areas that allow them (/var/lib/kubelet outside pods/,
//! /var/run) are walked: an exec tmpfs with a program in each is reported,
//! and so is a mount hidden under a later one.
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
    let started = std::time::Instant::now();
    let reply = verify(&sandbox)?;
    eprintln!("verify on the test image: {:?}", started.elapsed());
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

/// Findings other than `overridden`.
fn bad(reply: &Value) -> Vec<Value> {
    findings(reply)
        .into_iter()
        .filter(|f| f["problem"] != "overridden")
        .collect()
}

fn has(found: &[Value], path: &str, problem: &str) -> bool {
    found
        .iter()
        .any(|f| f["path"] == path && f["problem"] == problem)
}

#[test]
fn a_name_that_is_not_utf8_is_reported_in_the_escaped_form() -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("verify-bytes").pristine())?;
    let name = std::ffi::OsStr::from_bytes(b"\xff\xfekworker");
    let planted = sandbox.path("/bin").join(name);
    std::fs::copy(sandbox.path("/bin/busybox"), &planted)?;
    let reply = verify(&sandbox)?;
    let found = findings(&reply);
    let escaped = r"/bin/\xff\xfekworker";
    ensure!(
        has(&found, escaped, "unexpected"),
        "the planted busybox is not reported as {escaped}: {found:#?}"
    );
    ensure!(reply["clean"] == false, "verify says clean: {reply}");
    // The table shows the same form, and `files` takes it back.
    let table = sandbox.kiosctl(&["verify"])?;
    let text = String::from_utf8_lossy(&table.stdout);
    ensure!(text.contains(escaped), "kiosctl verify: {text}");
    ensure!(
        table.status.code() == Some(1),
        "kiosctl verify exit: {table:?}"
    );
    let files = sandbox.request(&format!("files {escaped}"))?;
    ensure!(
        files["ok"] == false && files["error"]["code"] == "unknown-path",
        "files {escaped}: {files}"
    );
    Ok(())
}

#[test]
fn a_valid_inventory_of_another_build_is_not_trusted() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("verify-inventory").pristine())?;
    // `rootfs build --extra busybox:/bin/kworker:0500`: the intruder's build
    // with our own public builder, listing one more program.
    let artifacts = kios_e2e::artifacts::artifacts()?;
    let mut options = kios_rootfs::BuildOptions::new(&artifacts.inputs_dir);
    options
        .extra_files
        .push((artifacts.input("busybox"), "/bin/kworker".into(), 0o500));
    let forged = kios_rootfs::build::plan(&options)?.inventory.encode()?;
    let inventory = sandbox.path("/lib/kios/inventory");
    ensure!(
        std::fs::read(&inventory)? != forged,
        "the forged inventory is the image's own"
    );
    std::fs::write(&inventory, &forged)?;
    let kworker = sandbox.path("/bin/kworker");
    std::fs::copy(artifacts.input("busybox"), &kworker)?;
    std::fs::set_permissions(&kworker, std::fs::Permissions::from_mode(0o500))?;

    let reply = verify(&sandbox)?;
    let found = findings(&reply);
    ensure!(reply["clean"] == false, "verify says clean: {reply}");
    ensure!(
        has(&found, "/bin/kworker", "unexpected"),
        "the planted program is not reported: {found:#?}"
    );
    let f = found
        .iter()
        .find(|f| f["path"] == "/lib/kios/inventory" && f["problem"] == "inventory")
        .with_context(|| format!("the rewritten inventory is not reported: {found:#?}"))?;
    ensure!(
        f["detail"].as_str().is_some_and(|d| d.contains("boot")),
        "the detail says verify uses the boot copy: {f}"
    );
    // `version` still names the image the node booted.
    let version = sandbox.request("version")?;
    let booted = kios_rootfs::hash::hex(&kios_rootfs::hash::sha256_bytes(&std::fs::read(
        kios_e2e::artifacts::image_tree()?.join("lib/kios/inventory"),
    )?));
    ensure!(
        version["inventory_sha256"] == booted.as_str()
            && version["build_id"].as_str().is_some_and(|b| !b.is_empty()),
        "version: {version} (booted inventory sha256 {booted})"
    );
    Ok(())
}

#[test]
fn the_mount_table_and_the_scratch_space_are_checked() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("verify-mounts").pristine())?;
    let inside = |args: &[&str]| -> Result<()> {
        let out = sandbox.run_inside("/bin/busybox", args)?;
        ensure!(out.status.success(), "busybox {args:?}: {out:?}");
        Ok(())
    };
    inside(&["mount", "-o", "remount,exec,suid", "/tmp"])?;
    std::fs::copy(sandbox.path("/bin/busybox"), sandbox.path("/tmp/kworker"))?;
    std::fs::set_permissions(
        sandbox.path("/tmp/kworker"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    inside(&["mount", "--bind", "/tmp/kworker", "/bin/kubelet"])?;

    let reply = verify(&sandbox)?;
    let found = bad(&reply);
    ensure!(reply["clean"] == false, "verify says clean: {reply}");
    let tmp = found
        .iter()
        .find(|f| f["path"] == "/tmp" && f["problem"] == "mount")
        .with_context(|| format!("the remount of /tmp is not reported: {found:#?}"))?;
    ensure!(
        tmp["detail"].as_str().is_some_and(|d| d.contains("exec")),
        "{tmp}"
    );
    ensure!(
        has(&found, "/bin/kubelet", "mount"),
        "the bind over /bin/kubelet is not reported: {found:#?}"
    );
    ensure!(
        has(&found, "/tmp/kworker", "executable"),
        "the program in /tmp is not reported: {found:#?}"
    );
    ensure!(
        reply["out_of_scope"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p == "/var/lib/containers/storage")),
        "the summary names what verify leaves to cri-o: {reply}"
    );
    Ok(())
}

#[test]
fn programs_in_mounts_below_the_areas_that_allow_mounts_are_reported() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("verify-nested-mounts").pristine())?;
    let inside = |args: &[&str]| -> Result<()> {
        let out = sandbox.run_inside("/bin/busybox", args)?;
        ensure!(out.status.success(), "busybox {args:?}: {out:?}");
        Ok(())
    };
    // /var/lib/kubelet (outside pods/) and /var/run allow the services'
    // mounts: an intruder mounts an exec tmpfs below each and plants a
    // program in it.
    let points = ["/var/lib/kubelet/plugins/kios-e2e", "/var/run/kios-e2e"];
    for point in points {
        inside(&["mkdir", "-p", point])?;
        inside(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "exec,mode=0755",
            "tmpfs",
            point,
        ])?;
        let program = sandbox.path(&format!("{point}/kworker"));
        std::fs::copy(sandbox.path("/bin/busybox"), &program)?;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
    }
    // A third one hidden by a later tmpfs over its parent: verify cannot
    // walk it and says so.
    inside(&["mkdir", "-p", "/var/run/kios-e2e-parent/hidden"])?;
    inside(&[
        "mount",
        "-t",
        "tmpfs",
        "tmpfs",
        "/var/run/kios-e2e-parent/hidden",
    ])?;
    inside(&["mount", "-t", "tmpfs", "tmpfs", "/var/run/kios-e2e-parent"])?;

    let reply = verify(&sandbox)?;
    let found = bad(&reply);
    ensure!(reply["clean"] == false, "verify says clean: {reply}");
    for point in points {
        let program = format!("{point}/kworker");
        ensure!(
            has(&found, &program, "executable"),
            "the program in the tmpfs at {point} is not reported: {found:#?}"
        );
        ensure!(
            has(&found, point, "mount"),
            "the exec tmpfs at {point} is not reported: {found:#?}"
        );
    }
    ensure!(
        has(&found, "/var/run/kios-e2e-parent/hidden", "mount"),
        "the hidden mount is not reported: {found:#?}"
    );
    // The table an administrator reads: exit 1, the programs named.
    let table = sandbox.kiosctl(&["verify"])?;
    let text = String::from_utf8_lossy(&table.stdout);
    ensure!(
        table.status.code() == Some(1),
        "kiosctl verify exit: {table:?}"
    );
    for point in points {
        ensure!(
            text.contains(&format!("{point}/kworker")),
            "kiosctl verify: {text}"
        );
    }
    eprintln!("kiosctl verify with mounts below the areas:\n{text}");
    Ok(())
}

#[test]
fn hostile_trees_keep_verify_bounded_and_init_responsive() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("verify-hostile").pristine())?;
    let mkfifo = |p: &str| -> Result<()> {
        nix::unistd::mkfifo(
            &sandbox.path(p),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .with_context(|| format!("mkfifo {p}"))
    };
    // FIFOs where a file of the image belongs and in the scratch space.
    std::fs::remove_file(sandbox.path("/etc/hosts"))?;
    mkfifo("/etc/hosts")?;
    mkfifo("/tmp/fifo")?;
    // Sparse files of 64 GiB: one in place of a program, one in /tmp.
    for p in ["/bin/kubelet.sparse", "/tmp/sparse"] {
        std::fs::File::create(sandbox.path(p))?.set_len(64 << 30)?;
    }
    // Symlink loops and links to /proc/kcore.
    std::os::unix::fs::symlink("loop-b", sandbox.path("/tmp/loop-a"))?;
    std::os::unix::fs::symlink("loop-a", sandbox.path("/tmp/loop-b"))?;
    std::os::unix::fs::symlink("/proc/kcore", sandbox.path("/tmp/kcore"))?;
    std::os::unix::fs::symlink("/proc/kcore", sandbox.path("/bin/kcore"))?;
    // A tree deeper than PATH_MAX in /var/tmp, made relative to open
    // directories (its absolute path is about 8 KiB).
    {
        use nix::fcntl::{open, openat, OFlag};
        use nix::sys::stat::{mkdirat, Mode};
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
        let name = "d".repeat(200);
        let mut dir = open(&sandbox.path("/var/tmp"), flags, Mode::empty())?;
        for _ in 0..40 {
            mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755))?;
            dir = openat(&dir, name.as_str(), flags, Mode::empty())?;
        }
    }

    // While verify runs, init keeps answering.
    let started = std::time::Instant::now();
    let (reply, status_took) = std::thread::scope(|s| {
        let verifying = s.spawn(|| verify(&sandbox));
        let asked = std::time::Instant::now();
        let status = sandbox.status();
        let status_took = asked.elapsed();
        (verifying.join(), status.map(|_| status_took))
    });
    let took = started.elapsed();
    let reply = reply.map_err(|_| anyhow::anyhow!("verify thread panicked"))??;
    let status_took = status_took?;
    ensure!(
        took < std::time::Duration::from_secs(20),
        "verify took {took:?}"
    );
    ensure!(
        status_took < std::time::Duration::from_secs(2),
        "status took {status_took:?} during verify"
    );
    let found = bad(&reply);
    for (path, problem) in [
        ("/etc/hosts", "kind"),
        ("/bin/kubelet.sparse", "unexpected"),
        ("/bin/kcore", "unexpected"),
    ] {
        ensure!(has(&found, path, problem), "{path} {problem}: {found:#?}");
    }
    ensure!(
        found.iter().any(|f| f["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/var/tmp/ddd"))),
        "the deep tree is not silently skipped: {found:#?}"
    );
    eprintln!(
        "hostile trees: verify {took:?} ({} findings), status during it {status_took:?}",
        found.len()
    );
    Ok(())
}
