"""Each metric pinned against a case computed by hand."""
import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from benchbench import metrics


def test_pct_in_counts_plus_one():
    assert metrics.pct_in(np.array([1, -1, 1, 1])) == 75.0
    assert math.isnan(metrics.pct_in(np.array([])))


def test_auroc_hand_case():
    # in: 0.9, 0.8, 0.4 ; out: 0.7, 0.3. Pairs (in > out): 0.9>0.7,0.9>0.3,0.8>0.7,0.8>0.3,0.4>0.3 = 5 of 6
    assert metrics.auroc([0.9, 0.8, 0.4], [0.7, 0.3]) == pytest.approx(5 / 6)
    # ties count one half
    assert metrics.auroc([1.0], [1.0]) == pytest.approx(0.5)


def test_aupr_in_and_out_hand_case():
    s_in, s_out = [0.9, 0.8, 0.4], [0.7, 0.3]
    # in positive, ranking 0.9(in) 0.8(in) 0.7(out) 0.4(in) 0.3(out): AP = (1 + 1 + 3/4) / 3
    assert metrics.aupr_in(s_in, s_out) == pytest.approx((1 + 1 + 0.75) / 3)
    # out positive, ranking by -score: 0.3(out) 0.4(in) 0.7(out) 0.8 0.9: AP = (1 + 2/3) / 2
    assert metrics.aupr_out(s_in, s_out) == pytest.approx((1 + 2 / 3) / 2)


def test_fpr95_hand_case():
    s_in = np.arange(20, dtype=float)  # 0..19; keeping 95% = 19 of 20 -> threshold 1.0
    s_out = np.array([0.5, 1.0, 5.0, -3.0])  # accepted (>= 1.0): 1.0 and 5.0
    assert metrics.fpr_at_95_tpr(s_in, s_out) == pytest.approx(0.5)


def test_fpr95_agrees_with_roc_curve():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(1, 1, 500), rng.normal(0, 1, 400)
    y = np.r_[np.ones(500), np.zeros(400)]
    fpr, tpr, _ = roc_curve(y, np.r_[s_in, s_out])
    expected = fpr[np.searchsorted(tpr, 0.95, side="left")]
    assert metrics.fpr_at_95_tpr(s_in, s_out) == pytest.approx(expected)


def test_perfect_separation():
    assert metrics.auroc([2, 3], [0, 1]) == 1.0
    assert metrics.fpr_at_95_tpr([2, 3], [0, 1]) == 0.0
    assert metrics.aupr_in([2, 3], [0, 1]) == 1.0
    assert metrics.aupr_out([2, 3], [0, 1]) == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_auroc_and_aupr_equal_sklearn_including_ties(seed):
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(seed)
    s_in = np.round(rng.normal(0.5, 1, 300), 1 if seed % 2 else 6)  # odd seeds: many ties
    s_out = np.round(rng.normal(0, 1, 200), 1 if seed % 2 else 6)
    y = np.r_[np.ones(300), np.zeros(200)]
    s = np.r_[s_in, s_out]
    assert metrics.auroc(s_in, s_out) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.aupr_in(s_in, s_out) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert metrics.aupr_out(s_in, s_out) == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
