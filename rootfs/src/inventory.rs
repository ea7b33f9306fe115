//! The inventory: every path of a kiOS image with its expected kind, mode,
//! owner, size, sha256 and link target, plus the explanation an administrator
//! reads. Stored in the image at [`INVENTORY_PATH`] in a compact versioned
//! binary form: the 8-byte [`MAGIC`], a little-endian u16 [`FORMAT_VERSION`],
//! then the postcard encoding of [`Inventory`].
//!
//! This module is available without the `builder` feature: kios-init links it
//! to answer `files` and to drive `verify`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the inventory lives in the image (outside /etc, which the data
/// partition overlays).
pub const INVENTORY_PATH: &str = "/lib/kios/inventory";
/// First bytes of an encoded inventory.
pub const MAGIC: &[u8; 8] = b"KIOSINV\0";
/// Version of the encoding after the magic; bumped on any change of the types.
pub const FORMAT_VERSION: u16 = 2;
/// An inventory larger than this is refused when reading (it is ~100 KiB).
pub const MAX_INVENTORY_BYTES: u64 = 16 * 1024 * 1024;

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Another name of the regular file at `target` (same inode).
    Hardlink,
    Device,
    /// A directory on which kios-init mounts a filesystem at boot.
    Mount,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::File,
        Kind::Dir,
        Kind::Symlink,
        Kind::Hardlink,
        Kind::Device,
        Kind::Mount,
    ];

    /// The name used in the spec, on the wire and in the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Hardlink => "hardlink",
            Kind::Device => "device",
            Kind::Mount => "mount",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How verify treats what is below a directory or mount point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Contents {
    /// Kernel filesystems (/proc, /sys, /dev): never entered.
    Skip,
    /// Created while the node runs (tmpfs, data partition): not checked.
    Runtime,
    /// The image's own files, checked as listed; if something is mounted over
    /// the directory at runtime (e.g. /lib/modules from the data partition)
    /// the image's files are hidden and the contents are not checked.
    Image,
    /// The image's files seen through an overlay whose upper directory is on
    /// the data partition (/etc): differences that the upper directory
    /// explains are reported as `overridden`.
    Overlay,
    /// Owned by cri-o or the kubelet (container storage, pod volumes):
    /// verify neither walks it nor checks mounts below it, and its summary
    /// names it as out of scope.
    Delegated,
}

impl Contents {
    pub const ALL: [Contents; 5] = [
        Contents::Skip,
        Contents::Runtime,
        Contents::Image,
        Contents::Overlay,
        Contents::Delegated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Contents::Skip => "skip",
            Contents::Runtime => "runtime",
            Contents::Image => "image",
            Contents::Overlay => "overlay",
            Contents::Delegated => "delegated",
        }
    }

    pub fn parse(s: &str) -> Option<Contents> {
        Contents::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Whether the path is in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Presence {
    /// Built into the image; verify requires it.
    Image,
    /// Built into the image and deleted by kios-init after boot (/init, to
    /// free RAM): verify accepts it absent.
    RemovedAtBoot,
    /// Not in the image: created at boot or while the node runs (documented
    /// for administrators, never checked).
    Runtime,
    /// An optional entry whose input was not given for this build.
    NotBuilt,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Image => "image",
            Presence::RemovedAtBoot => "removed-at-boot",
            Presence::Runtime => "runtime",
            Presence::NotBuilt => "not-built",
        }
    }

    /// True when the path is in the built image (verify checks it).
    pub fn in_image(self) -> bool {
        matches!(self, Presence::Image | Presence::RemovedAtBoot)
    }
}

/// What a runtime area (`contents = "runtime"`) allows besides plain
/// files; verify reports everything else it finds there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Allow {
    /// Executable files (e.g. the CNI plugins in /opt/cni/bin).
    pub exec: bool,
    /// Setuid and setgid files.
    pub setuid: bool,
    /// Mounts below the area made by the services (e.g. cri-o's namespace
    /// and shm mounts in /var/run).
    pub mounts: bool,
}

impl Allow {
    pub const NAMES: [&'static str; 3] = ["exec", "setuid", "mounts"];

    /// Sets the allowance named `name` (one of [`Allow::NAMES`]).
    pub fn set(&mut self, name: &str) -> bool {
        match name {
            "exec" => self.exec = true,
            "setuid" => self.setuid = true,
            "mounts" => self.mounts = true,
            _ => return false,
        }
        true
    }

    /// The names allowed, e.g. `["exec"]`.
    pub fn names(&self) -> Vec<&'static str> {
        let flags = [self.exec, self.setuid, self.mounts];
        Allow::NAMES
            .into_iter()
            .zip(flags)
            .filter_map(|(n, on)| on.then_some(n))
            .collect()
    }
}

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Device {
    pub block: bool,
    pub major: u32,
    pub minor: u32,
}

/// One path of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Absolute, normalized (no trailing slash except for `/`).
    pub path: String,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files and hard links.
    pub size: Option<u64>,
    pub sha256: Option<[u8; 32]>,
    /// Symlink target as stored, or the path a hard link shares its inode with.
    pub target: Option<String>,
    pub device: Option<Device>,
    /// Mount points: what kios-init mounts there, e.g. `tmpfs (nosuid,nodev,noexec)`.
    pub mounted: Option<String>,
    /// Directories and mount points: how verify treats what is below
    /// (None: the image's contents, checked).
    pub contents: Option<Contents>,
    /// Runtime areas: what may be there besides plain files.
    pub allow: Allow,
    pub presence: Presence,
    /// Where it came from at build time, for humans (e.g. `input crio`).
    pub source: String,
    pub component: String,
    pub why: String,
    pub used_by: Vec<String>,
    pub notes: Option<String>,
}

