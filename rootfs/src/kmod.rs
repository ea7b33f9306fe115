//! Early kernel modules for the image builder: reads the module index
//! (`modules.dep`, `modules.softdep`, `modules.alias`, `modules.builtin`) of
//! an extracted kernel's `lib/modules/<version>` directory and takes the
//! named modules (or aliases) with everything modprobe would load for them
//! ([`crate::modprobe`]): modules.dep dependencies and soft dependencies
//! with every module their aliases name (so `ext4` brings crc32c). It
//! writes the index for exactly the copied set. Module files are copied as
//! they are (plain `.ko`, or compressed when the kernel tree ships them so:
//! the kernel decompresses those itself).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::modprobe::{self, ModuleIndex, Problem, Reason};

pub use crate::modprobe::module_name;

/// Errors of resolving modules.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: malformed modules.dep line")]
    Malformed { path: PathBuf, line: usize },
    #[error("kernel modules not found in {path}: {}", .names.join(", "))]
    NotFound { path: PathBuf, names: Vec<String> },
    #[error("kernel modules of {path}: {}", .problems.join("; "))]
    Unresolvable {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// One module file to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// Relative to the modules root, e.g. `kernel/fs/ext4/ext4.ko`.
    pub rel_path: String,
    /// Module name, e.g. `ext4`.
    pub name: String,
    /// Relative paths of direct dependencies, as in modules.dep.
    pub deps: Vec<String>,
    /// Named in the early list (not only needed by another).
    pub requested: bool,
    /// Names of the modules whose modules.dep line names it.
    pub needed_by: BTreeSet<String>,
    /// Names of the modules that name it as a soft dependency.
    pub soft_of: BTreeSet<String>,
}

/// The modules to put into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSet {
    pub root: PathBuf,
    /// Sorted by relative path.
    pub files: Vec<ModuleFile>,
    /// The requested names that are modules or aliases, in the order
    /// given: the content of /etc/kios/modules.
    pub load_list: Vec<String>,
    /// Requested names built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// modules.softdep, modules.alias and modules.builtin lines that concern
    /// the copied set.
    softdep_lines: Vec<String>,
    alias_lines: Vec<String>,
    builtin_lines: Vec<String>,
}

