//! /etc/kubernetes/node-ip: the value handed to --node-ip is one
//! non-empty word without whitespace.
#![no_main]

use kios_init::boot::argv::parse_node_ip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(ip) = parse_node_ip(&text) {
        assert!(!ip.is_empty());
        assert!(!ip.chars().any(char::is_whitespace), "{ip:?}");
    }
});
