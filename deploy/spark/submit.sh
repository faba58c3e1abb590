#!/bin/sh
# coco-beam on Apache Spark with Beam's SparkRunner: Beam starts its Spark 3 job server from the
# jar deploy/fetch-engines.sh fetched (never a download at run time) and submits the portable
# pipeline to SPARK_MASTER_URL. tests/test_engines.py runs this very script.
#
#   COCO_ROOT=... OUTPUT=... deploy/spark/submit.sh [more coco-beam build options]
#
# SPARK_MASTER_URL  local[2] (default: Spark inside the job server's JVM, 2 threads; local[2,4]
#                   also retries a failed task up to 4 times) or spark://HOST:7077
# WORKER_POOL       unset: SDK workers run in this process (LOOPBACK; local Spark only); or
#                   HOST:PORT of Beam SDK worker pools beside the executors (EXTERNAL; the
#                   coco-beam worker image with --worker_pool, as in deploy/flink/)
# SPARK_JOB_SERVER_JAR  default: fetched by deploy/fetch-engines.sh spark
# COCO_BEAM         the command to run (default: coco-beam)
# The job server can also run on its own, with --runner=PortableRunner --job_endpoint=HOST:8099.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
jar=${SPARK_JOB_SERVER_JAR:-$("$here/../fetch-engines.sh" spark)}
if [ -n "${WORKER_POOL:-}" ]; then
  set -- "$@" --environment_type=EXTERNAL --environment_config="$WORKER_POOL"
else
  set -- "$@" --environment_type=LOOPBACK
fi
# shellcheck disable=SC2086  # COCO_BEAM may be a command with arguments
exec ${COCO_BEAM:-coco-beam} build \
  --coco-root="${COCO_ROOT:?folder in COCO layout}" \
  --output="${OUTPUT:?output folder}" \
  --runner=SparkRunner \
  --spark_job_server_jar="$jar" \
  --spark_master_url="${SPARK_MASTER_URL:-local[2]}" \
  "$@"
