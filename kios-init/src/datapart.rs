//! datapart (to be written).
