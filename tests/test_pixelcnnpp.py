"""Tests of the PixelCNN++ plugin (tiny models, CPU)."""
from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchbench import Split, TrainContext
from benchbench.api import get_params
from benchbench_plugins import pixelcnnpp as pp
from benchbench_plugins.likelihoods import to_unit_range
from benchbench_plugins.pixelcnnpp import PixelCNNpp

TINY = dict(nr_resnet=1, nr_filters=8, nr_logistic_mix=3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions gain nothing from threads, and on a shared 2-core machine spinning OpenMP
    threads can slow them down a hundredfold: run this module single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(c=3, **kw):
    return PixelCNNpp(in_channels=c, **{**TINY, **kw})


def randomise(model: PixelCNNpp, seed: int = 1) -> PixelCNNpp:
    """Random weights with random g and b, so every parameter matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".g"):
                p.mul_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith(".b"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def images(n, c=3, h=8, w=8, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8))


# --------------------------------------------------------------------------- a literal re-implementation
# The reference (openai/pixel-cnn, pixel_cnn_pp/nn.py + model.py) written op by op with explicit pads,
# concatenations, 'VALID' transposed convolutions and crops, on the plugin's weights. The plugin folds
# pads into buffers and crops into transposed-conv padding; this checks that it computes the same function.


def _w(layer):
    v, g = layer.v.double(), layer.g.double()
    dims = (0, 2, 3) if layer.transposed else (1, 2, 3)
    norm = v.pow(2).sum(dims, keepdim=True).sqrt()
    return g.view(1, -1, 1, 1) * v / norm if layer.transposed else g.view(-1, 1, 1, 1) * v / norm


def _conv(layer, x, stride=1):
    return F.conv2d(x, _w(layer), layer.b.double(), stride)


def _down_shifted_conv(layer, x, stride=1):
    fh, fw = layer.v.shape[2:]
    return _conv(layer, F.pad(x, ((fw - 1) // 2, (fw - 1) // 2, fh - 1, 0)), stride)


def _down_right_shifted_conv(layer, x, stride=1):
    fh, fw = layer.v.shape[2:]
    return _conv(layer, F.pad(x, (fw - 1, 0, fh - 1, 0)), stride)


def _deconv_valid(layer, x):
    # TF conv2d_transpose 'VALID' with target shape [2H + fh - 1, 2W + fw - 1]
    y = F.conv_transpose2d(x, _w(layer), layer.b.double(), 2)
    fh, fw = layer.v.shape[2:]
    return F.pad(y, (0, 2 * x.shape[3] + fw - 1 - y.shape[3], 0, 2 * x.shape[2] + fh - 1 - y.shape[2]))


def _down_shifted_deconv(layer, x):
    y = _deconv_valid(layer, x)
    fh, fw = layer.v.shape[2:]
    return y[:, :, :y.shape[2] - fh + 1, (fw - 1) // 2:y.shape[3] - (fw - 1) // 2]


def _down_right_shifted_deconv(layer, x):
    y = _deconv_valid(layer, x)
    fh, fw = layer.v.shape[2:]
    return y[:, :, :y.shape[2] - fh + 1, :y.shape[3] - fw + 1]


def _concat_elu(x):
    return F.elu(torch.cat([x, -x], 1))


def _down_shift(x):
    return torch.cat([torch.zeros_like(x[:, :, :1]), x[:, :, :-1]], 2)


def _right_shift(x):
    return torch.cat([torch.zeros_like(x[:, :, :, :1]), x[:, :, :, :-1]], 3)


def _gated_resnet(block, x, a, conv):
    c1 = conv(block.conv1, _concat_elu(x))
    if a is not None:
        c1 = c1 + _conv(block.nin, _concat_elu(a))
    c2 = conv(block.conv2, _concat_elu(c1))  # eval: no dropout
    a_, b_ = c2.chunk(2, 1)
    return x + a_ * torch.sigmoid(b_)


def reference_forward(net, x):
    x = x.double()
    ds, drs = _down_shifted_conv, _down_right_shifted_conv
    x_pad = torch.cat([x, torch.ones_like(x[:, :1])], 1)
    u_list = [_down_shift(ds(net.u_init, x_pad))]
    ul_list = [_down_shift(ds(net.ul_init_down, x_pad)) + _right_shift(drs(net.ul_init_right, x_pad))]
    for s in range(3):
        if s:
            u_list.append(ds(net.downsize_u[s - 1], u_list[-1], stride=2))
            ul_list.append(drs(net.downsize_ul[s - 1], ul_list[-1], stride=2))
        for bu, bul in zip(net.up_u[s], net.up_ul[s]):
            u_list.append(_gated_resnet(bu, u_list[-1], None, ds))
            ul_list.append(_gated_resnet(bul, ul_list[-1], u_list[-1], drs))
    u, ul = u_list.pop(), ul_list.pop()
    for s in range(3):
        if s:
            u = _down_shifted_deconv(net.upsize_u[s - 1], u)
            ul = _down_right_shifted_deconv(net.upsize_ul[s - 1], ul)
        for bu, bul in zip(net.down_u[s], net.down_ul[s]):
            u = _gated_resnet(bu, u, u_list.pop(), ds)
            ul = _gated_resnet(bul, ul, torch.cat([u, ul_list.pop()], 1), drs)
    assert not u_list and not ul_list
    return _conv(net.out, F.elu(ul))


@pytest.mark.parametrize("c", [3, 1])
def test_network_matches_literal_reference(c):
    m = randomise(tiny(c, nr_resnet=2))
    x = to_unit_range(images(3, c, 8, 12).float())
    ref = reference_forward(m.net, x)
    got = m.network(x)
    assert got.shape == (3, m.net.n_out, 8, 12)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_fused_and_plain_paths_agree_with_gradients():
    m = randomise(tiny())
    x = images(2).float().requires_grad_(True)
    lp_fused = m.log_prob(x)
    g_fused = torch.autograd.grad(lp_fused.sum(), [x, *m.parameters()])
    m.net.set_fused(False)
    lp_plain = m.log_prob(x)
    g_plain = torch.autograd.grad(lp_plain.sum(), [x, *m.parameters()])
    torch.testing.assert_close(lp_fused, lp_plain, rtol=1e-6, atol=1e-3)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("route", ["loss", "net"])
def test_compiled_routes_give_the_eager_likelihood_and_gradients(route):
    """compile="loss" / "net" compute the same function as eager (torch.compile, tens of seconds)."""
    eager = randomise(tiny())
    comp = randomise(tiny(compile=route))
    x = images(2).float().requires_grad_(True)
    lp_e = eager.log_prob(x)
    g_e = torch.autograd.grad(lp_e.sum(), [x, *eager.parameters()])
    lp_c = comp.log_prob(x)
    if comp._compile_failed or comp._loss_compile_failed:
        pytest.skip("torch.compile is not usable here (the model fell back to eager)")
    g_c = torch.autograd.grad(lp_c.sum(), [x, *comp.parameters()])
    torch.testing.assert_close(lp_c, lp_e, rtol=1e-5, atol=1e-3)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_fused_ops_gradcheck_including_dropout():
    xs = [torch.randn(2, 3, 4, 5, dtype=torch.double, requires_grad=True),
          torch.randn(2, 2, 4, 5, dtype=torch.double, requires_grad=True)]

    def f(*a):  # dropout with a fixed mask: reseed before every evaluation
        torch.manual_seed(3)
        return pp._ConcatEluPad.apply((1, 1, 1), 0.5, *a)

    assert torch.autograd.gradcheck(f, xs)
    assert (f(*xs)[:, :, 1:, 1:-1] == 0).any()  # the mask really drops
    assert torch.autograd.gradcheck(lambda *a: pp._ConcatEluPad.apply((1, 1, 0), 0.0, *a), xs)
    x = torch.randn(2, 3, 4, 5, dtype=torch.double, requires_grad=True)
    c2 = torch.randn(2, 6, 4, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(pp._GatedResidual.apply, (x, c2))
    # conv on the concat_elu buffer, rebuilt in the backward pass (same dropout mask)
    w = torch.randn(4, 10, 2, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(4, dtype=torch.double, requires_grad=True)

    def g(w, b, *a):
        torch.manual_seed(4)
        return pp._ConcatEluConv.apply((1, 1, 1), 0.5, w, b, *a)

    assert torch.autograd.gradcheck(g, (w, b, *xs))
    torch.manual_seed(4)
    ref = F.conv2d(pp._ConcatEluPad.apply((1, 1, 1), 0.5, *xs), w, b)
    torch.testing.assert_close(g(w, b, *xs), ref)


# --------------------------------------------------------------------------- autoregressive property


@pytest.mark.parametrize("c", [3, 1])
def test_network_outputs_do_not_see_current_or_later_pixels(c):
    m = randomise(tiny(c))
    h = w = 8
    p = h * w
    x = (torch.rand(p, c, h, w, generator=torch.Generator().manual_seed(0)) * 255).requires_grad_(True)
    out = m.network(to_unit_range(x))  # eval mode: dropout off; the p images are independent
    pos = torch.arange(p)
    weights = torch.randn(out.shape[1], generator=torch.Generator().manual_seed(1))
    (out[pos, :, pos // w, pos % w] * weights).sum().backward()  # image b: parameters at raster position b
    g = x.grad.abs().sum(1).reshape(p, p)  # [output position, input position]
    at_or_after = torch.triu(torch.ones(p, p, dtype=torch.bool))
    assert g[at_or_after].max() == 0.0  # exactly
    # not vacuous: every pixel sees its left neighbour and the pixel above, and (almost) all the past
    # (a 1-block model does not reach 7 columns across on odd rows)
    for b in range(1, p):
        i, j = divmod(b, w)
        assert (j == 0 or g[b, b - 1] > 0) and (i == 0 or g[b, b - w] > 0)
    assert (g[~at_or_after] > 0).float().mean() > 0.95


def test_subpixel_conditionals_follow_rgb_order():
    """log p(x_c | ...) at (pixel, c) has zero gradient w.r.t. every sub-pixel after (pixel, c) in R,G,B raster order."""
    m = randomise(tiny(3))
    h = w = 4
    c = 3
    n = h * w * c
    x = (torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0)) * 255).requires_grad_(True)
    xu = to_unit_range(x)
    cond = pp.mixture_log_prob_subpixels(xu, m.network(xu), m.nr_logistic_mix)  # (n, C, H, W)
    torch.testing.assert_close(cond.sum(1), pp.mixture_log_prob_pixels(xu, m.network(xu), m.nr_logistic_mix))
    b = torch.arange(n)
    pix, ch = b // c, b % c
    cond[b, ch, pix // w, pix % w].sum().backward()
    g = x.grad.permute(0, 2, 3, 1).reshape(n, n)  # inputs in (row, col, channel) order
    after = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    assert g[after].abs().max() == 0.0
    assert (g.diagonal() != 0).all()  # the conditional does depend on its own value
    # G's mean is coupled to R, B's to R and G: those within-pixel gradients are non-zero
    for pixel in range(h * w):
        r, gg, bb = 3 * pixel, 3 * pixel + 1, 3 * pixel + 2
        assert g[gg, r] != 0 and g[bb, r] != 0 and g[bb, gg] != 0


def test_cropped_rows_give_the_same_outputs():
    """Causality in rows (used by sample()): the network on rows [0, k) equals the full output's first k rows."""
    m = randomise(tiny())
    x = to_unit_range(images(2).float())
    full = m.network(x)
    for k in range(1, 9):
        torch.testing.assert_close(m.network(x[:, :, :k]), full[:, :, :k], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- normalisation


def test_greyscale_pixel_sums_to_one_through_the_model():
    m = randomise(tiny(1))
    base = images(1, 1)
    batch = base.repeat(256, 1, 1, 1)
    i, j = 3, 5
    batch[:, 0, i, j] = torch.arange(256, dtype=torch.uint8)
    nll = m.score(batch)["nll_pixels"][:, i, j].double()
    assert abs(torch.exp(-nll).sum().item() - 1.0) < 1e-5


def test_rgb_pixel_sums_to_one_over_all_256_cubed_values():
    """Sum of p(r, g, b | past) over all 256**3 values of one pixel, through the model's likelihood code.

    The pixel's mixture parameters are the network output at that position, which does not depend on
    the pixel itself (tested above, exactly), so they are computed once and every one of the 16.7M
    (r, g, b) values is scored by ``mixture_log_prob_pixels`` (the function ``log_prob`` uses), in
    chunks of 16 red values. A few values are cross-checked against the full model path.
    """
    m = randomise(tiny(3, nr_logistic_mix=2))
    img = images(1)
    i, j = 2, 6
    with torch.no_grad():
        params = m.network(to_unit_range(img.float()))[:, :, i:i + 1, j:j + 1]  # (1, n_out, 1, 1)
        lv = torch.arange(256, dtype=torch.float32)
        gb = torch.cartesian_prod(lv, lv)  # (65536, 2): (g, b)
        total = 0.0
        for r0 in range(0, 256, 16):
            r = lv[r0:r0 + 16].repeat_interleave(len(gb))
            x = torch.stack([r, gb[:, 0].repeat(16), gb[:, 1].repeat(16)], 1).view(-1, 3, 1, 1)
            lp = pp.mixture_log_prob_pixels(to_unit_range(x), params.expand(len(x), -1, -1, -1), m.nr_logistic_mix)
            total += torch.exp(lp.double()).sum().item()
        assert abs(total - 1.0) < 1e-4
        # cross-check: the shortcut equals the model's own per-pixel NLL for a few values
        probe = img.repeat(4, 1, 1, 1)
        vals = torch.tensor([[0, 0, 0], [255, 255, 255], [17, 200, 3], [128, 127, 129]], dtype=torch.uint8)
        probe[:, :, i, j] = vals
        full = -m.score(probe)["nll_pixels"][:, i, j]
        short = pp.mixture_log_prob_pixels(to_unit_range(vals.float().view(4, 3, 1, 1)),
                                           params.expand(4, -1, -1, -1), m.nr_logistic_mix)[:, 0, 0]
        torch.testing.assert_close(full, short, rtol=1e-6, atol=1e-5)


# --------------------------------------------------------------------------- the loss against a float64 formula


def _slow_mixture_log_prob(x, out, k):
    """Direct transcription of the paper's eq. (2)-(3) with loops, in 60-digit mpmath arithmetic
    (so tails far below float64's range are still exact). x uint8 (N,C,H,W), out (N,n_out,H,W)."""
    with mpmath.workdps(60):
        return _slow_mixture_log_prob_mp(x, out, k)


def _slow_mixture_log_prob_mp(x, out, k):
    sig = lambda t: 1 / (1 + mpmath.exp(-t))  # noqa: E731
    n, c, h, w = x.shape
    res = np.zeros((n, h, w))
    for b in range(n):
        for i in range(h):
            for j in range(w):
                o = [mpmath.mpf(float(v)) for v in out[b, :, i, j]]
                logits = o[:k]
                rest = np.array(o[k:], dtype=object).reshape(c, -1, k)  # per channel: means, log_scales[, coeffs]
                xu = [mpmath.mpf(int(v)) / mpmath.mpf("127.5") - 1 for v in x[b, :, i, j]]
                norm = sum(mpmath.exp(t) for t in logits)
                mass = 0
                for comp in range(k):
                    prob = mpmath.exp(logits[comp]) / norm
                    for ch in range(c):
                        mu = rest[ch, 0, comp]
                        if c == 3 and ch == 1:
                            mu += mpmath.tanh(rest[0, 2, comp]) * xu[0]
                        if c == 3 and ch == 2:
                            mu += mpmath.tanh(rest[1, 2, comp]) * xu[0] + mpmath.tanh(rest[2, 2, comp]) * xu[1]
                        s = mpmath.exp(max(rest[ch, 1, comp], -7))
                        hi, lo = (xu[ch] - mu + mpmath.mpf(1) / 255) / s, (xu[ch] - mu - mpmath.mpf(1) / 255) / s
                        if x[b, ch, i, j] == 0:
                            p = sig(hi)
                        elif x[b, ch, i, j] == 255:
                            p = 1 - sig(lo)
                        elif lo > 0:  # upper tail: subtract the small complements instead
                            p = sig(-lo) - sig(-hi)
                        else:
                            p = sig(hi) - sig(lo)
                        prob *= p
                    mass += prob
                res[b, i, j] = float(mpmath.log(mass))
    return res


@pytest.mark.parametrize("c", [3, 1])
def test_loss_matches_slow_high_precision_formula(c):
    k = 4
    m = randomise(tiny(c, nr_logistic_mix=k))
    x = images(2, c, 4, 4, seed=5)
    x[0, :, 0, 0] = 0
    x[0, :, 0, 1] = 255
    with torch.no_grad():
        out = m.network(to_unit_range(x.float()))
        got = -m.score(x)["nll_pixels"]
    want = _slow_mixture_log_prob(x.numpy(), out.numpy(), k)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-6, atol=2e-5)
    # random parameter tensors, incl. log-scales below the -7 clamp and large coupling coefficients
    gen = torch.Generator().manual_seed(7)
    out = torch.randn(out.shape, generator=gen) * 2.0
    nm = out[:, k:].reshape(2, c, -1, k, 4, 4)
    nm[:, :, 0] = torch.rand(nm[:, :, 0].shape, generator=gen) * 2.4 - 1.2  # means near the data
    nm[:, :, 1] = torch.rand(nm[:, :, 1].shape, generator=gen) * 6.0 - 8.5  # log-scales in [-8.5, -2.5]
    got = pp.mixture_log_prob_pixels(to_unit_range(x.float()), out, k)
    want = _slow_mixture_log_prob(x.numpy(), out.numpy(), k)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("c", [3, 1])
def test_no_nan_or_inf_on_extreme_inputs(c):
    m = randomise(tiny(c))
    x = torch.cat([torch.zeros(1, c, 8, 8, dtype=torch.uint8), torch.full((1, c, 8, 8), 255, dtype=torch.uint8),
                   images(2, c)])
    s = m.score(x)
    for v in s.values():
        assert torch.isfinite(v).all()
    xf = x.float().requires_grad_(True)
    m.log_prob(xf).sum().backward()
    assert torch.isfinite(xf.grad).all()


@pytest.mark.parametrize("c", [3, 1])
def test_finite_with_absurd_parameters(c):
    """A diverging optimiser can produce huge log-scales / means; values and gradients stay finite."""
    k = 2
    x = torch.cat([torch.zeros(1, c, 2, 2), torch.full((1, c, 2, 2), 255.0), images(2, c, 2, 2).float()])
    out = torch.randn(4, k * (1 + c * (3 if c == 3 else 2)), 2, 2)
    p = out[:, k:].view(4, c, -1, k, 2, 2)
    p[:, :, 0, 0] = 1e6
    p[:, :, 0, 1] = -1e6
    p[:, :, 1, 0] = 113.0
    p[:, :, 1, 1] = -50.0
    out.requires_grad_(True)
    lp = pp.mixture_log_prob_pixels(to_unit_range(x), out, k)
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(out.grad).all()


# --------------------------------------------------------------------------- training, state, resume


def _constant_split(n=48, c=3, size=8):
    vals = np.random.default_rng(0).integers(0, 256, (n, c, 1, 1), dtype=np.uint8)
    return Split(np.broadcast_to(vals, (n, c, size, size)).copy())


@pytest.fixture(scope="module")
def trained():
    # a higher lr than the reference's 1e-3 and a short EMA, so that 60 steps show
    m = tiny(3, nr_filters=16, batch_size=16, init_batch_size=16, steps=60, log_every=15, dropout=0.0,
             lr=0.005, polyak_decay=0.9)
    ctx = TrainContext(seed=0, progress=False)
    m.fit(_constant_split(), ctx)
    return m, ctx


def test_training_on_constant_images_beats_noise(trained):
    m, ctx = trained
    assert not m.training
    const = torch.from_numpy(_constant_split(8).images)
    noise = images(8)
    bpd_const = m.score(const)["bpd"].mean().item()
    bpd_noise = m.score(noise)["bpd"].mean().item()
    assert bpd_const < 7.0 and bpd_const < 0.7 * bpd_noise, (bpd_const, bpd_noise)
    assert [r["step"] for r in ctx.curve] == [15, 30, 45, 60]
    assert ctx.curve[-1]["train_bpd"] < ctx.curve[0]["train_bpd"]


def test_batch_size_does_not_change_per_image_results(trained):
    m, _ = trained
    x = images(7)
    whole = m.score(x)
    for bs in (1, 3):
        parts = [m.score(x[i:i + bs]) for i in range(0, 7, bs)]
        for key in ("log_prob", "bpd", "nll_pixels"):
            torch.testing.assert_close(torch.cat([p[key] for p in parts]), whole[key], rtol=1e-6, atol=1e-4)


def test_state_dict_round_trip(trained):
    m, _ = trained
    params = get_params(m)
    assert all(isinstance(v, (int, float, bool, type(None))) for v in params.values())
    m2 = PixelCNNpp(**params)
    m2.load_state_dict(m.state_dict())
    m2.eval()
    x = images(3)
    torch.testing.assert_close(m2.score(x)["log_prob"], m.score(x)["log_prob"], rtol=0, atol=0)
    assert m2.image_shape.tolist() == [3, 8, 8]
    s = m2.sample(2, generator=torch.Generator().manual_seed(0))
    assert s.dtype == torch.uint8 and s.shape == (2, 3, 8, 8)


class _Interrupt(Exception):
    pass


class _InterruptingContext(TrainContext):
    def __init__(self, at_step, **kw):
        super().__init__(**kw)
        self.at_step = at_step

    def log(self, **metrics):
        super().log(**metrics)
        if metrics.get("step") == self.at_step:
            raise _Interrupt


def test_resume_after_interruption_gives_identical_weights(tmp_path):
    kw = dict(nr_filters=8, batch_size=8, init_batch_size=8, steps=8, checkpoint_every=4, log_every=2)
    data = Split(images(20).numpy())
    straight_ctx = TrainContext(seed=3, progress=False, work_dir=tmp_path / "a")
    straight = tiny(**kw).fit(data, straight_ctx)  # dropout 0.5: the RNG must be replayed too
    ctx1 = _InterruptingContext(4, seed=3, progress=False, work_dir=tmp_path / "b")
    with pytest.raises(_Interrupt):
        tiny(**kw).fit(data, ctx1)
    ctx2 = TrainContext(seed=3, progress=False, work_dir=tmp_path / "b")
    resumed = tiny(**kw).fit(data, ctx2)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert ctx2.curve == straight_ctx.curve
    # a finished run is a no-op to fit again
    again = tiny(**kw).fit(data, TrainContext(seed=3, progress=False, work_dir=tmp_path / "b"))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), straight.state_dict().values()))
    # and the seed matters
    other = tiny(**kw).fit(data, TrainContext(seed=4, progress=False))
    assert not torch.equal(other.net.out.v, straight.net.out.v)


