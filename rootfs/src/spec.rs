//! The human-edited spec of every path on a kiOS node
//! (`rootfs/spec/files.toml`): parsing and validation. Every error names the
//! file, the line and the field.
//!
//! Format: `[[section]]` (name, about) groups components on the docs page;
//! `[[component]]` (name, section, about) explains a group of paths;
//! `[[entry]]` describes one path. Entry fields:
//!
//! | field | meaning |
//! |---|---|
//! | `path` | absolute path in the image |
//! | `kind` | `file`, `dir`, `symlink`, `hardlink`, `device` or `mount` |
//! | `mode` | octal permission string, e.g. `"0500"` |
//! | `owner` | `"uid:gid"`, default `"0:0"` |
//! | `source` | files only: `input:NAME` (inputs directory), `files:REL` (`rootfs/files/REL`), `host:/PATH` (the build host), `generated:inventory`, `generated:modules-list`, `generated:os-release`, `generated:cmdline` |
//! | `fallback` | for `input:` sources: build-host paths tried when the input is not given |
//! | `target` | symlink target as stored, or the path a hard link shares its inode with |
//! | `device` | `"c MAJOR MINOR"` or `"b MAJOR MINOR"` |
//! | `mounted` | mount points: what kios-init mounts there |
//! | `contents` | mount points (required) and directories: `skip`, `runtime`, `image` (default for directories), `overlay` or `delegated` (cri-o's and the kubelet's: out of verify's scope): how verify treats what is below |
//! | `allow` | runtime areas: what may be there besides plain files, any of `exec`, `setuid`, `mounts` |
//! | `component`, `why`, `used_by`, `notes` | what an administrator reads |
//! | `optional` | present only when its input is given (links: when their target is present; directories: when something is placed in them) |
//! | `runtime` | not in the image: created at boot or while the node runs (documented, never checked) |
//! | `removed_at_boot` | kios-init deletes it after boot; verify accepts it absent |
//! | `replaceable` | the ELF closure of an input may put the real file here (see the rule in the spec's header) |

use crate::inventory::{Allow, Contents, Device, Kind};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A spec error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is about the file as a whole.
    pub line: usize,
    /// The field at fault (`""` for syntax errors).
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if !self.field.is_empty() {
            write!(f, "field '{}': ", self.field)?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for SpecError {}

/// Errors of loading a spec.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("read spec {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<SpecError>),
}

/// Where a file's content comes from at build time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file named NAME in the inputs directory (or given explicitly).
    Input(String),
    /// A file under `rootfs/files/`.
    Files(PathBuf),
    /// A file of the build host.
    Host(PathBuf),
    Generated(Generated),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    /// The inventory itself.
    Inventory,
    /// /etc/kios/modules: the early module names.
    ModulesList,
    /// /etc/os-release: the image's name, version and build id.
    OsRelease,
    /// /lib/kios/cmdline: the kernel command line of the unified kernel image.
    Cmdline,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Input(n) => write!(f, "input:{n}"),
            Source::Files(p) => write!(f, "files:{}", p.display()),
            Source::Host(p) => write!(f, "host:{}", p.display()),
            Source::Generated(Generated::Inventory) => write!(f, "generated:inventory"),
            Source::Generated(Generated::ModulesList) => write!(f, "generated:modules-list"),
            Source::Generated(Generated::OsRelease) => write!(f, "generated:os-release"),
            Source::Generated(Generated::Cmdline) => write!(f, "generated:cmdline"),
        }
    }
}

/// A section of the docs page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub about: String,
}

/// A component: a group of paths with one explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub section: String,
    pub about: String,
}

/// One validated entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecEntry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub source: Option<Source>,
    pub fallback: Vec<PathBuf>,
    pub target: Option<String>,
    pub device: Option<Device>,
    pub mounted: Option<String>,
    pub contents: Option<Contents>,
    pub allow: Allow,
    pub component: String,
    pub why: String,
    pub used_by: Vec<String>,
    pub notes: Option<String>,
    pub optional: bool,
    pub runtime: bool,
    pub removed_at_boot: bool,
    pub replaceable: bool,
    /// Line of the entry in the spec file.
    pub line: usize,
}

