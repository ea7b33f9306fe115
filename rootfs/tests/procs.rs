//! Process verification on a fake /proc tree: init, cri-o, the kubelet,
//! conmon, containers (other PID namespace or pod cgroup), kernel threads,
//! zombies and cri-o's short-lived helpers pass; anything else is reported.

mod common;

use common::TempDir;
use kios_rootfs::{verify_processes, ExpectedProcs, Problem};
use std::path::Path;

struct P<'a> {
    pid: u32,
    ppid: u32,
    state: char,
    flags: u64,
    exe: Option<&'a str>,
    cmdline: &'a str,
    ns: &'a str,
    cgroup: &'a str,
}

fn p<'a>(pid: u32, ppid: u32, exe: &'a str, cmdline: &'a str) -> P<'a> {
    P {
        pid,
        ppid,
        state: 'S',
        flags: 0x400100,
        exe: Some(exe),
        cmdline,
        ns: "pid:[4026531836]",
        cgroup: "/",
    }
}

fn write(root: &Path, procs: &[P]) {
    for pr in procs {
        let d = root.join(pr.pid.to_string());
        std::fs::create_dir_all(d.join("ns")).unwrap();
        // comm with a space and a parenthesis, as the kernel allows.
        std::fs::write(
            d.join("stat"),
            format!(
                "{} (we ird) x) {} {} {} {} 0 -1 {} 0 0\n",
                pr.pid, pr.state, pr.ppid, pr.pid, pr.pid, pr.flags
            ),
        )
        .unwrap();
        if let Some(exe) = pr.exe {
            std::os::unix::fs::symlink(exe, d.join("exe")).unwrap();
        }
        std::fs::write(d.join("cmdline"), pr.cmdline.replace(' ', "\0")).unwrap();
        std::os::unix::fs::symlink(pr.ns, d.join("ns/pid")).unwrap();
        std::fs::write(d.join("cgroup"), format!("0::{}\n", pr.cgroup)).unwrap();
    }
    std::fs::create_dir_all(root.join("self")).unwrap();
    std::fs::write(root.join("meminfo"), "").unwrap();
}

#[test]
fn only_strangers_are_reported() {
    let dir = TempDir::new("procs");
    let kthread = P {
        flags: 0x00208040,
        exe: None,
        cmdline: "",
        ..p(2, 0, "", "")
    };
    let zombie = P {
        state: 'Z',
        exe: None,
        ..p(40, 1, "", "")
    };
    let container = P {
        ns: "pid:[4026532000]",
        ..p(50, 30, "/usr/bin/nginx", "nginx")
    };
    let pod_cgroup = P {
        cgroup: "/kubepods/besteffort/pod123/abc",
        ..p(51, 30, "/pause", "/pause")
    };
    let lookalike_cgroup = P {
        cgroup: "/kubepodsevil",
        ..p(52, 1, "/tmp/x", "x")
    };
    let procs = [
        p(1, 0, "/init", "kiOS"),
        kthread,
        p(10, 1, "/bin/crio", "/bin/crio --runtimes crun"),
        p(
            11,
            1,
            "/bin/kubelet",
            "/bin/kubelet --config /etc/kubernetes/config.yaml",
        ),
        p(30, 1, "/bin/conmon", "/bin/conmon -c abc"),
        p(31, 10, "/bin/crun", "/bin/crun create"),
        p(32, 31, "/bin/pinns", "/bin/pinns -d /var/run"),
        p(33, 11, "/bin/mount", "mount -t tmpfs"),
        p(34, 30, "/bin/crun", "/bin/crun exec"),
        p(37, 2, "/bin/busybox", "/sbin/modprobe -q -- fs-ext4"),
        p(35, 10, "/opt/cni/bin/bridge", "bridge"),
        p(36, 1, "/opt/cni/bin/bridge", "bridge"),
        zombie,
        container,
        pod_cgroup,
        lookalike_cgroup,
        p(60, 1, "/bin/busybox", "busybox sh"),
        p(61, 10, "/tmp/dropper", "/tmp/dropper"),
        p(70, 1, "/bin/kiosctl", "kiosctl verify"),
    ];
    write(dir.path(), &procs);
    let mut expected = ExpectedProcs::node(1, Some(10), Some(11));
    expected.also_allowed.push(70);
    let r = verify_processes(dir.path(), &expected).unwrap();
    assert_eq!(r.checked, procs.len() as u64);
    let got: Vec<&str> = r.findings.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        got,
        ["/proc/36", "/proc/52", "/proc/60", "/proc/61"],
        "{:#?}",
        r.findings
    );
    assert!(r.findings.iter().all(|f| f.problem == Problem::Process));
    assert_eq!(
        r.findings[2].detail,
        "exe /bin/busybox, ppid 1, cmdline \"busybox sh\""
    );
    assert!(!r.is_clean());
}

#[test]
fn a_node_with_only_its_services_is_clean() {
    let dir = TempDir::new("procs-clean");
    write(
        dir.path(),
        &[
            p(1, 0, "/init", "kiOS"),
            p(7, 1, "/bin/crio", "crio"),
            p(9, 1, "/bin/kubelet", "kubelet"),
        ],
    );
    let r = verify_processes(dir.path(), &ExpectedProcs::node(1, Some(7), Some(9))).unwrap();
    assert!(r.is_clean(), "{:#?}", r.findings);
    // A restarted kubelet is someone else until init says so.
    let r = verify_processes(dir.path(), &ExpectedProcs::node(1, Some(7), None)).unwrap();
    assert_eq!(r.findings.len(), 1);
}

#[test]
fn a_missing_proc_is_an_error() {
    let err = verify_processes(
        Path::new("/nonexistent/proc"),
        &ExpectedProcs::node(1, None, None),
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("read /nonexistent/proc: "),
        "{err}"
    );
}

#[test]
fn the_real_proc_can_be_read() {
    // This test process is not init: everything here is "unexpected", but
    // reading the live /proc must work and see at least this process.
    let me = std::process::id();
    let mut expected = ExpectedProcs::node(1, None, None);
    // The machine running the tests may itself be a pod.
    expected.pod_cgroup_prefixes.clear();
    expected.max_findings = 100_000;
    let r = verify_processes(Path::new("/proc"), &expected).unwrap();
    assert!(r.checked >= 1);
    assert!(
        r.findings.iter().any(|f| f.path == format!("/proc/{me}")),
        "this process is listed"
    );
}
