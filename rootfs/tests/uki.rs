//! The unified kernel image and the disk image from a (fake-input) build:
//! byte-identical across builds, os-release and the command line in the
//! image and in the executable's sections, BUILD_ID following the content.

mod common;

use common::{by_name, fake_inputs, read_newc, TempDir};
use kios_rootfs::build::{self, Compression, Release};
use kios_rootfs::disk::{self, DiskOptions};
use kios_rootfs::uki;

fn section<'a>(image: &'a [u8], name: &str) -> &'a [u8] {
    uki::section_data(image, name).unwrap_or_else(|| panic!("no {name} section"))
}

fn fake_kernel(dir: &TempDir) -> std::path::PathBuf {
    let kernel = dir.join("vmlinuz");
    let mut bytes = b"MZ".to_vec();
    bytes.extend((0..50_000u32).map(|i| (i * 7) as u8));
    std::fs::write(&kernel, bytes).unwrap();
    kernel
}

#[test]
fn uki_and_disk_are_reproducible_and_carry_os_release_and_cmdline() {
    let dir = TempDir::new("uki");
    let mut opts = fake_inputs(dir.path());
    opts.release.version = "1.2.3".into();
    opts.cmdline = "console=ttyS0 panic=-1".into();
    let kernel = fake_kernel(&dir);
    let stub = std::path::Path::new(uki::DEFAULT_STUB);
    let build = |name: &str| {
        let efi = dir.join(&format!("{name}.efi"));
        uki::build_uki(&opts, Compression::Zstd, stub, &kernel, &efi).unwrap();
        let mut d = DiskOptions::new(&efi, dir.join(&format!("{name}.img")));
        d.size_mib = 96;
        disk::build_disk(&d).unwrap();
        (
            std::fs::read(&efi).unwrap(),
            std::fs::read(dir.join(&format!("{name}.img"))).unwrap(),
        )
    };
    let (efi_a, img_a) = build("a");
    // Touch an input: content, not timestamps, decides the output.
    let crio = opts.inputs_dir.join("crio");
    std::fs::write(&crio, std::fs::read(&crio).unwrap()).unwrap();
    let (efi_b, img_b) = build("b");
    assert!(efi_a == efi_b, "two unified kernel images differ");
    assert!(img_a == img_b, "two disk images differ");

    let osrel = String::from_utf8(section(&efi_a, ".osrel").to_vec()).unwrap();
    assert!(osrel.contains("VERSION_ID=\"1.2.3\"\n"), "{osrel}");
    let build_id = osrel
        .lines()
        .find_map(|l| l.strip_prefix("BUILD_ID=\""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_owned();
    assert_eq!(build_id.len(), 16, "{osrel}");
    assert_eq!(section(&efi_a, ".cmdline"), b"console=ttyS0 panic=-1\0");
    assert_eq!(section(&efi_a, ".linux"), std::fs::read(&kernel).unwrap());

    // The initramfs section is the image: the same os-release, the
    // command line at /lib/kios/cmdline, both in the inventory.
    let mut cpio = Vec::new();
    zstd::stream::copy_decode(section(&efi_a, ".initrd"), &mut cpio).unwrap();
    let entries = by_name(&read_newc(&cpio));
    assert_eq!(entries["etc/os-release"].data, osrel.as_bytes());
    assert_eq!(
        entries["lib/kios/cmdline"].data,
        b"console=ttyS0 panic=-1\n"
    );
    let plan = build::plan(&opts).unwrap();
    for path in ["/etc/os-release", "/lib/kios/cmdline"] {
        let e = plan
            .inventory
            .entries
            .iter()
            .find(|e| e.path == path)
            .unwrap();
        assert!(e.sha256.is_some() && !e.why.is_empty(), "{path}: {e:?}");
    }

    // Other content: another BUILD_ID; a given BUILD_ID is used as is.
    std::fs::write(&crio, b"another crio\n").unwrap();
    let other = build::plan(&opts).unwrap();
    let text = |p: &build::Plan| {
        p.items
            .iter()
            .find(|i| i.entry.path == "/etc/os-release")
            .and_then(|i| match &i.content {
                build::Content::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .unwrap()
    };
    assert!(!text(&other).contains(&build_id));
    opts.release = Release {
        version: "1.2.3".into(),
        build_id: Some("ci-42".into()),
    };
    assert!(text(&build::plan(&opts).unwrap()).contains("ci-42"));
    opts.release.build_id = Some("bad id\n".into());
    assert!(build::plan(&opts).is_err());
    opts.release.build_id = None;
    opts.cmdline = "two\nlines".into();
    assert!(build::plan(&opts).is_err());
}
