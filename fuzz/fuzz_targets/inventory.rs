//! The image inventory decoder (magic, version, postcard) on any bytes: a
//! decoded inventory is sorted and re-encodes to bytes that decode to the
//! same inventory.
#![no_main]

use kios_rootfs::Inventory;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(inventory) = Inventory::decode(data) {
        assert!(inventory.entries.windows(2).all(|w| w[0].path <= w[1].path));
        let bytes = inventory.encode().expect("a decoded inventory encodes");
        let again = Inventory::decode(&bytes).expect("an encoded inventory decodes");
        assert_eq!(again, inventory);
        let _ = inventory.get("/etc/kubernetes/config.yaml");
    }
});
