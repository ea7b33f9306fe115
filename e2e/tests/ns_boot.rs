//! Namespace sandbox tests of the boot (issue 2): the mount table, the
//! exact cri-o command line, the kubelet command line for a table of
//! /etc/kubernetes cases, and the kubelet waiting for cri-o's socket.

use anyhow::{ensure, Context, Result};
use kios_e2e::ns::{Sandbox, SandboxConfig, DEFAULT_WAIT};

#[test]
fn mount_table_has_the_base_mounts_with_their_flags_and_shared_root() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("mounts"))?;
    let mounts = sandbox.mounts()?;
    let find = |point: &str| {
        mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == point)
            .with_context(|| {
                format!(
                    "no mount on {point} in {mounts:#?}\n{}",
                    sandbox.diagnostics()
                )
            })
    };
    let expected = [
        ("/proc", "proc", true),
        ("/sys", "sysfs", true),
        ("/dev", "devtmpfs", false),
        ("/dev/pts", "devpts", false),
        ("/sys/kernel/security", "securityfs", false),
        ("/sys/fs/cgroup", "cgroup2", false),
    ];
    for (point, fstype, nodev) in expected {
        let m = find(point)?;
        ensure!(m.fstype == fstype, "{point} is {} not {fstype}", m.fstype);
        ensure!(
            m.has_option("nosuid") && m.has_option("noexec"),
            "{point} lacks nosuid,noexec: {m:?}"
        );
        if nodev {
            ensure!(m.has_option("nodev"), "{point} lacks nodev: {m:?}");
        }
    }
    for point in [
        "/run",
        "/tmp",
        "/var/cache",
        "/var/tmp",
        "/var/run",
        "/var/lib/kubelet",
    ] {
        let m = find(point)?;
        ensure!(m.fstype == "tmpfs", "{point} is {} not tmpfs", m.fstype);
        for option in ["nosuid", "noexec", "nodev"] {
            ensure!(m.has_option(option), "{point} lacks {option}: {m:?}");
        }
    }
    for point in ["/", "/var/run", "/var/lib/kubelet"] {
        let m = find(point)?;
        ensure!(m.is_shared(), "{point} is not shared: {m:?}");
    }
    for dir in [
        "/var/run/crio",
        "/var/lib/kubelet/pods",
        "/var/lib/kubelet/seccomp",
    ] {
        ensure!(
            sandbox.path(dir).is_dir(),
            "{dir} was not created\n{}",
            sandbox.diagnostics()
        );
    }
    Ok(())
}

/// cri-o's command line, exactly as the original init passes it.
const CRIO_ARGV: [&str; 15] = [
    "/bin/crio",
    "--runtimes",
    "crun:/bin/crun:/var/run/crun:oci",
    "--cgroup-manager",
    "cgroupfs",
    "--default-runtime",
    "crun",
    "--listen",
    "/var/run/crio/crio.sock",
    "--conmon",
    "/bin/conmon",
    "--conmon-cgroup",
    "pod",
    "--pinns-path",
    "/bin/pinns",
];

#[test]
fn crio_gets_exactly_the_original_flags_and_a_minimal_environment() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("crio-argv"))?;
    let argv = sandbox.recorded_argv("crio")?;
    ensure!(
        argv == CRIO_ARGV,
        "cri-o argv {argv:?}\n{}",
        sandbox.diagnostics()
    );

    // Children get PATH=/bin and HOME=/ and none of init's boot parameters.
    let host_pid = sandbox.service_host_pid(&sandbox.status()?, "crio")?;
    let environ = std::fs::read(format!("/proc/{host_pid}/environ"))?;
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    ensure!(
        vars.iter().any(|v| v == "PATH=/bin") && vars.iter().any(|v| v == "HOME=/"),
        "crio environment {vars:?}"
    );
    ensure!(
        !vars
            .iter()
            .any(|v| v.starts_with("datapart=") || v.starts_with("kios.")),
        "boot parameters leaked into crio's environment: {vars:?}"
    );
    // No inherited descriptors beyond 0-2, and stdin is /dev/null (the
    // stand-ins list what they inherited before opening anything).
    for name in ["crio", "kubelet"] {
        let fds = sandbox.read(&format!("/run/kios-e2e/{name}.fds"))?;
        let numbers: Vec<&str> = fds.lines().filter_map(|l| l.split(' ').next()).collect();
        ensure!(
            numbers == ["0", "1", "2"],
            "{name} inherited descriptors:\n{fds}"
        );
        ensure!(
            fds.lines().next().is_some_and(|l| l.ends_with("/dev/null")),
            "{name}'s stdin is not /dev/null:\n{fds}"
        );
    }
    Ok(())
}

