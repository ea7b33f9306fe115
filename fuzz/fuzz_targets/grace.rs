//! The kubelet's config.yaml as read for shutdownGracePeriod (YAML or
//! JSON), and the Go duration parser: any accepted grace is at most
//! MAX_GRACE.
#![no_main]

use kios_init::boot::grace::{grace_from_text, parse_go_duration, MAX_GRACE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(grace) = grace_from_text(&text) {
        assert!(grace <= MAX_GRACE, "{grace:?}");
    }
    if let Ok(d) = parse_go_duration(&text) {
        assert!(d <= MAX_GRACE, "{d:?}");
    }
});
