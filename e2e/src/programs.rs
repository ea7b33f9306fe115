//! Which programs the workspace runs, and whether a fresh Debian 12 machine
//! has them after `scripts/deps`: every `Command::new("...")` of the `.rs`
//! files, the commands of the shell scripts the harness writes (string
//! literals that follow `"-c"` or open with `set -e` or `#!`) and of the
//! shell scripts under `scripts/`. A program passes when the project builds
//! it (or it is the Rust toolchain the README presumes), or when its Debian
//! package ([`PACKAGE_OF`]) is installed by `scripts/deps` or is part of
//! Debian's base system ([`BASE_PACKAGES`]). The workspace test
//! `e2e/tests/spawned_programs.rs` runs the check and also asks dpkg that
//! the table names each installed program's real package.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Debian 12's base system: the Essential packages and the `required`
/// ones that a debootstrap of bookworm (minbase) installs.
pub const BASE_PACKAGES: &[&str] = &[
    "apt",
    "base-files",
    "base-passwd",
    "bash",
    "bsdutils",
    "coreutils",
    "dash",
    "debianutils",
    "diffutils",
    "dpkg",
    "findutils",
    "grep",
    "gzip",
    "hostname",
    "init-system-helpers",
    "libc-bin",
    "login",
    "mawk",
    "mount",
    "ncurses-bin",
    "perl-base",
    "sed",
    "sysvinit-utils",
    "tar",
    "util-linux",
];

/// Programs the project builds, or the Rust toolchain (rustup) that the
/// README presumes.
pub const BUILT: &[&str] = &[
    "cargo",
    "rustup",
    "rustc",
    "kios-init",
    "kiosctl",
    "kios-demo",
    "socket-peer",
    "crio-standin",
    "kubelet-standin",
    "pinns-standin",
    "rootfs",
];

/// The Debian package of each program the workspace may run.
pub const PACKAGE_OF: &[(&str, &str)] = &[
    ("apt-cache", "apt"),
    ("apt-get", "apt"),
    ("awk", "mawk"),
    ("bash", "bash"),
    ("busybox", "busybox-static"),
    ("cat", "coreutils"),
    ("chmod", "coreutils"),
    ("chroot", "coreutils"),
    ("conmon", "conmon"),
    ("cp", "coreutils"),
    ("cpio", "cpio"),
    ("crun", "crun"),
    ("curl", "curl"),
    ("cut", "coreutils"),
    ("debootstrap", "debootstrap"),
    ("debugfs", "e2fsprogs"),
    ("depmod", "kmod"),
    ("dirname", "coreutils"),
    ("dpkg", "dpkg"),
    ("dpkg-deb", "dpkg"),
    ("dpkg-query", "dpkg"),
    ("dumpe2fs", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("env", "coreutils"),
    ("find", "findutils"),
    ("fsck.fat", "dosfstools"),
    ("git", "git"),
    ("grep", "grep"),
    ("head", "coreutils"),
    ("id", "coreutils"),
    ("ip", "iproute2"),
    ("jq", "jq"),
    ("kill", "procps"),
    ("ls", "coreutils"),
    ("mkdir", "coreutils"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mktemp", "coreutils"),
    ("mount", "mount"),
    ("mv", "coreutils"),
    ("nm", "binutils"),
    ("nsenter", "util-linux"),
    ("openssl", "openssl"),
    ("pivot_root", "util-linux"),
    ("ps", "procps"),
    ("python3", "python3-minimal"),
    ("qemu-img", "qemu-utils"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("rm", "coreutils"),
    ("rmdir", "coreutils"),
    ("script", "bsdutils"),
    ("setpriv", "util-linux"),
    ("sed", "sed"),
    ("sgdisk", "gdisk"),
    ("sh", "dash"),
    ("sha256sum", "coreutils"),
    ("socat", "socat"),
    ("sort", "coreutils"),
    ("strace", "strace"),
    ("sudo", "sudo"),
    ("tail", "coreutils"),
    ("tee", "coreutils"),
    ("touch", "coreutils"),
    ("true", "coreutils"),
    ("tr", "coreutils"),
    ("umount", "mount"),
    ("unshare", "util-linux"),
    ("wc", "coreutils"),
    ("wget", "wget"),
    ("xargs", "findutils"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
];

/// Shell words that are not programs.
const SHELL_WORDS: &[&str] = &[
    "!", ".", ":", "[", "[[", "]]", "break", "case", "cd", "command", "continue", "do", "done",
    "echo", "elif", "else", "esac", "eval", "exec", "exit", "export", "false", "fi", "for",
    "function", "if", "in", "local", "printf", "read", "return", "set", "shift", "test", "then",
    "time", "trap", "true", "unset", "until", "wait", "while", "{", "}",
];

/// Where a program was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Use {
    pub program: String,
    /// `file:line`.
    pub at: String,
}

/// One program a fresh machine would lack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub program: String,
    pub package: Option<String>,
    pub at: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.package {
            Some(p) => write!(
                f,
                "{}: runs {}, from the Debian package {p}, which scripts/deps does not install and Debian's base system lacks (add {p} to scripts/deps, or use our own code)",
                self.at, self.program
            ),
            None => write!(
                f,
                "{}: runs {}, whose Debian package is unknown (add it to PACKAGE_OF in e2e/src/programs.rs and the package to scripts/deps)",
                self.at, self.program
            ),
        }
    }
}

/// The package of a program (by its file name), if known.
pub fn package_of(program: &str) -> Option<&'static str> {
    let name = program.rsplit('/').next().unwrap_or(program);
    PACKAGE_OF
        .iter()
        .find(|(p, _)| *p == name)
        .map(|(_, pkg)| *pkg)
}

