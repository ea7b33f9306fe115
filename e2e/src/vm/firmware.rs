//! UEFI firmware for a VM that boots the way a machine does: Debian's
//! OVMF (package `ovmf`), its code read-only and a writable copy of its
//! variable store per VM (firmware writes boot entries there), both as
//! pflash drives. No Secure Boot: the plain (not `.secboot`/`.ms`) build.

use std::path::{Path, PathBuf};

use super::VmError;

/// OVMF builds Debian ships, newest layout first: (code, vars).
pub const OVMF_CANDIDATES: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// The firmware of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    /// The firmware code (read-only pflash unit 0).
    pub code: PathBuf,
    /// This VM's copy of the variable store (pflash unit 1).
    pub vars: PathBuf,
}

impl Firmware {
    /// Finds OVMF and copies its variable store template to `vars` (kept
    /// when it exists: the firmware's boot entries persist across boots of
    /// one node, as NVRAM does on a machine).
    pub fn prepare(vars: &Path) -> Result<Firmware, VmError> {
        let (code, template) = OVMF_CANDIDATES
            .iter()
            .find(|(c, v)| Path::new(c).is_file() && Path::new(v).is_file())
            .ok_or_else(|| {
                VmError::Start(format!(
                    "no OVMF firmware at {} (install it: apt-get install ovmf)",
                    OVMF_CANDIDATES
                        .iter()
                        .map(|(c, _)| *c)
                        .collect::<Vec<_>>()
                        .join(" or ")
                ))
            })?;
        if !vars.exists() {
            std::fs::copy(template, vars)
                .map_err(|e| VmError::io("copy", Path::new(template), e))?;
        }
        Ok(Firmware {
            code: PathBuf::from(code),
            vars: vars.to_owned(),
        })
    }

    /// qemu's arguments for the two pflash drives.
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-drive".into(),
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                self.code.display()
            ),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", self.vars.display()),
        ]
    }
}
