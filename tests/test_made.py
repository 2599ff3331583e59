"""MADE (plugins/made.py) and the discretized Gaussian (plugins/likelihoods.py): cheap CPU checks."""
from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch

from benchbench import Split, TrainContext, bits_per_dim
from benchbench.api import get_params
from benchbench_plugins import likelihoods as lk
from benchbench_plugins.made import HEADS, MADE, register_models

ORDERINGS = ("natural", "random")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only add overhead


def random_made(head, ordering="natural", num_masks=1, shape=(1, 2, 2), hidden=(16, 16), scale=1.0, seed=0, **kw):
    """A built MADE with seeded random weights (weights multiplied by ``scale`` for wider parameters)."""
    torch.manual_seed(seed)
    m = MADE(hidden=list(hidden), head=head, ordering=ordering, num_masks=num_masks, nr_mix=3, seed=seed,
             shape=list(shape), **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m.eval()


def random_images(n, shape, seed=0):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed)).float()


# --------------------------------------------------------------------------- autoregressive property


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("ordering", ORDERINGS)
def test_autoregressive_property(head, ordering):
    shape = (3, 2, 2)  # D = 12, three channels
    m = random_made(head, ordering, num_masks=3, shape=shape, hidden=(24, 24))
    x = random_images(1, shape)
    D = m.num_dims
    orders = []
    for k in range(m.num_masks):
        deg = m.degrees_0[k]
        orders.append(tuple(m.order(k).tolist()))
        assert sorted(orders[-1]) == list(range(D))
        # parameters of dimension d: (D, P, D) Jacobian w.r.t. the flat inputs
        jac = torch.autograd.functional.jacobian(lambda v: m(v.view(1, *shape), mask=k)[0], x.view(-1),
                                                 vectorize=True)
        for d in range(D):
            later = deg >= deg[d]  # d itself and everything after it in mask k's order
            assert torch.all(jac[d][:, later] == 0), (k, d)
        last = int(m.order(k)[-1])
        assert jac[last].abs().sum() > 0, "the last dimension should see some earlier input"
        if head != "categorical":  # log p(x_d | x_<d) depends on x_d but on nothing after it
            jl = torch.autograd.functional.jacobian(lambda v: m.conditional_log_probs(v.view(1, *shape), k)[0],
                                                    x.view(-1), vectorize=True)
            for d in range(D):
                assert torch.all(jl[d][deg > deg[d]] == 0), (k, d)
    if ordering == "random":
        assert len(set(orders)) > 1
    else:
        assert set(orders) == {tuple(range(D))}


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("dtype,scale,tol", [(torch.float32, 1.0, 1e-5), (torch.float64, 4.0, 1e-10)])
def test_conditionals_sum_to_one(head, dtype, scale, tol):
    shape = (1, 2, 2)
    m = random_made(head, "random", num_masks=2, shape=shape, scale=scale).to(dtype)
    base = random_images(1, shape, seed=1).to(dtype).view(-1)
    for k, i in itertools.product(range(2), range(4)):
        batch = base.repeat(256, 1)
        batch[:, i] = torch.arange(256, dtype=dtype)
        with torch.no_grad():
            p = m.conditional_log_probs(batch.view(256, *shape), k)[:, i].double().exp().sum()
        assert abs(p.item() - 1.0) < tol, (k, i, p.item())


@pytest.mark.parametrize("head", HEADS)
def test_joint_sums_to_one(head):
    """All 256^2 images of a 1x1x2 image, ensemble of two masks: the probabilities sum to 1."""
    m = random_made(head, "random", num_masks=2, shape=(1, 1, 2), hidden=(8,))
    grid = torch.cartesian_prod(torch.arange(256.0), torch.arange(256.0)).view(-1, 1, 1, 2)
    with torch.no_grad():
        total = m.log_prob(grid).double().exp().sum().item()
    assert abs(total - 1.0) < 1e-5


# --------------------------------------------------------------------------- values vs an independent formula


