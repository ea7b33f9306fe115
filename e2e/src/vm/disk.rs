//! The data partition disk of a VM: a raw image with a GPT whose only
//! partition carries the kiOS data partition type GUID, formatted ext4 with
//! the kiOS layout, and the tools to read it back after the VM stopped.
//! The same reading back works on the builder's UEFI disk image, whose data
//! partition is partition 2 ([`DataDisk::within`]).
//!
//! The ext4 filesystem is made as a separate partition image with
//! `mkfs.ext4 -d <staging>` (so no loop device and no host mount is ever
//! used), then copied into the disk at the partition's offset. Reading back
//! copies the partition out again and runs `e2fsck -fn` / `debugfs` on it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{run_tool, VmError};

/// GPT partition type GUID of the kiOS data partition.
pub const DATA_PARTITION_TYPE: &str = "97aac693-d920-465a-94fe-eb59fc86dfaa";

/// First sector of the partition (1 MiB aligned).
const PARTITION_START_SECTOR: u64 = 2048;
const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;

/// Directories of the kiOS data partition layout.
pub const LAYOUT_DIRS: &[&str] = &[
    "meta",
    "meta/etc",
    "meta/.etc.work",
    "meta/log",
    "data",
    "data/oci",
    "data/pods",
    "modules",
];

/// The file system a disk's partition is formatted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionFormat {
    /// ext4 with the kiOS layout (`mkfs.ext4 -d`).
    Ext4,
    /// FAT (`mkfs.vfat`), empty: a partition that is not ext4.
    Vfat,
}

/// What goes on a fresh data partition.
#[derive(Debug, Clone)]
pub struct DiskLayout {
    /// Size of the ext4 partition in MiB.
    pub size_mib: u64,
    /// The partition's GPT type GUID ([`DATA_PARTITION_TYPE`] unless a test
    /// wants a disk without a kiOS data partition).
    pub partition_type: String,
    /// Its file system (ext4 unless a test wants another).
    pub format: PartitionFormat,
    /// Files of the /etc overlay: path relative to /etc (e.g.
    /// `kubernetes/node-labels`) and content; they land in `meta/etc/`.
    pub etc: Vec<(String, Vec<u8>)>,
    /// Files already in /var/log (`meta/log/`).
    pub log: Vec<(String, Vec<u8>)>,
}

impl Default for DiskLayout {
    fn default() -> DiskLayout {
        DiskLayout {
            size_mib: 64,
            partition_type: DATA_PARTITION_TYPE.to_owned(),
            format: PartitionFormat::Ext4,
            etc: Vec::new(),
            log: Vec::new(),
        }
    }
}

impl DiskLayout {
    /// Adds an /etc overlay file.
    pub fn etc_file(mut self, path: &str, content: impl Into<Vec<u8>>) -> DiskLayout {
        self.etc.push((path.to_owned(), content.into()));
        self
    }
}

/// A disk image holding a kiOS data partition.
#[derive(Debug)]
pub struct DataDisk {
    dir: PathBuf,
    image: PathBuf,
    partition_offset: u64,
    partition_bytes: u64,
}

fn check_relative(path: &str) -> Result<(), VmError> {
    let p = Path::new(path);
    if path.is_empty()
        || p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(VmError::Disk(format!(
            "layout path {path:?} must be relative without '..'"
        )));
    }
    Ok(())
}

fn stage_files(root: &Path, files: &[(String, Vec<u8>)]) -> Result<(), VmError> {
    for (rel, content) in files {
        check_relative(rel)?;
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| VmError::io("create", parent, e))?;
        }
        fs::write(&path, content).map_err(|e| VmError::io("write", &path, e))?;
    }
    Ok(())
}

/// Writes the layout as a folder `<dir>/datapart-staging` (what the data
/// partition is made from) and returns it.
pub fn stage_layout(dir: &Path, layout: &DiskLayout) -> Result<PathBuf, VmError> {
    let staging = dir.join("datapart-staging");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| VmError::io("remove", &staging, e))?;
    }
    for d in LAYOUT_DIRS {
        let path = staging.join(d);
        fs::create_dir_all(&path).map_err(|e| VmError::io("create", &path, e))?;
    }
    stage_files(&staging.join("meta/etc"), &layout.etc)?;
    stage_files(&staging.join("meta/log"), &layout.log)?;
    Ok(staging)
}

impl DataDisk {
    /// The data partition of another disk image (e.g. partition 2 of the
    /// builder's UEFI disk), at `offset` with `bytes`.
    pub fn within(dir: &Path, image: &Path, offset: u64, bytes: u64) -> DataDisk {
        DataDisk {
            dir: dir.to_owned(),
            image: image.to_owned(),
            partition_offset: offset,
            partition_bytes: bytes,
        }
    }

