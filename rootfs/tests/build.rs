//! The image builder: missing inputs, reproducibility, the cpio contents read
//! back, the ELF closure and the loader rule, kernel modules, extra files.

mod common;

use common::{by_name, fake_inputs, read_newc, TempDir};
use kios_rootfs::build::{self, BuildError, Compression, ModulesOptions};
use kios_rootfs::{hash, Inventory, Kind, Presence, INVENTORY_PATH};
use std::io::Read;
use std::path::PathBuf;

#[test]
fn missing_inputs_are_listed_in_one_error() {
    let dir = TempDir::new("missing");
    let opts = fake_inputs(dir.path());
    for name in ["crio", "kubelet", "busybox"] {
        std::fs::remove_file(opts.inputs_dir.join(name)).unwrap();
    }
    let err = build::plan(&opts).unwrap_err();
    let BuildError::MissingInputs(list) = &err else {
        panic!("{err}")
    };
    assert_eq!(list.len(), 3, "{list:?}");
    let text = err.to_string();
    for name in [
        "'crio' for /bin/crio",
        "'kubelet' for /bin/kubelet",
        "'busybox' for /bin/busybox",
    ] {
        assert!(text.contains(name), "{text}");
    }
    // Nothing was written.
    assert!(!dir.join("out.cpio").exists());
}

#[test]
fn cpio_is_reproducible_in_every_compression() {
    let dir = TempDir::new("repro");
    let opts = fake_inputs(dir.path());
    for (c, name) in [
        (Compression::None, "none"),
        (Compression::Gzip, "gz"),
        (Compression::Zstd, "zst"),
    ] {
        let a = dir.join(&format!("a.{name}"));
        let b = dir.join(&format!("b.{name}"));
        build::build_cpio(&opts, &a, c).unwrap();
        // Touch an input's mtime: content, not timestamps, decides the output.
        let crio = opts.inputs_dir.join("crio");
        std::fs::write(&crio, std::fs::read(&crio).unwrap()).unwrap();
        build::build_cpio(&opts, &b, c).unwrap();
        let (a, b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(!a.is_empty());
        assert!(a == b, "{name} output differs between two builds");
    }
    // And a different input changes it.
    let c1 = std::fs::read(dir.join("a.none")).unwrap();
    std::fs::write(opts.inputs_dir.join("crio"), b"another crio\n").unwrap();
    build::build_cpio(&opts, &dir.join("c.none"), Compression::None).unwrap();
    assert_ne!(c1, std::fs::read(dir.join("c.none")).unwrap());
}

#[test]
fn cpio_contents_read_back() {
    let dir = TempDir::new("readback");
    let opts = fake_inputs(dir.path());
    let out = dir.join("img.cpio");
    let inv = build::build_cpio(&opts, &out, Compression::None).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let entries = read_newc(&bytes);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries are sorted");
    assert_eq!(names[0], ".");
    let m = by_name(&entries);

    let crio = &m["bin/crio"];
    assert_eq!(crio.data, b"fake crio\n");
    assert_eq!(crio.mode, 0o100500);
    assert_eq!((crio.uid, crio.gid, crio.mtime), (0, 0, 0));
    assert_eq!(m["bin"].mode, 0o040500);
    assert_eq!(m["."].mode, 0o040555);
    assert_eq!(m["etc/kubernetes/config.yaml"].mode, 0o100400);
    assert_eq!(m["sbin"].mode, 0o120777);
    assert_eq!(m["sbin"].data, b"bin");
    assert_eq!(m["lib64"].data, b"lib");
    assert_eq!(m["bin/poweroff"].data, b"kiosctl");
    assert_eq!(m["dev/console"].mode, 0o020600);
    assert_eq!(m["dev/console"].rdev, (5, 1));
    assert_eq!(m["init"].data, b"fake kios-init\n");
    // No glibc input: the musl compatibility link stays.
    assert_eq!(m["lib/ld-linux-x86-64.so.2"].data, b"libc.so");
    // busybox and its four names share one inode; the data travels once, with the last.
    let group = [
        "bin/busybox",
        "bin/modprobe",
        "bin/mount",
        "bin/nsenter",
        "bin/umount",
    ];
    let ino = m["bin/busybox"].ino;
    for (i, n) in group.iter().enumerate() {
        assert_eq!(m[*n].ino, ino, "{n}");
        assert_eq!(m[*n].nlink, 5, "{n}");
        let expect: &[u8] = if i == group.len() - 1 {
            b"fake busybox\n"
        } else {
            b""
        };
        assert_eq!(m[*n].data, expect, "{n}");
    }
    // Inode numbers are unique apart from hard links.
    let mut inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
    inos.sort();
    inos.dedup();
    assert_eq!(inos.len(), entries.len() - 4);
    // Runtime and not-built entries are not in the archive; everything else is.
    assert!(!m.contains_key("var/log/crio.log"));
    assert!(!m.contains_key("bin/xtables-legacy-multi"));
    assert!(!m.contains_key("etc/kios-e2e"));
    let in_image = inv.entries.iter().filter(|e| e.presence.in_image()).count();
    assert_eq!(entries.len(), in_image);
    // The archived inventory decodes to the returned one and lists itself.
    let archived = Inventory::decode(&m["lib/kios/inventory"].data).unwrap();
    assert_eq!(archived, inv);
    assert_eq!(archived.get(INVENTORY_PATH).unwrap().kind, Kind::File);
    let log = archived.get("/var/log/crio.log").unwrap();
    assert_eq!(log.presence, Presence::Runtime);
    assert!(log
        .notes
        .as_deref()
        .unwrap()
        .starts_with(build::RUNTIME_NOTE));
    // Optional entries this build did not produce are not listed at all.
    assert!(archived.get("/bin/iptables").is_none());
    assert!(archived.get("/etc/kios-e2e").is_none());
    // Sizes and hashes match the archived data.
    for e in archived
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File && e.presence.in_image())
    {
        let Some(sha) = e.sha256 else { continue };
        // A hard link group's data is on one of its members.
        let ino = m[&e.path[1..]].ino;
        let data = entries
            .iter()
            .filter(|x| x.ino == ino)
            .map(|x| &x.data)
            .max_by_key(|d| d.len())
            .unwrap();
        assert_eq!(e.size, Some(data.len() as u64), "{}", e.path);
        assert_eq!(sha, hash::sha256_bytes(data), "{}", e.path);
    }
}

