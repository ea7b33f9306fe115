//! mounts (to be written).
