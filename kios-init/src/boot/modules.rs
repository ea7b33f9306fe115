//! Early kernel modules: the names in /etc/kios/modules (one per line, `#`
//! comments) are loaded with their dependencies from
//! /lib/modules/<uname -r>/modules.dep, dependencies first, each module
//! once, dependency cycles detected and reported. Loading uses
//! finit_module(2); compressed modules (.ko.xz, .ko.zst, .ko.gz) are handed
//! to the kernel with MODULE_INIT_COMPRESSED_FILE so it decompresses them
//! (needs Linux 6.4+ with CONFIG_MODULE_DECOMPRESS). An already loaded
//! module (EEXIST) is fine; a built-in one (modules.builtin) is skipped. A
//! missing module is a clear kernel-log error and boot continues.

use crate::sys::{Sys, MODULE_INIT_COMPRESSED_FILE};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const MODULES_LIST: &str = "/etc/kios/modules";
pub const MODULES_ROOT: &str = "/lib/modules";
/// Largest modules.dep / modules.builtin read (a distribution kernel's
/// modules.dep is under 1 MiB).
pub const DEP_LIMIT: usize = 16 * 1024 * 1024;
/// Largest /etc/kios/modules read and most names taken from it.
pub const LIST_LIMIT: usize = 64 * 1024;
pub const MAX_WANTED: usize = 512;
/// Deepest dependency chain followed.
pub const MAX_DEPTH: usize = 64;

/// A problem with one module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error("module {name}: not found in {dep_file}")]
    NotFound { name: String, dep_file: String },
    #[error("module dependency cycle: {}", chain.join(" -> "))]
    Cycle { chain: Vec<String> },
    #[error("module {name}: dependency chain deeper than {MAX_DEPTH}")]
    TooDeep { name: String },
    #[error("load module {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("read {path}: {reason}")]
    Read { path: String, reason: String },
}

/// Module name as the kernel knows it: file name without `.ko[.xz|.zst|.gz]`,
/// with `-` as `_`.
pub fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// Whether the kernel has to decompress this module file.
pub fn is_compressed(path: &str) -> bool {
    path.ends_with(".ko.xz") || path.ends_with(".ko.zst") || path.ends_with(".ko.gz")
}

/// The parsed modules.dep: name -> (relative path, dependency names).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModulesDep {
    pub modules: BTreeMap<String, (String, Vec<String>)>,
}

impl ModulesDep {
    /// Parse modules.dep text (`path: dep dep ...` per line).
    pub fn parse(text: &str) -> ModulesDep {
        let mut modules = BTreeMap::new();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(module_name).collect();
            modules.insert(module_name(path), (path.to_string(), deps));
        }
        ModulesDep { modules }
    }
}

/// Parse /etc/kios/modules: one name per line, `#` comments, blanks
/// ignored; names normalised (`-` -> `_`), duplicates dropped.
pub fn parse_module_list(text: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let name = line.split('#').next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        let n = module_name(name);
        if seen.insert(n.clone()) && out.len() < MAX_WANTED {
            out.push(n);
        }
    }
    out
}

/// Load order for `wanted`: relative paths, dependencies first, each once.
/// Names that are built in are left out; unknown names and cycles are
/// errors (the rest is still ordered).
pub fn load_order(
    dep: &ModulesDep,
    builtin: &BTreeSet<String>,
    wanted: &[String],
    dep_file: &str,
) -> (Vec<String>, Vec<ModuleError>) {
    #[derive(PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    struct Walk<'a> {
        dep: &'a ModulesDep,
        builtin: &'a BTreeSet<String>,
        dep_file: &'a str,
        marks: BTreeMap<String, Mark>,
        stack: Vec<String>,
        order: Vec<String>,
        errors: Vec<ModuleError>,
    }
    impl Walk<'_> {
        fn visit(&mut self, name: &str) {
            match self.marks.get(name) {
                Some(Mark::Done) => return,
                Some(Mark::Visiting) => {
                    let start = self.stack.iter().position(|n| n == name).unwrap_or(0);
                    let mut chain = self.stack[start..].to_vec();
                    chain.push(name.to_string());
                    self.errors.push(ModuleError::Cycle { chain });
                    return;
                }
                None => {}
            }
            if self.stack.len() >= MAX_DEPTH {
                self.errors.push(ModuleError::TooDeep {
                    name: name.to_string(),
                });
                return;
            }
            let Some((path, deps)) = self.dep.modules.get(name) else {
                self.marks.insert(name.to_string(), Mark::Done);
                if !self.builtin.contains(name) {
                    self.errors.push(ModuleError::NotFound {
                        name: name.to_string(),
                        dep_file: self.dep_file.to_string(),
                    });
                }
                return;
            };
            self.marks.insert(name.to_string(), Mark::Visiting);
            self.stack.push(name.to_string());
            for d in deps {
                self.visit(d);
            }
            self.stack.pop();
            self.marks.insert(name.to_string(), Mark::Done);
            self.order.push(path.clone());
        }
    }
    let mut w = Walk {
        dep,
        builtin,
        dep_file,
        marks: BTreeMap::new(),
        stack: Vec::new(),
        order: Vec::new(),
        errors: Vec::new(),
    };
    for name in wanted {
        w.visit(&module_name(name));
    }
    (w.order, w.errors)
}

