//! House rules for the whole workspace, checked inside `cargo test`: every
//! Rust file opens with a `//!` line saying what it owns; `unsafe` appears
//! only under `kios-init/src/sys/`; kios-init (PID 1) has no `unwrap` or
//! `expect` outside its tests, and no `RefCell` (state has one owner per
//! task, never a runtime-checked borrow); the image's code layout was
//! traced for kios-init's current sources.

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

/// What scripts/trace-layout computes: for each `.rs` file under
/// kios-init/src in byte order of its path (relative to the workspace),
/// the path, a newline and the file's bytes; their sha256.
fn sources_hash(workspace: &Path) -> String {
    let mut files = Vec::new();
    rust_files(&workspace.join("kios-init/src"), &mut files);
    let mut named: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|f| {
            let relative = f.strip_prefix(workspace).expect("inside").to_path_buf();
            (relative.to_str().expect("a UTF-8 path").to_string(), f)
        })
        .collect();
    named.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut all = Vec::new();
    for (name, path) in named {
        all.extend_from_slice(name.as_bytes());
        all.push(b'\n');
        all.extend(std::fs::read(&path).expect("read a source file"));
    }
    kios_rootfs::hash::hex(&kios_rootfs::hash::sha256_bytes(&all))
}

/// The image's code layout (kios-init/layout/hot.txt) is of the sources
/// being built: `scripts/trace-layout` records the hash of kios-init/src
/// it traced in kios-init/layout/hot.sources. A function the layout does
/// not name lands among the cold ones, and one on a hot path costs a
/// 64 KiB window of resident memory (kios-init/layout/README.md); a stale
/// layout would otherwise show in the budgets bench only.
#[test]
fn the_layout_was_traced_for_these_sources() {
    let workspace = workspace();
    let recorded = std::fs::read_to_string(workspace.join("kios-init/layout/hot.sources"))
        .expect("kios-init/layout/hot.sources (written by scripts/trace-layout)");
    let now = sources_hash(&workspace);
    assert_eq!(
        recorded.trim(),
        now,
        "kios-init/src changed since kios-init/layout/hot.txt was traced: run \
         `scripts/trace-layout --tests` (root, a few minutes) and commit hot.txt and \
         hot.sources, or init's resident memory grows by a 64 KiB window per hot \
         function the layout does not name"
    );
}

/// The hash covers every file and each file's place: a file's bytes moved
/// to another file, or a file renamed, is another hash.
#[test]
fn the_hash_sees_contents_and_names() {
    let dir = std::env::temp_dir().join(format!("kios-layout-hash-{}", std::process::id()));
    let src = dir.join("kios-init/src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.rs"), "fn a() {}\n").unwrap();
    std::fs::write(src.join("sub/b.rs"), "fn b() {}\n").unwrap();
    let first = sources_hash(&dir);
    std::fs::write(src.join("sub/b.rs"), "fn b() { }\n").unwrap();
    let edited = sources_hash(&dir);
    std::fs::rename(src.join("sub/b.rs"), src.join("sub/c.rs")).unwrap();
    let renamed = sources_hash(&dir);
    std::fs::write(src.join("notes.txt"), "not code").unwrap();
    let with_other = sources_hash(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_ne!(first, edited);
    assert_ne!(edited, renamed);
    assert_eq!(renamed, with_other, "only .rs files count");
}
