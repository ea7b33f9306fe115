//! Generates docs/reference/files.md from the spec: sections and components
//! in spec order (like the original kiOS "Files" page), each component with
//! its explanation and a table of its paths.

use crate::inventory::{Contents, Kind};
use crate::spec::{Spec, SpecEntry};

/// Where the generated page lives, relative to the workspace root.
pub const DOCS_PATH: &str = "docs/reference/files.md";
/// The command that regenerates the page (from the workspace root).
pub const REGENERATE: &str = "cargo run -p kios-rootfs -- docs --out docs/reference/files.md";

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn kind_label(e: &SpecEntry) -> String {
    let mut label = match (e.kind, &e.target) {
        (Kind::Symlink, Some(t)) => format!("symlink → `{t}`"),
        (Kind::Hardlink, Some(t)) => format!("hard link of `{t}`"),
        (Kind::Mount, _) => "mount point".to_string(),
        (k, _) => k.as_str().to_string(),
    };
    let mut flags = Vec::new();
    if e.optional {
        flags.push("optional");
    }
    if e.runtime {
        flags.push("not in the image");
    }
    if e.removed_at_boot {
        flags.push("removed at boot");
    }
    if !flags.is_empty() {
        label.push_str(&format!(" ({})", flags.join(", ")));
    }
    label
}

