//! Verification of a live root filesystem against the inventory: every
//! entry is present with its kind, mode, owner and content; no path exists
//! that the inventory does not list; differences in /etc that the data
//! partition's overlay upper directory explains are `overridden`, not
//! tampering. Kernel filesystems (/proc, /sys, /dev) and runtime mounts are
//! treated as their inventory entry says ([`Contents`]).

use crate::hash;
use crate::inventory::{Contents, Entry, Inventory, Kind, Presence};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The image directory that the data partition overlays.
pub const OVERLAY_DIR: &str = "/etc";
/// Entries of one directory looked at; a directory with more is itself a finding.
pub const MAX_DIR_ENTRIES: usize = 100_000;
/// Default bound on the number of findings kept in a report.
pub const DEFAULT_MAX_FINDINGS: usize = 1000;

/// A kind of drift. Its [`Problem::as_str`] goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Problem {
    /// An inventory entry is not there.
    Missing,
    /// Content (hash or size) or link target differs.
    Modified,
    /// Permission bits differ (other than a new setuid/setgid bit).
    Mode,
    /// uid or gid differ.
    Owner,
    /// A different kind of file (e.g. a symlink where a file belongs).
    Kind,
    /// A setuid or setgid bit the inventory does not have.
    Setuid,
    /// A path the inventory does not list.
    Unexpected,
    /// An /etc difference explained by the data partition's overlay.
    Overridden,
    /// A process that is neither init, cri-o, the kubelet, a conmon nor a container.
    Process,
    /// An executable file in a runtime area that allows none.
    Executable,
    /// A mount that differs from what init mounted at boot (type, source,
    /// flags), is gone, or was added; or a runtime area mounted with less
    /// than the spec requires.
    Mount,
    /// The live inventory file differs from the one init read at boot.
    Inventory,
}

impl Problem {
    pub const ALL: [Problem; 12] = [
        Problem::Missing,
        Problem::Modified,
        Problem::Mode,
        Problem::Owner,
        Problem::Kind,
        Problem::Setuid,
        Problem::Unexpected,
        Problem::Overridden,
        Problem::Process,
        Problem::Executable,
        Problem::Mount,
        Problem::Inventory,
    ];

    /// Stable kebab-case name (wire format).
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Missing => "missing",
            Problem::Modified => "modified",
            Problem::Mode => "mode",
            Problem::Owner => "owner",
            Problem::Kind => "kind",
            Problem::Setuid => "setuid",
            Problem::Unexpected => "unexpected",
            Problem::Overridden => "overridden",
            Problem::Process => "process",
            Problem::Executable => "executable",
            Problem::Mount => "mount",
            Problem::Inventory => "inventory",
        }
    }

    /// True for findings that mean the node is not as built.
    pub fn is_drift(self) -> bool {
        self != Problem::Overridden
    }
}

/// One difference between the node and the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Image path in the escaped form of [`kios_protocol::path`], or
    /// `/proc/<pid>` for processes.
    pub path: String,
    pub problem: Problem,
    pub detail: String,
}

/// Outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Inventory entries (and processes) checked.
    pub checked: u64,
    pub findings: Vec<Finding>,
    /// Findings dropped because the report reached its bound.
    pub omitted: u64,
    /// Areas verify does not look into because they belong to cri-o or the
    /// kubelet (container storage, pod volumes), for the summary.
    pub out_of_scope: Vec<String>,
}

impl Report {
    /// No finding other than `overridden`, and none omitted.
    pub fn is_clean(&self) -> bool {
        self.omitted == 0 && self.findings.iter().all(|f| !f.problem.is_drift())
    }

    /// Adds the checks and findings of `other`.
    pub fn merge(&mut self, other: Report) {
        self.checked += other.checked;
        self.findings.extend(other.findings);
        self.omitted += other.omitted;
        self.out_of_scope.extend(other.out_of_scope);
    }

    /// Adds a finding for `path` (raw bytes, escaped here) unless the
    /// report holds `max` already.
    pub fn push(&mut self, max: usize, path: &[u8], problem: Problem, detail: String) {
        if self.findings.len() >= max {
            self.omitted += 1;
            return;
        }
        self.findings.push(Finding {
            path: kios_protocol::path::escape(path),
            problem,
            detail,
        });
    }

    /// Orders the findings by path, then problem.
    pub fn sort(&mut self) {
        self.findings
            .sort_by(|a, b| a.path.cmp(&b.path).then(a.problem.cmp(&b.problem)));
    }
}

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The overlay upper directory of /etc as this process can open it (e.g.
    /// `/var/meta/etc`), when the data partition's overlay is mounted.
    pub etc_upper: Option<PathBuf>,
    /// Bound on the findings kept; the rest are counted in `omitted`.
    pub max_findings: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            etc_upper: None,
            max_findings: DEFAULT_MAX_FINDINGS,
        }
    }
}

