//! /proc/PID/mountinfo (kios_rootfs::mountinfo): any bytes, any escapes.
//! Unescaping never grows a field; a parsed line keeps its numbers.
#![no_main]

use kios_rootfs::mountinfo::{parse, unescape, MountInfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert!(unescape(data).len() <= data.len());
    let table = parse(data);
    assert!(table.len() <= data.split(|b| *b == b'\n').count());
    for line in data.split(|b| *b == b'\n') {
        if let Some(m) = MountInfo::parse_line(line) {
            let _ = (m.has_option("ro"), m.is_shared());
        }
    }
});