/// The whole page.
pub fn render(spec: &Spec) -> String {
    let mut out = String::new();
    out.push_str("# Files on a kiOS node\n\n");
    out.push_str(&format!(
        "<!-- Generated from rootfs/spec/files.toml; do not edit. Regenerate with: {REGENERATE} -->\n\n"
    ));
    out.push_str(
        "kiOS promises administrators that they can see exactly what is on their nodes and why. \
This page lists every path of a kiOS node and explains it. The same data is built into every \
image as its inventory (`/lib/kios/inventory`): `kiosctl files` shows it for the image a node \
actually runs (including the shared libraries and kernel modules that build carries), and \
`kiosctl verify` checks the running node against it: missing or modified files, changed modes or \
owners, new setuid bits, and any path the inventory does not list.\n\n",
    );
    out.push_str(
        "Modes are octal; every path is owned by root (0:0) unless the table says otherwise.\n\n",
    );
    for section in &spec.sections {
        out.push_str(&format!(
            "- [{}](#{})\n",
            section.name,
            anchor(&section.name)
        ));
    }
    out.push_str("- [What verify reports](#what-verify-reports)\n");
    out.push('\n');
    for section in &spec.sections {
        out.push_str(&format!(
            "## {}\n\n{}\n\n",
            section.name,
            section.about.trim()
        ));
        for comp in spec.components.iter().filter(|c| c.section == section.name) {
            let entries: Vec<&SpecEntry> = spec
                .entries
                .iter()
                .filter(|e| e.component == comp.name)
                .collect();
            out.push_str(&format!("### {}\n\n", comp.name));
            if !entries.is_empty() {
                let paths: Vec<String> = entries.iter().map(|e| format!("`{}`", e.path)).collect();
                out.push_str(&format!("{}\n\n", paths.join(", ")));
            }
            out.push_str(comp.about.trim());
            out.push_str("\n\n");
            if entries.is_empty() {
                out.push_str("The paths depend on the build; `kiosctl files` lists them for a running node.\n\n");
                continue;
            }
            out.push_str("| Path | Kind | Mode | Why | Used by |\n|---|---|---|---|---|\n");
            for e in &entries {
                let mut mode = format!("{:04o}", e.mode);
                if (e.uid, e.gid) != (0, 0) {
                    mode.push_str(&format!(" {}:{}", e.uid, e.gid));
                }
                let mut why = e.why.clone();
                if let Some(m) = &e.mounted {
                    why.push_str(&format!(" Mounted: {m}."));
                }
                match e.contents {
                    Some(Contents::Delegated) => why
                        .push_str(" Belongs to cri-o or the kubelet: verify does not look inside."),
                    Some(Contents::Runtime) => {
                        why.push_str(
                            " Runtime area: verify reports programs and setuid files here",
                        );
                        match e.allow.names().as_slice() {
                            [] => why.push('.'),
                            allowed => why.push_str(&format!(
                                " unless allowed (allowed: {}).",
                                allowed.join(", ")
                            )),
                        }
                    }
                    Some(c) if e.kind == Kind::Dir && c != Contents::Image => why.push_str(
                        " Its contents are created at run time and not checked by verify.",
                    ),
                    _ => {}
                }
                out.push_str(&format!(
                    "| `{}` | {} | {} | {} | {} |\n",
                    e.path,
                    cell(&kind_label(e)),
                    mode,
                    cell(&why),
                    cell(&e.used_by.join(", "))
                ));
            }
            out.push('\n');
            for e in entries.iter().filter(|e| e.notes.is_some()) {
                out.push_str(&format!(
                    "> **Note** (`{}`): {}\n\n",
                    e.path,
                    e.notes.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    out.push_str(VERIFY_SECTION);
    out
}

const VERIFY_SECTION: &str = "## What verify reports

`kiosctl verify` compares the node with the inventory init read when the image booted (kept \
in memory; the live /lib/kios/inventory differing from it is a finding of its own). It walks \
the image's directories file by file, /etc through the data partition's overlay included, \
but not /proc, /sys and /dev. The runtime areas (contents `runtime`: the scratch space, the \
data partition, /opt/cni/bin, ...) hold no files of the image: verify looks at every name \
in them and reports setuid or setgid files and executables unless the entry allows them \
(`allow`), in the mounts below them too. It checks the live mount table against the one \
init recorded at boot, and that every runtime area that is a mount point is mounted nodev, \
noexec and nosuid unless allowed. A mount added below an area that allows `mounts` \
(/var/run, /var/lib/kubelet) is not a finding by itself, but verify walks into it with the \
area's rule, reports it when it lacks nodev, or noexec and nosuid the area does not allow \
(namespace files are exempt), and reports every mount below an area it cannot reach \
(hidden under another mount). The areas marked `delegated` (container storage, pod \
volumes and their staging) belong to cri-o and the kubelet: verify does not look inside \
them, nor at mounts below them, and says so in its summary. Each finding has one of these \
problems:

| Problem | Meaning |
|---|---|
| `missing` | a path of the image is gone (/init is the exception: kios-init removes it) |
| `modified` | a file's content (size or SHA-256), a link's target or a device number differs |
| `mode` | permission bits differ |
| `owner` | owner or group differ |
| `kind` | a different kind of file, e.g. a symlink where a program belongs, or a hard link that became a separate file |
| `setuid` | a setuid or setgid bit the image does not have (reported even for overridden files), or a setuid or setgid file in a runtime area |
| `unexpected` | a path the image does not have, e.g. an extra program in /bin; also a directory verify could not finish (too deep, too many entries, unreadable) |
| `overridden` | an /etc difference that the data partition's overlay explains: the detail names the file in meta/etc that replaces, adds or hides it |
| `process` | a process that is neither init, cri-o, the kubelet, a conmon, a container nor a short-lived helper of theirs |
| `executable` | an executable file in a runtime area that allows none |
| `mount` | a mount that is gone, changed (type, source, flags) or added since boot, a runtime area or a mount below it with less than `nodev`, `noexec`, `nosuid`, or a mount below an area that verify cannot reach |
| `inventory` | the live /lib/kios/inventory differs from the one the node booted with |

A node is clean when every finding is `overridden`: operator configuration is expected, \
tampering is not. Paths are shown in the escaped form of docs/protocol.md (`\\xNN` for a \
byte that is not printable UTF-8).
";

/// GitHub's heading anchors: lower-case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}
