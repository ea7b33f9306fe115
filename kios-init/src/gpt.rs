//! gpt (to be written).
