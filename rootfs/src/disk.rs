//! The GPT disk image an administrator writes to a disk or uploads as a
//! cloud image: an EFI system partition (FAT32) holding the unified kernel
//! image at the removable-media path `EFI/BOOT/BOOTX64.EFI`, which UEFI
//! firmware starts without any boot entry, and, unless asked not to, an
//! empty ext4 data partition with the kiOS type GUID.
//!
//! Debian's tools do the file systems and the table: mtools (`mformat`,
//! `mmd`, `mcopy`) the ESP without a loop device or a mount, `mkfs.ext4`
//! the data partition, `sgdisk` the GPT; `qemu-img` converts to qcow2 when
//! asked. Every partition is made as a separate image and copied into the
//! disk at its offset, skipping zero blocks so the raw image stays sparse.
//!
//! Reproducible: every identifier (disk and partition GUIDs, the FAT volume
//! serial, the ext4 UUID and directory hash seed) is derived from the
//! SHA-256 of the EFI executable, and every timestamp is
//! `SOURCE_DATE_EPOCH` (default 1980-01-01, the FAT epoch), so the same
//! executable and options give a byte-identical disk.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::hash;

/// GPT type GUID of an EFI system partition.
pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// GPT type GUID of the kiOS data partition.
pub const DATA_TYPE: &str = "97aac693-d920-465a-94fe-eb59fc86dfaa";
/// Where firmware looks for a boot loader on removable media (x86-64).
pub const BOOT_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// The FAT epoch: timestamps when SOURCE_DATE_EPOCH is not set.
pub const DEFAULT_EPOCH: u64 = 315_532_800;

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// The first partition starts at 1 MiB; the last MiB holds the backup GPT.
const GPT_MIB: u64 = 1;
/// Smallest FAT32 ESP mformat makes with 512-byte clusters, rounded up.
const MIN_ESP_MIB: u64 = 64;
const MIN_DATA_MIB: u64 = 16;

/// Errors of making the disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run {tool}: {source} (install Debian's {package}; see scripts/deps)")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error("disk size {size_mib} MiB is too small: the ESP needs {esp_mib} MiB{data}, plus {gpt} MiB of partition tables", data = if *.data_mib > 0 { format!(", the data partition at least {} MiB", .data_mib) } else { String::new() }, gpt = 2 * GPT_MIB)]
    TooSmall {
        size_mib: u64,
        esp_mib: u64,
        data_mib: u64,
    },
    #[error("the data partition seed {0} is not a directory")]
    Seed(PathBuf),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// How to make the disk.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// The EFI executable (the unified kernel image).
    pub efi: PathBuf,
    /// The raw disk image to write.
    pub out: PathBuf,
    /// Size of the whole disk in MiB.
    pub size_mib: u64,
    /// Size of the ESP in MiB; default twice the executable plus 8 MiB
    /// (room for a second image during an update), at least 64.
    pub esp_mib: Option<u64>,
    /// An ext4 data partition in the rest of the disk.
    pub data_partition: bool,
    /// A directory copied onto the data partition (e.g. `meta/etc/...`
    /// files of the /etc overlay); by default it is empty.
    pub data_seed: Option<PathBuf>,
    /// Also write the disk as qcow2 here.
    pub qcow2: Option<PathBuf>,
    /// Timestamps of the file systems (seconds since 1970).
    pub epoch: u64,
}

impl DiskOptions {
    pub fn new(efi: impl Into<PathBuf>, out: impl Into<PathBuf>) -> DiskOptions {
        DiskOptions {
            efi: efi.into(),
            out: out.into(),
            size_mib: 1024,
            esp_mib: None,
            data_partition: true,
            data_seed: None,
            qcow2: None,
            epoch: source_date_epoch(),
        }
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, or [`DEFAULT_EPOCH`].
pub fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_EPOCH)
}

/// Where a partition is on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub number: u32,
    pub offset: u64,
    pub bytes: u64,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReport {
    pub bytes: u64,
    pub esp: Extent,
    pub data: Option<Extent>,
    pub disk_guid: String,
}