/// Whether the project builds it (a workspace binary, the toolchain, or a
/// program of the image run inside a sandbox or VM, e.g. `/bin/kiosctl`).
pub fn is_built(program: &str) -> bool {
    let name = program.rsplit('/').next().unwrap_or(program);
    BUILT.contains(&name)
        || program.starts_with("/proc/self/")
        || program.starts_with("scripts/")
        || program.starts_with("target/")
}

/// The packages of `scripts/deps`: every word of its `...packages=(`
/// arrays, comments stripped.
pub fn deps_packages(deps_script: &str) -> BTreeSet<String> {
    deps_arrays(deps_script, |name| name.ends_with("packages"))
}

/// The packages `scripts/deps` installs without options (its `packages=(`
/// array; `--rehearse` adds `rehearse_packages`).
pub fn default_deps_packages(deps_script: &str) -> BTreeSet<String> {
    deps_arrays(deps_script, |name| name == "packages")
}

fn deps_arrays(deps_script: &str, wanted: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_array = false;
    for line in deps_script.lines() {
        let code = line.split('#').next().unwrap_or("").trim();
        if !in_array {
            if let Some((name, rest)) = code.split_once("=(") {
                if wanted(name) && !name.contains(' ') {
                    in_array = !rest.contains(')');
                    let rest = rest.split(')').next().unwrap_or("");
                    out.extend(rest.split_whitespace().map(str::to_string));
                }
            }
            continue;
        }
        let (words, closed) = match code.split_once(')') {
            Some((w, _)) => (w, true),
            None => (code, false),
        };
        out.extend(words.split_whitespace().map(str::to_string));
        in_array = !closed;
    }
    out
}

/// The programs that fail the check, given the packages scripts/deps
/// installs.
pub fn check(uses: &[Use], deps: &BTreeSet<String>) -> Vec<Missing> {
    let mut out = Vec::new();
    for u in uses {
        if is_built(&u.program) {
            continue;
        }
        let package = package_of(&u.program);
        let ok = package.is_some_and(|p| deps.contains(p) || BASE_PACKAGES.contains(&p));
        if !ok {
            out.push(Missing {
                program: u.program.clone(),
                package: package.map(str::to_string),
                at: u.at.clone(),
            });
        }
    }
    out
}

