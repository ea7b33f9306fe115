//! The rootfs command-line tool: builds the kiOS image (cpio initramfs,
//! directory tree, unified kernel image, GPT disk image) from the spec, generates docs/reference/files.md, prints
//! or verifies against an inventory, and benchmarks file hashing.
//!
//! Exit codes: 0 success; 1 failure (or, for `verify`, findings other than
//! `overridden`); 2 usage error.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use kios_rootfs::build::{self, BuildOptions, Compression, ModulesOptions};
use kios_rootfs::disk::{self, DiskOptions};
use kios_rootfs::{docs, hash, spec, uki, verify, Inventory, VerifyOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "rootfs", version, about = "Build and inspect the kiOS image")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    Gzip,
    Zstd,
    None,
}

// Parsed once per run: the size of the `build` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Build the image: a cpio initramfs (--out) or a directory (--tree),
    /// and/or a unified kernel image (--uki) with a GPT disk image (--disk).
    Build {
        /// The spec.
        #[arg(long, default_value_os_t = build::default_spec())]
        spec: PathBuf,
        /// Directory of input binaries (crio, kubelet, conmon, crun, pinns,
        /// busybox, kios-init, kiosctl [, xtables-legacy-multi]).
        #[arg(long)]
        inputs: PathBuf,
        /// An input given by path: NAME=PATH (repeatable).
        #[arg(long = "input", value_name = "NAME=PATH")]
        input: Vec<String>,
        /// lib/modules/<version> of an extracted kernel.
        #[arg(long, requires = "kernel_version")]
        modules_root: Option<PathBuf>,
        /// Kernel version (directory name under /lib/modules in the image).
        #[arg(long, requires = "modules_root")]
        kernel_version: Option<String>,
        /// Early kernel module to load at boot (repeatable).
        #[arg(long = "module", requires = "modules_root")]
        modules: Vec<String>,
        /// Extra file: HOST_PATH:IMAGE_PATH:OCTAL_MODE (repeatable).
        #[arg(long = "extra", value_name = "HOST:IMAGE:MODE")]
        extra: Vec<String>,
        /// Write a cpio initramfs here.
        #[arg(long, conflicts_with = "tree", required_unless_present_any = ["tree", "uki"])]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "zstd")]
        compression: CompressionArg,
        /// Write the image as a directory here instead (needs root).
        #[arg(long, conflicts_with = "uki")]
        tree: Option<PathBuf>,
        /// VERSION_ID of /etc/os-release (default: the builder's version).
        #[arg(long)]
        image_version: Option<String>,
        /// BUILD_ID of /etc/os-release and of the inventory (default:
        /// derived from the contents).
        #[arg(long)]
        build_id: Option<String>,
        /// Kernel command line of the unified kernel image.
        #[arg(long, default_value = build::DEFAULT_CMDLINE)]
        cmdline: String,
        /// Write the unified kernel image (EFI stub + os-release, command
        /// line, initramfs, kernel) here.
        #[arg(long)]
        uki: Option<PathBuf>,
        /// The kernel (an EFI-stub bzImage). Default: boot/vmlinuz-VERSION
        /// next to the lib/modules/VERSION of --modules-root (an unpacked
        /// Debian linux-image package).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// The PE EFI stub (Debian's systemd-boot-efi).
        #[arg(long, default_value = uki::DEFAULT_STUB)]
        stub: PathBuf,
        /// Also write a GPT disk image with the ESP (EFI/BOOT/BOOTX64.EFI)
        /// and the data partition here.
        #[arg(long, requires = "uki")]
        disk: Option<PathBuf>,
        /// Size of the disk image in MiB.
        #[arg(long, default_value_t = 1024)]
        disk_size_mib: u64,
        /// Size of the EFI system partition in MiB (default: twice the
        /// executable plus 8, at least 64).
        #[arg(long)]
        esp_size_mib: Option<u64>,
        /// Leave the data partition out of the disk image.
        #[arg(long)]
        no_data_partition: bool,
        /// Copy this directory onto the data partition (e.g. meta/etc/...).
        #[arg(long, conflicts_with = "no_data_partition")]
        data_seed: Option<PathBuf>,
        /// Also write the disk image as qcow2 here (needs qemu-img).
        #[arg(long, requires = "disk")]
        qcow2: Option<PathBuf>,
    },
    /// Generate docs/reference/files.md from the spec.
    Docs {
        #[arg(long, default_value_os_t = build::default_spec())]
        spec: PathBuf,
        /// Output file; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check the spec and report its errors.
    Check {
        #[arg(long, default_value_os_t = build::default_spec())]
        spec: PathBuf,
    },
    /// Print an inventory file, one entry per line.
    Inventory { file: PathBuf },
    /// Verify a directory tree against an inventory.
    Verify {
        #[arg(long)]
        root: PathBuf,
        /// Inventory file; default: ROOT/lib/kios/inventory.
        #[arg(long)]
        inventory: Option<PathBuf>,
        /// Upper directory of the /etc overlay.
        #[arg(long)]
        etc_upper: Option<PathBuf>,
    },
    /// Measure SHA-256 throughput against sha256sum on a large file.
    BenchHash {
        /// Size of the test file in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Directory for the test file (default: the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("rootfs: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Build {
            spec,
            inputs,
            input,
            modules_root,
            kernel_version,
            modules,
            extra,
            out,
            compression,
            tree,
            image_version,
            build_id,
            cmdline,
            uki: uki_out,
            kernel,
            stub,
            disk: disk_out,
            disk_size_mib,
            esp_size_mib,
            no_data_partition,
            data_seed,
            qcow2,
        } => {
            let mut opts = BuildOptions::new(inputs);
            opts.spec = spec;
            if let Some(v) = image_version {
                opts.release.version = v;
            }
            opts.release.build_id = build_id;
            opts.cmdline = cmdline;
            let kernel = kernel.or_else(|| {
                modules_root
                    .as_deref()
                    .zip(kernel_version.as_deref())
                    .and_then(|(root, version)| debian_kernel_of(root, version))
            });
            for i in input {
                let (name, path) = i
                    .split_once('=')
                    .with_context(|| format!("--input '{i}' is not NAME=PATH"))?;
                opts.inputs.insert(name.to_string(), PathBuf::from(path));
            }
            if let (Some(root), Some(version)) = (modules_root, kernel_version) {
                opts.modules = Some(ModulesOptions {
                    modules_root: root,
                    version,
                    names: modules,
                });
            }
            for x in extra {
                let mut parts = x.rsplitn(3, ':');
                let (Some(mode), Some(image), Some(host)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    bail!("--extra '{x}' is not HOST:IMAGE:MODE");
                };
                let mode = spec::parse_mode(mode)
                    .with_context(|| format!("--extra '{x}': '{mode}' is not an octal mode"))?;
                opts.extra_files
                    .push((PathBuf::from(host), image.to_string(), mode));
            }
            let started = Instant::now();
            let c = match compression {
                CompressionArg::Gzip => Compression::Gzip,
                CompressionArg::Zstd => Compression::Zstd,
                CompressionArg::None => Compression::None,
            };
            let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            let mut inv = None;
            if let Some(out) = &out {
                inv = Some(build::build_cpio(&opts, out, c)?);
                eprintln!("rootfs: wrote {} ({} bytes)", out.display(), size(out));
            }
            if let Some(tree) = &tree {
                inv = Some(build::build_tree(&opts, tree)?);
                eprintln!("rootfs: wrote tree {}", tree.display());
            }
            if let Some(uki_out) = &uki_out {
                let Some(kernel) = kernel else {
                    bail!("--uki needs --kernel (or --modules-root of an unpacked kernel package)");
                };
                inv = Some(uki::build_uki(&opts, c, &stub, &kernel, uki_out)?);
                eprintln!(
                    "rootfs: wrote {} ({} bytes; kernel {})",
                    uki_out.display(),
                    size(uki_out),
                    kernel.display()
                );
                if let Some(disk_out) = &disk_out {
                    let mut d = DiskOptions::new(uki_out, disk_out);
                    d.size_mib = disk_size_mib;
                    d.esp_mib = esp_size_mib;
                    d.data_partition = !no_data_partition;
                    d.data_seed = data_seed;
                    d.qcow2 = qcow2.clone();
                    let report = disk::build_disk(&d)?;
                    eprintln!(
                        "rootfs: wrote {} ({} MiB; ESP {} MiB{})",
                        disk_out.display(),
                        report.bytes >> 20,
                        report.esp.bytes >> 20,
                        report
                            .data
                            .map(|p| format!(", data partition {} MiB", p.bytes >> 20))
                            .unwrap_or_default()
                    );
                    if let Some(q) = &qcow2 {
                        eprintln!("rootfs: wrote {} ({} bytes)", q.display(), size(q));
                    }
                }
            }
            let Some(inv) = inv else {
                bail!("give --out, --tree or --uki");
            };
            let in_image = inv.entries.iter().filter(|e| e.presence.in_image()).count();
            eprintln!(
                "rootfs: {in_image} paths in the image, {} inventory entries, build id {}, {:.1}s",
                inv.entries.len(),
                inv.build_id,
                started.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        Command::Docs { spec, out } => {
            let spec = spec::load(&spec)?;
            let page = docs::render(&spec);
            match out {
                Some(path) => std::fs::write(&path, page)
                    .with_context(|| format!("write {}", path.display()))?,
                None => print_stdout(&page)?,
            }
            Ok(0)
        }
        Command::Check { spec } => {
            let s = spec::load(&spec)?;
            println!(
                "{}: {} entries, {} components: ok",
                spec.display(),
                s.entries.len(),
                s.components.len()
            );
            Ok(0)
        }
        Command::Inventory { file } => {
            let inv = Inventory::read(&file)?;
            let mut text = String::new();
            for e in &inv.entries {
                text.push_str(&format!(
                    "{} {} {} {} {} {}{}\n",
                    e.mode_string(),
                    e.owner_string(),
                    e.kind.as_str(),
                    e.presence.as_str(),
                    e.path,
                    e.sha256_hex()
                        .map(|h| format!("sha256:{h} "))
                        .unwrap_or_default(),
                    e.target
                        .as_deref()
                        .map(|t| format!("-> {t}"))
                        .unwrap_or_default(),
                ));
            }
            print_stdout(&text)?;
            Ok(0)
        }
        Command::Verify {
            root,
            inventory,
            etc_upper,
        } => {
            let inv_path = inventory
                .unwrap_or_else(|| root.join(kios_rootfs::INVENTORY_PATH.trim_start_matches('/')));
            let inv = Inventory::read(&inv_path)?;
            let opts = VerifyOptions {
                etc_upper,
                ..VerifyOptions::default()
            };
            let report = verify::verify_tree(&root, &inv, &opts)?;
            let mut text = String::new();
            for f in &report.findings {
                text.push_str(&format!(
                    "{}\t{}\t{}\n",
                    f.problem.as_str(),
                    f.path,
                    f.detail
                ));
            }
            print_stdout(&text)?;
            eprintln!(
                "rootfs: checked {} entries, {} findings{}",
                report.checked,
                report.findings.len(),
                if report.omitted > 0 {
                    format!(" ({} omitted)", report.omitted)
                } else {
                    String::new()
                }
            );
            Ok(if report.is_clean() { 0 } else { 1 })
        }
        Command::BenchHash { size_mib, dir } => bench_hash(size_mib, dir.as_deref()),
    }
}

/// The kernel of an unpacked Debian linux-image package, given its
/// `lib/modules/VERSION`: `boot/vmlinuz-VERSION` of the same root.
fn debian_kernel_of(modules_root: &Path, version: &str) -> Option<PathBuf> {
    let root = modules_root.parent()?.parent()?.parent()?;
    let kernel = root.join("boot").join(format!("vmlinuz-{version}"));
    kernel.is_file().then_some(kernel)
}

/// Prints; a closed pipe (`| head`) is a normal end.
fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn bench_hash(size_mib: u64, dir: Option<&Path>) -> Result<i32> {
    if size_mib == 0 || size_mib > 16 * 1024 {
        bail!("--size-mib must be between 1 and 16384");
    }
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("kios-bench-hash-{}", std::process::id()));
    let result = (|| -> Result<i32> {
        // Pseudo-random content (xorshift), written once.
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?,
        );
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..size_mib {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            f.write_all(&block)?;
        }
        f.flush()?;
        drop(f);
        let bytes = size_mib as f64 * 1024.0 * 1024.0;
        // Warm the page cache so both sides read from memory.
        hash::sha256_file(&path)?;
        let t = Instant::now();
        let (ours, _) = hash::sha256_file(&path)?;
        let ours_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = std::process::Command::new("sha256sum").arg(&path).output();
        let theirs_s = t.elapsed().as_secs_f64();
        println!("file: {} MiB ({} byte chunks)", size_mib, hash::CHUNK_BYTES);
        println!(
            "kios-rootfs sha256: {:8.1} MB/s ({:.3} s)",
            bytes / 1e6 / ours_s,
            ours_s
        );
        match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let same = text.split_whitespace().next() == Some(hash::hex(&ours).as_str());
                println!(
                    "sha256sum:          {:8.1} MB/s ({:.3} s), same digest: {same}",
                    bytes / 1e6 / theirs_s,
                    theirs_s
                );
                println!("ratio (ours / sha256sum): {:.2}", theirs_s / ours_s);
                if !same {
                    bail!("digests differ");
                }
            }
            _ => println!("sha256sum: not available"),
        }
        // Budget: verify of a 300 MB image (real cri-o, kubelet, libraries) in under 2 s.
        let budget_mb = 300.0;
        let projected = budget_mb / (bytes / 1e6 / ours_s);
        println!(
            "budget: hashing a {budget_mb:.0} MB image takes {projected:.2} s (budget 2.00 s): {}",
            if projected <= 2.0 { "ok" } else { "OVER" }
        );
        Ok(0)
    })();
    let _ = std::fs::remove_file(&path);
    result
}
