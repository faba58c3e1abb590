"""Airflow DAG: rebuild the shards every night with Beam's Airflow operator, on Dataflow.

Each run writes OUTPUT/runs/<id>/ and moves OUTPUT/LATEST only when it is complete, so a
failed or killed night leaves the previous build where readers look. Needs
``apache-airflow-providers-apache-beam`` and ``-google``; credentials are the Airflow
connection's (Application Default Credentials), never a pipeline option.
"""

from __future__ import annotations

import datetime

from airflow import DAG
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowConfiguration

with DAG(
    dag_id="coco_beam_nightly",
    schedule="0 3 * * *",
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
) as dag:
    BeamRunPythonPipelineOperator(
        task_id="build",
        runner="DataflowRunner",
        py_file="deploy/dataflow/launch.py",
        py_requirements=["coco-beam"],
        pipeline_options={
            "coco_root": "gs://DATA/coco",
            "output": "gs://DATA/coco-shards",
            "formats": "parquet,tfrecord",
            "sdk_container_image": "REGISTRY/coco-beam:VERSION",
            "service_account_email": "coco-beam-worker@PROJECT.iam.gserviceaccount.com",
            "no_use_public_ips": True,
            "temp_location": "gs://PRIVATE/temp",
            "staging_location": "gs://PRIVATE/staging",
        },
        dataflow_config=DataflowConfiguration(
            job_name="coco-beam-nightly", project_id="PROJECT", location="REGION"
        ),
    )