#[test]
fn gnu_cpio_lists_and_extracts_the_archive() {
    let dir = TempDir::new("gnucpio");
    let opts = fake_inputs(dir.path());
    let out = dir.join("img.cpio");
    build::build_cpio(&opts, &out, Compression::None).unwrap();
    let ours: Vec<String> = read_newc(&std::fs::read(&out).unwrap())
        .into_iter()
        .map(|e| e.name)
        .collect();
    let listed = std::process::Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(std::fs::File::open(&out).unwrap())
        .output()
        .expect("cpio is installed (scripts/deps)");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let theirs: Vec<String> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(theirs, ours);
    let x = dir.join("x");
    std::fs::create_dir(&x).unwrap();
    let ex = std::process::Command::new("cpio")
        .args([
            "-i",
            "--quiet",
            "--make-directories",
            "--no-absolute-filenames",
            "--nonmatching",
            "dev/console",
        ])
        .current_dir(&x)
        .stdin(std::fs::File::open(&out).unwrap())
        .output()
        .unwrap();
    assert!(
        ex.status.success(),
        "{}",
        String::from_utf8_lossy(&ex.stderr)
    );
    assert_eq!(
        std::fs::read(x.join("bin/mount")).unwrap(),
        b"fake busybox\n"
    );
    assert_eq!(
        std::fs::read(x.join("etc/hosts")).unwrap(),
        std::fs::read(
            build::default_spec()
                .parent()
                .unwrap()
                .join("../files/etc/hosts")
        )
        .unwrap()
    );
    // Let TempDir remove the tight-mode tree.
    make_writable(&x);
}

