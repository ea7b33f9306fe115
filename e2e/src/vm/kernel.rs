//! The kernel the VM boots: `KIOS_KERNEL` (+ `KIOS_KERNEL_MODULES`), or
//! Debian's stock amd64 kernel fetched with `apt-get download`, unpacked
//! with `dpkg-deb -x` under `target/kernel/<version>/` and cached there.
//!
//! The package is the one `linux-image-amd64` depends on, resolved with
//! `apt-cache depends` (never hard-coded). A finished unpack is marked with a
//! `ready` file, written last, so an interrupted run starts over instead of
//! using half a tree. Parallel test binaries serialise on a lock file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{run_tool, workspace_root, VmError};

/// The meta package whose dependency names the current stock kernel.
const META_PACKAGE: &str = "linux-image-amd64";

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub version: String,
    /// The compressed kernel (bzImage).
    pub vmlinuz: PathBuf,
    /// What qemu's `-kernel` boots: an uncompressed `vmlinux` with a PVH
    /// entry point when one could be made (the stock kernel is
    /// xz-compressed, and decompressing it under software emulation takes
    /// seconds of every boot), else `vmlinuz`.
    pub boot_image: PathBuf,
    /// `lib/modules/<version>` with a `modules.dep`, or `None` for a kernel
    /// given by `KIOS_KERNEL` without `KIOS_KERNEL_MODULES` (everything the
    /// node needs must then be built in).
    pub modules_root: Option<PathBuf>,
}

/// The kernel for this test process, resolved once.
pub fn kernel() -> Result<&'static Kernel, VmError> {
    static KERNEL: OnceLock<Result<Kernel, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| resolve().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|message| VmError::Kernel(message.clone()))
}

fn resolve() -> Result<Kernel, VmError> {
    if let Some(path) = std::env::var_os("KIOS_KERNEL") {
        let modules = std::env::var_os("KIOS_KERNEL_MODULES").map(PathBuf::from);
        return given_kernel(PathBuf::from(path), modules);
    }
    stock_debian_kernel(&workspace_root().join("target/kernel"))
}

/// A kernel named by `KIOS_KERNEL`; its version is taken from the basename
/// of `KIOS_KERNEL_MODULES` (a `lib/modules/<version>` directory).
fn given_kernel(vmlinuz: PathBuf, modules: Option<PathBuf>) -> Result<Kernel, VmError> {
    if !vmlinuz.is_file() {
        return Err(VmError::Kernel(format!(
            "KIOS_KERNEL={} is not a file",
            vmlinuz.display()
        )));
    }
    let Some(modules) = modules else {
        return Ok(Kernel {
            version: String::from("unknown"),
            boot_image: vmlinuz.clone(),
            vmlinuz,
            modules_root: None,
        });
    };
    let version = modules
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            VmError::Kernel(format!(
                "KIOS_KERNEL_MODULES={} must be a lib/modules/<version> directory",
                modules.display()
            ))
        })?;
    ensure_modules_dep(&modules, &version)?;
    Ok(Kernel {
        version,
        boot_image: vmlinuz.clone(),
        vmlinuz,
        modules_root: Some(modules),
    })
}

/// The package `linux-image-amd64` depends on, from `apt-cache depends`
/// output (`  Depends: linux-image-6.1.0-56-amd64`).
pub fn parse_meta_dependency(apt_cache_output: &str) -> Option<String> {
    apt_cache_output.lines().find_map(|line| {
        let name = line.trim().strip_prefix("Depends:")?.trim();
        let name = name.trim_start_matches('<').trim_end_matches('>');
        (name.starts_with("linux-image-") && name != META_PACKAGE).then(|| name.to_owned())
    })
}

/// The versioned kernel package, or `None` when apt does not know the meta
/// package (no package lists).
fn resolve_meta_package() -> Result<Option<String>, VmError> {
    let output = Command::new("apt-cache")
        .args(["depends", META_PACKAGE])
        .output()
        .map_err(|source| VmError::ToolMissing {
            tool: "apt-cache".into(),
            hint: super::package_of("apt-cache"),
            source,
        })?;
    Ok(parse_meta_dependency(&String::from_utf8_lossy(
        &output.stdout,
    )))
}