    /// Creates `<dir>/disk.img` with the layout; `dir` keeps the staging
    /// folder and partition images for debugging.
    pub fn create(dir: &Path, layout: &DiskLayout) -> Result<DataDisk, VmError> {
        let staging = stage_layout(dir, layout)?;

        let partition_bytes = layout.size_mib.max(16) * MIB;
        let part = dir.join("datapart.ext4");
        let _ = fs::remove_file(&part);
        match layout.format {
            PartitionFormat::Ext4 => run_tool(
                Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-L", "kios-data", "-E", "root_owner=0:0", "-d"])
                    .arg(&staging)
                    .arg(&part)
                    .arg(format!("{}k", partition_bytes / 1024)),
                "mkfs.ext4",
            )?,
            PartitionFormat::Vfat => run_tool(
                Command::new("mkfs.vfat")
                    .args(["-n", "KIOS-DATA", "-C"])
                    .arg(&part)
                    .arg(format!("{}", partition_bytes / 1024)),
                "mkfs.vfat",
            )?,
        };

        // GPT: 1 MiB before the partition, 1 MiB after it for the backup table.
        let image = dir.join("disk.img");
        let total = PARTITION_START_SECTOR * SECTOR + partition_bytes + MIB;
        {
            let f = File::create(&image).map_err(|e| VmError::io("create", &image, e))?;
            f.set_len(total)
                .map_err(|e| VmError::io("resize", &image, e))?;
        }
        let end_sector = PARTITION_START_SECTOR + partition_bytes / SECTOR - 1;
        run_tool(
            Command::new("sgdisk")
                .arg("--clear")
                .arg(format!("--new=1:{PARTITION_START_SECTOR}:{end_sector}"))
                .arg(format!("--typecode=1:{}", layout.partition_type))
                .arg("--change-name=1:kios-data")
                .arg(&image),
            "sgdisk",
        )?;
        let disk = DataDisk {
            dir: dir.to_owned(),
            image,
            partition_offset: PARTITION_START_SECTOR * SECTOR,
            partition_bytes,
        };
        disk.write_partition(&part)?;
        Ok(disk)
    }

    /// The raw disk image given to qemu.
    pub fn image(&self) -> &Path {
        &self.image
    }

    fn offset(&self) -> u64 {
        self.partition_offset
    }

    /// Where the partition starts in the disk image, in bytes.
    pub fn partition_offset(&self) -> u64 {
        self.partition_offset
    }

    /// Overwrites bytes of the partition at `offset` from its start (VM
    /// stopped), e.g. to damage its superblock.
    pub fn patch_partition(&self, offset: u64, bytes: &[u8]) -> Result<(), VmError> {
        if offset + bytes.len() as u64 > self.partition_bytes {
            return Err(VmError::Disk(format!(
                "patch at {offset} (+{}) is outside the {}-byte partition",
                bytes.len(),
                self.partition_bytes
            )));
        }
        let mut disk = OpenOptions::new()
            .write(true)
            .open(&self.image)
            .map_err(|e| VmError::io("open", &self.image, e))?;
        disk.seek(SeekFrom::Start(self.offset() + offset))
            .map_err(|e| VmError::io("seek", &self.image, e))?;
        disk.write_all(bytes)
            .map_err(|e| VmError::io("write", &self.image, e))?;
        Ok(())
    }

    /// Copies the partition out of the disk into `<dir>/<name>`.
    pub fn read_partition(&self, name: &str) -> Result<PathBuf, VmError> {
        let out_path = self.dir.join(name);
        let mut disk = File::open(&self.image).map_err(|e| VmError::io("open", &self.image, e))?;
        disk.seek(SeekFrom::Start(self.offset()))
            .map_err(|e| VmError::io("seek", &self.image, e))?;
        let mut out = File::create(&out_path).map_err(|e| VmError::io("create", &out_path, e))?;
        let copied = std::io::copy(&mut (&mut disk).take(self.partition_bytes), &mut out)
            .map_err(|e| VmError::io("copy", &out_path, e))?;
        if copied != self.partition_bytes {
            return Err(VmError::Disk(format!(
                "{} is short: copied {copied} of {} partition bytes",
                self.image.display(),
                self.partition_bytes
            )));
        }
        Ok(out_path)
    }

    /// Copies a partition image into the disk at the partition's offset.
    pub fn write_partition(&self, part: &Path) -> Result<(), VmError> {
        let mut src = File::open(part).map_err(|e| VmError::io("open", part, e))?;
        let len = src
            .metadata()
            .map_err(|e| VmError::io("stat", part, e))?
            .len();
        if len != self.partition_bytes {
            return Err(VmError::Disk(format!(
                "{} has {len} bytes, the partition {}",
                part.display(),
                self.partition_bytes
            )));
        }
        let mut disk = OpenOptions::new()
            .write(true)
            .open(&self.image)
            .map_err(|e| VmError::io("open", &self.image, e))?;
        disk.seek(SeekFrom::Start(self.offset()))
            .map_err(|e| VmError::io("seek", &self.image, e))?;
        std::io::copy(&mut src, &mut disk).map_err(|e| VmError::io("write", &self.image, e))?;
        disk.flush()
            .map_err(|e| VmError::io("flush", &self.image, e))?;
        Ok(())
    }

