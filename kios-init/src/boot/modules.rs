//! Early kernel modules: the names in /etc/kios/modules (one per line, `#`
//! comments; modules or aliases) are loaded the way modprobe loads them,
//! from /lib/modules/<uname -r>/: modules.dep dependencies, `pre:` and
//! `post:` soft dependencies of modules.softdep, aliases of modules.alias
//! (every module an alias names), modules.builtin names counted as loaded;
//! the order and lookup are [`kios_rootfs::modprobe`]'s. Each module is
//! loaded once with finit_module(2); compressed modules (.ko.xz, .ko.zst,
//! .ko.gz) are handed to the kernel with MODULE_INIT_COMPRESSED_FILE so it
//! decompresses them (needs Linux 6.4+ with CONFIG_MODULE_DECOMPRESS). An
//! already loaded module (EEXIST) is fine. A listed module that is missing
//! or fails is a clear kernel-log error and boot continues; a soft
//! dependency that fails (e.g. crc32c_intel on a CPU without SSE4.2) is
//! logged and skipped, as modprobe does.

use crate::sys::{Sys, MODULE_INIT_COMPRESSED_FILE};
use kios_rootfs::modprobe::{ModuleIndex, Problem};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub use kios_rootfs::modprobe::module_name;

pub const MODULES_LIST: &str = "/etc/kios/modules";
pub const MODULES_ROOT: &str = "/lib/modules";
/// Largest modules.dep / softdep / alias / builtin read (a distribution
/// kernel's modules.alias is near 1.3 MiB).
pub const DEP_LIMIT: usize = 16 * 1024 * 1024;
/// Largest /etc/kios/modules read and most names taken from it.
pub const LIST_LIMIT: usize = 64 * 1024;
pub const MAX_WANTED: usize = 512;

/// A problem with one module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error("module {name}: not found in {dep_file} (nor modules.alias or modules.builtin)")]
    NotFound { name: String, dep_file: String },
    #[error("module dependency cycle: {}", chain.join(" -> "))]
    Cycle { chain: Vec<String> },
    #[error("module {name}: soft dependencies nested too deep")]
    TooDeep { name: String },
    #[error("module {of}: needs {path}, which has no line in {dep_file}")]
    Unlisted {
        path: String,
        of: String,
        dep_file: String,
    },
    #[error("load module {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("read {path}: {reason}")]
    Read { path: String, reason: String },
}

