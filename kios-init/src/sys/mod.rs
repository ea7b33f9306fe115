//! Syscall layer (to be written).
