//! kmsg (to be written).