/// Failure to verify at all (individual unreadable paths become findings).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("read root {path}: {source}")]
    ReadRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("decode the inventory read at boot: {0}")]
    Reference(crate::inventory::InventoryError),
}

/// Compares the tree at `root` (the live `/`, or a built image directory)
/// with `inv`.
pub fn verify_tree(
    root: &Path,
    inv: &Inventory,
    opts: &VerifyOptions,
) -> Result<Report, VerifyError> {
    let root_meta = std::fs::symlink_metadata(root).map_err(|source| VerifyError::ReadRoot {
        path: root.to_path_buf(),
        source,
    })?;
    let mut v = Verifier {
        root,
        inv,
        opts,
        report: Report::default(),
        blocked: BTreeSet::new(),
    };
    v.find_blocked_mounts(root_meta.dev());
    for entry in &inv.entries {
        if entry.presence.in_image() && !v.is_hidden(&entry.path) {
            v.check_entry(entry);
        }
    }
    v.walk("/");
    let mut report = v.report;
    report.sort();
    Ok(report)
}

struct Verifier<'a> {
    root: &'a Path,
    inv: &'a Inventory,
    opts: &'a VerifyOptions,
    report: Report,
    /// Directories and mount points whose contents are not checked.
    blocked: BTreeSet<String>,
}

