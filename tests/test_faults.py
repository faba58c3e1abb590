"""The fault hook: a named fault fires once, in whichever process reaches it first."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coco_beam.transforms.runtime.faults import (
    FAULTS_DIR_ENV,
    FAULTS_ENV,
    InjectedFault,
    maybe_fail,
)


@pytest.fixture()
def faults(monkeypatch, tmp_path):
    def set_faults(value: str) -> None:
        monkeypatch.setenv(FAULTS_ENV, value)
        monkeypatch.setenv(FAULTS_DIR_ENV, str(tmp_path / "fired"))

    return set_faults


def test_nothing_fires_without_the_variable(monkeypatch):
    monkeypatch.delenv(FAULTS_ENV, raising=False)
    maybe_fail("write", "train2017-00000")


def test_a_named_fault_fires_once_and_the_retry_passes(faults):
    faults("write:train2017-00000, publish:rename")
    maybe_fail("write", "train2017-00001")  # not named
    maybe_fail("publish", "train2017-00000")  # the key of another point
    with pytest.raises(InjectedFault, match="write:train2017-00000"):
        maybe_fail("write", "train2017-00000")
    maybe_fail("write", "train2017-00000")  # the retry
    with pytest.raises(InjectedFault, match="publish:rename"):
        maybe_fail("publish", "rename")
    maybe_fail("publish", "rename")


def test_a_fault_fired_in_another_process_does_not_fire_again(faults):
    faults("write:val2017-00003")
    code = (
        "from coco_beam.transforms.runtime.faults import InjectedFault, maybe_fail\n"
        "try:\n"
        "    maybe_fail('write', 'val2017-00003')\n"
        "except InjectedFault:\n"
        "    raise SystemExit(3)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 3
    maybe_fail("write", "val2017-00003")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_named_fault_needs_a_folder_to_remember_it(monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, "write:a-00000")
    monkeypatch.delenv(FAULTS_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match=FAULTS_DIR_ENV):
        maybe_fail("write", "a-00000")