def _logistic_cdf(z):
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _normal_cdf(z):
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _bin_mass(cdf, level, mean, log_scale):
    """Mass of pixel level 0..255 under cdf((. - mean) / s), 256 bins on [-1, 1], edge bins take the tails."""
    s = math.exp(max(log_scale, -7.0))
    x = level / 127.5 - 1.0
    upper = 1.0 if level == 255 else cdf((x + 1.0 / 255 - mean) / s)
    lower = 0.0 if level == 0 else cdf((x - 1.0 / 255 - mean) / s)
    return upper - lower


def slow_log_prob(head, params, levels, nr_mix):
    """Per-dimension log-probabilities by explicit float64 loops; params (N, D, P), levels (N, D) ints."""
    out = np.zeros(levels.shape)
    for n, d in np.ndindex(*levels.shape):
        p, v = params[n, d], int(levels[n, d])
        if head == "categorical":
            mx = max(p)
            out[n, d] = p[v] - mx - math.log(sum(math.exp(q - mx) for q in p))
        elif head == "gaussian":
            out[n, d] = math.log(_bin_mass(_normal_cdf, v, p[0], p[1]))
        else:
            logits, means, log_scales = p[:nr_mix], p[nr_mix:2 * nr_mix], p[2 * nr_mix:]
            w = np.exp(logits - logits.max())
            w /= w.sum()
            out[n, d] = math.log(sum(w[j] * _bin_mass(_logistic_cdf, v, means[j], log_scales[j]) for j in range(nr_mix)))
    return out


@pytest.mark.parametrize("head", HEADS)
def test_values_match_slow_formula(head):
    shape = (2, 2, 2)
    x = random_images(5, shape, seed=2)
    x[0] = 0.0
    x[1] = 255.0
    for dtype, tol in [(torch.float64, 1e-9), (torch.float32, 2e-4)]:
        m = random_made(head, "random", shape=shape, scale=2.0).to(dtype)
        with torch.no_grad():
            params = m(x.to(dtype)).double().numpy()
            got = m.conditional_log_probs(x.to(dtype)).double().numpy()
            total = m.log_prob(x.to(dtype)).double().numpy()
        want = slow_log_prob(head, params, x.view(5, -1).long().numpy(), m.nr_mix)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
        np.testing.assert_allclose(total, want.sum(1), rtol=tol, atol=tol * 8)


def test_ensemble_is_log_mean_exp_of_masks():
    shape = (1, 3, 3)
    m = random_made("logistic", "random", num_masks=4, shape=shape, scale=2.0)
    x = random_images(6, shape, seed=3)
    with torch.no_grad():
        per_mask = np.stack([m.conditional_log_probs(x, k).sum(1).double().numpy() for k in range(4)])
        got = m.log_prob(x).double().numpy()
    assert np.ptp(per_mask, axis=0).min() > 1e-3  # the masks really differ
    np.testing.assert_allclose(got, np.log(np.mean(np.exp(per_mask), axis=0)), rtol=1e-6)
    # natural ordering with several masks: same order, different connectivity
    m = random_made("gaussian", "natural", num_masks=3, shape=shape, scale=2.0)
    with torch.no_grad():
        per_mask = np.stack([m.conditional_log_probs(x, k).sum(1).double().numpy() for k in range(3)])
        np.testing.assert_allclose(m.log_prob(x).double().numpy(), np.log(np.mean(np.exp(per_mask), axis=0)), rtol=1e-6)
    assert np.ptp(per_mask, axis=0).min() > 1e-3


# --------------------------------------------------------------------------- training, round trip, sampling


@pytest.fixture(scope="module")
def trained():
    """One briefly trained model per head, on constant images (value 100, 1x4x4)."""
    images = np.full((64, 1, 4, 4), 100, np.uint8)
    out = {}
    for head in HEADS:
        m = MADE(hidden=[32], head=head, nr_mix=3, steps=300, batch_size=32, lr=3e-3)
        ctx = TrainContext(seed=0, progress=False)
        assert m.fit(Split(images), ctx) is m
        out[head] = (m, ctx, images)
    return out


