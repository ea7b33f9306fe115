//! `files` and `verify`, answered from the file inventory init copied at
//! boot ([`capture_at_boot`], before any other process exists) into a
//! sealed memfd (~30 KiB, not in init's resident memory), with the mount
//! table of that moment:
//! a running node can rewrite /lib/kios/inventory, but not what verify
//! compares against. The live file differing from the boot copy is a
//! finding of its own (`kios_rootfs::reference`).
//!
//! `verify` hashes files, so the caller runs it on the blocking pool; init
//! keeps reaping and answering meanwhile.

use std::sync::OnceLock;

use kios_protocol::{
    ErrorBody, ErrorCode, FileInfo, FilesReply, Finding, Reply, Response, VerifyReply,
};
use kios_rootfs::{BootReference, Entry, ExpectedProcs, Inventory, NodePaths, VerifyOptions};

use crate::runtime::state::Paths;

/// The pids `verify` expects to see on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpectedPids {
    pub init: u32,
    pub crio: Option<u32>,
    pub kubelet: Option<u32>,
    /// The client asking (kiosctl), when it is in init's PID namespace.
    pub peer: Option<u32>,
}

/// What init read at boot. The inventory is kept in a sealed memfd: no
/// write, resize or unsealing is possible, even for root, and its pages
/// are not init's resident memory; the mount table (a few KiB) as bytes.
struct BootRecord {
    inventory: Result<std::fs::File, String>,
    mounts: Result<Vec<u8>, String>,
    /// sha256 and build id, worked out on first use.
    identity: OnceLock<Option<(String, String)>>,
}

static BOOT: OnceLock<BootRecord> = OnceLock::new();

fn mountinfo(paths: &Paths) -> std::path::PathBuf {
    paths.proc_root.join("self/mountinfo")
}

fn capture(paths: &Paths) -> Result<BootReference, String> {
    BootReference::capture(&paths.inventory, &mountinfo(paths)).map_err(|e| {
        format!(
            "cannot use the file inventory {}: {e}",
            paths.inventory.display()
        )
    })
}

/// Copies `path` (bounded) into a sealed memfd.
fn sealed_copy(path: &std::path::Path) -> Result<std::fs::File, String> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::io::Write;
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
    let limit = kios_rootfs::inventory::MAX_INVENTORY_BYTES;
    let bytes =
        kios_rootfs::reference::read_bounded(path, limit).map_err(|e| fail("cannot read", &e))?;
    let fd = memfd_create(
        c"kios-boot-inventory",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| fail("cannot copy (memfd)", &e))?;
    let mut copy = std::fs::File::from(fd);
    copy.write_all(&bytes)
        .map_err(|e| fail("cannot copy (memfd)", &e))?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(&copy, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| fail("cannot seal the copy of", &e))?;
    Ok(copy)
}

fn read_copy(copy: &std::fs::File) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let len = copy.metadata()?.len();
    let mut bytes = vec![0u8; usize::try_from(len).map_err(std::io::Error::other)?];
    copy.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// Copies the inventory and the mount table once, at the end of the boot
/// path, before cri-o or any other process is started. Decoding waits for
/// the first request (the copy cannot change meanwhile).
pub fn capture_at_boot(paths: &Paths) {
    let inventory =
        sealed_copy(&paths.inventory).map_err(|e| format!("cannot use the file inventory: {e}"));
    let table = mountinfo(paths);
    let mounts = kios_rootfs::reference::read_bounded(
        &table,
        kios_rootfs::mountinfo::MOUNTINFO_LIMIT as u64,
    )
    .map_err(|e| format!("cannot read {}: {e}", table.display()));
    for e in [inventory.as_ref().err(), mounts.as_ref().err()]
        .into_iter()
        .flatten()
    {
        crate::kerr!("{e}; verify will say so");
    }
    let _ = BOOT.set(BootRecord {
        inventory,
        mounts,
        identity: OnceLock::new(),
    });
}

