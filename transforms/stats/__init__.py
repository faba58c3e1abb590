"""Statistics: per-shard accumulators merged into the dataset's figures, their tables, the
comparison of two runs and the HTML report (``GatherStatistics``)."""
