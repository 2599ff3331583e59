"""The paper's three bits/dim interval detectors (Dalal, Li, Taori, §4.2).

Fit: mu and sigma of bits/dim over the in-distribution fit split (the paper: the
CIFAR-10 training set). An image is in-distribution when its bits/dim lies in

* ``ar-2sd``: [mu - 2 sigma, mu + 2 sigma]
* ``ar-1sd``: [mu - sigma, mu + sigma]
* ``ar-one-sided``: (-inf, mu + 2 sigma]

Score (higher = more in-distribution): two-sided ``-|bpd - mu| / sigma``, one-sided
``-(bpd - mu) / sigma``; ``offset_ = -k``, so ``decision_function >= 0`` is exactly
the interval (boundaries included). sigma is the population standard deviation
(ddof=0).
"""
from __future__ import annotations

import numpy as np

from benchbench import Detector, hookimpl


class BitsPerDimInterval(Detector):
    """In-distribution iff bits/dim is within ``k`` standard deviations of the fit-split mean."""

    requires = ("bpd",)

    def __init__(self, k: float = 2.0, one_sided: bool = False):
        self.k = k
        self.one_sided = one_sided

    def fit(self, scores):
        bpd = np.asarray(scores["bpd"], dtype=np.float64)
        if bpd.ndim != 1 or len(bpd) < 2 or not np.all(np.isfinite(bpd)):
            raise ValueError(f"{type(self).__name__}.fit needs >= 2 finite bits/dim values, got shape {bpd.shape}")
        self.mu_ = float(bpd.mean())
        self.sigma_ = float(max(bpd.std(), 1e-12))
        self.offset_ = -float(self.k)
        return self

    def score_samples(self, scores):
        self._check_fitted()
        z = (np.asarray(scores["bpd"], dtype=np.float64) - self.mu_) / self.sigma_
        return -z if self.one_sided else -np.abs(z)


class AR2SD(BitsPerDimInterval):
    """[mu - 2 sigma, mu + 2 sigma]."""

    def __init__(self, k: float = 2.0):
        super().__init__(k=k, one_sided=False)


class AR1SD(BitsPerDimInterval):
    """[mu - sigma, mu + sigma]."""

    def __init__(self, k: float = 1.0):
        super().__init__(k=k, one_sided=False)


class AROneSided(BitsPerDimInterval):
    """(-inf, mu + 2 sigma]."""

    def __init__(self, k: float = 2.0):
        super().__init__(k=k, one_sided=True)


@hookimpl
def register_detectors():
    return {"ar-2sd": AR2SD, "ar-1sd": AR1SD, "ar-one-sided": AROneSided, "bpd-interval": BitsPerDimInterval}
