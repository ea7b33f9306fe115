//! Early kernel modules for the image builder: reads `modules.dep` (and
//! `modules.builtin`) of an extracted kernel's `lib/modules/<version>`
//! directory, takes the named modules with their dependency closure, and
//! writes a `modules.dep` for exactly the copied set. Module files are
//! copied as they are (plain `.ko`, or compressed when the kernel tree
//! ships them so: the kernel decompresses those itself).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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
    /// Names of the modules that need it.
    pub needed_by: BTreeSet<String>,
}

/// The modules to put into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSet {
    pub root: PathBuf,
    /// Sorted by relative path.
    pub files: Vec<ModuleFile>,
    /// The requested names that are modules, in the order given: the
    /// content of /etc/kios/modules.
    pub load_list: Vec<String>,
    /// Requested names built into the kernel (nothing to load).
    pub builtin: Vec<String>,
}

/// `kernel/fs/ext4/ext4.ko.xz` -> `ext4`; `-` and `_` are the same in names.
pub fn module_name(rel_path: &str) -> String {
    let base = rel_path.rsplit('/').next().unwrap_or(rel_path);
    let stem = base.split(".ko").next().unwrap_or(base);
    normalize(stem)
}

fn normalize(name: &str) -> String {
    name.trim().replace('-', "_")
}

fn read(path: &Path) -> Result<String, KmodError> {
    std::fs::read_to_string(path).map_err(|source| KmodError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses modules.dep text: relative path -> direct dependencies.
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
        let (module, rest) = line.split_once(':').ok_or(KmodError::Malformed {
            path: path.to_path_buf(),
            line: i + 1,
        })?;
        let module = module.trim();
        if module.is_empty() || module.starts_with('/') || module.split('/').any(|p| p == "..") {
            return Err(KmodError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
            });
        }
        deps.insert(
            module.to_string(),
            rest.split_whitespace().map(str::to_string).collect(),
        );
    }
    Ok(deps)
}

/// Resolves `names` in the tree at `root` (a `lib/modules/<version>` directory).
pub fn resolve(root: &Path, names: &[String]) -> Result<ModuleSet, KmodError> {
    let dep_path = root.join("modules.dep");
    let deps = parse_modules_dep(&dep_path, &read(&dep_path)?)?;
    let by_name: BTreeMap<String, &String> = deps.keys().map(|p| (module_name(p), p)).collect();
    let builtin_names: BTreeSet<String> =
        match std::fs::read_to_string(root.join("modules.builtin")) {
            Ok(text) => text.lines().map(module_name).collect(),
            Err(_) => BTreeSet::new(),
        };

    let mut files: BTreeMap<String, ModuleFile> = BTreeMap::new();
    let mut load_list = Vec::new();
    let mut builtin = Vec::new();
    let mut missing = Vec::new();
    let mut stack: Vec<(String, Option<String>)> = Vec::new();
    for raw in names {
        let name = normalize(raw);
        if name.is_empty() || load_list.contains(&name) || builtin.contains(&name) {
            continue;
        }
        match by_name.get(&name) {
            Some(path) => {
                load_list.push(name);
                stack.push(((*path).clone(), None));
            }
            None if builtin_names.contains(&name) => builtin.push(name),
            None => missing.push(match alias_targets(root, &name) {
                Some(targets) => format!("{raw} (an alias of {targets}: name the module)"),
                None => raw.clone(),
            }),
        }
    }
    if !missing.is_empty() {
        return Err(KmodError::NotFound {
            path: root.to_path_buf(),
            names: missing,
        });
    }
    while let Some((rel, needed_by)) = stack.pop() {
        let requested = needed_by.is_none();
        if let Some(f) = files.get_mut(&rel) {
            f.requested |= requested;
            f.needed_by.extend(needed_by);
            continue;
        }
        let Some(direct) = deps.get(&rel) else {
            missing.push(rel);
            continue;
        };
        let name = module_name(&rel);
        for d in direct {
            stack.push((d.clone(), Some(name.clone())));
        }
        files.insert(
            rel.clone(),
            ModuleFile {
                rel_path: rel,
                name,
                deps: direct.clone(),
                requested,
                needed_by: needed_by.into_iter().collect(),
            },
        );
    }
    if !missing.is_empty() {
        return Err(KmodError::NotFound {
            path: root.to_path_buf(),
            names: missing,
        });
    }
    Ok(ModuleSet {
        root: root.to_path_buf(),
        files: files.into_values().collect(),
        load_list,
        builtin,
    })
}

/// The modules an exact (non-wildcard) alias in modules.alias names, if any.
fn alias_targets(root: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(root.join("modules.alias")).ok()?;
    let targets: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("alias"), Some(a), Some(t)) if normalize(a) == name => Some(t),
                _ => None,
            }
        })
        .collect();
    (!targets.is_empty()).then(|| targets.join(", "))
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
    fn an_alias_is_explained() {
        let d = tree(DEP, "");
        std::fs::write(
            d.path().join("modules.alias"),
            "alias crc32c crc32c_generic\nalias crypto-crc32c crc32c_generic\n",
        )
        .unwrap();
        let err = resolve(d.path(), &["crc32c".to_string()]).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("crc32c (an alias of crc32c_generic: name the module)"),
            "{err}"
        );
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
