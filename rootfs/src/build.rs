//! The image builder: turns the spec, the input binaries, the ELF closure of
//! dynamic inputs, early kernel modules and extra files into a [`Plan`]
//! (every path with its content and inventory entry), then writes the plan
//! as a directory tree ([`build_tree`], for the namespace harness) or as a
//! newc cpio initramfs ([`build_cpio`]). Output is reproducible: entries are
//! sorted, times are fixed, inode numbers are assigned in path order.

use crate::cpio;
use crate::elf::Resolver;
use crate::hash;
use crate::inventory::{
    Component, Entry, Inventory, InventoryError, Kind, Presence, INVENTORY_PATH,
};
use crate::kmod::{self, ModuleSet};
use crate::spec::{self, Generated, Source, Spec, SpecEntry};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The spec component that explains libraries found by the ELF closure.
pub const LIBRARIES_COMPONENT: &str = "Shared libraries";
/// The spec component that explains early kernel modules.
pub const MODULES_COMPONENT: &str = "Kernel modules";
/// Modification time of every archive entry (the epoch): reproducible.
pub const FIXED_MTIME: u32 = 0;
/// Where kernel modules go.
pub const MODULES_DIR: &str = "/lib/modules";
/// Prefix of the notes of runtime entries in the inventory.
pub const RUNTIME_NOTE: &str =
    "Not in the image: created at boot or while the node runs; verify does not check it.";
/// Where libraries of the ELF closure go.
pub const LIB_DIR: &str = "/lib";

/// Early kernel modules to put into the image.
#[derive(Debug, Clone)]
pub struct ModulesOptions {
    /// `lib/modules/<version>` of an extracted kernel (holds modules.dep).
    pub modules_root: PathBuf,
    /// The kernel version (`uname -r`), the directory name in the image.
    pub version: String,
    /// Module names to load early, in order.
    pub names: Vec<String>,
}

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The spec (`rootfs/spec/files.toml`).
    pub spec: PathBuf,
    /// Directory of `files:` sources; default: `files/` next to the spec's directory.
    pub files_dir: Option<PathBuf>,
    /// Directory holding the inputs by name: crio, kubelet, conmon, crun,
    /// pinns, busybox, kios-init, kiosctl [, xtables-legacy-multi].
    pub inputs_dir: PathBuf,
    /// Inputs given explicitly by name (take precedence over `inputs_dir`).
    pub inputs: BTreeMap<String, PathBuf>,
    pub modules: Option<ModulesOptions>,
    /// Extra files: (host path, image path, mode), e.g. test configuration
    /// under /etc/kios-e2e. Their directory must be in the spec.
    pub extra_files: Vec<(PathBuf, String, u32)>,
    /// Library directories for the ELF closure.
    pub resolver: Resolver,
    /// The image's version and build id, written to /etc/os-release.
    pub release: Release,
    /// The kernel command line of the unified kernel image, recorded in
    /// the image at /lib/kios/cmdline.
    pub cmdline: String,
}

/// The kernel command line of a kiOS disk image: the kernel log on the
/// screen and on the first serial port (the last `console=` is
/// /dev/console, where the services' output goes too), and a reboot 10 s
/// after a kernel panic.
pub const DEFAULT_CMDLINE: &str = "console=tty0 console=ttyS0,115200 panic=10";

/// What /etc/os-release says about the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// VERSION_ID: by default the builder's own version.
    pub version: String,
    /// BUILD_ID; `None`: derived from the image's contents (the first 16 hex
    /// digits of a SHA-256 over every other file's path and digest), so the
    /// same inputs give the same id and any change of content a new one.
    pub build_id: Option<String>,
}

impl Default for Release {
    fn default() -> Release {
        Release {
            version: env!("CARGO_PKG_VERSION").to_string(),
            build_id: None,
        }
    }
}

impl Release {
    /// The os-release file for this version and build id.
    pub fn os_release(&self, build_id: &str) -> String {
        crate::osrelease::ImageRelease::os_release_text(&self.version, build_id)
    }

