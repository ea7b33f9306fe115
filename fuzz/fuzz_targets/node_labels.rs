//! /etc/kubernetes/node-labels: only allowed characters reach the
//! kubelet's --node-labels, keys are never empty, the label count is
//! bounded.
#![no_main]

use kios_init::boot::argv::{parse_node_labels, parse_node_labels_detailed, LABEL_LIMIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = parse_node_labels_detailed(&text);
    assert!(parsed.labels.len() <= LABEL_LIMIT);
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    for (key, value) in &parsed.labels {
        assert!(!key.is_empty());
        assert!(
            key.chars().all(ok) && value.chars().all(ok),
            "{key:?}={value:?}"
        );
    }
    let _ = parse_node_labels(&text);
});
