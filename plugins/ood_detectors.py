"""Outlier detectors beyond the paper's bits/dim intervals: CCG, the likelihood-based repairs
proposed since, and two classifier baselines.

Every detector follows :class:`benchbench.Detector`: ``score_samples`` is higher for more
in-distribution inputs, ``fit`` sees only the in-distribution fit split, and unless
stated otherwise the threshold is **the fit-split quantile that keeps a fraction
``keep`` (default 0.95) in**: ``offset_ = quantile(score_samples(fit), 1 - keep)``, so
``predict`` accepts ``score >= offset_``.

=====================  ==========================================  =====================================
name                   score_samples (higher = in-distribution)    needs
=====================  ==========================================  =====================================
``likelihood``         -bpd (the raw likelihood, per dimension)     ``bpd``
``ccg``                max_c log N(f; mu_c, Sigma) (nats)           classifier ``features``; ``labels`` at fit
``msp``                max_c softmax(logits)_c                      classifier ``logits``
``energy``             T logsumexp(logits / T)  (= -energy)         classifier ``logits``
``likelihood-ratio``   log p(x) - log p_background(x)               ``log_prob`` of the model and of ``background``
``input-complexity``   L(x)/D - bpd(x)  (compressed minus model)    ``bpd`` of the model and of ``complexity``
``typicality``         -| mean bpd of a batch of M - H_hat |        ``bpd``; bootstrap threshold (below)
``waic``               mean_k log p_k(x) - var_k log p_k(x)         ``log_prob`` of the model and ``ensemble``
=====================  ==========================================  =====================================

References: Lee, Lee, Lee & Shin (2018), "A simple unified framework for detecting
out-of-distribution samples and adversarial attacks" (class-conditional Gaussians with a
tied covariance; the paper under reproduction calls it CCG); Hendrycks & Gimpel (2017)
(MSP); Liu, Wang, Owens & Li (2020) (energy); Ren et al. (2019), "Likelihood ratios for
out-of-distribution detection"; Serrà et al. (2020), "Input complexity and
out-of-distribution detection with likelihood-based generative models"; Nalisnick,
Matsukawa, Teh & Lakshminarayanan (2019), "Detecting out-of-distribution inputs to deep
generative models using typicality"; Choi, Jang & Alemi (2018), "WAIC, but why?".

Detectors that read another model (``likelihood-ratio``, ``input-complexity``, ``waic``)
name it by its suite alias; the OOD study scores the same images with that model and
hands the scores over as ``"<role>/<score>"`` (see :meth:`benchbench.Detector.model_roles`).
"""
from __future__ import annotations

import numpy as np

from benchbench import Detector, hookimpl


def _array(scores, key: str, name: str, ndim: int = 1) -> np.ndarray:
    a = np.asarray(scores[key], dtype=np.float64)
    if a.ndim != ndim or len(a) == 0:
        raise ValueError(f"{name}: score {key!r} must be a non-empty {ndim}-d array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: score {key!r} has {int((~np.isfinite(a)).sum())} non-finite values")
    return a


class QuantileDetector(Detector):
    """Base: ``_score`` defines the statistic; ``fit`` learns ``_fit`` state and the keep-quantile threshold."""

    keep: float

    def _fit(self, scores) -> None:
        """Learn whatever ``_score`` needs (state ending in ``_``); the default learns nothing."""

    def _score(self, scores) -> np.ndarray:
        raise NotImplementedError

    def fit(self, scores):
        if not 0.0 < float(self.keep) <= 1.0:
            raise ValueError(f"{type(self).__name__}: keep must be in (0, 1], got {self.keep!r}")
        self._fit(scores)
        self.offset_ = float(np.quantile(self._score(scores), 1.0 - float(self.keep)))
        return self

    def score_samples(self, scores):
        self._check_fitted()
        return self._score(scores)


