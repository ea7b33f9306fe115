//! The runtime areas (entries with `contents = "runtime"`: the tmpfs
//! scratch space, /var/log, /var/meta, the data partition itself, ...):
//! their files are not in the inventory, so verify does not compare them
//! one by one, but it looks at every one of them and reports what the
//! area's spec does not allow: setuid or setgid files and executables.
//! Areas with `contents = "delegated"` (container storage, pod volumes)
//! belong to cri-o and the kubelet: they are not entered and are named in
//! the report's `out_of_scope`.
//!
//! Mounts below a runtime area (cri-o's namespace mounts in /var/run, the
//! kubelet's below /var/lib/kubelet, or an intruder's exec tmpfs) are
//! walked with the area's own rules: [`scope_of`] is the one rule by which
//! both this walk and the mount check ([`crate::mountcheck`]) place a path,
//! so every mount the mount check tolerates is either walked here or lies in
//! a delegated area. Given the live mount table, the walk reports every
//! mount below a runtime area it could not reach (hidden by a later mount
//! over it or over a parent, or beyond the bounds): nothing in between.
//!
//! The walk is bounded and never blocks: it only lists directories and
//! lstat()s names (no file is opened, no link followed, so FIFOs, sparse
//! files, symlink loops and links to /proc/kcore cost nothing), and stops
//! at [`MAX_AREA_DEPTH`] levels below the area's root (mounts below
//! included) and [`MAX_AREA_ENTRIES`] names, saying so in a finding. A file
//! reachable through several areas (the data partition's meta/log is also
//! /var/log) is reported once, under its shortest name.

use crate::inventory::{Allow, Contents, Inventory, Kind};
use crate::mountcheck::describe_mount;
use crate::mountinfo::MountInfo;
use crate::verify::{describe, list_dir, live_path, split_rdev, Problem, Report, MAX_DIR_ENTRIES};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Directory levels below an area root that are looked at.
pub const MAX_AREA_DEPTH: usize = 32;
/// Names looked at in all areas together.
pub const MAX_AREA_ENTRIES: usize = 200_000;

/// One runtime area of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Area {
    pub path: String,
    pub contents: Contents,
    pub allow: Allow,
}

/// The runtime and delegated areas of `inv`, sorted by path.
pub fn areas(inv: &Inventory) -> Vec<Area> {
    inv.entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::Dir | Kind::Mount))
        .filter_map(|e| match e.contents {
            Some(c @ (Contents::Runtime | Contents::Delegated)) => Some(Area {
                path: e.path.clone(),
                contents: c,
                allow: e.allow,
            }),
            _ => None,
        })
        .collect()
}

/// The innermost area `path` lies in (itself included).
pub fn area_of<'a>(areas: &'a [Area], path: &Path) -> Option<&'a Area> {
    areas
        .iter()
        .filter(|a| path.starts_with(&a.path))
        .max_by_key(|a| a.path.len())
}

/// Where a path lies among the areas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// In no area: the image's own tree or a kernel filesystem.
    Outside,
    /// The root of an area itself.
    AreaRoot(&'a Area),
    /// Strictly below a runtime area (mounts below it included): walked
    /// with that area's rules.
    Walked(&'a Area),
    /// Strictly below a delegated area: cri-o's or the kubelet's, not
    /// looked into.
    OutOfScope(&'a Area),
}

/// The scope of `path`: the one rule the area walk and the mount check
/// share (the innermost area decides).
pub fn scope_of<'a>(areas: &'a [Area], path: &Path) -> Scope<'a> {
    match area_of(areas, path) {
        None => Scope::Outside,
        Some(a) if Path::new(&a.path) == path => Scope::AreaRoot(a),
        Some(a) => match a.contents {
            Contents::Delegated => Scope::OutOfScope(a),
            _ => Scope::Walked(a),
        },
    }
}