fn read(path: &Path) -> Result<String, KmodError> {
    std::fs::read_to_string(path).map_err(|source| KmodError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// An optional file of the index: empty when it does not exist.
fn read_optional(path: &Path) -> Result<String, KmodError> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        other => other.map_err(|source| KmodError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses modules.dep text: relative path -> direct dependencies. Refuses
/// lines without `:` and paths that leave the tree (the builder copies by
/// these paths).
pub fn parse_modules_dep(
    path: &Path,
    text: &str,
) -> Result<BTreeMap<String, Vec<String>>, KmodError> {
    let mut deps = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let malformed = || KmodError::Malformed {
            path: path.to_path_buf(),
            line: i + 1,
        };
        let (module, rest) = line.split_once(':').ok_or_else(malformed)?;
        let module = module.trim();
        let rest: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
        let escapes = |p: &str| p.starts_with('/') || p.split('/').any(|c| c == "..");
        if module.is_empty() || escapes(module) || rest.iter().any(|d| escapes(d)) {
            return Err(malformed());
        }
        deps.insert(module.to_string(), rest);
    }
    Ok(deps)
}

/// Resolves `names` in the tree at `root` (a `lib/modules/<version>` directory).
pub fn resolve(root: &Path, names: &[String]) -> Result<ModuleSet, KmodError> {
    let dep_path = root.join("modules.dep");
    let dep_text = read(&dep_path)?;
    parse_modules_dep(&dep_path, &dep_text)?;
    let softdep = read_optional(&root.join("modules.softdep"))?;
    let alias = read_optional(&root.join("modules.alias"))?;
    let builtin_text = read_optional(&root.join("modules.builtin"))?;
    let index = ModuleIndex::parse(&dep_text, &softdep, &alias, &builtin_text);

    let mut load_list = Vec::new();
    let mut builtin = Vec::new();
    let mut missing = Vec::new();
    for raw in names {
        let name = modprobe::normalize_alias(raw.trim());
        if name.is_empty() || load_list.contains(&name) || builtin.contains(&name) {
            continue;
        }
        match index.lookup(&name) {
            modprobe::Lookup::Module(_) | modprobe::Lookup::Alias(_) => load_list.push(name),
            modprobe::Lookup::Builtin(_) => builtin.push(name),
            modprobe::Lookup::NotFound => missing.push(raw.trim().to_string()),
        }
    }
    if !missing.is_empty() {
        return Err(KmodError::NotFound {
            path: root.to_path_buf(),
            names: missing,
        });
    }
    let plan = index.plan(&load_list);
    let mut problems = Vec::new();
    for p in &plan.problems {
        match p {
            // Optional, as for modprobe (e.g. an accelerated variant this
            // kernel does not build).
            Problem::SoftNotFound { .. } => {}
            Problem::NotFound { name } => missing.push(name.clone()),
            Problem::Unlisted { path, of } => missing.push(format!("{path} (needed by {of})")),
            Problem::Cycle { chain } => {
                problems.push(format!("dependency cycle {}", chain.join(" -> ")))
            }
            Problem::TooDeep { name } => {
                problems.push(format!("{name}: soft dependencies nested too deep"))
            }
        }
    }
    if !missing.is_empty() {
        return Err(KmodError::NotFound {
            path: root.to_path_buf(),
            names: missing,
        });
    }
    if !problems.is_empty() {
        return Err(KmodError::Unresolvable {
            path: root.to_path_buf(),
            problems,
        });
    }

    let mut files: Vec<ModuleFile> = plan
        .steps
        .iter()
        .map(|step| {
            let mut f = ModuleFile {
                rel_path: step.path.clone(),
                name: step.name.clone(),
                deps: step.deps.clone(),
                requested: false,
                needed_by: BTreeSet::new(),
                soft_of: BTreeSet::new(),
            };
            for r in &step.reasons {
                match r {
                    Reason::Listed => f.requested = true,
                    Reason::DependencyOf(m) => {
                        f.needed_by.insert(m.clone());
                    }
                    Reason::SoftDependencyOf(m) => {
                        f.soft_of.insert(m.clone());
                    }
                }
            }
            f
        })
        .collect();
    // A module listed through an alias is requested too.
    for f in &mut files {
        f.requested |= load_list.contains(&f.name);
    }
    files.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));

    let copied: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let softdep_lines = softdep
        .lines()
        .filter(|l| {
            modprobe::parse_softdeps(l)
                .first()
                .is_some_and(|s| copied.iter().any(|m| modprobe::glob_match(&s.pattern, m)))
        })
        .map(str::to_string)
        .collect();
    let alias_lines = alias
        .lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some("alias")
                && w.nth(1)
                    .is_some_and(|m| copied.contains(module_name(m).as_str()))
        })
        .map(str::to_string)
        .collect();
    let builtin_lines = builtin_text
        .lines()
        .filter(|l| {
            let n = module_name(l);
            plan.builtin.contains(&n) || builtin.contains(&n)
        })
        .map(str::to_string)
        .collect();
    Ok(ModuleSet {
        root: root.to_path_buf(),
        files,
        load_list,
        builtin,
        softdep_lines,
        alias_lines,
        builtin_lines,
    })
}

