"""The leaderboard README's tables."""
from benchbench.leaderboard import render_readme


def _row(eval_set, detector, value):
    return {"study": "s", "model": "m", "in_distribution": "d", "eval_set": eval_set, "detector": detector,
            "metric": "bpd_mean", "value": value, "n": 10}


def test_a_row_without_detector_beside_steps_gets_the_metric_as_its_column():
    rows = [_row("samples", "step=100", 7.9), _row("samples", "step=200", 7.5), _row("real", "", 4.47)]
    readme = render_readme(rows, {"suite": "t", "profile": "p", "seed": 0, "device": "cpu", "benchbench": "0"})
    table = readme.split("### bpd_mean")[1].split("\n\n")[1].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["eval_set", "step=100", "step=200", "bpd_mean"]
    real = [c.strip() for c in next(line for line in table if line.startswith("| real")).strip("|").split("|")]
    assert real == ["real", "–", "–", "4.47"]
