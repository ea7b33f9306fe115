//! PLACEHOLDER: the vm figures; being written (issue 12).

use anyhow::Result;
use kios_e2e::figure::Figure;

use crate::Opts;

pub fn figures(_opts: &Opts) -> Result<Vec<Figure>> {
    Ok(Vec::new())
}
