"""Speed benchmarks and the tools they need (not timed tests: scripts that print figures beside targets)."""