/// A GUID string derived from `seed` and a label (random-looking, version
/// 4 and RFC 4122 variant bits set, as sgdisk and mkfs expect).
fn derived_guid(seed: &[u8; 32], label: &str) -> String {
    let mut input = seed.to_vec();
    input.extend_from_slice(label.as_bytes());
    let mut b = hash::sha256_bytes(&input);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hash::hex(&b[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn run(tool: &'static str, package: &'static str, command: &mut Command) -> Result<(), DiskError> {
    let output = command.output().map_err(|source| DiskError::ToolMissing {
        tool,
        package,
        source,
    })?;
    if !output.status.success() {
        return Err(DiskError::ToolFailed {
            tool,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

fn sized_file(path: &Path, bytes: u64) -> Result<(), DiskError> {
    let _ = std::fs::remove_file(path);
    File::create(path)
        .and_then(|f| f.set_len(bytes))
        .map_err(io("create", path))
}

fn mtools(tool: &'static str, epoch: u64) -> Command {
    let mut c = Command::new(tool);
    // No ~/.mtoolsrc, no geometry complaints about an image file, and
    // fixed timestamps.
    c.env("MTOOLSRC", "/dev/null")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("TZ", "UTC");
    c
}

/// The FAT32 ESP image with the executable at [`BOOT_PATH`].
fn make_esp(
    path: &Path,
    bytes: u64,
    efi: &Path,
    serial: &str,
    epoch: u64,
) -> Result<(), DiskError> {
    sized_file(path, bytes)?;
    let image = path.display().to_string();
    run(
        "mformat",
        "mtools",
        mtools("mformat", epoch).args(["-i", &image, "-F", "-N", serial, "-v", "KIOS-ESP", "::"]),
    )?;
    run(
        "mmd",
        "mtools",
        mtools("mmd", epoch).args(["-i", &image, "::/EFI", "::/EFI/BOOT"]),
    )?;
    run(
        "mcopy",
        "mtools",
        mtools("mcopy", epoch)
            .args(["-i", &image])
            .arg(efi)
            .arg(format!("::/{BOOT_PATH}")),
    )
}

/// The ext4 data partition image, empty or with the seed's files.
fn make_data(
    path: &Path,
    bytes: u64,
    uuid: &str,
    seed: Option<&Path>,
    epoch: u64,
) -> Result<(), DiskError> {
    sized_file(path, bytes)?;
    let mut c = Command::new("mkfs.ext4");
    c.env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .args(["-q", "-F", "-L", "kios-data", "-U", uuid, "-E"])
        .arg(format!("root_owner=0:0,hash_seed={uuid}"));
    if let Some(seed) = seed {
        if !seed.is_dir() {
            return Err(DiskError::Seed(seed.to_owned()));
        }
        c.arg("-d").arg(seed);
    }
    c.arg(path).arg(format!("{}k", bytes / 1024));
    run("mkfs.ext4", "e2fsprogs", &mut c)
}

/// Copies `part` into `disk` at `offset`, leaving all-zero blocks as holes.
fn copy_sparse(
    part: &Path,
    disk: &mut File,
    disk_path: &Path,
    offset: u64,
) -> Result<(), DiskError> {
    let mut src = File::open(part).map_err(io("open", part))?;
    let mut block = vec![0u8; 64 * 1024];
    let mut at = offset;
    loop {
        let mut filled = 0;
        while filled < block.len() {
            let n = src.read(&mut block[filled..]).map_err(io("read", part))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        if block[..filled].iter().any(|&b| b != 0) {
            disk.seek(SeekFrom::Start(at))
                .map_err(io("seek", disk_path))?;
            disk.write_all(&block[..filled])
                .map_err(io("write", disk_path))?;
        }
        at += filled as u64;
    }
}

/// Writes the disk image (and its qcow2 form when asked).
pub fn build_disk(opts: &DiskOptions) -> Result<DiskReport, DiskError> {
    let efi = std::fs::read(&opts.efi).map_err(io("read", &opts.efi))?;
    let seed = hash::sha256_bytes(&efi);
    let esp_mib = opts
        .esp_mib
        .unwrap_or_else(|| (2 * efi.len() as u64).div_ceil(MIB) + 8)
        .max(MIN_ESP_MIB);
    let min_data = if opts.data_partition { MIN_DATA_MIB } else { 0 };
    if opts.size_mib < esp_mib + min_data + 2 * GPT_MIB {
        return Err(DiskError::TooSmall {
            size_mib: opts.size_mib,
            esp_mib,
            data_mib: min_data,
        });
    }
    let work = |suffix: &str| {
        let mut name = opts.out.file_name().unwrap_or_default().to_owned();
        name.push(suffix);
        opts.out.with_file_name(name)
    };
    let esp = Extent {
        number: 1,
        offset: GPT_MIB * MIB,
        bytes: esp_mib * MIB,
    };
    let data = opts.data_partition.then(|| Extent {
        number: 2,
        offset: esp.offset + esp.bytes,
        bytes: (opts.size_mib - esp_mib - 2 * GPT_MIB) * MIB,
    });
    let serial = &hash::hex(&seed)[..8];
    let esp_image = work(".esp");
    make_esp(&esp_image, esp.bytes, &opts.efi, serial, opts.epoch)?;
    let data_image = work(".data");
    if let Some(d) = &data {
        make_data(
            &data_image,
            d.bytes,
            &derived_guid(&seed, "ext4"),
            opts.data_seed.as_deref(),
            opts.epoch,
        )?;
    }

    let bytes = opts.size_mib * MIB;
    sized_file(&opts.out, bytes)?;
    let disk_guid = derived_guid(&seed, "disk");
    let last = |e: &Extent| (e.offset + e.bytes) / SECTOR - 1;
    let mut sgdisk = Command::new("sgdisk");
    sgdisk
        .arg("--clear")
        .arg(format!("--disk-guid={disk_guid}"))
        .arg(format!("--new=1:{}:{}", esp.offset / SECTOR, last(&esp)))
        .arg(format!("--typecode=1:{ESP_TYPE}"))
        .arg(format!("--partition-guid=1:{}", derived_guid(&seed, "esp")))
        .arg("--change-name=1:EFI system partition");
    if let Some(d) = &data {
        sgdisk
            .arg(format!("--new=2:{}:{}", d.offset / SECTOR, last(d)))
            .arg(format!("--typecode=2:{DATA_TYPE}"))
            .arg(format!(
                "--partition-guid=2:{}",
                derived_guid(&seed, "data")
            ))
            .arg("--change-name=2:kios-data");
    }
    run("sgdisk", "gdisk", sgdisk.arg(&opts.out))?;

    let mut disk = OpenOptions::new()
        .write(true)
        .open(&opts.out)
        .map_err(io("open", &opts.out))?;
    copy_sparse(&esp_image, &mut disk, &opts.out, esp.offset)?;
    if let Some(d) = &data {
        copy_sparse(&data_image, &mut disk, &opts.out, d.offset)?;
    }
    disk.sync_all().map_err(io("sync", &opts.out))?;
    drop(disk);
    for tmp in [&esp_image, &data_image] {
        let _ = std::fs::remove_file(tmp);
    }
    if let Some(qcow2) = &opts.qcow2 {
        let _ = std::fs::remove_file(qcow2);
        run(
            "qemu-img",
            "qemu-utils",
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&opts.out)
                .arg(qcow2),
        )?;
    }
    Ok(DiskReport {
        bytes,
        esp,
        data,
        disk_guid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kios-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn tool_output(cmd: &mut Command) -> String {
        let out = cmd.output().expect("tool from scripts/deps");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn extract(disk: &Path, e: &Extent, out: &Path) {
        let mut f = File::open(disk).unwrap();
        f.seek(SeekFrom::Start(e.offset)).unwrap();
        let mut part = File::create(out).unwrap();
        std::io::copy(&mut f.take(e.bytes), &mut part).unwrap();
    }

    #[test]
    fn disk_is_reproducible_and_holds_the_executable_and_the_data_partition() {
        let dir = scratch("repro");
        let efi = dir.join("kios.efi");
        std::fs::write(&efi, b"MZ not really an executable").unwrap();
        let build = |name: &str| {
            let mut opts = DiskOptions::new(&efi, dir.join(name));
            opts.size_mib = 96;
            opts.epoch = 1_700_000_000;
            let report = build_disk(&opts).unwrap();
            (std::fs::read(dir.join(name)).unwrap(), report)
        };
        let (a, report) = build("a.img");
        // Later, from a file with another mtime: the same bytes.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(&efi, b"MZ not really an executable").unwrap();
        let (b, _) = build("b.img");
        assert_eq!(a.len() as u64, 96 * MIB);
        assert!(a == b, "two builds of the same disk differ");

        let table = tool_output(Command::new("sgdisk").arg("-p").arg(dir.join("a.img")));
        assert!(table.contains("EF00"), "{table}");
        let data = report.data.unwrap();
        assert_eq!(report.esp.offset, MIB);
        assert_eq!(data.offset, MIB + 64 * MIB);
        assert_eq!(data.bytes, 96 * MIB - 64 * MIB - 2 * MIB);
        let info = tool_output(
            Command::new("sgdisk")
                .arg("-i")
                .arg("2")
                .arg(dir.join("a.img")),
        );
        assert!(info.to_lowercase().contains(DATA_TYPE), "{info}");

        let esp = dir.join("esp.part");
        extract(&dir.join("a.img"), &report.esp, &esp);
        let copied = dir.join("copied.efi");
        tool_output(
            mtools("mcopy", 0)
                .arg("-i")
                .arg(&esp)
                .arg(format!("::/{BOOT_PATH}"))
                .arg(&copied),
        );
        assert_eq!(
            std::fs::read(&copied).unwrap(),
            b"MZ not really an executable"
        );
        tool_output(Command::new("fsck.fat").arg("-n").arg(&esp));

        let ext4 = dir.join("data.part");
        extract(&dir.join("a.img"), &data, &ext4);
        tool_output(Command::new("e2fsck").arg("-fn").arg(&ext4));

        // Another executable: other identifiers.
        std::fs::write(&efi, b"MZ another one").unwrap();
        let (c, report_c) = build("c.img");
        assert_ne!(report_c.disk_guid, report.disk_guid);
        assert!(a != c);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_qcow2_holds_the_same_disk_and_is_reproducible() {
        let dir = scratch("qcow2");
        let efi = dir.join("kios.efi");
        std::fs::write(&efi, b"MZ not really an executable").unwrap();
        let build = |name: &str| {
            let mut opts = DiskOptions::new(&efi, dir.join(format!("{name}.img")));
            opts.size_mib = 96;
            opts.epoch = 1_700_000_000;
            opts.qcow2 = Some(dir.join(format!("{name}.qcow2")));
            build_disk(&opts).unwrap();
            std::fs::read(dir.join(format!("{name}.qcow2"))).unwrap()
        };
        let a = build("a");
        let b = build("b");
        assert!(a == b, "two qcow2 of the same disk differ");
        let info = tool_output(
            Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(dir.join("a.qcow2")),
        );
        assert!(info.contains("\"format\": \"qcow2\""), "{info}");
        assert!(
            info.contains(&format!("\"virtual-size\": {}", 96 * MIB)),
            "{info}"
        );
        // Guest-visible contents identical to the raw image.
        tool_output(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "qcow2"])
                .arg(dir.join("a.img"))
                .arg(dir.join("a.qcow2")),
        );
    }

    #[test]
    fn without_data_partition_and_too_small() {
        let dir = scratch("small");
        let efi = dir.join("kios.efi");
        std::fs::write(&efi, b"MZ").unwrap();
        let mut opts = DiskOptions::new(&efi, dir.join("d.img"));
        opts.size_mib = 70;
        assert!(matches!(build_disk(&opts), Err(DiskError::TooSmall { .. })));
        opts.data_partition = false;
        let report = build_disk(&opts).unwrap();
        assert_eq!(report.data, None);
        let table = tool_output(Command::new("sgdisk").arg("-p").arg(dir.join("d.img")));
        assert!(!table.contains("kios-data"), "{table}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn guids_are_stable_and_well_formed() {
        let seed = [7u8; 32];
        let g = derived_guid(&seed, "disk");
        assert_eq!(g, derived_guid(&seed, "disk"));
        assert_ne!(g, derived_guid(&seed, "esp"));
        assert_eq!(g.len(), 36);
        assert_eq!(&g[14..15], "4");
    }
}
