//! The binaries a test image needs, built once per test process.
//!
//! [`artifacts`] builds the static (musl) kios-init, kiosctl and the
//! stand-ins into `<workspace>/target/musl` (a target dir of its own, so the
//! nested cargo never waits on the lock of the outer `cargo test`), then
//! assembles an inputs directory for the rootfs builder: `kios-init`,
//! `kiosctl`, `crio`, `kubelet`, `pinns` (the stand-ins) and Debian's
//! `crun`, `conmon` and static `busybox`. `KIOS_E2E_PREBUILT=1` skips the
//! build (CI builds first; see scripts/test); `KIOS_E2E_BIN_DIR=DIR` takes
//! the binaries from DIR instead (and skips the build). A missing tool is an error
//! naming the Debian package to install, never a skip.
//!
//! The musl build is two cargo runs: kios-init and kiosctl, then the e2e
//! stand-ins with `--no-default-features`. One run would unify features
//! across packages and link the image builder into kios-init.
//!
//! [`image_tree`] then builds, once per process, the image as a directory
//! tree with the rootfs builder (the namespace sandbox boots copies of it).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use thiserror::Error;

/// The musl target of image binaries.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The cargo profile of kios-init and kiosctl in the image (`Cargo.toml`:
/// release with `panic = "abort"`, std rebuilt without its backtrace
/// printer; see docs/benchmarks.md).
pub const IMAGE_PROFILE: &str = "image";

/// Set to `1` when the musl binaries are already built.
pub const PREBUILT_ENV: &str = "KIOS_E2E_PREBUILT";

/// A directory holding the musl binaries to use instead of building them
/// (implies [`PREBUILT_ENV`]), e.g. to test another build of kios-init.
pub const BIN_DIR_ENV: &str = "KIOS_E2E_BIN_DIR";

#[derive(Debug, Error)]
pub enum ArtifactsError {
    #[error("building the static binaries failed (`{command}`, {status}); its output is above")]
    Build { command: String, status: String },
    #[error("cannot run cargo for the static binaries (`{command}`): {source}")]
    RunCargo {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is missing: install the Debian package {package} (apt-get install -y {package}), or run scripts/deps")]
    MissingTool {
        path: PathBuf,
        package: &'static str,
    },
    #[error("{path} is dynamically linked; the image needs the static one from the Debian package {package}")]
    NotStatic {
        path: PathBuf,
        package: &'static str,
    },
    #[error("{path} is missing after the build; with {PREBUILT_ENV}=1 build it first as scripts/test does (the two builds of musl_build_commands)")]
    MissingBinary { path: PathBuf },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the rootfs builder failed to build the image tree at {path}: {message}")]
    Rootfs { path: PathBuf, message: String },
    /// The first attempt of this test process failed; this is its message.
    #[error("{0}")]
    Earlier(String),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactsError {
    let path = path.to_path_buf();
    move |source| ArtifactsError::Io { op, path, source }
}

/// What a test image is made of.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The cargo workspace.
    pub workspace: PathBuf,
    /// Where the image's own binaries (kios-init, kiosctl) are.
    pub bin_dir: PathBuf,
    /// Where the stand-ins' musl binaries are (the same as `bin_dir` when
    /// given with [`BIN_DIR_ENV`]).
    pub standin_dir: PathBuf,
    /// The rootfs builder's inputs: one file per input name.
    pub inputs_dir: PathBuf,
    /// A directory private to this test process, under target/e2e.
    pub run_dir: PathBuf,
}

impl Artifacts {
    /// A musl binary by name, e.g. `kios-init` or `kubelet-standin`.
    pub fn binary(&self, name: &str) -> PathBuf {
        if IMAGE_BINARIES.contains(&name) {
            self.bin_dir.join(name)
        } else {
            self.standin_dir.join(name)
        }
    }

