#!/bin/sh
# coco-beam on Spark, through Beam's Spark job server (the portable path). Start the job server
# next to the Spark master, with SDK worker pools beside the executors (the coco-beam worker
# image with --worker_pool, as in deploy/flink/), then submit the build:
#
#   docker run --net=host apache/beam_spark3_job_server:2.77.0 \
#       --spark-master-url=spark://SPARK_MASTER:7077
#
set -eu
coco-beam build \
  --coco-root="${COCO_ROOT:?gs:// folder in COCO's layout}" \
  --output="${OUTPUT:?gs:// output folder}" \
  --runner=PortableRunner \
  --job_endpoint="${JOB_ENDPOINT:-localhost:8099}" \
  --environment_type=EXTERNAL \
  --environment_config="${WORKER_POOL:-localhost:50000}"
# Beam's SparkRunner can also start the job server itself from its jar:
#   coco-beam build ... --runner=SparkRunner --spark_master_url=spark://SPARK_MASTER:7077