fn lines(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

impl ModuleSet {
    /// modules.dep for the copied set, sorted.
    pub fn modules_dep(&self) -> String {
        let mut out = String::new();
        for f in &self.files {
            out.push_str(&f.rel_path);
            out.push(':');
            for d in &f.deps {
                out.push(' ');
                out.push_str(d);
            }
            out.push('\n');
        }
        out
    }

    /// The kernel's modules.softdep lines for copied modules.
    pub fn modules_softdep(&self) -> String {
        lines(&self.softdep_lines)
    }

    /// The kernel's modules.alias lines naming copied modules.
    pub fn modules_alias(&self) -> String {
        lines(&self.alias_lines)
    }

    /// The kernel's modules.builtin lines of the built-in modules met.
    pub fn modules_builtin(&self) -> String {
        lines(&self.builtin_lines)
    }

    /// /etc/kios/modules: one name per line.
    pub fn load_list_text(&self) -> String {
        self.load_list.iter().map(|n| format!("{n}\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dep: &str, builtin: &str) -> tempdir::Dir {
        let d = tempdir::Dir::new("kmod");
        std::fs::write(d.path().join("modules.dep"), dep).unwrap();
        std::fs::write(d.path().join("modules.builtin"), builtin).unwrap();
        d
    }

    mod tempdir {
        /// A directory removed on drop.
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new(tag: &str) -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "kios-rootfs-{tag}-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const DEP: &str =
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n\
kernel/lib/crc16.ko:\n\
kernel/fs/mbcache.ko:\n\
kernel/fs/jbd2/jbd2.ko: kernel/lib/crc32c_generic.ko\n\
kernel/lib/crc32c_generic.ko:\n\
kernel/drivers/block/virtio_blk.ko.xz:\n\
kernel/fs/overlayfs/overlay.ko:\n";

    #[test]
    fn closure_and_modules_dep() {
        let d = tree(DEP, "kernel/drivers/virtio/virtio_pci.ko\n");
        let names: Vec<String> = ["ext4", "virtio-blk", "virtio_pci"]
            .map(String::from)
            .to_vec();
        let set = resolve(d.path(), &names).unwrap();
        let paths: Vec<&str> = set.files.iter().map(|f| f.rel_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "kernel/drivers/block/virtio_blk.ko.xz",
                "kernel/fs/ext4/ext4.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
                "kernel/lib/crc32c_generic.ko",
            ]
        );
        assert_eq!(set.load_list, ["ext4", "virtio_blk"]);
        assert_eq!(set.builtin, ["virtio_pci"]);
        let crc = set
            .files
            .iter()
            .find(|f| f.name == "crc32c_generic")
            .unwrap();
        assert!(!crc.requested);
        assert!(crc.needed_by.contains("jbd2"));
        let dep = set.modules_dep();
        assert!(
            dep.contains("kernel/fs/jbd2/jbd2.ko: kernel/lib/crc32c_generic.ko\n"),
            "{dep}"
        );
        assert!(!dep.contains("overlay"));
        assert_eq!(set.load_list_text(), "ext4\nvirtio_blk\n");
    }

    #[test]
    fn a_listed_alias_brings_its_modules() {
        let d = tree(DEP, "");
        std::fs::write(
            d.path().join("modules.alias"),
            "alias crc32c crc32c_generic\nalias crypto-crc32c crc32c_generic\n",
        )
        .unwrap();
        let set = resolve(d.path(), &["crc32c".to_string()]).unwrap();
        assert_eq!(set.load_list, ["crc32c"]);
        let names: Vec<&str> = set.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["crc32c_generic"]);
        assert!(set.files[0].requested);
        assert_eq!(
            set.modules_alias(),
            "alias crc32c crc32c_generic\nalias crypto-crc32c crc32c_generic\n"
        );
    }

    fn debian_tree() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/debian-6.1.0-57")
    }

    #[test]
    fn an_image_listing_ext4_carries_crc32c_and_its_index() {
        let admin = crate::modprobe::tests::admin_list();
        let names: Vec<String> = admin.iter().map(|n| n.to_string()).collect();
        let set = resolve(&debian_tree(), &names).unwrap();
        let crc: Vec<&ModuleFile> = set
            .files
            .iter()
            .filter(|f| f.name.starts_with("crc32c"))
            .collect();
        assert_eq!(crc.len(), 2, "{:?}", set.files);
        assert!(crc
            .iter()
            .all(|f| f.soft_of.contains("ext4") && f.soft_of.contains("jbd2")));
        assert!(crc.iter().all(|f| !f.requested));
        assert_eq!(set.load_list, admin);
        let softdep = set.modules_softdep();
        assert_eq!(
            softdep,
            "softdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\n"
        );
        let alias = set.modules_alias();
        assert!(
            alias.contains("alias crypto-crc32c crc32c_generic\n"),
            "{alias}"
        );
        assert!(
            alias.contains("alias crypto-crc32c crc32c_intel\n"),
            "{alias}"
        );
        assert!(
            !alias.contains("libcrc32c") && !alias.contains("xfs"),
            "{alias}"
        );

        // kios-init, reading the image's index, plans what the kernel's
        // own index plans.
        let read = |f: &str| std::fs::read_to_string(debian_tree().join(f)).unwrap();
        let full = ModuleIndex::parse(
            &read("modules.dep"),
            &read("modules.softdep"),
            &read("modules.alias"),
            &read("modules.builtin"),
        );
        let image = ModuleIndex::parse(
            &set.modules_dep(),
            &set.modules_softdep(),
            &set.modules_alias(),
            &set.modules_builtin(),
        );
        assert_eq!(image.plan(&names), full.plan(&names));
    }

    #[test]
    fn unknown_modules_are_listed_together() {
        let d = tree(DEP, "");
        let err = resolve(
            d.path(),
            &["nope".to_string(), "ext4".to_string(), "gone".to_string()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope, gone"), "{err}");
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let d = tree("kernel/a.ko:\nno colon here\n", "");
        let err = resolve(d.path(), &["a".to_string()]).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("modules.dep:2: malformed modules.dep line"),
            "{err}"
        );
    }
}
