"""EntryGuard benchmarks: scripts, not tests (see bench/README.md)."""