    /// An input of the rootfs builder by its input name, e.g. `kubelet`.
    pub fn input(&self, name: &str) -> PathBuf {
        self.inputs_dir.join(name)
    }
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `<workspace>/target/musl`.
pub fn musl_target_dir() -> PathBuf {
    workspace_root().join("target").join("musl")
}

/// `<workspace>/target/e2e`: scratch space of the harnesses.
pub fn scratch_root() -> PathBuf {
    workspace_root().join("target").join("e2e")
}

/// The inputs taken from the build machine: (input name, path, package).
pub const HOST_TOOLS: [(&str, &str, &str); 3] = [
    ("crun", "/usr/bin/crun", "crun"),
    ("conmon", "/usr/bin/conmon", "conmon"),
    ("busybox", "/bin/busybox", "busybox-static"),
];

/// Inputs built from this workspace: (input name, musl binary name).
pub const BUILT_INPUTS: [(&str, &str); 5] = [
    ("kios-init", "kios-init"),
    ("kiosctl", "kiosctl"),
    ("crio", "crio-standin"),
    ("kubelet", "kubelet-standin"),
    ("pinns", "pinns-standin"),
];

/// The image binaries' rustflags, given as `--config` (so they add to
/// `.cargo/config.toml`'s flags for the target):
/// - no unwind tables: with panics aborting and no backtrace printer
///   nothing reads them; leaving them out saves kios-init 145 KiB
///   (`.eh_frame`);
/// - linked by rust-lld (shipped with the toolchain) in the order of
///   kios-init/layout/hot.txt, the functions init runs first, with `.init`
///   before `.text` (kios-init/layout/init-first.ld): the code init runs
///   then fills the fewest 64 KiB fault-around windows (VmRSS after boot
///   948 to 656 KiB; kios-init/layout/README.md). The paths are relative
///   to the workspace root, where cargo runs rustc and rustc the linker.
pub const IMAGE_RUSTFLAGS: &str =
    "target.x86_64-unknown-linux-musl.rustflags=[\"-Cforce-unwind-tables=no\",\"-Zunstable-options\",\"-Clink-self-contained=+linker\",\"-Clinker-flavor=gnu-lld-cc\",\"-Clink-arg=-Wl,--symbol-ordering-file=kios-init/layout/hot.txt\",\"-Clink-arg=-Wl,--no-warn-symbol-ordering\",\"-Clink-arg=-Wl,-T,kios-init/layout/init-first.ld\"]";

/// The image's own binaries, built with [`IMAGE_PROFILE`].
pub const IMAGE_BINARIES: [&str; 2] = ["kios-init", "kiosctl"];

static ARTIFACTS: OnceLock<Result<Artifacts, String>> = OnceLock::new();

/// Builds (once per process) and returns the artifacts.
pub fn artifacts() -> Result<&'static Artifacts, ArtifactsError> {
    ARTIFACTS
        .get_or_init(|| prepare().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| ArtifactsError::Earlier(e.clone()))
}

fn prepare() -> Result<Artifacts, ArtifactsError> {
    let workspace = workspace_root();
    let given_bin_dir = std::env::var_os(BIN_DIR_ENV).map(PathBuf::from);
    let bin_dir = given_bin_dir
        .clone()
        .unwrap_or_else(|| musl_target_dir().join(MUSL_TARGET).join(IMAGE_PROFILE));
    let standin_dir = given_bin_dir
        .clone()
        .unwrap_or_else(|| musl_target_dir().join(MUSL_TARGET).join("release"));
    let scratch = scratch_root();
    std::fs::create_dir_all(&scratch).map_err(io("create", &scratch))?;
    remove_stale_run_dirs(&scratch);
    let run_dir = scratch.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).map_err(io("create", &run_dir))?;

    // Check the host tools first: a missing package is the likelier problem
    // and the cheaper one to report.
    for (_, path, package) in HOST_TOOLS {
        check_host_tool(Path::new(path), package)?;
    }

    if given_bin_dir.is_none() && std::env::var(PREBUILT_ENV).as_deref() != Ok("1") {
        build_musl(&workspace)?;
    }

