"""Data: Places365 layout, the embedded sample, WebDataset shards, token arrays."""
