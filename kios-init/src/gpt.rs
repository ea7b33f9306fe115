//! GPT partition table reading (stub; being written).
