#!/bin/sh
# coco-beam on Apache Flink with Beam's FlinkRunner: Beam starts its Flink job server from the
# jar deploy/fetch-engines.sh fetched (never a download at run time) and submits the portable
# pipeline to FLINK_MASTER. tests/test_engines.py runs this very script.
#
#   COCO_ROOT=... OUTPUT=... deploy/flink/submit.sh [more coco-beam build options]
#
# FLINK_MASTER   [local] (default: an embedded Flink in the job server's JVM) or HOST:8081, the
#                REST endpoint of a session cluster (deploy/flink/flink-deployment.yaml)
# PARALLELISM    2
# WORKER_POOL    unset: SDK workers run in this process (LOOPBACK; local Flink only); or
#                HOST:PORT of Beam SDK worker pools beside the TaskManagers (EXTERNAL)
# FLINK_CONF_DIR deploy/flink/conf: a fixed-delay restart strategy, so a failed attempt is retried
# FLINK_JOB_SERVER_JAR  default: fetched by deploy/fetch-engines.sh flink
# COCO_BEAM      the command to run (default: coco-beam)
# Java 17 needs the two --add-opens for the job server's closure serialization.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
jar=${FLINK_JOB_SERVER_JAR:-$("$here/../fetch-engines.sh" flink)}
if [ -n "${WORKER_POOL:-}" ]; then
  set -- "$@" --environment_type=EXTERNAL --environment_config="$WORKER_POOL"
else
  set -- "$@" --environment_type=LOOPBACK
fi
# shellcheck disable=SC2086  # COCO_BEAM may be a command with arguments
exec ${COCO_BEAM:-coco-beam} build \
  --coco-root="${COCO_ROOT:?folder in COCO layout}" \
  --output="${OUTPUT:?output folder}" \
  --runner=FlinkRunner \
  --flink_job_server_jar="$jar" \
  --flink_version=1.19 \
  --flink_master="${FLINK_MASTER:-[local]}" \
  --parallelism="${PARALLELISM:-2}" \
  --flink_conf_dir="${FLINK_CONF_DIR:-$here/conf}" \
  --job_server_jvm_property=--add-opens=java.base/java.util=ALL-UNNAMED \
  --job_server_jvm_property=--add-opens=java.base/java.lang=ALL-UNNAMED \
  "$@"