fn make_writable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_dir() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            make_writable(&entry.path());
        }
    }
}

#[test]
fn compressed_archives_decompress_to_the_plain_one() {
    let dir = TempDir::new("compress");
    let opts = fake_inputs(dir.path());
    build::build_cpio(&opts, &dir.join("a.none"), Compression::None).unwrap();
    build::build_cpio(&opts, &dir.join("a.gz"), Compression::Gzip).unwrap();
    build::build_cpio(&opts, &dir.join("a.zst"), Compression::Zstd).unwrap();
    let plain = std::fs::read(dir.join("a.none")).unwrap();
    let mut gz = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(dir.join("a.gz")).unwrap())
        .read_to_end(&mut gz)
        .unwrap();
    assert!(gz == plain);
    let zst = zstd::decode_all(std::fs::File::open(dir.join("a.zst")).unwrap()).unwrap();
    assert!(zst == plain);
}

#[test]
fn optional_inputs_bring_their_links() {
    let dir = TempDir::new("optional");
    let mut opts = fake_inputs(dir.path());
    let xt = dir.join("xt");
    std::fs::write(&xt, b"fake xtables\n").unwrap();
    opts.inputs.insert("xtables-legacy-multi".to_string(), xt);
    let plan = build::plan(&opts).unwrap();
    for p in [
        "/bin/xtables-legacy-multi",
        "/bin/iptables",
        "/bin/ip6tables",
        "/bin/iptables-restore",
        "/bin/ip6tables-restore",
    ] {
        assert_eq!(
            plan.inventory.get(p).unwrap().presence,
            Presence::Image,
            "{p}"
        );
    }
    assert_eq!(
        plan.inventory.get("/bin/iptables").unwrap().sha256,
        Some(hash::sha256_bytes(b"fake xtables\n"))
    );
}

#[test]
fn extra_files_land_in_their_directory() {
    let dir = TempDir::new("extra");
    let mut opts = fake_inputs(dir.path());
    let conf = dir.join("kubelet.conf");
    std::fs::write(&conf, b"grace=5\n").unwrap();
    opts.extra_files.push((
        conf.clone(),
        "/etc/kios-e2e/kubelet.conf".to_string(),
        0o444,
    ));
    let plan = build::plan(&opts).unwrap();
    let e = plan.inventory.get("/etc/kios-e2e/kubelet.conf").unwrap();
    assert_eq!((e.kind, e.mode, e.size), (Kind::File, 0o444, Some(8)));
    assert_eq!(e.component, "Test configuration");
    assert_eq!(
        plan.inventory.get("/etc/kios-e2e").unwrap().presence,
        Presence::Image
    );

    // An extra file may not replace a spec entry or invent a directory.
    let mut clash = fake_inputs(dir.path());
    clash
        .extra_files
        .push((conf.clone(), "/etc/hosts".to_string(), 0o444));
    let err = build::plan(&clash).unwrap_err().to_string();
    assert!(
        err.starts_with("extra file /etc/hosts: already in the spec"),
        "{err}"
    );
    let mut nodir = fake_inputs(dir.path());
    nodir
        .extra_files
        .push((conf, "/srv/x.conf".to_string(), 0o444));
    let err = build::plan(&nodir).unwrap_err().to_string();
    assert!(
        err.contains("its directory /srv is not a directory of the spec"),
        "{err}"
    );
}