/// Looks at every runtime area below `root` (the live `/`). With `live`,
/// the live mount table as seen from `root`, every mount strictly below a
/// runtime area must be reached by the walk; one that is not (or that lies
/// under another mount at the same point) is a `mount` finding.
pub fn check_areas(
    root: &Path,
    inv: &Inventory,
    live: Option<&[MountInfo]>,
    max_findings: usize,
) -> Report {
    let all = areas(inv);
    let mut below: BTreeMap<PathBuf, Vec<&MountInfo>> = BTreeMap::new();
    for m in live.unwrap_or_default() {
        if let Scope::Walked(_) = scope_of(&all, &m.mount_point) {
            below.entry(m.mount_point.clone()).or_default().push(m);
        }
    }
    let mut walk = AreaWalk {
        root,
        roots: all.iter().map(|a| PathBuf::from(&a.path)).collect(),
        mounts: below
            .iter()
            .map(|(point, stack)| {
                let devs = stack.iter().map(|m| (m.major, m.minor)).collect();
                (point.clone(), devs)
            })
            .collect(),
        reached: BTreeSet::new(),
        seen: 0,
        exhausted: false,
        found: BTreeMap::new(),
        notes: Vec::new(),
        checked: 0,
    };
    let mut out_of_scope = Vec::new();
    for area in &all {
        match area.contents {
            Contents::Delegated => out_of_scope.push(area.path.clone()),
            _ => walk.area(area),
        }
    }
    let mut report = Report {
        out_of_scope,
        ..Report::default()
    };
    report.checked = walk.checked;
    for (path, problem, detail) in walk.notes {
        report.push(max_findings, path.as_os_str().as_bytes(), problem, detail);
    }
    for (point, stack) in &below {
        let Scope::Walked(area) = scope_of(&all, point) else {
            continue;
        };
        let point_bytes = point.as_os_str().as_bytes();
        // The top of a stack is the mount no other one here is mounted on.
        let top = stack
            .iter()
            .find(|m| !stack.iter().any(|o| o.parent == m.id))
            .or(stack.last());
        let Some(top) = top else { continue };
        if !walk.reached.contains(point) {
            let detail = format!(
                "mounted below {} ({}) where verify cannot reach it (hidden by a later mount, or beyond the walk's bounds): its files were not looked at",
                area.path,
                describe_mount(top)
            );
            report.push(max_findings, point_bytes, Problem::Mount, detail);
        } else if stack.len() > 1 {
            let hidden: Vec<String> = stack
                .iter()
                .filter(|m| m.id != top.id)
                .map(|m| describe_mount(m))
                .collect();
            let detail = format!(
                "{} mounts stacked here; verify sees only the top one ({}), the files of the one(s) below are not looked at: {}",
                stack.len(),
                describe_mount(top),
                hidden.join("; ")
            );
            report.push(max_findings, point_bytes, Problem::Mount, detail);
        }
    }
    for ((_, _, problem), (path, detail)) in walk.found {
        report.push(max_findings, path.as_os_str().as_bytes(), problem, detail);
    }
    report.sort();
    report
}

struct AreaWalk<'a> {
    root: &'a Path,
    /// Every area's path: the walk of one does not enter another.
    roots: BTreeSet<PathBuf>,
    /// The live mount points strictly below runtime areas, with the
    /// devices mounted there ...
    mounts: BTreeMap<PathBuf, Vec<(u32, u32)>>,
    /// ... and those of them the walk reached.
    reached: BTreeSet<PathBuf>,
    seen: usize,
    exhausted: bool,
    /// (dev, ino, problem) -> the shortest path and its detail.
    found: BTreeMap<(u64, u64, Problem), (PathBuf, String)>,
    /// Findings about the walk itself (unreadable, too deep, too many).
    notes: Vec<(PathBuf, Problem, String)>,
    checked: u64,
}

