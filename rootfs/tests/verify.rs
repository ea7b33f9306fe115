//! Verify on a built tree: clean when fresh, and each kind of drift found
//! (planted binary, changed byte, setuid bit, file replaced by a symlink,
//! mode, owner, missing, broken hard link), /etc overrides reported as
//! overridden, runtime mounts not walked by the tree check; the runtime
//! areas and mounts below them through the whole node check.

mod common;

use common::{fake_inputs, TempDir};
use kios_rootfs::{build, verify_tree, Finding, Inventory, Problem, Report, VerifyOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

struct Tree {
    dir: TempDir,
    inv: Inventory,
}

impl Tree {
    fn new(tag: &str) -> Tree {
        let dir = TempDir::new(tag);
        let opts = fake_inputs(dir.path());
        let inv = build::build_tree(&opts, &dir.join("root")).unwrap();
        Tree { dir, inv }
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.join("root")
    }

    fn live(&self, p: &str) -> std::path::PathBuf {
        self.root().join(p.trim_start_matches('/'))
    }

    fn verify(&self, opts: &VerifyOptions) -> Report {
        verify_tree(&self.root(), &self.inv, opts).unwrap()
    }

    fn findings(&self) -> Vec<Finding> {
        self.verify(&VerifyOptions::default()).findings
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // Tight modes: open everything up so the temp dir can be removed.
        fn open(p: &Path) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    if std::fs::symlink_metadata(e.path())
                        .map(|m| m.is_dir())
                        .unwrap_or(false)
                    {
                        let _ = std::fs::set_permissions(
                            e.path(),
                            std::fs::Permissions::from_mode(0o700),
                        );
                        open(&e.path());
                    }
                }
            }
        }
        open(&self.root());
    }
}

fn only(findings: &[Finding]) -> &Finding {
    assert_eq!(findings.len(), 1, "{findings:#?}");
    &findings[0]
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_fresh_tree_is_clean() {
    let t = Tree::new("clean");
    let r = t.verify(&VerifyOptions::default());
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    assert!(r.is_clean());
    let in_image = t
        .inv
        .entries
        .iter()
        .filter(|e| e.presence.in_image())
        .count() as u64;
    // Entries under runtime mounts (none in the image) do not count.
    assert_eq!(
        r.checked,
        in_image - 1,
        "every image entry but /dev/console (under /dev) is checked"
    );
}

#[test]
fn init_removed_at_boot_is_fine() {
    let t = Tree::new("init");
    std::fs::remove_file(t.live("/init")).unwrap();
    assert!(t.findings().is_empty());
}

#[test]
fn a_planted_binary_is_unexpected() {
    let t = Tree::new("plant");
    std::fs::write(t.live("/bin/backdoor"), b"\x7fELF...").unwrap();
    chmod(&t.live("/bin/backdoor"), 0o755);
    let f = t.findings();
    let f = only(&f);
    assert_eq!(
        (f.path.as_str(), f.problem),
        ("/bin/backdoor", Problem::Unexpected)
    );
    assert!(
        f.detail.starts_with("file, mode 0755, owner 0:0, 7 bytes"),
        "{}",
        f.detail
    );
    assert_eq!(f.problem.as_str(), "unexpected");
}

#[test]
fn a_changed_byte_is_modified() {
    let t = Tree::new("byte");
    let p = t.live("/bin/crio");
    let mut data = std::fs::read(&p).unwrap();
    data[0] ^= 1;
    chmod(&p, 0o700);
    std::fs::write(&p, &data).unwrap();
    chmod(&p, 0o500);
    let f = t.findings();
    let f = only(&f);
    assert_eq!(
        (f.path.as_str(), f.problem),
        ("/bin/crio", Problem::Modified)
    );
    assert!(f.detail.starts_with("sha256 "), "{}", f.detail);
}

#[test]
fn a_new_setuid_bit_is_reported() {
    let t = Tree::new("suid");
    chmod(&t.live("/bin/kiosctl"), 0o4500);
    let f = t.findings();
    let f = only(&f);
    assert_eq!(
        (f.path.as_str(), f.problem),
        ("/bin/kiosctl", Problem::Setuid)
    );
    assert!(
        f.detail.contains("mode 4500, expected 0500"),
        "{}",
        f.detail
    );
}

#[test]
fn a_file_replaced_by_a_symlink_is_a_kind_change() {
    let t = Tree::new("symlink");
    let p = t.live("/bin/pinns");
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink("/tmp/evil", &p).unwrap();
    let f = t.findings();
    let f = only(&f);
    assert_eq!((f.path.as_str(), f.problem), ("/bin/pinns", Problem::Kind));
    assert_eq!(f.detail, "expected file, found symlink");
}

#[test]
fn mode_owner_and_missing() {
    let t = Tree::new("mode");
    chmod(&t.live("/etc/hosts"), 0o666);
    std::os::unix::fs::lchown(t.live("/etc/passwd"), Some(1000), None).unwrap();
    std::fs::remove_file(t.live("/etc/group")).unwrap();
    let f = t.findings();
    let got: Vec<(&str, Problem)> = f.iter().map(|f| (f.path.as_str(), f.problem)).collect();
    assert_eq!(
        got,
        [
            ("/etc/group", Problem::Missing),
            ("/etc/hosts", Problem::Mode),
            ("/etc/passwd", Problem::Owner)
        ],
        "{f:#?}"
    );
    assert_eq!(f[1].detail, "mode 0666, expected 0444");
    assert_eq!(f[2].detail, "owner 1000:0, expected 0:0");
}

#[test]
fn a_symlink_pointing_elsewhere_is_modified() {
    let t = Tree::new("retarget");
    let p = t.live("/sbin");
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink("/tmp", &p).unwrap();
    let f = t.findings();
    let f = only(&f);
    assert_eq!((f.path.as_str(), f.problem), ("/sbin", Problem::Modified));
    assert_eq!(f.detail, "points to /tmp, expected bin");
}

#[test]
fn a_broken_hard_link_is_reported() {
    let t = Tree::new("hardlink");
    let p = t.live("/bin/mount");
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, b"not busybox").unwrap();
    chmod(&p, 0o500);
    let f = t.findings();
    let problems: Vec<Problem> = f.iter().map(|f| f.problem).collect();
    assert_eq!(problems, [Problem::Modified, Problem::Kind], "{f:#?}");
    assert!(f.iter().all(|f| f.path == "/bin/mount"));
}