/// Boots with the given /etc/kubernetes changes and returns the kubelet's argv.
fn kubelet_argv(name: &str, files: &[(&str, &str)], removed: &[&str]) -> Result<Vec<String>> {
    let mut config = SandboxConfig::new(name);
    for (path, content) in files {
        config = config.file(path, *content);
    }
    for path in removed {
        config = config.remove(path);
    }
    let sandbox = Sandbox::boot_ready(config)?;
    sandbox.recorded_argv("kubelet")
}

fn expect_kubelet(tail: &[&str]) -> Vec<String> {
    ["/bin/kubelet", "--config", "/etc/kubernetes/config.yaml"]
        .iter()
        .chain(tail)
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn kubelet_argv_without_optional_files_is_just_the_config() -> Result<()> {
    let argv = kubelet_argv("kubelet-plain", &[], &["/etc/kubernetes/node-labels"])?;
    ensure!(argv == expect_kubelet(&[]), "kubelet argv {argv:?}");
    Ok(())
}

#[test]
fn kubelet_argv_of_the_image_defaults_has_no_labels() -> Result<()> {
    // The image's node-labels holds only comments.
    let argv = kubelet_argv("kubelet-defaults", &[], &[])?;
    ensure!(argv == expect_kubelet(&[]), "kubelet argv {argv:?}");
    Ok(())
}

#[test]
fn kubelet_node_labels_skip_comments_blank_lines_and_whitespace() -> Result<()> {
    let labels = "# the node's labels\n\
                  \n\
                  role: worker\n\
                  \t topology.kubernetes.io/zone:   rack-1   # trailing comment\n\
                  \n\
                  # tier: ignored\n\
                  team :a_b.c-d\n";
    let argv = kubelet_argv(
        "kubelet-labels",
        &[("/etc/kubernetes/node-labels", labels)],
        &[],
    )?;
    ensure!(
        argv == expect_kubelet(&[
            "--node-labels",
            "role=worker,topology.kubernetes.io/zone=rack-1,team=a_b.c-d"
        ]),
        "kubelet argv {argv:?}"
    );
    Ok(())
}

#[test]
fn kubelet_node_labels_drop_characters_outside_the_allowed_set() -> Result<()> {
    // As the original: every character outside A-Z a-z 0-9 . _ - / is
    // dropped (quotes, spaces, '!', '='), ':' separates key and value.
    let labels = "tier: \"gold\"\nzone: 'eu-1'!\n";
    let argv = kubelet_argv(
        "kubelet-label-chars",
        &[("/etc/kubernetes/node-labels", labels)],
        &[],
    )?;
    ensure!(
        argv == expect_kubelet(&["--node-labels", "tier=gold,zone=eu-1"]),
        "kubelet argv {argv:?}"
    );
    Ok(())
}

#[test]
fn kubelet_node_ip_is_the_trimmed_first_line() -> Result<()> {
    let argv = kubelet_argv(
        "kubelet-node-ip",
        &[("/etc/kubernetes/node-ip", "  10.1.2.3 \t\nfd00::1\n")],
        &["/etc/kubernetes/node-labels"],
    )?;
    ensure!(
        argv == expect_kubelet(&["--node-ip", "10.1.2.3"]),
        "kubelet argv {argv:?}"
    );
    Ok(())
}

#[test]
fn kubelet_kubeconfig_bootstrap_and_credential_providers() -> Result<()> {
    let argv = kubelet_argv(
        "kubelet-all",
        &[
            ("/etc/kubernetes/node-labels", "a: b\n"),
            ("/etc/kubernetes/node-ip", "192.0.2.7\n"),
            (
                "/etc/kubernetes/kubelet.conf",
                "apiVersion: v1\nkind: Config\n",
            ),
            (
                "/etc/kubernetes/bootstrap-kubelet.conf",
                "apiVersion: v1\nkind: Config\n",
            ),
            (
                "/etc/kubernetes/credential-providers.yaml",
                "kind: CredentialProviderConfig\n",
            ),
        ],
        &[],
    )?;
    ensure!(
        argv == expect_kubelet(&[
            "--node-labels",
            "a=b",
            "--node-ip",
            "192.0.2.7",
            "--kubeconfig",
            "/etc/kubernetes/kubelet.conf",
            "--bootstrap-kubeconfig",
            "/etc/kubernetes/bootstrap-kubelet.conf",
            "--image-credential-provider-config",
            "/etc/kubernetes/credential-providers.yaml",
            "--image-credential-provider-bin-dir",
            "/usr/libexec/kubernetes/kubelet-plugins/credential-provider/exec",
        ]),
        "kubelet argv {argv:?}"
    );
    Ok(())
}

#[test]
fn kubelet_bootstrap_kubeconfig_alone() -> Result<()> {
    let argv = kubelet_argv(
        "kubelet-bootstrap",
        &[("/etc/kubernetes/bootstrap-kubelet.conf", "apiVersion: v1\n")],
        &["/etc/kubernetes/node-labels"],
    )?;
    ensure!(
        argv == expect_kubelet(&[
            "--bootstrap-kubeconfig",
            "/etc/kubernetes/bootstrap-kubelet.conf"
        ]),
        "kubelet argv {argv:?}"
    );
    Ok(())
}

#[test]
fn kubelet_never_starts_before_the_crio_socket_exists() -> Result<()> {
    let sandbox =
        Sandbox::boot(SandboxConfig::new("crio-delay").crio_conf("listen_delay_ms=700\n"))?;
    sandbox.wait_event("crio started", DEFAULT_WAIT)?;
    // Status first, then the events: if cri-o was not listening when the
    // events were read, it was not listening when status answered either.
    let status = sandbox.wait_for("a status reply", DEFAULT_WAIT, || sandbox.status().ok())?;
    let events = sandbox.events();
    if !events.iter().any(|e| e.starts_with("crio listening")) {
        let kubelet = Sandbox::service(&status, "kubelet")?;
        ensure!(
            kubelet["pid"].is_null(),
            "kubelet has a pid before cri-o listens: {kubelet}\n{}",
            sandbox.diagnostics()
        );
        ensure!(
            kubelet["state"] == "waiting",
            "kubelet should be waiting for cri-o's socket: {kubelet}"
        );
    }
    sandbox.wait_event("kubelet connected", DEFAULT_WAIT)?;
    // The kubelet stand-in looks for cri-o's socket first thing at start.
    let seen = sandbox.wait_event("kubelet crio-socket=", DEFAULT_WAIT)?;
    ensure!(
        seen == "kubelet crio-socket=present",
        "the kubelet started before cri-o's socket existed ({seen})\n{}",
        sandbox.diagnostics()
    );
    Ok(())
}

#[test]
fn hostname_comes_from_etc_hostname() -> Result<()> {
    let sandbox =
        Sandbox::boot_ready(SandboxConfig::new("hostname").file("/etc/hostname", "node-a\n"))?;
    let status = sandbox.status()?;
    ensure!(
        status["node"]["hostname"] == "node-a",
        "hostname in status: {}",
        status["node"]
    );
    Ok(())
}

/// The nice value of a thread, from /proc/PID/task/TID/stat.
fn nice_of(pid: i32, tid: i32) -> Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("no command in stat")? + 2..];
    // Field 19 of stat; the state (field 3) is the first after the command.
    let nice = rest.split_whitespace().nth(16).context("stat too short")?;
    Ok(nice.parse()?)
}

