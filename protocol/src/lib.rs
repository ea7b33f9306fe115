//! The kiOS system socket protocol (version 1): pure data shared by kios-init and kiosctl.
