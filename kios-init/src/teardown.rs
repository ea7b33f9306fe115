//! teardown (to be written).