fn stock_debian_kernel(cache: &Path) -> Result<Kernel, VmError> {
    let package = match resolve_meta_package()? {
        Some(package) => package,
        None => {
            // A fresh machine may have no package lists yet.
            eprintln!("vm: apt knows no {META_PACKAGE}; running apt-get update");
            run_tool(Command::new("apt-get").args(["update", "-qq"]), "apt-get")?;
            resolve_meta_package()?.ok_or_else(|| {
                VmError::Kernel(format!(
                    "apt-cache depends {META_PACKAGE} names no linux-image package, even after apt-get update"
                ))
            })?
        }
    };
    let version = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .trim_end_matches("-unsigned")
        .to_owned();
    let dir = cache.join(&version);
    fs::create_dir_all(&dir).map_err(|e| VmError::io("create", &dir, e))?;

    // Serialise with other test processes doing the same.
    let lock_path = cache.join(".lock");
    let lock = fs::File::create(&lock_path).map_err(|e| VmError::io("create", &lock_path, e))?;
    lock.lock()
        .map_err(|e| VmError::io("lock", &lock_path, e))?;

    let root = dir.join("root");
    let ready = dir.join("ready");
    if !ready.exists() {
        eprintln!(
            "vm: fetching Debian kernel package {package} into {}",
            dir.display()
        );
        let download = dir.join("download");
        let _ = fs::remove_dir_all(&download);
        fs::create_dir_all(&download).map_err(|e| VmError::io("create", &download, e))?;
        run_tool(
            Command::new("apt-get")
                .args(["download", "-q", &package])
                .current_dir(&download),
            "apt-get",
        )?;
        let deb = fs::read_dir(&download)
            .map_err(|e| VmError::io("read", &download, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| VmError::Kernel(format!("apt-get download {package} left no .deb")))?;
        let _ = fs::remove_dir_all(&root);
        run_tool(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
            "dpkg-deb",
        )?;
        let _ = fs::remove_dir_all(&download);
        fs::write(&ready, &package).map_err(|e| VmError::io("write", &ready, e))?;
    }
    let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        return Err(VmError::Kernel(format!(
            "{package} holds no {}",
            vmlinuz.display()
        )));
    }
    let modules = root.join(format!("lib/modules/{version}"));
    ensure_modules_dep(&modules, &version)?;
    let config = root.join(format!("boot/config-{version}"));
    let pvh = fs::read_to_string(&config).is_ok_and(|c| c.lines().any(|l| l == "CONFIG_PVH=y"));
    let vmlinux = dir.join("vmlinux");
    let boot_image = if pvh && (vmlinux.is_file() || extract_vmlinux(&vmlinuz, &vmlinux)) {
        vmlinux
    } else {
        vmlinuz.clone()
    };
    drop(lock);
    Ok(Kernel {
        version,
        vmlinuz,
        boot_image,
        modules_root: Some(modules),
    })
}

/// Start of an xz stream.
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// Where the xz-compressed payload of a bzImage starts.
pub fn xz_payload_offset(bzimage: &[u8]) -> Option<usize> {
    bzimage.windows(XZ_MAGIC.len()).position(|w| w == XZ_MAGIC)
}

/// Decompresses the kernel inside an xz bzImage to `out` with the `xz`
/// tool. False (and the compressed kernel is booted instead, only slower)
/// when the payload is not xz, `xz` is missing or the result is no ELF.
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> bool {
    let Ok(image) = fs::read(vmlinuz) else {
        return false;
    };
    let Some(offset) = xz_payload_offset(&image) else {
        return false;
    };
    let partial = out.with_extension("partial");
    let Ok(dest) = fs::File::create(&partial) else {
        return false;
    };
    let child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(dest)
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("vm: xz (package xz-utils) is missing; booting the compressed kernel (slower)");
        return false;
    };
    // xz stops reading after the stream (the bzImage has a trailer): a
    // short write here is expected; xz's exit status and the ELF magic of
    // the output decide.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = std::io::Write::write_all(&mut stdin, &image[offset..]);
    }
    let ok = child.wait().is_ok_and(|s| s.success());
    let elf = fs::read(&partial)
        .map(|b| b.starts_with(b"\x7fELF"))
        .unwrap_or(false);
    if ok && elf && fs::rename(&partial, out).is_ok() {
        return true;
    }
    let _ = fs::remove_file(&partial);
    false
}

/// Runs `depmod -b` when the tree has no `modules.dep` yet.
fn ensure_modules_dep(modules: &Path, version: &str) -> Result<(), VmError> {
    if modules.join("modules.dep").is_file() {
        return Ok(());
    }
    // depmod -b BASE wants BASE/lib/modules/<version>.
    let base = modules
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .ok_or_else(|| {
            VmError::Kernel(format!(
                "{} is not a lib/modules/<version> directory",
                modules.display()
            ))
        })?;
    run_tool(
        Command::new("depmod").arg("-b").arg(base).arg(version),
        "depmod",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_dependency_is_the_versioned_image() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_meta_dependency(out).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
    }

    #[test]
    fn xz_payload_is_found_after_the_setup_code() {
        let mut image = vec![0u8; 100];
        image.extend_from_slice(XZ_MAGIC);
        image.extend_from_slice(b"payload");
        assert_eq!(xz_payload_offset(&image), Some(100));
        assert_eq!(xz_payload_offset(b"no magic here"), None);
    }

    #[test]
    fn given_kernel_takes_its_version_from_the_modules_dir() {
        let dir = std::env::temp_dir().join(format!("kios-vm-kernel-{}", std::process::id()));
        let modules = dir.join("lib/modules/6.1.0-test");
        fs::create_dir_all(&modules).unwrap();
        fs::write(modules.join("modules.dep"), "").unwrap();
        let vmlinuz = dir.join("bzImage");
        fs::write(&vmlinuz, b"kernel").unwrap();

        let k = given_kernel(vmlinuz.clone(), Some(modules.clone())).unwrap();
        assert_eq!(k.version, "6.1.0-test");
        assert_eq!(k.boot_image, vmlinuz);
        assert_eq!(k.modules_root.as_deref(), Some(modules.as_path()));
        let k = given_kernel(vmlinuz.clone(), None).unwrap();
        assert!(k.modules_root.is_none());
        let missing = given_kernel(dir.join("nope"), None)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("KIOS_KERNEL=") && missing.contains("nope"),
            "{missing}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn meta_dependency_missing_is_none() {
        assert_eq!(parse_meta_dependency("linux-image-amd64\n"), None);
        assert_eq!(
            parse_meta_dependency("linux-image-amd64\n  Depends: libc6\n"),
            None
        );
    }
}
