"""The four component interfaces: Dataset, Model, Detector, Study.

Every plugin returns factories (usually these classes' subclasses) from the
hooks in :mod:`benchbench.hookspecs`. Constructors store parameters only; all
work happens in ``load`` / ``fit`` / ``score`` / ``run``.

Conventions pinned here, once:

* Images are ``uint8`` arrays of shape ``(N, C, H, W)``.
* ``Model.log_prob`` is the log-likelihood in **nats** of the discrete image
  (each dimension takes one of 256 values), so that
  ``bits/dim = -log p(x) / (D * ln 2)`` with ``D = C*H*W``; see :func:`bits_per_dim`.
* ``Detector.score_samples``: higher means more in-distribution.
  ``predict`` returns +1 (in-distribution) or -1 (outlier).
"""
from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping

import numpy as np

Scores = Mapping[str, np.ndarray]
Row = dict[str, Any]

#: Columns of a leaderboard's ``results.csv``, in order (one measurement per row).
RESULT_COLUMNS = ("study", "model", "in_distribution", "eval_set", "detector", "metric", "value", "n")
#: The columns that identify a row (everything but the measurement).
KEY_COLUMNS = RESULT_COLUMNS[:6]


def bits_per_dim(log_prob_nats, num_dims: int):
    """bits/dim = -log p(x) / (D ln 2); log p in nats over 256 bins per dimension."""
    return -log_prob_nats / (num_dims * math.log(2.0))


def get_params(obj: Any) -> dict[str, Any]:
    """The constructor parameters of ``obj`` (scikit-learn style: read back from attributes)."""
    sig = inspect.signature(type(obj).__init__)
    out = {}
    for name, p in sig.parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(obj, name):
            out[name] = getattr(obj, name)
    return out


# --------------------------------------------------------------------------- datasets


