"""Writing: the sharding policy, shard assignment, and the shard writer with one module per
output format (``AssignShards``, ``WriteShards``)."""
