//! Spec parsing: the real spec is valid, and every kind of error names the
//! file, the line and the field.

use kios_rootfs::spec::{self, SpecError};
use kios_rootfs::Kind;
use std::path::Path;

const HEAD: &str = r#"
[[section]]
name = "S"
about = "a section"

[[component]]
name = "C"
section = "S"
about = "a component"

[[entry]]
path = "/"
kind = "dir"
mode = "0555"
component = "C"
why = "root"
"#;

fn errors(extra: &str) -> Vec<SpecError> {
    let text = format!("{HEAD}{extra}");
    spec::parse(Path::new("t.toml"), &text).expect_err("spec should be rejected")
}

/// Asserts one error at `line` (counted in `extra`, 1-based) about `field`
/// whose message contains `needle`.
fn check(extra: &str, line_in_extra: usize, field: &str, needle: &str) {
    let errs = errors(extra);
    let head_lines = HEAD.lines().count();
    let e = errs
        .iter()
        .find(|e| e.field == field)
        .unwrap_or_else(|| panic!("no error on field '{field}': {errs:?}"));
    assert_eq!(e.file, Path::new("t.toml"));
    assert_eq!(e.line, head_lines + line_in_extra, "{e}");
    assert!(
        e.message.contains(needle),
        "'{}' lacks '{needle}'",
        e.message
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("t.toml:{}: field '{field}': ", e.line)),
        "{shown}"
    );
}

#[test]
fn the_real_spec_is_valid_and_complete() {
    let s = spec::load(&kios_rootfs::build::default_spec()).unwrap();
    for path in [
        "/init",
        "/bin/busybox",
        "/bin/modprobe",
        "/bin/mount",
        "/bin/umount",
        "/bin/nsenter",
        "/bin/conmon",
        "/bin/crio",
        "/bin/crun",
        "/bin/pinns",
        "/bin/kubelet",
        "/bin/kiosctl",
        "/bin/poweroff",
        "/bin/reboot",
        "/bin/xtables-legacy-multi",
        "/bin/iptables",
        "/sbin",
        "/lib64",
        "/lib/libc.so",
        "/lib/ld-musl-x86_64.so.1",
        "/lib/ld-linux-x86-64.so.2",
        "/etc/hosts",
        "/etc/os-release",
        "/etc/resolv.conf",
        "/etc/passwd",
        "/etc/group",
        "/etc/seccomp/audit",
        "/etc/ssl/ca-bundle.pem",
        "/etc/containers/policy.json",
        "/etc/containers/registries.conf",
        "/etc/crio/crio.conf",
        "/etc/kubernetes/config.yaml",
        "/etc/kubernetes/node-labels",
        "/etc/kubernetes/manifests",
        "/etc/kubernetes/pki",
        "/etc/kios/modules",
        "/lib/kios/inventory",
        "/etc/kios-e2e",
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/tmp",
        "/var/run",
        "/var/cache",
        "/var/tmp",
        "/var/lib/kubelet",
        "/var/log",
        "/var/lib/containers/storage",
        "/var/lib/kubelet/pods",
        "/var/meta",
        "/lib/modules",
        "/etc",
    ] {
        assert!(s.entry(path).is_some(), "{path} is not in the spec");
    }
    let init = s.entry("/init").unwrap();
    assert!(init.removed_at_boot);
    assert_eq!(s.entry("/bin/modprobe").unwrap().kind, Kind::Hardlink);
    assert!(s.entry("/lib/ld-linux-x86-64.so.2").unwrap().replaceable);
    for e in &s.entries {
        assert_eq!((e.uid, e.gid), (0, 0), "{}", e.path);
        assert!(!e.why.is_empty());
    }
}

#[test]
fn the_kubelet_config_has_the_graceful_shutdown_periods() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("files/etc/kubernetes/config.yaml"),
    )
    .unwrap();
    for line in [
        "kind: KubeletConfiguration",
        "shutdownGracePeriod: 30s",
        "shutdownGracePeriodCriticalPods: 10s",
        "cgroupDriver: cgroupfs",
        "containerRuntimeEndpoint: unix:///var/run/crio/crio.sock",
    ] {
        assert!(text.lines().any(|l| l.trim() == line), "missing '{line}'");
    }
}

#[test]
fn a_good_minimal_spec_parses() {
    let text = format!(
        "{HEAD}\n[[entry]]\npath = \"/bin\"\nkind = \"dir\"\nmode = \"0500\"\ncomponent = \"C\"\nwhy = \"bins\"\n\n\
[[entry]]\npath = \"/bin/x\"\nkind = \"file\"\nmode = \"0500\"\nowner = \"0:0\"\nsource = \"input:x\"\ncomponent = \"C\"\nwhy = \"x\"\nused_by = [\"y\"]\n"
    );
    let s = spec::parse(Path::new("t.toml"), &text).unwrap();
    assert_eq!(s.entries.len(), 3);
    assert_eq!(s.entries[2].mode, 0o500);
    assert_eq!(s.entries[2].line, HEAD.lines().count() + 9);
}

#[test]
fn syntax_error_names_the_line() {
    let errs = errors("\n[[entry]]\npath = \"/x\n");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, HEAD.lines().count() + 3, "{}", errs[0]);
}

