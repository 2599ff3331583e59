"""suites/paper.yaml and suites/fashion-mnist.yaml: every profile validates; the smoke profiles run on the mirror."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from benchbench.cli import main
from benchbench.suite import validate_all_profiles
from conftest import SUITES, shared_data_dir

pytestmark = pytest.mark.usefixtures("one_thread")
needs_mirror = pytest.mark.skipif(shared_data_dir() is None, reason="needs the offline data mirror (BENCHBENCH_DATA or ../shared/data)")

DETECTORS = {"ar-2sd", "ar-1sd", "ar-one-sided", "ccg", "likelihood", "likelihood-ratio", "input-complexity",
             "typicality", "waic", "msp", "energy"}


@pytest.mark.parametrize("name", ["paper.yaml", "fashion-mnist.yaml"])
def test_every_profile_validates(name):
    assert set(validate_all_profiles(SUITES / name)) >= {"cpu", "full", "smoke"}


def _smoke(tmp_path, monkeypatch, name):
    monkeypatch.setenv("BENCHBENCH_DATA", str(shared_data_dir()))
    out = tmp_path / "lb"
    argv = ["run", str(SUITES / name), "--profile", "smoke", "--device", "cpu", "--no-progress",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    return out, pd.read_csv(out / "results.csv", keep_default_na=False), json.loads((out / "run.json").read_text())


@needs_mirror
def test_fashion_mnist_smoke_fills_the_whole_grid(tmp_path, monkeypatch):
    out, df, run = _smoke(tmp_path, monkeypatch, "fashion-mnist.yaml")
    assert not run["failures"], run["failures"]
    pct = df[df.metric == "pct_in"]
    assert set(pct.detector) == DETECTORS
    for det in DETECTORS:
        assert set(pct[pct.detector == det].eval_set) == {"fashion", "mnist", "gan", "noise", "black", "white"}, det
    assert set(pct[pct.detector == "ccg"].model) == {"classifier"} and set(pct[pct.detector == "waic"].model) == {"pixelcnn"}
    assert len(df[(df.metric == "accuracy") & (df.eval_set == "fashion")]) == 1
    assert "### Table 1" in (out / "README.md").read_text()


@needs_mirror
def test_paper_smoke_shows_svhn_unavailable_and_the_paper_beside_ours(tmp_path, monkeypatch):
    out, df, run = _smoke(tmp_path, monkeypatch, "paper.yaml")
    assert {f["where"] for f in run["failures"]} == {"model pixelcnn on svhn:test", "model classifier on svhn:test"}
    pct = df[(df.metric == "pct_in") & (df.study == "ood")]
    assert set(pct.eval_set) == {"cifar10", "gan", "noise", "black", "white"} and set(pct.detector) == DETECTORS
    readme = (out / "README.md").read_text()
    assert "| svhn " in readme and "unavailable" in readme and "DataUnavailable" in readme
    assert "/ 92.5 (" in readme and "/ 2.920 (" in readme  # the paper's CIFAR-10 test numbers beside ours
    assert "unavailable / 90.9" in readme and "unavailable / 2.100" in readme  # and its SVHN ones, though ours are missing
    assert set(df.study) == {"ood", "toy2d", "pixel_opt", "gan_bpd", "arcycle"}
    assert (out / "figures" / "arcycle_iterations.png").is_file()
    for study in ("toy2d", "pixel_opt", "gan_bpd", "arcycle"):
        assert (out / "figures" / f"{study}.png").is_file(), study
