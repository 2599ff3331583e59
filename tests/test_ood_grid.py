"""The OOD grid with detectors that read other models (roles), fit-only labels, untrained models,
per-model training seeds, and the Table 1 report; plus the compressor model. No mirror needed."""
import textwrap

import numpy as np
import pytest

from benchbench import Detector, hookimpl
from benchbench.cache import Cache
from benchbench.registry import Registry
from benchbench.runner import run_suite
from benchbench.suite import SuiteError, load_suite
from benchbench_plugins.compressors import Compressor, encoded_bytes

SUITE = """
suite: grid
seed: 0
models:
  made: &made {use: made, train: {data: digits, split: train}, hidden: [32], steps: 30, batch_size: 64}
  made_s1:
    <<: *made
    train: {data: digits, split: train, seed: 1}
  png: {use: compressor, codec: png}
datasets:
  digits: {use: digits}
  noise: {use: noise, n: 40, shape: [1, 8, 8]}
  black: {use: constant, value: 0, n: 5, shape: [1, 8, 8]}
  missing: {use: svhn_like_missing}
detectors:
  likelihood-ratio: {use: likelihood-ratio, background: made_s1}
  input-complexity: {use: input-complexity, complexity: png}
  waic: {use: waic, ensemble: [made_s1]}
studies:
  ood:
    use: ood
    models: [made]
    in_distribution: {data: digits, fit: train, eval: test}
    ood: [noise, black, missing]
    detectors: [ar-2sd, likelihood, likelihood-ratio, input-complexity, waic, spy]
    reference: {pct_in: {digits: {ar-2sd: 95.0}}, bpd_mean: {digits: 3.0}}
    reference_source: a made-up reference
"""

SEEN: dict[str, list] = {"fit": [], "score": []}


class Spy(Detector):
    """Records which score names reach fit and score_samples; asks for labels at fit only."""

    requires = ("bpd",)
    fit_requires = ("labels",)

    def fit(self, scores):
        SEEN["fit"].append(sorted(scores))
        self.offset_ = 0.0
        return self

    def score_samples(self, scores):
        SEEN["score"].append(sorted(scores))
        return -np.asarray(scores["bpd"])


class Missing:
    splits = ("train", "test")

    def load(self, split):
        from benchbench import DataUnavailable

        raise DataUnavailable("no copy of this set anywhere (test)")


class Plugin:
    @hookimpl
    def register_detectors(self):
        return {"spy": Spy}

    @hookimpl
    def register_datasets(self):
        return {"svhn_like_missing": Missing}


def _suite(tmp_path, text=SUITE):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(text))
    return load_suite(path, registry=Registry(extra_plugins=(Plugin(),)))


@pytest.fixture(scope="module")
def result(tmp_path_factory, one_thread):
    suite = _suite(tmp_path_factory.mktemp("grid"))
    SEEN["fit"].clear(), SEEN["score"].clear()
    return run_suite(suite, cache=Cache(None), progress=False)


def test_every_detector_fills_the_grid_and_the_missing_set_is_reported(result):
    rows = [r for r in result.rows if r["metric"] == "pct_in"]
    dets = {r["detector"] for r in rows}
    assert dets == {"ar-2sd", "likelihood", "likelihood-ratio", "input-complexity", "waic", "spy"}
    assert {r["eval_set"] for r in rows} == {"digits", "noise", "black"}
    assert [f.where for f in result.ctx.failures] == ["model made on missing:test"]
    report = result.ctx.reports["ood"]
    assert "Table 1" in report and "| missing " in report and "unavailable" in report
    assert "no copy of this set anywhere" in report
    assert "/ 95.0 (" in report and "/ 3.000 (" in report and "a made-up reference" in report


def test_labels_reach_fit_only(result):
    assert SEEN["fit"] == [["bpd", "labels"]]
    assert SEEN["score"] and all(keys == ["bpd"] for keys in SEEN["score"])


def test_role_scores_are_the_other_models_scores_of_the_same_images(result):
    ctx = result.ctx
    own, other, png = (ctx.scores(m, "noise", "test") for m in ("made", "made_s1", "png"))
    assert not np.allclose(own["log_prob"], other["log_prob"])  # train.seed gives another model
    assert ctx.provenance["checkpoints"]["made_s1"]["seed"] == 1
    got = {r["detector"]: r["score"] for r in ctx.samples if r["eval_set"] == "noise"}
    np.testing.assert_allclose(got["likelihood-ratio"], own["log_prob"] - other["log_prob"])
    np.testing.assert_allclose(got["input-complexity"], png["bpd"] - own["bpd"])
    lp = np.stack([own["log_prob"], other["log_prob"]])
    np.testing.assert_allclose(got["waic"], lp.mean(0) - lp.var(0))
    assert ctx.provenance["checkpoints"]["png"]["source"] == "untrained"


def test_compressor_bits_per_dim_is_the_file_length():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros((1, 3, 16, 16), np.uint8), rng.integers(0, 256, (1, 3, 16, 16), dtype=np.uint8)])
    import torch

    for codec in ("png", "jpeg2000", "lzma", "zlib", "bz2"):
        out = Compressor(codec).score(torch.from_numpy(x))
        expect = [8 * encoded_bytes(a, codec) / a.size for a in x]
        np.testing.assert_allclose(out["bpd"].numpy(), expect, rtol=1e-12)
        assert out["bpd"][0] < out["bpd"][1], codec  # a constant image compresses far better than noise
    with pytest.raises(ValueError, match="unknown codec 'gif'"):
        Compressor("gif")


@pytest.mark.parametrize("edit, expected", [
    (("png: {use: compressor, codec: png}", "png: {use: compressor, codec: png, train: {data: digits}}"),
     "models.png: model 'compressor' has nothing to learn"),
    (("background: made_s1", "background: made_s2"), "reads model 'made_s2' as its 'background'"),
    (("[made_s1]}", "[made_s1, nope]}"), "reads model 'nope' as its 'member2'"),
    (("seed: 1}", "seed: one}"), "models.made_s1.train.seed: must be an integer"),
    (("detectors: [ar-2sd,", "detectors: [msp, ar-2sd,"), "detector 'msp' requires scores ['logits'] that no model of the study provides"),
])
def test_validation_names_the_fault(tmp_path, edit, expected):
    old, new = edit
    assert old in SUITE
    with pytest.raises(SuiteError) as err:
        _suite(tmp_path, SUITE.replace(old, new))
    assert expected in str(err.value)
