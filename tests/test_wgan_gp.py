"""WGAN-GP (plugins/wgan_gp.py) and the gan_samples data set (plugins/gan_samples.py): tiny CPU checks."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from benchbench import Split, TrainContext, hookimpl
from benchbench.api import Model, get_params
from benchbench.cli import main
from benchbench.registry import Registry
from benchbench.suite import SuiteError, load_suite
from benchbench_plugins.gan_samples import GANSamples
from benchbench_plugins.wgan_gp import Critic, Generator, WGANGP, gradient_penalty, register_models


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only add overhead


def tiny_data(n=16, shape=(1, 32, 32), seed=0) -> Split:
    """A bright square on noise: something a critic can tell from an untrained generator's output."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 64, size=(n, *shape), dtype=np.uint8)
    h = shape[1]
    images[:, :, h // 4: 3 * h // 4, h // 4: 3 * h // 4] = 230
    return Split(images, None, source="test")


def tiny_gan(**kw) -> WGANGP:
    return WGANGP(**{"dim": 8, "latent": 16, "steps": 4, "batch_size": 8, **kw})


def fitted(steps=3, data=None, work_dir=None, seed=0, **kw) -> WGANGP:
    m = tiny_gan(steps=steps, **kw)
    return m.fit(data or tiny_data(), TrainContext(seed=seed, progress=False, work_dir=work_dir))


def test_registered_and_no_likelihood():
    assert register_models() == {"wgan-gp": WGANGP}
    m = fitted(steps=0)
    assert m.provides == ()
    with pytest.raises(NotImplementedError, match="no likelihood"):
        m.log_prob(torch.zeros(1, 1, 32, 32))


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 32, 32), (1, 28, 28), (3, 28, 28)])
def test_networks_shapes(shape):
    c, h, _ = shape
    g, d = Generator(dim=4, latent=8, channels=c, size=h), Critic(dim=4, channels=c)
    x = g(torch.randn(5, 8))
    assert x.shape == (5, *shape) and x.abs().max() <= 1
    assert d(x).shape == (5,)


def test_unsupported_size_is_a_clear_error():
    with pytest.raises(ValueError, match="size"):
        fitted(steps=0, data=tiny_data(shape=(1, 16, 16)))


def test_critic_loss_decreases():
    ctx = TrainContext(seed=0, progress=False)
    tiny_gan(steps=12).fit(tiny_data(), ctx)
    assert [r["step"] for r in ctx.curve] == list(range(1, 13))
    assert set(ctx.curve[0]) == {"step", "critic_loss", "wasserstein", "gp", "gen_loss"}
    loss = np.array([r["critic_loss"] for r in ctx.curve])
    assert np.isfinite(loss).all()
    assert loss[-3:].mean() < loss[:3].mean() - 0.5, loss
    w = np.array([r["wasserstein"] for r in ctx.curve])
    assert w[-3:].mean() > w[:3].mean()  # the critic separates real from fake


def test_gradient_penalty_equals_a_direct_computation():
    torch.manual_seed(0)
    critic = Critic(dim=2, channels=1)
    real, fake = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    alpha = torch.rand(4, 1, 1, 1)
    gp = gradient_penalty(critic, real, fake, alpha)
    direct = []
    for i in range(4):  # one sample at a time, at its own interpolate
        x = (alpha[i] * real[i] + (1 - alpha[i]) * fake[i]).unsqueeze(0).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x)
        direct.append((g.norm() - 1) ** 2)
    assert torch.allclose(gp, torch.stack(direct).mean(), rtol=1e-5, atol=1e-7)
    # the penalty is at the interpolates: alpha = 1 puts it at the real images
    at_real = gradient_penalty(critic, real, fake, torch.ones(4, 1, 1, 1))
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x)
    assert torch.allclose(at_real, ((g.flatten(1).norm(dim=1) - 1) ** 2).mean(), rtol=1e-5)
    # two-sided, and differentiable w.r.t. the critic's parameters (double backprop)
    gp.backward()
    assert critic.conv1.weight.grad is not None and critic.conv1.weight.grad.abs().sum() > 0


