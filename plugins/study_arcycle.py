"""ARCycle (the paper's §2, Figures 1 and 2): CycleGAN's discriminators replaced by a PixelCNN++'s NLL.

Paper (§2): two mappings F: X -> Y and G: Y -> X are trained with CycleGAN's cycle
consistency loss (eq. 1) plus, instead of the adversarial losses, the negative
log-likelihood of each translated image under an autoregressive model (a PixelCNN++)
trained on real images of the target domain (eq. 2); the objective is
``L_NLL(P_Y, F) + L_NLL(P_X, G) + beta * L_cyc`` (eq. 3), beta "so that L_NLL is on the same
order as the reconstruction loss". X = colored-MNIST, Y = MNIST. Findings: reconstructions
become perfect while the translations collapse to a degenerate, line-like pattern
(Figure 1a, Figure 2); the NLL of the translations falls from ~8 to ~3 bits/dim, far from
the ~0.8 of real MNIST; optimising the NLL alone (1b), blurring the translations (1d) or
starting from a CycleGAN's F and G (1c) do not help -- the last is even corrupted by faint
background lines.

What this study does
--------------------
``arcycle(x_data, y_data, x_likelihood, y_likelihood, split="train", eval_split="test",
ablations=[cyclegan, nll_cycle, nll, blur, cyclegan_init], ngf=16, n_blocks=3, ndf=16,
d_layers=2, batch_size=16, steps=300, cyclegan_steps=300, lr=2e-4, beta="auto",
lambda_cycle=10, pool_size=50, blur_sigma=1.0, log_every=25, n_eval=32, n_figure=4)``.

* **Domains**: ``x_data`` (X, e.g. ``colored_mnist``, 3 channels) and ``y_data`` (Y, e.g.
  ``mnist``, 1 channel): suite data set aliases; training minibatches are drawn from their
  ``split`` *independently* (unpaired), evaluation uses the first ``n_eval`` images of each
  ``eval_split``. The channel counts may differ (F maps C_X -> C_Y channels, G the reverse);
  the height and width must agree.
* **Likelihoods**: ``x_likelihood`` = P_X and ``y_likelihood`` = P_Y, suite models (a
  ``pixelcnnpp`` trained on the domain's training split). Their parameters are frozen; only
  their input gets gradients.
* **Generators**: CycleGAN's ResNet generator (Zhu et al. 2017; Johnson et al. 2016):
  c7s1-ngf, d(2ngf), d(4ngf) (3x3 stride-2 convolutions), ``n_blocks`` residual blocks
  (two 3x3 convolutions), u(2ngf), u(ngf) (3x3 stride-2 transposed convolutions),
  c7s1-C_out, tanh; instance norm (no affine, no running statistics), reflection padding,
  weights ~ N(0, 0.02). Images live on [-1, 1] (pixel level k <-> k / 127.5 - 1).
* **Continuous relaxation**: a translation t in (-1, 1) (tanh) becomes the float image
  ``x = (t + 1) * 127.5`` in (0, 255) and is scored with the likelihood's ``log_prob(x)``,
  which gives every value x the probability mass of the one-level bin [x - 1/2, x + 1/2]
  (the discretized logistic mixture evaluated at a non-integer point; values within 0.1275
  levels of 0 or 255, i.e. beyond -/+0.999 on the [-1, 1] scale, take the edge bin's whole
  tail, as in PixelCNN++'s reference). This is differentiable in x, hence in F and G. The
  NLL term of eq. 2 is this relaxed NLL in **bits/dim** (-log2 p(x) / D, mean over the
  batch); the cycle term of eq. 1 is the mean absolute error per dimension on the [-1, 1]
  scale (CycleGAN's L1), summed over the two directions like the NLL terms.
* **beta** (``"auto"`` or a positive number): ``"auto"`` sets beta = (NLL_X + NLL_Y) /
  (L1_X + L1_Y) of the freshly initialised generators on the first training minibatch,
  i.e. beta * L_cyc equals L_NLL at the start (the paper's "same order"); the same beta
  serves every ablation that has a cycle term (row ``beta``).
* **Ablations** (``ablations``, run in this order; all but ``cyclegan_init`` from the same
  seeded initialisation, the four ARCycle ones with the same minibatch sequence (CycleGAN
  has its own), Adam(lr, betas (0.5, 0.999)), ``steps`` steps each):

  - ``cyclegan``: the baseline, CycleGAN itself: least-squares GAN losses with a
    PatchGAN discriminator per domain (``d_layers`` stride-2 4x4 convolutions from
    ``ndf`` channels, instance norm after the first, LeakyReLU 0.2, then a stride-1 4x4
    convolution and a 1-channel 4x4 output; each output is the realness of one patch),
    cycle weight ``lambda_cycle`` (10), a history pool of ``pool_size`` generated images
    per discriminator (each entry returned with probability 1/2), the discriminators'
    loss halved, Adam(lr, (0.5, 0.999)) for all four networks, ``cyclegan_steps`` steps,
    constant learning rate. No identity loss (the domains' channel counts differ).
  - ``nll_cycle``: eq. 3, NLL + beta * cycle (Figure 1a, Figure 2);
  - ``nll``: NLL only (Figure 1b);
  - ``blur``: eq. 3 with every translation blurred by a Gaussian of standard deviation
    ``blur_sigma`` pixels (depthwise convolution, reflection padding, differentiable)
    before it is scored; the blurred image *is* the translation: it is what G (or F)
    reconstructs from, what the rows score and what the figures show, so no
    high-frequency pattern can pass through it (Figure 1d);
  - ``cyclegan_init``: eq. 3 starting from the trained ``cyclegan`` baseline's F and G
    (Figure 1c); needs ``cyclegan`` in ``ablations``.

Rows (``model`` = the ablation; ``in_distribution`` = ``<x_data><-><y_data>``;
``eval_set`` = the direction, ``<x_data>-><y_data>`` for F on X's eval images or
``<y_data>-><x_data>`` for G on Y's; ``detector`` = ``step=<N>``, every ``log_every``
steps, step 0 and the last; ``n`` = ``n_eval``):

* ``bpd``: bits/dim of the **quantised** translation (rounded to the 256 levels) under the
  target domain's likelihood, the package's discrete bits/dim;
* ``bpd_relaxed``: bits/dim of the continuous translation, the quantity the NLL term
  optimises;
* ``l1_cycle``: mean |reconstruction - source| per dimension on the [-1, 1] scale (the
  cycle loss), e.g. |G(F(x)) - x| for ``<x_data>-><y_data>``;
* ``l1_cycle_quantised``: the same, reconstructing from the quantised translation (a
  code hidden below one pixel level does not survive this).

And without a step: ``beta`` (per ablation with a cycle term; ``eval_set`` =
``<x_data><-><y_data>``) and ``bpd`` of the real ``eval_split`` images of each domain under
its own likelihood (``model`` = the likelihood alias, ``eval_set`` = ``<data>:<split>``): the
bits/dim a realistic translation would get.

Figures, under ``figures/``: ``<alias>.png`` (Figure 1): per ablation, the final columns
real X / translated F(x) / reconstructed G(F(x)) for the first ``n_figure`` evaluation
images; ``<alias>_iterations.png`` (Figure 2): per ablation, the translations and
reconstructions of those images (stacked in each cell) at every logged step (at most 10,
evenly spaced), titled with the translation's bits/dim.
"""
from __future__ import annotations

