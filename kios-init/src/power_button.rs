//! power_button (to be written).