    let inputs_dir = run_dir.join("inputs");
    std::fs::create_dir_all(&inputs_dir).map_err(io("create", &inputs_dir))?;
    for (input, binary) in BUILT_INPUTS {
        let dir = if IMAGE_BINARIES.contains(&binary) {
            &bin_dir
        } else {
            &standin_dir
        };
        let from = dir.join(binary);
        if !from.is_file() {
            return Err(ArtifactsError::MissingBinary { path: from });
        }
        copy(&from, &inputs_dir.join(input))?;
    }
    for (input, path, _) in HOST_TOOLS {
        copy(Path::new(path), &inputs_dir.join(input))?;
    }
    Ok(Artifacts {
        workspace,
        bin_dir,
        standin_dir,
        inputs_dir,
        run_dir,
    })
}

fn copy(from: &Path, to: &Path) -> Result<(), ArtifactsError> {
    std::fs::copy(from, to).map_err(io("copy", from))?;
    Ok(())
}

/// How long the scratch dir of a finished test process is kept (for its
/// sandboxes' logs when a test failed).
const KEEP_FINISHED_RUNS: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes `run-<pid>` dirs of test processes that no longer exist and
/// finished more than [`KEEP_FINISHED_RUNS`] ago.
fn remove_stale_run_dirs(scratch: &Path) {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("run-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > KEEP_FINISHED_RUNS);
        if old && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn check_host_tool(path: &Path, package: &'static str) -> Result<(), ArtifactsError> {
    if !path.is_file() {
        return Err(ArtifactsError::MissingTool {
            path: path.to_path_buf(),
            package,
        });
    }
    if package == "busybox-static" {
        let bytes = std::fs::read(path).map_err(io("read", path))?;
        if elf_has_interpreter(&bytes) {
            return Err(ArtifactsError::NotStatic {
                path: path.to_path_buf(),
                package,
            });
        }
    }
    Ok(())
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header
/// (is dynamically linked). Anything that is not such an ELF: false.
pub fn elf_has_interpreter(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&bytes[0x20..0x28]);
    let phoff = u64::from_le_bytes(phoff) as usize;
    let (entsize, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let at = phoff.saturating_add(i.saturating_mul(entsize));
        match bytes.get(at..at + 4) {
            Some(t) => u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == PT_INTERP,
            None => false,
        }
    })
}

/// The two cargo runs of the musl build (program and arguments), as
/// scripts/test runs them:
/// - kios-init and kiosctl with the image profile (`panic = "abort"`) and
///   std rebuilt for size (nightly's `-Zbuild-std`, without std's
///   backtrace printer: about 330 KiB of kios-init's 1.4 MiB);
/// - the stand-ins without the host-side harness, so the image builder's
///   features never reach kios-init through feature unification.
///
/// The first goes through rustup's `cargo` proxy for `+nightly`.
pub fn musl_build_commands() -> [(String, Vec<&'static str>); 2] {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    [
        (
            "cargo".to_string(),
            vec![
                "+nightly",
                "build",
                "--locked",
                "--profile",
                IMAGE_PROFILE,
                "--target",
                MUSL_TARGET,
                "-Zbuild-std=std,panic_abort",
                "-Zbuild-std-features=optimize_for_size",
                "--config",
                IMAGE_RUSTFLAGS,
                "-p",
                "kios-init",
                "-p",
                "kiosctl",
            ],
        ),
        (
            cargo,
            vec![
                "build",
                "--locked",
                "--release",
                "--target",
                MUSL_TARGET,
                "-p",
                "kios-e2e",
                "--no-default-features",
                "--bins",
            ],
        ),
    ]
}

fn build_musl(workspace: &Path) -> Result<(), ArtifactsError> {
    let target_dir = musl_target_dir();
    std::fs::create_dir_all(&target_dir).map_err(io("create", &target_dir))?;
    // Cargo's own lock on target/musl serializes concurrent test processes;
    // this lock also keeps their output from interleaving.
    let lock_path = target_dir.join(".kios-e2e-build.lock");
    let lock_file = File::create(&lock_path).map_err(io("create", &lock_path))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, e)| ArtifactsError::Io {
            op: "lock",
            path: lock_path.clone(),
            source: std::io::Error::from(e),
        },
    )?;
    for (cargo, args) in musl_build_commands() {
        let command = format!(
            "CARGO_TARGET_DIR={} {cargo} {}",
            target_dir.display(),
            args.join(" ")
        );
        eprintln!("kios-e2e: {command}");
        let status = Command::new(&cargo)
            .args(&args)
            .current_dir(workspace)
            .env("CARGO_TARGET_DIR", &target_dir)
            // The outer `cargo test` may set these for its own build.
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTC_WRAPPER")
            // The outer cargo's toolchain must not override `+nightly`.
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .status()
            .map_err(|source| ArtifactsError::RunCargo {
                command: command.clone(),
                source,
            })?;
        if !status.success() {
            return Err(ArtifactsError::Build {
                command,
                status: status.to_string(),
            });
        }
    }
    Ok(())
}