    fn check(&self) -> Result<(), BuildError> {
        let ok = |v: &str| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'+' | b'~')
                })
        };
        for (what, v) in [
            ("version", Some(&self.version)),
            ("build id", self.build_id.as_ref()),
        ] {
            if let Some(v) = v {
                if !ok(v) {
                    return Err(BuildError::Release(format!(
                        "{what} {v:?}: use 1 to 64 of A-Z a-z 0-9 . _ - + ~"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl BuildOptions {
    /// Options with the crate's own spec and default library directories.
    pub fn new(inputs_dir: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            spec: default_spec(),
            files_dir: None,
            inputs_dir: inputs_dir.into(),
            inputs: BTreeMap::new(),
            modules: None,
            extra_files: Vec::new(),
            resolver: Resolver::default(),
            release: Release::default(),
            cmdline: DEFAULT_CMDLINE.to_string(),
        }
    }

    fn files_dir(&self) -> PathBuf {
        match &self.files_dir {
            Some(d) => d.clone(),
            None => {
                let spec_dir = self.spec.parent().unwrap_or(Path::new("."));
                spec_dir.parent().unwrap_or(Path::new(".")).join("files")
            }
        }
    }
}

/// The spec in this crate's source tree.
pub fn default_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("spec/files.toml")
}

/// Compression of the cpio archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

/// Errors of building an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Spec(#[from] spec::LoadError),
    #[error("missing inputs:\n  {}", .0.join("\n  "))]
    MissingInputs(Vec<String>),
    #[error("extra file {image}: {reason}")]
    ExtraFile { image: String, reason: String },
    #[error("resolve shared libraries:\n  {}", .0.join("\n  "))]
    Libraries(Vec<String>),
    #[error("kernel modules: {0}")]
    Modules(#[from] kmod::KmodError),
    #[error("{path}: {reason}")]
    Clash { path: String, reason: String },
    #[error("the spec has no component '{0}'")]
    MissingComponent(String),
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("output directory {0} exists and is not empty")]
    DestNotEmpty(PathBuf),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("the written tree does not match its inventory:\n  {}", .0.join("\n  "))]
    SelfCheck(Vec<String>),
    #[error("os-release: {0}")]
    Release(String),
    #[error("kernel command line {0:?}: one line of printable ASCII, at most 4096 bytes")]
    Cmdline(String),
}

/// Where an item's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    None,
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// One path of the image.
#[derive(Debug, Clone)]
pub struct Item {
    pub entry: Entry,
    pub content: Content,
}

/// The resolved image: items in the image (sorted by path) and the inventory
/// (which also lists runtime and not-built entries).
#[derive(Debug, Clone)]
pub struct Plan {
    pub items: Vec<Item>,
    pub inventory: Inventory,
}

fn entry_from_spec(e: &SpecEntry, presence: Presence, source: String) -> Entry {
    Entry {
        path: e.path.clone(),
        kind: e.kind,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: None,
        sha256: None,
        target: e.target.clone(),
        device: e.device,
        mounted: e.mounted.clone(),
        contents: e.contents,
        allow: e.allow,
        presence,
        source,
        component: e.component.clone(),
        why: e.why.clone(),
        used_by: e.used_by.clone(),
        notes: e.notes.clone(),
    }
}

fn generated_entry(path: String, kind: Kind, mode: u32, component: &str, why: String) -> Entry {
    let mut entry = Entry::new(path, kind, mode);
    entry.component = component.to_string();
    entry.why = why;
    entry
}

/// Resolves everything; fails with one error listing every missing input.
pub fn plan(opts: &BuildOptions) -> Result<Plan, BuildError> {
    opts.release.check()?;
    if opts.cmdline.len() > 4096 || opts.cmdline.bytes().any(|c| !(b' '..=b'~').contains(&c)) {
        return Err(BuildError::Cmdline(opts.cmdline.clone()));
    }
    let spec = spec::load(&opts.spec)?;
    let files_dir = opts.files_dir();
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    let mut missing = Vec::new();

    let module_set = match &opts.modules {
        Some(m) => Some(kmod::resolve(&m.modules_root, &m.names)?),
        None => None,
    };

    for e in &spec.entries {
        let (presence, content, source) =
            resolve_spec_entry(e, opts, &files_dir, &module_set, &mut missing);
        items.insert(
            e.path.clone(),
            Item {
                entry: entry_from_spec(e, presence, source),
                content,
            },
        );
    }
    if !missing.is_empty() {
        return Err(BuildError::MissingInputs(missing));
    }
    drop_optional_links(&spec, &mut items);
    add_extra_files(opts, &spec, &mut items)?;
    if let (Some(set), Some(m)) = (&module_set, &opts.modules) {
        add_modules(&spec, set, &m.version, &mut items)?;
    }
    add_elf_closure(opts, &spec, &mut items)?;
    settle_optional_dirs(&spec, &mut items);
    hash_contents(&mut items)?;
    let build_id = add_os_release(&spec, &opts.release, &mut items);

    // The inventory describes every item, itself included (without a hash).
    let components = spec
        .components
        .iter()
        .map(|c| Component {
            name: c.name.clone(),
            section: c.section.clone(),
            about: c.about.clone(),
        })
        .collect();
    // Optional entries this build did not produce are left out; runtime
    // entries stay (documented) and say so in their notes.
    let entries = items
        .values()
        .filter(|i| i.entry.presence != Presence::NotBuilt)
        .map(|i| {
            let mut e = i.entry.clone();
            if e.presence == Presence::Runtime {
                let mut notes = RUNTIME_NOTE.to_string();
                if let Some(n) = &e.notes {
                    notes.push(' ');
                    notes.push_str(n);
                }
                e.notes = Some(notes);
            }
            e
        })
        .collect();
    let mut inventory = Inventory::new(entries, components);
    // One build id for the image: os-release's BUILD_ID and the
    // inventory's are the same string, so `version` shows one value.
    inventory.build_id = build_id;
    let encoded = inventory.encode()?;
    if let Some(item) = items.get_mut(INVENTORY_PATH) {
        item.content = Content::Bytes(encoded);
    }
    let items = items
        .into_values()
        .filter(|i| i.entry.presence.in_image())
        .collect();
    Ok(Plan { items, inventory })
}

fn resolve_spec_entry(
    e: &SpecEntry,
    opts: &BuildOptions,
    files_dir: &Path,
    module_set: &Option<ModuleSet>,
    missing: &mut Vec<String>,
) -> (Presence, Content, String) {
    let presence = if e.runtime {
        Presence::Runtime
    } else if e.removed_at_boot {
        Presence::RemovedAtBoot
    } else {
        Presence::Image
    };
    let Some(source) = &e.source else {
        return (presence, Content::None, String::new());
    };
    let label = source.to_string();
    match source {
        Source::Input(name) => {
            if let Some(p) = opts.inputs.get(name) {
                if p.is_file() {
                    return (presence, Content::Host(p.clone()), label);
                }
                missing.push(format!(
                    "input '{name}' for {}: {} is not a file",
                    e.path,
                    p.display()
                ));
                return (presence, Content::None, label);
            }
            let in_dir = opts.inputs_dir.join(name);
            if in_dir.is_file() {
                return (presence, Content::Host(in_dir), label);
            }
            if let Some(fb) = e.fallback.iter().find(|p| p.is_file()) {
                return (
                    presence,
                    Content::Host(fb.clone()),
                    format!("{label} (from {})", fb.display()),
                );
            }
            if e.optional {
                return (Presence::NotBuilt, Content::None, label);
            }
            let mut msg = format!(
                "input '{name}' for {}: not in {}",
                e.path,
                opts.inputs_dir.display()
            );
            if !e.fallback.is_empty() {
                let fb: Vec<_> = e.fallback.iter().map(|p| p.display().to_string()).collect();
                msg.push_str(&format!(" nor at {}", fb.join(", ")));
            }
            missing.push(msg);
            (presence, Content::None, label)
        }
        Source::Files(rel) => {
            let p = files_dir.join(rel);
            if !p.is_file() {
                missing.push(format!(
                    "{label} for {}: {} does not exist",
                    e.path,
                    p.display()
                ));
            }
            (presence, Content::Host(p), label)
        }
        Source::Host(p) => {
            if !p.is_file() {
                missing.push(format!(
                    "{label} for {}: {} does not exist on this machine",
                    e.path,
                    p.display()
                ));
            }
            (presence, Content::Host(p.clone()), label)
        }
        // Filled in once every other file is hashed (its BUILD_ID).
        Source::Generated(Generated::Inventory) | Source::Generated(Generated::OsRelease) => {
            (presence, Content::Bytes(Vec::new()), label)
        }
        Source::Generated(Generated::Cmdline) => (
            presence,
            Content::Bytes(format!("{}\n", opts.cmdline).into_bytes()),
            label,
        ),
        Source::Generated(Generated::ModulesList) => match module_set {
            Some(set) => (
                presence,
                Content::Bytes(set.load_list_text().into_bytes()),
                label,
            ),
            None if e.optional => (Presence::NotBuilt, Content::None, label),
            None => {
                missing.push(format!(
                    "{label} for {}: the build was given no kernel modules",
                    e.path
                ));
                (presence, Content::None, label)
            }
        },
    }
}

/// Optional links whose target was not built are not built either.
fn drop_optional_links(spec: &Spec, items: &mut BTreeMap<String, Item>) {
    for e in spec.entries.iter().filter(|e| e.optional) {
        let target = match (e.kind, &e.target) {
            (Kind::Hardlink, Some(t)) => t.clone(),
            (Kind::Symlink, Some(t)) if t.starts_with('/') => t.clone(),
            (Kind::Symlink, Some(t)) => join_image(spec::parent_of(&e.path), t),
            _ => continue,
        };
        let absent = items
            .get(&target)
            .is_none_or(|t| t.entry.presence == Presence::NotBuilt);
        if absent {
            if let Some(item) = items.get_mut(&e.path) {
                item.entry.presence = Presence::NotBuilt;
            }
        }
    }
}

fn join_image(dir: &str, rel: &str) -> String {
    if dir == "/" {
        format!("/{rel}")
    } else {
        format!("{dir}/{rel}")
    }
}

/// Optional directories exist only when something was placed in them.
fn settle_optional_dirs(spec: &Spec, items: &mut BTreeMap<String, Item>) {
    for e in spec
        .entries
        .iter()
        .filter(|e| e.optional && e.kind == Kind::Dir)
    {
        let prefix = format!("{}/", e.path);
        let used = items
            .values()
            .any(|i| i.entry.path.starts_with(&prefix) && i.entry.presence.in_image());
        if let Some(item) = items.get_mut(&e.path) {
            item.entry.presence = if used {
                Presence::Image
            } else {
                Presence::NotBuilt
            };
        }
    }
}

fn parent_is_dir(items: &BTreeMap<String, Item>, path: &str) -> bool {
    items.get(spec::parent_of(path)).is_some_and(|p| {
        matches!(p.entry.kind, Kind::Dir | Kind::Mount) && p.entry.presence != Presence::Runtime
    })
}

fn add_extra_files(
    opts: &BuildOptions,
    spec: &Spec,
    items: &mut BTreeMap<String, Item>,
) -> Result<(), BuildError> {
    for (host, image, mode) in &opts.extra_files {
        let fail = |reason: String| BuildError::ExtraFile {
            image: image.clone(),
            reason,
        };
        spec::check_path(image).map_err(fail)?;
        if let Some(line) = spec.entry(image).map(|e| e.line) {
            return Err(fail(format!("already in the spec (line {line})")));
        }
        if items.contains_key(image) {
            return Err(fail("given twice".to_string()));
        }
        if !host.is_file() {
            return Err(fail(format!("{} is not a file", host.display())));
        }
        if *mode > 0o7777 {
            return Err(fail(format!("mode {mode:o} is not a permission mode")));
        }
        if !parent_is_dir(items, image) {
            return Err(fail(format!(
                "its directory {} is not a directory of the spec",
                spec::parent_of(image)
            )));
        }
        let component = items
            .get(spec::parent_of(image))
            .map(|p| p.entry.component.clone())
            .unwrap_or_default();
        let file_name = host
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut entry = generated_entry(
            image.clone(),
            Kind::File,
            *mode,
            &component,
            format!(
                "Added by this build from {file_name} (an extra file, e.g. test configuration)."
            ),
        );
        entry.source = "extra".to_string();
        items.insert(
            image.clone(),
            Item {
                entry,
                content: Content::Host(host.clone()),
            },
        );
    }
    Ok(())
}

fn insert_generated(
    items: &mut BTreeMap<String, Item>,
    spec: &Spec,
    item: Item,
) -> Result<(), BuildError> {
    let path = item.entry.path.clone();
    if let Some(e) = spec.entry(&path) {
        return Err(BuildError::Clash {
            path,
            reason: format!(
                "generated by the build but also listed in the spec (line {})",
                e.line
            ),
        });
    }
    items.insert(path, item);
    Ok(())
}

fn add_modules(
    spec: &Spec,
    set: &ModuleSet,
    version: &str,
    items: &mut BTreeMap<String, Item>,
) -> Result<(), BuildError> {
    if spec.component(MODULES_COMPONENT).is_none() {
        return Err(BuildError::MissingComponent(MODULES_COMPONENT.to_string()));
    }
    if version.is_empty() || version.contains('/') || version.starts_with('.') {
        return Err(BuildError::Clash {
            path: MODULES_DIR.to_string(),
            reason: format!("'{version}' is not a kernel version"),
        });
    }
    let base = format!("{MODULES_DIR}/{version}");
    let mut dirs = BTreeSet::from([base.clone()]);
    for f in &set.files {
        let mut dir = spec::parent_of(&format!("{base}/{}", f.rel_path)).to_string();
        while dir.len() > base.len() {
            dirs.insert(dir.clone());
            dir = spec::parent_of(&dir).to_string();
        }
    }
    for d in dirs {
        let why = if d == base {
            format!("Modules for kernel {version}.")
        } else {
            "A directory of the kernel's module tree.".to_string()
        };
        let entry = generated_entry(d, Kind::Dir, 0o555, MODULES_COMPONENT, why);
        insert_generated(
            items,
            spec,
            Item {
                entry,
                content: Content::None,
            },
        )?;
    }
    for f in &set.files {
        let why = if f.requested {
            format!(
                "Kernel module {} loaded early at boot (listed in /etc/kios/modules).",
                f.name
            )
        } else if !f.needed_by.is_empty() {
            let by: Vec<_> = f.needed_by.iter().cloned().collect();
            format!("Kernel module {}, needed by {}.", f.name, by.join(", "))
        } else {
            let of: Vec<_> = f.soft_of.iter().cloned().collect();
            format!(
                "Kernel module {}, a soft dependency of {} (loaded before or after it, as modprobe does).",
                f.name,
                of.join(", ")
            )
        };
        let mut entry = generated_entry(
            format!("{base}/{}", f.rel_path),
            Kind::File,
            0o444,
            MODULES_COMPONENT,
            why,
        );
        entry.source = "kernel modules tree".to_string();
        entry.used_by = vec!["kios-init".to_string()];
        insert_generated(
            items,
            spec,
            Item {
                entry,
                content: Content::Host(set.root.join(&f.rel_path)),
            },
        )?;
    }
    let index = [
        (
            "modules.dep",
            "Which module needs which, for the modules in this image; kios-init loads dependencies first.",
            set.modules_dep(),
        ),
        (
            "modules.softdep",
            "The kernel's soft dependencies of the modules in this image (e.g. ext4 pre: crypto-crc32c); kios-init loads them as modprobe does.",
            set.modules_softdep(),
        ),
        (
            "modules.alias",
            "The kernel's aliases of the modules in this image (e.g. crypto-crc32c -> crc32c_generic); kios-init resolves soft dependencies and listed aliases with them.",
            set.modules_alias(),
        ),
        (
            "modules.builtin",
            "The built-in modules the early list reaches; kios-init counts them as loaded.",
            set.modules_builtin(),
        ),
    ];
    for (file, why, text) in index {
        let mut entry = generated_entry(
            format!("{base}/{file}"),
            Kind::File,
            0o444,
            MODULES_COMPONENT,
            why.to_string(),
        );
        entry.source = "generated".to_string();
        entry.used_by = vec!["kios-init".to_string(), "modprobe".to_string()];
        insert_generated(
            items,
            spec,
            Item {
                entry,
                content: Content::Bytes(text.into_bytes()),
            },
        )?;
    }
    Ok(())
}

/// Resolves an image path through the spec's symlinks (e.g. /lib64 -> lib).
fn canonical_image_path(items: &BTreeMap<String, Item>, path: &str) -> String {
    let mut out = String::from("/");
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let candidate = join_image(&out, part);
        let is_last = i + 1 == parts.len();
        match items.get(&candidate) {
            Some(item) if !is_last && item.entry.kind == Kind::Symlink => {
                let t = item.entry.target.clone().unwrap_or_default();
                out = if t.starts_with('/') {
                    t
                } else {
                    join_image(&out, &t)
                };
            }
            _ => out = candidate,
        }
    }
    out
}

fn add_elf_closure(
    opts: &BuildOptions,
    spec: &Spec,
    items: &mut BTreeMap<String, Item>,
) -> Result<(), BuildError> {
    let programs: Vec<(String, PathBuf)> = items
        .values()
        .filter(|i| i.entry.kind == Kind::File && i.entry.presence.in_image())
        .filter_map(|i| match &i.content {
            Content::Host(p) => Some((i.entry.path.clone(), p.clone())),
            _ => None,
        })
        .collect();
    let mut resolver = opts.resolver.clone();
    // Libraries the spec itself places in /lib (musl's libc.so) are provided.
    for path in items.keys() {
        if spec::parent_of(path) == LIB_DIR {
            resolver
                .provided
                .insert(path[LIB_DIR.len() + 1..].to_string());
        }
    }
    let closure = resolver
        .closure(&programs)
        .map_err(|errs| BuildError::Libraries(errs.iter().map(|e| e.to_string()).collect()))?;
    if closure.interpreters.is_empty() && closure.libraries.is_empty() {
        return Ok(());
    }
    if spec.component(LIBRARIES_COMPONENT).is_none() {
        return Err(BuildError::MissingComponent(
            LIBRARIES_COMPONENT.to_string(),
        ));
    }
    let label = |who: &str| {
        if who.starts_with('/') {
            who.to_string()
        } else {
            format!("{LIB_DIR}/{who}")
        }
    };
    for (interp, (host, users)) in &closure.interpreters {
        let users: Vec<String> = users.iter().map(|u| label(u)).collect();
        let path = canonical_image_path(items, interp);
        let why = format!(
            "The dynamic loader (ELF interpreter {interp}) of {}: it loads a program's shared libraries and starts it.",
            users.join(", ")
        );
        let mut entry = generated_entry(path.clone(), Kind::File, 0o500, LIBRARIES_COMPONENT, why);
        entry.source = format!("host:{}", host.display());
        entry.used_by = users.clone();
        match items.get(&path) {
            Some(existing) if existing.entry.presence == Presence::Image => {
                let replaceable = spec.entry(&path).is_some_and(|e| e.replaceable);
                if replaceable {
                    entry.notes = Some(format!(
                        "Loader rule: the spec puts a link to musl's libc.so here; {} are glibc programs and need glibc's real loader, so the build put it here instead.",
                        users.join(", ")
                    ));
                    items.insert(
                        path,
                        Item {
                            entry,
                            content: Content::Host(host.clone()),
                        },
                    );
                } else if !matches!(existing.entry.kind, Kind::File | Kind::Symlink) {
                    return Err(BuildError::Clash {
                        path,
                        reason: format!(
                            "the ELF interpreter of {} is a {} in the spec",
                            users.join(", "),
                            existing.entry.kind.as_str()
                        ),
                    });
                }
                // Otherwise the spec provides this loader (e.g. musl's).
            }
            Some(_) | None => {
                if !parent_is_dir(items, &path) {
                    return Err(BuildError::Clash {
                        path: path.clone(),
                        reason: format!(
                            "the directory of the ELF interpreter of {} is not in the spec",
                            users.join(", ")
                        ),
                    });
                }
                if let Some(e) = spec.entry(&path) {
                    return Err(BuildError::Clash {
                        path,
                        reason: format!(
                            "the ELF interpreter of {} clashes with the spec (line {})",
                            users.join(", "),
                            e.line
                        ),
                    });
                }
                items.insert(
                    path,
                    Item {
                        entry,
                        content: Content::Host(host.clone()),
                    },
                );
            }
        }
    }
    for lib in closure.libraries.values() {
        let path = join_image(LIB_DIR, &lib.name);
        let users: Vec<String> = lib.needed_by.iter().map(|u| label(u)).collect();
        let why = format!(
            "Shared library {}, needed by {}.",
            lib.name,
            users.join(", ")
        );
        let mut entry = generated_entry(path.clone(), Kind::File, 0o444, LIBRARIES_COMPONENT, why);
        entry.source = format!("host:{}", lib.host_path.display());
        entry.used_by = users;
        insert_generated(
            items,
            spec,
            Item {
                entry,
                content: Content::Host(lib.host_path.clone()),
            },
        )?;
    }
    Ok(())
}

/// Writes the os-release entries of the spec (their BUILD_ID from the
/// digests of every other file, unless given) and hashes them.
fn add_os_release(spec: &Spec, release: &Release, items: &mut BTreeMap<String, Item>) -> String {
    let targets: Vec<String> = spec
        .entries
        .iter()
        .filter(|e| e.source == Some(Source::Generated(Generated::OsRelease)))
        .map(|e| e.path.clone())
        .collect();
    let build_id = release.build_id.clone().unwrap_or_else(|| {
        let mut listing = Vec::new();
        for item in items.values() {
            if targets.contains(&item.entry.path) || !item.entry.presence.in_image() {
                continue;
            }
            listing.extend_from_slice(item.entry.path.as_bytes());
            listing.push(0);
            if let Some(sha) = &item.entry.sha256 {
                listing.extend_from_slice(sha);
            }
        }
        hash::hex(&hash::sha256_bytes(&listing))[..16].to_string()
    });
    let text = release.os_release(&build_id).into_bytes();
    for path in targets {
        if let Some(item) = items.get_mut(&path) {
            item.entry.size = Some(text.len() as u64);
            item.entry.sha256 = Some(hash::sha256_bytes(&text));
            item.content = Content::Bytes(text.clone());
        }
    }
    build_id
}

fn hash_contents(items: &mut BTreeMap<String, Item>) -> Result<(), BuildError> {
    for item in items.values_mut() {
        if item.entry.kind != Kind::File
            || !item.entry.presence.in_image()
            || item.entry.path == INVENTORY_PATH
        {
            continue;
        }
        let (digest, size) = match &item.content {
            Content::Host(p) => hash::sha256_file(p).map_err(|source| BuildError::Read {
                path: p.clone(),
                source,
            })?,
            Content::Bytes(b) => (hash::sha256_bytes(b), b.len() as u64),
            Content::None => continue,
        };
        item.entry.size = Some(size);
        item.entry.sha256 = Some(digest);
    }
    let files: BTreeMap<String, (Option<u64>, Option<[u8; 32]>)> = items
        .values()
        .filter(|i| i.entry.kind == Kind::File)
        .map(|i| (i.entry.path.clone(), (i.entry.size, i.entry.sha256)))
        .collect();
    for item in items
        .values_mut()
        .filter(|i| i.entry.kind == Kind::Hardlink)
    {
        if let Some((size, sha)) = item.entry.target.as_ref().and_then(|t| files.get(t)) {
            item.entry.size = *size;
            item.entry.sha256 = *sha;
        }
    }
    Ok(())
}

fn open_content(item: &Item) -> Result<(u64, Box<dyn Read>), BuildError> {
    match &item.content {
        Content::Host(p) => {
            let f = std::fs::File::open(p).map_err(|source| BuildError::Read {
                path: p.clone(),
                source,
            })?;
            let len = f
                .metadata()
                .map_err(|source| BuildError::Read {
                    path: p.clone(),
                    source,
                })?
                .len();
            Ok((len, Box::new(f)))
        }
        Content::Bytes(b) => Ok((b.len() as u64, Box::new(std::io::Cursor::new(b.clone())))),
        Content::None => Ok((0, Box::new(std::io::empty()))),
    }
}

/// Writes the image as a directory tree at `dest` (created; must be absent or
/// empty). Needs root for owners and device nodes. Returns the inventory.
pub fn build_tree(opts: &BuildOptions, dest: &Path) -> Result<Inventory, BuildError> {
    let plan = plan(opts)?;
    write_tree(&plan, dest)?;
    // Self-check: the tree must verify clean against its own inventory.
    let report =
        crate::verify::verify_tree(dest, &plan.inventory, &crate::VerifyOptions::default())
            .map_err(|e| BuildError::SelfCheck(vec![e.to_string()]))?;
    if !report.is_clean() {
        let lines = report
            .findings
            .iter()
            .map(|f| format!("{} {}: {}", f.problem.as_str(), f.path, f.detail))
            .collect();
        return Err(BuildError::SelfCheck(lines));
    }
    Ok(plan.inventory)
}

/// Writes a plan as a directory tree.
pub fn write_tree(plan: &Plan, dest: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::{lchown, PermissionsExt};
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Write { path, source }
    };
    if let Ok(mut rd) = std::fs::read_dir(dest) {
        if rd.next().is_some() {
            return Err(BuildError::DestNotEmpty(dest.to_path_buf()));
        }
    }
    std::fs::create_dir_all(dest).map_err(werr(dest))?;
    let live = |p: &str| dest.join(p.trim_start_matches('/'));
    // Directories first (private while filling), then files, links, devices.
    for item in &plan.items {
        let e = &item.entry;
        let path = live(&e.path);
        match e.kind {
            Kind::Dir | Kind::Mount if e.path != "/" => {
                std::fs::create_dir(&path).map_err(werr(&path))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                    .map_err(werr(&path))?;
            }
            Kind::File => {
                let (_, mut r) = open_content(item)?;
                let mut f = std::fs::File::create(&path).map_err(werr(&path))?;
                std::io::copy(&mut r, &mut f).map_err(werr(&path))?;
            }
            Kind::Symlink => {
                let t = e.target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(t, &path).map_err(werr(&path))?;
            }
            Kind::Device => {
                let d = e.device.unwrap_or(crate::inventory::Device {
                    block: false,
                    major: 0,
                    minor: 0,
                });
                let kind = if d.block {
                    nix::sys::stat::SFlag::S_IFBLK
                } else {
                    nix::sys::stat::SFlag::S_IFCHR
                };
                let perm = nix::sys::stat::Mode::from_bits_truncate(e.mode);
                let dev = nix::sys::stat::makedev(u64::from(d.major), u64::from(d.minor));
                nix::sys::stat::mknod(&path, kind, perm, dev).map_err(|errno| {
                    BuildError::Write {
                        path: path.clone(),
                        source: errno.into(),
                    }
                })?;
            }
            _ => {}
        }
    }
    for item in plan.items.iter().filter(|i| i.entry.kind == Kind::Hardlink) {
        let path = live(&item.entry.path);
        let target = live(item.entry.target.as_deref().unwrap_or_default());
        std::fs::hard_link(&target, &path).map_err(werr(&path))?;
    }
    // Owners and modes; directories deepest first so they stay writable while needed.
    for item in plan.items.iter().rev() {
        let e = &item.entry;
        let path = live(&e.path);
        lchown(&path, Some(e.uid), Some(e.gid)).map_err(werr(&path))?;
        if e.kind != Kind::Symlink {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
                .map_err(werr(&path))?;
        }
    }
    Ok(())
}

