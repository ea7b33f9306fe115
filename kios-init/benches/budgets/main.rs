//! The budgets of kiOS, measured on this machine and printed as one table:
//! each figure's min, median and max next to its budget, pass or fail.
//!
//! ```sh
//! cargo bench -p kios-init --bench budgets                       # kios-init alone
//! cargo bench -p kios-init --bench budgets -- --reference PATH   # side by side
//! ```
//!
//! `--reference PATH` runs another init (the original C init, tini) through
//! the same harness in the same run, for the figures it supports, and
//! prints the ratio. `--only GROUP[,GROUP]` limits the run to some sections
//! (sandbox, vm, hashing, kiosctl); `--runs N` sets the repetitions.
//!
//! Needs root (namespace sandboxes), the musl target and qemu (the VM
//! figures). Not a timed test: it reports and judges only what it prints;
//! its exit status is 0 when it could measure, whatever the verdicts.

mod hashing;
mod kiosctl;
mod load;
mod reaping;
mod sandbox;
mod vm;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kios_e2e::figure::{render, Figure};

/// What the command line asked for.
#[derive(Debug, Default)]
pub struct Opts {
    /// Another init to run through the same harness.
    pub reference: Option<PathBuf>,
    /// The sections to run (all when empty).
    pub only: Vec<String>,
    /// Repetitions per figure (each section has its default).
    pub runs: Option<usize>,
}

impl Opts {
    fn parse(args: impl Iterator<Item = String>) -> Result<Opts> {
        let mut opts = Opts::default();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                // What cargo passes to every bench target.
                "--bench" => {}
                "--reference" => {
                    let path = args.next().context("--reference needs a PATH")?;
                    let path = PathBuf::from(path);
                    let path = std::fs::canonicalize(&path)
                        .with_context(|| format!("no reference init at {}", path.display()))?;
                    opts.reference = Some(path);
                }
                "--only" => {
                    let groups = args.next().context("--only needs GROUP[,GROUP]")?;
                    for g in groups.split(',') {
                        if !SECTIONS.contains(&g) {
                            bail!("unknown section {g:?}; the sections are {SECTIONS:?}");
                        }
                        opts.only.push(g.to_string());
                    }
                }
                "--runs" => {
                    let n = args.next().context("--runs needs N")?;
                    let n: usize = n.parse().with_context(|| format!("--runs {n:?}: not a count"))?;
                    if n == 0 {
                        bail!("--runs must be at least 1");
                    }
                    opts.runs = Some(n);
                }
                other => bail!(
                    "unknown argument {other:?}; usage: budgets [--reference PATH] [--only GROUP[,GROUP]] [--runs N]"
                ),
            }
        }
        Ok(opts)
    }

    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

const SECTIONS: [&str; 4] = ["sandbox", "vm", "hashing", "kiosctl"];

type Section = fn(&Opts) -> Result<Vec<Figure>>;

fn main() -> Result<()> {
    // The reaping figure runs this binary in the sandbox's PID namespace.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--fork-zombies") {
        let n = args
            .get(2)
            .and_then(|n| n.parse().ok())
            .context("--fork-zombies needs N")?;
        return reaping::fork_zombies(n);
    }
    let opts = Opts::parse(std::env::args().skip(1))?;
    let sections: [(&str, Section); 4] = [
        ("sandbox", sandbox::figures),
        ("vm", vm::figures),
        ("hashing", hashing::figures),
        ("kiosctl", kiosctl::figures),
    ];
    let mut figures = Vec::new();
    for (name, measure) in sections {
        if opts.wants(name) {
            eprintln!("budgets: measuring {name}");
            figures.extend(measure(&opts).with_context(|| format!("the {name} figures"))?);
        }
    }
    let reference = opts.reference.as_ref().map(|p| p.display().to_string());
    println!(
        "kiOS budgets on this machine ({} cores, load {})",
        cores(),
        load()
    );
    print!("{}", render(&figures, reference.as_deref()));
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}