    /// `e2fsck -fn` on the partition, and its superblock (`dumpe2fs -h`):
    /// `Ok(report)` when the check passes AND the filesystem was cleanly
    /// unmounted (state `clean`, no journal to replay); an error with the
    /// reason otherwise. Call only while no VM uses the disk.
    pub fn fsck(&self) -> Result<String, VmError> {
        let part = self.read_partition("fsck.ext4")?;
        let output = Command::new("e2fsck")
            .arg("-fn")
            .arg(&part)
            .output()
            .map_err(|source| VmError::ToolMissing {
                tool: "e2fsck".into(),
                hint: "apt-get install e2fsprogs",
                source,
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // A journal still to replay means the filesystem was not cleanly
        // unmounted, even when the read-only check skips it and passes.
        let superblock = run_tool(Command::new("dumpe2fs").arg("-h").arg(&part), "dumpe2fs")?;
        let unclean: Vec<&str> = superblock
            .lines()
            .filter(|l| {
                (l.starts_with("Filesystem features:") && l.contains("needs_recovery"))
                    || (l.starts_with("Filesystem state:")
                        && l.split(':').nth(1).map(str::trim) != Some("clean"))
            })
            .collect();
        if output.status.success() && unclean.is_empty() {
            Ok(text)
        } else if output.status.success() {
            Err(VmError::Disk(format!(
                "{} was not cleanly unmounted: {}\n{text}",
                part.display(),
                unclean.join("; ")
            )))
        } else {
            Err(VmError::Disk(format!(
                "e2fsck -fn {} is not clean ({}):\n{text}",
                part.display(),
                output.status
            )))
        }
    }

    /// A file's content on the partition (path from the partition's root,
    /// e.g. `/meta/log/kubelet.log`); `None` when it does not exist.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, VmError> {
        let part = self.read_partition("read.ext4")?;
        debugfs_cat(&part, path)
    }

    /// Replaces (or creates) a file on the partition, e.g. a new admin
    /// script for the next boot. The parent directory must exist.
    pub fn write_file(&self, path: &str, content: &[u8]) -> Result<(), VmError> {
        let (parent, name) = path
            .rsplit_once('/')
            .filter(|(_, n)| !n.is_empty())
            .ok_or_else(|| VmError::Disk(format!("{path:?} is not an absolute file path")))?;
        let parent = if parent.is_empty() { "/" } else { parent };
        let part = self.read_partition("write.ext4")?;
        let host_file = self.dir.join("write.content");
        fs::write(&host_file, content).map_err(|e| VmError::io("write", &host_file, e))?;
        let commands = format!(
            "cd {parent}\nrm {name}\nwrite {} {name}\nsif {name} uid 0\nsif {name} gid 0\n",
            host_file.display()
        );
        let command_file = self.dir.join("write.debugfs");
        fs::write(&command_file, commands).map_err(|e| VmError::io("write", &command_file, e))?;
        run_tool(
            Command::new("debugfs")
                .arg("-w")
                .arg("-f")
                .arg(&command_file)
                .arg(&part),
            "debugfs",
        )?;
        match debugfs_cat(&part, path)? {
            Some(back) if back == content => {}
            _ => {
                return Err(VmError::Disk(format!(
                    "debugfs did not write {path} on {}",
                    part.display()
                )))
            }
        }
        self.write_partition(&part)
    }
}

/// `debugfs -R 'cat PATH'`; `None` when debugfs says the file is not there.
fn debugfs_cat(part: &Path, path: &str) -> Result<Option<Vec<u8>>, VmError> {
    let output = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(part)
        .output()
        .map_err(|source| VmError::ToolMissing {
            tool: "debugfs".into(),
            hint: "apt-get install e2fsprogs",
            source,
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(VmError::ToolFailed {
            tool: "debugfs".into(),
            status: output.status.to_string(),
            stderr: stderr.trim().to_owned(),
        });
    }
    if stderr.contains("File not found") || stderr.contains("not found by ext2_lookup") {
        return Ok(None);
    }
    Ok(Some(output.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_paths_must_stay_inside() {
        assert!(check_relative("kubernetes/node-ip").is_ok());
        assert!(check_relative("../escape").is_err());
        assert!(check_relative("/abs").is_err());
        assert!(check_relative("").is_err());
    }
}
