"""The detectors of plugins/ood_detectors.py against direct, independently written formulas."""
import numpy as np
import pytest
from scipy import special, stats

from benchbench_plugins import ood_detectors as od


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_ccg_is_the_largest_class_log_density_under_a_tied_covariance(rng):
    labels = rng.integers(0, 3, size=400)
    means = rng.normal(0, 3, size=(3, 4))
    feats = means[labels] + rng.normal(0, 1, size=(400, 4)) @ np.array([[1, .3, 0, 0], [0, 1, .2, 0], [0, 0, 1, 0], [0, 0, .5, 1.]])
    det = od.ClassConditionalGaussians(reg=1e-3).fit({"features": feats, "labels": labels})
    # direct: pooled covariance (ddof 0) around each class mean, plus the ridge, scipy's Gaussian log-pdf
    mu = np.stack([feats[labels == c].mean(0) for c in range(3)])
    resid = feats - mu[labels]
    cov = resid.T @ resid / len(feats)
    cov += 1e-3 * np.mean(np.diag(cov)) * np.eye(4)
    test = rng.normal(0, 3, size=(50, 4))
    expect = np.max([stats.multivariate_normal(mu[c], cov).logpdf(test) for c in range(3)], axis=0)
    np.testing.assert_allclose(det.score_samples({"features": test}), expect, rtol=1e-9, atol=1e-9)


def test_quantile_threshold_keeps_the_stated_share_of_the_fit_split(rng):
    labels = rng.integers(0, 3, size=1000)
    feats = rng.normal(size=(1000, 5)) + labels[:, None]
    for keep in (0.95, 0.8):
        det = od.ClassConditionalGaussians(keep=keep).fit({"features": feats, "labels": labels})
        kept = np.mean(det.predict({"features": feats}) == 1)
        assert keep <= kept <= keep + 0.002, (keep, kept)


def test_ccg_needs_the_fit_split_labels(rng):
    with pytest.raises(KeyError):
        od.ClassConditionalGaussians().fit({"features": rng.normal(size=(10, 2))})
    assert od.ClassConditionalGaussians.fit_requires == ("labels",)
    assert "labels" not in od.ClassConditionalGaussians.requires  # eval sets are never asked for labels


def test_msp_and_energy(rng):
    logits = rng.normal(0, 3, size=(100, 10))
    msp = od.MaxSoftmax().fit({"logits": logits})
    np.testing.assert_allclose(msp.score_samples({"logits": logits}), special.softmax(logits, axis=1).max(1), rtol=1e-12)
    en = od.Energy(temperature=2.0).fit({"logits": logits})
    np.testing.assert_allclose(en.score_samples({"logits": logits}), 2.0 * special.logsumexp(logits / 2.0, axis=1), rtol=1e-12)


def test_likelihood_ratio_input_complexity_and_raw_likelihood(rng):
    lp, bg = rng.normal(-2000, 50, 100), rng.normal(-2100, 50, 100)
    det = od.LikelihoodRatio(background="bg").fit({"log_prob": lp, "background/log_prob": bg})
    assert det.model_roles() == {"background": "bg"}
    np.testing.assert_allclose(det.score_samples({"log_prob": lp, "background/log_prob": bg}), lp - bg)
    bpd, png = rng.normal(3, .3, 100), rng.normal(5, .5, 100)
    ic = od.InputComplexity(complexity="zip").fit({"bpd": bpd, "complexity/bpd": png})
    assert ic.model_roles() == {"complexity": "zip"}
    np.testing.assert_allclose(ic.score_samples({"bpd": bpd, "complexity/bpd": png}), png - bpd)  # = -(bpd - L)
    raw = od.Likelihood().fit({"bpd": bpd})
    np.testing.assert_allclose(raw.score_samples({"bpd": bpd}), -bpd)


def test_typicality_entropy_from_one_half_threshold_from_the_other(rng):
    bpd = rng.normal(3.0, 0.2, 501)
    det = od.Typicality(batch=1, alpha=0.9, n_bootstrap=20000, seed=7).fit({"bpd": bpd})
    perm = np.random.default_rng(7).permutation(501)
    assert det.entropy_ == pytest.approx(bpd[perm[:250]].mean(), rel=1e-12)
    # batch 1: the bootstrap quantile approaches the held-out half's own quantile of |bpd - H|
    assert det.epsilon_ == pytest.approx(np.quantile(np.abs(bpd[perm[250:]] - det.entropy_), 0.9), rel=0.05)
    x = np.array([det.entropy_, det.entropy_ + 1.0])
    np.testing.assert_allclose(det.score_samples({"bpd": x}), [0.0, -1.0])
    # batches of M consecutive inputs share their batch mean's score
    det3 = od.Typicality(batch=3).fit({"bpd": bpd})
    s = det3.score_samples({"bpd": np.array([1.0, 2.0, 3.0, 10.0, 10.0])})
    np.testing.assert_allclose(s, [-abs(2.0 - det3.entropy_)] * 3 + [-abs(10.0 - det3.entropy_)] * 2)


def test_waic_is_mean_minus_variance_over_the_ensemble(rng):
    lps = rng.normal(-100, 5, size=(3, 40))
    det = od.WAIC(ensemble=["a", "b"])
    assert det.requires == ("log_prob", "member1/log_prob", "member2/log_prob")
    assert det.model_roles() == {"member1": "a", "member2": "b"}
    scores = {"log_prob": lps[0], "member1/log_prob": lps[1], "member2/log_prob": lps[2]}
    det.fit(scores)
    np.testing.assert_allclose(det.score_samples(scores), lps.mean(0) - lps.var(0))


@pytest.mark.parametrize("bad", [{"keep": 0.0}, {"keep": 1.5}])
def test_bad_keep_is_named(bad, rng):
    with pytest.raises(ValueError, match="keep"):
        od.MaxSoftmax(**bad).fit({"logits": rng.normal(size=(10, 3))})


def test_non_finite_scores_are_named(rng):
    with pytest.raises(ValueError, match="'bpd'.*non-finite"):
        od.Likelihood().fit({"bpd": np.array([1.0, np.nan])})
