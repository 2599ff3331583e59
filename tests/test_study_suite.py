"""suites/studies.yaml (the paper's toy, pixel-optimisation and GAN-training studies): valid; smoke run on the mirror."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from benchbench.cli import main
from benchbench.suite import validate_all_profiles
from conftest import SUITES, shared_data_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def test_studies_suite_validates_every_profile():
    assert set(validate_all_profiles(SUITES / "studies.yaml")) >= {"cpu", "smoke"}


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the offline data mirror (BENCHBENCH_DATA or ../shared/data)")
def test_studies_suite_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHBENCH_DATA", str(shared_data_dir()))
    out = tmp_path / "lb"
    argv = ["run", str(SUITES / "studies.yaml"), "--profile", "smoke", "--device", "cpu", "--no-progress",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert not run["failures"], run["failures"]
    df = pd.read_csv(out / "results.csv")
    assert set(df.study) == {"toy2d", "pixel_opt", "gan_bpd"}
    for study in ("toy2d", "pixel_opt", "gan_bpd"):
        assert (out / "figures" / f"{study}.png").is_file(), study
