//! Early kernel modules (stub; being written).

use crate::sys::Sys;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModulesReport {
    pub loaded: Vec<String>,
    pub errors: Vec<String>,
}

pub fn load_early_modules(_sys: &dyn Sys) -> ModulesReport {
    ModulesReport::default()
}
