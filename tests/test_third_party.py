"""A detector plugin in a separately installed package is found through its entry point and used by a suite."""
import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from conftest import SUITES

PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "bb-median-detector"
version = "0.3.1"

[project.entry-points.benchbench]
median = "bb_median_detector"
"""

MODULE = '''
"""A third-party detector: distance of bits/dim from the fit split's median, in MADs."""
import numpy as np
from benchbench import Detector, hookimpl


class MedianBPD(Detector):
    requires = ("bpd",)

    def __init__(self, k: float = 3.0):
        self.k = k

    def fit(self, scores):
        bpd = np.asarray(scores["bpd"], dtype=float)
        self.median_ = float(np.median(bpd))
        self.mad_ = float(np.median(np.abs(bpd - self.median_))) or 1e-12
        self.offset_ = -self.k
        return self

    def score_samples(self, scores):
        self._check_fitted()
        return -np.abs(np.asarray(scores["bpd"], dtype=float) - self.median_) / self.mad_


@hookimpl
def register_detectors():
    return {"median-bpd": MedianBPD}
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    src = tmp_path_factory.mktemp("pkg")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "bb_median_detector.py").write_text(MODULE)
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(src)], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]), TQDM_DISABLE="1")
    return target, env


def bb(env, *args):
    return subprocess.run([sys.executable, "-m", "benchbench", *args], env=env, capture_output=True, text=True)


def test_listed_by_benchbench_plugins_with_its_package(installed):
    _, env = installed
    out = bb(env, "plugins")
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if " median-bpd " in l)
    assert "bb-median-detector" in line and "0.3.1" in line
    off = bb(dict(env, BENCHBENCH_DISABLE_PLUGIN_AUTOLOAD="1"), "plugins")
    assert " median-bpd " not in off.stdout and " ar-2sd " in off.stdout


def test_passes_check_detector_and_runs_in_a_suite(installed, tmp_path):
    target, env = installed
    code = "from benchbench.testing import check_detector; import bb_median_detector as m; check_detector(m.MedianBPD)"
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
    out = tmp_path / "lb"
    res = bb(env, "run", str(SUITES / "quickstart.yaml"), "--profile", "smoke", "--device", "cpu", "--no-progress",
             "--out", str(out), "--set", "studies.ood.detectors=[ar-2sd, median-bpd]",
             "--cache-dir", str(tmp_path / "cache"))
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(out / "results.csv")
    assert len(df[(df.detector == "median-bpd") & (df.metric == "auroc")]) == 4
    comp = json.loads((out / "run.json").read_text())["components"]["detectors"]["median-bpd"]
    assert comp["package"] == "bb-median-detector" and comp["version"] == "0.3.1"
