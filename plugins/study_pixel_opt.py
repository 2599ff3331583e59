"""Pixel optimisation (the paper's §3.1, Figure 3): gradient descent on the pixels to raise a model's likelihood.

Paper (§3.1): gradient descent on the negative log-likelihood of a PixelCNN++, applied to
the *pixels* of 3 MNIST test digits, 3 uniform-noise images and a black, a grey and a
white image. Every image accumulates noise, even the real digits; noise and grey images
form lines (local texture, not digits); the real digits go from 0.6 to 7 bits/dim within
a few steps while looking unchanged.

What this study does
--------------------
``pixel_opt(model, data, split="test", n_real=3, n_noise=3, constants=[0, 128, 255],
optimizer="adam", lr=1.0, steps=100, log_steps=None)``.

* **Start images**: the first ``n_real`` images of ``data:split`` (a suite data set
  alias), ``n_noise`` uniform-noise images over {0..255} of the same shape (seeded by the
  run seed), and one constant image per value in ``constants`` (0 = ``black``, 255 =
  ``white``, 128 = ``grey``, any other v = ``constant<v>``).
* **Relaxation**: the image is a float tensor in [0, 255] (pixel-level units), started at
  the integer image. The objective is each image's negative log-likelihood in **bits**,
  ``-log2 p(x)`` with the model's continuous relaxation ``log_prob(x)`` (PixelCNN++ and
  MADE's logistic/gaussian heads give every value x the mass of the bin [x - 1/2, x + 1/2]
  level, edge bins taking the tails), summed over the images (which are independent).
  Each step is one ``optimizer`` step (``"adam"``: Adam(lr); ``"sgd"``: plain gradient
  descent, x <- x - lr * grad) followed by clipping to [0, 255]. ``lr`` is in pixel levels
  (per bit of gradient for SGD; Adam's steps are about ``lr`` levels each whatever the
  gradient's scale).
* **Logged steps**: ``log_steps`` (default 0, 1, 2, 5, 10, 20, 50, 100, ... up to ``steps``,
  and ``steps``); step 0 is the start image.

Rows (``detector`` = ``step=<N>``, the optimisation step; ``eval_set`` = the start group:
``<data>:<split>``, ``noise``, ``black``, ``grey``, ``white``; ``value`` = mean over the
group's images, ``n`` = their number):

* ``bpd``: bits/dim of the **quantised** image (round to the nearest level), the
  package's discrete bits/dim;
* ``bpd_relaxed``: bits/dim of the continuous image being optimised (the objective / D);
* ``mean_abs_change``: mean |quantised image - start image| in pixel levels (how much
  the image changed: "looks unchanged" is a small number here).

Figure ``<alias>.png``: the quantised images (rows: start images, columns: logged
steps), each titled with its bits/dim.
"""
from __future__ import annotations

import zlib
from typing import Iterator, Sequence

import numpy as np
import torch

from benchbench import Study, hookimpl
from benchbench.api import bits_per_dim
from benchbench.registry import suggest, unknown
from benchbench.suite import check_split

OPTIMIZERS = ("adam", "sgd")
LN2 = float(np.log(2.0))


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def default_log_steps(steps: int) -> list[int]:
    """0, 1, 2, 5, 10, 20, 50, 100, ... (<= steps), and steps itself."""
    out, k = [0], 1
    while k <= steps:
        out += [s for s in (k, 2 * k, 5 * k) if s <= steps]
        k *= 10
    return sorted(set(out + [int(steps)]))


def constant_name(value: int) -> str:
    return {0: "black", 128: "grey", 255: "white"}.get(int(value), f"constant{int(value)}")