impl Verifier<'_> {
    fn live(&self, image_path: impl AsRef<Path>) -> PathBuf {
        live_path(self.root, image_path.as_ref())
    }

    fn finding(&mut self, path: impl AsRef<Path>, problem: Problem, detail: String) {
        let max = self.opts.max_findings;
        let path = path.as_ref().as_os_str().as_bytes();
        self.report.push(max, path, problem, detail);
    }

    fn find_blocked_mounts(&mut self, root_dev: u64) {
        for e in &self.inv.entries {
            let blocked = match (e.kind, e.contents) {
                (
                    Kind::Dir | Kind::Mount,
                    Some(Contents::Skip | Contents::Runtime | Contents::Delegated),
                ) => true,
                // A mount point must say; treat an unspecified one as runtime.
                (Kind::Mount, None) => true,
                // Something mounted over it hides the image's files.
                (Kind::Mount, Some(Contents::Image)) => {
                    std::fs::symlink_metadata(self.live(&e.path))
                        .map(|m| m.dev() != root_dev)
                        .unwrap_or(false)
                }
                _ => false,
            };
            if blocked {
                self.blocked.insert(e.path.clone());
            }
        }
    }

    /// True when an ancestor of `path` is a mount whose contents are not checked.
    fn is_hidden(&self, path: &str) -> bool {
        let mut p = path;
        while let Some(i) = p.rfind('/') {
            p = if i == 0 { "/" } else { &p[..i] };
            if self.blocked.contains(p) {
                return true;
            }
            if p == "/" {
                break;
            }
        }
        false
    }

    /// The upper-directory path that overrides `path`, if any.
    fn override_of(&self, path: impl AsRef<Path>) -> Option<PathBuf> {
        let upper = self.opts.etc_upper.as_ref()?;
        let rel = path.as_ref().strip_prefix(OVERLAY_DIR).ok()?;
        if rel.as_os_str().is_empty() {
            return None;
        }
        let candidate = upper.join(rel);
        std::fs::symlink_metadata(&candidate).ok()?;
        Some(candidate)
    }

    /// The upper-directory path (the path itself or the nearest ancestor
    /// below /etc) that explains why `path` is gone from the overlay.
    fn override_of_removed(&self, path: &str) -> Option<PathBuf> {
        let mut p = path;
        while p.len() > OVERLAY_DIR.len() {
            if let Some(upper) = self.override_of(p) {
                return Some(upper);
            }
            p = &p[..p.rfind('/')?];
        }
        None
    }

    fn check_entry(&mut self, e: &Entry) {
        self.report.checked += 1;
        let live = self.live(&e.path);
        let meta = match std::fs::symlink_metadata(&live) {
            Ok(m) => m,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if e.presence == Presence::RemovedAtBoot {
                    return;
                }
                // Through the overlay a lower file can only vanish by a whiteout
                // or an opaque directory in the upper layer.
                match self.override_of_removed(&e.path) {
                    Some(upper) => self.finding(
                        &e.path,
                        Problem::Overridden,
                        format!(
                            "removed by the data partition overlay ({})",
                            upper.display()
                        ),
                    ),
                    None => self.finding(
                        &e.path,
                        Problem::Missing,
                        format!("expected {}", e.kind.as_str()),
                    ),
                }
                return;
            }
            Err(err) => {
                self.finding(&e.path, Problem::Missing, format!("cannot read: {err}"));
                return;
            }
        };
        let upper = self.override_of(&e.path);
        let found = kind_name(&meta);
        let kind_ok = match e.kind {
            Kind::File | Kind::Hardlink => meta.file_type().is_file(),
            Kind::Dir | Kind::Mount => meta.file_type().is_dir(),
            Kind::Symlink => meta.file_type().is_symlink(),
            Kind::Device => match e.device {
                Some(d) if d.block => meta.file_type().is_block_device(),
                _ => meta.file_type().is_char_device(),
            },
        };
        if !kind_ok {
            let detail = format!("expected {}, found {found}", e.kind.as_str());
            self.drift(&e.path, Problem::Kind, detail, upper.as_deref());
            return;
        }
        // A mount point's mode and owner are those of what is mounted there.
        if e.kind == Kind::Mount {
            return;
        }
        let actual_mode = meta.mode() & 0o7777;
        // Symlink permission bits mean nothing on Linux.
        if e.kind != Kind::Symlink && actual_mode != e.mode {
            let new_special = actual_mode & 0o6000 & !e.mode;
            if new_special != 0 {
                // Reported even through the overlay: a setuid file is never harmless.
                let bit = if new_special & 0o4000 != 0 {
                    "setuid"
                } else {
                    "setgid"
                };
                self.finding(
                    &e.path,
                    Problem::Setuid,
                    format!(
                        "{bit} bit set: mode {actual_mode:04o}, expected {:04o}",
                        e.mode
                    ),
                );
            }
            if actual_mode & !0o6000 != e.mode & !0o6000 {
                let detail = format!("mode {actual_mode:04o}, expected {:04o}", e.mode);
                self.drift(&e.path, Problem::Mode, detail, upper.as_deref());
            }
        }
        if meta.uid() != e.uid || meta.gid() != e.gid {
            let detail = format!(
                "owner {}:{}, expected {}",
                meta.uid(),
                meta.gid(),
                e.owner_string()
            );
            self.drift(&e.path, Problem::Owner, detail, upper.as_deref());
        }
        match e.kind {
            Kind::File => self.check_content(e, &live, &meta, upper.as_deref()),
            Kind::Hardlink => {
                let target = e.target.clone().unwrap_or_default();
                let same = std::fs::symlink_metadata(self.live(&target))
                    .is_ok_and(|t| t.dev() == meta.dev() && t.ino() == meta.ino());
                if !same {
                    let detail = format!("expected a hard link to {target}, found a separate file");
                    self.drift(&e.path, Problem::Kind, detail, upper.as_deref());
                    self.check_content(e, &live, &meta, upper.as_deref());
                }
            }
            Kind::Symlink => {
                let expected = e.target.as_deref().unwrap_or_default();
                match std::fs::read_link(&live) {
                    Ok(t) if t.as_os_str() == expected => {}
                    Ok(t) => {
                        let detail = format!("points to {}, expected {expected}", t.display());
                        self.drift(&e.path, Problem::Modified, detail, upper.as_deref());
                    }
                    Err(err) => self.finding(
                        &e.path,
                        Problem::Modified,
                        format!("cannot read link: {err}"),
                    ),
                }
            }
            Kind::Device => {
                if let Some(d) = e.device {
                    let (major, minor) = split_rdev(meta.rdev());
                    if (major, minor) != (d.major, d.minor) {
                        let detail =
                            format!("device {major}:{minor}, expected {}:{}", d.major, d.minor);
                        self.drift(&e.path, Problem::Modified, detail, upper.as_deref());
                    }
                }
            }
            Kind::Dir | Kind::Mount => {}
        }
    }

    fn check_content(&mut self, e: &Entry, live: &Path, meta: &Metadata, upper: Option<&Path>) {
        let (Some(size), Some(sha)) = (e.size, e.sha256) else {
            return;
        };
        if meta.len() != size {
            let detail = format!("size {} bytes, expected {size}", meta.len());
            self.drift(&e.path, Problem::Modified, detail, upper);
            return;
        }
        match hash::sha256_file(live) {
            Ok((digest, _)) if digest == sha => {}
            Ok((digest, _)) => {
                let detail = format!(
                    "sha256 {}, expected {}",
                    hash::hex(&digest),
                    hash::hex(&sha)
                );
                self.drift(&e.path, Problem::Modified, detail, upper);
            }
            Err(err) => self.finding(&e.path, Problem::Modified, format!("cannot read: {err}")),
        }
    }

    /// Reports `problem`, or `overridden` when the overlay's upper directory
    /// holds the path.
    fn drift(
        &mut self,
        path: impl AsRef<Path>,
        problem: Problem,
        detail: String,
        upper: Option<&Path>,
    ) {
        match upper {
            Some(upper) => self.finding(
                path,
                Problem::Overridden,
                format!(
                    "{detail}; overridden on the data partition ({})",
                    upper.display()
                ),
            ),
            None => self.finding(path, problem, detail),
        }
    }

    /// Walks the live tree and reports every path the inventory does not
    /// list. Names are bytes: a name that is not UTF-8 cannot be in the
    /// inventory and is reported like any other stranger.
    fn walk(&mut self, dir: &str) {
        if self.blocked.contains(dir) {
            return;
        }
        let names = match list_dir(&self.live(dir), MAX_DIR_ENTRIES) {
            Ok(listing) => {
                for err in listing.errors {
                    self.finding(
                        dir,
                        Problem::Unexpected,
                        format!("cannot list an entry: {err}"),
                    );
                }
                if listing.truncated {
                    self.finding(
                        dir,
                        Problem::Unexpected,
                        format!("more than {MAX_DIR_ENTRIES} entries; only the first were checked"),
                    );
                }
                listing.names
            }
            Err(err) => {
                if err.kind() != std::io::ErrorKind::NotFound {
                    self.finding(dir, Problem::Modified, format!("cannot list: {err}"));
                }
                return;
            }
        };
        for name in names {
            let path = Path::new(dir).join(&name);
            let entry = path
                .to_str()
                .and_then(|p| self.inv.exact(p))
                .filter(|e| e.presence.in_image());
            let meta = match std::fs::symlink_metadata(self.live(&path)) {
                Ok(meta) => meta,
                // Gone since it was listed.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    self.finding(&path, Problem::Unexpected, format!("cannot read: {err}"));
                    continue;
                }
            };
            match entry {
                Some(e) => {
                    let descend =
                        matches!(e.kind, Kind::Dir | Kind::Mount) && meta.file_type().is_dir();
                    if descend {
                        let sub = e.path.clone();
                        self.walk(&sub);
                    }
                }
                None => {
                    let detail = describe(&meta);
                    match self.override_of(&path) {
                        Some(upper) => self.finding(
                            &path,
                            Problem::Overridden,
                            format!(
                                "{detail}; added on the data partition ({})",
                                upper.display()
                            ),
                        ),
                        None => self.finding(&path, Problem::Unexpected, detail),
                    }
                }
            }
        }
    }
}

