"""ARCycle study (plugins/study_arcycle.py, paper §2): networks, the cycle loss, a smoke run, validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchbench import Dataset, Split, TrainContext, hookimpl
from benchbench.cache import Cache
from benchbench.leaderboard import results_frame
from benchbench.registry import Registry
from benchbench.runner import run_suite
from benchbench.suite import SuiteError, load_suite
from benchbench_plugins.pixelcnnpp import PixelCNNpp
from benchbench_plugins.study_arcycle import (ARCycle, ImagePool, PatchDiscriminator, ResnetGenerator, gaussian_blur,
                                              relaxed_bpd)

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16


class Bars(Dataset):
    """Tiny unpaired domains: one bright axis-aligned bar on black, greyscale (channels 1) or in a random colour (3)."""

    splits = ("train", "test")

    def __init__(self, channels: int = 1, n: int = 64, seed: int = 0):
        self.channels, self.n, self.seed = channels, n, seed

    def load(self, split):
        self._check_split(split)
        rng = np.random.default_rng([self.seed, self.channels, self.splits.index(split)])
        x = np.zeros((self.n, self.channels, SIZE, SIZE), dtype=np.uint8)
        for i in range(self.n):
            r0, c0 = rng.integers(0, SIZE - 6, 2)
            h, w = (rng.integers(6, 12), rng.integers(2, 4)) if rng.random() < 0.5 else (rng.integers(2, 4), rng.integers(6, 12))
            colour = rng.integers(64, 256, self.channels) if self.channels == 3 else np.array([255])
            x[i, :, r0:r0 + h, c0:c0 + w] = colour[:, None, None]
        return Split(x, None, source=f"bars(channels={self.channels}, n={self.n}, split={split})")


class Plugin:
    @hookimpl
    def register_datasets(self):
        return {"bars": Bars}


SUITE = """
suite: arc
seed: 0
models:
  px: {use: pixelcnnpp, train: {data: xbars, split: train}, in_channels: 3, nr_resnet: 1, nr_filters: 8,
       nr_logistic_mix: 2, steps: 3, batch_size: 16, init_batch_size: 16, log_every: 1}
  py: {use: pixelcnnpp, train: {data: ybars, split: train}, in_channels: 1, nr_resnet: 1, nr_filters: 8,
       nr_logistic_mix: 2, steps: 3, batch_size: 16, init_batch_size: 16, log_every: 1}
datasets:
  xbars: {use: bars, channels: 3}
  ybars: {use: bars, channels: 1}
studies:
  arcycle: {use: arcycle, x_data: xbars, y_data: ybars, x_likelihood: px, y_likelihood: py, ngf: 4, n_blocks: 1,
            ndf: 4, batch_size: 4, steps: 4, cyclegan_steps: 4, log_every: 2, n_eval: 6, n_figure: 3, EXTRA}
