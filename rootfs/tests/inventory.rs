//! The inventory's binary form: round trip, header checks, lookup.

use kios_rootfs::inventory::{
    self, Component, Contents, Device, Entry, Inventory, InventoryError, Kind, Presence,
};

fn entry(path: &str, kind: Kind) -> Entry {
    Entry {
        source: "input:x".to_string(),
        component: "C".to_string(),
        why: "because".to_string(),
        used_by: vec!["kubelet".to_string()],
        ..Entry::new(path, kind, 0o500)
    }
}

fn sample() -> Inventory {
    let mut file = entry("/bin/crio", Kind::File);
    file.size = Some(12);
    file.sha256 = Some([7; 32]);
    let mut link = entry("/sbin", Kind::Symlink);
    link.target = Some("bin".to_string());
    let mut dev = entry("/dev/console", Kind::Device);
    dev.device = Some(Device {
        block: false,
        major: 5,
        minor: 1,
    });
    let mut mount = entry("/run", Kind::Mount);
    mount.mounted = Some("tmpfs".to_string());
    mount.contents = Some(Contents::Runtime);
    mount.presence = Presence::Runtime;
    let mut init = entry("/init", Kind::File);
    init.presence = Presence::RemovedAtBoot;
    init.notes = Some("deleted after boot".to_string());
    Inventory::new(
        vec![file, link, dev, mount, init, entry("/", Kind::Dir)],
        vec![Component {
            name: "C".into(),
            section: "S".into(),
            about: "about".into(),
        }],
    )
}

#[test]
fn round_trip() {
    let inv = sample();
    let bytes = inv.encode().unwrap();
    assert_eq!(&bytes[..8], inventory::MAGIC);
    assert_eq!(
        u16::from_le_bytes([bytes[8], bytes[9]]),
        inventory::FORMAT_VERSION
    );
    assert_eq!(Inventory::decode(&bytes).unwrap(), inv);
}

#[test]
fn entries_are_sorted_and_found_by_path() {
    let inv = sample();
    let paths: Vec<&str> = inv.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/", "/bin/crio", "/dev/console", "/init", "/run", "/sbin"]
    );
    assert_eq!(inv.get("/bin/crio").unwrap().size, Some(12));
    assert_eq!(inv.get("/run/").unwrap().kind, Kind::Mount);
    assert_eq!(inv.get("/").unwrap().kind, Kind::Dir);
    assert!(inv.get("/bin/ls").is_none());
    // Through the image's symlinks (/sbin -> bin).
    assert_eq!(inv.get("/sbin/crio").unwrap().path, "/bin/crio");
    assert_eq!(inv.get("/sbin").unwrap().kind, Kind::Symlink);
    assert!(inv.get("/sbin/nothing").is_none());
    assert_eq!(inv.component("C").unwrap().section, "S");
    let crio = inv.get("/bin/crio").unwrap();
    assert_eq!(crio.mode_string(), "0500");
    assert_eq!(crio.owner_string(), "0:0");
    assert_eq!(crio.sha256_hex().unwrap(), "07".repeat(32));
}

#[test]
fn bad_magic_is_refused() {
    let mut bytes = sample().encode().unwrap();
    bytes[0] = b'X';
    assert!(matches!(
        Inventory::decode(&bytes),
        Err(InventoryError::BadMagic)
    ));
}

#[test]
fn other_versions_are_refused() {
    let mut bytes = sample().encode().unwrap();
    bytes[8] = 99;
    let err = Inventory::decode(&bytes).unwrap_err();
    assert!(
        matches!(err, InventoryError::UnsupportedVersion { found: 99 }),
        "{err}"
    );
    assert!(err.to_string().contains("version 99"), "{err}");
}

#[test]
fn truncated_and_trailing_bytes_are_refused() {
    let bytes = sample().encode().unwrap();
    assert!(matches!(
        Inventory::decode(&bytes[..bytes.len() - 3]),
        Err(InventoryError::Decode(_))
    ));
    assert!(matches!(
        Inventory::decode(&bytes[..9]),
        Err(InventoryError::Decode(_))
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Inventory::decode(&longer),
        Err(InventoryError::Decode(_))
    ));
}

#[test]
fn read_names_the_file() {
    let err = Inventory::read(std::path::Path::new("/nonexistent/inventory")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("read inventory /nonexistent/inventory: "),
        "{err}"
    );
}

#[test]
fn kinds_and_contents_have_stable_names() {
    for k in Kind::ALL {
        assert_eq!(Kind::parse(k.as_str()), Some(k));
    }
    for c in Contents::ALL {
        assert_eq!(Contents::parse(c.as_str()), Some(c));
    }
    let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        ["file", "dir", "symlink", "hardlink", "device", "mount"]
    );
}
