"""Features -> task shards: task definition (property x chemistry group), leakage-free splits, storage."""
