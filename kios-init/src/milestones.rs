//! milestones (to be written).
