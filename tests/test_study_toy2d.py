"""The 2-D toy study (plugins/study_toy2d.py, paper §3.2): data, gradient grid, a smoke run, validation."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from benchbench import TrainContext
from benchbench.cli import main
from benchbench.suite import SuiteError, load_suite
from benchbench_plugins.made import MADE
from benchbench_plugins.study_toy2d import Toy2D, gradient_grid, x1_sigma

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = """
suite: toy
seed: 0
models:
  toy_made: {use: made, train: {data: toy, split: train}, hidden: [16], head: gaussian, steps: 60, batch_size: 50, lr: 0.01}
datasets:
  toy: {use: toy2d, n: 300}
studies:
  toy2d: {use: toy2d, model: MODEL, at_steps: AT, grid: 21}
"""


def write(tmp_path, model="toy_made", at="[10, 30]"):
    path = tmp_path / "toy.yaml"
    path.write_text(SUITE.replace("MODEL", model).replace("AT", at))
    return path


def test_toy_data_layout():
    ds = Toy2D(n=1000, seed=0)
    train, test = ds.load("train"), ds.load("test")
    assert train.images.shape == (1000, 1, 1, 2) and train.images.dtype == np.uint8
    assert (train.images[:, 0, 0, 0] == 128).all()  # x1 = 0 is level 128
    x2 = (train.images[:, 0, 0, 1].astype(float) - 128) / 32
    assert abs(x2.mean()) < 0.1 and abs(x2.std() - 1) < 0.1
    assert not np.array_equal(train.images, test.images)
    assert np.array_equal(test.images, Toy2D(n=1000, seed=0).load("test").images)


def test_gradient_grid_shape_and_finite():
    data = Toy2D(n=200).load("train")
    m = MADE(hidden=[16], head="gaussian", steps=20, batch_size=50).fit(data, TrainContext(progress=False))
    g = gradient_grid(m, np.linspace(-0.5, 0.5, 7), np.linspace(-3, 3, 5), 32)
    for k in ("log_p", "density", "grad_logp", "grad_density"):
        assert g[k].shape == (5, 7) and np.isfinite(g[k]).all(), k
    assert (g["density"] > 0).all() and (g["grad_logp"] >= 0).all()
    assert x1_sigma(m, 32) > 0


def test_grid_gradient_matches_finite_differences():
    data = Toy2D(n=200).load("train")
    m = MADE(hidden=[16], head="gaussian", steps=20, batch_size=50).fit(data, TrainContext(progress=False)).double()
    x1, x2, eps = 0.05, 0.7, 1e-6
    g = gradient_grid(m, np.array([x1]), np.array([x2]), 32)

    def lp(a, b):
        return float(m.log_prob(torch.tensor([[[[a * 32 + 128, b * 32 + 128]]]], dtype=torch.float64)).detach())

    fd = np.hypot((lp(x1 + eps, x2) - lp(x1 - eps, x2)) / (2 * eps), (lp(x1, x2 + eps) - lp(x1, x2 - eps)) / (2 * eps))
    assert g["grad_logp"][0, 0] == pytest.approx(fd, rel=1e-4)


def test_smoke_run_rows_and_figure(tmp_path):
    out = tmp_path / "lb"
    argv = ["run", str(write(tmp_path)), "--device", "cpu", "--no-progress", "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert not run["failures"], run["failures"]
    df = pd.read_csv(out / "results.csv")
    assert set(df.detector) == {"step=10", "step=30", "step=60"}
    assert set(df.metric) == {"share_grad_density_above", "share_grad_logp_above", "median_grad_logp",
                              "max_grad_density", "x1_sigma", "bpd"}
    share = df[df.metric == "share_grad_density_above"]
    assert share.value.between(0, 1).all() and (share.n == 21 * 21).all()
    assert (out / "figures" / "toy2d.png").stat().st_size > 1000


def test_copy_at_full_steps_equals_the_suite_model(tmp_path):
    """The study's copies at N steps are the full run's model at step N (same seed, same batches)."""
    from benchbench.cache import Cache
    from benchbench.runner import RunContext

    suite = load_suite(write(tmp_path))
    ctx = RunContext(suite=suite, cache=Cache(tmp_path / "c"), progress=False)
    ref = ctx.model("toy_made")
    copy = MADE(hidden=[16], head="gaussian", steps=60, batch_size=50, lr=0.01).fit(ctx.load("toy", "train"), TrainContext(seed=0, progress=False))
    x = torch.from_numpy(ctx.load("toy", "test").images).float()
    assert torch.allclose(ref.log_prob(x), copy.log_prob(x))


def test_validation_names_bad_values(tmp_path):
    with pytest.raises(SuiteError) as e:
        load_suite(write(tmp_path, model="toy_mad"))
    assert any(k == "studies.toy2d.model" and "did you mean 'toy_made'" in m for k, m in e.value.problems)
    with pytest.raises(SuiteError) as e:
        load_suite(write(tmp_path, at="[10, 600, -1]"))
    keys = {k: m for k, m in e.value.problems}
    assert "600 exceeds" in keys["studies.toy2d.at_steps[1]"] and "-1" in keys["studies.toy2d.at_steps[2]"]