"""


def registry():
    return Registry(autoload=False, extra_plugins=(Plugin(),))


def write(tmp_path, extra="pool_size: 5"):
    path = tmp_path / "arc.yaml"
    path.write_text(SUITE.replace("EXTRA", extra))
    return path


def test_generator_and_discriminator_shapes():
    for size in (16, 28, 32):
        f = ResnetGenerator(3, 1, ngf=4, n_blocks=2)
        y = f(torch.rand(2, 3, size, size) * 2 - 1)
        assert y.shape == (2, 1, size, size) and y.abs().max() < 1
        assert PatchDiscriminator(1, ndf=4, n_layers=2)(y).shape[:2] == (2, 1)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    b = gaussian_blur(x, 1.0)
    assert b.shape == x.shape and b.std() < x.std()
    b.sum().backward()  # differentiable
    assert torch.allclose(gaussian_blur(torch.full((1, 1, 8, 8), 0.3), 1.0), torch.full((1, 1, 8, 8), 0.3))
    pool = ImagePool(2, np.random.default_rng(0))
    assert pool.query(torch.zeros(3, 1, 2, 2)).shape == (3, 1, 2, 2)


def test_relaxed_nll_is_differentiable_in_the_generator():
    data = Bars(channels=1, n=16).load("train")
    lik = PixelCNNpp(in_channels=1, nr_resnet=1, nr_filters=8, nr_logistic_mix=2, steps=1, batch_size=8,
                     init_batch_size=8).fit(data, TrainContext(progress=False)).eval()
    g = ResnetGenerator(3, 1, ngf=4, n_blocks=1)
    b = relaxed_bpd(lik, g(torch.rand(2, 3, SIZE, SIZE) * 2 - 1))
    assert b.shape == (2,) and torch.isfinite(b).all() and (b > 0).all()
    b.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.parameters() if p.ndim > 1)


def test_cycle_loss_falls():
    """Eq. 3 (NLL + beta * cycle): the reconstruction L1 on the evaluation images falls within 20 Adam steps."""
    X = torch.from_numpy(Bars(channels=3, n=32).load("train").images)
    Y = torch.from_numpy(Bars(channels=1, n=32).load("train").images)
    ex, ey = X[:8].float() / 127.5 - 1, Y[:8].float() / 127.5 - 1
    px = PixelCNNpp(in_channels=3, nr_resnet=1, nr_filters=4, nr_logistic_mix=2).eval()  # unfitted: any density will do
    py = PixelCNNpp(in_channels=1, nr_resnet=1, nr_filters=4, nr_logistic_mix=2).eval()
    for p in list(px.parameters()) + list(py.parameters()):
        p.requires_grad_(False)
    study = ARCycle("x", "y", "px", "py", ngf=4, n_blocks=1, batch_size=4, steps=20, log_every=10, lr=0.002, n_eval=8,
                    n_figure=2)
    f_net, g_net = study._generators(3, 1, 0)
    beta = study._auto_beta(f_net, g_net, px, py, X, Y, 0, torch.device("cpu"))
    assert beta > 0
    trace = []
    rows = list(study._train_arcycle("nll_cycle", f_net, g_net, px, py, X, Y, ex, ey, beta, 0, torch.device("cpu"), trace))
    assert [s for s, _ in trace] == [0, 10, 20] and len(rows) == 3 * 2 * 4
    for key in ("xy_l1", "yx_l1"):
        l1 = [ev[key].mean() for _, ev in trace]
        assert l1[2] < l1[1] < l1[0] and l1[2] < 0.8 * l1[0], (key, l1)
    # deterministic from the seed: the same initialisation and minibatches give the same numbers
    study.steps = 2
    again = []
    list(study._train_arcycle("nll_cycle", *study._generators(3, 1, 0), px, py, X, Y, ex, ey, beta, 0, torch.device("cpu"), again))
    short = []
    list(study._train_arcycle("nll_cycle", *study._generators(3, 1, 0), px, py, X, Y, ex, ey, beta, 0, torch.device("cpu"), short))
    assert all(np.array_equal(a[1][k], b[1][k]) for a, b in zip(again, short) for k in a[1])
    assert np.array_equal(again[0][1]["xy_l1"], trace[0][1]["xy_l1"])


def test_smoke_run_rows_and_figures(tmp_path):
    suite = load_suite(write(tmp_path), registry=registry())
    out = tmp_path / "lb"
    res = run_suite(suite, cache=Cache(tmp_path / "c"), progress=False, out_dir=out)
    assert not res.ctx.failures, [(f.where, f.error) for f in res.ctx.failures]
    df = results_frame(res.rows)
    stepped = df[df.detector != ""]
    assert set(stepped.model) == {"cyclegan", "nll_cycle", "nll", "blur", "cyclegan_init"}
    assert set(stepped.detector) == {"step=0", "step=2", "step=4"}
    assert set(stepped.eval_set) == {"xbars->ybars", "ybars->xbars"}
    assert set(stepped.metric) == {"bpd", "bpd_relaxed", "l1_cycle", "l1_cycle_quantised"}
    assert len(stepped) == 5 * 3 * 2 * 4 and (stepped.n == 6).all()
    assert np.isfinite(stepped.value.astype(float)).all()
    beta = df[df.metric == "beta"]
    assert set(beta.model) == {"nll_cycle", "blur", "cyclegan_init"} and beta.value.nunique() == 1 and (beta.value > 0).all()
    ref = df[(df.detector == "") & (df.metric == "bpd")]
    assert set(ref.eval_set) == {"xbars:test", "ybars:test"}
    # cyclegan_init starts where the baseline ended
    last = df[(df.model == "cyclegan") & (df.detector == "step=4")].set_index(["eval_set", "metric"]).value
    first = df[(df.model == "cyclegan_init") & (df.detector == "step=0")].set_index(["eval_set", "metric"]).value
    assert np.allclose(last.sort_index(), first.sort_index())
    # the random-init ablations share their start
    s0 = df[df.detector == "step=0"].set_index(["model", "eval_set", "metric"]).value
    assert np.allclose(s0["nll_cycle"].sort_index(), s0["nll"].sort_index())
    assert (out / "figures" / "arcycle.png").stat().st_size > 1000
    assert (out / "figures" / "arcycle_iterations.png").stat().st_size > 1000
    assert "cyclegan_init" in res.ctx.reports["arcycle"]


def test_validation_names_bad_values(tmp_path):
    with pytest.raises(SuiteError) as e:
        load_suite(write(tmp_path, "ablations: [nll_cycl, cyclegan_init], beta: -1, pool_size: -2, n_figure: 9"),
                   registry=registry())
    keys = {k: m for k, m in e.value.problems}
    assert "did you mean 'nll_cycle'" in keys["studies.arcycle.ablations[0]"]
    assert "list 'cyclegan' too" in keys["studies.arcycle.ablations"]
    assert "-1" in keys["studies.arcycle.beta"] and "-2" in keys["studies.arcycle.pool_size"]
    assert "9" in keys["studies.arcycle.n_figure"]
    with pytest.raises(SuiteError) as e:
        load_suite(_rewrite(tmp_path, "x_likelihood: px", "x_likelihood: pz"), registry=registry())
    assert any(k == "studies.arcycle.x_likelihood" and "unknown model 'pz'" in m for k, m in e.value.problems)


def _rewrite(tmp_path, old, new):
    path = write(tmp_path)
    path.write_text(path.read_text().replace(old, new))
    return path
