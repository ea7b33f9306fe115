//! The initramfs a VM boots: the rootfs builder's image of the inputs dir
//! of [`crate::artifacts`] (kios-init, kiosctl, the stand-ins, busybox,
//! crun, conmon), the kernel's early modules ([`super::EARLY_MODULES`]) and
//! the test's extra files (e.g. `/etc/kios-e2e/*.conf` baked into the image).

use std::path::{Path, PathBuf};

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

/// Builds `<dir>/initramfs.cpio` and returns its path.
pub fn build_image(
    dir: &Path,
    inputs_dir: &Path,
    kernel: &Kernel,
    config: &ImageConfig,
) -> Result<PathBuf, VmError> {
    let _ = (dir, inputs_dir, early_modules(kernel), config);
    Err(VmError::Image(
        "the rootfs builder (kios_rootfs::build_cpio) has not landed yet".into(),
    ))
}

/// The rootfs builder's inputs dir (the musl binaries are built once per
/// test process by [`crate::artifacts`]).
pub fn inputs_dir() -> Result<PathBuf, VmError> {
    crate::artifacts::artifacts()
        .map(|a| a.inputs_dir.clone())
        .map_err(|e| VmError::Image(e.to_string()))
}