#[test]
fn elf_closure_of_real_glibc_programs_and_the_loader_rule() {
    let dir = TempDir::new("elf");
    let mut opts = fake_inputs(dir.path());
    // Debian's crun and conmon when installed; /bin/ls (always there) stands in otherwise.
    let crun = ["/usr/bin/crun", "/bin/ls"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap();
    let conmon = ["/usr/bin/conmon", "/bin/ls"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap();
    opts.inputs.insert("crun".to_string(), crun.clone());
    opts.inputs.insert("conmon".to_string(), conmon);
    let plan = build::plan(&opts).unwrap();
    let inv = &plan.inventory;
    let libc = inv.get("/lib/libc.so.6").expect("glibc is in the closure");
    assert_eq!(libc.component, build::LIBRARIES_COMPONENT);
    assert!(
        libc.why.contains("needed by") && libc.why.contains("/bin/crun"),
        "{}",
        libc.why
    );
    assert!(libc.used_by.contains(&"/bin/crun".to_string()));
    assert_eq!(libc.mode, 0o444);
    assert!(libc.sha256.is_some());
    if crun.ends_with("crun") {
        let seccomp = inv
            .get("/lib/libseccomp.so.2")
            .expect("crun needs libseccomp");
        assert!(seccomp.why.contains("/bin/crun"), "{}", seccomp.why);
    }
    // The loader rule: glibc's real loader replaces the musl link.
    let loader = inv.get("/lib/ld-linux-x86-64.so.2").unwrap();
    assert_eq!(loader.kind, Kind::File);
    assert_eq!(loader.mode, 0o500);
    assert!(
        loader
            .notes
            .as_deref()
            .unwrap_or("")
            .starts_with("Loader rule"),
        "{loader:?}"
    );
    let host_loader = std::fs::canonicalize("/lib64/ld-linux-x86-64.so.2").unwrap();
    assert_eq!(
        loader.sha256,
        Some(hash::sha256_file(&host_loader).unwrap().0)
    );
    // musl's own names are untouched.
    assert_eq!(
        inv.get("/lib/ld-musl-x86_64.so.1").unwrap().kind,
        Kind::Symlink
    );
    assert_eq!(inv.get("/lib/libc.so").unwrap().kind, Kind::File);
}

#[test]
fn dynamic_programs_run_in_the_built_tree() {
    let dir = TempDir::new("run");
    let mut opts = fake_inputs(dir.path());
    let Some(conmon) = ["/usr/bin/conmon"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        // /bin/ls as a stand-in dynamic program.
        return run_in_tree(opts, "/bin/ls", dir);
    };
    opts.inputs.insert("conmon".to_string(), conmon);
    run_in_tree(opts, "/usr/bin/conmon", dir)
}

fn run_in_tree(mut opts: build::BuildOptions, program: &str, dir: TempDir) {
    opts.inputs
        .insert("conmon".to_string(), PathBuf::from(program));
    let tree = dir.join("tree");
    build::build_tree(&opts, &tree).unwrap();
    let out = std::process::Command::new("chroot")
        .arg(&tree)
        .args(["/bin/conmon", "--version"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty());
    make_writable(&tree);
}

#[test]
fn kernel_modules_with_their_dependencies() {
    let dir = TempDir::new("kmod");
    let root = dir.join("lib/modules/6.1.0-test");
    for (rel, data) in [
        ("kernel/fs/ext4/ext4.ko", "ext4"),
        ("kernel/fs/jbd2/jbd2.ko", "jbd2"),
        ("kernel/lib/crc16.ko", "crc16"),
        ("kernel/fs/fat/fat.ko", "fat"),
    ] {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    std::fs::write(
        root.join("modules.dep"),
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2/jbd2.ko\nkernel/fs/jbd2/jbd2.ko:\nkernel/lib/crc16.ko:\nkernel/fs/fat/fat.ko:\n",
    )
    .unwrap();
    let mut opts = fake_inputs(dir.path());
    opts.modules = Some(ModulesOptions {
        modules_root: root,
        version: "6.1.0-test".to_string(),
        names: vec!["ext4".to_string()],
    });
    let out = dir.join("img.cpio");
    let inv = build::build_cpio(&opts, &out, Compression::None).unwrap();
    let m = by_name(&read_newc(&std::fs::read(&out).unwrap()));
    assert_eq!(m["etc/kios/modules"].data, b"ext4\n");
    assert_eq!(
        m["lib/modules/6.1.0-test/kernel/fs/ext4/ext4.ko"].data,
        b"ext4"
    );
    assert_eq!(
        m["lib/modules/6.1.0-test/kernel/lib/crc16.ko"].data,
        b"crc16"
    );
    assert!(!m.contains_key("lib/modules/6.1.0-test/kernel/fs/fat/fat.ko"));
    let dep = String::from_utf8(m["lib/modules/6.1.0-test/modules.dep"].data.clone()).unwrap();
    assert_eq!(dep, "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2/jbd2.ko\nkernel/fs/jbd2/jbd2.ko:\nkernel/lib/crc16.ko:\n");
    let jbd2 = inv
        .get("/lib/modules/6.1.0-test/kernel/fs/jbd2/jbd2.ko")
        .unwrap();
    assert!(jbd2.why.contains("needed by ext4"), "{}", jbd2.why);
    assert_eq!(
        inv.get("/etc/kios/modules").unwrap().presence,
        Presence::Image
    );
    assert_eq!(
        inv.get("/lib/modules/6.1.0-test/kernel").unwrap().kind,
        Kind::Dir
    );

    let mut bad = fake_inputs(dir.path());
    bad.modules = Some(ModulesOptions {
        modules_root: dir.join("lib/modules/6.1.0-test"),
        version: "6.1.0-test".into(),
        names: vec!["nosuch".into(), "ext4".into(), "gone".into()],
    });
    let err = build::plan(&bad).unwrap_err().to_string();
    assert!(err.contains("nosuch, gone"), "{err}");
}

#[test]
fn an_image_listing_ext4_carries_crc32c_from_softdeps_and_aliases() {
    // Debian 6.1's real module index (an excerpt) with a stand-in file for
    // every module it lists.
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/debian-6.1.0-57");
    let dir = TempDir::new("kmod-debian");
    let root = dir.join("lib/modules/6.1.0-57-amd64");
    std::fs::create_dir_all(&root).unwrap();
    for f in [
        "modules.dep",
        "modules.softdep",
        "modules.alias",
        "modules.builtin",
    ] {
        std::fs::copy(fixtures.join(f), root.join(f)).unwrap();
    }
    let dep = std::fs::read_to_string(root.join("modules.dep")).unwrap();
    for rel in dep.lines().filter_map(|l| l.split(':').next()) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, rel).unwrap();
    }
    let mut opts = fake_inputs(dir.path());
    opts.modules = Some(ModulesOptions {
        modules_root: root,
        version: "6.1.0-57-amd64".to_string(),
        names: std::fs::read_to_string(fixtures.join("kios-modules"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect(),
    });
    let out = dir.join("img.cpio");
    let inv = build::build_cpio(&opts, &out, Compression::None).unwrap();
    let m = by_name(&read_newc(&std::fs::read(&out).unwrap()));
    let base = "lib/modules/6.1.0-57-amd64";
    for crc in [
        "kernel/crypto/crc32c_generic.ko",
        "kernel/arch/x86/crypto/crc32c-intel.ko",
    ] {
        assert!(m.contains_key(&format!("{base}/{crc}")), "{crc} missing");
        let why = &inv.get(&format!("/{base}/{crc}")).unwrap().why;
        assert!(why.contains("soft dependency of ext4, jbd2"), "{why}");
    }
    assert!(!m.contains_key(&format!("{base}/kernel/lib/libcrc32c.ko")));
    let text = |f: &str| String::from_utf8(m[&format!("{base}/{f}")].data.clone()).unwrap();
    assert!(text("modules.softdep").contains("softdep ext4 pre: crypto-crc32c\n"));
    assert!(text("modules.alias").contains("alias crypto-crc32c crc32c_generic\n"));
    assert!(text("modules.dep").contains("kernel/crypto/crc32c_generic.ko:\n"));
    assert_eq!(
        text("modules.builtin"),
        "",
        "none of these modules reaches a built-in"
    );
}

#[test]
fn a_tree_is_never_written_over_existing_files() {
    let dir = TempDir::new("nonempty");
    let opts = fake_inputs(dir.path());
    let dest = dir.join("tree");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep"), b"mine").unwrap();
    let err = build::build_tree(&opts, &dest).unwrap_err();
    assert!(matches!(err, BuildError::DestNotEmpty(_)), "{err}");
    assert_eq!(std::fs::read(dest.join("keep")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 1);
}