def test_gradient_penalty_of_a_linear_critic():
    class Linear(torch.nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = w

        def forward(self, x):
            return (x.flatten(1) * self.w).sum(1)

    w = torch.full((12,), 0.5)  # ||w|| = sqrt(3): GP = (sqrt(3) - 1)^2 whatever the inputs
    gp = gradient_penalty(Linear(w), torch.randn(3, 3, 2, 2), torch.randn(3, 3, 2, 2), torch.rand(3, 1, 1, 1))
    assert gp.item() == pytest.approx((3 ** 0.5 - 1) ** 2, rel=1e-6)
    gp_small = gradient_penalty(Linear(w / 10), torch.randn(3, 3, 2, 2), torch.randn(3, 3, 2, 2), torch.rand(3, 1, 1, 1))
    assert gp_small.item() == pytest.approx((1 - 0.03 ** 0.5) ** 2, rel=1e-6)  # two-sided: ||w|| < 1 is penalised too


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 28, 28)])
def test_samples_shape_dtype_and_determinism(shape):
    m = fitted(steps=1, data=tiny_data(shape=shape))
    a = m.sample(6, generator=torch.Generator().manual_seed(1))
    b = m.sample(6, generator=torch.Generator().manual_seed(1))
    c = m.sample(6, generator=torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == (6, *shape)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(m.sample(3, generator=torch.Generator().manual_seed(1), batch_size=2), a[:3])
    assert m.sample(0).shape == (0, *shape)


def test_training_is_seeded():
    a = fitted(steps=2, seed=0).sample(4, torch.Generator().manual_seed(0))
    b = fitted(steps=2, seed=0).sample(4, torch.Generator().manual_seed(0))
    c = fitted(steps=2, seed=1).sample(4, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_state_dict_round_trip_on_a_fresh_instance():
    m = fitted(steps=2, data=tiny_data(shape=(3, 28, 28)))
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in m.state_dict().items()}, buf)
    fresh = WGANGP(**get_params(m))
    assert not fresh.built
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    fresh.eval()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(fresh.sample(5, g()), m.sample(5, g()))


def test_snapshots_every_n_steps_and_sampling_from_them(tmp_path):
    m = fitted(steps=5, work_dir=tmp_path, snapshot_every=2)
    snaps = m.snapshots(tmp_path)
    assert [s for s, _ in snaps] == [2, 4]
    assert [p.name for _, p in snaps] == ["step_0000002.pt", "step_0000004.pt"]
    state = torch.load(snaps[0][1], weights_only=True)
    assert set(state) == set(m.generator_net.state_dict())  # the generator only
    assert not (tmp_path / "resume.pt").exists()  # removed when fit ends
    assert WGANGP.snapshot_steps({"steps": 5, "snapshot_every": 2}) == [2, 4]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    s2, s4 = m.sample(4, g(), step=2), m.sample(4, g(), step=4, work_dir=tmp_path)
    assert s2.shape == (4, 1, 32, 32) and not torch.equal(s2, s4)
    with pytest.raises(ValueError, match=r"available steps: \[2, 4\]"):
        m.sample(4, g(), step=3)
    # snapshot at the last step == the final weights
    m6 = fitted(steps=4, work_dir=tmp_path / "b", snapshot_every=2)
    assert torch.equal(m6.sample(4, g(), step=4), m6.sample(4, g()))


def test_resumes_from_the_saved_training_state(tmp_path):
    class Killed(Exception):
        pass

    class DiesAtStep4(TrainContext):
        def log(self, **metrics):
            if metrics["step"] >= 4:
                raise Killed
            super().log(**metrics)

    full_ctx = TrainContext(seed=0, progress=False)
    full = tiny_gan(steps=6).fit(tiny_data(), full_ctx)
    with pytest.raises(Killed):
        tiny_gan(steps=6).fit(tiny_data(), DiesAtStep4(seed=0, progress=False, work_dir=tmp_path))
    assert (tmp_path / "resume.pt").is_file()
    ctx = TrainContext(seed=0, progress=False, work_dir=tmp_path)
    resumed = tiny_gan(steps=6).fit(tiny_data(), ctx)
    assert ctx.curve == full_ctx.curve
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(resumed.sample(8, g()), full.sample(8, g()))
    assert not (tmp_path / "resume.pt").exists()


# --------------------------------------------------------------------------- gan_samples in a suite

SUITE = """
suite: gan-test
seed: 0
models:
  gan:
    use: wgan-gp
    train: {data: data, split: train}
    dim: 8
    latent: 16
    steps: 4
    batch_size: 8
    snapshot_every: 2
  made:
    use: made
    train: {data: data, split: train}
    hidden: [32]
    steps: 10
    batch_size: 16
datasets:
  data: {use: noise, n: 24, shape: [1, 32, 32]}
  gan: {use: gan_samples, generator: GENERATOR, n: 16}
  gan_early: {use: gan_samples, generator: gan, n: 8, step: STEP}
studies:
  ood:
    use: ood
    models: [made]
    in_distribution: {data: data, fit: train, eval: test}
    ood: [gan, gan_early]
    detectors: [ar-2sd]
"""