@pytest.mark.parametrize("head", HEADS)
def test_fit_learns_constant_images(trained, head):
    m, ctx, images = trained[head]
    assert not m.training
    assert 15 <= len(ctx.curve) <= 25 and ctx.curve[-1]["step"] == 300
    assert all(set(c) == {"step", "train_bpd"} for c in ctx.curve)
    const = m.score(torch.from_numpy(images[:1]))["bpd"].item()
    noise = m.score(random_images(32, (1, 4, 4), seed=4).to(torch.uint8))["bpd"]
    assert const < 3.0 and noise.min().item() > const + 4.0, (const, noise.min().item())
    assert ctx.curve[-1]["train_bpd"] < ctx.curve[0]["train_bpd"] - 3.0


def test_fit_is_seeded():
    images = np.random.default_rng(0).integers(0, 256, (20, 1, 2, 2), dtype=np.uint8)
    runs = []
    for _ in range(2):
        m = MADE(hidden=[8], head="categorical", num_masks=2, ordering="random", steps=30, batch_size=8)
        runs.append(m.fit(Split(images), TrainContext(seed=7, progress=False)).state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize("head", HEADS)
def test_state_dict_round_trip(trained, head):
    m, _, _ = trained[head]
    x = random_images(8, (1, 4, 4), seed=5)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = MADE(**get_params(m))  # unbuilt: shape comes from the state dict
    assert not fresh.built
    fresh.load_state_dict(torch.load(buf))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh.log_prob(x), m.log_prob(x))
    # ensemble over random orderings, built eagerly from `shape`
    e = random_made(head, "random", num_masks=3, shape=(1, 2, 3))
    e2 = MADE(**get_params(e))
    e2.load_state_dict(e.state_dict())
    y = random_images(4, (1, 2, 3))
    with torch.no_grad():
        assert torch.equal(e2.log_prob(y), e.log_prob(y))


def test_sample(trained):
    m, _, _ = trained["categorical"]
    a = m.sample(6, generator=torch.Generator().manual_seed(0))
    b = m.sample(6, generator=torch.Generator().manual_seed(0))
    assert a.dtype == torch.uint8 and a.shape == (6, 1, 4, 4) and torch.equal(a, b)
    assert (a == 100).float().mean() > 0.5  # trained on constant-100 images (uniform: 1/256)
    e = random_made("logistic", "random", num_masks=2, shape=(2, 2, 2))
    s = e.sample(5, generator=torch.Generator().manual_seed(1))
    assert s.shape == (5, 2, 2, 2) and s.dtype == torch.uint8


# --------------------------------------------------------------------------- numerical safety


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_finite_on_extreme_images(trained, head, scale):
    shape = (1, 4, 4)
    x = torch.cat([torch.zeros(1, *shape), torch.full((1, *shape), 255.0), random_images(4, shape, seed=6)])
    for m in (trained[head][0], random_made(head, "random", num_masks=2, shape=shape, scale=scale)):
        xr = x.clone().requires_grad_(head != "categorical")
        lp = m.log_prob(xr)
        assert torch.isfinite(lp).all() and (lp <= 1e-6).all()
        assert torch.isfinite(bits_per_dim(lp, 16)).all()
        if head != "categorical":
            (g,) = torch.autograd.grad(lp.sum(), xr)
            assert torch.isfinite(g).all()
        else:
            lp.sum().backward()  # parameters still get gradients
            assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
            m.zero_grad(set_to_none=True)


def test_not_built_and_bad_args():
    with pytest.raises(RuntimeError, match="not built"):
        MADE().log_prob(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError):
        MADE(head="bernoulli")
    with pytest.raises(ValueError):
        MADE(ordering="reverse")
    m = random_made("gaussian", shape=(1, 2, 2))
    with pytest.raises(ValueError):
        m.log_prob(torch.zeros(1, 1, 3, 3))


def test_registered():
    assert register_models() == {"made": MADE}


# --------------------------------------------------------------------------- discretized Gaussian