impl AreaWalk<'_> {
    fn area(&mut self, area: &Area) {
        let top = PathBuf::from(&area.path);
        let Ok(meta) = std::fs::symlink_metadata(live_path(self.root, &top)) else {
            return; // Not there on this node (e.g. no data partition).
        };
        if !meta.is_dir() {
            return; // verify_tree reports a kind change.
        }
        self.checked += 1;
        let mut stack: Vec<(PathBuf, usize)> = vec![(top, 0)];
        while let Some((dir, depth)) = stack.pop() {
            if self.exhausted {
                return;
            }
            let live = live_path(self.root, &dir);
            let listing = match list_dir(&live, MAX_DIR_ENTRIES) {
                Ok(l) => l,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.note(&dir, format!("cannot list: {e}"));
                    continue;
                }
            };
            if listing.truncated {
                self.note(
                    &dir,
                    format!("more than {MAX_DIR_ENTRIES} entries; only the first were looked at"),
                );
            }
            for name in listing.names {
                self.seen += 1;
                if self.seen > MAX_AREA_ENTRIES {
                    self.exhausted = true;
                    self.note(
                        &dir,
                        format!(
                            "more than {MAX_AREA_ENTRIES} names in the runtime areas; the rest was not looked at"
                        ),
                    );
                    return;
                }
                let path = join(&dir, &name);
                if self.roots.contains(&path) {
                    continue; // Its own area (or delegated).
                }
                let meta = match std::fs::symlink_metadata(live_path(self.root, &path)) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        self.note(&path, format!("cannot read: {e}"));
                        continue;
                    }
                };
                if meta.is_dir() {
                    // A mount point (another device, or a bind) is walked
                    // like any directory, with this area's rules; below the
                    // depth bound it is reported as not reached.
                    if depth + 1 < MAX_AREA_DEPTH {
                        self.reach(&path, &meta);
                    }
                    if depth + 1 >= MAX_AREA_DEPTH {
                        self.note(
                            &path,
                            format!(
                                "directories nested deeper than {MAX_AREA_DEPTH} levels in {}; not looked at below",
                                area.path
                            ),
                        );
                    } else {
                        stack.push((path, depth + 1));
                    }
                } else {
                    // A file mount point (e.g. cri-o's nsfs binds) is seen here.
                    self.reach(&path, &meta);
                    if meta.is_file() {
                        self.file(area, path, &meta);
                    }
                }
            }
        }
    }

    /// Notes that the walk reached the mount point `path`, when what it
    /// sees there is one of the filesystems mounted there: a name of the
    /// same path on a later mount over a parent (a decoy for a hidden
    /// mount) does not count. (btrfs subvolumes, whose st_dev differs from
    /// the mount table's, would show as not reached: none are mounted in
    /// the areas.)
    fn reach(&mut self, path: &Path, meta: &std::fs::Metadata) {
        let Some(devs) = self.mounts.get(path) else {
            return;
        };
        if devs.contains(&split_rdev(meta.dev())) {
            self.reached.insert(path.to_path_buf());
        }
    }

    fn file(&mut self, area: &Area, path: PathBuf, meta: &std::fs::Metadata) {
        let mode = meta.mode();
        let allow = area.allow;
        let mut found = Vec::new();
        if mode & 0o6000 != 0 && !allow.setuid {
            found.push((
                Problem::Setuid,
                format!("{}; no setuid or setgid file belongs here", describe(meta)),
            ));
        }
        if mode & 0o111 != 0 && !allow.exec {
            found.push((
                Problem::Executable,
                format!("{}; no program belongs here", describe(meta)),
            ));
        }
        for (problem, detail) in found {
            let key = (meta.dev(), meta.ino(), problem);
            let shorter = self
                .found
                .get(&key)
                .is_none_or(|(p, _)| path.as_os_str().len() < p.as_os_str().len());
            if shorter {
                self.found.insert(key, (path.clone(), detail));
            }
        }
    }

    fn note(&mut self, path: &Path, detail: String) {
        if self.notes.len() < 64 {
            self.notes
                .push((path.to_path_buf(), Problem::Unexpected, detail));
        }
    }
}

fn join(dir: &Path, name: &OsString) -> PathBuf {
    let mut bytes = dir.as_os_str().as_bytes().to_vec();
    if bytes.last() != Some(&b'/') {
        bytes.push(b'/');
    }
    bytes.extend_from_slice(name.as_bytes());
    PathBuf::from(OsString::from_vec(bytes))
}
