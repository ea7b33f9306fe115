//! netsetup (to be written).
