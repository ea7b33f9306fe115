//! House rules for this crate, checked inside `cargo test`: every Rust file
//! starts with a `//!` header, and none contains `unsafe`.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_file_has_a_header_and_no_unsafe() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    assert!(files.len() > 10);
    let needle = ["un", "safe"].concat();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} lacks a //! header",
            f.display()
        );
        assert!(
            !text.contains(&format!("{needle} ")) && !text.contains(&format!("{needle}{{")),
            "{} contains {needle}",
            f.display()
        );
    }
}