import copy
import math
import zlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn

from benchbench import Study, hookimpl
from benchbench.registry import suggest, unknown
from benchbench.suite import check_split

ABLATIONS = ("cyclegan", "nll_cycle", "nll", "blur", "cyclegan_init")
LN2 = math.log(2.0)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _seed(seed: int, name: str) -> int:
    """A 63-bit seed from the run seed and a name (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1, np.uint64)[0] >> 1)


# --------------------------------------------------------------------------- networks


def _norm(c: int) -> nn.Module:
    return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + [reflpad 1, conv3, IN, ReLU, reflpad 1, conv3, IN](x) (CycleGAN, no dropout)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), _norm(c), nn.ReLU(True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), _norm(c))

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator: c7s1-ngf, d2ngf, d4ngf, n_blocks x R4ngf, u2ngf, ungf, c7s1-out, tanh."""

    def __init__(self, in_channels: int, out_channels: int, ngf: int = 16, n_blocks: int = 3):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), _norm(ngf), nn.ReLU(True)]
        for m in (1, 2):  # two stride-2 down-sampling convolutions
            layers += [nn.Conv2d(ngf * m, ngf * m * 2, 3, stride=2, padding=1), _norm(ngf * m * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(int(n_blocks))]
        for m in (4, 2):  # two stride-2 up-sampling (transposed) convolutions
            layers += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, stride=2, padding=1, output_padding=1),
                       _norm(ngf * m // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017) at small scale: C_ndf (no norm), d_layers - 1 more stride-2 C, a stride-1 C, 1-channel conv."""

    def __init__(self, in_channels: int, ndf: int = 16, n_layers: int = 2):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        c = ndf
        for _ in range(1, int(n_layers)):
            layers += [nn.Conv2d(c, c * 2, 4, stride=2, padding=1), _norm(c * 2), nn.LeakyReLU(0.2, True)]
            c *= 2
        layers += [nn.Conv2d(c, c * 2, 4, stride=1, padding=1), _norm(c * 2), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(c * 2, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """CycleGAN's 'normal' init: conv weights ~ N(0, 0.02), biases 0 (seeded by ``generator``)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * 0.02)
                if m.bias is not None:
                    m.bias.zero_()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian blur (standard deviation ``sigma`` pixels, radius ceil(2 sigma)), reflection padding."""
    r = max(1, int(math.ceil(2.0 * float(sigma))))
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = Fn.pad(x, (r, r, r, r), mode="reflect")
    x = Fn.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return Fn.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def to_pixels(t: torch.Tensor) -> torch.Tensor:
    """Generator scale [-1, 1] -> float pixel levels [0, 255] (the continuous relaxation)."""
    return (t + 1.0) * 127.5


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 or float levels [0, 255] -> [-1, 1]."""
    return x.float() / 127.5 - 1.0


def quantise(t: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the nearest of the 256 levels, as float levels."""
    return to_pixels(t).round().clamp(0.0, 255.0)


def relaxed_bpd(likelihood, t: torch.Tensor) -> torch.Tensor:
    """Per-image bits/dim (N,) of translations ``t`` on [-1, 1] under ``likelihood``'s continuous relaxation."""
    d = int(np.prod(t.shape[1:]))
    return -likelihood.log_prob(to_pixels(t)) / (d * LN2)


class ImagePool:
    """CycleGAN's history of generated images: with probability 1/2 return a stored image and keep the new one."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.images = int(size), rng, []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img)
                out.append(img)
            elif self.rng.random() > 0.5:
                j = int(self.rng.integers(self.size))
                out.append(self.images[j].clone())
                self.images[j] = img
            else:
                out.append(img)
        return torch.cat(out, 0)


# --------------------------------------------------------------------------- the study


class ARCycle(Study):
    """§2 / Figures 1-2: ARCycle (cycle loss + PixelCNN++ NLL) and its ablations, beside a CycleGAN baseline."""

    def __init__(self, x_data: str, y_data: str, x_likelihood: str, y_likelihood: str, split: str = "train",
                 eval_split: str = "test", ablations: list[str] = ABLATIONS, ngf: int = 16, n_blocks: int = 3,
                 ndf: int = 16, d_layers: int = 2, batch_size: int = 16, steps: int = 300, cyclegan_steps: int = 300,
                 lr: float = 2e-4, beta: float | str = "auto", lambda_cycle: float = 10.0, pool_size: int = 50,
                 blur_sigma: float = 1.0, log_every: int = 25, n_eval: int = 32, n_figure: int = 4):
        self.x_data = x_data
        self.y_data = y_data
        self.x_likelihood = x_likelihood
        self.y_likelihood = y_likelihood
        self.split = split
        self.eval_split = eval_split
        self.ablations = ablations
        self.ngf = ngf
        self.n_blocks = n_blocks
        self.ndf = ndf
        self.d_layers = d_layers
        self.batch_size = batch_size
        self.steps = steps
        self.cyclegan_steps = cyclegan_steps
        self.lr = lr
        self.beta = beta
        self.lambda_cycle = lambda_cycle
        self.pool_size = pool_size
        self.blur_sigma = blur_sigma
        self.log_every = log_every
        self.n_eval = n_eval
        self.n_figure = n_figure

    # ------------------------------------------------------------------ validation

    def check(self, suite) -> Iterator[tuple[str, str]]:
        for key in ("x_likelihood", "y_likelihood"):
            alias = getattr(self, key)
            if alias not in suite.models:
                yield key, unknown("model", alias, suite.models)
                continue
            spec = suite.models[alias]
            provides = getattr(suite.factory(spec), "provides", ())
            if "bpd" not in provides:
                yield key, f"model {alias!r} ({spec.use}) has no likelihood (provides {list(provides)})"
            elif spec.params.get("head") == "categorical":
                yield key, f"model {alias!r} has a categorical head: its likelihood is not differentiable in the pixels"
        for key in ("x_data", "y_data"):
            alias = getattr(self, key)
            if not suite.has("datasets", alias):
                yield key, f"unknown dataset {alias!r}{suggest(str(alias), suite.datasets)}"
            else:
                yield from check_split(suite, alias, self.split, "split")
                yield from check_split(suite, alias, self.eval_split, "eval_split")
        if not isinstance(self.ablations, (list, tuple)) or not self.ablations:
            yield "ablations", f"must be a non-empty list of {', '.join(ABLATIONS)}; got {self.ablations!r}"
        else:
            for i, a in enumerate(self.ablations):
                if a not in ABLATIONS:
                    yield f"ablations[{i}]", f"unknown ablation {a!r}{suggest(str(a), ABLATIONS)}; known: {', '.join(ABLATIONS)}"
                elif list(self.ablations).index(a) != i:
                    yield f"ablations[{i}]", f"{a!r} is listed twice"
            if "cyclegan_init" in self.ablations and "cyclegan" not in self.ablations:
                yield "ablations", "'cyclegan_init' starts from the trained CycleGAN: list 'cyclegan' too"
        for key in ("ngf", "n_blocks", "ndf", "d_layers", "batch_size", "steps", "cyclegan_steps", "log_every",
                    "n_eval", "n_figure"):
            v = getattr(self, key)
            if not _positive_int(v):
                yield key, f"must be a positive integer, got {v!r}"
        if _positive_int(self.n_eval) and _positive_int(self.n_figure) and self.n_figure > self.n_eval:
            yield "n_figure", f"{self.n_figure} exceeds n_eval = {self.n_eval} (the figures show evaluation images)"
        if isinstance(self.pool_size, bool) or not isinstance(self.pool_size, int) or self.pool_size < 0:
            yield "pool_size", f"must be a non-negative integer (0 = no pool), got {self.pool_size!r}"
        for key in ("lr", "lambda_cycle", "blur_sigma"):
            v = getattr(self, key)
            if not _positive_number(v):
                yield key, f"must be a positive number, got {v!r}"
        if self.beta != "auto" and not _positive_number(self.beta):
            yield "beta", f"must be 'auto' or a positive number, got {self.beta!r}"

    # ------------------------------------------------------------------ pieces

    def _generators(self, cx: int, cy: int, seed: int) -> tuple[nn.Module, nn.Module]:
        g = torch.Generator().manual_seed(seed)
        f_net, g_net = ResnetGenerator(cx, cy, self.ngf, self.n_blocks), ResnetGenerator(cy, cx, self.ngf, self.n_blocks)
        init_weights(f_net, g)
        init_weights(g_net, g)
        return f_net, g_net

    def _translate(self, net: nn.Module, x: torch.Tensor, blur: bool) -> torch.Tensor:
        t = net(x)
        return gaussian_blur(t, self.blur_sigma) if blur else t

    @torch.no_grad()
    def _evaluate(self, f_net, g_net, px, py, ex, ey, blur: bool) -> dict:
        """Metrics on the fixed evaluation images (in chunks) and the first n_figure translations/reconstructions."""
        out: dict[str, list] = {k: [] for k in ("xy_bpd", "xy_bpdr", "xy_l1", "xy_l1q", "yx_bpd", "yx_bpdr", "yx_l1", "yx_l1q")}
        figs = None
        bs = max(2 * int(self.batch_size), int(self.n_figure))
        for i in range(0, len(ex), bs):
            xb, yb = ex[i:i + bs], ey[i:i + bs]
            for tag, src, fwd, back, lik in (("xy", xb, f_net, g_net, py), ("yx", yb, g_net, f_net, px)):
                t = self._translate(fwd, src, blur)
                q = quantise(t)
                d = int(np.prod(t.shape[1:]))
                out[f"{tag}_bpd"].append((-lik.log_prob(q) / (d * LN2)).cpu())
                out[f"{tag}_bpdr"].append(relaxed_bpd(lik, t).cpu())
                rec = back(t)
                out[f"{tag}_l1"].append((rec - src).abs().flatten(1).mean(1).cpu())
                out[f"{tag}_l1q"].append((back(to_unit(q)) - src).abs().flatten(1).mean(1).cpu())
                if tag == "xy" and figs is None:
                    k = int(self.n_figure)
                    figs = {"translation": q[:k].to(torch.uint8).cpu().numpy(),
                            "reconstruction": quantise(rec[:k]).to(torch.uint8).cpu().numpy()}
        res = {k: torch.cat(v).double().numpy() for k, v in out.items()}
        res.update(figs)
        return res

    def _rows(self, ablation: str, step: int, ev: dict) -> Iterator[dict]:
        base = {"model": ablation, "in_distribution": f"{self.x_data}<->{self.y_data}", "detector": f"step={step}"}
        names = {"bpd": "bpd", "bpdr": "bpd_relaxed", "l1": "l1_cycle", "l1q": "l1_cycle_quantised"}
        for tag, label in (("xy", f"{self.x_data}->{self.y_data}"), ("yx", f"{self.y_data}->{self.x_data}")):
            for short, metric in names.items():
                v = ev[f"{tag}_{short}"]
                yield {**base, "eval_set": label, "metric": metric, "value": float(v.mean()), "n": len(v)}

    def _log_steps(self, total: int) -> list[int]:
        return sorted(set(range(0, int(total) + 1, int(self.log_every))) | {0, int(total)})

    def _train_arcycle(self, ablation, f_net, g_net, px, py, X, Y, ex, ey, beta, seed, device, trace) -> Iterator[dict]:
        """Adam on eq. 3 (or its ablation) for ``steps`` steps; yields rows at the logged steps, fills ``trace``."""
        blur = ablation == "blur"
        use_cycle = ablation != "nll"
        params = list(f_net.parameters()) + list(g_net.parameters())
        opt = torch.optim.Adam(params, lr=float(self.lr), betas=(0.5, 0.999))
        rng = np.random.default_rng(_seed(seed, "arcycle batches"))  # the same minibatches for every ablation
        log_steps = self._log_steps(self.steps)
        bs = int(self.batch_size)
        for step in range(int(self.steps) + 1):
            if step in log_steps:
                ev = self._evaluate(f_net, g_net, px, py, ex, ey, blur)
                trace.append((step, ev))
                yield from self._rows(ablation, step, ev)
            if step == int(self.steps):
                break
            xb = to_unit(X[torch.from_numpy(rng.integers(0, len(X), bs)).to(device)])
            yb = to_unit(Y[torch.from_numpy(rng.integers(0, len(Y), bs)).to(device)])
            fx = self._translate(f_net, xb, blur)
            gy = self._translate(g_net, yb, blur)
            loss = relaxed_bpd(py, fx).mean() + relaxed_bpd(px, gy).mean()
            if use_cycle:
                cyc = (g_net(fx) - xb).abs().mean() + (f_net(gy) - yb).abs().mean()
                loss = loss + float(beta) * cyc
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def _train_cyclegan(self, f_net, g_net, px, py, X, Y, ex, ey, seed, device, trace) -> Iterator[dict]:
        """CycleGAN (LSGAN, PatchGAN, lambda_cycle, image pools) for ``cyclegan_steps``; rows at the logged steps."""
        cx, cy = X.shape[1], Y.shape[1]
        gen = torch.Generator().manual_seed(_seed(seed, "cyclegan discriminators"))
        d_x = PatchDiscriminator(cx, self.ndf, self.d_layers)
        d_y = PatchDiscriminator(cy, self.ndf, self.d_layers)
        init_weights(d_x, gen)
        init_weights(d_y, gen)
        d_x, d_y = d_x.to(device), d_y.to(device)
        opt_g = torch.optim.Adam(list(f_net.parameters()) + list(g_net.parameters()), lr=float(self.lr), betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(list(d_x.parameters()) + list(d_y.parameters()), lr=float(self.lr), betas=(0.5, 0.999))
        rng = np.random.default_rng(_seed(seed, "cyclegan batches"))
        pool_x = ImagePool(self.pool_size, np.random.default_rng(_seed(seed, "cyclegan pool x")))
        pool_y = ImagePool(self.pool_size, np.random.default_rng(_seed(seed, "cyclegan pool y")))
        lam = float(self.lambda_cycle)
        log_steps = self._log_steps(self.cyclegan_steps)
        bs = int(self.batch_size)

        def mse(pred, target: float):
            return ((pred - target) ** 2).mean()

        for step in range(int(self.cyclegan_steps) + 1):
            if step in log_steps:
                ev = self._evaluate(f_net, g_net, px, py, ex, ey, False)
                trace.append((step, ev))
                yield from self._rows("cyclegan", step, ev)
            if step == int(self.cyclegan_steps):
                break
            xb = to_unit(X[torch.from_numpy(rng.integers(0, len(X), bs)).to(device)])
            yb = to_unit(Y[torch.from_numpy(rng.integers(0, len(Y), bs)).to(device)])
            # generators: fool both discriminators and reconstruct (discriminators frozen for this step)
            for p in list(d_x.parameters()) + list(d_y.parameters()):
                p.requires_grad_(False)
            fake_y, fake_x = f_net(xb), g_net(yb)
            loss_g = mse(d_y(fake_y), 1.0) + mse(d_x(fake_x), 1.0)
            loss_g = loss_g + lam * ((g_net(fake_y) - xb).abs().mean() + (f_net(fake_x) - yb).abs().mean())
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            for p in list(d_x.parameters()) + list(d_y.parameters()):
                p.requires_grad_(True)
            # discriminators: real -> 1, (pooled) fake -> 0, halved
            old_y, old_x = pool_y.query(fake_y.detach()), pool_x.query(fake_x.detach())
            loss_d = 0.5 * (mse(d_y(yb), 1.0) + mse(d_y(old_y), 0.0)) + 0.5 * (mse(d_x(xb), 1.0) + mse(d_x(old_x), 0.0))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

    @torch.no_grad()
    def _auto_beta(self, f_net, g_net, px, py, X, Y, seed, device) -> float:
        """(NLL_X + NLL_Y) / (L1_X + L1_Y) of the initial generators on the first training minibatch."""
        rng = np.random.default_rng(_seed(seed, "arcycle batches"))
        bs = int(self.batch_size)
        xb = to_unit(X[torch.from_numpy(rng.integers(0, len(X), bs)).to(device)])
        yb = to_unit(Y[torch.from_numpy(rng.integers(0, len(Y), bs)).to(device)])
        fx, gy = f_net(xb), g_net(yb)
        nll = float(relaxed_bpd(py, fx).mean() + relaxed_bpd(px, gy).mean())
        cyc = float((g_net(fx) - xb).abs().mean() + (f_net(gy) - yb).abs().mean())
        return nll / max(cyc, 1e-8)

    # ------------------------------------------------------------------ run

    def run(self, ctx) -> Iterator[dict]:
        device = torch.device(ctx.device)
        px, py = ctx.model(self.x_likelihood), ctx.model(self.y_likelihood)
        xs, ys = ctx.load(self.x_data, self.split), ctx.load(self.y_data, self.split)
        exs, eys = ctx.load(self.x_data, self.eval_split), ctx.load(self.y_data, self.eval_split)
        cx, cy = xs.images.shape[1], ys.images.shape[1]
        if xs.images.shape[2:] != ys.images.shape[2:]:
            raise ValueError(f"x_data {self.x_data!r} images are {xs.images.shape[2:]} but y_data {self.y_data!r} images "
                             f"are {ys.images.shape[2:]}: the two domains need the same height and width")
        for alias, lik, c, data in ((self.x_likelihood, px, cx, self.x_data), (self.y_likelihood, py, cy, self.y_data)):
            want = getattr(lik, "in_channels", c)
            if int(want) != int(c):
                raise ValueError(f"likelihood {alias!r} models {want}-channel images but {data!r} has {c} channels")
        X = torch.from_numpy(np.ascontiguousarray(xs.images)).to(device)
        Y = torch.from_numpy(np.ascontiguousarray(ys.images)).to(device)
        n_ev = int(self.n_eval)
        ex = to_unit(torch.from_numpy(np.ascontiguousarray(exs.images[:n_ev])).to(device))
        ey = to_unit(torch.from_numpy(np.ascontiguousarray(eys.images[:n_ev])).to(device))
        self.figure_images_ = exs.images[: int(self.n_figure)]

        # the reference: real evaluation images under their own domain's likelihood
        for alias, lik, data, e in ((self.x_likelihood, px, self.x_data, ex), (self.y_likelihood, py, self.y_data, ey)):
            with torch.no_grad():
                d = int(np.prod(e.shape[1:]))
                b = torch.cat([-lik.log_prob(to_pixels(e[i:i + 64]).round()) / (d * LN2) for i in range(0, len(e), 64)])
            yield {"model": alias, "in_distribution": data, "eval_set": f"{data}:{self.eval_split}", "detector": "",
                   "metric": "bpd", "value": float(b.mean()), "n": len(b)}

        flags = [(p, p.requires_grad) for lik in (px, py) for p in lik.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        seed = int(ctx.seed)
        init_seed = _seed(seed, "arcycle generators")
        self.traces_: dict[str, list] = {}
        cyclegan_nets = None
        beta = None
        try:
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                for ablation in [a for a in ABLATIONS if a in self.ablations]:  # cyclegan first
                    trace: list = []
                    try:
                        if ablation == "cyclegan_init":
                            if cyclegan_nets is None:
                                raise RuntimeError("the cyclegan baseline did not train, so there is nothing to start from")
                            f_net, g_net = copy.deepcopy(cyclegan_nets[0]), copy.deepcopy(cyclegan_nets[1])
                        else:
                            f_net, g_net = (n.to(device) for n in self._generators(cx, cy, init_seed))
                        if ablation == "cyclegan":
                            yield from self._train_cyclegan(f_net, g_net, px, py, X, Y, ex, ey, seed, device, trace)
                            cyclegan_nets = (copy.deepcopy(f_net), copy.deepcopy(g_net))
                        else:
                            if ablation != "nll" and beta is None:
                                if self.beta == "auto":
                                    f0, g0 = (n.to(device) for n in self._generators(cx, cy, init_seed))
                                    beta = self._auto_beta(f0, g0, px, py, X, Y, seed, device)
                                else:
                                    beta = float(self.beta)
                            if ablation != "nll":
                                yield {"model": ablation, "in_distribution": f"{self.x_data}<->{self.y_data}",
                                       "eval_set": f"{self.x_data}<->{self.y_data}", "detector": "", "metric": "beta",
                                       "value": float(beta), "n": int(self.batch_size)}
                            yield from self._train_arcycle(ablation, f_net, g_net, px, py, X, Y, ex, ey, beta, seed,
                                                           device, trace)
                    except Exception as e:
                        ctx.fail(f"studies.{ctx.current_study}: {ablation}", e)
                    if trace:
                        self.traces_[ablation] = trace
        finally:
            for p, f in flags:
                p.requires_grad_(f)
        if self.traces_:
            for name, fn in (("figure 1", self._figure_final), ("figure 2", self._figure_iterations)):
                try:
                    fn(ctx)
                except Exception as e:
                    ctx.fail(f"studies.{ctx.current_study}: {name}", e)

    # ------------------------------------------------------------------ report and figures

    def report(self, rows: list[dict]) -> str:
        """Markdown: the last logged step of each ablation (bits/dim of translations, L1 of reconstructions)."""
        xy, yx = f"{self.x_data}->{self.y_data}", f"{self.y_data}->{self.x_data}"
        last: dict[tuple, tuple[int, float]] = {}
        refs = {}
        for r in rows:
            if r["detector"].startswith("step="):
                s = int(r["detector"][5:])
                key = (r["model"], r["eval_set"], r["metric"])
                if key not in last or s >= last[key][0]:
                    last[key] = (s, r["value"])
            elif r["metric"] == "bpd":
                refs[r["eval_set"]] = r["value"]
        models = list(dict.fromkeys(k[0] for k in last))
        if not models:
            return ""
        cols = [(xy, "bpd"), (yx, "bpd"), (xy, "l1_cycle"), (yx, "l1_cycle"), (xy, "l1_cycle_quantised"), (yx, "l1_cycle_quantised")]
        lines = ["Last logged step of each ablation. bpd: bits/dim of the quantised translations under the target "
                 "domain's likelihood; l1: mean |reconstruction - source| on the [-1, 1] scale. Real evaluation images: "
                 + ", ".join(f"`{k}` {v:.3f} bits/dim" for k, v in refs.items()) + ".", "",
                 "| ablation | step | " + " | ".join(f"{m} {d}" for d, m in cols) + " |",
                 "| --- | --- |" + " --- |" * len(cols)]
        for m in models:
            step = max(last[k][0] for k in last if k[0] == m)
            vals = [last.get((m, d, metric), (None, float("nan")))[1] for d, metric in cols]
            lines.append(f"| {m} | {step} | " + " | ".join(f"{v:.4g}" for v in vals) + " |")
        return "\n".join(lines)

    @staticmethod
    def _rgb(img: np.ndarray) -> np.ndarray:
        """(C, H, W) uint8 -> (H, W, 3) for imshow (greyscale repeated)."""
        return np.repeat(img[0][..., None], 3, axis=2) if img.shape[0] == 1 else np.transpose(img[:3], (1, 2, 0))

    def _figure_final(self, ctx) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.traces_)
        k = len(self.figure_images_)
        fig, axes = plt.subplots(k, 3 * len(names), figsize=(1.0 * 3 * len(names) + 0.4, 1.05 * k + 0.9), squeeze=False)
        for a, name in enumerate(names):
            step, ev = self.traces_[name][-1]
            cols = (("real", self.figure_images_), ("translated", ev["translation"]), ("reconstructed", ev["reconstruction"]))
            for c, (label, imgs) in enumerate(cols):
                for r in range(k):
                    ax = axes[r, 3 * a + c]
                    ax.imshow(self._rgb(imgs[r]), interpolation="nearest")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if r == 0:
                        ax.set_title(f"{name}\n{label}" if c == 1 else label, fontsize=7)
                    if label == "translated":
                        ax.set_xlabel(f"{ev['xy_bpd'][r]:.2f} b/d", fontsize=6)
        fig.suptitle(f"ARCycle (paper §2, Fig. 1): {self.x_data} -> {self.y_data} -> {self.x_data} at the last step "
                     "of each ablation; under translations: their bits/dim", fontsize=8)
        fig.tight_layout()
        fig.savefig(ctx.figures_dir / f"{ctx.current_study}.png", dpi=90)
        plt.close(fig)

    def _figure_iterations(self, ctx) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.traces_)
        k = len(self.figure_images_)
        ncols = min(8, max(len(t) for t in self.traces_.values()))

        def strip(imgs):  # the n_figure images side by side (2 px grey gaps), as one RGB picture
            gap = np.full((imgs[0].shape[1], 2, 3), 128, dtype=np.uint8)
            return np.concatenate([p for i in imgs for p in (self._rgb(i), gap)][:-1], axis=1)

        fig, axes = plt.subplots(2 * len(names), ncols + 1, figsize=(0.62 * k * (ncols + 1) + 0.8, 0.82 * 2 * len(names) + 0.9),
                                 squeeze=False)
        for a, name in enumerate(names):
            trace = self.traces_[name]
            keep = sorted(set(np.linspace(0, len(trace) - 1, min(ncols, len(trace))).round().astype(int)))
            for r, (kind, key) in enumerate((("translated", "translation"), ("reconstructed", "reconstruction"))):
                row = 2 * a + r
                axes[row, 0].imshow(strip(self.figure_images_), interpolation="nearest")
                axes[row, 0].set_ylabel(f"{name}\n{kind}", fontsize=7)
                if r == 0:
                    axes[row, 0].set_title("real", fontsize=7)
                for c in range(ncols):
                    ax = axes[row, c + 1]
                    if c >= len(keep):
                        ax.set_axis_off()
                        continue
                    step, ev = trace[keep[c]]
                    ax.imshow(strip(ev[key]), interpolation="nearest")
                    ax.set_title(f"step {step}: {ev['xy_bpd'].mean():.2f} b/d" if r == 0 else f"L1 {ev['xy_l1'].mean():.3f}",
                                 fontsize=7)
                for ax in axes[row]:
                    ax.set_xticks([])
                    ax.set_yticks([])
        fig.suptitle(f"ARCycle (paper §2, Fig. 2): translations {self.x_data} -> {self.y_data} and reconstructions over "
                     "training\n(titles: mean bits/dim of the evaluation translations, mean L1 of their reconstructions)",
                     fontsize=8)
        fig.tight_layout()
        fig.savefig(ctx.figures_dir / f"{ctx.current_study}_iterations.png", dpi=90)
        plt.close(fig)


@hookimpl
def register_studies():
    return {"arcycle": ARCycle}
