//! logcapture (to be written).
