//! Reading a GPT partition table from a whole-disk device (or an image
//! file): the header at LBA 1 (512- or 4096-byte sectors), its CRC, and the
//! partition entry array, to find partitions by TYPE GUID.
//!
//! GUIDs are stored mixed-endian: the first three fields little-endian, the
//! last two as bytes; [`parse_guid`] turns the usual text form into the
//! on-disk bytes. Only the primary header is read; a disk whose primary
//! table is damaged is not used (the backup is not consulted).

use crate::sys::Sys;
use std::path::{Path, PathBuf};

/// TYPE GUID of the kiOS data partition.
pub const DATAPART_TYPE_GUID: &str = "97aac693-d920-465a-94fe-eb59fc86dfaa";
/// Most partition entries read from one table.
pub const MAX_ENTRIES: u32 = 1024;
const SIGNATURE: &[u8; 8] = b"EFI PART";

/// Why a disk's GPT could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no GPT header")]
    NoHeader { path: PathBuf },
    #[error("{path}: GPT header checksum mismatch")]
    HeaderChecksum { path: PathBuf },
    #[error("{path}: GPT partition entries checksum mismatch")]
    EntriesChecksum { path: PathBuf },
    #[error("{path}: unsupported GPT geometry ({what})")]
    Geometry { path: PathBuf, what: String },
}

/// A GUID in its text form could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid guid {0:?}")]
pub struct GuidError(pub String);

/// Parse `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` into GPT on-disk byte order.
pub fn parse_guid(text: &str) -> Result<[u8; 16], GuidError> {
    let err = || GuidError(text.to_string());
    let groups: Vec<&str> = text.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    if groups.len() != 5 || groups.iter().zip(lens).any(|(g, l)| g.len() != l) {
        return Err(err());
    }
    let hex: String = groups.concat();
    let mut raw = [0u8; 16];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(err)?, 16)
            .map_err(|_| err())?;
    }
    let mut out = raw;
    out[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    out[4..6].copy_from_slice(&[raw[5], raw[4]]);
    out[6..8].copy_from_slice(&[raw[7], raw[6]]);
    Ok(out)
}

/// Format on-disk GUID bytes as text (lower case).
pub fn format_guid(b: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number (index in the entry array + 1).
    pub number: u32,
    pub type_guid: [u8; 16],
    pub first_lba: u64,
    pub last_lba: u64,
}

/// Read the partition table of a whole disk (or image file).
pub fn read_partitions(sys: &dyn Sys, disk: &Path) -> Result<Vec<Partition>, GptError> {
    let read = |off: u64, len: usize| {
        sys.read_at(disk, off, len)
            .map_err(|source| GptError::Read {
                path: disk.to_path_buf(),
                source,
            })
    };
    let geometry = |what: String| GptError::Geometry {
        path: disk.to_path_buf(),
        what,
    };
    let mut found = None;
    for sector in [512u64, 4096] {
        let header = match read(sector, 512) {
            Ok(h) => h,
            // A disk smaller than 4 KiB + 512 simply has no 4Kn header.
            Err(_) if sector == 4096 => break,
            Err(e) => return Err(e),
        };
        // The parser indexes up to byte 512: never trust a reader's length.
        if header.len() < 512 {
            return Err(geometry(format!(
                "short header read ({} bytes)",
                header.len()
            )));
        }
        if &header[0..8] == SIGNATURE {
            found = Some((sector, header));
            break;
        }
    }
    let Some((sector, header)) = found else {
        return Err(GptError::NoHeader {
            path: disk.to_path_buf(),
        });
    };
    let header_size = le32(&header, 12) as usize;
    if !(92..=512).contains(&header_size) {
        return Err(geometry(format!("header size {header_size}")));
    }
    let mut check = header[..header_size].to_vec();
    check[16..20].fill(0);
    if crc32(&check) != le32(&header, 16) {
        return Err(GptError::HeaderChecksum {
            path: disk.to_path_buf(),
        });
    }
    let entries_lba = le64(&header, 72);
    let count = le32(&header, 80);
    let entry_size = le32(&header, 84) as usize;
    if count > MAX_ENTRIES {
        return Err(geometry(format!("{count} entries")));
    }
    if !(128..=4096).contains(&entry_size) || entry_size & 7 != 0 {
        return Err(geometry(format!("entry size {entry_size}")));
    }
    let offset = entries_lba
        .checked_mul(sector)
        .ok_or_else(|| geometry(format!("entries at lba {entries_lba}")))?;
    let table = read(offset, count as usize * entry_size)?;
    if table.len() < count as usize * entry_size {
        return Err(geometry(format!(
            "short entry table read ({} bytes)",
            table.len()
        )));
    }
    if crc32(&table) != le32(&header, 88) {
        return Err(GptError::EntriesChecksum {
            path: disk.to_path_buf(),
        });
    }
    let mut out = Vec::new();
    for (i, e) in table.chunks_exact(entry_size).enumerate() {
        let mut type_guid = [0u8; 16];
        type_guid.copy_from_slice(&e[0..16]);
        if type_guid == [0u8; 16] {
            continue;
        }
        out.push(Partition {
            number: i as u32 + 1,
            type_guid,
            first_lba: le64(e, 32),
            last_lba: le64(e, 40),
        });
    }
    Ok(out)
}

