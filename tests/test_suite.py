"""Suite validation: every malformed suite names the file, the key path and the value at fault."""
import copy

import pytest
import yaml

from benchbench.suite import SuiteError, load_suite, validate_all_profiles
from conftest import SUITES

BASE = yaml.safe_load((SUITES / "quickstart.yaml").read_text())


def write(tmp_path, data, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def mutate(fn):
    data = copy.deepcopy(BASE)
    fn(data)
    return data


MALFORMED = {
    "unknown top-level key": (lambda d: d.update(studys={}), ["studys", "did you mean 'studies'"]),
    "unknown model plugin": (lambda d: d["models"]["made"].update(use="mdae"), ["models.made.use", "'mdae'", "did you mean 'made'"]),
    "unknown constructor argument": (lambda d: d["models"]["made"].update(hiden=[8]), ["models.made.hiden", "did you mean 'hidden'"]),
    "missing use": (lambda d: d["datasets"]["noise"].pop("use"), ["datasets.noise", "missing 'use'"]),
    "unknown detector in study": (lambda d: d["studies"]["ood"]["detectors"].append("ar-2sdd"),
                                  ["studies.ood.detectors[3]", "'ar-2sdd'", "did you mean 'ar-2sd'"]),
    "unknown dataset in study": (lambda d: d["studies"]["ood"]["ood"].append("nosie"), ["studies.ood.ood[4]", "'nosie'", "did you mean 'noise'"]),
    "unknown model in study": (lambda d: d["studies"]["ood"].update(models=["maed"]), ["studies.ood.models[0]", "'maed'"]),
    "unknown split": (lambda d: d["studies"]["ood"]["in_distribution"].update(eval="tset"), ["studies.ood.in_distribution.eval", "'tset'", "did you mean 'test'"]),
    "model without training data": (lambda d: d["models"]["made"].pop("train"), ["models.made", "train"]),
    "training data unknown": (lambda d: d["models"]["made"]["train"].update(data="digts"), ["models.made.train.data", "'digts'", "did you mean 'digits'"]),
    "profile overrides a missing key": (lambda d: d["profiles"]["smoke"].update({"modles.made.steps": 1}),
                                        ["profiles.smoke.modles.made.steps", "did you mean 'models'"]),
    "seed not an integer": (lambda d: d.update(seed="zero"), ["seed", "'zero'"]),
    "section not a mapping": (lambda d: d.update(datasets=["digits"]), ["datasets", "must be a mapping"]),
    "unknown metric": (lambda d: d["studies"]["ood"].update(metrics=["auroc", "aurpc"]), ["studies.ood.metrics[1]", "'aurpc'"]),
    "bad adapter": (lambda d: d["datasets"]["noise"].update(adapt={"channels": 2}), ["datasets.noise.adapt.channels", "2"]),
    "unknown study": (lambda d: d["studies"]["ood"].update(use="odd"), ["studies.ood.use", "'odd'", "did you mean 'ood'"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_suite_errors_name_file_key_and_value(tmp_path, case):
    fn, expected = MALFORMED[case]
    path = write(tmp_path, mutate(fn))
    with pytest.raises(SuiteError) as err:
        validate_all_profiles(path)
    msg = str(err.value)
    assert str(path) in msg
    for part in expected:
        assert part in msg, f"{part!r} not in error:\n{msg}"


def test_detector_requiring_a_score_the_model_lacks(tmp_path, monkeypatch):
    from benchbench_plugins import ar_detectors

    monkeypatch.setattr(ar_detectors.AR2SD, "requires", ("features",))
    path = write(tmp_path, BASE)
    with pytest.raises(SuiteError, match=r"studies\.ood\.detectors\[0\].*requires scores \['features'\].*'made'"):
        load_suite(path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "suite: x\nmodels: [unclosed\n")
    with pytest.raises(SuiteError, match=r"s\.yaml: line \d+, column \d+: invalid YAML"):
        load_suite(path)


def test_unknown_profile(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(SuiteError, match="no profile 'smok'.*did you mean 'smoke'"):
        load_suite(path, profile="smok")


def test_errors_are_collected_not_just_the_first(tmp_path):
    data = mutate(lambda d: (d.update(sed=1), d["models"]["made"].update(use="nope")))
    with pytest.raises(SuiteError) as err:
        load_suite(write(tmp_path, data))
    assert len(err.value.problems) >= 1
    data = mutate(lambda d: (d["models"]["made"].update(hiden=1), d["datasets"]["noise"].update(m=3)))
    with pytest.raises(SuiteError) as err:
        load_suite(write(tmp_path, data))
    assert len(err.value.problems) == 2


def test_profiles_and_set_override(tmp_path):
    suite = load_suite(SUITES / "quickstart.yaml", profile="smoke", overrides=["models.made.steps=7", "seed=3"])
    assert suite.models["made"].params["steps"] == 7
    assert suite.models["made"].params["hidden"] == [64]
    assert suite.seed == 3
    full = load_suite(SUITES / "quickstart.yaml")
    assert full.profile == "cpu" and full.models["made"].params["steps"] == 2000
    assert suite.hash != full.hash


def test_seed_injected_into_factories_that_take_it():
    suite = load_suite(SUITES / "quickstart.yaml", overrides=["seed=5"])
    assert suite.datasets["noise"].params["seed"] == 5
    assert "seed" not in suite.datasets["black"].params  # constant takes no seed


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_suite_validates(path):
    assert validate_all_profiles(path)