const E: &str = "\n[[entry]]\npath = \"/x\"\nkind = \"file\"\nmode = \"0444\"\nsource = \"files:x\"\ncomponent = \"C\"\nwhy = \"x\"\n";

#[test]
fn missing_field_is_named() {
    let errs = errors(&E.replace("why = \"x\"\n", ""));
    assert_eq!(errs[0].field, "why", "{errs:?}");
    assert_eq!(errs[0].line, HEAD.lines().count() + 2, "{}", errs[0]);
}

#[test]
fn unknown_field_is_named() {
    check(
        &format!("{E}colour = \"red\"\n"),
        9,
        "colour",
        "unknown field",
    );
}

#[test]
fn bad_kind() {
    check(
        &E.replace("kind = \"file\"", "kind = \"pipe\""),
        4,
        "kind",
        "unknown kind 'pipe'",
    );
}

#[test]
fn bad_mode() {
    check(&E.replace("0444", "0948"), 5, "mode", "not an octal mode");
}

#[test]
fn bad_owner() {
    check(&format!("{E}owner = \"root\"\n"), 9, "owner", "uid:gid");
}

#[test]
fn bad_source_scheme() {
    check(
        &E.replace("files:x", "ftp:x"),
        6,
        "source",
        "unknown source scheme",
    );
}

#[test]
fn file_without_source() {
    check(
        &E.replace("source = \"files:x\"\n", ""),
        3,
        "source",
        "needs a source",
    );
}

#[test]
fn unknown_component() {
    check(
        &E.replace("component = \"C\"", "component = \"Nope\""),
        7,
        "component",
        "unknown component 'Nope'",
    );
}

#[test]
fn empty_why() {
    check(
        &E.replace("why = \"x\"", "why = \"  \""),
        8,
        "why",
        "must not be empty",
    );
}

#[test]
fn duplicate_path_names_the_first_line() {
    let head = HEAD.lines().count();
    check(
        &format!("{E}{E}"),
        11,
        "path",
        &format!("already listed at line {}", head + 2),
    );
}

#[test]
fn missing_parent_directory() {
    check(&E.replace("/x", "/a/x"), 3, "path", "parent directory '/a'");
}

#[test]
fn relative_or_unnormalized_path() {
    check(&E.replace("\"/x\"", "\"x\""), 3, "path", "not absolute");
    check(
        &E.replace("\"/x\"", "\"/a/../x\""),
        3,
        "path",
        "not normalized",
    );
}

#[test]
fn symlink_without_target() {
    let text = "\n[[entry]]\npath = \"/l\"\nkind = \"symlink\"\nmode = \"0777\"\ncomponent = \"C\"\nwhy = \"x\"\n";
    check(text, 3, "target", "needs a target");
}

#[test]
fn hardlink_to_a_non_file() {
    let text = "\n[[entry]]\npath = \"/h\"\nkind = \"hardlink\"\nmode = \"0555\"\ntarget = \"/\"\ncomponent = \"C\"\nwhy = \"x\"\n";
    check(text, 6, "target", "not a file listed in the spec");
}

#[test]
fn mount_without_contents() {
    let text = "\n[[entry]]\npath = \"/m\"\nkind = \"mount\"\nmode = \"0555\"\nmounted = \"tmpfs\"\ncomponent = \"C\"\nwhy = \"x\"\n";
    check(text, 3, "contents", "needs 'contents'");
}

#[test]
fn bad_contents() {
    let text = "\n[[entry]]\npath = \"/m\"\nkind = \"mount\"\nmode = \"0555\"\nmounted = \"tmpfs\"\ncontents = \"some\"\ncomponent = \"C\"\nwhy = \"x\"\n";
    check(text, 7, "contents", "unknown contents 'some'");
}

#[test]
fn bad_device() {
    let text = "\n[[entry]]\npath = \"/d\"\nkind = \"device\"\nmode = \"0600\"\ndevice = \"c five one\"\ncomponent = \"C\"\nwhy = \"x\"\n";
    check(text, 6, "device", "is not \"c MAJOR MINOR\"");
}

#[test]
fn removed_at_boot_only_on_files() {
    let text = "\n[[entry]]\npath = \"/d\"\nkind = \"dir\"\nmode = \"0500\"\nremoved_at_boot = true\ncomponent = \"C\"\nwhy = \"x\"\n";
    check(text, 6, "removed_at_boot", "only a file");
}

#[test]
fn all_errors_are_reported_at_once() {
    let bad = E
        .replace("0444", "9")
        .replace("component = \"C\"", "component = \"Nope\"");
    let errs = errors(&bad);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert!(
        fields.contains(&"mode") && fields.contains(&"component"),
        "{fields:?}"
    );
}

#[test]
fn load_error_names_the_file() {
    let err = spec::load(Path::new("/nonexistent/files.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("read spec /nonexistent/files.toml: "),
        "{err}"
    );
}

#[test]
fn hardlink_mode_must_match_its_file() {
    let text = format!(
        "{E}\n[[entry]]\npath = \"/h\"\nkind = \"hardlink\"\nmode = \"0500\"\ntarget = \"/x\"\ncomponent = \"C\"\nwhy = \"x\"\n"
    );
    check(&text, 13, "mode", "shares mode and owner with '/x'");
}