def test_data_dependent_init_normalises_the_output_layer():
    m = tiny(1, dropout=0.0, init_batch_size=16, nr_filters=8)
    data = to_unit_range(torch.from_numpy(_constant_split(16, 1).images).float()) * 0.5
    m.net.set_data_init(True)
    with torch.no_grad():
        m.net(data)
    m.net.set_data_init(False)
    with torch.no_grad():
        out = m.net(data)  # same inputs, same layers: every layer's output is now normalised
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(out.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std((0, 2, 3), unbiased=False), torch.ones(out.shape[1]), atol=1e-3, rtol=0)


def test_sampling_is_seeded(trained):
    m, _ = trained
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a, b = m.sample(3, generator=g()), m.sample(3, generator=g())
    assert torch.equal(a, b) and a.shape == (3, 3, 8, 8) and a.dtype == torch.uint8
    assert not torch.equal(a, m.sample(3, generator=torch.Generator().manual_seed(6)))
    assert m.score(a)["bpd"].mean() < m.score(images(3))["bpd"].mean()


@pytest.mark.parametrize("c", [1, 3])
def test_sampling_draws_from_the_model_distribution(c):
    """First pixel (1x1 images): the histogram of 20000 samples matches the model's own 256-value pmf
    (greyscale), or its red marginal and the pmf of green given the most frequent red value (RGB)."""
    m = randomise(tiny(c, nr_logistic_mix=2))
    n = 20000
    s = m.sample(n, generator=torch.Generator().manual_seed(0), image_size=(1, 1))[:, :, 0, 0].long()
    lv = torch.arange(256, dtype=torch.float32)
    with torch.no_grad():
        out = m.network(torch.zeros(1, c, 1, 1)).expand(256, -1, -1, -1)  # the first pixel sees no context

        def pmf(x):  # per-channel conditionals of 256 candidate pixels x (256, C)
            return pp.mixture_log_prob_subpixels(to_unit_range(x.view(256, c, 1, 1)), out, 2)[:, :, 0, 0].exp()

    def tv(samples, probs):
        hist = torch.bincount(samples, minlength=256).double() / len(samples)
        return 0.5 * (hist - probs.double()).abs().sum().item()

    first = pmf(lv.view(256, 1).expand(256, c).contiguous())[:, 0]
    assert abs(first.double().sum().item() - 1) < 1e-5
    assert tv(s[:, 0], first) < 0.06  # E[TV] for 20000 draws over <= 256 bins is ~0.03
    if c == 3:
        r = int(torch.mode(s[:, 0]).values)
        cand = torch.stack([torch.full((256,), float(r)), lv, torch.zeros(256)], 1)
        green = pmf(cand)[:, 1]
        sel = s[s[:, 0] == r, 1]
        assert len(sel) > 300 and tv(sel, green) < 0.25


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="in_channels"):
        tiny(3).fit(Split(images(4, 1).numpy()), TrainContext(progress=False))
    with pytest.raises(ValueError, match="in_channels"):
        tiny(3).log_prob(images(1, 1).float())