class DataUnavailable(RuntimeError):
    """No source could provide a split; the message and ``attempts`` list every (place, reason) tried."""

    def __init__(self, message: str, attempts: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.attempts = list(attempts or [])


class DataFileError(ValueError):
    """A data file exists but cannot be used (corrupt, wrong columns, size or mode); the message names the file."""


@dataclass(frozen=True, eq=False)
class Split:
    """One loaded split: uint8 images (N, C, H, W), int64 labels or None, and where they came from."""

    images: np.ndarray
    labels: np.ndarray | None = None
    source: str = ""
    #: None for a complete split; otherwise a sentence saying what is missing.
    partial: str | None = None
    adapters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8 or self.images.ndim != 4:
            got = getattr(self.images, "dtype", type(self.images).__name__), getattr(self.images, "shape", None)
            raise TypeError(f"Split.images must be a uint8 array of shape (N, C, H, W); got {got}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"Split has {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def fingerprint(self) -> str:
        """sha256 of shape, pixel bytes, labels and shape adapters (first 16 hex digits)."""
        h = hashlib.sha256()
        h.update(repr(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        if self.labels is not None:
            h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        h.update(repr(self.adapters).encode())
        return h.hexdigest()[:16]


class Dataset:
    """A data set plugin: ``load(split)`` returns a :class:`Split`.

    A data set built from other components of the suite (e.g. samples of a trained
    generator) declares ``load(self, split, ctx)``; the runner then passes its
    :class:`~benchbench.runner.RunContext`. It may also define ``check(self, suite)``,
    yielding (key, message) problems for ``benchbench validate``, as studies do.
    """

    #: The split names this data set offers.
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def load(self, split: str) -> Split:
        """Load one split as uint8 images (N, C, H, W) plus labels when it has them."""
        raise NotImplementedError

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"{type(self).__name__} has no split {split!r}; it has {list(self.splits)}")


# --------------------------------------------------------------------------- models


@dataclass
class TrainContext:
    """What a model's ``fit`` gets from the runner: device, seed, a scratch folder, a logger, the rank layout.

    Data-parallel training (see :mod:`benchbench.distributed`): draw the *global* minibatch
    indices (``batch_size * world_size``) from ``seed`` on every rank, train on
    ``ctx.shard(indices)``, run the forward pass through ``ctx.data_parallel(self)``, and
    write files only when ``ctx.is_main``. In one process all three are no-ops.
    """

    device: Any = "cpu"
    seed: int = 0
    #: A folder private to this training run (same key -> same folder): keep resumable state here.
    work_dir: Path | None = None
    progress: bool = True
    #: Training-curve records (step, metrics), kept in the leaderboard.
    curve: list[dict[str, float]] = field(default_factory=list)
    #: This process's rank layout (:class:`benchbench.distributed.DistInfo`); None = one process.
    dist: Any = None

    @property
    def rank(self) -> int:
        return self.dist.rank if self.dist is not None else 0

    @property
    def world_size(self) -> int:
        return self.dist.world_size if self.dist is not None else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices):
        """This rank's contiguous part of a global minibatch of indices."""
        from benchbench.distributed import shard_bounds

        start, stop = shard_bounds(len(indices), self.rank, self.world_size)
        return indices[start:stop]

    def all_reduce(self, grads: list, average: bool = False) -> list:
        """Gradients summed (or averaged) over the ranks, for loops that use ``torch.autograd.grad``."""
        if self.world_size == 1:
            return grads
        from benchbench.distributed import all_reduce_gradients

        return all_reduce_gradients(self.dist, grads, average=average)

    def data_parallel(self, module):
        """``module`` under DistributedDataParallel in a distributed run, else ``module`` itself."""
        if self.world_size == 1:
            return module
        from benchbench.distributed import data_parallel

        return data_parallel(self.dist, module, self.device)

    def log(self, **metrics: float) -> None:
        """Record one point of the training curve (e.g. ``step=100, train_bpd=3.1``)."""
        self.curve.append({k: int(v) if isinstance(v, (int, np.integer)) else float(v) for k, v in metrics.items()})


try:  # torch is a hard dependency, but keep `import benchbench.api` cheap to reason about
    import torch
    from torch import nn

    _ModuleBase = nn.Module
except ImportError:  # pragma: no cover
    torch = None
    _ModuleBase = object


class Model(_ModuleBase):
    """A likelihood (or classifier) model: a torch module with a per-image score.

    Subclasses implement ``log_prob`` and ``fit``. The device is always given from
    outside (``model.to(device)``); no method may call ``.cuda()`` itself.
    """

    #: Names of the per-sample scores ``score`` returns (detectors declare what they need).
    provides: ClassVar[tuple[str, ...]] = ("log_prob", "bpd")
    #: Batch size used by the runner when scoring.
    eval_batch_size: int = 256
    #: False for a model with nothing to learn (e.g. a lossless compressor): the suite then
    #: needs neither ``train`` nor ``checkpoint`` for it, and ``fit`` is never called.
    trainable: ClassVar[bool] = True

    def log_prob(self, x: "torch.Tensor") -> "torch.Tensor":
        """Log-likelihood in nats, shape (N,), of images ``x`` given as floats in [0, 255], shape (N, C, H, W).

        Differentiable with respect to ``x`` (a continuous relaxation of the pixels).
        """
        raise NotImplementedError

    def fit(self, data: Split, ctx: TrainContext) -> "Model":
        """Train on the in-distribution training split; return self."""
        raise NotImplementedError

    @torch.no_grad() if torch is not None else (lambda f: f)
    def score(self, x: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        """Per-sample scores of a uint8 batch (N, C, H, W): at least every name in ``provides``."""
        lp = self.log_prob(x.float())
        return {"log_prob": lp, "bpd": bits_per_dim(lp, x[0].numel())}


# --------------------------------------------------------------------------- detectors


class Detector:
    """An outlier detector on per-sample scores, shaped like a scikit-learn estimator.

    * ``__init__`` stores parameters only.
    * ``fit(scores)`` sees only the in-distribution fit split; learned state ends in ``_``; returns self.
    * ``score_samples(scores)``: higher = more in-distribution.
    * ``decision_function = score_samples - offset_`` (>= 0 means in-distribution).
    * ``predict`` -> +1 in-distribution, -1 outlier.
    """

    #: Per-sample score names this detector needs from the model. A name ``"role/score"``
    #: is the score of another model of the suite, named by :meth:`model_roles`.
    requires: ClassVar[tuple[str, ...]] = ("bpd",)
    #: Extra names handed to ``fit`` only (e.g. ``"labels"`` of the in-distribution fit split);
    #: an eval set never supplies them, so no detector can read an outlier set's labels.
    fit_requires: ClassVar[tuple[str, ...]] = ()
    offset_: float

    def model_roles(self) -> dict[str, str]:
        """Other suite models this detector reads, ``{role: model alias}`` (e.g. a background model).

        Their scores arrive as ``"role/<score>"`` for the same images; the default is none.
        """
        return {}

    def fit(self, scores: Scores) -> "Detector":
        raise NotImplementedError

    def score_samples(self, scores: Scores) -> np.ndarray:
        raise NotImplementedError

    def decision_function(self, scores: Scores) -> np.ndarray:
        return self.score_samples(scores) - self.offset_

    def predict(self, scores: Scores) -> np.ndarray:
        return np.where(self.decision_function(scores) >= 0, 1, -1)

    def get_params(self) -> dict[str, Any]:
        return get_params(self)

    def _check_fitted(self) -> None:
        if not hasattr(self, "offset_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit() on the in-distribution fit split")


# --------------------------------------------------------------------------- studies


class Study:
    """An experiment: ``run(ctx)`` yields result rows (dicts with :data:`RESULT_COLUMNS`)."""

    def check(self, suite: Any) -> Iterator[tuple[str, str]]:
        """Static checks against the suite, without running: yield (key path, message) for each problem."""
        return iter(())

    def run(self, ctx: Any) -> Iterable[Row]:
        raise NotImplementedError

    def report(self, rows: list[Row]) -> str:
        """Optional: markdown summarising this study's rows (e.g. a paper's table layout) for the leaderboard."""
        return ""


Factory = Callable[..., Any]