static IMAGE_TREE: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The test image as a directory tree (built once per process with the
/// rootfs builder from [`artifacts`]); sandboxes use it read-only as the
/// lower layer of their root.
pub fn image_tree() -> Result<&'static Path, ArtifactsError> {
    IMAGE_TREE
        .get_or_init(|| build_image_tree().map_err(|e| e.to_string()))
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(|e| ArtifactsError::Earlier(e.clone()))
}

fn build_image_tree() -> Result<PathBuf, ArtifactsError> {
    let artifacts = artifacts()?;
    let dest = artifacts.run_dir.join("image");
    let _ = std::fs::remove_dir_all(&dest);
    let options = kios_rootfs::BuildOptions::new(&artifacts.inputs_dir);
    kios_rootfs::build_tree(&options, &dest).map_err(|e| ArtifactsError::Rootfs {
        path: dest.clone(),
        message: e.to_string(),
    })?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_elf() {
        // Minimal ELF64 header with one program header of the given type.
        fn elf(p_type: u32) -> Vec<u8> {
            let mut b = vec![0u8; 64 + 56];
            b[..4].copy_from_slice(b"\x7fELF");
            b[4] = 2;
            b[5] = 1;
            b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
            b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
            b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
            b[64..68].copy_from_slice(&p_type.to_le_bytes());
            b
        }
        assert!(elf_has_interpreter(&elf(3)));
        assert!(!elf_has_interpreter(&elf(1)));
        assert!(!elf_has_interpreter(b"#!/bin/sh\n"));
        let mut truncated = elf(3);
        truncated.truncate(66);
        assert!(!elf_has_interpreter(&truncated));
    }

    #[test]
    fn musl_builds_keep_the_stand_ins_apart_from_kios_init() {
        let [(_, first), (_, second)] = musl_build_commands();
        assert!(first.contains(&"kios-init") && !first.contains(&"kios-e2e"));
        assert!(first.contains(&IMAGE_PROFILE) && first.contains(&"-Zbuild-std=std,panic_abort"));
        assert!(second.contains(&"kios-e2e") && second.contains(&"--no-default-features"));
        // scripts/test runs the same two builds; scripts/trace-layout the
        // first too (plus a rustflag that keeps the symbols).
        let script = std::fs::read_to_string(workspace_root().join("scripts/test")).unwrap();
        let trace = std::fs::read_to_string(workspace_root().join("scripts/trace-layout")).unwrap();
        for (n, args) in [first, second].into_iter().enumerate() {
            let quoted: Vec<String> = args
                .iter()
                .map(|a| {
                    if a.contains(['"', '[']) {
                        format!("'{a}'")
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            let line = quoted.join(" ");
            assert!(script.contains(&line), "scripts/test lacks `{line}`");
            if n == 0 {
                assert!(trace.contains(&line), "scripts/trace-layout lacks `{line}`");
            }
        }
    }

    #[test]
    fn the_layout_files_the_image_links_with_exist() {
        for file in ["kios-init/layout/hot.txt", "kios-init/layout/init-first.ld"] {
            assert!(
                IMAGE_RUSTFLAGS.contains(file),
                "{file} not in {IMAGE_RUSTFLAGS}"
            );
            let text = std::fs::read_to_string(workspace_root().join(file)).unwrap();
            assert!(!text.trim().is_empty(), "{file} is empty");
        }
    }
}
