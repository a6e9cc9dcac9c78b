"""Aggregation strategies: pure numpy over named float32 arrays."""
