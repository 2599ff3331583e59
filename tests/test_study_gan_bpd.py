"""Bits/dim over GAN training (plugins/study_gan_bpd.py, paper §4.1): the score, a smoke run, validation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from benchbench import Model, hookimpl
from benchbench.cache import Cache
from benchbench.leaderboard import results_frame
from benchbench.registry import Registry
from benchbench.runner import run_suite
from benchbench.suite import SuiteError, load_suite
from benchbench_plugins import study_gan_bpd
from benchbench_plugins.study_gan_bpd import score_from_probs, spearman

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyClassifier(Model):
    """A stand-in for the classifier plugin: logits from a fixed random linear map of the mean pixel per row."""

    provides = ("logits", "features")

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.lin = nn.Linear(32, num_classes)

    def fit(self, data, ctx):
        torch.manual_seed(0)
        nn.init.normal_(self.lin.weight, std=0.1)
        return self

    @torch.no_grad()
    def score(self, x):
        f = x.float().mean((1, 3)) - 127.5  # (N, H)
        return {"logits": self.lin(f), "features": f}


class Plugin:
    @hookimpl
    def register_models(self):
        return {"tiny-classifier": TinyClassifier}


SUITE = """
suite: ganbpd
seed: 0
models:
  gan: {use: wgan-gp, train: {data: real, split: train}, dim: 4, latent: 8, steps: 4, batch_size: 8, snapshot_every: SNAP}
  made: {use: made, train: {data: real, split: train}, hidden: [8], steps: 5, batch_size: 8}
  clf: {use: tiny-classifier, train: {data: real, split: train}}
datasets:
  real: {use: noise, n: 24, shape: [1, 32, 32]}
studies:
  gan_bpd: {use: gan_bpd, generator: gan, likelihood: LIK, reference: real, classifier: clf, n: 20, splits: 2, SCORE}
"""


def write(tmp_path, snap=1, lik="made", score="score: auto"):
    path = tmp_path / "g.yaml"
    path.write_text(SUITE.replace("SNAP", str(snap)).replace("LIK", lik).replace("SCORE", score))
    return path


def registry():
    return Registry(autoload=False, extra_plugins=(Plugin(),))


def test_score_formula():
    uniform = np.full((10, 4), 0.25)
    assert score_from_probs(uniform, 2) == pytest.approx((1.0, 0.0))
    onehot = np.eye(4)[np.arange(8) % 4]
    assert score_from_probs(onehot, 1)[0] == pytest.approx(4.0)  # confident and diverse: K
    assert score_from_probs(np.eye(4)[np.zeros(8, int)], 1)[0] == pytest.approx(1.0)  # confident, one class
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0) and np.isnan(spearman([1, 1], [1, 2]))


def test_smoke_run_rows_and_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(study_gan_bpd, "inception_weights_path", lambda: None)  # the classifier score, whatever is cached
    suite = load_suite(write(tmp_path), registry=registry())
    out = tmp_path / "lb"
    res = run_suite(suite, cache=Cache(tmp_path / "c"), progress=False, out_dir=out)
    assert not res.ctx.failures, [(f.where, f.error) for f in res.ctx.failures]
    df = results_frame(res.rows)
    samples = df[df.eval_set == "gan_samples"]
    assert set(samples.detector) == {"step=1", "step=2", "step=3", "step=4", ""}
    per = samples[samples.detector != ""]
    assert set(per.metric) == {"bpd_mean", "bpd_std", "classifier_score", "classifier_score_std"}
    assert (per.n == 20).all() and np.isfinite(per.value.astype(float)).all()
    rho = samples[samples.metric == "spearman_bpd_vs_classifier_score"]
    assert len(rho) == 1 and rho.n.iloc[0] == 4 and -1 <= float(rho.value.iloc[0]) <= 1
    ref = df[df.eval_set == "real"]
    assert set(ref.metric) == {"bpd_mean", "bpd_std", "classifier_score", "classifier_score_std"}
    assert (out / "figures" / "gan_bpd.png").stat().st_size > 1000


def test_no_score_available_still_gives_bits_per_dim(tmp_path, monkeypatch):
    monkeypatch.setattr(study_gan_bpd, "inception_weights_path", lambda: None)
    path = write(tmp_path, snap=2)
    path.write_text(path.read_text().replace(" classifier: clf,", ""))
    suite = load_suite(path, registry=registry())
    res = run_suite(suite, cache=Cache(tmp_path / "c"), progress=False, out_dir=tmp_path / "lb")
    assert [f.where for f in res.ctx.failures] == ["studies.gan_bpd: score"]
    df = results_frame(res.rows)
    assert set(df[df.eval_set == "gan_samples"].detector) == {"step=2", "step=4"}
    assert set(df.metric) == {"bpd_mean", "bpd_std"}


def test_validation_names_bad_values(tmp_path):
    with pytest.raises(SuiteError) as e:
        load_suite(write(tmp_path, snap=0, lik="clf", score="score: inceptoin"), registry=registry())
    keys = {k: m for k, m in e.value.problems}
    assert "snapshot_every" in keys["studies.gan_bpd.generator"]
    assert "'clf'" in keys["studies.gan_bpd.likelihood"] and "no bpd" in keys["studies.gan_bpd.likelihood"]
    assert "'inceptoin'" in keys["studies.gan_bpd.score"] and "did you mean 'inception'" in keys["studies.gan_bpd.score"]