impl Entry {
    /// An entry of the image owned by 0:0 with every optional field empty
    /// (for tests and generated entries; fill in the rest as needed).
    pub fn new(path: impl Into<String>, kind: Kind, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: None,
            sha256: None,
            target: None,
            device: None,
            mounted: None,
            contents: None,
            allow: Allow::default(),
            presence: Presence::Image,
            source: String::new(),
            component: String::new(),
            why: String::new(),
            used_by: Vec::new(),
            notes: None,
        }
    }

    /// Mode as four octal digits, e.g. `0500`.
    pub fn mode_string(&self) -> String {
        format!("{:04o}", self.mode)
    }

    /// `uid:gid`.
    pub fn owner_string(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }

    pub fn sha256_hex(&self) -> Option<String> {
        self.sha256.as_ref().map(|h| crate::hash::hex(h))
    }
}

/// A group of entries with one explanation (e.g. "busybox", "Lib C").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    /// Section of the docs page (e.g. "Binaries").
    pub section: String,
    /// The explanation of the component as a whole.
    pub about: String,
}

/// Every path of one built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Sorted by path, unique.
    pub entries: Vec<Entry>,
    pub components: Vec<Component>,
    /// Names this build: given to the builder, or by default derived from
    /// the image's contents ([`Inventory::content_id`]).
    pub build_id: String,
}

/// Errors of reading or decoding an inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("read inventory {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("inventory {path} is larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("not a kiOS inventory (bad magic)")]
    BadMagic,
    #[error(
        "inventory format version {found} is not supported (this build reads {FORMAT_VERSION})"
    )]
    UnsupportedVersion { found: u16 },
    #[error("decode inventory: {0}")]
    Decode(String),
    #[error("encode inventory: {0}")]
    Encode(String),
}

impl Inventory {
    /// Builds an inventory, sorting the entries by path.
    pub fn new(mut entries: Vec<Entry>, components: Vec<Component>) -> Inventory {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Inventory {
            entries,
            components,
            build_id: String::new(),
        }
    }

    /// A digest of what the image holds (every path in it with its kind,
    /// mode, owner, content hash and target), independent of the
    /// explanations: 16 hex digits, the default build id.
    pub fn content_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for e in self.entries.iter().filter(|e| e.presence.in_image()) {
            h.update(e.path.as_bytes());
            h.update([0]);
            h.update(e.kind.as_str().as_bytes());
            h.update(format!(" {:o} {}:{} ", e.mode, e.uid, e.gid).as_bytes());
            h.update(e.sha256.unwrap_or_default());
            h.update(e.target.as_deref().unwrap_or_default().as_bytes());
            h.update([0]);
        }
        crate::hash::hex(&h.finalize()[..8])
    }

    /// Magic, version, postcard body.
    pub fn encode(&self) -> Result<Vec<u8>, InventoryError> {
        let body =
            postcard::to_allocvec(self).map_err(|e| InventoryError::Encode(e.to_string()))?;
        let mut out = Vec::with_capacity(body.len() + 10);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Inventory, InventoryError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(InventoryError::BadMagic)?;
        let (version, body) = match rest {
            [a, b, body @ ..] => (u16::from_le_bytes([*a, *b]), body),
            _ => return Err(InventoryError::Decode("truncated header".to_string())),
        };
        if version != FORMAT_VERSION {
            return Err(InventoryError::UnsupportedVersion { found: version });
        }
        let (mut inv, rest): (Inventory, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| InventoryError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(InventoryError::Decode(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        // Lookups rely on the order; do not trust the file for it.
        inv.entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(inv)
    }

    /// Reads and decodes an inventory file (bounded in size).
    pub fn read(path: &Path) -> Result<Inventory, InventoryError> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_INVENTORY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| InventoryError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if bytes.len() as u64 > MAX_INVENTORY_BYTES {
            return Err(InventoryError::TooLarge {
                path: path.to_path_buf(),
                max: MAX_INVENTORY_BYTES,
            });
        }
        Inventory::decode(&bytes)
    }

    /// The entry at `path` (a trailing slash is ignored). When `path` is not
    /// listed but goes through a symlink of the image (`/sbin/modprobe`,
    /// `/lib64/ld-linux-x86-64.so.2`), the entry it resolves to.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        let path = normalize_lookup(path);
        self.exact(path)
            .or_else(|| self.exact(&self.resolve_dirs(path)?))
    }

    /// The entry listed at exactly `path` (no symlink resolution).
    pub fn exact(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .and_then(|i| self.entries.get(i))
    }

    /// Resolves symlinks of the inventory in the directory part of `path`
    /// (relative targets only, a bounded number of times).
    fn resolve_dirs(&self, path: &str) -> Option<String> {
        let mut parts: Vec<String> = path
            .split('/')
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
        let mut changed = false;
        let mut i = 0;
        let mut budget = 16;
        while i + 1 < parts.len() {
            let prefix = format!("/{}", parts[..=i].join("/"));
            match self.exact(&prefix) {
                Some(e) if e.kind == Kind::Symlink && budget > 0 => {
                    let target = e.target.as_deref()?;
                    if target.starts_with('/') || target.split('/').any(|p| p == "..") {
                        return None;
                    }
                    budget -= 1;
                    let rest = parts.split_off(i + 1);
                    parts.truncate(i);
                    parts.extend(
                        target
                            .split('/')
                            .filter(|p| !p.is_empty() && *p != ".")
                            .map(String::from),
                    );
                    parts.extend(rest);
                    changed = true;
                    i = 0;
                }
                _ => i += 1,
            }
        }
        changed.then(|| format!("/{}", parts.join("/")))
    }

    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

fn normalize_lookup(path: &str) -> &str {
    if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    }
}
