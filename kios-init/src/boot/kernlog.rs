//! The kernel's own recent log lines, read back from /dev/kmsg without
//! blocking, and what they say about a failed mount: when ext4 refuses a
//! partition the syscall only returns an errno (ENOENT for a missing crc32c
//! driver), while the kernel logs the cause (`EXT4-fs (vda1): Cannot load
//! crc32c driver.`). [`mount_failure_cause`] turns those lines into the
//! words that go to init's kernel log line and to `status`.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// Most recent kernel records kept while reading.
pub const RECENT_LIMIT: usize = 64;
/// Most records read (the kernel's buffer holds a few thousand).
const READ_LIMIT: usize = 100_000;

/// The message text of one /dev/kmsg record
/// (`PRI,SEQ,USEC,FLAGS;message\n continuation...`): its first line.
pub fn record_message(record: &str) -> &str {
    let text = record.split_once(';').map_or(record, |(_, m)| m);
    text.lines().next().unwrap_or("").trim_end()
}

/// The last [`RECENT_LIMIT`] kernel messages, oldest first; empty when
/// /dev/kmsg cannot be read.
pub fn recent_kernel_messages() -> Vec<String> {
    let mut recent = VecDeque::with_capacity(RECENT_LIMIT);
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return Vec::new();
    };
    // One record per read; a record is at most about 1 KiB.
    let mut buf = vec![0u8; 8192];
    for _ in 0..READ_LIMIT {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if recent.len() == RECENT_LIMIT {
                    recent.pop_front();
                }
                let record = String::from_utf8_lossy(&buf[..n]);
                recent.push_back(record_message(&record).to_string());
            }
            // Records overwritten while reading: the next read goes on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    recent.into()
}

/// What the kernel said about mounting `device` (e.g. `/dev/vda1`) as
/// `fstype`: the last line of that filesystem about that device, with an
/// explanation when it is a missing driver. `None` when it said nothing.
pub fn mount_failure_cause(messages: &[String], fstype: &str, device: &str) -> Option<String> {
    let dev = device.rsplit('/').next().unwrap_or(device);
    let prefix = format!("{}-fs ({dev}):", fstype.to_ascii_uppercase());
    let line = messages.iter().rev().find(|m| m.starts_with(&prefix))?;
    let driver = line.split_once("Cannot load ").and_then(|(_, rest)| {
        rest.strip_suffix(" driver.")
            .or(rest.strip_suffix(" driver"))
    });
    Some(match driver {
        Some(driver) => format!(
            "{fstype} could not load its {driver} driver (the kernel said: {line}); \
             the image needs that module: its modules.softdep and modules.alias lines bring it, \
             or list it in /etc/kios/modules"
        ),
        None => format!("the kernel said: {line}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_text() {
        assert_eq!(
            record_message("3,812,1543210,-;EXT4-fs (vda1): Cannot load crc32c driver.\n"),
            "EXT4-fs (vda1): Cannot load crc32c driver."
        );
        assert_eq!(
            record_message("6,1,2,-;line one\n SUBSYSTEM=block\n"),
            "line one"
        );
        assert_eq!(record_message("no header"), "no header");
    }

    fn lines(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_missing_crc32c_driver_is_named() {
        let m = lines(&[
            "EXT4-fs (vdb1): mounted filesystem",
            "virtio_blk virtio1: [vda] 131072 512-byte logical blocks",
            "EXT4-fs (vda1): Cannot load crc32c driver.",
            "kiOS: info: something after",
        ]);
        let cause = mount_failure_cause(&m, "ext4", "/dev/vda1").unwrap();
        assert!(
            cause.starts_with("ext4 could not load its crc32c driver (the kernel said: EXT4-fs (vda1): Cannot load crc32c driver.)"),
            "{cause}"
        );
    }

    #[test]
    fn other_lines_are_quoted_and_silence_is_none() {
        let m = lines(&["EXT4-fs (vda1): VFS: Can't find ext4 filesystem"]);
        assert_eq!(
            mount_failure_cause(&m, "ext4", "/dev/vda1").as_deref(),
            Some("the kernel said: EXT4-fs (vda1): VFS: Can't find ext4 filesystem")
        );
        assert_eq!(mount_failure_cause(&m, "ext4", "/dev/vda2"), None);
        assert_eq!(mount_failure_cause(&[], "ext4", "/dev/vda1"), None);
    }
}