/// The value of a Rust string literal starting at `src[start] == '"'`
/// (escapes resolved, `\` + newline skipping the next line's indent), and
/// the index after its closing quote.
fn rust_literal(src: &str, start: usize) -> Option<(String, usize)> {
    let mut out = String::new();
    let i = start + 1;
    let mut chars = src[i..].char_indices().peekable();
    while let Some((off, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + off + 1)),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, '0')) => out.push('\0'),
                Some((_, '\n')) => {
                    while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
                        chars.next();
                    }
                }
                Some((_, other)) => out.push(other),
                None => return None,
            },
            _ => out.push(c),
        }
    }
    None
}

fn line_of(src: &str, at: usize) -> usize {
    src[..at.min(src.len())].matches('\n').count() + 1
}

/// Programs a Rust source file runs: `Command::new("...")` literals and the
/// commands of shell-script literals (after `"-c"`, or opening with `set -e`
/// or `#!`).
pub fn uses_in_rust(file: &str, src: &str) -> Vec<Use> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut after_dash_c = false;
    let mut prev_end = 0;
    while let Some(rel) = src[i..].find('"') {
        let q = i + rel;
        // Skip char literals like '"' and raw strings are rare here.
        if q > 0 && src.as_bytes()[q - 1] == b'\'' {
            i = q + 1;
            continue;
        }
        let Some((value, end)) = rust_literal(src, q) else {
            break;
        };
        let before = src[..q].trim_end();
        // The literal right after `"-c"` (`"-c", "..."` or `.arg("-c").arg("...")`).
        let gap: String = src[prev_end..q]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let adjacent = gap == "," || gap == ").arg(";
        let line = line_of(src, q);
        let at = format!("{file}:{line}");
        if before.ends_with("Command::new(") {
            out.push(Use {
                program: value.clone(),
                at: at.clone(),
            });
        } else if (after_dash_c && adjacent)
            || value.starts_with("set -e")
            || value.starts_with("#!")
        {
            for program in shell_commands(&value) {
                out.push(Use {
                    program,
                    at: at.clone(),
                });
            }
        }
        after_dash_c = value == "-c" || value == "-ec" || value == "-qec";
        prev_end = end;
        i = end;
    }
    out
}

/// Programs a shell script runs (see [`script_uses`]).
pub fn shell_commands(script: &str) -> Vec<String> {
    script_uses(script).into_iter().map(|(_, p)| p).collect()
}

/// Programs a shell script runs, with their line: the interpreter of its
/// `#!` line (a `#!/bin/busybox` script runs busybox applets only), then
/// the first word of each simple command (after assignments, redirections,
/// `exec`, `!` and keywords; `env` and `command -v X` name X too; a `$var`
/// in program position is passed over for the next word), inside `$(...)`
/// and backticks, and inside a multi-line `'...'` argument (`bash -c '...'`).
/// Lines ending in `\` continue; array assignments `x=(...)` are data.
pub fn script_uses(script: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines: Vec<(usize, String)> = Vec::new();
    for (n, raw) in script.lines().enumerate() {
        if n == 0 {
            if let Some(interp) = raw.strip_prefix("#!") {
                let mut w = interp.split_whitespace();
                let prog = w.next().unwrap_or("");
                let prog = if prog.ends_with("/env") {
                    w.next().unwrap_or("")
                } else {
                    prog
                };
                if !prog.is_empty() {
                    out.push((1, prog.to_string()));
                }
                if prog.ends_with("busybox") {
                    return out;
                }
                continue;
            }
        }
        let code = strip_comment(raw);
        match lines.last_mut() {
            Some((_, prev)) if prev.ends_with('\\') => {
                prev.pop();
                prev.push(' ');
                prev.push_str(&code);
            }
            _ => lines.push((n + 1, code)),
        }
    }
    let mut in_array = false;
    let mut in_quote_block = false;
    for (n, line) in lines {
        if in_array {
            in_array = !line.contains(')');
            continue;
        }
        if !in_quote_block {
            if let Some(eq) = line.find("=(") {
                if !line[..eq].trim().contains(' ') && !line[eq..].contains(')') {
                    in_array = true;
                    continue;
                }
            }
        }
        let open_after = single_quote_open(&line, in_quote_block);
        let (script_part, rest, continuation) = if in_quote_block && !open_after {
            // The block's closing quote: after it, the outer command goes on.
            let (inner, after) = line.split_once('\'').unwrap_or((&line, ""));
            in_quote_block = false;
            (inner.to_string(), after.to_string(), true)
        } else if !in_quote_block && open_after {
            // An opening quote: the outer command before it, a script after.
            let (outer, inner) = line.rsplit_once('\'').unwrap_or((&line, ""));
            in_quote_block = true;
            (outer.to_string(), inner.to_string(), false)
        } else {
            (line.clone(), String::new(), false)
        };
        for (i, (segment, cont)) in split_commands(&script_part).into_iter().enumerate() {
            if !cont {
                out.extend(segment_programs(&segment).into_iter().map(|p| (n, p)));
            }
            let _ = i;
        }
        for (i, (segment, cont)) in split_commands(&rest).into_iter().enumerate() {
            if !(cont || (continuation && i == 0)) {
                out.extend(segment_programs(&segment).into_iter().map(|p| (n, p)));
            }
        }
    }
    // The script's own functions (`name() {`, `function name {`) are not
    // programs, where they are defined nor where they are called.
    let functions: Vec<String> = script.lines().filter_map(function_defined).collect();
    out.retain(|(_, p)| {
        let name = p.strip_suffix("()").unwrap_or(p);
        !functions.iter().any(|f| f == name)
    });
    out
}

