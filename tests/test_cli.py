"""The command line as a user runs it: default runner (in process), summary."""

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pyarrow.parquet as pq

from helpers import run_build, shard_files


def _coco_beam(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "coco_beam.pipelines.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def test_default_runner_is_in_process_unless_told():
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    from coco_beam.pipelines import build

    for argv, expected in [
        ([], (1, "in_memory")),
        (["--direct_num_workers=2"], (2, "multi_processing")),
        (["--direct_running_mode=multi_processing"], (1, "multi_processing")),
    ]:
        options = PipelineOptions(argv)
        assert isinstance(build.default_runner(options, argv), FnApiRunner)
        direct = options.view_as(DirectOptions)
        assert (direct.direct_num_workers, direct.direct_running_mode) == expected, argv
    # A rebuild's work is rewriting shards in Python: one worker process per core.
    options = PipelineOptions([])
    build.default_runner(options, [], rebuilding=True)
    direct = options.view_as(DirectOptions)
    cores = os.cpu_count() or 1
    expected = (cores, "multi_processing" if cores > 1 else "in_memory")
    assert (direct.direct_num_workers, direct.direct_running_mode) == expected


def test_synth_then_build_in_worker_processes(tmp_path):
    root, out = tmp_path / "coco", tmp_path / "out"
    synth = _coco_beam("synth", "--output", str(root), "--images", "40", "--seed", "3")
    assert synth.returncode == 0, synth.stderr
    assert sorted(os.listdir(root / "annotations")) == [
        "captions_train2017.json",
        "captions_val2017.json",
        "image_info_test2017.json",
        "instances_train2017.json",
        "instances_val2017.json",
        "panoptic_train2017",
        "panoptic_train2017.json",
        "panoptic_val2017",
        "panoptic_val2017.json",
        "person_keypoints_train2017.json",
        "person_keypoints_val2017.json",
    ]
    built = _coco_beam(
        "build",
        "--coco-root",
        str(root),
        "--output",
        str(out),
        "--num-shards=2",
        "--direct_num_workers=2",
    )
    assert built.returncode == 0, built.stderr
    assert re.search(r"images\s+40 written of 40\n", built.stdout), built.stdout
    assert re.search(r"shards\s+6 \(", built.stdout), built.stdout
    run_id = (out / "LATEST").read_text().strip()
    multi = shard_files(str(out / "runs" / run_id))
    # The same build on the in-process runner writes the same bytes.
    run_dir, _ = run_build(
        f"--coco-root={root}", f"--output={tmp_path / 'single'}", "--num-shards=2"
    )
    single = shard_files(run_dir)
    assert [os.path.basename(p) for p in multi] == [os.path.basename(p) for p in single]
    for a, b in zip(multi, single, strict=True):
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert hashlib.sha256(fa.read()).digest() == hashlib.sha256(fb.read()).digest()
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in multi) == 40
    # Statistics too, every file; manifests differ only in the run's identity and times.
    multi_dir = out / "runs" / run_id
    single_dir = pathlib.Path(run_dir)
    names = sorted(os.listdir(multi_dir / "stats"))
    assert names == sorted(os.listdir(single_dir / "stats")) and "report.html" in names
    for name in names:
        assert (multi_dir / "stats" / name).read_bytes() == (
            single_dir / "stats" / name
        ).read_bytes(), name
    manifests = []
    for folder in (multi_dir, single_dir):
        manifest = json.loads((folder / "manifest.json").read_text())
        for key in ("run_id", "started", "finished"):
            manifest.pop(key)
        manifests.append(manifest)
    assert manifests[0] == manifests[1]


def test_errors_are_one_clear_line(tmp_path):
    result = _coco_beam("build", "--coco-root", str(tmp_path), "--output", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "error: no COCO annotation files matched" in result.stderr
    assert "Traceback" not in result.stderr
    assert _coco_beam("frobnicate").returncode == 2


def test_the_multi_threaded_local_runner_is_refused_before_anything_runs(tmp_path):
    result = _coco_beam(
        "build",
        "--coco-root",
        str(tmp_path),
        "--output",
        str(tmp_path / "o"),
        "--direct_num_workers=2",
        "--direct_running_mode=multi_threading",
    )
    assert result.returncode == 2
    assert "error: --direct_running_mode=multi_threading is not supported" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


def test_progress_bar_on_a_terminal(synth_root, tmp_path):
    """On a terminal, the bar counts images done out of images known and ends at the total."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coco_beam.pipelines.cli",
            "build",
            "--coco-root",
            synth_root,
            "--output",
            str(tmp_path / "out"),
            "--direct_num_workers=1",
        ],
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the other side closed
            break
        if not data:
            break
        chunks.append(data.decode(errors="replace"))
    proc.wait(timeout=600)
    os.close(leader)
    screen = "".join(chunks)
    assert proc.returncode == 0, screen
    assert re.search(r"images: 100%\S* 60/60", screen), screen


def test_build_help_lists_the_options():
    result = _coco_beam("build", "--help")
    assert result.returncode == 0
    for flag in (
        "--coco-root",
        "--annotations",
        "--images",
        "--output",
        "--num-shards",
        "--max-rejected-fraction",
        "Beam pipeline option",
    ):
        assert flag in result.stdout


def test_a_failed_run_ends_in_one_clear_line_and_publishes_nothing(synth_root, tmp_path):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(synth_root, root)
    for name in sorted(os.listdir(root / "train2017"))[:10]:
        os.unlink(root / "train2017" / name)
    out = tmp_path / "out"
    result = _coco_beam("build", "--coco-root", str(root), "--output", str(out))
    assert result.returncode == 1, result.stderr
    # Worker processes may print their own traceback first; the last line is the verdict.
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"coco-beam build: error: 10 of 60 image records were rejected, more than "
        r"--max-rejected-fraction=0.05; commonest reasons: image_missing \(10\)\. "
        r"Rejected records: .*/rejected/rejected.jsonl",
        last,
    ), result.stderr
    assert not (out / "LATEST").exists()
    [run_dir] = os.listdir(out / "runs")
    assert not os.path.exists(out / "runs" / run_dir / "manifest.json")


def test_a_rebuild_with_the_default_runner_reuses_and_equals_the_first_build(tmp_path):
    """The second build into the same output runs in worker processes (a rebuild); with
    nothing changed it reuses every shard and publishes the same bytes."""
    root, out = tmp_path / "coco", tmp_path / "out"
    assert (
        _coco_beam("synth", "--output", str(root), "--images", "30", "--seed", "5").returncode == 0
    )
    runs = []
    for _ in range(2):
        built = _coco_beam("build", "--coco-root", str(root), "--output", str(out))
        assert built.returncode == 0, built.stderr
        run_dir = out / "runs" / (out / "LATEST").read_text().strip()
        runs.append((run_dir, json.loads((run_dir / "manifest.json").read_text())))
    (first_dir, _), (second_dir, manifest) = runs
    assert first_dir != second_dir
    assert manifest["changes"]["incremental"] is True
    assert manifest["changes"]["shards_reused"] == len(shard_files(str(first_dir))) > 0
    for a, b in zip(shard_files(str(first_dir)), shard_files(str(second_dir)), strict=True):
        assert pathlib.Path(a).read_bytes() == pathlib.Path(b).read_bytes()