#[test]
fn runtime_mounts_are_not_walked_but_image_dirs_are() {
    let t = Tree::new("runtime");
    std::fs::write(t.live("/run/system.sock"), b"").unwrap();
    std::fs::create_dir(t.live("/var/log/pods")).unwrap();
    std::fs::write(t.live("/proc/1"), b"").unwrap();
    // Runtime directories of the image (not mounts) are not walked either.
    chmod(&t.live("/opt/cni/bin"), 0o700);
    std::fs::write(t.live("/opt/cni/bin/bridge"), b"cni").unwrap();
    chmod(&t.live("/opt/cni/bin"), 0o500);
    std::fs::write(t.live("/var/lib/crio/version"), b"1").unwrap();
    assert!(t.findings().is_empty());
    std::fs::create_dir(t.live("/srv")).unwrap();
    let f = t.findings();
    assert_eq!(
        (f[0].path.as_str(), f[0].problem),
        ("/srv", Problem::Unexpected)
    );
}

#[test]
fn etc_overrides_are_overridden_not_tampering() {
    let t = Tree::new("overlay");
    let upper = t.dir.join("upper");
    std::fs::create_dir_all(upper.join("kubernetes")).unwrap();
    // The operator replaces resolv.conf and adds node-ip; the overlay shows both in /etc.
    for (rel, data) in [
        ("resolv.conf", "nameserver 10.0.0.1\n"),
        ("kubernetes/node-ip", "10.0.0.5\n"),
    ] {
        std::fs::write(upper.join(rel), data).unwrap();
        let live = t.live(&format!("/etc/{rel}"));
        let parent = live.parent().unwrap().to_path_buf();
        chmod(&parent, 0o700);
        let _ = std::fs::remove_file(&live);
        std::fs::write(&live, data).unwrap();
        chmod(&live, 0o444);
    }
    chmod(&t.live("/etc/kubernetes"), 0o500);
    let opts = VerifyOptions {
        etc_upper: Some(upper.clone()),
        ..VerifyOptions::default()
    };
    let r = t.verify(&opts);
    let got: Vec<(&str, Problem)> = r
        .findings
        .iter()
        .map(|f| (f.path.as_str(), f.problem))
        .collect();
    assert_eq!(
        got,
        [
            ("/etc/kubernetes/node-ip", Problem::Overridden),
            ("/etc/resolv.conf", Problem::Overridden)
        ],
        "{:#?}",
        r.findings
    );
    assert!(
        r.findings[0].detail.contains("added on the data partition"),
        "{}",
        r.findings[0].detail
    );
    assert!(
        r.findings[1]
            .detail
            .contains(&upper.join("resolv.conf").display().to_string()),
        "{}",
        r.findings[1].detail
    );
    assert!(r.is_clean(), "overrides are not drift");

    // Without the overlay, the same differences are tampering.
    let r = t.verify(&VerifyOptions::default());
    let got: Vec<(&str, Problem)> = r
        .findings
        .iter()
        .map(|f| (f.path.as_str(), f.problem))
        .collect();
    assert_eq!(
        got,
        [
            ("/etc/kubernetes/node-ip", Problem::Unexpected),
            ("/etc/resolv.conf", Problem::Modified)
        ]
    );
    assert!(!r.is_clean());
}

