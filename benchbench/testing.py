"""Contract checks that plugin authors can run on their own components.

>>> from benchbench.testing import check_detector
>>> check_detector(MyDetector)            # a class (built with defaults) or an instance

``check_detector`` raises ``AssertionError`` naming the broken rule. It builds
synthetic per-sample scores for every name in the detector's ``requires``; pass
``make_scores(rng, n, shifted) -> dict`` for score names it does not know. Scores of another
model (``"role/name"``, see ``Detector.model_roles``) are drawn in-distribution, so the
planted shift lives in the detector's own model only (e.g. a likelihood ratio must see it).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np

from benchbench.api import Detector
from benchbench.metrics import auroc


def standard_scores(rng: np.random.Generator, n: int, shifted: bool) -> dict[str, np.ndarray]:
    """In-distribution-like scores, or (``shifted``) clearly less likely ones, for the standard names.

    bpd up by 3 (sigma 0.2), log_prob down, per-pixel NLL up, features moved far from
    every class mean, logits flattened (no confident class).
    """
    labels = rng.integers(0, 3, size=n)
    bpd = rng.normal(3.0, 0.2, size=n) + (3.0 if shifted else 0.0)
    means = np.eye(3, 16) * 6.0
    features = means[labels] + rng.normal(0, 1, size=(n, 16)) + (12.0 if shifted else 0.0)
    logits = np.eye(3, 10)[labels] * (0.0 if shifted else 8.0) + rng.normal(0, 0.5, size=(n, 10))
    return {
        "bpd": bpd,
        "log_prob": -bpd * 64 * np.log(2.0),
        "nll_pixels": np.abs(rng.normal(2.0, 0.3, size=(n, 8, 8))) + (2.0 if shifted else 0.0),
        "features": features,
        "logits": logits,
        "labels": labels,
    }


def _fitted_attrs(obj) -> dict[str, Any]:
    return {k: v for k, v in vars(obj).items() if k.endswith("_") and not k.startswith("_")}


def check_detector(detector: Any, *, n: int = 300, seed: int = 0,
                   make_scores: Callable[[np.random.Generator, int, bool], dict] | None = None) -> None:
    """Check the scikit-learn-shaped detector contract; raises AssertionError on the first broken rule."""
    factory = detector if isinstance(detector, type) else type(detector)
    proto = factory() if isinstance(detector, type) else detector
    name = factory.__name__
    assert isinstance(proto, Detector), f"{name} must subclass benchbench.Detector"
    requires = tuple(getattr(proto, "requires", ()))
    assert requires and all(isinstance(r, str) for r in requires), f"{name}.requires must be a non-empty tuple of score names"
    assert not _fitted_attrs(proto), f"{name}.__init__ must store parameters only; found learned attributes {sorted(_fitted_attrs(proto))}"
    params = proto.get_params()

    gen = make_scores or standard_scores
    rng = np.random.default_rng(seed)
    fit_all, test_all, out_all = gen(rng, n, False), gen(rng, n, False), gen(rng, n, True)
    for r in requires:  # another model's scores ("role/name"): an independent in-distribution draw
        role, _, base = r.partition("/")
        if base:
            for i, d in enumerate((fit_all, test_all, out_all)):
                d[r] = gen(np.random.default_rng([seed, i] + list(role.encode())), n, False).get(base)
            if fit_all[r] is None:
                raise AssertionError(f"check_detector does not know scores {[base]}: pass make_scores= to generate them")
    missing = [r for r in requires if r not in fit_all]
    assert not missing, f"check_detector does not know scores {missing}: pass make_scores= to generate them"
    fit_keys = requires + tuple(getattr(proto, "fit_requires", ()))
    fit = {k: fit_all[k] for k in fit_keys}
    test, out = ({k: d[k] for k in requires} for d in (test_all, out_all))
    originals = copy.deepcopy((fit, test, out))

    def fresh():
        return factory(**copy.deepcopy(params))

    try:
        fresh().score_samples(test)
    except AssertionError:
        raise
    except Exception:
        pass
    else:
        raise AssertionError(f"{name}.score_samples must raise before fit")

    det = fresh()
    assert det.fit(fit) is det, f"{name}.fit must return self"
    assert _fitted_attrs(det), f"{name}.fit must set learned attributes ending in '_'"
    assert hasattr(det, "offset_"), f"{name}.fit must set offset_ (the decision threshold)"
    assert det.get_params() == params, f"{name}.fit must not change its parameters ({params} -> {det.get_params()})"

    for label, data in (("in-distribution", test), ("shifted", out)):
        s, d, p = det.score_samples(data), det.decision_function(data), det.predict(data)
        for what, arr in (("score_samples", s), ("decision_function", d), ("predict", p)):
            arr = np.asarray(arr)
            assert arr.shape == (n,), f"{name}.{what} must return shape ({n},), got {arr.shape} on {label} data"
            assert np.all(np.isfinite(arr.astype(np.float64))), f"{name}.{what} returned non-finite values on {label} data"
        assert set(np.unique(p)) <= {-1, 1}, f"{name}.predict must return +1/-1, got {sorted(set(np.unique(p)))}"
        np.testing.assert_allclose(d, np.asarray(s) - det.offset_, err_msg=f"{name}: decision_function != score_samples - offset_")
        np.testing.assert_array_equal(p, np.where(np.asarray(d) >= 0, 1, -1), err_msg=f"{name}: predict != sign of decision_function")

    for before, after in zip(originals, (fit, test, out)):
        for k in before:
            np.testing.assert_array_equal(before[k], after[k], err_msg=f"{name} mutated its input {k!r}")

    again = fresh().fit(fit)
    np.testing.assert_array_equal(det.score_samples(test), again.score_samples(test), err_msg=f"{name} is not deterministic")
    np.testing.assert_array_equal(det.predict(out), again.predict(out), err_msg=f"{name} is not deterministic")

    s_in, s_out = det.score_samples(test), det.score_samples(out)
    assert np.mean(s_in) > np.mean(s_out), f"{name}: sign wrong: a planted shift scored higher (more in-distribution) than in-distribution data"
    a = auroc(s_in, s_out)
    assert a > 0.9, f"{name}: AUROC {a:.3f} <= 0.9 on a planted shift"
    kept = np.mean(det.predict(test) == 1)
    assert kept > 0.5, f"{name}: accepts only {kept:.0%} of held-out in-distribution data"
