"""The 2-D toy of the paper's §3.2 (Figure 4): a MADE's likelihood landscape on a 1-D manifold.

Paper (§3.2): the data are x1 = 0, x2 ~ N(0, 1); a MADE with a discretized Gaussian
likelihood learns them. Its Gaussian for x1 grows ever narrower to put all its mass in
the bin of x1 = 0, so the gradient of the likelihood with respect to the *input* is
non-zero only in two thin strips (the edges of that bin) -- "vanishing gradients almost
everywhere" for anyone who wants to optimise samples on that landscape.

Data set ``toy2d`` (registered here)
------------------------------------
``toy2d(n=5000, seed=0, levels_per_unit=32)``: ``n`` points per split, x1 = 0 and
x2 ~ N(0, 1), seeded per split. Each coordinate is discretized to one of the **256
levels** of the package's image convention: level ``k`` (0..255) stands for the toy value
``x = (k - 128) / levels_per_unit``, so with the default 32 levels per unit the levels
cover [-4, 3.97] in steps of 1/32, x1 = 0 is exactly level 128 and x2 is rounded to the
nearest level (the 6e-5 of N(0, 1) beyond the range is clipped into the edge levels,
which take the tail mass anyway). A point is an "image" of shape ``(C, H, W) = (1, 1, 2)``
(uint8): pixel (0, 0) is x1, pixel (0, 1) is x2, so MADE's natural order models
p(x1) p(x2 | x1). MADE's ``gaussian`` head lives on the [-1, 1] scale, level k <->
u = k / 127.5 - 1, with bin width 2/255 there, i.e. exactly one toy level (1 /
``levels_per_unit``) wide in toy units.

Study ``toy2d``
---------------
``toy2d(model, at_steps=[...], grid=201, x1_range=[-0.25, 0.25], x2_range=[-3, 3],
threshold=1e-3)``. ``model`` is a suite ``made`` model with ``head: gaussian`` trained on a
``toy2d`` data set. The study looks at it at several points of training: for every count
in ``at_steps`` it trains a copy of the model with ``steps`` set to that count (MADE's
training is deterministic given the run seed and its learning rate is constant, so the
copy *is* the model at that step of the full run: same initialisation, minibatches and
Adam state), and it adds the suite's model itself (``ctx.model``, cached) at its own
``steps``. At each point, over a ``grid`` x ``grid`` lattice of continuous toy points
(x1 in ``x1_range``, x2 in ``x2_range``; the model's ``log_prob`` is a continuous
relaxation, each coordinate getting the mass of the one-level-wide bin centred on it),
in float64:

* ``log p(x)`` = log of the model's probability of the 2-D bin at x, and the model
  *density* ``q(x) = p(x) * levels_per_unit**2`` (per unit area, toy units);
* ``||grad_x log p(x)||`` and ``||grad_x q(x)||`` (gradients in toy units).

Rows (``detector`` = ``step=<N>``, the training point; ``eval_set`` = ``grid`` or the
data split):

* ``share_grad_density_above``: share of grid cells with ``||grad q|| > threshold`` --
  the paper's "gradient non-zero only in two thin strips" is a statement about this one;
* ``share_grad_logp_above``: the same for ``||grad log p||`` (reported because the issue
  asks for the log-likelihood's gradient; see ``docs/studies.md`` for why the two differ);
* ``median_grad_logp`` and ``max_grad_density`` over the grid;
* ``x1_sigma``: the standard deviation, in toy units, of the model's Gaussian for x1
  (MADE's first conditional depends on no input, so it is one number), against the bin
  width ``1 / levels_per_unit``;
* ``bpd`` on the test split of the model's training data.

Figure ``<alias>.png``: the data (histogram of the test points), the final model's
density, ``||grad q||`` and ``||grad log p||`` heatmaps, then one ``||grad q||`` heatmap
per training point.
"""
from __future__ import annotations

import copy
import zlib
from typing import ClassVar, Iterator

import numpy as np
import torch

from benchbench import Dataset, Split, Study, TrainContext, hookimpl
from benchbench.api import bits_per_dim
from benchbench.registry import unknown

