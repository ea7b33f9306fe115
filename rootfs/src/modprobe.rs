//! How modprobe finds modules, without I/O: a kernel's `modules.dep`,
//! `modules.softdep`, `modules.alias` and `modules.builtin` (as text), the
//! lookup of a name (module, alias with the `*`, `?` and `[...]` globs of
//! modules.alias, or built-in), and the order in which modprobe loads a
//! module: for each dependency (modules.dep lists them so that loading them
//! last-first works) its `pre:` soft dependencies, itself and its `post:`
//! ones, then the same for the module. Each module comes once; a built-in
//! one counts as loaded. Soft dependencies are optional: what they name may
//! be missing. Shared by kios-init (loading at boot) and the image builder
//! (which modules an image carries).

use std::collections::{BTreeMap, BTreeSet};

/// Deepest chain of soft dependencies followed.
pub const MAX_DEPTH: usize = 64;

/// Module name as the kernel knows it: file name without `.ko[.xz|.zst|.gz]`,
/// with `-` as `_`.
pub fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let base = base.split(".ko").next().unwrap_or(base);
    base.trim().replace('-', "_")
}

/// A name or pattern as modprobe compares them: `-` is `_`, except inside
/// a `[...]` class.
pub fn normalize_alias(alias: &str) -> String {
    let mut out = String::with_capacity(alias.len());
    let mut in_class = false;
    for c in alias.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            '-' if !in_class => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// fnmatch(3) without flags, as modprobe matches modules.alias and softdep
/// names: `*` any run, `?` one character, `[abc]`, `[a-z]`, `[!x]`/`[^x]`,
/// `\` quotes the next character. A malformed class matches nothing.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    // Bytes: module names and aliases are ASCII (a multi-byte character
    // only ever matches itself or `*`).
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    // Iterative matching with one backtrack point (the last `*`).
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => match class_match(p, pi, t[ti]) {
                Some((true, next)) => Some(next),
                _ => None,
            },
            Some(b'\\') if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(pi + 2),
            Some(&c) => (c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether the class starting at `p[start] == b'['` matches `c`, and the
/// index after it; `None` when the class is not closed.
fn class_match(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&hi| hi != b']') {
            let hi = p[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

/// One `softdep` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftDep {
    /// The module name (a glob, as modprobe.d allows).
    pub pattern: String,
    pub pre: Vec<String>,
    pub post: Vec<String>,
}

/// Parses `softdep NAME pre: a b post: c` lines (other lines and `#`
/// comments are skipped). Like modprobe, only the first line that matches
/// a module counts.
pub fn parse_softdeps(text: &str) -> Vec<SoftDep> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("softdep") {
            continue;
        }
        let Some(name) = words.next() else { continue };
        let mut dep = SoftDep {
            pattern: normalize_alias(name),
            pre: Vec::new(),
            post: Vec::new(),
        };
        // Words before the first `pre:` or `post:` belong to neither (the
        // kernel writes such lines, e.g. `softdep cifs gcm`; modprobe
        // ignores those words).
        let mut into: Option<bool> = None;
        for w in words {
            match (w, into) {
                ("pre:", _) => into = Some(false),
                ("post:", _) => into = Some(true),
                (_, Some(true)) => dep.post.push(w.to_string()),
                (_, Some(false)) => dep.pre.push(w.to_string()),
                (_, None) => {}
            }
        }
        out.push(dep);
    }
    out
}

/// Parses `alias PATTERN MODULE` lines: (normalized pattern, module name).
pub fn parse_aliases(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("alias"), Some(a), Some(m)) => Some((normalize_alias(a), module_name(m))),
                _ => None,
            }
        })
        .collect()
}

/// One line of modules.dep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepLine {
    /// Relative path, e.g. `kernel/fs/ext4/ext4.ko`.
    pub path: String,
    /// Relative paths of every module it needs, as modules.dep lists them.
    pub deps: Vec<String>,
}

/// What modprobe knows of a kernel's modules.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleIndex {
    /// By module name.
    pub modules: BTreeMap<String, DepLine>,
    pub softdeps: Vec<SoftDep>,
    /// (normalized pattern, module name), in file order.
    pub aliases: Vec<(String, String)>,
    /// Built-in module names.
    pub builtin: BTreeSet<String>,
}

