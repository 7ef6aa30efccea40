"""Hardware-aware search: per-group channel counts under a latency budget, from measured tables."""