fn from_record(r: &BootRecord) -> Result<BootReference, String> {
    let copy = r.inventory.as_ref().map_err(Clone::clone)?;
    let bytes =
        read_copy(copy).map_err(|e| format!("cannot read the boot copy of the inventory: {e}"))?;
    let mounts = r
        .mounts
        .as_deref()
        .map(kios_rootfs::mountinfo::parse)
        .map_err(Clone::clone);
    BootReference::from_parts(bytes, mounts)
        .map_err(|e| format!("cannot use the file inventory read at boot: {e}"))
}

/// The image's identity for `version`: the inventory's sha256 and build id.
pub fn identity() -> (Option<String>, Option<String>) {
    let Some(record) = BOOT.get() else {
        return (None, None);
    };
    let id = record.identity.get_or_init(|| {
        from_record(record)
            .ok()
            .map(|r| (r.inventory_sha256_hex(), r.build_id))
    });
    match id {
        Some((sha, build)) => (Some(sha.clone()), Some(build.clone())),
        None => (None, None),
    }
}

/// The boot reference; a process that did not boot (unit tests) reads
/// `paths` now instead.
fn reference(paths: &Paths) -> Result<BootReference, ErrorBody> {
    let reference = match BOOT.get() {
        Some(record) => from_record(record),
        None => capture(paths),
    };
    reference.map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e))
}

impl ExpectedPids {
    /// What `verify` and `ps` expect of the processes.
    pub fn procs(&self) -> ExpectedProcs {
        let mut procs = ExpectedProcs::node(self.init, self.crio, self.kubelet);
        procs.also_allowed.extend(self.peer);
        procs
    }
}

fn load(paths: &Paths) -> Result<Inventory, ErrorBody> {
    reference(paths)?.inventory().map_err(|e| {
        ErrorBody::new(
            ErrorCode::Unavailable,
            format!("cannot decode the file inventory read at boot: {e}"),
        )
    })
}

fn file_info(entry: &Entry) -> FileInfo {
    FileInfo {
        path: kios_protocol::path::escape_str(&entry.path),
        kind: entry.kind.as_str().to_string(),
        mode: entry.mode_string(),
        owner: entry.owner_string(),
        component: entry.component.clone(),
        why: entry.why.clone(),
        used_by: entry.used_by.clone(),
        notes: entry.notes.clone(),
        target: entry.target.clone(),
        size: entry.size,
        sha256: entry.sha256_hex(),
    }
}

/// `files [PATH]`: every entry, or the one at PATH (in the escaped form).
pub fn files(paths: &Paths, path: Option<&str>) -> Response {
    let inventory = load(paths)?;
    let files = match path {
        None => inventory.entries.iter().map(file_info).collect(),
        Some(path) => match unescaped(path).and_then(|p| inventory.get(&p)) {
            Some(entry) => vec![file_info(entry)],
            None => {
                return Err(ErrorBody::new(
                    ErrorCode::UnknownPath,
                    format!("'{path}' is not in the file inventory; 'files' lists every path"),
                ))
            }
        },
    };
    Ok(Reply::Files(FilesReply { files }))
}

/// The path an escaped `files PATH` names, when it can be an inventory
/// path (the inventory's paths are UTF-8).
fn unescaped(path: &str) -> Option<String> {
    let bytes = kios_protocol::path::unescape(path).ok()?;
    String::from_utf8(bytes).ok()
}