/// The name a line defines as a shell function, if it does.
fn function_defined(line: &str) -> Option<String> {
    let line = line.trim_start();
    let (name, rest) = match line.strip_prefix("function ") {
        Some(after) => {
            let name = after
                .split(|c: char| c.is_whitespace() || c == '(')
                .next()?;
            (name, "")
        }
        None => {
            let (name, rest) = line.split_once("()")?;
            (name.trim_end(), rest)
        }
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (valid && (rest.trim().is_empty() || rest.trim_start().starts_with('{')))
        .then(|| name.to_string())
}

fn strip_comment(line: &str) -> String {
    let mut out = String::new();
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for c in line.chars() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => break,
            _ => {}
        }
        out.push(c);
        prev = c;
    }
    out.trim_end().to_string()
}

/// Where the scanner is inside a line.
#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Double,
    /// `$(...)` or `(...)`.
    Paren,
    Array,
}

/// Splits a line into simple commands at `;`, `|`, `&` (not in `2>&1`),
/// `(`, `$(`, backticks and `)`, minding quotes; each with whether it only
/// continues a command (text after a closing `)` or backtick, a case
/// pattern) rather than starting one. `$((...))` and array values
/// `x=(...)` are dropped.
fn split_commands(line: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cont = false;
    let chars: Vec<char> = line.chars().collect();
    let mut stack: Vec<Ctx> = Vec::new();
    let (mut single, mut in_backtick) = (false, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let top = stack.last().copied();
        if single {
            single = c != '\'';
            cur.push(c);
            i += 1;
            continue;
        }
        if top == Some(Ctx::Array) {
            match c {
                ')' => {
                    stack.pop();
                }
                '\'' => single = true,
                _ => {}
            }
            i += 1;
            continue;
        }
        let mut split = |cur: &mut String, next_cont: bool, cont: &mut bool| {
            out.push((std::mem::take(cur), *cont));
            *cont = next_cont;
        };
        match c {
            '\'' if top != Some(Ctx::Double) => {
                single = true;
                cur.push(c);
            }
            '"' => {
                if top == Some(Ctx::Double) {
                    stack.pop();
                } else {
                    stack.push(Ctx::Double);
                }
                cur.push(c);
            }
            '$' if next == Some('(') && chars.get(i + 2) == Some(&'(') => {
                let mut j = i + 3;
                while j + 1 < chars.len() && !(chars[j] == ')' && chars[j + 1] == ')') {
                    j += 1;
                }
                cur.push('0');
                i = j + 2;
                continue;
            }
            '$' if next == Some('(') => {
                stack.push(Ctx::Paren);
                split(&mut cur, false, &mut cont);
                i += 2;
                continue;
            }
            '`' => {
                in_backtick = !in_backtick;
                split(&mut cur, !in_backtick, &mut cont);
            }
            _ if top == Some(Ctx::Double) => cur.push(c),
            '(' if cur.ends_with('=') => stack.push(Ctx::Array),
            '(' => {
                stack.push(Ctx::Paren);
                split(&mut cur, false, &mut cont);
            }
            ')' if top == Some(Ctx::Paren) => {
                stack.pop();
                split(&mut cur, true, &mut cont);
            }
            ')' => {
                // A case pattern `pat)`: what follows is a command.
                cont = true;
                split(&mut cur, false, &mut cont);
            }
            '&' if cur.ends_with('>') || cur.ends_with('<') || next == Some('>') => cur.push(c),
            ';' | '|' | '&' => split(&mut cur, false, &mut cont),
            _ => cur.push(c),
        }
        i += 1;
    }
    out.push((cur, cont));
    out
}