def test_discretized_gaussian_matches_high_precision_reference():
    mp = pytest.importorskip("mpmath").mp
    mp.dps = 50

    def ref(x, mu, ls):  # reflected so that no difference is taken near 1
        s, h = mp.e ** mp.mpf(max(ls, -7.0)), mp.mpf(1) / 255
        hi, lo = (mp.mpf(x) + h - mp.mpf(mu)) / s, (mp.mpf(x) - h - mp.mpf(mu)) / s
        if x < -0.999:
            return float(mp.log(mp.ncdf(hi)))
        if x > 0.999:
            return float(mp.log(mp.ncdf(-lo)))
        if lo + hi > 0:
            hi, lo = -lo, -hi
        return float(mp.log(mp.ncdf(hi) - mp.ncdf(lo)))

    xs = [-1.0, 1.0, -1 + 2 / 255, 1 - 2 / 255, 0.0, 100 / 127.5 - 1]
    mus = [-1e3, -30.0, -2.0, -0.5, 0.0, 0.3, 1.5, 40.0, 5e3]
    lss = [-9.0, -7.0, -4.0, -1.0, 0.0, 2.0, 6.0, 15.0]
    cases = list(itertools.product(xs, mus, lss))
    want = np.array([ref(*c) for c in cases])
    assert np.isfinite(want).all()
    for dtype, tol in [(torch.float64, 1e-10), (torch.float32, 2e-6)]:
        X, M, L = (torch.tensor(v, dtype=dtype, requires_grad=True) for v in zip(*cases))
        got = lk.discretized_gaussian_log_prob(X, M, L)
        got.sum().backward()
        for t in (got, X.grad, M.grad, L.grad):
            assert torch.isfinite(t).all()
        err = np.abs(got.detach().double().numpy() - want) / np.maximum(1.0, np.abs(want))
        assert err.max() < tol, cases[int(err.argmax())]


def test_discretized_gaussian_normalised_and_finite_in_float32():
    levels = lk.all_levels()
    for mu, ls in itertools.product([-3.0, -1.0, 0.0, 0.37, 1.0, 2.5], [-4.0, -2.0, 0.0, 3.0, 10.0]):
        total = lk.discretized_gaussian_log_prob(levels, torch.tensor(mu), torch.tensor(ls)).double().exp().sum()
        assert abs(total.item() - 1.0) < 1e-5, (mu, ls)
    # a dense sweep of standardized positions: values and gradients stay finite
    x = levels.repeat(41).requires_grad_()
    mean = torch.linspace(-50.0, 50.0, 41).repeat_interleave(256).requires_grad_()
    for ls in (-7.0, -3.0, 0.0, 4.0, 12.0):
        log_scale = torch.full_like(mean, ls, requires_grad=True)
        out = lk.discretized_gaussian_log_prob(x, mean, log_scale)
        grads = torch.autograd.grad(out.sum(), (x, mean, log_scale))
        assert torch.isfinite(out).all() and (out <= 0).all()
        assert all(torch.isfinite(g).all() for g in grads)


def test_very_wide_logistic_stays_finite_and_exact():
    """log_scale 30..200: exp(-log_scale) underflows float32 beyond ~88; the bin mass must not."""
    x = torch.tensor([-1.0, -0.5, 0.0, 0.3, 1.0]).repeat(4)
    ls = torch.tensor([2.5, 30.0, 90.0, 200.0]).repeat_interleave(5)
    mean = torch.zeros_like(x)
    ls.requires_grad_(True)
    lp = lk.discretized_logistic_log_prob(x, mean, ls)
    assert torch.isfinite(lp).all()
    # float64 reference: interior bins ~ log(w * sigmoid'(centre)) = log(2/255) - ls - log 4 for huge scales,
    # edge bins -> log(1/2)
    x64, ls64 = x.double(), ls.detach().double()
    inv = torch.exp(-ls64)
    ref = torch.log(torch.sigmoid(inv * (x64 + 1 / 255)) - torch.sigmoid(inv * (x64 - 1 / 255)))
    ref = torch.where(ls64 >= 30, math.log(2 / 255) - ls64 - math.log(4.0), ref)  # float64 cancels there too
    ref = torch.where(x64 <= -0.999, torch.nn.functional.logsigmoid(inv * (x64 + 1 / 255)), ref)
    ref = torch.where(x64 >= 0.999, torch.nn.functional.logsigmoid(-inv * (x64 - 1 / 255)), ref)
    torch.testing.assert_close(lp.double(), ref, rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(lp.sum(), ls)
    assert torch.isfinite(g).all()
