"""Every registered detector passes the contract; the AR intervals match the paper."""
import numpy as np
import pytest

from benchbench.registry import Registry
from benchbench.testing import check_detector

DETECTORS = Registry(autoload=False).tables["detectors"]


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_registered_detector_passes_check_detector(name):
    check_detector(DETECTORS[name].factory)


def test_ar_intervals_match_the_paper():
    fit = {"bpd": np.array([2.0, 4.0])}  # mu = 3, sigma (ddof 0) = 1
    bpd = np.array([0.0, 0.99, 1.0, 1.5, 2.0, 3.0, 4.0, 4.5, 5.0, 5.01, 9.0])
    expect = {
        "ar-2sd": (bpd >= 1.0) & (bpd <= 5.0),
        "ar-1sd": (bpd >= 2.0) & (bpd <= 4.0),
        "ar-one-sided": bpd <= 5.0,
    }
    for name, inside in expect.items():
        det = DETECTORS[name].factory().fit(fit)
        assert det.mu_ == 3.0 and det.sigma_ == 1.0
        np.testing.assert_array_equal(det.predict({"bpd": bpd}), np.where(inside, 1, -1), err_msg=name)


def test_check_detector_catches_a_wrong_sign():
    from benchbench import Detector

    class Backwards(Detector):
        requires = ("bpd",)

        def fit(self, scores):
            self.mu_ = float(np.mean(scores["bpd"]))
            self.offset_ = -10.0
            return self

        def score_samples(self, scores):
            if not hasattr(self, "mu_"):
                raise RuntimeError("not fitted")
            return np.asarray(scores["bpd"]) - self.mu_  # higher bpd = "more in-distribution": wrong

    with pytest.raises(AssertionError, match="sign wrong"):
        check_detector(Backwards)


def test_check_detector_catches_learning_in_init():
    from benchbench import Detector

    class Eager(Detector):
        def __init__(self):
            self.mu_ = 0.0

    with pytest.raises(AssertionError, match="parameters only"):
        check_detector(Eager)