/// Whether a single-quoted string is still open at the end of `line`
/// (starting outside quotes, or inside one when `inside`).
fn single_quote_open(line: &str, inside: bool) -> bool {
    let (mut single, mut double) = (inside, false);
    for c in line.chars() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            _ => {}
        }
    }
    single
}

/// The words of a simple command: split at blanks outside quotes, quotes
/// removed.
fn shell_words(segment: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut single, mut double, mut any) = (false, false, false);
    for c in segment.chars() {
        match c {
            '\'' if !double => {
                single = !single;
                any = true;
            }
            '"' if !single => {
                double = !double;
                any = true;
            }
            c if c.is_whitespace() && !single && !double => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The programs of one simple command.
fn segment_programs(segment: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut words = shell_words(segment).into_iter().peekable();
    let mut after_env = false;
    while let Some(w) = words.next() {
        let is_assignment = w.split_once('=').is_some_and(|(n, _)| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '+')
        });
        let redirection = w.starts_with('>') || w.starts_with('<') || w.starts_with("2>");
        if w.is_empty()
            || w == "\\"
            || is_assignment
            || redirection
            || (after_env && w.starts_with('-'))
        {
            continue;
        }
        match w.as_str() {
            "command" => {
                if words.peek().is_some_and(|n| n.starts_with('-')) {
                    words.next();
                }
                out.extend(words.next().filter(|p| !p.starts_with('$')));
                return out;
            }
            "env" => {
                out.push(w);
                after_env = true;
                continue;
            }
            "exec" | "time" | "!" | "then" | "do" | "else" | "elif" | "if" | "while" | "until" => {
                continue
            }
            _ => {}
        }
        if w.starts_with('$') || w.starts_with('{') {
            continue;
        }
        if !(SHELL_WORDS.contains(&w.as_str())
            || w.starts_with('-')
            || w.contains(['*', '?', '['])
            || w.contains('=')
            || w.ends_with("()"))
        {
            out.push(w);
        }
        return out;
    }
    out
}

/// Every `.rs` file of the workspace's crates and every script under
/// `scripts/`.
pub fn workspace_files(workspace: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for krate in ["kios-init", "kiosctl", "protocol", "rootfs", "e2e"] {
        walk(&workspace.join(krate), &mut out);
    }
    if let Ok(entries) = std::fs::read_dir(workspace.join("scripts")) {
        out.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
    }
    out.sort();
    out
}