#[test]
fn files_hidden_by_the_overlay_are_overridden() {
    let t = Tree::new("overlay-gone");
    let upper = t.dir.join("upper");
    // An opaque upper directory (or a whiteout) hides the image's files.
    std::fs::create_dir_all(upper.join("containers")).unwrap();
    chmod(&t.live("/etc/containers"), 0o755);
    std::fs::remove_file(t.live("/etc/containers/policy.json")).unwrap();
    chmod(&t.live("/etc/containers"), 0o555);
    let opts = VerifyOptions {
        etc_upper: Some(upper.clone()),
        ..VerifyOptions::default()
    };
    let r = t.verify(&opts);
    let f = only(&r.findings);
    assert_eq!(
        (f.path.as_str(), f.problem),
        ("/etc/containers/policy.json", Problem::Overridden)
    );
    assert!(
        f.detail
            .contains(&upper.join("containers").display().to_string()),
        "{}",
        f.detail
    );
    // Without an upper layer that explains it, it is missing.
    let f = t.findings();
    assert_eq!(only(&f).problem, Problem::Missing);
}

#[test]
fn setuid_through_the_overlay_is_still_reported() {
    let t = Tree::new("overlay-suid");
    let upper = t.dir.join("upper");
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::write(upper.join("hosts"), b"x").unwrap();
    chmod(&t.live("/etc/hosts"), 0o4444);
    let opts = VerifyOptions {
        etc_upper: Some(upper),
        ..VerifyOptions::default()
    };
    let r = t.verify(&opts);
    assert!(
        r.findings.iter().any(|f| f.problem == Problem::Setuid),
        "{:#?}",
        r.findings
    );
    assert!(!r.is_clean());
}

#[test]
fn findings_are_bounded() {
    let t = Tree::new("bound");
    for i in 0..20 {
        std::fs::write(t.live(&format!("/bin/x{i:02}")), b"").unwrap();
    }
    let opts = VerifyOptions {
        max_findings: 5,
        ..VerifyOptions::default()
    };
    let r = t.verify(&opts);
    assert_eq!((r.findings.len(), r.omitted), (5, 15));
    assert!(!r.is_clean());
}

#[test]
fn every_problem_has_a_stable_name() {
    let names: Vec<&str> = Problem::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "missing",
            "modified",
            "mode",
            "owner",
            "kind",
            "setuid",
            "unexpected",
            "overridden",
            "process",
            "executable",
            "mount",
            "inventory"
        ]
    );
}

