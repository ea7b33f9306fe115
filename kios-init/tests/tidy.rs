//! House rules for the whole workspace, checked inside `cargo test`: every
//! Rust file opens with a `//!` line saying what it owns; `unsafe` appears
//! only under `kios-init/src/sys/`; kios-init (PID 1) has no `unwrap` or
//! `expect` outside its tests, and no `RefCell` (state has one owner per
//! task, never a runtime-checked borrow).

use std::path::{Path, PathBuf};

/// The workspace's crates (their `src`, `tests`, `benches` and the rest).
const CRATES: [&str; 5] = ["protocol", "kios-init", "kiosctl", "rootfs", "e2e"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn files() -> Vec<(PathBuf, String)> {
    let root = workspace();
    let mut files = Vec::new();
    for krate in CRATES {
        rust_files(&root.join(krate), &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("read a source file");
            let relative = f.strip_prefix(&root).expect("inside").to_path_buf();
            (relative, text)
        })
        .collect()
}

/// The code of a file without its comment lines.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
}

/// The file up to its test module (`#[cfg(test)]` before a `mod` line).
fn without_tests(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| {
            lines[i].trim() == "#[cfg(test)]"
                && lines.get(i + 1).is_some_and(|next| {
                    let next = next.trim_start();
                    next.starts_with("mod ")
                        || next.starts_with("pub mod ")
                        || next.starts_with("pub(crate) mod ")
                })
        })
        .unwrap_or(lines.len());
    lines[..end].join("\n")
}

#[test]
fn every_rust_file_opens_with_a_module_header() {
    let missing: Vec<String> = files()
        .into_iter()
        .filter(|(_, text)| !text.starts_with("//!"))
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(missing.is_empty(), "no //! header: {missing:?}");
}

#[test]
fn unsafe_is_only_in_kios_inits_sys_module() {
    let keyword = ["un", "safe"].concat();
    let mut found = Vec::new();
    for (path, text) in files() {
        if path.starts_with("kios-init/src/sys") {
            continue;
        }
        for (n, line) in code_lines(&text) {
            if line.contains(&format!("{keyword} ")) || line.contains(&format!("{keyword}{{")) {
                found.push(format!("{}:{n}", path.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "{keyword} outside kios-init/src/sys: {found:?}"
    );
}

#[test]
fn pid_1_never_unwraps_outside_its_tests() {
    let unwrap = [".unw", "rap()"].concat();
    let expect = [".exp", "ect("].concat();
    let mut found = Vec::new();
    for (path, text) in files() {
        if !path.starts_with("kios-init/src") {
            continue;
        }
        let code = without_tests(&text);
        for (n, line) in code_lines(&code) {
            if line.contains(&unwrap) || line.contains(&expect) {
                found.push(format!("{}:{n}: {}", path.display(), line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "unwrap/expect in kios-init: {found:#?}");
}

#[test]
fn pid_1_shares_no_refcell() {
    let refcell = ["Ref", "Cell"].concat();
    let mut found = Vec::new();
    for (path, text) in files() {
        if !path.starts_with("kios-init/src") {
            continue;
        }
        let code = without_tests(&text);
        for (n, line) in code_lines(&code) {
            if line.contains(&refcell) {
                found.push(format!("{}:{n}: {}", path.display(), line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "{refcell} in kios-init (one owner per state, issue 9): {found:#?}"
    );
}

#[test]
fn the_rules_can_fail() {
    // The checks above see what they look for.
    let sample = "//! x\nfn f() { a.unwrap(); }\n#[cfg(test)]\nmod tests { b.expect(\"y\"); }\n";
    let code = without_tests(sample);
    assert!(code.contains(".unwrap()"));
    assert!(!code.contains(".expect("));
    assert_eq!(code_lines("// a.unwrap()\nb\n").count(), 1);
}
