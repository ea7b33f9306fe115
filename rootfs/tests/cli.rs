//! The `rootfs` binary: exit codes, stdout and stderr together.

mod common;

use common::{fake_inputs, TempDir};
use std::process::{Command, Output};

fn rootfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rootfs"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_accepts_the_real_spec() {
    let out = rootfs(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with("components: ok\n"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_names_file_line_and_field_of_a_bad_spec() {
    let dir = TempDir::new("cli-check");
    let spec = dir.join("bad.toml");
    std::fs::write(&spec, "[[section]]\nname = \"S\"\nabout = \"a\"\n\n[[component]]\nname = \"C\"\nsection = \"T\"\nabout = \"b\"\n").unwrap();
    let out = rootfs(&["check", "--spec", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert_eq!(
        err,
        format!(
            "rootfs: {}:7: field 'section': unknown section 'T'\n",
            spec.display()
        )
    );
}

#[test]
fn build_lists_every_missing_input_and_writes_nothing() {
    let dir = TempDir::new("cli-missing");
    let empty = dir.join("inputs");
    std::fs::create_dir(&empty).unwrap();
    let out_path = dir.join("img.cpio");
    let out = rootfs(&[
        "build",
        "--inputs",
        empty.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("rootfs: missing inputs:\n"), "{err}");
    for name in [
        "kios-init",
        "busybox",
        "conmon",
        "crio",
        "crun",
        "kubelet",
        "pinns",
        "kiosctl",
    ] {
        assert!(
            err.contains(&format!("input '{name}' for ")),
            "{name}: {err}"
        );
    }
    assert!(!out_path.exists());
}

#[test]
fn usage_errors_exit_2() {
    let out = rootfs(&["build"]);
    assert_eq!(out.status.code(), Some(2));
    let out = rootfs(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    // A disk image is made from a unified kernel image.
    let out = rootfs(&[
        "build", "--inputs", "/x", "--out", "/x.cpio", "--disk", "/x.img",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn build_uki_and_disk() {
    let dir = TempDir::new("cli-uki");
    let opts = fake_inputs(dir.path());
    let inputs = opts.inputs_dir.to_str().unwrap();
    let (efi, img) = (dir.join("kios.efi"), dir.join("kios.img"));
    let (efi, img) = (efi.to_str().unwrap(), img.to_str().unwrap());
    // No kernel: a clear error, nothing written.
    let out = rootfs(&["build", "--inputs", inputs, "--uki", efi]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--uki needs --kernel"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.join("kios.efi").exists());
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"MZ a kernel").unwrap();
    let out = rootfs(&[
        "build",
        "--inputs",
        inputs,
        "--kernel",
        kernel.to_str().unwrap(),
        "--image-version",
        "9.9",
        "--build-id",
        "cli-1",
        "--uki",
        efi,
        "--disk",
        img,
        "--disk-size-mib",
        "96",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("ESP 64 MiB, data partition 30 MiB"),
        "{stderr}"
    );
    let image = std::fs::read(efi).unwrap();
    let osrel = b"VERSION_ID=\"9.9\"\nBUILD_ID=\"cli-1\"\n";
    assert!(image.windows(osrel.len()).any(|w| w == osrel));
    assert_eq!(std::fs::metadata(img).unwrap().len(), 96 << 20);
}

#[test]
fn build_tree_then_verify_and_inventory() {
    let dir = TempDir::new("cli-tree");
    let opts = fake_inputs(dir.path());
    let tree = dir.join("tree");
    let extra = dir.join("x.conf");
    std::fs::write(&extra, "a=b\n").unwrap();
    let out = rootfs(&[
        "build",
        "--inputs",
        opts.inputs_dir.to_str().unwrap(),
        "--extra",
        &format!("{}:/etc/kios-e2e/x.conf:0444", extra.display()),
        "--tree",
        tree.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("paths in the image"));

    let out = rootfs(&["verify", "--root", tree.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    std::fs::write(tree.join("bin/extra"), b"x").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            tree.join("bin/extra"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    let out = rootfs(&["verify", "--root", tree.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        "unexpected\t/bin/extra\tfile, mode 0644, owner 0:0, 1 bytes\n"
    );

    let out = rootfs(&[
        "inventory",
        tree.join("lib/kios/inventory").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let listing = text(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("0444 0:0 file image /etc/kios-e2e/x.conf sha256:")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l == "0777 0:0 symlink image /sbin -> bin"),
        "{listing}"
    );

    // Let the temp dir go despite the tight modes.
    open_up(&tree);
}

fn open_up(p: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if std::fs::symlink_metadata(e.path()).unwrap().is_dir() {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            open_up(&e.path());
        }
    }
}

#[test]
fn docs_to_stdout_matches_the_library() {
    let out = rootfs(&["docs"]);
    assert_eq!(out.status.code(), Some(0));
    let spec = kios_rootfs::spec::load(&kios_rootfs::build::default_spec()).unwrap();
    assert_eq!(text(&out.stdout), kios_rootfs::docs::render(&spec));
}