#[test]
fn a_name_that_is_not_utf8_is_reported_escaped() {
    use std::os::unix::ffi::OsStrExt;
    let t = Tree::new("bytes");
    let name = std::ffi::OsStr::from_bytes(b"\xff\xfekworker");
    std::fs::write(t.live("/bin").join(name), b"\x7fELF").unwrap();
    std::fs::write(t.live("/bin/a b\nc"), b"").unwrap();
    let found = t.findings();
    let f = found
        .iter()
        .find(|f| f.path == "/bin/\\xff\\xfekworker")
        .unwrap_or_else(|| panic!("not reported: {found:?}"));
    assert_eq!(f.problem, Problem::Unexpected);
    assert!(
        found.iter().any(|f| f.path == "/bin/a\\x20b\\x0ac"),
        "{found:?}"
    );
    // The escaped form leads back to the file.
    let bytes = kios_protocol::path::unescape(&f.path).unwrap();
    assert!(t
        .root()
        .join(std::ffi::OsStr::from_bytes(&bytes[1..]))
        .exists());
}

mod node {
    //! The whole node check ([`kios_rootfs::verify_node`]) on a built tree:
    //! the boot inventory as reference, the runtime areas, hostile trees.

    use super::Tree;
    use kios_rootfs::{verify_node, BootReference, NodePaths, Problem, Report, VerifyOptions};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::time::{Duration, Instant};

    fn reference(t: &Tree) -> BootReference {
        BootReference::from_parts(t.inv.encode().unwrap(), Ok(Vec::new())).unwrap()
    }

    fn check(t: &Tree, reference: &BootReference) -> Report {
        let mountinfo = t.dir.join("mountinfo");
        std::fs::write(&mountinfo, b"").unwrap();
        let paths = NodePaths {
            root: t.root(),
            mountinfo,
        };
        verify_node(reference, &paths, &VerifyOptions::default()).unwrap()
    }

    /// Asserts that `r` has a `problem` finding for `path`.
    #[track_caller]
    fn expect(r: &Report, path: &str, problem: Problem) {
        let found = r
            .findings
            .iter()
            .any(|f| f.path == path && f.problem == problem);
        assert!(found, "no {problem:?} for {path}: {:#?}", r.findings);
    }

    #[test]
    fn a_fresh_tree_is_clean_and_names_what_is_out_of_scope() {
        let t = Tree::new("node-clean");
        let r = check(&t, &reference(&t));
        assert!(r.is_clean(), "{:#?}", r.findings);
        assert!(
            r.out_of_scope
                .iter()
                .any(|p| p == "/var/lib/containers/storage"),
            "{:?}",
            r.out_of_scope
        );
    }

