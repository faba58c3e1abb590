"""Statistics: one accumulator class per statistic family (``families``), one of each per
shard (``accumulators``), merged per split in one fused CombineFn (``gather``:
``GatherStatistics``) into the dataset's figures (``summary``); their tables (``tables``), the
comparison of two runs (``compare``) and the HTML report (``report``, drawing ``figures`` with
``plotting``)."""