/// What a name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Module(String),
    Builtin(String),
    /// The modules an alias names (each a module or built in).
    Alias(Vec<String>),
    NotFound,
}

impl ModuleIndex {
    /// Parses the four files' text (any may be empty). modules.dep lines
    /// without `:` are skipped.
    pub fn parse(dep: &str, softdep: &str, alias: &str, builtin: &str) -> ModuleIndex {
        let mut modules = BTreeMap::new();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() || path.starts_with('#') {
                continue;
            }
            modules.insert(
                module_name(path),
                DepLine {
                    path: path.to_string(),
                    deps: deps.split_whitespace().map(str::to_string).collect(),
                },
            );
        }
        let builtin = builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        ModuleIndex {
            modules,
            softdeps: parse_softdeps(softdep),
            aliases: parse_aliases(alias),
            builtin,
        }
    }

    /// modprobe's lookup order: a module of modules.dep, then the aliases of
    /// modules.alias (every match), then a built-in module.
    pub fn lookup(&self, name: &str) -> Lookup {
        let as_module = module_name(name);
        if self.modules.contains_key(&as_module) {
            return Lookup::Module(as_module);
        }
        let key = normalize_alias(name.trim());
        let mut targets: Vec<String> = Vec::new();
        for (pattern, module) in &self.aliases {
            if glob_match(pattern, &key) && !targets.contains(module) {
                targets.push(module.clone());
            }
        }
        if !targets.is_empty() {
            return Lookup::Alias(targets);
        }
        if self.builtin.contains(&as_module) {
            return Lookup::Builtin(as_module);
        }
        Lookup::NotFound
    }

    /// The first softdep line for a module.
    pub fn softdep(&self, module: &str) -> Option<&SoftDep> {
        self.softdeps
            .iter()
            .find(|s| glob_match(&s.pattern, module))
    }

    /// The load plan for `wanted` (names of modules, aliases or built-ins).
    pub fn plan(&self, wanted: &[String]) -> Plan {
        let mut w = Walk {
            index: self,
            plan: Plan::default(),
            visited: BTreeSet::new(),
            stack: Vec::new(),
        };
        for name in wanted {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            match self.lookup(name) {
                Lookup::Module(m) => w.probe(&m, &Reason::Listed, true, 0),
                Lookup::Alias(targets) => {
                    for t in targets {
                        w.alias_target(&t, &Reason::Listed, true, 0);
                    }
                }
                Lookup::Builtin(m) => w.builtin(&m),
                Lookup::NotFound => w.plan.problems.push(Problem::NotFound {
                    name: name.to_string(),
                }),
            }
        }
        w.plan
    }
}

/// Why a module is in the plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Named in the list.
    Listed,
    /// In the modules.dep line of this module.
    DependencyOf(String),
    /// A soft dependency (`pre:` or `post:`) of this module.
    SoftDependencyOf(String),
}

/// One module to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    /// Relative path, as in modules.dep.
    pub path: String,
    /// The module's own modules.dep dependencies (relative paths).
    pub deps: Vec<String>,
    /// Needed by what was listed (a failure is an error); false for soft
    /// dependencies, which may fail (modprobe ignores their errors).
    pub required: bool,
    /// Every reason it is here, first one first.
    pub reasons: Vec<Reason>,
}

/// Something the plan could not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A listed name is no module, alias or built-in.
    NotFound { name: String },
    /// A soft dependency resolves to nothing (modprobe skips it silently).
    SoftNotFound { name: String, of: String },
    /// A modules.dep dependency without a line of its own.
    Unlisted { path: String, of: String },
    /// A module needs a module that needs it.
    Cycle { chain: Vec<String> },
    /// Soft dependencies nested deeper than [`MAX_DEPTH`].
    TooDeep { name: String },
}

/// The modules to load, in order, each once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Built-in modules met on the way (they count as loaded).
    pub builtin: Vec<String>,
    pub problems: Vec<Problem>,
}