/// What loading did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModulesReport {
    /// Modules loaded now (names).
    pub loaded: Vec<String>,
    /// Modules that were already loaded (EEXIST).
    pub already: Vec<String>,
    /// Problems (each kernel-logged at error level).
    pub errors: Vec<String>,
}

fn read_text(sys: &dyn Sys, path: &Path, limit: usize) -> Result<Option<String>, ModuleError> {
    match sys.read_file(path, limit) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModuleError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Load the modules listed in /etc/kios/modules. Does nothing (and reads
/// nothing else) when the list does not exist.
pub fn load_early_modules(sys: &dyn Sys) -> ModulesReport {
    let mut report = ModulesReport::default();
    let error = |report: &mut ModulesReport, e: ModuleError| {
        crate::kerr!("{e}");
        report.errors.push(e.to_string());
    };
    let wanted = match read_text(sys, Path::new(MODULES_LIST), LIST_LIMIT) {
        Ok(Some(text)) => parse_module_list(&text),
        Ok(None) => return report,
        Err(e) => {
            error(&mut report, e);
            return report;
        }
    };
    if wanted.is_empty() {
        return report;
    }
    let release = match sys.kernel_release() {
        Ok(r) => r,
        Err(e) => {
            error(
                &mut report,
                ModuleError::Read {
                    path: "uname".into(),
                    reason: e.to_string(),
                },
            );
            return report;
        }
    };
    let base = PathBuf::from(MODULES_ROOT).join(&release);
    let dep_path = base.join("modules.dep");
    let dep = match read_text(sys, &dep_path, DEP_LIMIT) {
        Ok(Some(t)) => ModulesDep::parse(&t),
        Ok(None) => {
            error(
                &mut report,
                ModuleError::Read {
                    path: dep_path.display().to_string(),
                    reason: "not found".into(),
                },
            );
            ModulesDep::default()
        }
        Err(e) => {
            error(&mut report, e);
            ModulesDep::default()
        }
    };
    let builtin: BTreeSet<String> = match read_text(sys, &base.join("modules.builtin"), DEP_LIMIT) {
        Ok(Some(t)) => t.lines().map(module_name).collect(),
        _ => BTreeSet::new(),
    };
    let (order, errors) = load_order(&dep, &builtin, &wanted, &dep_path.display().to_string());
    for e in errors {
        error(&mut report, e);
    }
    for rel in order {
        let path = base.join(&rel);
        let flags = if is_compressed(&rel) {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        let name = module_name(&rel);
        match sys.finit_module(&path, "", flags) {
            Ok(()) => report.loaded.push(name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => report.already.push(name),
            Err(e) => {
                let reason = if flags != 0 && e.raw_os_error() == Some(libc::EINVAL) {
                    format!("{e} (compressed module: the kernel needs CONFIG_MODULE_DECOMPRESS, Linux 6.4+)")
                } else {
                    e.to_string()
                };
                error(
                    &mut report,
                    ModuleError::Load {
                        path: path.display().to_string(),
                        reason,
                    },
                );
            }
        }
    }
    if !report.loaded.is_empty() {
        crate::kinfo!("loaded modules: {}", report.loaded.join(" "));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, FakeSys};

    const DEP: &str = "\
kernel/drivers/block/virtio_blk.ko.zst: kernel/drivers/virtio/virtio_ring.ko.zst kernel/drivers/virtio/virtio.ko.zst
kernel/drivers/virtio/virtio_ring.ko.zst: kernel/drivers/virtio/virtio.ko.zst
kernel/drivers/virtio/virtio.ko.zst:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_ring.ko.zst kernel/drivers/virtio/virtio.ko.zst
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/net/a-b.ko: kernel/net/c.ko
kernel/net/c.ko: kernel/net/a-b.ko
";

    fn order(wanted: &[&str]) -> (Vec<String>, Vec<ModuleError>) {
        let w: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
        let builtin: BTreeSet<String> = ["overlay".to_string()].into();
        load_order(&ModulesDep::parse(DEP), &builtin, &w, "modules.dep")
    }

    #[test]
    fn names_and_compression() {
        assert_eq!(
            module_name("kernel/drivers/block/virtio_blk.ko.zst"),
            "virtio_blk"
        );
        assert_eq!(module_name("kernel/net/a-b.ko"), "a_b");
        assert_eq!(module_name("virtio-pci"), "virtio_pci");
        assert!(is_compressed("x.ko.xz") && is_compressed("x.ko.zst") && is_compressed("x.ko.gz"));
        assert!(!is_compressed("x.ko"));
    }

    #[test]
    fn dependencies_come_first_each_once() {
        let (o, e) = order(&["virtio_blk", "virtio_pci", "ext4"]);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            o,
            [
                "kernel/drivers/virtio/virtio.ko.zst",
                "kernel/drivers/virtio/virtio_ring.ko.zst",
                "kernel/drivers/block/virtio_blk.ko.zst",
                "kernel/drivers/virtio/virtio_pci.ko.xz",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/ext4/ext4.ko",
            ]
        );
    }

    #[test]
    fn unknown_builtin_and_cycles() {
        let (o, e) = order(&["nosuch", "overlay", "jbd2"]);
        assert_eq!(o, ["kernel/fs/jbd2/jbd2.ko"]);
        assert_eq!(
            e,
            [ModuleError::NotFound {
                name: "nosuch".into(),
                dep_file: "modules.dep".into()
            }]
        );
        let (_, e) = order(&["a-b"]);
        assert_eq!(
            e,
            [ModuleError::Cycle {
                chain: vec!["a_b".into(), "c".into(), "a_b".into()]
            }]
        );
    }

    #[test]
    fn list_parsing() {
        assert_eq!(
            parse_module_list("# early\nvirtio_blk\n\n  ext4 # fs\nvirtio-blk\n"),
            ["virtio_blk", "ext4"]
        );
    }

    #[test]
    fn loads_with_flags_and_tolerates_eexist() {
        let sys = FakeSys::new();
        sys.set_release("6.6.0-kios");
        sys.add_file(MODULES_LIST, "virtio_blk\next4\nmissing_mod\n");
        let base = "/lib/modules/6.6.0-kios";
        sys.add_file(&format!("{base}/modules.dep"), DEP);
        for p in DEP.lines().filter_map(|l| l.split(':').next()) {
            sys.add_file(&format!("{base}/{p}"), "");
        }
        sys.fail(
            "finit_module",
            &format!("{base}/kernel/fs/jbd2/jbd2.ko"),
            libc::EEXIST,
        );
        let r = load_early_modules(&sys);
        assert_eq!(r.already, ["jbd2"]);
        assert_eq!(
            r.loaded,
            [
                "virtio",
                "virtio_ring",
                "virtio_blk",
                "mbcache",
                "crc16",
                "ext4"
            ]
        );
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(r.errors[0].contains("missing_mod"));
        let calls = sys.calls();
        assert!(calls.contains(&Call::FinitModule(
            format!("{base}/kernel/drivers/virtio/virtio.ko.zst"),
            MODULE_INIT_COMPRESSED_FILE
        )));
        assert!(calls.contains(&Call::FinitModule(
            format!("{base}/kernel/fs/ext4/ext4.ko"),
            0
        )));
    }

    #[test]
    fn missing_module_file_is_an_error_and_loading_goes_on() {
        let sys = FakeSys::new();
        sys.add_file(MODULES_LIST, "crc16\nmbcache\n");
        sys.add_file("/lib/modules/6.1.0-test/modules.dep", DEP);
        sys.add_file("/lib/modules/6.1.0-test/kernel/fs/mbcache.ko", "");
        let r = load_early_modules(&sys);
        assert_eq!(r.loaded, ["mbcache"]);
        assert_eq!(r.errors.len(), 1);
        assert!(
            r.errors[0].starts_with("load module /lib/modules/6.1.0-test/kernel/lib/crc16.ko"),
            "{:?}",
            r.errors
        );
    }

    #[test]
    fn no_list_means_nothing_is_read_or_loaded() {
        let sys = FakeSys::new();
        let r = load_early_modules(&sys);
        assert_eq!(r, ModulesReport::default());
        assert!(sys.calls().is_empty());
    }

    #[test]
    fn missing_modules_dep_is_reported() {
        let sys = FakeSys::new();
        sys.add_file(MODULES_LIST, "ext4\n");
        let r = load_early_modules(&sys);
        assert!(
            r.errors.iter().any(|e| e.contains("modules.dep")),
            "{:?}",
            r.errors
        );
        assert!(
            r.errors
                .iter()
                .any(|e| e.contains("module ext4: not found")),
            "{:?}",
            r.errors
        );
    }
}
