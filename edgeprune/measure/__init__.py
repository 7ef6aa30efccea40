"""The measurement protocol (latency, memory, size, parity). Imports without torch."""
