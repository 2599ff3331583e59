"""The command line end to end on the quickstart's smoke profile."""
import json
import shutil

import pandas as pd
import pytest

from benchbench.cli import main
from conftest import SUITES


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cache, out = tmp / "cache", tmp / "lb"
    argv = ["run", str(SUITES / "quickstart.yaml"), "--profile", "smoke", "--device", "cpu",
            "--cache-dir", str(cache), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    return argv, cache, out


def test_quickstart_smoke_writes_a_complete_leaderboard(first_run):
    _, _, out = first_run
    for name in ("results.csv", "README.md", "run.json", "samples.parquet", "model_scores.parquet", "curves/made.csv"):
        assert (out / name).is_file(), name
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns) == ["study", "model", "in_distribution", "eval_set", "detector", "metric", "value", "n"]
    pct = df[df.metric == "pct_in"]
    assert set(pct.detector) == {"ar-2sd", "ar-1sd", "ar-one-sided"}
    assert set(pct.eval_set) == {"digits", "noise", "black", "white", "photos"}
    assert set(df.metric) >= {"pct_in", "auroc", "aupr_in", "aupr_out", "fpr95", "bpd_mean", "bpd_std"}
    run = json.loads((out / "run.json").read_text())
    assert run["profile"] == "smoke" and run["seed"] == 0 and not run["failures"]
    assert run["datasets"]["digits:train"]["n"] == 1437 and run["datasets"]["digits:train"]["fingerprint"]
    assert run["checkpoints"]["made"]["sha256"] and run["checkpoints"]["made"]["source"] == "trained"
    assert run["components"]["detectors"]["ar-2sd"]["package"] == "benchbench"
    assert run["libraries"]["torch"]
    samples = pd.read_parquet(out / "samples.parquet")
    assert len(samples[(samples.detector == "ar-2sd") & (samples.eval_set == "noise")]) == 50
    readme = (out / "README.md").read_text()
    assert "### pct_in" in readme and "ar-one-sided" in readme


def test_second_run_hits_the_cache_and_is_byte_identical(first_run, tmp_path):
    argv, cache, out = first_run
    before = (out / "results.csv").read_bytes()
    shutil.copytree(out, tmp_path / "first")
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["cache"]["misses"] == 0 and run["cache"]["hits"] > 0
    assert run["checkpoints"]["made"]["source"] == "cache"
    assert (out / "results.csv").read_bytes() == before
    assert main(["compare", str(tmp_path / "first"), str(out), "--tol", "0"]) == 0


def test_no_cache_recomputes_identically(first_run, tmp_path):
    argv, _, out = first_run
    argv = [a for a in argv if a not in ("--cache-dir",)]
    i = argv.index("--out")
    argv = argv[:i] + ["--out", str(tmp_path / "nc")] + argv[i + 2:]
    argv = [a for a in argv if not a.endswith("cache")] + ["--no-cache"]
    assert main(argv) == 0
    run = json.loads((tmp_path / "nc" / "run.json").read_text())
    assert run["cache"]["ephemeral"] and run["cache"]["hits"] == 0
    assert (tmp_path / "nc" / "results.csv").read_bytes() == (out / "results.csv").read_bytes()


def test_compare_exits_nonzero_past_tolerance_and_lists_one_sided_rows(first_run, tmp_path, capsys):
    _, _, out = first_run
    df = pd.read_csv(out / "results.csv", keep_default_na=False)
    changed = df.copy()
    changed.loc[0, "value"] = float(changed.loc[0, "value"]) + 0.5
    changed = changed.iloc[:-1]
    changed.to_csv(tmp_path / "b.csv", index=False)
    assert main(["compare", str(out), str(tmp_path / "b.csv"), "--tol", "0.1"]) == 1
    text = capsys.readouterr().out
    assert "1 value(s) differ by more than 0.1" in text and "1 row(s) only in" in text
    assert main(["compare", str(out), str(tmp_path / "b.csv"), "--tol", "1"]) == 1  # one-sided row remains
    df.to_csv(tmp_path / "same.csv", index=False)
    assert main(["compare", str(out), str(tmp_path / "same.csv")]) == 0


def test_a_failing_dataset_does_not_lose_the_rest(tmp_path):
    out = tmp_path / "lb"
    argv = ["run", str(SUITES / "quickstart.yaml"), "--profile", "smoke", "--device", "cpu", "--no-progress",
            "--out", str(out), "--set", "datasets.black.value=300"]
    assert main(argv) == 0
    assert main(argv + ["--strict"]) == 1
    run = json.loads((out / "run.json").read_text())
    assert any("black" in f["where"] and "0..255" in f["error"] for f in run["failures"])
    df = pd.read_csv(out / "results.csv")
    assert "black" not in set(df.eval_set) and {"noise", "white", "photos"} <= set(df.eval_set)
    assert "Not computed" in (out / "README.md").read_text()


def test_validate_and_plugins_commands(capsys, tmp_path):
    assert main(["validate", str(SUITES / "quickstart.yaml")]) == 0
    assert "valid (profiles checked: cpu, pixelcnn, smoke)" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text((SUITES / "quickstart.yaml").read_text().replace("use: made", "use: mad"))
    assert main(["validate", str(bad)]) == 2
    assert "models.made.use: unknown model 'mad'" in capsys.readouterr().err
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    for name in ("made", "digits", "noise", "constant", "photo_patches", "ar-2sd", "ar-1sd", "ar-one-sided", "ood"):
        assert f" {name} " in text, name
    assert "benchbench" in text


def test_threads_option_is_checked(capsys):
    assert main(["run", str(SUITES / "quickstart.yaml"), "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_quickstart_runs_pixelcnnpp_beside_made(tmp_path):
    out = tmp_path / "lb"
    argv = ["run", str(SUITES / "quickstart.yaml"), "--profile", "smoke", "--device", "cpu", "--no-progress",
            "--out", str(out), "--set", "studies.ood.models=[made, pixelcnn]"]
    assert main(argv) == 0
    df = pd.read_csv(out / "results.csv")
    assert set(df.model) == {"made", "pixelcnn"}
    assert len(df[(df.model == "pixelcnn") & (df.metric == "auroc")]) == 12  # 4 outlier sets x 3 detectors
    assert not json.loads((out / "run.json").read_text())["failures"]