class Likelihood(QuantileDetector):
    """The raw likelihood as the score: -bits/dim (what the paper's intervals threshold, one-sided)."""

    requires = ("bpd",)

    def __init__(self, keep: float = 0.95):
        self.keep = keep

    def _score(self, scores):
        return -_array(scores, "bpd", "likelihood")


class ClassConditionalGaussians(QuantileDetector):
    """CCG / Mahalanobis (Lee et al. 2018): per-class means, one shared covariance, on classifier features.

    Fit: mu_c = mean feature of class c; Sigma = the pooled (tied, ddof=0) covariance plus
    ``reg * mean(diag Sigma) * I`` (a ridge that keeps it invertible). Score: the largest
    class log-density max_c log N(f; mu_c, Sigma), i.e. minus half the smallest squared
    Mahalanobis distance plus a constant.
    """

    requires = ("features",)
    fit_requires = ("labels",)

    def __init__(self, keep: float = 0.95, reg: float = 1e-6):
        self.keep = keep
        self.reg = reg

    def _fit(self, scores):
        f = _array(scores, "features", "ccg", ndim=2)
        y = np.asarray(scores["labels"]).astype(np.int64)
        if y.shape != (len(f),):
            raise ValueError(f"ccg: labels must have shape ({len(f)},), got {y.shape}")
        self.classes_ = np.unique(y)
        self.means_ = np.stack([f[y == c].mean(0) for c in self.classes_])
        centred = f - self.means_[np.searchsorted(self.classes_, y)]
        cov = centred.T @ centred / len(f)
        cov += float(self.reg) * max(float(np.mean(np.diag(cov))), 1e-12) * np.eye(len(cov))
        chol = np.linalg.cholesky(cov)
        self.precision_ = np.linalg.inv(cov)
        self.log_norm_ = -0.5 * (len(cov) * np.log(2 * np.pi) + 2.0 * np.log(np.diag(chol)).sum())

    def _score(self, scores):
        f = _array(scores, "features", "ccg", ndim=2)
        fp = f @ self.precision_
        quad = (fp * f).sum(1)[:, None] - 2.0 * fp @ self.means_.T + ((self.means_ @ self.precision_) * self.means_).sum(1)[None]
        return self.log_norm_ - 0.5 * quad.min(1)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(1, keepdims=True)))[:, 0]


class MaxSoftmax(QuantileDetector):
    """MSP (Hendrycks & Gimpel 2017): the largest softmax probability of the classifier."""

    requires = ("logits",)

    def __init__(self, keep: float = 0.95):
        self.keep = keep

    def _score(self, scores):
        z = _array(scores, "logits", "msp", ndim=2)
        return np.exp(z.max(1) - _logsumexp(z))


class Energy(QuantileDetector):
    """Energy score (Liu et al. 2020): T logsumexp(logits / T), the negative free energy."""

    requires = ("logits",)

    def __init__(self, keep: float = 0.95, temperature: float = 1.0):
        self.keep = keep
        self.temperature = temperature

    def _score(self, scores):
        t = float(self.temperature)
        return t * _logsumexp(_array(scores, "logits", "energy", ndim=2) / t)


class LikelihoodRatio(QuantileDetector):
    """Likelihood ratio (Ren et al. 2019): log p(x) - log p_background(x), both in nats.

    ``background`` is the suite alias of a model of the same family trained on perturbed
    inputs (for PixelCNN++: ``mutation_rate: 0.2`` and ``l2``), which captures the
    population-level background statistics that the ratio cancels.
    """

    requires = ("log_prob", "background/log_prob")

    def __init__(self, background: str = "background", keep: float = 0.95):
        self.background = background
        self.keep = keep

    def model_roles(self):
        return {"background": self.background}

    def _score(self, scores):
        return _array(scores, "log_prob", "likelihood-ratio") - _array(scores, "background/log_prob", "likelihood-ratio")