struct Walk<'a> {
    index: &'a ModuleIndex,
    plan: Plan,
    /// Modules whose probe list was made (modprobe's `visited`).
    visited: BTreeSet<String>,
    /// The modules.dep chain being walked (for cycles).
    stack: Vec<String>,
}

impl Walk<'_> {
    fn builtin(&mut self, name: &str) {
        if !self.plan.builtin.iter().any(|b| b == name) {
            self.plan.builtin.push(name.to_string());
        }
    }

    /// A module an alias names: a module or a built-in.
    fn alias_target(&mut self, name: &str, why: &Reason, required: bool, depth: usize) {
        if self.index.modules.contains_key(name) {
            self.probe(name, why, required, depth);
        } else if self.index.builtin.contains(name) {
            self.builtin(name);
        } else if let Reason::SoftDependencyOf(of) = why {
            self.plan.problems.push(Problem::SoftNotFound {
                name: name.to_string(),
                of: of.clone(),
            });
        } else {
            self.plan.problems.push(Problem::NotFound {
                name: name.to_string(),
            });
        }
    }

    /// modprobe's probe list of one module: each dependency (last listed
    /// first, modules.dep's order for loading) with its soft dependencies,
    /// then the module with its own. A dependency's own modules.dep line
    /// is followed too (depmod's lines already hold the whole closure, so
    /// this only matters for hand-written ones).
    fn probe(&mut self, name: &str, why: &Reason, required: bool, depth: usize) {
        if self.visited.contains(name) {
            self.note(name, why, required);
            return;
        }
        if depth > MAX_DEPTH {
            self.plan.problems.push(Problem::TooDeep {
                name: name.to_string(),
            });
            return;
        }
        let Some(line) = self.index.modules.get(name) else {
            return;
        };
        self.visited.insert(name.to_string());
        self.stack.push(name.to_string());
        for dep_path in line.deps.iter().rev() {
            let dep = module_name(dep_path);
            if let Some(start) = self.stack.iter().position(|n| *n == dep) {
                let mut chain = self.stack[start..].to_vec();
                chain.push(dep);
                self.plan.problems.push(Problem::Cycle { chain });
                continue;
            }
            if !self.index.modules.contains_key(&dep) {
                self.plan.problems.push(Problem::Unlisted {
                    path: dep_path.clone(),
                    of: name.to_string(),
                });
                continue;
            }
            self.probe(
                &dep,
                &Reason::DependencyOf(name.to_string()),
                required,
                depth + 1,
            );
        }
        self.stack.pop();
        self.with_softdeps(name, why, required, depth);
    }

    /// `pre:` soft dependencies, the module, `post:` soft dependencies.
    fn with_softdeps(&mut self, name: &str, why: &Reason, required: bool, depth: usize) {
        let (pre, post) = match self.index.softdep(name) {
            Some(s) => (s.pre.clone(), s.post.clone()),
            None => (Vec::new(), Vec::new()),
        };
        self.soft(name, &pre, depth);
        self.place(name, why, required);
        self.soft(name, &post, depth);
    }

    fn soft(&mut self, of: &str, names: &[String], depth: usize) {
        let why = Reason::SoftDependencyOf(of.to_string());
        for n in names {
            match self.index.lookup(n) {
                Lookup::Module(m) => self.probe(&m, &why, false, depth + 1),
                Lookup::Alias(targets) => {
                    for t in targets {
                        self.alias_target(&t, &why, false, depth + 1);
                    }
                }
                Lookup::Builtin(m) => self.builtin(&m),
                Lookup::NotFound => self.plan.problems.push(Problem::SoftNotFound {
                    name: n.clone(),
                    of: of.to_string(),
                }),
            }
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.plan.steps.iter().position(|s| s.name == name)
    }

    fn place(&mut self, name: &str, why: &Reason, required: bool) {
        if self.position(name).is_some() {
            self.note(name, why, required);
            return;
        }
        let Some(line) = self.index.modules.get(name) else {
            return;
        };
        self.plan.steps.push(Step {
            name: name.to_string(),
            path: line.path.clone(),
            deps: line.deps.clone(),
            required,
            reasons: vec![why.clone()],
        });
    }

    /// One more reason for a placed module; once required, its
    /// dependencies are required too.
    fn note(&mut self, name: &str, why: &Reason, required: bool) {
        let Some(i) = self.position(name) else {
            return;
        };
        let step = &mut self.plan.steps[i];
        if !step.reasons.contains(why) {
            step.reasons.push(why.clone());
        }
        if required && !step.required {
            step.required = true;
            let deps: Vec<String> = step.deps.iter().map(|d| module_name(d)).collect();
            for d in deps {
                self.note(&d, &Reason::DependencyOf(name.to_string()), true);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // Real lines of Debian's 6.1.0-57-amd64 (bookworm) kernel (the files of
    // rootfs/tests/fixtures/debian-6.1.0-57, see its README): modules.dep
    // for the early modules of a virtio + ext4 node, the softdeps, the
    // aliases that name crc32c and the early modules, some built-ins.
    pub const DEBIAN_DEP: &str = include_str!("../tests/fixtures/debian-6.1.0-57/modules.dep");
    pub const DEBIAN_SOFTDEP: &str =
        include_str!("../tests/fixtures/debian-6.1.0-57/modules.softdep");
    pub const DEBIAN_ALIAS: &str = include_str!("../tests/fixtures/debian-6.1.0-57/modules.alias");
    /// The early list an administrator writes for a virtio + ext4 node.
    pub fn admin_list() -> Vec<&'static str> {
        include_str!("../tests/fixtures/debian-6.1.0-57/kios-modules")
            .lines()
            .collect()
    }
    pub const DEBIAN_BUILTIN: &str =
        include_str!("../tests/fixtures/debian-6.1.0-57/modules.builtin");

    fn debian() -> ModuleIndex {
        ModuleIndex::parse(DEBIAN_DEP, DEBIAN_SOFTDEP, DEBIAN_ALIAS, DEBIAN_BUILTIN)
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.name.as_str()).collect()
    }

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn globs_as_fnmatch() {
        assert!(glob_match("crypto_crc32c", "crypto_crc32c"));
        assert!(!glob_match("crypto_crc32c", "crypto_crc32"));
        assert!(glob_match("acpi*:LNXPWRBN:*", "acpi:LNXPWRBN:"));
        assert!(glob_match("acpi*:LNXPWRBN:*", "acpi:PNP0C0C:LNXPWRBN:x"));
        assert!(!glob_match("acpi*:LNXPWRBN:*", "acpi:LNXSLPBN:"));
        assert!(glob_match(
            "virtio:d00000002v*",
            "virtio:d00000002v00001AF4"
        ));
        assert!(glob_match("pci:v0000?086d*", "pci:v00008086d1234"));
        assert!(glob_match("usb:v[0-9A]*", "usb:vA"));
        assert!(!glob_match("usb:v[!0-9]*", "usb:v5"));
        assert!(glob_match("a[]]b", "a]b"));
        assert!(glob_match("a\\*b", "a*b") && !glob_match("a\\*b", "axb"));
        assert!(
            !glob_match("a[bc", "ab"),
            "an unclosed class matches nothing"
        );
        assert!(glob_match("*", "") && glob_match("**x", "x"));
    }

    #[test]
    fn names_normalize_outside_classes() {
        assert_eq!(normalize_alias("crypto-crc32c"), "crypto_crc32c");
        assert_eq!(normalize_alias("usb:v[0-9]x-y"), "usb:v[0-9]x_y");
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
        assert_eq!(module_name("virtio_blk.ko.zst"), "virtio_blk");
    }

    #[test]
    fn lookup_order_module_alias_builtin() {
        let i = debian();
        assert_eq!(i.lookup("ext4"), Lookup::Module("ext4".into()));
        assert_eq!(i.lookup("ext3"), Lookup::Alias(vec!["ext4".into()]));
        assert_eq!(
            i.lookup("crypto-crc32c"),
            Lookup::Alias(vec!["crc32c_intel".into(), "crc32c_generic".into()])
        );
        assert_eq!(
            i.lookup("crypto_hash"),
            Lookup::Builtin("crypto_hash".into())
        );
        assert_eq!(
            i.lookup("acpi:LNXPWRBN:"),
            Lookup::Alias(vec!["button".into()])
        );
        assert_eq!(i.lookup("nosuch"), Lookup::NotFound);
    }

    #[test]
    fn ext4_brings_crc32c_before_jbd2_as_modprobe_does() {
        let plan = debian().plan(&list(&["ext4"]));
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        // jbd2 is listed last in ext4's line, so it loads first, after its
        // pre softdep crypto-crc32c (both of its modules).
        assert_eq!(
            names(&plan),
            [
                "crc32c_intel",
                "crc32c_generic",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4"
            ]
        );
        let crc = &plan.steps[1];
        assert!(!crc.required);
        assert_eq!(
            crc.reasons,
            [
                Reason::SoftDependencyOf("jbd2".into()),
                Reason::SoftDependencyOf("ext4".into())
            ]
        );
        assert!(plan.steps[2].required && plan.steps[5].required);
        assert_eq!(plan.steps[2].reasons, [Reason::DependencyOf("ext4".into())]);
    }

    #[test]
    fn the_administrators_list_each_module_once() {
        let plan = debian().plan(&list(&admin_list()));
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        assert_eq!(
            names(&plan),
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "virtio_blk",
                "crc32c_intel",
                "crc32c_generic",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4",
                "overlay",
                "evdev",
                "button",
            ]
        );
    }

    #[test]
    fn post_softdeps_follow_and_missing_ones_are_noted() {
        let i = ModuleIndex::parse(
            "a.ko: b.ko\nb.ko:\nc.ko:\nd.ko:\n",
            "softdep a pre: d post: c gone\nsoftdep a pre: never\nsoftdep d x\n",
            "",
            "",
        );
        let plan = i.plan(&list(&["a"]));
        assert_eq!(names(&plan), ["b", "d", "a", "c"]);
        assert_eq!(
            plan.problems,
            [Problem::SoftNotFound {
                name: "gone".into(),
                of: "a".into()
            }]
        );
        assert!(plan
            .steps
            .iter()
            .all(|s| s.required == (s.name == "a" || s.name == "b")));
    }

    #[test]
    fn builtins_count_as_loaded_and_unknown_names_are_problems() {
        let i = ModuleIndex::parse(
            "e.ko:\n",
            "softdep e pre: crypto-x\n",
            "alias crypto-x xmod\n",
            "kernel/x/xmod.ko\nkernel/y/ymod.ko\n",
        );
        let plan = i.plan(&list(&["ymod", "e", "nosuch"]));
        assert_eq!(names(&plan), ["e"]);
        assert_eq!(plan.builtin, ["ymod", "xmod"]);
        assert_eq!(
            plan.problems,
            [Problem::NotFound {
                name: "nosuch".into()
            }]
        );
    }

    #[test]
    fn softdep_loops_and_dependency_cycles_end() {
        let i = ModuleIndex::parse(
            "a.ko:\nb.ko:\nx_y.ko: c.ko\nc.ko: x_y.ko\n",
            "softdep a post: b\nsoftdep b post: a\n",
            "",
            "",
        );
        let plan = i.plan(&list(&["a"]));
        assert_eq!(names(&plan), ["a", "b"]);
        let plan = i.plan(&list(&["x-y"]));
        assert_eq!(
            plan.problems,
            [Problem::Cycle {
                chain: vec!["x_y".into(), "c".into(), "x_y".into()]
            }]
        );
        let plan = i.plan(&list(&["a", "nope.ko: broken"]));
        assert_eq!(plan.problems.len(), 1);
    }

    #[test]
    fn an_unlisted_dependency_is_a_problem() {
        let i = ModuleIndex::parse("a.ko: kernel/gone.ko\n", "", "", "");
        let plan = i.plan(&list(&["a"]));
        assert_eq!(names(&plan), ["a"]);
        assert_eq!(
            plan.problems,
            [Problem::Unlisted {
                path: "kernel/gone.ko".into(),
                of: "a".into()
            }]
        );
    }
}
