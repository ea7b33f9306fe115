//! reaper (to be written).
