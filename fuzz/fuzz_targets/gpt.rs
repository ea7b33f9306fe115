//! The GPT reader on arbitrary disk bytes (through the fake `Sys`). When
//! the first byte is odd the input is first made to pass the signature and
//! both CRC checks, so the fuzzer reaches the entry parsing instead of
//! stopping at a checksum. Partitions found are in the table, numbered
//! within its entry count.
#![no_main]

use std::path::Path;

use kios_init::boot::gpt::{crc32, read_partitions, MAX_ENTRIES};
use kios_init::sys::fake::FakeSys;
use libfuzzer_sys::fuzz_target;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Writes the signature at LBA 1 (512-byte sectors) and the entries and
/// header CRCs the header's own fields ask for.
fn fix_up(disk: &mut Vec<u8>) {
    if disk.len() < 1024 {
        disk.resize(1024, 0);
    }
    disk[512..520].copy_from_slice(b"EFI PART");
    let header = 512;
    let lba = u64::from_le_bytes(disk[header + 72..header + 80].try_into().unwrap_or([0; 8]));
    let count = le32(disk, header + 80) as usize;
    let size = le32(disk, header + 84) as usize;
    if let Some(start) = lba.checked_mul(512).and_then(|o| usize::try_from(o).ok()) {
        if let Some(end) = count.checked_mul(size).and_then(|n| n.checked_add(start)) {
            if end <= disk.len() && count <= MAX_ENTRIES as usize {
                let crc = crc32(&disk[start..end]);
                disk[header + 88..header + 92].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
    let header_size = le32(disk, header + 12) as usize;
    if (92..=512).contains(&header_size) {
        disk[header + 16..header + 20].fill(0);
        let crc = crc32(&disk[header..header + header_size]);
        disk[header + 16..header + 20].copy_from_slice(&crc.to_le_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    kios_fuzz::quiet_logs();
    let Some((&mode, disk)) = data.split_first() else {
        return;
    };
    let mut disk = disk.to_vec();
    if mode & 1 == 1 {
        fix_up(&mut disk);
    }
    let sys = FakeSys::new();
    sys.add_file("/dev/vda", disk);
    if let Ok(parts) = read_partitions(&sys, Path::new("/dev/vda")) {
        for p in &parts {
            assert!(p.number >= 1 && p.number <= MAX_ENTRIES, "{p:?}");
            assert_ne!(p.type_guid, [0u8; 16]);
        }
    }
});
