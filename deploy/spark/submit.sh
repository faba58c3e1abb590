#!/bin/sh
# coco-beam on Spark with Beam's SparkRunner: it starts Beam's Spark job server (from its jar,
# fetched once from Maven Central, or the one given with --spark_job_server_jar) and submits the
# portable pipeline to the Spark master. SDK workers run as pools beside the executors (the
# coco-beam worker image with --worker_pool, as in deploy/flink/), reached on localhost:50000.
# The job server can also run on its own, with --runner=PortableRunner --job_endpoint=HOST:8099:
#   docker run --net=host apache/beam_spark3_job_server:2.77.0 --spark-master-url=spark://MASTER:7077
set -eu
coco-beam build \
  --coco-root="${COCO_ROOT:?gs:// folder in COCO layout}" \
  --output="${OUTPUT:?gs:// output folder}" \
  --runner=SparkRunner \
  --spark_master_url="spark://${SPARK_MASTER:?host of the Spark master}:7077" \
  --environment_type=EXTERNAL \
  --environment_config="${WORKER_POOL:-localhost:50000}"
