"""Bits/dim over GAN training (the paper's §4.1, Figure 5), beside an Inception-Score-style score.

Paper (§4.1): WGAN-GP samples of CIFAR-10, "visually indistinguishable from real images",
get 6.52 bits/dim under PixelCNN++ against 2.92 for the CIFAR-10 test set; over the WGAN
training the PixelCNN++ negative log-likelihood of the samples "remains relatively
constant" while the Inception Score and the perceptual quality rise (Figure 5).

What this study does
--------------------
``gan_bpd(generator, likelihood, reference=None, classifier=None, score="auto", n=500,
splits=10, seed=0)``:

* **Checkpoints**: every generator snapshot of the suite model ``generator`` (a
  ``wgan-gp`` with ``snapshot_every > 0``; the snapshots of its training work folder)
  plus its final weights when the final step has no snapshot.
* **Samples**: ``n`` samples per checkpoint from the *same* latent vectors (a CPU
  ``torch.Generator`` seeded by ``seed``; the generator runs on a CPU copy, as in
  ``gan_samples``), so checkpoints differ only by their weights.
* **Bits/dim**: of each checkpoint's samples under the suite model ``likelihood``
  (e.g. PixelCNN++), mean and standard deviation over the samples.
* **Score** (``score``):
  ``"inception"``: the standard Inception Score, exp(E_x KL(p(y|x) || p(y))), with
  torchvision's ImageNet Inception-v3 (images resized to 299x299 bilinearly, scaled to
  [-1, 1], greyscale repeated to 3 channels; 1000 classes, so not bit-identical to the
  original TF graph's 1008) -- only when its weights file
  (``inception_v3_google-*.pth``) is already in torch.hub's checkpoint folder; nothing is
  downloaded. Metric ``inception_score_torchvision``.
  ``"classifier"``: the same formula with the softmax of the suite model ``classifier``'s
  ``"logits"`` score (a classifier trained on the GAN's training data, e.g. the
  ``classifier`` model plugin) -- a *classifier score*, labelled ``classifier_score``,
  not comparable to published Inception Scores.
  ``"auto"`` (default): ``inception`` when the weights are there, else ``classifier`` when
  ``classifier`` is set, else no score (recorded as not computed).
  Both use ``splits`` equal parts of the samples (the standard 10) and report the mean
  (and ``_std``) over the parts.
* **Reference**: with ``reference`` (a data set alias, e.g. the GAN's training data),
  the same numbers for its test split (the score on at most ``n`` images).

Rows: ``eval_set`` = ``<generator>_samples`` with ``detector`` = ``step=<N>`` (the
checkpoint) and metrics ``bpd_mean``, ``bpd_std``, ``<score>``, ``<score>_std``; the
reference's rows with ``eval_set`` = ``<reference>`` and no step; and
``spearman_bpd_vs_<score>``: Spearman's rank correlation, over the checkpoints, between
mean bits/dim and the score (``n`` = number of checkpoints; the paper's claim is that
bits/dim does not follow the score, i.e. a correlation near 0 -- or, with bits/dim falling
as samples improve, a negative one).

Figure ``<alias>.png``: the final checkpoint's samples (left) and, over the
checkpoints, bits/dim of the samples and the score (twin axes), with the reference's
test bits/dim as a dashed line (right), as in the paper's Figure 5.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from benchbench import Study, hookimpl
from benchbench.registry import suggest, unknown

SCORES = ("auto", "inception", "classifier")


def inception_weights_path() -> Path | None:
    """torchvision's Inception-v3 weights in torch.hub's checkpoint folder, if present (never downloads)."""
    try:
        from torchvision.models import Inception_V3_Weights

        name = os.path.basename(Inception_V3_Weights.IMAGENET1K_V1.url)
    except Exception:  # torchvision missing or different
        name = "inception_v3_google-0cc3c7bd.pth"
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    return path if path.is_file() else None


def score_from_probs(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over ``splits`` equal parts of ``probs`` (N, K): (mean, std) over the parts."""
    probs = np.asarray(probs, dtype=np.float64)
    parts = np.array_split(probs, max(1, min(int(splits), len(probs))))
    vals = []
    for p in parts:
        py = p.mean(0, keepdims=True)
        kl = (p * (np.log(np.clip(p, 1e-30, None)) - np.log(np.clip(py, 1e-30, None)))).sum(1).mean()
        vals.append(float(np.exp(kl)))
    return float(np.mean(vals)), float(np.std(vals))


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties); nan with fewer than 2 points or a constant input."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