/// A parsed and validated spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub file: PathBuf,
    pub sections: Vec<Section>,
    pub components: Vec<Component>,
    /// In file order.
    pub entries: Vec<SpecEntry>,
}

impl Spec {
    pub fn entry(&self, path: &str) -> Option<&SpecEntry> {
        self.entries.iter().find(|e| e.path == path)
    }

    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    section: Vec<Spanned<RawSection>>,
    #[serde(default)]
    component: Vec<Spanned<RawComponent>>,
    #[serde(default)]
    entry: Vec<Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    name: Spanned<String>,
    about: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    name: Spanned<String>,
    section: Spanned<String>,
    about: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    path: Spanned<String>,
    kind: Spanned<String>,
    mode: Spanned<String>,
    owner: Option<Spanned<String>>,
    source: Option<Spanned<String>>,
    #[serde(default)]
    fallback: Vec<Spanned<String>>,
    target: Option<Spanned<String>>,
    device: Option<Spanned<String>>,
    mounted: Option<Spanned<String>>,
    contents: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    component: Spanned<String>,
    why: Spanned<String>,
    #[serde(default)]
    used_by: Vec<String>,
    notes: Option<Spanned<String>>,
    optional: Option<Spanned<bool>>,
    runtime: Option<Spanned<bool>>,
    removed_at_boot: Option<Spanned<bool>>,
    replaceable: Option<Spanned<bool>>,
}

/// Reads and validates the spec at `path`.
pub fn load(path: &Path) -> Result<Spec, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text).map_err(LoadError::Invalid)
}

/// Parses and validates spec text; `file` is used in error messages. All
/// validation errors are returned, in file order.
pub fn parse(file: &Path, text: &str) -> Result<Spec, Vec<SpecError>> {
    let lines = LineIndex::new(text);
    let raw: RawSpec = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| lines.line(s.start)).unwrap_or(0);
        let message = e.message().trim().to_string();
        vec![SpecError {
            file: file.to_path_buf(),
            line,
            field: field_in_message(&message),
            message,
        }]
    })?;
    let mut v = Validator {
        file,
        lines: &lines,
        errors: Vec::new(),
    };
    let spec = v.validate(raw);
    if v.errors.is_empty() {
        Ok(spec)
    } else {
        v.errors.sort_by_key(|e| e.line);
        Err(v.errors)
    }
}

/// serde's messages quote the field: "missing field `why`".
fn field_in_message(message: &str) -> String {
    let mut parts = message.split('`');
    match (parts.next(), parts.next()) {
        (Some(_), Some(field)) if !field.contains(' ') => field.to_string(),
        _ => String::new(),
    }
}

struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

struct Validator<'a> {
    file: &'a Path,
    lines: &'a LineIndex,
    errors: Vec<SpecError>,
}