/// `image_path` (absolute, in the image) below `root`.
pub fn live_path(root: &Path, image_path: &Path) -> PathBuf {
    match image_path.strip_prefix("/") {
        Ok(rel) if !rel.as_os_str().is_empty() => root.join(rel),
        _ => root.to_path_buf(),
    }
}

/// The names of one directory, sorted as bytes, at most `max`.
pub struct Listing {
    pub names: Vec<OsString>,
    /// There were more than `max`.
    pub truncated: bool,
    /// Entries the kernel could not return.
    pub errors: Vec<std::io::Error>,
}

/// Lists `dir` without following anything and without decoding names.
pub fn list_dir(dir: &Path, max: usize) -> std::io::Result<Listing> {
    let mut listing = Listing {
        names: Vec::new(),
        truncated: false,
        errors: Vec::new(),
    };
    for r in std::fs::read_dir(dir)? {
        match r {
            Ok(d) if listing.names.len() < max => listing.names.push(d.file_name()),
            Ok(_) => {
                listing.truncated = true;
                break;
            }
            Err(e) if listing.errors.len() < 8 => listing.errors.push(e),
            Err(_) => {}
        }
    }
    listing.names.sort();
    Ok(listing)
}

/// e.g. `file, mode 4755, owner 0:0, 1234 bytes`.
pub fn describe(meta: &Metadata) -> String {
    let mut s = format!(
        "{}, mode {:04o}, owner {}:{}",
        kind_name(meta),
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid()
    );
    if meta.file_type().is_file() {
        s.push_str(&format!(", {} bytes", meta.len()));
        if meta.mode() & 0o6000 != 0 {
            s.push_str(", setuid/setgid");
        }
    }
    s
}

fn kind_name(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

/// Linux's encoding of dev_t (glibc/musl `major()`/`minor()`).
pub fn split_rdev(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}