def optimise_pixels(model, x0: torch.Tensor, *, optimizer: str = "adam", lr: float = 1.0, steps: int = 100,
                    log_steps: Sequence[int] | None = None) -> list[dict]:
    """Gradient descent on the pixels of ``x0`` (uint8 or float (N, C, H, W) in [0, 255]) to lower -log2 p(x).

    Returns one record per logged step: ``step``, ``image`` (uint8 numpy, the quantised image),
    ``bpd`` (N,) of the quantised image, ``bpd_relaxed`` (N,) of the continuous one.
    The model's parameters are not changed (nor do they accumulate gradients).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    log_steps = sorted(set(int(s) for s in (log_steps if log_steps is not None else default_log_steps(steps))))
    device = next(model.parameters()).device
    D = int(np.prod(x0.shape[1:]))
    x = x0.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr) if optimizer == "adam" else torch.optim.SGD([x], lr=lr)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    out = []
    try:
        for step in range(int(steps) + 1):
            lp = model.log_prob(x)  # nats, continuous relaxation
            if step in log_steps:
                with torch.no_grad():
                    q = x.detach().round().clamp(0, 255)
                    out.append({"step": step, "image": q.to(torch.uint8).cpu().numpy(),
                                "bpd": bits_per_dim(model.log_prob(q), D).cpu().numpy().astype(np.float64),
                                "bpd_relaxed": bits_per_dim(lp.detach(), D).cpu().numpy().astype(np.float64)})
            if step == int(steps):
                break
            loss = -lp.sum() / LN2  # total NLL in bits; images independent
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 255.0)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    return out


class PixelOptimisation(Study):
    """§3.1 / Figure 3: bits/dim of images under gradient descent on their pixels."""

    def __init__(self, model: str, data: str, split: str = "test", n_real: int = 3, n_noise: int = 3,
                 constants: list[int] = (0, 128, 255), optimizer: str = "adam", lr: float = 1.0, steps: int = 100,
                 log_steps: list[int] | None = None):
        self.model = model
        self.data = data
        self.split = split
        self.n_real = n_real
        self.n_noise = n_noise
        self.constants = constants
        self.optimizer = optimizer
        self.lr = lr
        self.steps = steps
        self.log_steps = log_steps

    def check(self, suite) -> Iterator[tuple[str, str]]:
        if self.model not in suite.models:
            yield "model", unknown("model", self.model, suite.models)
        else:
            provides = getattr(suite.factory(suite.models[self.model]), "provides", ())
            if "bpd" not in provides:
                yield "model", f"model {self.model!r} ({suite.models[self.model].use}) has no likelihood (provides {list(provides)})"
            elif suite.models[self.model].params.get("head") == "categorical":
                yield "model", f"model {self.model!r} has a categorical head: its likelihood is not differentiable in the pixels"
        if not suite.has("datasets", self.data):
            yield "data", f"unknown dataset {self.data!r}{suggest(self.data, suite.datasets)}"
        else:
            yield from check_split(suite, self.data, self.split, "split")
        for key in ("n_real", "n_noise"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                yield key, f"must be a non-negative integer, got {v!r}"
        if not isinstance(self.constants, (list, tuple)):
            yield "constants", f"must be a list of pixel values 0..255, got {self.constants!r}"
        else:
            for i, v in enumerate(self.constants):
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 255:
                    yield f"constants[{i}]", f"must be an integer pixel value in 0..255, got {v!r}"
        if self.optimizer not in OPTIMIZERS:
            yield "optimizer", f"unknown optimizer {self.optimizer!r}{suggest(str(self.optimizer), OPTIMIZERS)}; known: {', '.join(OPTIMIZERS)}"
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not self.lr > 0:
            yield "lr", f"must be a positive number, got {self.lr!r}"
        if not _positive_int(self.steps):
            yield "steps", f"must be a positive integer, got {self.steps!r}"
        if self.log_steps is not None:
            if not isinstance(self.log_steps, (list, tuple)) or not self.log_steps:
                yield "log_steps", f"must be a non-empty list of steps or null, got {self.log_steps!r}"
            else:
                for i, s in enumerate(self.log_steps):
                    if not isinstance(s, int) or isinstance(s, bool) or s < 0 or (_positive_int(self.steps) and s > self.steps):
                        yield f"log_steps[{i}]", f"must be an integer step in 0..steps ({self.steps!r}), got {s!r}"

    def start_images(self, ctx) -> list[tuple[str, np.ndarray]]:
        """(group name, uint8 images) of every start group."""
        real = ctx.load(self.data, self.split).images
        shape = real.shape[1:]
        groups = []
        if self.n_real:
            groups.append((self.data if self.split == "test" else f"{self.data}:{self.split}", real[: int(self.n_real)]))
        if self.n_noise:
            rng = np.random.default_rng([int(ctx.seed), zlib.crc32(b"pixel_opt noise")])
            groups.append(("noise", rng.integers(0, 256, size=(int(self.n_noise), *shape), dtype=np.uint8)))
        for v in self.constants:
            groups.append((constant_name(v), np.full((1, *shape), int(v), dtype=np.uint8)))
        return groups

    def run(self, ctx) -> Iterator[dict]:
        model = ctx.model(self.model)
        groups = self.start_images(ctx)
        base = {"model": self.model, "in_distribution": ctx.suite.spec("models", self.model).core.get("train", {}).get("data", "")}
        log_steps = self.log_steps if self.log_steps is not None else default_log_steps(int(self.steps))
        torch.manual_seed(ctx.seed)
        traces: list[tuple[str, list[dict]]] = []
        for name, x0 in groups:  # one group at a time: a failing group loses only itself
            try:
                trace = optimise_pixels(model, torch.from_numpy(x0), optimizer=self.optimizer, lr=float(self.lr),
                                        steps=int(self.steps), log_steps=log_steps)
            except Exception as e:
                ctx.fail(f"studies.{ctx.current_study}: {name}", e)
                continue
            traces.append((name, trace))
            for rec in trace:
                row = {**base, "eval_set": name, "detector": f"step={rec['step']}", "n": len(x0)}
                yield {**row, "metric": "bpd", "value": float(rec["bpd"].mean())}
                yield {**row, "metric": "bpd_relaxed", "value": float(rec["bpd_relaxed"].mean())}
                change = np.abs(rec["image"].astype(np.float64) - x0.astype(np.float64)).mean()
                yield {**row, "metric": "mean_abs_change", "value": float(change)}
        if traces:
            try:
                self._figure(ctx, traces)
            except Exception as e:
                ctx.fail(f"studies.{ctx.current_study}: figure", e)

    def _figure(self, ctx, traces) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [(name, i) for name, trace in traces for i in range(len(trace[0]["image"]))]
        steps = [rec["step"] for rec in traces[0][1]]
        if len(steps) > 10:  # at most 10 columns: first, last and evenly spaced between
            keep = sorted(set(np.linspace(0, len(steps) - 1, 10).round().astype(int)))
        else:
            keep = list(range(len(steps)))
        fig, axes = plt.subplots(len(rows), len(keep), figsize=(1.3 * len(keep), 1.45 * len(rows)), squeeze=False)
        by_name = dict(traces)
        for r, (name, i) in enumerate(rows):
            for c, k in enumerate(keep):
                rec = by_name[name][k]
                img = rec["image"][i]
                ax = axes[r, c]
                if img.shape[0] == 1:
                    ax.imshow(img[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                else:
                    ax.imshow(np.transpose(img[:3], (1, 2, 0)), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{rec['bpd'][i]:.2f}", fontsize=7)
                if r == 0:
                    ax.set_title(f"step {rec['step']}\n{rec['bpd'][i]:.2f}", fontsize=7)
                if c == 0:
                    ax.set_ylabel(name, fontsize=7)
        fig.suptitle(f"Pixel optimisation (paper §3.1, Fig. 3): {self.optimizer}, lr {self.lr:g}, model {self.model}; "
                     "titles: bits/dim of the quantised image", fontsize=8)
        fig.tight_layout()
        fig.savefig(ctx.figures_dir / f"{ctx.current_study}.png", dpi=90)
        plt.close(fig)


@hookimpl
def register_studies():
    return {"pixel_opt": PixelOptimisation}