impl Validator<'_> {
    fn err<T>(&mut self, at: &Spanned<T>, field: &str, message: impl Into<String>) {
        let line = self.lines.line(at.span().start);
        self.err_line(line, field, message);
    }

    fn err_line(&mut self, line: usize, field: &str, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.to_path_buf(),
            line,
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn non_empty(&mut self, s: &Spanned<String>, field: &str) -> String {
        let value = s.get_ref().trim().to_string();
        if value.is_empty() {
            self.err(s, field, "must not be empty");
        }
        value
    }

    fn validate(&mut self, raw: RawSpec) -> Spec {
        let mut sections = Vec::new();
        for s in &raw.section {
            let name = self.non_empty(&s.get_ref().name, "name");
            let about = self.non_empty(&s.get_ref().about, "about");
            if sections.iter().any(|x: &Section| x.name == name) {
                self.err(
                    &s.get_ref().name,
                    "name",
                    format!("section '{name}' is declared twice"),
                );
            }
            sections.push(Section { name, about });
        }
        let mut components = Vec::new();
        for c in &raw.component {
            let c = c.get_ref();
            let name = self.non_empty(&c.name, "name");
            let section = self.non_empty(&c.section, "section");
            let about = self.non_empty(&c.about, "about");
            if !sections.iter().any(|s| s.name == section) {
                self.err(
                    &c.section,
                    "section",
                    format!("unknown section '{section}'"),
                );
            }
            if components.iter().any(|x: &Component| x.name == name) {
                self.err(
                    &c.name,
                    "name",
                    format!("component '{name}' is declared twice"),
                );
            }
            components.push(Component {
                name,
                section,
                about,
            });
        }
        let mut entries: Vec<SpecEntry> = Vec::new();
        let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
        for raw_entry in &raw.entry {
            let line = self.lines.line(raw_entry.span().start);
            let Some(entry) = self.entry(raw_entry.get_ref(), line, &components) else {
                continue;
            };
            if let Some(first) = first_line.get(&entry.path) {
                let msg = format!("'{}' is already listed at line {first}", entry.path);
                self.err(&raw_entry.get_ref().path, "path", msg);
                continue;
            }
            first_line.insert(entry.path.clone(), line);
            entries.push(entry);
        }
        self.cross_check(&raw.entry, &entries);
        Spec {
            file: self.file.to_path_buf(),
            sections,
            components,
            entries,
        }
    }

    fn entry(&mut self, r: &RawEntry, line: usize, components: &[Component]) -> Option<SpecEntry> {
        let errors_before = self.errors.len();
        let path = r.path.get_ref().clone();
        if let Err(msg) = check_path(&path) {
            self.err(&r.path, "path", msg);
        }
        let kind = Kind::parse(r.kind.get_ref());
        if kind.is_none() {
            let names: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            let msg = format!(
                "unknown kind '{}'; one of {}",
                r.kind.get_ref(),
                names.join(", ")
            );
            self.err(&r.kind, "kind", msg);
        }
        let mode = parse_mode(r.mode.get_ref());
        if mode.is_none() {
            self.err(
                &r.mode,
                "mode",
                format!(
                    "'{}' is not an octal mode such as \"0500\"",
                    r.mode.get_ref()
                ),
            );
        }
        let (uid, gid) = match &r.owner {
            None => (0, 0),
            Some(o) => match parse_owner(o.get_ref()) {
                Some(ids) => ids,
                None => {
                    self.err(o, "owner", format!("'{}' is not \"uid:gid\"", o.get_ref()));
                    (0, 0)
                }
            },
        };
        let component = self.non_empty(&r.component, "component");
        if !component.is_empty() && !components.iter().any(|c| c.name == component) {
            self.err(
                &r.component,
                "component",
                format!("unknown component '{component}'"),
            );
        }
        let why = self.non_empty(&r.why, "why");
        let flag = |f: &Option<Spanned<bool>>| f.as_ref().map(|b| *b.get_ref()).unwrap_or(false);
        let optional = flag(&r.optional);
        let runtime = flag(&r.runtime);
        let removed_at_boot = flag(&r.removed_at_boot);
        let replaceable = flag(&r.replaceable);
        let kind = kind?;

        let source = match &r.source {
            Some(s) => match parse_source(s.get_ref()) {
                Ok(src) => Some(src),
                Err(msg) => {
                    self.err(s, "source", msg);
                    None
                }
            },
            None => None,
        };
        match (kind, &r.source, runtime) {
            (Kind::File, None, false) => {
                self.err(&r.path, "source", "a file in the image needs a source")
            }
            (Kind::File, Some(s), true) => self.err(
                s,
                "source",
                "a runtime entry is not built, so it has no source",
            ),
            (k, Some(s), _) if k != Kind::File => self.err(
                s,
                "source",
                format!("only files have a source, not a {}", k.as_str()),
            ),
            _ => {}
        }
        let mut fallback = Vec::new();
        for f in &r.fallback {
            if !f.get_ref().starts_with('/') {
                self.err(
                    f,
                    "fallback",
                    format!("'{}' is not an absolute path", f.get_ref()),
                );
            }
            fallback.push(PathBuf::from(f.get_ref()));
        }
        if let (Some(f), false) = (r.fallback.first(), matches!(source, Some(Source::Input(_)))) {
            self.err(f, "fallback", "only an input: source can have fallbacks");
        }
        let target = match (&r.target, kind) {
            (Some(t), Kind::Symlink | Kind::Hardlink) => {
                if t.get_ref().is_empty() {
                    self.err(t, "target", "must not be empty");
                }
                if kind == Kind::Hardlink {
                    if let Err(msg) = check_path(t.get_ref()) {
                        self.err(t, "target", msg);
                    }
                }
                Some(t.get_ref().clone())
            }
            (None, Kind::Symlink | Kind::Hardlink) => {
                self.err(
                    &r.path,
                    "target",
                    format!("a {} needs a target", kind.as_str()),
                );
                None
            }
            (Some(t), _) => {
                self.err(t, "target", format!("a {} has no target", kind.as_str()));
                None
            }
            (None, _) => None,
        };
        let device = match (&r.device, kind) {
            (Some(d), Kind::Device) => match parse_device(d.get_ref()) {
                Some(dev) => Some(dev),
                None => {
                    self.err(
                        d,
                        "device",
                        format!(
                            "'{}' is not \"c MAJOR MINOR\" or \"b MAJOR MINOR\"",
                            d.get_ref()
                        ),
                    );
                    None
                }
            },
            (None, Kind::Device) => {
                self.err(
                    &r.path,
                    "device",
                    "a device needs \"c MAJOR MINOR\" or \"b MAJOR MINOR\"",
                );
                None
            }
            (Some(d), _) => {
                self.err(d, "device", "only a device has a device number");
                None
            }
            (None, _) => None,
        };
        let mounted = match (kind, &r.mounted) {
            (Kind::Mount, Some(m)) => Some(self.non_empty(m, "mounted")),
            (Kind::Mount, None) => {
                self.err(
                    &r.path,
                    "mounted",
                    "a mount point needs 'mounted' (what is mounted there)",
                );
                None
            }
            (_, Some(m)) => {
                self.err(m, "mounted", "only a mount point has 'mounted'");
                None
            }
            (_, None) => None,
        };
        let contents = match (kind, &r.contents) {
            (Kind::Mount | Kind::Dir, Some(c)) => match Contents::parse(c.get_ref()) {
                Some(contents) => Some(contents),
                None => {
                    let names: Vec<_> = Contents::ALL.iter().map(|c| c.as_str()).collect();
                    let msg = format!(
                        "unknown contents '{}'; one of {}",
                        c.get_ref(),
                        names.join(", ")
                    );
                    self.err(c, "contents", msg);
                    None
                }
            },
            (Kind::Mount, None) => {
                self.err(&r.path, "contents", "a mount point needs 'contents'");
                None
            }
            (_, Some(c)) => {
                self.err(
                    c,
                    "contents",
                    "only a directory or mount point has 'contents'",
                );
                None
            }
            (_, None) => None,
        };
        let mut allow = Allow::default();
        for a in &r.allow {
            if contents != Some(Contents::Runtime) {
                self.err(
                    a,
                    "allow",
                    "only a runtime area (contents = \"runtime\") has 'allow'",
                );
            } else if !allow.set(a.get_ref()) {
                let msg = format!(
                    "unknown allowance '{}'; any of {}",
                    a.get_ref(),
                    Allow::NAMES.join(", ")
                );
                self.err(a, "allow", msg);
            }
        }
        if let Some(b) = &r.removed_at_boot {
            if *b.get_ref() && (kind != Kind::File || runtime) {
                self.err(
                    b,
                    "removed_at_boot",
                    "only a file of the image can be removed at boot",
                );
            }
        }
        if let Some(b) = &r.optional {
            if *b.get_ref() && runtime {
                self.err(b, "optional", "a runtime entry cannot be optional");
            }
        }
        if let Some(b) = &r.replaceable {
            if *b.get_ref() && kind != Kind::Symlink {
                self.err(
                    b,
                    "replaceable",
                    "only a symlink can be replaced by the ELF closure",
                );
            }
        }
        if self.errors.len() != errors_before {
            return None;
        }
        Some(SpecEntry {
            path,
            kind,
            mode: mode.unwrap_or(0),
            uid,
            gid,
            source,
            fallback,
            target,
            device,
            mounted,
            contents,
            allow,
            component,
            why,
            used_by: r.used_by.clone(),
            notes: r.notes.as_ref().map(|n| n.get_ref().trim().to_string()),
            optional,
            runtime,
            removed_at_boot,
            replaceable,
            line,
        })
    }

    /// Rules across entries: parents exist and are directories; hard links
    /// point at files.
    fn cross_check(&mut self, raw: &[Spanned<RawEntry>], entries: &[SpecEntry]) {
        let by_path: BTreeMap<&str, &SpecEntry> =
            entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let dirs: BTreeSet<&str> = entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::Dir | Kind::Mount))
            .map(|e| e.path.as_str())
            .collect();
        for e in entries {
            let Some(r) = raw.iter().find(|r| r.get_ref().path.get_ref() == &e.path) else {
                continue;
            };
            let r = r.get_ref();
            if e.path != "/" {
                let mut parent = parent_of(&e.path);
                // Runtime entries may sit deeper inside a mount (e.g. /sys/fs/cgroup).
                if e.runtime {
                    while parent != "/" && !by_path.contains_key(parent) {
                        parent = parent_of(parent);
                    }
                }
                if !dirs.contains(parent) {
                    self.err(
                        &r.path,
                        "path",
                        format!("parent directory '{parent}' is not listed as a dir or mount"),
                    );
                } else if let Some(p) = by_path.get(parent) {
                    if p.runtime && !e.runtime {
                        self.err(
                            &r.path,
                            "runtime",
                            format!(
                                "parent '{parent}' is a runtime entry, so this one must be too"
                            ),
                        );
                    }
                }
            }
            if e.kind == Kind::Hardlink {
                let t = e.target.as_deref().unwrap_or_default();
                match by_path.get(t) {
                    Some(te) if te.kind == Kind::File => {
                        if (te.mode, te.uid, te.gid) != (e.mode, e.uid, e.gid) {
                            self.err(
                                &r.mode,
                                "mode",
                                format!("a hard link shares mode and owner with '{t}'"),
                            );
                        }
                        if te.optional && !e.optional {
                            if let Some(tt) = &r.target {
                                self.err(
                                    tt,
                                    "target",
                                    format!("'{t}' is optional, so this link must be too"),
                                );
                            }
                        }
                    }
                    _ => {
                        if let Some(tt) = &r.target {
                            self.err(
                                tt,
                                "target",
                                format!("'{t}' is not a file listed in the spec"),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The parent of a normalized absolute path (`/` for top-level paths).
pub fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// Checks that `path` is absolute and normalized.
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("'{path}' is not absolute"));
    }
    if path == "/" {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(format!("'{path}' ends with '/'"));
    }
    for part in path[1..].split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!(
                "'{path}' is not normalized (empty, '.' or '..' component)"
            ));
        }
    }
    Ok(())
}