/// Whether the kernel has to decompress this module file.
pub fn is_compressed(path: &str) -> bool {
    path.ends_with(".ko.xz") || path.ends_with(".ko.zst") || path.ends_with(".ko.gz")
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

/// What loading did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModulesReport {
    /// Modules loaded now (names).
    pub loaded: Vec<String>,
    /// Modules that were already loaded (EEXIST).
    pub already: Vec<String>,
    /// Soft dependencies that could not be loaded or found (kernel-logged
    /// at info level; modprobe ignores them too).
    pub skipped: Vec<String>,
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

/// The index of the module tree at `base`: modules.dep is needed (its
/// absence is an error); softdep, alias and builtin are optional.
fn read_index(sys: &dyn Sys, base: &Path, errors: &mut Vec<ModuleError>) -> ModuleIndex {
    let mut text = |file: &str, needed: bool| match read_text(sys, &base.join(file), DEP_LIMIT) {
        Ok(Some(t)) => t,
        Ok(None) => {
            if needed {
                errors.push(ModuleError::Read {
                    path: base.join(file).display().to_string(),
                    reason: "not found".into(),
                });
            }
            String::new()
        }
        Err(e) => {
            errors.push(e);
            String::new()
        }
    };
    let dep = text("modules.dep", true);
    let softdep = text("modules.softdep", false);
    let alias = text("modules.alias", false);
    let builtin = text("modules.builtin", false);
    ModuleIndex::parse(&dep, &softdep, &alias, &builtin)
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
    let dep_file = base.join("modules.dep").display().to_string();
    let mut read_errors = Vec::new();
    let index = read_index(sys, &base, &mut read_errors);
    for e in read_errors {
        error(&mut report, e);
    }
    let plan = index.plan(&wanted);
    drop(index);
    for p in plan.problems {
        let e = match p {
            Problem::NotFound { name } => ModuleError::NotFound {
                name,
                dep_file: dep_file.clone(),
            },
            Problem::SoftNotFound { name, of } => {
                crate::kinfo!("module {of}: soft dependency {name} not found; skipped");
                report.skipped.push(name);
                continue;
            }
            Problem::Unlisted { path, of } => ModuleError::Unlisted {
                path,
                of,
                dep_file: dep_file.clone(),
            },
            Problem::Cycle { chain } => ModuleError::Cycle { chain },
            Problem::TooDeep { name } => ModuleError::TooDeep { name },
        };
        error(&mut report, e);
    }
    for step in plan.steps {
        let path = base.join(&step.path);
        let flags = if is_compressed(&step.path) {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        match sys.finit_module(&path, "", flags) {
            Ok(()) => report.loaded.push(step.name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => report.already.push(step.name),
            Err(e) => {
                let reason = if flags != 0 && e.raw_os_error() == Some(libc::EINVAL) {
                    format!("{e} (compressed module: the kernel needs CONFIG_MODULE_DECOMPRESS, Linux 6.4+)")
                } else {
                    e.to_string()
                };
                if step.required {
                    error(
                        &mut report,
                        ModuleError::Load {
                            path: path.display().to_string(),
                            reason,
                        },
                    );
                } else {
                    crate::kinfo!(
                        "module {} (a soft dependency): {reason}; skipped",
                        step.name
                    );
                    report.skipped.push(step.name);
                }
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

    /// A FakeSys with Debian 6.1's module index excerpt (real lines) and an
    /// empty file for every module of it.
    fn debian(list: &str) -> (FakeSys, String) {
        let sys = FakeSys::new();
        sys.set_release("6.1.0-57-amd64");
        sys.add_file(MODULES_LIST, list);
        let base = "/lib/modules/6.1.0-57-amd64".to_string();
        for (file, text) in [
            (
                "modules.dep",
                include_str!("../../../rootfs/tests/fixtures/debian-6.1.0-57/modules.dep"),
            ),
            (
                "modules.softdep",
                include_str!("../../../rootfs/tests/fixtures/debian-6.1.0-57/modules.softdep"),
            ),
            (
                "modules.alias",
                include_str!("../../../rootfs/tests/fixtures/debian-6.1.0-57/modules.alias"),
            ),
            (
                "modules.builtin",
                include_str!("../../../rootfs/tests/fixtures/debian-6.1.0-57/modules.builtin"),
            ),
        ] {
            sys.add_file(&format!("{base}/{file}"), text);
            if file == "modules.dep" {
                for p in text.lines().filter_map(|l| l.split(':').next()) {
                    sys.add_file(&format!("{base}/{p}"), "");
                }
            }
        }
        (sys, base)
    }

    #[test]
    fn the_administrators_list_loads_crc32c_for_ext4_like_modprobe() {
        let list = include_str!("../../../rootfs/tests/fixtures/debian-6.1.0-57/kios-modules");
        let (sys, base) = debian(list);
        // No SSE4.2 (qemu's default CPU): the accelerated crc32c refuses.
        sys.fail(
            "finit_module",
            &format!("{base}/kernel/arch/x86/crypto/crc32c-intel.ko"),
            libc::ENODEV,
        );
        let r = load_early_modules(&sys);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.skipped, ["crc32c_intel"]);
        // Everything else of the plan (tested in kios_rootfs::modprobe) is
        // loaded, in its order: crc32c before jbd2 and ext4.
        assert_eq!(r.loaded.len(), 14, "{:?}", r.loaded);
        let at = |m: &str| r.loaded.iter().position(|l| l == m);
        assert!(at("crc32c_generic") < at("jbd2") && at("jbd2") < at("ext4"));
        assert_eq!(r.loaded.last().map(String::as_str), Some("button"));
    }

    #[test]
    fn aliases_and_builtins_in_the_list() {
        let (sys, _) = debian("fs-ext3\ncrypto_hash\ncrc32c-generic\n");
        let r = load_early_modules(&sys);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        // fs-ext3 is ext4 (with its softdeps); crypto_hash is built in.
        assert_eq!(
            r.loaded,
            [
                "crc32c_intel",
                "crc32c_generic",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4"
            ]
        );
    }

    #[test]
    fn a_failing_listed_module_is_an_error() {
        let (sys, base) = debian("ext4\nnosuch\n");
        sys.fail(
            "finit_module",
            &format!("{base}/kernel/fs/jbd2/jbd2.ko"),
            libc::ENOEXEC,
        );
        let r = load_early_modules(&sys);
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert!(
            r.errors[0].starts_with("module nosuch: not found"),
            "{:?}",
            r.errors
        );
        assert!(r.errors[1].contains("jbd2.ko"), "{:?}", r.errors);
        assert!(r.loaded.contains(&"ext4".to_string()));
    }

    #[test]
    fn compression() {
        assert!(is_compressed("x.ko.xz") && is_compressed("x.ko.zst") && is_compressed("x.ko.gz"));
        assert!(!is_compressed("x.ko"));
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
                // modules.dep order, last first (as modprobe loads them).
                "crc16",
                "mbcache",
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
