//! Helpers shared by the rootfs integration tests: temporary directories,
//! fake input binaries, a newc cpio reader.

#![allow(dead_code)]

use kios_rootfs::build::BuildOptions;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory removed (after making it writable) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "kios-rootfs-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every required input, as small non-ELF files with distinct content.
pub const INPUTS: &[&str] = &[
    "crio",
    "kubelet",
    "conmon",
    "crun",
    "pinns",
    "busybox",
    "kios-init",
    "kiosctl",
];

/// Writes fake inputs (plus musl libc and a CA bundle, so the build does not
/// depend on the host) and returns build options using them.
pub fn fake_inputs(dir: &Path) -> BuildOptions {
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    for name in INPUTS {
        std::fs::write(inputs.join(name), format!("fake {name}\n")).unwrap();
    }
    std::fs::write(inputs.join("musl-libc.so"), b"fake musl libc\n").unwrap();
    std::fs::write(inputs.join("ca-bundle.pem"), b"fake ca bundle\n").unwrap();
    BuildOptions::new(inputs)
}

/// One record of a newc archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// A small newc reader: every record up to the trailer, strictly checked.
pub fn read_newc(bytes: &[u8]) -> Vec<CpioEntry> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let align = |p: usize| (p + 3) & !3;
    loop {
        let h = &bytes[pos..pos + 110];
        assert_eq!(&h[..6], b"070701", "bad magic at {pos}");
        let field = |i: usize| {
            let s = std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap();
            u32::from_str_radix(s, 16).unwrap()
        };
        let namesize = field(11) as usize;
        let filesize = field(6) as usize;
        let name_start = pos + 110;
        let name = &bytes[name_start..name_start + namesize];
        assert_eq!(name.last(), Some(&0), "name not NUL-terminated");
        let name = String::from_utf8(name[..namesize - 1].to_vec()).unwrap();
        let data_start = align(name_start + namesize);
        let data = bytes[data_start..data_start + filesize].to_vec();
        pos = align(data_start + filesize);
        if name == "TRAILER!!!" {
            assert_eq!(pos, bytes.len(), "bytes after the trailer");
            return out;
        }
        out.push(CpioEntry {
            name,
            ino: field(0),
            mode: field(1),
            uid: field(2),
            gid: field(3),
            nlink: field(4),
            mtime: field(5),
            rdev: (field(9), field(10)),
            data,
        });
    }
}

pub fn by_name(entries: &[CpioEntry]) -> BTreeMap<String, CpioEntry> {
    entries
        .iter()
        .map(|e| (e.name.clone(), e.clone()))
        .collect()
}
