//! The one parser of `/proc/PID/mountinfo` in the workspace: init's
//! teardown, verify's mount check and the test harness all read the mount
//! table through it.
//!
//! Paths are bytes: the kernel writes a mount point as its raw name with
//! space, tab, newline and backslash escaped as three octal digits (`\040`),
//! so the unescaped name is an arbitrary byte string, kept as a `PathBuf`
//! and never decoded. An escape that does not denote a byte (`\4xx`, or
//! fewer than three octal digits) is kept literally. Malformed lines are
//! skipped; nothing here panics on any input.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// Largest mount table read (a node has a few hundred mounts at most; pods
/// add a handful each).
pub const MOUNTINFO_LIMIT: usize = 4 * 1024 * 1024;

/// One line of /proc/PID/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Mount id, unique in the namespace.
    pub id: u32,
    /// Mount id of the parent (itself for the namespace's root).
    pub parent: u32,
    pub major: u32,
    pub minor: u32,
    /// The directory of the filesystem that forms this mount's root (a bind
    /// of a subdirectory shows it here).
    pub root: PathBuf,
    /// Where it is mounted, as the reading process sees it.
    pub mount_point: PathBuf,
    /// Per-mount options, e.g. `rw,nosuid,nodev,noexec,relatime`.
    pub options: Vec<String>,
    /// Optional fields, e.g. `shared:3`, `master:1`.
    pub propagation: Vec<String>,
    pub fstype: String,
    /// The mount source (`/dev/vda1`, `tmpfs`, `overlay`, ...), unescaped.
    pub source: String,
    /// Per-superblock options, e.g. `rw,size=65536k`.
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// Parses one mountinfo line (without its newline); `None` when it is
    /// not a well-formed line.
    pub fn parse_line(line: &[u8]) -> Option<MountInfo> {
        let sep = find(line, b" - ")?;
        let (before, after) = (&line[..sep], &line[sep + 3..]);
        let fields: Vec<&[u8]> = before.split(|b| *b == b' ').collect();
        let after: Vec<&[u8]> = after.split(|b| *b == b' ').collect();
        if fields.len() < 6 || after.len() < 2 {
            return None;
        }
        let (major, minor) = {
            let dev = text(fields[2])?;
            let (major, minor) = dev.split_once(':')?;
            (major.parse().ok()?, minor.parse().ok()?)
        };
        Some(MountInfo {
            id: text(fields[0])?.parse().ok()?,
            parent: text(fields[1])?.parse().ok()?,
            major,
            minor,
            root: path(fields[3]),
            mount_point: path(fields[4]),
            options: list(fields[5]),
            propagation: fields[6..]
                .iter()
                .filter(|f| !f.is_empty())
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect(),
            fstype: String::from_utf8_lossy(after[0]).into_owned(),
            source: String::from_utf8_lossy(&unescape(after[1])).into_owned(),
            super_options: after.get(2).map(|o| list(o)).unwrap_or_default(),
        })
    }

    /// Whether the per-mount options include `option` (`ro`, `noexec`, ...).
    pub fn has_option(&self, option: &str) -> bool {
        self.options.iter().any(|o| o == option)
    }

    /// Whether the mount is a shared peer (`shared:N`).
    pub fn is_shared(&self) -> bool {
        self.propagation.iter().any(|p| p.starts_with("shared:"))
    }
}

/// Parses a whole mount table; malformed lines are skipped.
pub fn parse(table: &[u8]) -> Vec<MountInfo> {
    table
        .split(|b| *b == b'\n')
        .filter_map(MountInfo::parse_line)
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn text(field: &[u8]) -> Option<&str> {
    std::str::from_utf8(field).ok()
}

fn list(field: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(field)
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect()
}

fn path(field: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

/// Undoes the kernel's octal escapes (`\040` is a space). Only escapes that
/// denote a byte (`\000` to `\377`) are undone; anything else stays as it is.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            if let Some(digits) = field.get(i + 1..i + 4) {
                if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let value = digits
                        .iter()
                        .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                    if let Ok(byte) = u8::try_from(value) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    const TABLE: &[u8] = b"\
22 1 0:21 / / rw,relatime shared:1 - rootfs rootfs rw,size=1000k
23 22 0:5 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw
30 22 8:1 /log /var/log rw,nosuid,nodev,noexec master:3 - ext4 /dev/vda1 rw
31 22 0:40 / /mnt/a\\040b rw - tmpfs tmp\\040fs rw
";

    #[test]
    fn parses_every_field() {
        let t = parse(TABLE);
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].id, 22);
        assert_eq!(t[0].parent, 1);
        assert_eq!(t[0].mount_point, PathBuf::from("/"));
        assert_eq!(t[0].propagation, vec!["shared:1"]);
        assert!(t[0].is_shared());
        assert_eq!(t[0].super_options, vec!["rw", "size=1000k"]);
        assert_eq!((t[2].major, t[2].minor), (8, 1));
        assert_eq!(t[2].root, PathBuf::from("/log"));
        assert_eq!(t[2].fstype, "ext4");
        assert_eq!(t[2].source, "/dev/vda1");
        assert!(t[2].has_option("noexec"));
        assert!(!t[2].has_option("ro"));
        assert!(!t[2].is_shared());
        assert_eq!(t[3].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(t[3].source, "tmp fs");
    }

    #[test]
    fn names_are_bytes() {
        let line = b"40 22 0:41 / /mnt/\\377\\376x rw - tmpfs none rw";
        let m = MountInfo::parse_line(line).expect("parses");
        assert_eq!(m.mount_point.as_os_str().as_bytes(), b"/mnt/\xff\xfex");
    }

    #[test]
    fn escapes_that_are_not_bytes_stay_literal() {
        // \477 is 319: not a byte. It must neither overflow nor vanish.
        assert_eq!(unescape(b"a\\477b"), b"a\\477b".to_vec());
        assert_eq!(unescape(b"a\\04"), b"a\\04".to_vec());
        assert_eq!(unescape(b"\\134"), b"\\".to_vec());
        assert_eq!(unescape(b"\\"), b"\\".to_vec());
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse(b"garbage\n1 2\n\n - \n").is_empty());
        assert!(MountInfo::parse_line(b"x 1 0:1 / / rw - t s").is_none());
        assert!(MountInfo::parse_line(b"1 1 01 / / rw - t s").is_none());
        assert!(MountInfo::parse_line(b"1 1 0:1 / / rw - t").is_none());
        assert!(MountInfo::parse_line(b"1 1 0:1 / rw - t s").is_none());
    }
}
