//! argv (to be written).