CENTRE = 128  # the level of toy value 0


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _range_ok(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and value[0] < value[1])


class Toy2D(Dataset):
    """x1 = 0, x2 ~ N(0, 1), each on 256 levels (level k = toy value (k - 128) / levels_per_unit); shape (1, 1, 2)."""

    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def __init__(self, n: int = 5000, seed: int = 0, levels_per_unit: int = 32):
        self.n = n
        self.seed = seed
        self.levels_per_unit = levels_per_unit

    def check(self, suite) -> Iterator[tuple[str, str]]:
        if not _positive_int(self.n):
            yield "n", f"must be a positive integer, got {self.n!r}"
        if not _positive_int(self.levels_per_unit):
            yield "levels_per_unit", f"must be a positive integer, got {self.levels_per_unit!r}"

    def to_levels(self, x: np.ndarray) -> np.ndarray:
        """Toy values -> the nearest of the 256 levels (clipped), uint8."""
        return np.clip(np.rint(np.asarray(x) * self.levels_per_unit + CENTRE), 0, 255).astype(np.uint8)

    def load(self, split: str) -> Split:
        self._check_split(split)
        rng = np.random.default_rng([int(self.seed), zlib.crc32(split.encode())])
        x2 = rng.standard_normal(int(self.n))
        images = np.empty((int(self.n), 1, 1, 2), dtype=np.uint8)
        images[:, 0, 0, 0] = self.to_levels(np.zeros(int(self.n)))
        images[:, 0, 0, 1] = self.to_levels(x2)
        return Split(images, None, source=f"toy2d: x1 = 0, x2 ~ N(0, 1), {self.levels_per_unit} levels per unit, "
                                          f"seed {self.seed}, split {split}")


def gradient_grid(model, x1: np.ndarray, x2: np.ndarray, levels_per_unit: int) -> dict[str, np.ndarray]:
    """log p, density and gradient norms (toy units) of a (1, 1, 2) model over the grid x1 x x2, in float64.

    Returns arrays of shape (len(x2), len(x1)) (rows: x2, columns: x1): ``log_p``, ``density``,
    ``grad_logp`` (||grad_x log p||), ``grad_density`` (||grad_x density||).
    """
    m = copy.deepcopy(model).cpu().double().eval()
    X1, X2 = np.meshgrid(np.asarray(x1, dtype=np.float64), np.asarray(x2, dtype=np.float64))
    pts = torch.from_numpy(np.stack([X1.ravel(), X2.ravel()], 1))
    levels = (pts * levels_per_unit + CENTRE).reshape(-1, 1, 1, 2).requires_grad_(True)
    out: dict[str, list[np.ndarray]] = {"log_p": [], "grad_logp_vec": []}
    for chunk in torch.split(torch.arange(len(levels)), 4096):
        x = levels.detach()[chunk].requires_grad_(True)
        lp = m.log_prob(x)
        (g,) = torch.autograd.grad(lp.sum(), x)
        out["log_p"].append(lp.detach().numpy())
        out["grad_logp_vec"].append((g.reshape(-1, 2) * levels_per_unit).numpy())  # d/dx = d/dlevel * levels/unit
    log_p = np.concatenate(out["log_p"])
    g = np.concatenate(out["grad_logp_vec"])
    density = np.exp(log_p) * levels_per_unit ** 2
    shape = X1.shape
    return {"log_p": log_p.reshape(shape), "density": density.reshape(shape),
            "grad_logp": np.linalg.norm(g, axis=1).reshape(shape),
            "grad_density": (density * np.linalg.norm(g, axis=1)).reshape(shape)}  # grad q = q grad log p


def x1_sigma(model, levels_per_unit: int) -> float:
    """Standard deviation (toy units) of a gaussian-head MADE's distribution for x1 (the first dimension)."""
    with torch.no_grad():
        params = model(torch.full((1, 1, 1, 2), float(CENTRE), device=model.data_shape.device))  # (1, D, 2)
        log_scale = params[0, 0, 1].clamp(min=-7.0)  # likelihoods.MIN_LOG_SCALE; unit scale: 127.5 levels
    return float(torch.exp(log_scale)) * 127.5 / levels_per_unit


