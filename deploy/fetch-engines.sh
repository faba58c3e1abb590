#!/usr/bin/env bash
# Fetches, once, what coco-beam needs to run on Flink, Spark and Prism on one machine, into a
# cache; prints the path of each thing asked for, one a line, in the order asked.
#
#   deploy/fetch-engines.sh [flink] [spark] [prism]      (default: all three)
#
#   flink  Beam's Flink job server:  $CACHE/jars/flink-1.19-<beam>/beam-flink-job-server.jar
#   spark  Beam's Spark 3 job server: $CACHE/jars/spark-3-<beam>/beam-spark-job-server.jar
#   prism  Beam's Prism runner (Go):  $CACHE/bin/prism
#
# Beam's Python SDK would download a job server jar from Maven Central at run time when none is
# given; deploy/flink/submit.sh and deploy/spark/submit.sh always give the one fetched here.
#
# Why the job servers are assembled: Maven Central (as reachable from where the tests run)
# serves no shaded beam-runners-flink-*-job-server or beam-runners-spark-3-job-server jar at any
# version, and no Beam Java artifact at 2.77.0, the pinned Python SDK's version. So each job
# server is put together from Beam's runner library at BEAM_JAVA_VERSION (2.62.0: the newest
# release whose Flink and Spark runner libraries and java-job-service are all served) and its
# dependency tree (mvn dependency:copy-dependencies), plus a launcher jar holding only a manifest
# (Main-Class, and a Class-Path of the libraries beside it), which runs as ``java -jar``. A
# 2.62.0 job server with the 2.77.0 Python SDK is a version mix that Beam does not promise to
# support; tests/test_engines.py checks its output byte for byte against the DirectRunner's.
#
# Prism is built with ``go install`` from Beam's Go module at the pinned Beam version.
#
# Idempotent: a finished fetch leaves a .complete marker (prism: prism.version); a second call
# only prints the paths. A fetch interrupted half-way is started over.
#
# Environment: COCO_BEAM_CACHE (default ~/.cache/coco-beam), BEAM_JAVA_VERSION (2.62.0),
# FLINK_MINOR (1.19), FLINK_PATCH (1.19.0), SPARK_VERSION (3.5.1), PRISM_VERSION (v2.77.0).
set -euo pipefail
CACHE=${COCO_BEAM_CACHE:-$HOME/.cache/coco-beam}
BEAM_JAVA_VERSION=${BEAM_JAVA_VERSION:-2.62.0}
FLINK_MINOR=${FLINK_MINOR:-1.19}
FLINK_PATCH=${FLINK_PATCH:-1.19.0}
SPARK_VERSION=${SPARK_VERSION:-3.5.1}
PRISM_VERSION=${PRISM_VERSION:-v2.77.0}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(flink spark prism)

dep() { echo "<dependency><groupId>$1</groupId><artifactId>$2</artifactId><version>$3</version></dependency>"; }

# assemble NAME MAIN_CLASS DEPENDENCIES_XML: the libraries into $CACHE/jars/NAME/lib, and a
# launcher jar beside them.
assemble() {
  local name=$1 main=$2 deps=$3
  local dir=$CACHE/jars/$name launcher=$CACHE/jars/$name/$4
  if [ -f "$launcher" ] && [ -f "$dir/.complete" ]; then
    echo "$launcher"
    return
  fi
  mkdir -p "$dir"
  rm -rf "$dir/lib" "$dir/.complete"
  cat >"$dir/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>local.coco-beam</groupId><artifactId>$name</artifactId><version>1</version>
<packaging>pom</packaging><dependencies>$deps</dependencies></project>
POM
  mvn -B -q -f "$dir/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$dir/lib" -DincludeScope=runtime >&2
  python3 - "$launcher" "$main" "$dir/lib" <<'PY' >&2
import os
import sys
import zipfile

out, main, libdir = sys.argv[1:4]


def line(text):  # manifest lines hold at most 72 bytes; a continuation starts with a space
    data = text.encode()
    parts = [data[:72]]
    data = data[72:]
    while data:
        parts.append(b" " + data[:71])
        data = data[71:]
    return b"\r\n".join(parts) + b"\r\n"


jars = sorted(j for j in os.listdir(libdir) if j.endswith(".jar"))
classpath = " ".join("lib/" + j for j in jars)
manifest = (
    line("Manifest-Version: 1.0") + line("Main-Class: " + main)
    + line("Class-Path: " + classpath) + b"\r\n"
)
with zipfile.ZipFile(out + ".tmp", "w") as z:
    z.writestr("META-INF/MANIFEST.MF", manifest)
os.replace(out + ".tmp", out)
print(f"{out}: {len(jars)} libraries")
PY
  touch "$dir/.complete"
  echo "$launcher"
}

for target in "${targets[@]}"; do
  case $target in
  flink)
    assemble "flink-$FLINK_MINOR-$BEAM_JAVA_VERSION" \
      org.apache.beam.runners.flink.FlinkJobServerDriver \
      "$(dep org.apache.beam "beam-runners-flink-$FLINK_MINOR" "$BEAM_JAVA_VERSION")
       $(dep org.apache.flink flink-clients "$FLINK_PATCH")
       $(dep org.slf4j slf4j-api 1.7.36) $(dep org.slf4j slf4j-simple 1.7.36)" \
      beam-flink-job-server.jar
    ;;
  spark)
    assemble "spark-3-$BEAM_JAVA_VERSION" org.apache.beam.runners.spark.SparkJobServerDriver \
      "$(dep org.apache.beam beam-runners-spark-3 "$BEAM_JAVA_VERSION")
       $(dep org.apache.spark spark-core_2.12 "$SPARK_VERSION")
       $(dep org.apache.spark spark-streaming_2.12 "$SPARK_VERSION")" \
      beam-spark-job-server.jar
    ;;
  prism)
    bin=$CACHE/bin/prism
    if [ ! -x "$bin" ] || [ "$(cat "$CACHE/bin/prism.version" 2>/dev/null)" != "$PRISM_VERSION" ]; then
      mkdir -p "$CACHE/bin"
      rm -f "$CACHE/bin/prism.version"
      GOBIN=$CACHE/bin GOFLAGS=-mod=mod go install \
        "github.com/apache/beam/sdks/v2/go/cmd/prism@$PRISM_VERSION" >&2
      echo "$PRISM_VERSION" >"$CACHE/bin/prism.version"
    fi
    echo "$bin"
    ;;
  *)
    echo "fetch-engines.sh: unknown engine $target (flink, spark or prism)" >&2
    exit 2
    ;;
  esac
done