    #[test]
    fn a_rewritten_inventory_is_a_finding_and_is_not_trusted() {
        let t = Tree::new("node-inventory");
        let boot = reference(&t);
        // The intruder's own valid inventory, listing the program they plant.
        let mut forged = t.inv.clone();
        let mut kworker = forged.exact("/bin/busybox").unwrap().clone();
        kworker.path = "/bin/kworker".into();
        forged.entries.push(kworker);
        forged = kios_rootfs::Inventory {
            entries: {
                let mut e = forged.entries;
                e.sort_by(|a, b| a.path.cmp(&b.path));
                e
            },
            ..forged
        };
        let bytes = forged.encode().unwrap();
        let file = t.live("/lib/kios/inventory");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&file, &bytes).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
        std::fs::copy(t.live("/bin/busybox"), t.live("/bin/kworker")).unwrap();
        let r = check(&t, &boot);
        expect(&r, "/lib/kios/inventory", Problem::Inventory);
        expect(&r, "/bin/kworker", Problem::Unexpected);
        assert!(!r.is_clean());
    }

    #[test]
    fn programs_and_setuid_files_in_runtime_areas_are_reported() {
        let t = Tree::new("node-areas");
        let plant = |p: &str, mode: u32| {
            let path = t.live(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"\x7fELF").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        plant("/var/log/kworker", 0o755);
        plant("/tmp/a/b/suid", 0o4644);
        plant("/var/log/plain.log", 0o600);
        plant("/opt/cni/bin/bridge", 0o755); // allowed there
        plant("/var/lib/containers/storage/overlay/x/bin/sh", 0o4755); // delegated
        let r = check(&t, &reference(&t));
        expect(&r, "/var/log/kworker", Problem::Executable);
        expect(&r, "/tmp/a/b/suid", Problem::Setuid);
        let paths: Vec<&str> = r.findings.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths.len(), 2, "{paths:?}");
    }

    /// Writes a small file at `p` (its directories made) with `mode`.
    fn plant(t: &Tree, p: &str, mode: u32) {
        let path = t.live(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"\x7fELF").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// `verify_node` with these boot and live mount tables.
    fn check_mount_tables(t: &Tree, boot: &[u8], live: &[u8]) -> Report {
        let parsed = kios_rootfs::mountinfo::parse(boot);
        let reference = BootReference::from_parts(t.inv.encode().unwrap(), Ok(parsed)).unwrap();
        let mountinfo = t.dir.join("mountinfo");
        std::fs::write(&mountinfo, live).unwrap();
        let paths = NodePaths {
            root: t.root(),
            mountinfo,
        };
        verify_node(&reference, &paths, &VerifyOptions::default()).unwrap()
    }

    const BOOT_MOUNTS: &str = "\
20 1 0:20 / / rw - rootfs rootfs rw
22 20 0:22 / /var/run rw,nosuid,nodev,noexec shared:2 - tmpfs tmpfs rw
23 20 0:23 / /var/lib/kubelet rw,nosuid,nodev,noexec shared:3 - tmpfs tmpfs rw
24 23 8:1 /data/pods /var/lib/kubelet/pods rw,nodev - ext4 /dev/vda1 rw
";

    #[test]
    fn mounts_below_areas_are_walked_and_each_is_reached_or_reported() {
        let t = Tree::new("node-mounts");
        // Mounts in the live table are walked like directories: no mount
        // can be made here without root, so the table is the seam and the
        // files below its mount points are plain ones of the tree (a mount
        // point counts as reached when its st_dev is the table's).
        // An intruder's exec tmpfs below /var/lib/kubelet (outside pods/),
        // and a noexec one below /var/run, each with a program.
        plant(&t, "/var/lib/kubelet/plugins/x/kworker", 0o755);
        plant(&t, "/var/run/x/kworker", 0o755);
        // cri-o's namespace file, a pod volume and a staged CSI volume.
        plant(&t, "/var/run/netns/cni-1", 0o444);
        plant(&t, "/var/lib/kubelet/pods/u/volumes/v/bin/sh", 0o755);
        plant(
            &t,
            "/var/lib/kubelet/plugins/kubernetes.io/csi/d/h/globalmount/bin/sh",
            0o4755,
        );
        // Two tmpfs stacked on /var/run/stack; a tmpfs at /var/run/gone/y
        // hidden by a later one over /var/run/gone, in which the intruder
        // made a decoy y: it is on the tree's device, not on 0:47.
        std::fs::create_dir_all(t.live("/var/run/stack")).unwrap();
        std::fs::create_dir_all(t.live("/var/run/gone/y")).unwrap();
        // The mounts the walk must reach are "on" the tree's own device.
        let (major, minor) =
            kios_rootfs::verify::split_rdev(std::fs::metadata(t.root()).map(|m| m.dev()).unwrap());
        let dev = format!("{major}:{minor}");
        let live = format!(
            "{BOOT_MOUNTS}\
40 23 {dev} / /var/lib/kubelet/plugins/x rw,relatime - tmpfs tmpfs rw
41 22 {dev} / /var/run/x rw,nosuid,nodev,noexec - tmpfs tmpfs rw
42 22 {dev} net:[4026531840] /var/run/netns/cni-1 rw - nsfs nsfs rw
43 24 0:43 / /var/lib/kubelet/pods/u/volumes/v rw - tmpfs tmpfs rw
44 23 8:16 / /var/lib/kubelet/plugins/kubernetes.io/csi/d/h/globalmount rw - ext4 /dev/vdb rw
45 22 {dev} / /var/run/stack rw,nosuid,nodev,noexec - tmpfs tmpfs rw
46 45 {dev} / /var/run/stack rw,nosuid,nodev,noexec - tmpfs tmpfs rw
47 22 0:47 / /var/run/gone/y rw,nosuid,nodev,noexec - tmpfs tmpfs rw
48 22 {dev} / /var/run/gone rw,nosuid,nodev,noexec - tmpfs tmpfs rw
"
        );
        let r = check_mount_tables(&t, BOOT_MOUNTS.as_bytes(), live.as_bytes());
        let got: Vec<(&str, Problem)> = r
            .findings
            .iter()
            .map(|f| (f.path.as_str(), f.problem))
            .collect();
        assert_eq!(
            got,
            [
                ("/var/lib/kubelet/plugins/x", Problem::Mount),
                ("/var/lib/kubelet/plugins/x/kworker", Problem::Executable),
                ("/var/run/gone/y", Problem::Mount),
                ("/var/run/stack", Problem::Mount),
                ("/var/run/x/kworker", Problem::Executable),
            ],
            "{:#?}",
            r.findings
        );
        let detail = |i: usize| r.findings[i].detail.as_str();
        assert!(
            detail(0).starts_with("mounted since boot without noexec,nosuid,nodev (tmpfs"),
            "{}",
            detail(0)
        );
        assert!(detail(2).contains("cannot reach it"), "{}", detail(2));
        assert!(
            detail(3).starts_with("2 mounts stacked here"),
            "{}",
            detail(3)
        );
        assert!(
            r.out_of_scope
                .iter()
                .any(|p| p == "/var/lib/kubelet/plugins/kubernetes.io"),
            "{:?}",
            r.out_of_scope
        );
        // Without the intruder's mounts the same tree is clean but for
        // its two programs: the walk enters plain directories anyway.
        let r = check_mount_tables(&t, BOOT_MOUNTS.as_bytes(), BOOT_MOUNTS.as_bytes());
        let got: Vec<&str> = r.findings.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            got,
            ["/var/lib/kubelet/plugins/x/kworker", "/var/run/x/kworker"],
            "{:#?}",
            r.findings
        );
    }

    #[test]
    fn hostile_trees_are_bounded_and_reported() {
        let t = Tree::new("node-hostile");
        // A FIFO where a file of the image belongs, and in an area.
        let hosts = t.live("/etc/hosts");
        std::fs::remove_file(&hosts).unwrap();
        nix_mkfifo(&hosts);
        nix_mkfifo(&t.live("/tmp/fifo"));
        // A sparse file of 64 GiB in place of a program, and in an area.
        for p in ["/bin/kubelet", "/tmp/sparse"] {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(t.live(p))
                .unwrap();
            f.set_len(64 << 30).unwrap();
        }
        // Symlink loops and links to /proc/kcore.
        std::os::unix::fs::symlink("loop-b", t.live("/tmp/loop-a")).unwrap();
        std::os::unix::fs::symlink("loop-a", t.live("/tmp/loop-b")).unwrap();
        std::os::unix::fs::symlink("/proc/kcore", t.live("/tmp/kcore")).unwrap();
        std::os::unix::fs::symlink("/proc/kcore", t.live("/bin/kcore")).unwrap();
        // A tree deeper than PATH_MAX (4096 bytes) in an area.
        make_deep_tree(&t.live("/tmp"), &"d".repeat(200), 40);
        let started = Instant::now();
        let r = check(&t, &reference(&t));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "verify took {took:?}");
        expect(&r, "/etc/hosts", Problem::Kind);
        expect(&r, "/bin/kubelet", Problem::Modified);
        expect(&r, "/bin/kcore", Problem::Unexpected);
        let deep_note = r
            .findings
            .iter()
            .any(|f| f.path.starts_with("/tmp/ddd") && f.problem == Problem::Unexpected);
        assert!(
            deep_note,
            "the deep tree is not silently skipped: {:#?}",
            r.findings
        );
        eprintln!("hostile tree verified in {took:?}");
    }

    /// `levels` nested directories below `top`, made relative to an open
    /// directory so that the whole path may exceed PATH_MAX.
    fn make_deep_tree(top: &std::path::Path, name: &str, levels: usize) {
        use nix::fcntl::{open, openat, OFlag};
        use nix::sys::stat::{mkdirat, Mode};
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
        let mut dir = open(top, flags, Mode::empty()).unwrap();
        for _ in 0..levels {
            mkdirat(&dir, name, Mode::from_bits_truncate(0o755)).unwrap();
            dir = openat(&dir, name, flags, Mode::empty()).unwrap();
        }
    }

    fn nix_mkfifo(path: &std::path::Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    }
}
