//! ELF inspection for the image builder: the interpreter (PT_INTERP) and the
//! DT_NEEDED libraries of a dynamically linked program, and their closure
//! resolved in the build host's library directories.

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::Endianness;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// Library directories glibc's loader searches on Debian (x86-64).
pub const GLIBC_LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];
/// Library directories for musl programs on a Debian build host.
pub const MUSL_LIBRARY_DIRS: &[&str] = &["/usr/lib/x86_64-linux-musl", "/usr/lib/musl/lib"];

/// Errors of reading ELF files.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse ELF {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{needed} (needed by {by}) not found in {dirs}")]
    NotFound {
        needed: String,
        by: String,
        dirs: String,
    },
}

/// What the dynamic loader needs to start a program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// PT_INTERP, e.g. `/lib64/ld-linux-x86-64.so.2`; None for static programs.
    pub interpreter: Option<String>,
    /// DT_NEEDED names in file order.
    pub needed: Vec<String>,
}

/// True when `bytes` start with the ELF magic.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

/// Reads the interpreter and DT_NEEDED entries of a 64-bit ELF file. A file
/// that is not ELF yields an empty [`Dynamic`].
pub fn inspect(path: &Path) -> Result<Dynamic, ElfError> {
    use std::io::Read;
    let read_err = |source| ElfError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Most files of an image are not ELF: look at the magic before reading it all.
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    match file.read_exact(&mut magic) {
        Ok(()) if is_elf(&magic) => {}
        Ok(()) => return Ok(Dynamic::default()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Dynamic::default()),
        Err(e) => return Err(read_err(e)),
    }
    let data = std::fs::read(path).map_err(read_err)?;
    inspect_bytes(&data).map_err(|message| ElfError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

pub fn inspect_bytes(data: &[u8]) -> Result<Dynamic, String> {
    if !is_elf(data) {
        return Ok(Dynamic::default());
    }
    // 32-bit programs are not part of an x86-64 image.
    let file = ElfFile64::<Endianness>::parse(data).map_err(|e| e.to_string())?;
    let endian = file.endian();
    let header = file.elf_header();
    let mut out = Dynamic::default();
    for ph in header
        .program_headers(endian, data)
        .map_err(|e| e.to_string())?
    {
        if let Some(interp) = ph.interpreter(endian, data).map_err(|e| e.to_string())? {
            out.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let table = file
        .elf_section_table()
        .dynamic_table(endian, data)
        .map_err(|e| e.to_string())?;
    for d in table.iter() {
        if d.tag == object::elf::DT_NEEDED {
            let name = table.string(d).map_err(|e| e.to_string())?;
            out.needed.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(out)
}

/// One library of a closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    /// The DT_NEEDED name (e.g. `libseccomp.so.2`).
    pub name: String,
    /// Where it was found on the build host (symlinks resolved).
    pub host_path: PathBuf,
    /// Who needs it: program paths as given, or library names.
    pub needed_by: BTreeSet<String>,
}

/// The interpreter and library closure of a set of programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// Interpreter path -> host file (resolved) and the programs that name it.
    pub interpreters: BTreeMap<String, (PathBuf, BTreeSet<String>)>,
    /// By name.
    pub libraries: BTreeMap<String, Library>,
}

/// How to resolve libraries.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub glibc_dirs: Vec<PathBuf>,
    pub musl_dirs: Vec<PathBuf>,
    /// Library names provided otherwise (e.g. musl's libc.so from the spec):
    /// not resolved or added.
    pub provided: BTreeSet<String>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            glibc_dirs: GLIBC_LIBRARY_DIRS.iter().map(PathBuf::from).collect(),
            musl_dirs: MUSL_LIBRARY_DIRS.iter().map(PathBuf::from).collect(),
            provided: BTreeSet::new(),
        }
    }
}

impl Resolver {
    fn dirs_for(&self, interpreter: &str) -> &[PathBuf] {
        if interpreter.contains("ld-musl") {
            &self.musl_dirs
        } else {
            &self.glibc_dirs
        }
    }

    fn find(&self, name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
        dirs.iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::canonicalize(p).ok())
    }

    /// Resolves the closure of `programs` (label, host path). Unresolvable
    /// names are all reported together.
    pub fn closure(&self, programs: &[(String, PathBuf)]) -> Result<Closure, Vec<ElfError>> {
        let mut closure = Closure::default();
        let mut errors = Vec::new();
        // (who, host file, interpreter flavour)
        let mut queue: VecDeque<(String, PathBuf, String)> = VecDeque::new();
        for (label, path) in programs {
            let dynamic = match inspect(path) {
                Ok(d) => d,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let Some(interp) = dynamic.interpreter.clone() else {
                continue;
            };
            match std::fs::canonicalize(&interp) {
                Ok(host) => {
                    closure
                        .interpreters
                        .entry(interp.clone())
                        .or_insert_with(|| (host, BTreeSet::new()))
                        .1
                        .insert(label.clone());
                }
                Err(_) => errors.push(ElfError::NotFound {
                    needed: interp.clone(),
                    by: label.clone(),
                    dirs: "the build host".to_string(),
                }),
            }
            queue.push_back((label.clone(), path.clone(), interp));
        }
        let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
        while let Some((who, path, interp)) = queue.pop_front() {
            if !seen.insert(path.clone()) {
                continue;
            }
            let dynamic = match inspect(&path) {
                Ok(d) => d,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let dirs = self.dirs_for(&interp);
            for name in dynamic.needed {
                if self.provided.contains(&name) {
                    continue;
                }
                // libc.so.6 names the loader it belongs to: that is the interpreter.
                let interp_entry = closure
                    .interpreters
                    .iter_mut()
                    .find(|(p, _)| Path::new(p.as_str()).file_name() == Some(name.as_ref()));
                if let Some((_, (_, users))) = interp_entry {
                    users.insert(who.clone());
                    continue;
                }
                if let Some(lib) = closure.libraries.get_mut(&name) {
                    lib.needed_by.insert(who.clone());
                    continue;
                }
                match self.find(&name, dirs) {
                    Some(host_path) => {
                        queue.push_back((name.clone(), host_path.clone(), interp.clone()));
                        closure.libraries.insert(
                            name.clone(),
                            Library {
                                name,
                                host_path,
                                needed_by: BTreeSet::from([who.clone()]),
                            },
                        );
                    }
                    None => errors.push(ElfError::NotFound {
                        needed: name,
                        by: who.clone(),
                        dirs: dirs
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                }
            }
        }
        if errors.is_empty() {
            Ok(closure)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_elf_is_static() {
        assert_eq!(inspect_bytes(b"#!/bin/sh\n").unwrap(), Dynamic::default());
    }

    #[test]
    fn garbage_after_magic_is_an_error() {
        assert!(inspect_bytes(b"\x7fELF\x02\x01\x01garbage").is_err());
    }

    #[test]
    fn ls_has_glibc_interpreter_and_libc() {
        let d = inspect(Path::new("/bin/ls")).unwrap();
        assert_eq!(
            d.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert!(d.needed.iter().any(|n| n == "libc.so.6"), "{d:?}");
    }

    #[test]
    fn closure_of_ls_contains_libc_and_follows_libraries() {
        let c = Resolver::default()
            .closure(&[("/bin/ls".to_string(), PathBuf::from("/bin/ls"))])
            .unwrap();
        let libc = &c.libraries["libc.so.6"];
        assert!(libc.needed_by.contains("/bin/ls"));
        assert!(libc.host_path.is_file());
        // ls needs libselinux, which needs libpcre2-8: a transitive library.
        let pcre = c
            .libraries
            .get("libpcre2-8.so.0")
            .expect("transitive library");
        assert!(pcre.needed_by.contains("libselinux.so.1"), "{pcre:?}");
        assert!(c.interpreters.contains_key("/lib64/ld-linux-x86-64.so.2"));
    }

    #[test]
    fn unresolvable_library_names_the_program() {
        let r = Resolver {
            glibc_dirs: vec![PathBuf::from("/nonexistent")],
            ..Resolver::default()
        };
        let errs = r
            .closure(&[("/bin/ls".to_string(), PathBuf::from("/bin/ls"))])
            .unwrap_err();
        let text = errs[0].to_string();
        assert!(
            text.contains("needed by /bin/ls") && text.contains("/nonexistent"),
            "{text}"
        );
    }
}
