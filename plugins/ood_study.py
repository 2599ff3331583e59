"""The OOD grid study: models x in-distribution x outlier sets x detectors x metrics.

For each model: per-sample scores of the in-distribution fit split, the
in-distribution eval split and every outlier set. Each detector is fitted on the
**fit split only** (it is handed nothing else), then scores every eval set.
Rows:

* ``bpd_mean`` / ``bpd_std`` of every set (fit split included) under every model
  that provides bits/dim (detector column empty);
* ``pct_in`` of every eval set under every detector (the paper's Table 1);
* ``auroc``, ``aupr_in``, ``aupr_out``, ``fpr95`` of the in-distribution eval split
  against each outlier set.

A set, model or detector that fails is recorded as not computed; the rest goes on.
Eval sets are named by their suite alias, with ``:split`` appended when the split is
not ``test``; the in-distribution fit split appears as ``<alias>:<fit split>``.
``in_distribution: {data: mnist, fit: train, eval: test}``; ``fit`` and ``eval`` may also
name another alias of the same data, ``fit: mnist_2k:train`` (e.g. a subset for mu, sigma).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from benchbench import Study, hookimpl
from benchbench.metrics import ALL_METRICS, PAIR_FUNCTIONS, pct_in
from benchbench.registry import suggest
from benchbench.suite import check_split


def _ref(ref: str) -> tuple[str, str]:
    name, _, split = str(ref).partition(":")
    return name, split or "test"


def _split_ref(data: str, ref: str) -> tuple[str, str]:
    """'train' -> (data, 'train'); 'alias:train' -> ('alias', 'train')."""
    name, _, split = str(ref).rpartition(":")
    return (name or data), split


def _label(name: str, split: str) -> str:
    return name if split == "test" else f"{name}:{split}"


class OODGrid(Study):
    """Outlier detection grid (the paper's Table 1, plus threshold-free metrics)."""

    def __init__(self, models: list[str], in_distribution: dict, ood: list[str], detectors: list[str],
                 metrics: list[str] = ALL_METRICS):
        self.models = models
        self.in_distribution = in_distribution
        self.ood = ood
        self.detectors = detectors
        self.metrics = metrics

    def check(self, suite) -> Iterator[tuple[str, str]]:
        for key, value in (("models", self.models), ("ood", self.ood), ("detectors", self.detectors), ("metrics", self.metrics)):
            if not isinstance(value, (list, tuple)) or not value:
                yield key, f"must be a non-empty list, got {value!r}"
                return
        ind = self.in_distribution
        if not isinstance(ind, dict) or "data" not in ind:
            yield "in_distribution", f"must be a mapping {{data: <dataset>, fit: train, eval: test}}, got {ind!r}"
            return
        for k in ind:
            if k not in ("data", "fit", "eval"):
                yield f"in_distribution.{k}", f"unknown key{suggest(k, ('data', 'fit', 'eval'))}; allowed: data, fit, eval"
        if not suite.has("datasets", ind["data"]):
            yield "in_distribution.data", f"unknown dataset {ind['data']!r}{suggest(ind['data'], suite.datasets)}"
        else:
            for key, default in (("fit", "train"), ("eval", "test")):
                name, split = _split_ref(ind["data"], ind.get(key, default))
                if not suite.has("datasets", name):
                    yield f"in_distribution.{key}", f"unknown dataset {name!r}{suggest(name, suite.datasets)}"
                else:
                    yield from check_split(suite, name, split, f"in_distribution.{key}")
        for i, ref in enumerate(self.ood):
            name, split = _ref(ref)
            if not suite.has("datasets", name):
                yield f"ood[{i}]", f"unknown dataset {name!r}{suggest(name, suite.datasets)}"
            else:
                yield from check_split(suite, name, split, f"ood[{i}]")
        provides: dict[str, tuple[str, ...]] = {}
        for i, m in enumerate(self.models):
            if m not in suite.models:
                yield f"models[{i}]", f"unknown model {m!r}{suggest(m, suite.models)}; the suite defines: {', '.join(suite.models) or '(none)'}"
            else:
                provides[m] = tuple(getattr(suite.factory(suite.models[m]), "provides", ())) + ("labels",)
        for i, d in enumerate(self.detectors):
            if not suite.has("detectors", d):
                yield f"detectors[{i}]", f"unknown detector {d!r}{suggest(d, list(suite.detectors) + list(suite.registry.tables['detectors']))}"
                continue
            requires = getattr(suite.factory(suite.spec("detectors", d)), "requires", ())
            for m, prov in provides.items():
                missing = [r for r in requires if r not in prov]
                if missing:
                    yield f"detectors[{i}]", f"detector {d!r} requires scores {missing} that model {m!r} does not provide (it provides {list(prov)})"
        for i, metric in enumerate(self.metrics):
            if metric not in ALL_METRICS:
                yield f"metrics[{i}]", f"unknown metric {metric!r}{suggest(metric, ALL_METRICS)}; known: {', '.join(ALL_METRICS)}"

    def run(self, ctx) -> Iterator[dict]:
        ind = self.in_distribution
        data = ind["data"]
        fit_data, fit_split = _split_ref(data, ind.get("fit", "train"))
        eval_data, eval_split = _split_ref(data, ind.get("eval", "test"))
        eval_sets = [(eval_data, eval_split)] + [_ref(r) for r in self.ood]
        for model in self.models:
            try:
                fit_scores = ctx.scores(model, fit_data, fit_split)
            except Exception as e:
                ctx.fail(f"model {model} on {fit_data}:{fit_split}", e)
                continue
            base = {"model": model, "in_distribution": data}
            evals: dict[str, dict[str, np.ndarray]] = {}
            for name, split in eval_sets:
                try:
                    evals[_label(name, split)] = ctx.scores(model, name, split)
                except Exception as e:
                    ctx.fail(f"model {model} on {name}:{split}", e)
            for label, sc in [(f"{fit_data}:{fit_split}", fit_scores)] + list(evals.items()):
                if "bpd" in sc:
                    bpd = np.asarray(sc["bpd"], dtype=np.float64)
                    yield {**base, "eval_set": label, "metric": "bpd_mean", "value": float(bpd.mean()), "n": len(bpd)}
                    yield {**base, "eval_set": label, "metric": "bpd_std", "value": float(bpd.std()), "n": len(bpd)}
            in_label = _label(eval_data, eval_split)
            for det_name in self.detectors:
                try:
                    det = ctx.detector(det_name)
                    need = tuple(det.requires)
                    det.fit({k: fit_scores[k] for k in need})  # the fit split only: never an outlier set
                except Exception as e:
                    ctx.fail(f"detector {det_name} (model {model})", e)
                    continue
                outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
                for label, sc in evals.items():
                    try:
                        view = {k: sc[k] for k in need}
                        s, p = np.asarray(det.score_samples(view), dtype=np.float64), np.asarray(det.predict(view))
                    except Exception as e:
                        ctx.fail(f"detector {det_name} (model {model}) on {label}", e)
                        continue
                    outputs[label] = (s, p)
                    ctx.keep_samples(model=model, in_distribution=data, eval_set=label, detector=det_name,
                                     score=s, prediction=p)
                    row = {**base, "eval_set": label, "detector": det_name, "n": len(s)}
                    if "pct_in" in self.metrics:
                        yield {**row, "metric": "pct_in", "value": pct_in(p)}
                if in_label not in outputs:
                    continue
                s_in = outputs[in_label][0]
                for label, (s_out, _) in outputs.items():
                    if label == in_label:
                        continue
                    for metric in self.metrics:
                        if metric in PAIR_FUNCTIONS:
                            yield {**base, "eval_set": label, "detector": det_name, "metric": metric,
                                   "value": PAIR_FUNCTIONS[metric](s_in, s_out), "n": len(s_out)}


@hookimpl
def register_studies():
    return {"ood": OODGrid}