class _InceptionProbs:
    """Softmax of torchvision's Inception-v3 (local weights) on uint8 images."""

    name = "inception_score_torchvision"

    def __init__(self, path: Path, device):
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.net, self.device = net.to(device).eval(), device

    @torch.no_grad()
    def __call__(self, x: np.ndarray, batch: int = 32) -> np.ndarray:
        out = []
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i:i + batch]).to(self.device).float() / 127.5 - 1.0
            if xb.shape[1] == 1:
                xb = xb.repeat(1, 3, 1, 1)
            xb = torch.nn.functional.interpolate(xb, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(torch.softmax(self.net(xb), 1).cpu().numpy())
        return np.concatenate(out)


class _ClassifierProbs:
    """Softmax of a suite model's ``logits`` score on uint8 images."""

    name = "classifier_score"

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        bs = int(getattr(self.model, "eval_batch_size", 256))
        out = []
        for i in range(0, len(x), bs):
            logits = self.model.score(torch.from_numpy(x[i:i + bs]).to(self.device))["logits"]
            out.append(torch.softmax(torch.as_tensor(logits).float(), 1).cpu().numpy())
        return np.concatenate(out)


def bpd_of(model, x: np.ndarray) -> np.ndarray:
    """Bits/dim of uint8 images under a likelihood model, in its eval batches."""
    device = next(model.parameters()).device
    bs = int(getattr(model, "eval_batch_size", 256))
    out = []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            out.append(model.score(torch.from_numpy(x[i:i + bs]).to(device))["bpd"].cpu().numpy())
    return np.concatenate(out).astype(np.float64)


class GANBitsPerDim(Study):
    """§4.1 / Figure 5: bits/dim of GAN samples and an Inception-style score over the GAN's checkpoints."""

    def __init__(self, generator: str, likelihood: str, reference: str | None = None, classifier: str | None = None,
                 score: str = "auto", n: int = 500, splits: int = 10, seed: int = 0):
        self.generator = generator
        self.likelihood = likelihood
        self.reference = reference
        self.classifier = classifier
        self.score = score
        self.n = n
        self.splits = splits
        self.seed = seed

    def check(self, suite) -> Iterator[tuple[str, str]]:
        if self.generator not in suite.models:
            yield "generator", unknown("model", self.generator, suite.models)
        else:
            spec = suite.models[self.generator]
            planned = getattr(suite.factory(spec), "snapshot_steps", None)
            if not callable(planned):
                yield "generator", f"model {self.generator!r} ({spec.use}) keeps no training snapshots (use a wgan-gp)"
            elif not planned(spec.params):
                yield "generator", f"model {self.generator!r} keeps no snapshots: set its snapshot_every > 0"
        if self.likelihood not in suite.models:
            yield "likelihood", unknown("model", self.likelihood, suite.models)
        elif "bpd" not in getattr(suite.factory(suite.models[self.likelihood]), "provides", ()):
            yield "likelihood", f"model {self.likelihood!r} ({suite.models[self.likelihood].use}) provides no bpd"
        if self.classifier is not None:
            if self.classifier not in suite.models:
                yield "classifier", unknown("model", self.classifier, suite.models)
            elif "logits" not in getattr(suite.factory(suite.models[self.classifier]), "provides", ()):
                yield "classifier", f"model {self.classifier!r} ({suite.models[self.classifier].use}) provides no 'logits'"
        if self.reference is not None and not suite.has("datasets", self.reference):
            yield "reference", f"unknown dataset {self.reference!r}{suggest(self.reference, suite.datasets)}"
        if self.score not in SCORES:
            yield "score", f"unknown score {self.score!r}{suggest(str(self.score), SCORES)}; known: {', '.join(SCORES)}"
        elif self.score == "classifier" and self.classifier is None:
            yield "score", "score 'classifier' needs a classifier model alias in 'classifier'"
        for key in ("n", "splits"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                yield key, f"must be a positive integer, got {v!r}"
        if isinstance(self.n, int) and isinstance(self.splits, int) and self.splits > self.n:
            yield "splits", f"{self.splits} exceeds the number of samples n = {self.n}"

    def _scorer(self, ctx):
        """(probability function, metric name) per ``score``; None when no score can be computed."""
        weights = inception_weights_path() if self.score in ("auto", "inception") else None
        if weights is not None:
            return _InceptionProbs(weights, ctx.device)
        if self.score == "inception":
            raise FileNotFoundError(f"no Inception-v3 weights in {Path(torch.hub.get_dir()) / 'checkpoints'} "
                                    "(nothing is downloaded); use score: classifier")
        if self.classifier is not None:
            return _ClassifierProbs(ctx.model(self.classifier))
        raise FileNotFoundError("no Inception-v3 weights in torch.hub's checkpoint folder and no 'classifier' model "
                                "given: the score is not computed (bits/dim still is)")

    def run(self, ctx) -> Iterator[dict]:
        gan = ctx.model(self.generator)
        lik = ctx.model(self.likelihood)
        work_dir = ctx.work_dir(self.generator)
        spec = ctx.suite.spec("models", self.generator)
        final = int(spec.params.get("steps", 0))
        checkpoints: list[int | None] = [s for s, _ in gan.snapshots(work_dir)]
        if final not in checkpoints:
            checkpoints.append(None)  # the final weights
        try:
            scorer = self._scorer(ctx)
        except Exception as e:
            ctx.fail(f"studies.{ctx.current_study}: score", e)
            scorer = None
        name = scorer.name if scorer is not None else None
        base = {"model": self.likelihood, "in_distribution": spec.core.get("train", {}).get("data", "")}
        label = f"{self.generator}_samples"
        cpu = copy.deepcopy(gan).cpu().eval()
        steps, bpds, scores, last = [], [], [], None
        for step in checkpoints:
            s = final if step is None else int(step)
            row = {**base, "eval_set": label, "detector": f"step={s}", "n": int(self.n)}
            try:
                gen = torch.Generator().manual_seed(int(self.seed))  # the same z at every checkpoint
                x = cpu.sample(int(self.n), generator=gen, step=step, work_dir=work_dir)
                x = np.ascontiguousarray(torch.as_tensor(x).cpu().numpy().astype(np.uint8))
                bpd = bpd_of(lik, x)
            except Exception as e:
                ctx.fail(f"studies.{ctx.current_study}: checkpoint {s}", e)
                continue
            last = (s, x)
            yield {**row, "metric": "bpd_mean", "value": float(bpd.mean())}
            yield {**row, "metric": "bpd_std", "value": float(bpd.std())}
            sc = float("nan")
            if scorer is not None:
                try:
                    sc, sd = score_from_probs(scorer(x), self.splits)
                    yield {**row, "metric": name, "value": sc}
                    yield {**row, "metric": f"{name}_std", "value": sd}
                except Exception as e:
                    ctx.fail(f"studies.{ctx.current_study}: {name} at checkpoint {s}", e)
            steps.append(s)
            bpds.append(float(bpd.mean()))
            scores.append(sc)
        ref_bpd = None
        if self.reference is not None:
            try:
                ref = ctx.load(self.reference, "test")
                rb = np.asarray(ctx.scores(self.likelihood, self.reference, "test")["bpd"], dtype=np.float64)
                ref_bpd = float(rb.mean())
                row = {**base, "eval_set": self.reference, "detector": "", "n": len(rb)}
                yield {**row, "metric": "bpd_mean", "value": ref_bpd}
                yield {**row, "metric": "bpd_std", "value": float(rb.std())}
                if scorer is not None:
                    xs = ref.images[: int(self.n)]
                    sc, sd = score_from_probs(scorer(xs), min(int(self.splits), len(xs)))
                    yield {**row, "metric": name, "value": sc, "n": len(xs)}
                    yield {**row, "metric": f"{name}_std", "value": sd, "n": len(xs)}
            except Exception as e:
                ctx.fail(f"studies.{ctx.current_study}: reference {self.reference}", e)
        if scorer is not None and len(steps) >= 2 and np.isfinite(scores).all():
            yield {**base, "eval_set": label, "detector": "", "metric": f"spearman_bpd_vs_{name}",
                   "value": spearman(bpds, scores), "n": len(steps)}
        if steps:
            try:
                self._figure(ctx, steps, bpds, scores, name, ref_bpd, last)
            except Exception as e:
                ctx.fail(f"studies.{ctx.current_study}: figure", e)

    def _figure(self, ctx, steps, bpds, scores, name, ref_bpd, last) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4.2))
        s, x = last
        k = int(min(8, np.floor(np.sqrt(len(x)))))
        grid = x[: k * k].reshape(k, k, *x.shape[1:]).transpose(0, 3, 1, 4, 2).reshape(k * x.shape[2], k * x.shape[3], x.shape[1])
        ax0.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid[..., :3], cmap="gray" if grid.shape[-1] == 1 else None,
                   interpolation="nearest")
        ax0.set_axis_off()
        ax0.set_title(f"{self.generator} samples, step {s}", fontsize=9)
        ax1.plot(steps, bpds, "o-", color="tab:red", label="bits/dim of samples")
        if ref_bpd is not None:
            ax1.axhline(ref_bpd, color="tab:red", ls="--", lw=1, label=f"{self.reference} test bits/dim")
        ax1.set_xlabel("generator step")
        ax1.set_ylabel(f"bits/dim under {self.likelihood}", color="tab:red")
        lines, labels = ax1.get_legend_handles_labels()
        if name is not None and np.isfinite(scores).any():
            ax2 = ax1.twinx()
            ax2.plot(steps, scores, "s-", color="tab:blue", label=name)
            ax2.set_ylabel(name, color="tab:blue")
            l2, lab2 = ax2.get_legend_handles_labels()
            lines, labels = lines + l2, labels + lab2
            rho = spearman(bpds, scores) if len(steps) >= 2 and np.isfinite(scores).all() else float("nan")
            ax1.set_title(f"Spearman(bits/dim, {name}) = {rho:.2f} over {len(steps)} checkpoints", fontsize=9)
        ax1.legend(lines, labels, fontsize=8, loc="best")
        fig.suptitle("Bits/dim over GAN training (paper §4.1, Fig. 5)", fontsize=10)
        fig.tight_layout()
        fig.savefig(ctx.figures_dir / f"{ctx.current_study}.png", dpi=90)
        plt.close(fig)


@hookimpl
def register_studies():
    return {"gan_bpd": GANBitsPerDim}
