//! grace (to be written).