fn tids(pid: i32) -> Result<Vec<i32>> {
    let mut tids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = task?.file_name().to_str().and_then(|t| t.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// init's event loop runs at nice -10, ahead of what it starts; every
/// other thread of init and every process it starts (and their threads)
/// runs at nice 0.
#[test]
fn the_event_loop_runs_ahead_and_everything_it_starts_at_nice_0() -> Result<()> {
    let sandbox = Sandbox::boot_ready(SandboxConfig::new("nice"))?;
    let init = sandbox.init_pid();
    ensure!(
        nice_of(init, init)? == -10,
        "init's loop is at nice {}",
        nice_of(init, init)?
    );
    let others: Vec<i32> = tids(init)?.into_iter().filter(|t| *t != init).collect();
    ensure!(!others.is_empty(), "init has no thread besides its loop");
    for tid in others {
        ensure!(
            nice_of(init, tid)? == 0,
            "init's thread {tid} is at nice {}",
            nice_of(init, tid)?
        );
    }
    let status = sandbox.status()?;
    for name in ["crio", "kubelet"] {
        let pid = sandbox.service_host_pid(&status, name)?;
        for tid in tids(pid)? {
            let nice = nice_of(pid, tid)?;
            ensure!(nice == 0, "{name}'s thread {tid} is at nice {nice}");
        }
    }
    Ok(())
}