def test_registered_as_plugin():
    assert pp.register_models() == {"pixelcnnpp": PixelCNNpp}
    assert PixelCNNpp.provides == ("log_prob", "bpd", "nll_pixels")


def test_steps_or_epochs():
    assert tiny(steps=7)._num_steps(100) == 7
    assert tiny(epochs=3, batch_size=16)._num_steps(100) == 3 * 6  # the last partial batch is dropped


def test_mutation_replaces_the_stated_share_with_uniform_values():
    torch.manual_seed(0)
    x = torch.full((64, 3, 32, 32), 7.0)
    y = pp.mutate(x, 0.2)
    changed = (y != x).float().mean().item()
    assert abs(changed - 0.2 * 255 / 256) < 0.01  # a draw equal to the old value leaves it unchanged
    vals = y[y != x]
    assert vals.min() >= 0 and vals.max() <= 255 and torch.equal(vals, vals.round())
    assert abs(vals.mean().item() - 127.5) < 3.0
    assert torch.equal(pp.mutate(x, 0.0), x)


def test_l2_adds_its_gradient_to_the_summed_nll(monkeypatch):
    seen = []
    monkeypatch.setattr(pp, "_adam_update", lambda params, grads, *a, **k: seen.append([g.clone() for g in grads]))
    x = torch.randint(0, 256, (3, 1, 8, 8)).float()
    grads = {}
    for l2 in (0.0, 0.01):
        m = PixelCNNpp(in_channels=1, nr_resnet=1, nr_filters=8, nr_logistic_mix=2, dropout=0.0, l2=l2)
        torch.manual_seed(0)
        pp.PixelCNNppTrainer(m).train_step(x)
        grads[l2] = seen[-1]
    params = [p.detach() for p in m.parameters() if p.requires_grad]
    for g0, g1, p in zip(grads[0.0], grads[0.01], params):
        torch.testing.assert_close(g1 - g0, 2 * 0.01 * len(x) * p, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="mutation_rate"):
        PixelCNNpp(mutation_rate=1.5)
