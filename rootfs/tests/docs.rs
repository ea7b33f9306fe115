//! docs/reference/files.md must be what the spec generates.

use kios_rootfs::{build, docs, spec};
use std::path::Path;

#[test]
fn committed_files_page_is_up_to_date() {
    let spec = spec::load(&build::default_spec()).unwrap();
    let expected = docs::render(&spec);
    let page = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(docs::DOCS_PATH);
    let committed = std::fs::read_to_string(&page).unwrap_or_default();
    assert!(
        committed == expected,
        "{} is stale; regenerate it from the workspace root with:\n    {}",
        docs::DOCS_PATH,
        docs::REGENERATE
    );
}

#[test]
fn the_page_has_every_section_component_and_path() {
    let spec = spec::load(&build::default_spec()).unwrap();
    let page = docs::render(&spec);
    for s in &spec.sections {
        assert!(
            page.contains(&format!("\n## {}\n", s.name)),
            "section {}",
            s.name
        );
    }
    for c in &spec.components {
        assert!(
            page.contains(&format!("\n### {}\n", c.name)),
            "component {}",
            c.name
        );
    }
    for e in &spec.entries {
        assert!(
            page.contains(&format!("| `{}` |", e.path)),
            "path {}",
            e.path
        );
    }
    // Sections appear in the original page's order.
    let init = page.find("## Init").unwrap();
    let bins = page.find("## Binaries").unwrap();
    let libs = page.find("## Runtime Libraries").unwrap();
    assert!(init < bins && bins < libs);
}
