"""OOD metrics, each defined once.

Convention for every threshold-free metric: **in-distribution is the positive
class** and the score is the detector's ``score_samples`` (higher = more
in-distribution), except ``aupr_out``, where outliers are positive and the
score is negated (Hendrycks & Gimpel 2017).

* ``pct_in``: the paper's "% classified as in-distribution" — 100 x the share of
  a set that the detector's own threshold accepts (``predict == +1``).
* ``auroc``: area under the ROC curve; ties count one half (the Mann-Whitney
  statistic; equal to sklearn's ``roc_auc_score``).
* ``aupr_in`` / ``aupr_out``: average precision, sum over thresholds of
  (R_k - R_{k-1}) P_k (equal to sklearn's ``average_precision_score``),
  in-distribution resp. outliers positive.
* ``fpr95``: the share of outliers accepted at the threshold that keeps 95% of
  the in-distribution set (TPR >= 95%, in-distribution positive). With ties, the
  threshold t is the score of the ceil(0.95 n)-th highest in-distribution sample
  and every sample with score >= t is accepted.

Implemented in numpy (scikit-learn costs a second to import); ``tests/test_metrics.py``
pins each against scikit-learn.
"""
from __future__ import annotations

import math

import numpy as np

#: Metrics that compare an in-distribution eval set with an outlier set.
PAIR_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")
ALL_METRICS = ("pct_in",) + PAIR_METRICS


def pct_in(pred: np.ndarray) -> float:
    """Percent of samples predicted in-distribution (+1)."""
    pred = np.asarray(pred)
    return float(100.0 * np.mean(pred == 1)) if len(pred) else math.nan


def _labels_scores(s_in: np.ndarray, s_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s_in, s_out = np.asarray(s_in, dtype=np.float64), np.asarray(s_out, dtype=np.float64)
    y = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    return y, np.concatenate([s_in, s_out])


def _rank_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    first = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = avg[group]
    return ranks


def auroc(s_in: np.ndarray, s_out: np.ndarray) -> float:
    """AUROC, in-distribution positive: P(score_in > score_out) + P(tie) / 2."""
    y, s = _labels_scores(s_in, s_out)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _rank_average(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    if y.sum() == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last sample of each group of tied scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(1 - y)[last]
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def aupr_in(s_in: np.ndarray, s_out: np.ndarray) -> float:
    """Average precision with in-distribution positive."""
    y, s = _labels_scores(s_in, s_out)
    return _average_precision(y, s)


def aupr_out(s_in: np.ndarray, s_out: np.ndarray) -> float:
    """Average precision with outliers positive (scores negated)."""
    y, s = _labels_scores(s_in, s_out)
    return _average_precision(1 - y, -s)


def fpr_at_95_tpr(s_in: np.ndarray, s_out: np.ndarray, tpr: float = 0.95) -> float:
    """Share of outliers accepted at the threshold keeping ``tpr`` of the in-distribution set."""
    s_in = np.sort(np.asarray(s_in, dtype=np.float64))[::-1]
    k = max(1, math.ceil(tpr * len(s_in) - 1e-9))
    threshold = s_in[k - 1]
    return float(np.mean(np.asarray(s_out, dtype=np.float64) >= threshold))


PAIR_FUNCTIONS = {"auroc": auroc, "aupr_in": aupr_in, "aupr_out": aupr_out, "fpr95": fpr_at_95_tpr}
