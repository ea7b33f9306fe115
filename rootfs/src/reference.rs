//! What a node is verified against: the inventory and the mount table as
//! init saw them at boot ([`BootReference::capture`], called once after
//! the last boot mount and before any other process exists), never the
//! files a running node could rewrite. [`verify_node`] runs every check of
//! `kiosctl verify` except the processes: the tree against the boot
//! inventory, the live inventory file against the boot copy, the runtime
//! areas, and the live mount table against the boot one.
//!
//! Only the encoded inventory is kept (tens of KiB); it is decoded per
//! request.

use crate::areas::check_areas;
use crate::hash;
use crate::inventory::{Inventory, InventoryError, INVENTORY_PATH, MAX_INVENTORY_BYTES};
use crate::mountcheck::check_mounts;
use crate::mountinfo::{self, MountInfo, MOUNTINFO_LIMIT};
use crate::verify::{live_path, verify_tree, Problem, Report, VerifyError, VerifyOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The inventory and mount table init recorded at boot.
#[derive(Debug, Clone)]
pub struct BootReference {
    inventory: Vec<u8>,
    /// sha256 of the inventory file as read at boot.
    pub inventory_sha256: [u8; 32],
    pub build_id: String,
    /// `Err`: why the mount table could not be read at boot.
    pub mounts: Result<Vec<MountInfo>, String>,
}

/// Reads at most `limit` bytes of `path`; more is an error.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Reads and parses a mount table (`/proc/self/mountinfo`).
pub fn read_mount_table(path: &Path) -> std::io::Result<Vec<MountInfo>> {
    Ok(mountinfo::parse(&read_bounded(
        path,
        MOUNTINFO_LIMIT as u64,
    )?))
}

impl BootReference {
    /// Reads the inventory file (it must decode) and the mount table.
    pub fn capture(inventory: &Path, mountinfo: &Path) -> Result<BootReference, InventoryError> {
        let bytes = read_bounded(inventory, MAX_INVENTORY_BYTES).map_err(|source| {
            InventoryError::Read {
                path: inventory.to_path_buf(),
                source,
            }
        })?;
        let mounts = read_mount_table(mountinfo)
            .map_err(|e| format!("cannot read {}: {e}", mountinfo.display()));
        BootReference::from_parts(bytes, mounts)
    }

    /// From an encoded inventory and a mount table.
    pub fn from_parts(
        inventory: Vec<u8>,
        mounts: Result<Vec<MountInfo>, String>,
    ) -> Result<BootReference, InventoryError> {
        let decoded = Inventory::decode(&inventory)?;
        Ok(BootReference {
            inventory_sha256: hash::sha256_bytes(&inventory),
            build_id: decoded.build_id,
            inventory,
            mounts,
        })
    }

    /// The inventory read at boot.
    pub fn inventory(&self) -> Result<Inventory, InventoryError> {
        Inventory::decode(&self.inventory)
    }

    pub fn inventory_sha256_hex(&self) -> String {
        hash::hex(&self.inventory_sha256)
    }
}

/// Where [`verify_node`] looks.
#[derive(Debug, Clone)]
pub struct NodePaths {
    /// The live root (`/`).
    pub root: PathBuf,
    /// The live mount table (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
}

/// Every check but the processes, against `reference`.
pub fn verify_node(
    reference: &BootReference,
    paths: &NodePaths,
    opts: &VerifyOptions,
) -> Result<Report, VerifyError> {
    let inv = reference.inventory().map_err(VerifyError::Reference)?;
    let max = opts.max_findings;
    let mut report = verify_tree(&paths.root, &inv, opts)?;
    report.merge(check_inventory_file(reference, &paths.root, max));
    // One read of the live table for both checks, so that they judge the
    // same mounts: the area walk must reach every mount below an area.
    let live = read_mount_table(&paths.mountinfo);
    report.merge(check_areas(
        &paths.root,
        &inv,
        live.as_ref().ok().map(Vec::as_slice),
        max,
    ));
    let mut mounts = Report::default();
    match (&reference.mounts, &live) {
        (Ok(boot), Ok(live)) => mounts = check_mounts(boot, live, &inv, max),
        (Err(e), _) => mounts.push(
            max,
            b"/",
            Problem::Mount,
            format!("the mount table was not recorded at boot ({e}); mounts not checked"),
        ),
        (_, Err(e)) => mounts.push(
            max,
            b"/",
            Problem::Mount,
            format!("cannot read the live mount table: {e}"),
        ),
    }
    report.merge(mounts);
    // Findings beyond the bound of one check count against the whole.
    if report.findings.len() > max {
        report.omitted += (report.findings.len() - max) as u64;
        report.findings.truncate(max);
    }
    report.sort();
    Ok(report)
}

/// The live inventory file against the copy read at boot.
fn check_inventory_file(reference: &BootReference, root: &Path, max: usize) -> Report {
    let mut report = Report {
        checked: 1,
        ..Report::default()
    };
    let live = live_path(root, Path::new(INVENTORY_PATH));
    let detail = match read_bounded(&live, MAX_INVENTORY_BYTES) {
        Ok(bytes) => {
            let sha = hash::sha256_bytes(&bytes);
            if sha == reference.inventory_sha256 {
                return report;
            }
            let build = match Inventory::decode(&bytes) {
                Ok(inv) => format!("a valid inventory of build {}", inv.build_id),
                Err(e) => format!("not a valid inventory ({e})"),
            };
            format!(
                "differs from the inventory read at boot: sha256 {}, {build}; the node booted with sha256 {} (build {}) and verify uses that",
                hash::hex(&sha),
                reference.inventory_sha256_hex(),
                reference.build_id
            )
        }
        Err(e) => format!(
            "cannot read it ({e}); verify uses the inventory read at boot (sha256 {})",
            reference.inventory_sha256_hex()
        ),
    };
    report.push(max, INVENTORY_PATH.as_bytes(), Problem::Inventory, detail);
    report
}
