//! Every program the workspace runs is on a fresh Debian 12 machine after
//! `scripts/deps`, or built by the project (see `kios_e2e::programs`), and
//! the table of packages tells the truth: dpkg names the same package for
//! each installed program.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use kios_e2e::artifacts::workspace_root;
use kios_e2e::programs::{
    check, default_deps_packages, deps_packages, is_built, package_of, workspace_uses,
    BASE_PACKAGES,
};

#[test]
fn every_spawned_program_comes_from_scripts_deps_or_the_base_system() {
    let root = workspace_root();
    let deps_script = std::fs::read_to_string(root.join("scripts/deps")).unwrap();
    let deps = deps_packages(&deps_script);
    assert!(
        deps.contains("qemu-system-x86"),
        "scripts/deps not read: {deps:?}"
    );
    let uses = workspace_uses(&root);
    let programs: BTreeSet<&str> = uses.iter().map(|u| u.program.as_str()).collect();
    eprintln!("programs run by the workspace: {programs:?}");
    // The scan reads Rust calls, harness scripts and scripts/.
    for seen in [
        "setpriv",
        "qemu-system-x86_64",
        "mount",
        "apt-get",
        "dpkg-query",
        "debootstrap",
    ] {
        assert!(
            programs.contains(seen),
            "{seen} not found among {programs:?}"
        );
    }
    let missing = check(&uses, &deps);
    let report: Vec<String> = missing.iter().map(|m| m.to_string()).collect();
    assert!(report.is_empty(), "\n{}", report.join("\n"));
}

/// `dpkg -S` owner of a path (or of its /usr-merged twin).
fn dpkg_owner(path: &Path) -> Option<String> {
    let s = path.to_string_lossy();
    let twin = match s.strip_prefix("/usr") {
        Some(rest) => rest.to_string(),
        None => format!("/usr{s}"),
    };
    for candidate in [s.to_string(), twin] {
        let out = Command::new("dpkg")
            .arg("-S")
            .arg(&candidate)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let owner = text
            .lines()
            .filter(|l| !l.starts_with("diversion"))
            .find_map(|l| l.split_once(": ").map(|(pkgs, _)| pkgs.to_string()));
        if let Some(pkgs) = owner {
            return Some(pkgs);
        }
    }
    None
}

fn on_path(program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    // Debian's directories only: a program only under /usr/local is not
    // from a package (and cannot be checked).
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

#[test]
fn the_package_table_matches_dpkg_for_every_program_used() {
    let root = workspace_root();
    let deps_script = std::fs::read_to_string(root.join("scripts/deps")).unwrap();
    // What `scripts/deps` (as scripts/test runs it) or the base system must
    // have installed here; `--rehearse` extras may be absent.
    let default = default_deps_packages(&deps_script);
    let uses = workspace_uses(&root);
    let programs: BTreeSet<&str> = uses
        .iter()
        .map(|u| u.program.as_str())
        .filter(|p| !is_built(p))
        .collect();
    let mut wrong = Vec::new();
    for program in programs {
        let Some(package) = package_of(program) else {
            continue; // the other test names it
        };
        let Some(path) = on_path(program) else {
            if !(default.contains(package) || BASE_PACKAGES.contains(&package)) {
                continue; // e.g. debootstrap without `scripts/deps --rehearse`
            }
            wrong.push(format!(
                "{program}: not installed here (package {package}; run scripts/deps)"
            ));
            continue;
        };
        match dpkg_owner(&path) {
            Some(owners)
                if owners
                    .split(", ")
                    .any(|o| o.split(':').next() == Some(package)) => {}
            other => wrong.push(format!(
                "{program} ({}): the table says {package}, dpkg says {other:?}",
                path.display()
            )),
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}
