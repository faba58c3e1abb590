"""Airflow DAG: rebuild the shards every night with Beam's Airflow operator, on Dataflow.

Each run writes OUTPUT/runs/<id>/ and moves OUTPUT/LATEST only when it is complete, so a
failed or killed night leaves the previous build where readers look. Needs
``apache-airflow-providers-apache-beam`` and ``-google`` (the operator builds its Dataflow
configuration with it, whatever the runner); credentials are the Airflow connection's
(Application Default Credentials), never a pipeline option.

The task runs ``deploy/dataflow/launch.py`` (this folder's sibling: deploy/ is shipped with the
DAG) with ``COCO_BEAM_PYTHON``, an interpreter where coco-beam is installed (default
``python3``). What it builds and where are the DAG's params, which a run's configuration may
override: ``airflow dags test coco_beam_nightly -c '{"build": {...}, "runner": "PrismRunner",
"runner_options": {...}}'`` (tests/test_deploy.py runs it so, on a small dataset).
"""

from __future__ import annotations

import datetime
import os

from airflow import DAG
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import Param

LAUNCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "dataflow")
LAUNCH = os.path.normpath(os.path.join(LAUNCH, "launch.py"))

# What every night builds: options of ``coco-beam build``.
BUILD = {
    "coco_root": "gs://DATA/coco",
    "output": "gs://DATA/coco-shards",
    "formats": "parquet,tfrecord",
    # Storage stays bounded: only the newest three runs are kept.
    "keep_runs": 3,
}
# Where it runs: Dataflow, workers from the coco-beam image, a least-privilege service account.
DATAFLOW = {
    "sdk_container_image": "REGISTRY/coco-beam:VERSION",
    "service_account_email": "coco-beam-worker@PROJECT.iam.gserviceaccount.com",
    "no_use_public_ips": True,
    "temp_location": "gs://PRIVATE/temp",
    "staging_location": "gs://PRIVATE/staging",
}

with DAG(
    dag_id="coco_beam_nightly",
    schedule="0 3 * * *",
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "build": Param(BUILD, type="object"),
        "runner": Param("DataflowRunner", type="string"),
        "runner_options": Param(DATAFLOW, type="object"),
    },
    # The pipeline options below render to a dict, not to its text.
    render_template_as_native_obj=True,
) as dag:
    BeamRunPythonPipelineOperator(
        task_id="build",
        runner="{{ params.runner }}",
        py_file=LAUNCH,
        py_interpreter=os.environ.get("COCO_BEAM_PYTHON", "python3"),
        pipeline_options="{{ dict(params.build, **params.runner_options) }}",
        dataflow_config={
            "job_name": "coco-beam-nightly",
            "project_id": "PROJECT",
            "location": "REGION",
        },
    )
