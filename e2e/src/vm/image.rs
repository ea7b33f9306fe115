//! The initramfs a VM boots: the rootfs builder's image of the inputs dir
//! of [`crate::artifacts`] (kios-init, kiosctl, the stand-ins, busybox,
//! crun, conmon), the kernel's early modules ([`super::EARLY_MODULES`]) and
//! the test's extra files (e.g. `/etc/kios-e2e/*.conf` baked into the image).
//! Either as the initramfs qemu is handed with `-kernel`, or as the disk
//! image a machine boots: the unified kernel image (the kernel's bzImage,
//! the zstd initramfs, os-release, the default command line) on the ESP
//! plus the data partition, both made by the rootfs builder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kios_rootfs::disk::{build_disk, DiskOptions, Extent};
use kios_rootfs::uki::{build_uki, section_data, DEFAULT_STUB};
use kios_rootfs::{build_cpio, BuildOptions, Compression, ImageRelease, ModulesOptions};

use super::{Kernel, VmError, EARLY_MODULES};

/// What a test adds to the standard image.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    /// Extra files: image path (absolute), content, mode.
    pub extra_files: Vec<(String, Vec<u8>, u32)>,
}

impl ImageConfig {
    /// Adds a file to the image.
    pub fn file(mut self, path: &str, content: impl Into<Vec<u8>>, mode: u32) -> ImageConfig {
        self.extra_files
            .push((path.to_owned(), content.into(), mode));
        self
    }
}

/// The early module names for this kernel: none when it has no module tree
/// (a `KIOS_KERNEL` with everything built in).
pub fn early_modules(kernel: &Kernel) -> Vec<String> {
    match kernel.modules_root {
        Some(_) => EARLY_MODULES.iter().map(|m| (*m).to_owned()).collect(),
        None => Vec::new(),
    }
}

/// The builder's options for the VM image.
fn build_options(
    dir: &Path,
    inputs_dir: &Path,
    kernel: &Kernel,
    config: &ImageConfig,
) -> Result<BuildOptions, VmError> {
    let mut opts = BuildOptions::new(inputs_dir);
    opts.inputs = input_overrides()?;
    if let Some(modules_root) = &kernel.modules_root {
        opts.modules = Some(ModulesOptions {
            modules_root: modules_root.clone(),
            version: kernel.version.clone(),
            names: early_modules(kernel),
        });
    }
    let extra_dir = dir.join("image-extra");
    for (i, (image_path, content, mode)) in config.extra_files.iter().enumerate() {
        std::fs::create_dir_all(&extra_dir).map_err(|e| VmError::io("create", &extra_dir, e))?;
        let host = extra_dir.join(format!("{i}"));
        std::fs::write(&host, content).map_err(|e| VmError::io("write", &host, e))?;
        opts.extra_files.push((host, image_path.clone(), *mode));
    }
    Ok(opts)
}

/// Builds `<dir>/initramfs.cpio` (uncompressed: under software emulation
/// the kernel unpacks it faster than it would decompress it) and returns
/// its path.
pub fn build_image(
    dir: &Path,
    inputs_dir: &Path,
    kernel: &Kernel,
    config: &ImageConfig,
) -> Result<PathBuf, VmError> {
    let opts = build_options(dir, inputs_dir, kernel, config)?;
    let out = dir.join("initramfs.cpio");
    build_cpio(&opts, &out, Compression::None)
        .map_err(|e| VmError::Image(format!("rootfs build of {}: {e}", out.display())))?;
    Ok(out)
}

/// The disk image of a node, as the builder wrote it.
#[derive(Debug, Clone)]
pub struct DiskImage {
    /// `<dir>/kios.efi`: the unified kernel image (also on the ESP).
    pub efi: PathBuf,
    /// `<dir>/kios.img`: the raw GPT disk.
    pub disk: PathBuf,
    /// The data partition on it.
    pub data: Extent,
    /// VERSION_ID and BUILD_ID of the image (its `.osrel` section).
    pub release: ImageRelease,
    /// The kernel command line of the image (its `.cmdline` section).
    pub cmdline: String,
}

/// Builds `<dir>/kios.efi` and the `size_mib` disk `<dir>/kios.img` whose
/// data partition starts with the files of `data_seed`.
pub fn build_disk_image(
    dir: &Path,
    inputs_dir: &Path,
    kernel: &Kernel,
    config: &ImageConfig,
    size_mib: u64,
    data_seed: &Path,
) -> Result<DiskImage, VmError> {
    let opts = build_options(dir, inputs_dir, kernel, config)?;
    let stub = Path::new(DEFAULT_STUB);
    if !stub.is_file() {
        return Err(VmError::Image(format!(
            "no EFI stub at {DEFAULT_STUB} (install it: apt-get install systemd-boot-efi)"
        )));
    }
    let efi = dir.join("kios.efi");
    build_uki(&opts, Compression::Zstd, stub, &kernel.vmlinuz, &efi)
        .map_err(|e| VmError::Image(format!("unified kernel image {}: {e}", efi.display())))?;
    let disk = dir.join("kios.img");
    let mut d = DiskOptions::new(&efi, &disk);
    d.size_mib = size_mib;
    d.data_seed = Some(data_seed.to_owned());
    let report = build_disk(&d)
        .map_err(|e| VmError::Image(format!("disk image {}: {e}", disk.display())))?;
    let data = report
        .data
        .ok_or_else(|| VmError::Image("the disk image has no data partition".into()))?;
    let bytes = std::fs::read(&efi).map_err(|e| VmError::io("read", &efi, e))?;
    let section = |name: &str| -> String {
        section_data(&bytes, name)
            .map(|b| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned())
            .unwrap_or_default()
    };
    Ok(DiskImage {
        release: ImageRelease::parse(&section(".osrel")),
        cmdline: section(".cmdline"),
        efi,
        disk,
        data,
    })
}

/// Environment variable naming a folder of real binaries (`crio`,
/// `kubelet`, `pinns`, `conmon`, `crun`, ...) that replace the inputs of the
/// same name (see docs/vm.md).
pub const INPUTS_ENV: &str = "KIOS_VM_INPUTS";

/// The inputs given by [`INPUTS_ENV`]: every regular file of that folder,
/// by file name.
pub fn input_overrides() -> Result<BTreeMap<String, PathBuf>, VmError> {
    let mut inputs = BTreeMap::new();
    let Some(dir) = std::env::var_os(INPUTS_ENV).map(PathBuf::from) else {
        return Ok(inputs);
    };
    let entries = std::fs::read_dir(&dir).map_err(|e| VmError::io("read", &dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| VmError::io("read", &dir, e))?;
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            inputs.insert(name.to_owned(), path.clone());
        }
    }
    Ok(inputs)
}

/// The rootfs builder's inputs dir (the musl binaries are built once per
/// test process by [`crate::artifacts`]).
pub fn inputs_dir() -> Result<PathBuf, VmError> {
    crate::artifacts::artifacts()
        .map(|a| a.inputs_dir.clone())
        .map_err(|e| VmError::Image(e.to_string()))
}