def write_suite(tmp_path, generator="gan", step=2):
    path = tmp_path / "gan.yaml"
    path.write_text(SUITE.replace("GENERATOR", generator).replace("STEP", str(step)))
    return path


def test_suite_end_to_end(tmp_path):
    path = write_suite(tmp_path)
    out, cache = tmp_path / "lb", tmp_path / "cache"
    argv = ["run", str(path), "--device", "cpu", "--no-progress", "--out", str(out), "--cache-dir", str(cache)]
    assert main(argv) == 0
    df = pd.read_csv(out / "results.csv")
    assert {"gan", "gan_early"} <= set(df.eval_set)
    gan = df[df.eval_set == "gan"]
    assert set(gan.metric) >= {"bpd_mean", "pct_in", "auroc"} and (gan[gan.metric == "bpd_mean"].n == 16).all()
    run = json.loads((out / "run.json").read_text())
    assert not run["failures"], run["failures"]
    assert run["datasets"]["gan:test"]["n"] == 16 and run["datasets"]["gan:test"]["shape"] == [1, 32, 32]
    assert "gan_samples of gan step final" in run["datasets"]["gan:test"]["source"]
    assert "step 2" in run["datasets"]["gan_early:test"]["source"]
    assert run["checkpoints"]["gan"]["source"] == "trained"
    # a second run: the GAN comes from the cache and its samples (hence every number) are identical
    before = (out / "results.csv").read_bytes()
    shutil.copytree(out, tmp_path / "first")
    assert main(argv) == 0
    run2 = json.loads((out / "run.json").read_text())
    assert run2["checkpoints"]["gan"]["source"] == "cache"
    assert run2["datasets"]["gan:test"]["fingerprint"] == run["datasets"]["gan:test"]["fingerprint"]
    assert (out / "results.csv").read_bytes() == before


def test_gan_samples_splits_differ_and_are_seeded(tmp_path):
    from benchbench.cache import Cache
    from benchbench.runner import RunContext

    suite = load_suite(write_suite(tmp_path))
    ctx = RunContext(suite=suite, cache=Cache(tmp_path / "cache"), progress=False)
    train, test = GANSamples("gan", n=5).load("train", ctx), GANSamples("gan", n=5).load("test", ctx)
    again = GANSamples("gan", n=5).load("test", ctx)
    other = GANSamples("gan", n=5, seed=1).load("test", ctx)
    assert test.images.dtype == np.uint8 and test.images.shape == (5, 1, 32, 32) and test.labels is None
    assert np.array_equal(test.images, again.images)
    assert not np.array_equal(test.images, train.images) and not np.array_equal(test.images, other.images)
    with pytest.raises(ValueError, match=r"no generator snapshot at step 3.*available steps: \[2, 4\]"):
        GANSamples("gan", n=5, step=3).load("test", ctx)
    with pytest.raises(ValueError, match="no split"):
        GANSamples("gan").load("valid", ctx)


def test_validate_names_a_misspelled_generator(tmp_path, capsys):
    path = write_suite(tmp_path, generator="gna")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "datasets.gan.generator" in err and "'gna'" in err and "did you mean 'gan'" in err


def test_validate_checks_the_snapshot_step(tmp_path):
    with pytest.raises(SuiteError) as e:
        load_suite(write_suite(tmp_path, step=3))
    assert [k for k, _ in e.value.problems] == ["datasets.gan_early.step"]
    assert "snapshots no step 3" in e.value.problems[0][1]


def test_validate_rejects_a_model_that_cannot_sample(tmp_path):
    class NoSample(Model):
        def fit(self, data, ctx):
            return self

    class Plugin:
        @hookimpl
        def register_models(self):
            return {"no-sample": NoSample}

    path = tmp_path / "s.yaml"
    path.write_text(write_suite(tmp_path).read_text().replace("use: made", "use: no-sample")
                    .replace("    hidden: [32]\n    steps: 10\n    batch_size: 16\n", "")
                    .replace("generator: gan, n: 16", "generator: made, n: 16"))
    with pytest.raises(SuiteError) as e:
        load_suite(path, registry=Registry(autoload=False, extra_plugins=(Plugin(),)))
    assert any(k == "datasets.gan.generator" and "no sample() method" in m for k, m in e.value.problems)