/// The programs the workspace runs, by where they appear. This file's own
/// tables and tests are left out (they name programs on purpose).
pub fn workspace_uses(workspace: &Path) -> Vec<Use> {
    let mut out = Vec::new();
    for path in workspace_files(workspace) {
        let rel = path
            .strip_prefix(workspace)
            .unwrap_or(&path)
            .display()
            .to_string();
        if rel == "e2e/src/programs.rs" {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if rel.ends_with(".rs") {
            out.extend(uses_in_rust(&rel, &text));
        } else {
            out.extend(script_uses(&text).into_iter().map(|(n, program)| Use {
                program,
                at: format!("{rel}:{n}"),
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps() -> BTreeSet<String> {
        deps_packages("packages=(\n  qemu-system-x86  # boots\n  crun conmon # oci\n)\nother=(x)\n")
    }

    #[test]
    fn deps_arrays_are_read() {
        let d = deps();
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            ["conmon", "crun", "qemu-system-x86"]
        );
        let script = "packages=(a b)\nrehearse_packages=(\n c # x\n)\n";
        let d = deps_packages(script);
        assert_eq!(d.into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        let d = default_deps_packages(script);
        assert_eq!(d.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn socat_is_caught_with_its_package() {
        let src = "fn f() {\n    let c = std::process::Command::new(\"socat\")\n        .arg(\"-\");\n}\n";
        let uses = uses_in_rust("e2e/src/x.rs", src);
        assert_eq!(
            uses,
            [Use {
                program: "socat".into(),
                at: "e2e/src/x.rs:2".into()
            }]
        );
        let missing = check(&uses, &deps());
        assert_eq!(missing.len(), 1);
        let msg = missing[0].to_string();
        assert!(
            msg.contains("runs socat, from the Debian package socat"),
            "{msg}"
        );
        assert!(msg.starts_with("e2e/src/x.rs:2"), "{msg}");
    }

    #[test]
    fn unknown_programs_fail_and_known_ones_pass() {
        let uses = uses_in_rust(
            "a.rs",
            "Command::new(\"frobnicate\"); Command::new(\"qemu-system-x86_64\"); Command::new(\"unshare\"); Command::new(\"/bin/kiosctl\"); Command::new(&cargo);",
        );
        let missing = check(&uses, &deps());
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!(missing[0].program, "frobnicate");
        assert!(missing[0].to_string().contains("package is unknown"));
    }

    #[test]
    fn harness_scripts_in_literals() {
        let src = r##"
        let script = format!(
            "set -e\n\
             mount -t overlay -o \"lowerdir=$1\" x \"$4\"\n\
             chroot=$(command -v chroot)\n\
             exec env -i \"$@\" \"$chroot\" . /init\n"
        );
        Command::new("sh").arg("-c").arg("find . | LC_ALL=C sort | cpio --quiet -o > \"$1\"");
        let init = "#!/bin/busybox sh\n$b mount -t proc proc /proc\npoweroff -f\n";
        "##;
        let programs: Vec<String> = uses_in_rust("a.rs", src)
            .into_iter()
            .map(|u| u.program)
            .collect();
        assert_eq!(
            programs,
            [
                "mount",
                "chroot",
                "env",
                "sh",
                "find",
                "sort",
                "cpio",
                "/bin/busybox"
            ]
        );
    }

    #[test]
    fn a_scripts_own_functions_are_not_programs() {
        let script = "#!/bin/bash\nlist() {\n  grep -q x f || echo\n}\nfunction other {\n  sort f\n}\nlist\nother\nmkdir d\n";
        let programs = shell_commands(script);
        assert_eq!(
            programs,
            ["/bin/bash", "grep", "sort", "mkdir"],
            "{programs:?}"
        );
    }

    #[test]
    fn shell_scripts_of_scripts() {
        let script = "#!/usr/bin/env bash\nset -euo pipefail\ncd \"$(dirname \"$0\")/..\"\npackages=(\n  gdisk  # x\n)\nfor p in \"${packages[@]}\"; do\n  dpkg-query -W \"$p\" | grep -q ok || missing+=(\"$p\")\ndone\n[ \"$(id -u)\" -eq 0 ] || sudo=\"sudo\"\nDEBIAN_FRONTEND=noninteractive $sudo apt-get install -y x >/dev/null\nif ! rustup target list | grep -qx y; then\n  i=$((i+1)); echo hi # socat here is a comment\nfi\nexec target/debug/kios-demo \"$@\"\n";
        let programs = shell_commands(script);
        assert_eq!(
            programs,
            [
                "bash",
                "dirname",
                "dpkg-query",
                "grep",
                "id",
                "apt-get",
                "rustup",
                "grep",
                "target/debug/kios-demo"
            ]
        );
    }
}