/// Writes the image as a newc cpio initramfs at `out`. Returns the inventory.
pub fn build_cpio(
    opts: &BuildOptions,
    out: &Path,
    compression: Compression,
) -> Result<Inventory, BuildError> {
    let plan = plan(opts)?;
    // Written next to `out` and renamed into place: a failed build never
    // leaves a truncated image behind.
    let mut tmp_name = out.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = out.with_file_name(tmp_name);
    let result = std::fs::File::create(&tmp)
        .and_then(|file| write_cpio(&plan, BufWriter::with_capacity(1 << 20, file), compression))
        .and_then(|()| std::fs::rename(&tmp, out));
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(BuildError::Write {
            path: out.to_path_buf(),
            source,
        });
    }
    Ok(plan.inventory)
}

/// Writes a plan as a (compressed) newc cpio archive.
pub fn write_cpio<W: Write>(plan: &Plan, out: W, compression: Compression) -> std::io::Result<()> {
    match compression {
        Compression::None => {
            let mut w = write_archive(plan, out)?;
            w.flush()
        }
        Compression::Gzip => {
            let enc = flate2::GzBuilder::new()
                .mtime(0)
                .write(out, flate2::Compression::default());
            write_archive(plan, enc)?.finish()?.flush()
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::Encoder::new(out, 12)?;
            enc.include_checksum(true)?;
            write_archive(plan, enc)?.finish()?.flush()
        }
    }
}