class InputComplexity(QuantileDetector):
    """Input complexity (Serrà et al. 2020): S(x) = bpd(x) - L(x)/D is the outlier score; we return -S.

    ``complexity`` is the suite alias of a ``compressor`` model (PNG by default); both terms are
    bits per dimension.
    """

    requires = ("bpd", "complexity/bpd")

    def __init__(self, complexity: str = "png", keep: float = 0.95):
        self.complexity = complexity
        self.keep = keep

    def model_roles(self):
        return {"complexity": self.complexity}

    def _score(self, scores):
        return _array(scores, "complexity/bpd", "input-complexity") - _array(scores, "bpd", "input-complexity")


class Typicality(Detector):
    """Typicality test (Nalisnick et al. 2019) on batches of ``batch`` inputs (M; default 1).

    Fit: the fit split is shuffled (``seed``) and halved. H_hat = the mean bits/dim of the
    first half (the entropy estimate, in bits/dim); the threshold eps_alpha is the ``alpha``
    quantile of |mean bpd of a batch of M - H_hat| over ``n_bootstrap`` batches drawn with
    replacement from the second half (the paper's held-out validation set). Score: inputs
    are grouped into consecutive batches of M in the order given; every input gets its
    batch's -|mean bpd - H_hat|, and ``offset_ = -eps_alpha``.
    """

    requires = ("bpd",)

    def __init__(self, batch: int = 1, alpha: float = 0.99, n_bootstrap: int = 5000, seed: int = 0):
        self.batch = batch
        self.alpha = alpha
        self.n_bootstrap = n_bootstrap
        self.seed = seed

    def fit(self, scores):
        bpd = _array(scores, "bpd", "typicality")
        m = int(self.batch)
        if m < 1 or not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"typicality: need batch >= 1 and 0 < alpha < 1, got batch={self.batch!r}, alpha={self.alpha!r}")
        if len(bpd) < 4:
            raise ValueError(f"typicality: the fit split needs >= 4 inputs, got {len(bpd)}")
        rng = np.random.default_rng(int(self.seed))
        perm = rng.permutation(len(bpd))
        est, held = bpd[perm[: len(bpd) // 2]], bpd[perm[len(bpd) // 2:]]
        self.entropy_ = float(est.mean())
        draws = held[rng.integers(0, len(held), size=(int(self.n_bootstrap), m))].mean(1)
        self.epsilon_ = float(np.quantile(np.abs(draws - self.entropy_), float(self.alpha)))
        self.offset_ = -self.epsilon_
        return self

    def score_samples(self, scores):
        self._check_fitted()
        bpd = _array(scores, "bpd", "typicality")
        m = int(self.batch)
        group = np.arange(len(bpd)) // m
        means = np.bincount(group, weights=bpd) / np.bincount(group)
        return -np.abs(means[group] - self.entropy_)


class WAIC(QuantileDetector):
    """WAIC (Choi et al. 2018): E_k[log p_k(x)] - Var_k[log p_k(x)] over an ensemble, in nats.

    The ensemble is the detector's own model plus the suite aliases in ``ensemble`` (the
    same architecture trained with other seeds: ``train: {seed: ...}``); the variance is the
    population variance (ddof=0) over the K members.
    """

    def __init__(self, ensemble: tuple[str, ...] | list[str] = (), keep: float = 0.95):
        self.ensemble = ensemble
        self.keep = keep

    @property
    def requires(self) -> tuple[str, ...]:
        return ("log_prob",) + tuple(f"member{i}/log_prob" for i in range(1, len(self.ensemble) + 1))

    def model_roles(self):
        return {f"member{i}": alias for i, alias in enumerate(self.ensemble, start=1)}

    def _score(self, scores):
        lp = np.stack([_array(scores, k, "waic") for k in self.requires])
        return lp.mean(0) - lp.var(0)


@hookimpl
def register_detectors():
    return {
        "likelihood": Likelihood,
        "ccg": ClassConditionalGaussians,
        "msp": MaxSoftmax,
        "energy": Energy,
        "likelihood-ratio": LikelihoodRatio,
        "input-complexity": InputComplexity,
        "typicality": Typicality,
        "waic": WAIC,
    }
