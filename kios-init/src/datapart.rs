//! The data partition (stub; being written).

use crate::boot::DatapartStatus;
use crate::sys::Sys;
use std::path::PathBuf;
use std::time::Duration;

/// The `datapart=` boot parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatapartSpec {
    Auto,
    None,
    Device(PathBuf),
}

impl DatapartSpec {
    pub fn parse(v: &str) -> Result<DatapartSpec, String> {
        match v {
            "auto" | "" => Ok(DatapartSpec::Auto),
            "none" => Ok(DatapartSpec::None),
            p if p.starts_with("/dev/") && p.len() > 5 => {
                Ok(DatapartSpec::Device(PathBuf::from(p)))
            }
            other => Err(format!(
                "datapart={other:?}: expected auto, none or /dev/<device>"
            )),
        }
    }
}

pub fn setup(
    _sys: &dyn Sys,
    spec: &DatapartSpec,
    _timeout: Duration,
) -> (DatapartStatus, Vec<String>) {
    match spec {
        DatapartSpec::None => (DatapartStatus::Disabled, Vec::new()),
        other => (
            DatapartStatus::Missing {
                wanted: format!("{other:?}"),
                reason: "not implemented yet".into(),
            },
            Vec::new(),
        ),
    }
}
