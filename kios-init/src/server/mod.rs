//! System socket server (to be written).
