//! The end of the node (stub; being written): unmount everything, children
//! before parents, and sync.

use crate::sys::Sys;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnmountReport {
    pub unmounted: usize,
    pub remounted_ro: Vec<String>,
    pub failed: Vec<(String, String)>,
}

pub fn unmount_all(_sys: &dyn Sys) -> UnmountReport {
    UnmountReport::default()
}

pub fn sync_all() {
    crate::sys::sync();
}