fn write_archive<W: Write>(plan: &Plan, out: W) -> std::io::Result<W> {
    let to_io = |e: BuildError| std::io::Error::other(e.to_string());
    // Inode numbers in path order; hard links share their target's.
    let mut ino: BTreeMap<&str, u32> = BTreeMap::new();
    for (i, item) in plan.items.iter().enumerate() {
        ino.insert(item.entry.path.as_str(), i as u32 + 1);
    }
    // Hard link groups: target -> members in archive order.
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for item in &plan.items {
        let e = &item.entry;
        if e.kind == Kind::Hardlink {
            if let Some(t) = e.target.as_deref() {
                groups
                    .entry(t)
                    .or_insert_with(|| vec![t])
                    .push(e.path.as_str());
            }
        }
    }
    for members in groups.values_mut() {
        members.sort();
    }
    let mut w = cpio::Writer::new(out);
    for item in &plan.items {
        let e = &item.entry;
        let name = if e.path == "/" {
            ".".to_string()
        } else {
            e.path[1..].to_string()
        };
        let group_key = match e.kind {
            Kind::Hardlink => e.target.as_deref(),
            Kind::File => groups
                .contains_key(e.path.as_str())
                .then_some(e.path.as_str()),
            _ => None,
        };
        let mut h = cpio::Header {
            ino: ino[e.path.as_str()],
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            nlink: 1,
            mtime: FIXED_MTIME,
            rdev_major: 0,
            rdev_minor: 0,
        };
        match e.kind {
            Kind::Dir | Kind::Mount => {
                h.mode |= cpio::S_IFDIR;
                h.nlink = 2;
                w.entry(&name, &h, 0, &mut std::io::empty())?;
            }
            Kind::Symlink => {
                h.mode = 0o777 | cpio::S_IFLNK;
                let t = e.target.clone().unwrap_or_default().into_bytes();
                w.entry(&name, &h, t.len() as u64, &mut t.as_slice())?;
            }
            Kind::Device => {
                let d = e.device.unwrap_or(crate::inventory::Device {
                    block: false,
                    major: 0,
                    minor: 0,
                });
                h.mode |= if d.block {
                    cpio::S_IFBLK
                } else {
                    cpio::S_IFCHR
                };
                h.rdev_major = d.major;
                h.rdev_minor = d.minor;
                w.entry(&name, &h, 0, &mut std::io::empty())?;
            }
            Kind::File | Kind::Hardlink => {
                h.mode |= cpio::S_IFREG;
                let (size, mut data): (u64, Box<dyn Read>) =
                    match group_key.and_then(|k| groups.get(k)) {
                        Some(members) => {
                            h.ino = members.iter().map(|m| ino[m]).min().unwrap_or(h.ino);
                            h.nlink = members.len() as u32;
                            // newc convention: the data travels with the last link.
                            if members.last() == Some(&e.path.as_str()) {
                                let target = group_key.unwrap_or_default();
                                let source = plan.items.iter().find(|i| i.entry.path == target);
                                match source {
                                    Some(s) => open_content(s).map_err(to_io)?,
                                    None => (0, Box::new(std::io::empty())),
                                }
                            } else {
                                (0, Box::new(std::io::empty()))
                            }
                        }
                        None => open_content(item).map_err(to_io)?,
                    };
                w.entry(&name, &h, size, &mut data)?;
            }
        }
    }
    w.finish()
}