/// `verify` (blocking: run it off the event loop): the live root and the
/// processes of init's PID namespace against the inventory.
pub fn verify(paths: &Paths, expected: ExpectedPids) -> Response {
    let reference = reference(paths)?;
    let options = VerifyOptions {
        etc_upper: paths.etc_upper.clone(),
        ..VerifyOptions::default()
    };
    let node = NodePaths {
        root: paths.root.clone(),
        mountinfo: mountinfo(paths),
    };
    let mut report = kios_rootfs::verify_node(&reference, &node, &options).map_err(|e| {
        ErrorBody::new(
            ErrorCode::Unavailable,
            format!("cannot verify the root filesystem: {e}"),
        )
    })?;
    match kios_rootfs::verify_processes(&paths.proc_root, &expected.procs()) {
        Ok(process_report) => report.merge(process_report),
        Err(e) => {
            return Err(ErrorBody::new(
                ErrorCode::Unavailable,
                format!("cannot check the processes: {e}"),
            ))
        }
    }
    let clean = report.is_clean();
    let mut findings: Vec<Finding> = report
        .findings
        .into_iter()
        .map(|f| Finding {
            path: f.path,
            problem: f.problem.as_str().to_string(),
            detail: f.detail,
        })
        .collect();
    if report.omitted > 0 {
        findings.push(Finding {
            path: "/".to_string(),
            problem: "omitted".to_string(),
            detail: format!("{} more findings were not listed", report.omitted),
        });
    }
    Ok(Reply::Verify(VerifyReply {
        clean,
        checked: report.checked,
        findings,
        out_of_scope: report.out_of_scope,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn paths_with(inventory: PathBuf, root: PathBuf) -> Paths {
        Paths {
            inventory,
            root,
            ..Paths::default()
        }
    }

    #[test]
    fn the_boot_copy_cannot_be_written_or_resized() {
        use std::io::Write;
        let file = std::env::temp_dir().join(format!("kios-sealed-{}", std::process::id()));
        std::fs::write(&file, b"KIOSINV\0 the boot copy").unwrap();
        let mut copy = sealed_copy(&file).unwrap();
        std::fs::write(&file, b"rewritten").unwrap();
        assert_eq!(read_copy(&copy).unwrap(), b"KIOSINV\0 the boot copy");
        assert!(copy.write_all(b"x").is_err());
        assert!(copy.set_len(1).is_err());
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn missing_inventory_is_unavailable_and_names_the_file() {
        let paths = paths_with(
            PathBuf::from("/nonexistent/kios-inventory"),
            PathBuf::from("/"),
        );
        let err = files(&paths, None).unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable);
        assert!(
            err.message.contains("/nonexistent/kios-inventory"),
            "{}",
            err.message
        );
        let err = verify(&paths, ExpectedPids::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable);
    }

    fn entry(path: &str, kind: kios_rootfs::Kind, mode: u32) -> Entry {
        Entry {
            source: "test".to_string(),
            component: "test".to_string(),
            why: format!("why {path}"),
            ..Entry::new(path, kind, mode)
        }
    }

    #[test]
    fn files_lists_every_entry_or_the_one_asked_for() {
        let dir = std::env::temp_dir().join(format!("kios-inventory-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("inventory");
        let inventory = Inventory::new(
            vec![
                entry("/bin", kios_rootfs::Kind::Dir, 0o555),
                entry("/", kios_rootfs::Kind::Dir, 0o755),
            ],
            vec![],
        );
        std::fs::write(&file, inventory.encode().unwrap()).unwrap();
        let paths = paths_with(file, dir.clone());
        match files(&paths, None).unwrap() {
            Reply::Files(f) => {
                let listed: Vec<&str> = f.files.iter().map(|f| f.path.as_str()).collect();
                assert_eq!(listed, vec!["/", "/bin"]);
                assert_eq!(f.files[1].mode, "0555");
                assert_eq!(f.files[1].owner, "0:0");
                assert_eq!(f.files[1].kind, "dir");
                assert_eq!(f.files[1].why, "why /bin");
            }
            other => panic!("{other:?}"),
        }
        match files(&paths, Some("/bin/")).unwrap() {
            Reply::Files(f) => assert_eq!(f.files.len(), 1),
            other => panic!("{other:?}"),
        }
        let err = files(&paths, Some("/nope")).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownPath);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