/// Numbers of the partitions of `disk` with TYPE GUID `type_guid`.
pub fn find_partitions_by_type(
    sys: &dyn Sys,
    disk: &Path,
    type_guid: &[u8; 16],
) -> Result<Vec<u32>, GptError> {
    Ok(read_partitions(sys, disk)?
        .into_iter()
        .filter(|p| &p.type_guid == type_guid)
        .map(|p| p.number)
        .collect())
}

/// Device name of partition `n` of disk `disk` by the kernel's rule:
/// a disk name ending in a digit gets `p` first (nvme0n1 -> nvme0n1p1),
/// others not (sda -> sda1, vda -> vda1).
pub fn partition_name(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sys::LinuxSys;

    /// Build a GPT disk image in memory: 512-byte sectors, 128 entries of
    /// 128 bytes at LBA 2, partitions as (number, type guid text).
    pub(crate) fn build_image(sector: usize, parts: &[(u32, &str)]) -> Vec<u8> {
        let entries_lba = 2u64;
        let count = 128u32;
        let esize = 128usize;
        let table_len = count as usize * esize;
        let total = sector * 2 + table_len + 64 * sector;
        let mut img = vec![0u8; total];
        let mut table = vec![0u8; table_len];
        for (n, guid) in parts {
            let e = &mut table[(*n as usize - 1) * esize..*n as usize * esize];
            e[0..16].copy_from_slice(&parse_guid(guid).expect("test guid"));
            e[16] = *n as u8; // unique guid: anything non-zero
            e[32..40].copy_from_slice(&(100u64 * u64::from(*n)).to_le_bytes());
            e[40..48].copy_from_slice(&(100u64 * u64::from(*n) + 50).to_le_bytes());
        }
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&count.to_le_bytes());
        h[84..88].copy_from_slice(&(esize as u32).to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&table).to_le_bytes());
        let c = crc32(&h);
        h[16..20].copy_from_slice(&c.to_le_bytes());
        img[sector..sector + 92].copy_from_slice(&h);
        let t0 = entries_lba as usize * sector;
        img[t0..t0 + table_len].copy_from_slice(&table);
        img
    }

    fn temp_file(name: &str, data: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("kios-gpt-{}-{name}", std::process::id()));
        std::fs::write(&p, data).expect("write image");
        p
    }

    #[test]
    fn guid_text_round_trip_and_mixed_endian() {
        let b = parse_guid(DATAPART_TYPE_GUID).expect("guid");
        assert_eq!(&b[0..8], &[0x93, 0xc6, 0xaa, 0x97, 0x20, 0xd9, 0x5a, 0x46]);
        assert_eq!(&b[8..16], &[0x94, 0xfe, 0xeb, 0x59, 0xfc, 0x86, 0xdf, 0xaa]);
        assert_eq!(format_guid(&b), DATAPART_TYPE_GUID);
        assert_eq!(
            format_guid(&parse_guid("97AAC693-D920-465A-94FE-EB59FC86DFAA").expect("upper")),
            DATAPART_TYPE_GUID
        );
        for bad in [
            "",
            "97aac693d920465a94feeb59fc86dfaa",
            "97aac693-d920-465a-94fe-eb59fc86dfa",
            "zzaac693-d920-465a-94fe-eb59fc86dfaa",
        ] {
            assert!(parse_guid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn finds_the_data_partition_in_a_constructed_image() {
        let linux = "0fc63daf-8483-4772-8e79-3d69d8477de4";
        for sector in [512usize, 4096] {
            let img = build_image(sector, &[(1, linux), (3, DATAPART_TYPE_GUID), (4, linux)]);
            let p = temp_file(&format!("built-{sector}"), &img);
            let want = parse_guid(DATAPART_TYPE_GUID).expect("guid");
            assert_eq!(
                find_partitions_by_type(&LinuxSys, &p, &want).expect("scan"),
                [3],
                "sector {sector}"
            );
            let parts = read_partitions(&LinuxSys, &p).expect("read");
            assert_eq!(
                parts.iter().map(|x| x.number).collect::<Vec<_>>(),
                [1, 3, 4]
            );
            assert_eq!((parts[1].first_lba, parts[1].last_lba), (300, 350));
            let _ = std::fs::remove_file(&p);
        }
    }

    #[test]
    fn finds_the_data_partition_in_an_sgdisk_image() {
        let p = std::env::temp_dir().join(format!("kios-gpt-{}-sgdisk", std::process::id()));
        let f = std::fs::File::create(&p).expect("create image");
        f.set_len(8 * 1024 * 1024).expect("size image");
        drop(f);
        let out = std::process::Command::new("sgdisk")
            .args(["-n", "1:2048:+1M", "-t", "1:8300", "-n", "2:0:+1M", "-t"])
            .arg(format!("2:{DATAPART_TYPE_GUID}"))
            .args(["-n", "3:0:+1M", "-t", "3:8300"])
            .arg(&p)
            .output()
            .expect("run sgdisk (package gdisk, listed in scripts/deps)");
        assert!(
            out.status.success(),
            "sgdisk: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = parse_guid(DATAPART_TYPE_GUID).expect("guid");
        assert_eq!(
            find_partitions_by_type(&LinuxSys, &p, &want).expect("scan"),
            [2]
        );
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn damaged_tables_are_rejected() {
        let img = build_image(512, &[(1, DATAPART_TYPE_GUID)]);
        let mut bad_header = img.clone();
        bad_header[512 + 40] ^= 1;
        let p = temp_file("bad-header", &bad_header);
        assert!(matches!(
            read_partitions(&LinuxSys, &p),
            Err(GptError::HeaderChecksum { .. })
        ));
        let mut bad_entries = img.clone();
        bad_entries[1024 + 20] ^= 1;
        std::fs::write(&p, &bad_entries).expect("write");
        assert!(matches!(
            read_partitions(&LinuxSys, &p),
            Err(GptError::EntriesChecksum { .. })
        ));
        std::fs::write(&p, vec![0u8; 16384]).expect("write");
        assert!(matches!(
            read_partitions(&LinuxSys, &p),
            Err(GptError::NoHeader { .. })
        ));
        std::fs::write(&p, vec![0u8; 100]).expect("write");
        assert!(matches!(
            read_partitions(&LinuxSys, &p),
            Err(GptError::Read { .. })
        ));
        let _ = std::fs::remove_file(&p);
        assert!(matches!(
            read_partitions(&LinuxSys, Path::new("/nonexistent-kios-disk")),
            Err(GptError::Read { .. })
        ));
    }

    #[test]
    fn partition_names() {
        assert_eq!(partition_name("sda", 1), "sda1");
        assert_eq!(partition_name("vda", 2), "vda2");
        assert_eq!(partition_name("nvme0n1", 1), "nvme0n1p1");
        assert_eq!(partition_name("mmcblk0", 3), "mmcblk0p3");
        assert_eq!(partition_name("xvdb", 12), "xvdb12");
    }
}
