"""Runs: publishing a run (``PublishRun``), the state incremental rebuilds reuse, and the
Iceberg lake table."""
