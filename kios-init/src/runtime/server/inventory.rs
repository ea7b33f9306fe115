//! `files` and `verify`, answered from the image's file inventory at
//! /lib/kios/inventory (written by the rootfs builder, decoded with
//! `kios_rootfs`).
//!
//! The inventory is read per request and dropped afterwards: it is not
//! needed in between, and keeping it would cost memory all the time.
//! `verify` hashes files, so the caller runs it on the blocking pool; init
//! keeps reaping and answering meanwhile.

use kios_protocol::{
    ErrorBody, ErrorCode, FileInfo, FilesReply, Finding, Reply, Response, VerifyReply,
};
use kios_rootfs::{Entry, ExpectedProcs, Inventory, VerifyOptions};

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

fn load(paths: &Paths) -> Result<Inventory, ErrorBody> {
    Inventory::read(&paths.inventory).map_err(|e| {
        ErrorBody::new(
            ErrorCode::Unavailable,
            format!(
                "cannot use the file inventory {}: {e}",
                paths.inventory.display()
            ),
        )
    })
}

fn file_info(entry: &Entry) -> FileInfo {
    FileInfo {
        path: entry.path.clone(),
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

/// `files [PATH]`: every entry, or the one at PATH.
pub fn files(paths: &Paths, path: Option<&str>) -> Response {
    let inventory = load(paths)?;
    let files = match path {
        None => inventory.entries.iter().map(file_info).collect(),
        Some(path) => match inventory.get(path) {
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

/// `verify` (blocking: run it off the event loop): the live root and the
/// processes of init's PID namespace against the inventory.
pub fn verify(paths: &Paths, expected: ExpectedPids) -> Response {
    let inventory = load(paths)?;
    let options = VerifyOptions {
        etc_upper: paths.etc_upper.clone(),
        ..VerifyOptions::default()
    };
    let mut report = kios_rootfs::verify_tree(&paths.root, &inventory, &options).map_err(|e| {
        ErrorBody::new(
            ErrorCode::Unavailable,
            format!("cannot verify the root filesystem: {e}"),
        )
    })?;
    drop(inventory);
    let mut procs = ExpectedProcs::node(expected.init, expected.crio, expected.kubelet);
    procs.also_allowed.extend(expected.peer);
    match kios_rootfs::verify_processes(&paths.proc_root, &procs) {
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
