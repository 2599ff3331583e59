"""Pixel optimisation study (plugins/study_pixel_opt.py, paper §3.1): the optimiser, a smoke run, validation."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from benchbench import TrainContext
from benchbench.cli import main
from benchbench.suite import SuiteError, load_suite
from benchbench_plugins.digits import Digits
from benchbench_plugins.made import MADE
from benchbench_plugins.study_pixel_opt import default_log_steps, optimise_pixels

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = """
suite: px
seed: 0
models:
  made: {use: made, train: {data: digits, split: train}, hidden: [32], steps: 30, batch_size: 64}
datasets:
  digits: {use: digits}
studies:
  pixel_opt: {use: pixel_opt, model: made, data: digits, n_real: 2, n_noise: 1, steps: 5, OPT}
"""


def write(tmp_path, opt="optimizer: adam"):
    path = tmp_path / "px.yaml"
    path.write_text(SUITE.replace("OPT", opt))
    return path


@pytest.fixture(scope="module")
def tiny_made():
    data = Digits().load("train")
    return MADE(hidden=[32], steps=30, batch_size=64).fit(data, TrainContext(progress=False)).eval(), Digits().load("test")


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.05), ("sgd", 5.0)])
def test_lowers_the_relaxed_nll_over_the_first_steps(tiny_made, optimizer, lr):
    model, test = tiny_made
    x0 = torch.from_numpy(test.images[:4])
    before = [p.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    trace = optimise_pixels(model, x0, optimizer=optimizer, lr=lr, steps=2, log_steps=range(3))
    relaxed = np.array([r["bpd_relaxed"].mean() for r in trace])
    assert relaxed[2] < relaxed[1] < relaxed[0], relaxed
    assert np.array_equal(trace[0]["image"], x0.numpy()) and trace[0]["bpd"] == pytest.approx(trace[0]["bpd_relaxed"])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model is untouched
    assert all(p.grad is None for p in model.parameters())
    assert all(r["image"].dtype == np.uint8 for r in trace)


def test_leaving_the_edge_bin_makes_the_relaxed_nll_jump(tiny_made):
    """The paper's "0.6 -> 7 bits/dim within a few steps while looking unchanged": a pixel at level 0 nudged
    past 0.1275 (-0.999 on the [-1, 1] scale) loses the edge bin's tail mass (the discretized logistic's
    edge rule), so the relaxed NLL jumps although the quantised image is the same."""
    model, _ = tiny_made
    black = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    trace = optimise_pixels(model, black, optimizer="adam", lr=0.2, steps=1, log_steps=[0, 1])
    assert np.array_equal(trace[1]["image"], trace[0]["image"])  # round(0.2) = 0: the image did not change
    assert trace[1]["bpd_relaxed"][0] > trace[0]["bpd_relaxed"][0] + 1.0


def test_default_log_steps():
    assert default_log_steps(100) == [0, 1, 2, 5, 10, 20, 50, 100]
    assert default_log_steps(30) == [0, 1, 2, 5, 10, 20, 30]


def test_smoke_run_rows_and_figure(tmp_path):
    out = tmp_path / "lb"
    argv = ["run", str(write(tmp_path)), "--device", "cpu", "--no-progress", "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 0
    assert not json.loads((out / "run.json").read_text())["failures"]
    df = pd.read_csv(out / "results.csv")
    assert set(df.eval_set) == {"digits", "noise", "black", "grey", "white"}
    assert set(df.detector) == {f"step={s}" for s in (0, 1, 2, 5)}
    assert set(df.metric) == {"bpd", "bpd_relaxed", "mean_abs_change"}
    assert (df[(df.eval_set == "digits")].n == 2).all()
    start = df[(df.detector == "step=0") & (df.metric == "mean_abs_change")]
    assert (start.value == 0).all()
    assert (out / "figures" / "pixel_opt.png").stat().st_size > 1000


def test_validation_names_bad_values(tmp_path):
    with pytest.raises(SuiteError) as e:
        load_suite(write(tmp_path, opt="optimizer: adma, lr: -1, constants: [0, 300], log_steps: [0, 9]"))
    keys = {k: m for k, m in e.value.problems}
    assert "'adma'" in keys["studies.pixel_opt.optimizer"] and "did you mean 'adam'" in keys["studies.pixel_opt.optimizer"]
    assert "-1" in keys["studies.pixel_opt.lr"]
    assert "300" in keys["studies.pixel_opt.constants[1]"]
    assert "9" in keys["studies.pixel_opt.log_steps[1]"]