class Toy2DStudy(Study):
    """§3.2 / Figure 4: where the likelihood's input gradient is non-zero, over MADE training."""

    def __init__(self, model: str, at_steps: list[int] = (100, 300, 1000), grid: int = 201,
                 x1_range: list[float] = (-0.25, 0.25), x2_range: list[float] = (-3.0, 3.0), threshold: float = 1e-3):
        self.model = model
        self.at_steps = at_steps
        self.grid = grid
        self.x1_range = x1_range
        self.x2_range = x2_range
        self.threshold = threshold

    def check(self, suite) -> Iterator[tuple[str, str]]:
        if self.model not in suite.models:
            yield "model", unknown("model", self.model, suite.models)
        else:
            spec = suite.models[self.model]
            if spec.use != "made" or spec.params.get("head") != "gaussian":
                yield "model", f"model {self.model!r} must be a made with head: gaussian (the paper's toy likelihood); got use {spec.use!r}, head {spec.params.get('head', 'logistic')!r}"
            train = spec.core.get("train") or {}
            data = train.get("data")
            if data is None or not suite.has("datasets", data) or suite.spec("datasets", data).use != "toy2d":
                yield "model", f"model {self.model!r} must be trained on a toy2d data set; it trains on {data!r}"
            steps = int(spec.params.get("steps", 5000))
            if isinstance(self.at_steps, (list, tuple)):
                for i, s in enumerate(self.at_steps):
                    if _positive_int(s) and s > steps:
                        yield f"at_steps[{i}]", f"{s} exceeds model {self.model!r}'s steps ({steps})"
        if not isinstance(self.at_steps, (list, tuple)):
            yield "at_steps", f"must be a list of positive step counts, got {self.at_steps!r}"
        else:
            for i, s in enumerate(self.at_steps):
                if not _positive_int(s):
                    yield f"at_steps[{i}]", f"must be a positive integer, got {s!r}"
        if not _positive_int(self.grid) or self.grid < 2:
            yield "grid", f"must be an integer >= 2, got {self.grid!r}"
        for key in ("x1_range", "x2_range"):
            if not _range_ok(getattr(self, key)):
                yield key, f"must be [low, high] with low < high, got {getattr(self, key)!r}"
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) or self.threshold <= 0:
            yield "threshold", f"must be a positive number, got {self.threshold!r}"

    def _models(self, ctx) -> Iterator[tuple[int, object]]:
        spec = ctx.suite.spec("models", self.model)
        final = int(spec.params.get("steps", 5000))
        train = spec.core["train"]
        data = ctx.load(train["data"], train.get("split", "train"))
        for s in sorted(set(int(s) for s in self.at_steps) - {final}):
            try:
                m = ctx.suite.factory(spec)(**{**spec.params, "steps": s})
                m.fit(data, TrainContext(device=ctx.device, seed=ctx.seed, progress=False))
                yield s, m.eval()
            except Exception as e:
                ctx.fail(f"studies.{ctx.current_study}: {self.model} at {s} steps", e)
        yield final, ctx.model(self.model)

    def run(self, ctx) -> Iterator[dict]:
        spec = ctx.suite.spec("models", self.model)
        train = spec.core["train"]
        dspec = ctx.suite.spec("datasets", train["data"])
        lpu = int(ctx.suite.factory(dspec)(**dspec.params).levels_per_unit)
        test = ctx.load(train["data"], "test")
        x1 = np.linspace(*map(float, self.x1_range), int(self.grid))
        x2 = np.linspace(*map(float, self.x2_range), int(self.grid))
        base = {"model": self.model, "in_distribution": train["data"]}
        maps: list[tuple[int, dict[str, np.ndarray]]] = []
        for step, model in self._models(ctx):
            det = f"step={step}"
            try:
                g = gradient_grid(model, x1, x2, lpu)
            except Exception as e:
                ctx.fail(f"studies.{ctx.current_study}: gradient grid at {step} steps", e)
                continue
            maps.append((step, g))
            n = g["grad_logp"].size
            yield {**base, "eval_set": "grid", "detector": det, "metric": "share_grad_density_above",
                   "value": float((g["grad_density"] > self.threshold).mean()), "n": n}
            yield {**base, "eval_set": "grid", "detector": det, "metric": "share_grad_logp_above",
                   "value": float((g["grad_logp"] > self.threshold).mean()), "n": n}
            yield {**base, "eval_set": "grid", "detector": det, "metric": "median_grad_logp",
                   "value": float(np.median(g["grad_logp"])), "n": n}
            yield {**base, "eval_set": "grid", "detector": det, "metric": "max_grad_density",
                   "value": float(g["grad_density"].max()), "n": n}
            yield {**base, "eval_set": "model", "detector": det, "metric": "x1_sigma",
                   "value": x1_sigma(model, lpu), "n": 1}
            with torch.no_grad():
                x = torch.from_numpy(test.images).to(next(model.parameters()).device).float()
                bpd = bits_per_dim(model.log_prob(x), 2).cpu().numpy()
            yield {**base, "eval_set": f"{train['data']}:test", "detector": det, "metric": "bpd",
                   "value": float(np.mean(bpd)), "n": len(bpd)}
        if maps:
            try:
                self._figure(ctx, test, maps, x1, x2, lpu)
            except Exception as e:
                ctx.fail(f"studies.{ctx.current_study}: figure", e)

    def _figure(self, ctx, test: Split, maps, x1, x2, lpu: int) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm

        extent = [x1[0], x1[-1], x2[0], x2[-1]]
        pts = (test.images[:, 0, 0, :].astype(np.float64) - CENTRE) / lpu
        step, g = maps[-1]
        ncols = max(4, len(maps))
        fig, axes = plt.subplots(2, ncols, figsize=(3.2 * ncols, 6.4), squeeze=False)
        for ax in axes.ravel():
            ax.set_visible(False)
        bins = [np.linspace(x1[0], x1[-1], 41), np.linspace(x2[0], x2[-1], 41)]
        panels = [
            ("(a) data (test split)", np.histogram2d(pts[:, 0], pts[:, 1], bins=bins)[0].T + 1e-12, None),
            (f"(b) model density, step {step}", g["density"], None),
            (f"(c) ||grad density||, step {step}", g["grad_density"], self.threshold),
            (f"(d) ||grad log p||, step {step}", g["grad_logp"], self.threshold),
        ]
        for ax, (title, img, floor) in zip(axes[0], panels):
            ax.set_visible(True)
            vmin = max(floor or 1e-6, float(img[img > 0].min()) if (img > 0).any() else 1e-6)
            vmax = max(float(img.max()), vmin * 10)
            ax.imshow(np.clip(img, vmin, None), origin="lower", extent=extent, aspect="auto", cmap="magma",
                      norm=LogNorm(vmin=vmin, vmax=vmax))
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("x1")
            ax.set_ylabel("x2")
        for ax, (s, gm) in zip(axes[1], maps):
            ax.set_visible(True)
            share = float((gm["grad_density"] > self.threshold).mean())
            ax.imshow(gm["grad_density"] > self.threshold, origin="lower", extent=extent, aspect="auto", cmap="gray",
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"||grad density|| > {self.threshold:g}\nstep {s}: {100 * share:.1f}% of grid", fontsize=9)
            ax.set_xlabel("x1")
        fig.suptitle(f"2-D toy (paper §3.2, Fig. 4): MADE {self.model}, discretized Gaussian, "
                     f"bin width {1 / lpu:g}", fontsize=10)
        fig.tight_layout()
        fig.savefig(ctx.figures_dir / f"{ctx.current_study}.png", dpi=90)
        plt.close(fig)


@hookimpl
def register_datasets():
    return {"toy2d": Toy2D}


@hookimpl
def register_studies():
    return {"toy2d": Toy2DStudy}