pub fn parse_mode(s: &str) -> Option<u32> {
    if s.len() < 3 || s.len() > 5 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

fn parse_owner(s: &str) -> Option<(u32, u32)> {
    let (u, g) = s.split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

fn parse_device(s: &str) -> Option<Device> {
    let mut parts = s.split_whitespace();
    let block = match parts.next()? {
        "c" => false,
        "b" => true,
        _ => return None,
    };
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Device {
        block,
        major,
        minor,
    })
}

fn parse_source(s: &str) -> Result<Source, String> {
    let (scheme, rest) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' has no scheme; use input:, files:, host: or generated:"))?;
    match scheme {
        "input" if !rest.is_empty() && !rest.contains('/') => Ok(Source::Input(rest.to_string())),
        "input" => Err(format!("'{s}': an input name is a plain file name")),
        "files"
            if !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.split('/').any(|p| p == "..") =>
        {
            Ok(Source::Files(PathBuf::from(rest)))
        }
        "files" => Err(format!(
            "'{s}': a files: source is relative to rootfs/files and stays inside it"
        )),
        "host" if rest.starts_with('/') => Ok(Source::Host(PathBuf::from(rest))),
        "host" => Err(format!("'{s}': a host: source is an absolute path")),
        "generated" => match rest {
            "inventory" => Ok(Source::Generated(Generated::Inventory)),
            "modules-list" => Ok(Source::Generated(Generated::ModulesList)),
            "os-release" => Ok(Source::Generated(Generated::OsRelease)),
            "cmdline" => Ok(Source::Generated(Generated::Cmdline)),
            other => Err(format!(
                "unknown generated source '{other}'; one of inventory, modules-list, os-release, cmdline"
            )),
        },
        other => Err(format!(
            "unknown source scheme '{other}'; use input:, files:, host: or generated:"
        )),
    }
}
