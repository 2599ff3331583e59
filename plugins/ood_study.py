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
from benchbench.registry import suggest, unknown
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


def _own(keys) -> list[str]:
    return [k for k in keys if "/" not in k]


class OODGrid(Study):
    """Outlier detection grid (the paper's Table 1, plus threshold-free metrics).

    ``reference`` (optional) holds published numbers shown beside ours in the leaderboard:
    ``{pct_in: {<eval set>: {<detector>: value}}, bpd_mean: {<eval set>: value}}``, with
    ``reference_source`` naming where they come from.
    """

    def __init__(self, models: list[str], in_distribution: dict, ood: list[str], detectors: list[str],
                 metrics: list[str] = ALL_METRICS, reference: dict | None = None, reference_source: str = ""):
        self.models = models
        self.in_distribution = in_distribution
        self.ood = ood
        self.detectors = detectors
        self.metrics = metrics
        self.reference = reference
        self.reference_source = reference_source

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
                yield f"models[{i}]", unknown("model", m, suite.models)
            else:
                provides[m] = _provides(suite, m)
        for i, d in enumerate(self.detectors):
            if not suite.has("detectors", d):
                yield f"detectors[{i}]", f"unknown detector {d!r}{suggest(d, list(suite.detectors) + list(suite.registry.tables['detectors']))}"
                continue
            spec = suite.spec("detectors", d)
            try:
                det = suite.factory(spec)(**spec.params)
                requires, roles = tuple(det.requires) + tuple(det.fit_requires), dict(det.model_roles())
            except Exception as e:
                yield f"detectors[{i}]", f"detector {d!r} cannot be built from its parameters: {type(e).__name__}: {e}"
                continue
            for role, alias in roles.items():
                need = [k.split("/", 1)[1] for k in requires if k.startswith(role + "/")]
                if alias not in suite.models:
                    yield f"detectors[{i}]", (f"detector {d!r} reads model {alias!r} as its {role!r}, but the suite defines "
                                              f"no such model{suggest(str(alias), suite.models)}")
                elif missing := [k for k in need if k not in _provides(suite, alias)]:
                    yield f"detectors[{i}]", f"detector {d!r} needs scores {missing} from its {role!r} model {alias!r}, which does not provide them"
            own = _own(requires)
            if provides and not any(set(own) <= set(p) and m not in roles.values() for m, p in provides.items()):
                shown = "; ".join(f"model {m!r} provides {list(p)}" for m, p in provides.items())
                yield f"detectors[{i}]", f"detector {d!r} requires scores {own} that no model of the study provides ({shown})"
        for i, metric in enumerate(self.metrics):
            if metric not in ALL_METRICS:
                yield f"metrics[{i}]", f"unknown metric {metric!r}{suggest(metric, ALL_METRICS)}; known: {', '.join(ALL_METRICS)}"
        if self.reference is not None and not isinstance(self.reference, dict):
            yield "reference", f"must be a mapping {{pct_in: {{set: {{detector: value}}}}, bpd_mean: {{set: value}}}}, got {self.reference!r}"

    @staticmethod
    def _view(ctx, det, keys, own: dict[str, np.ndarray], name: str, split: str) -> dict[str, np.ndarray]:
        """The scores a detector asked for: its model's own, plus ``role/score`` from the models it names."""
        view = {k: own[k] for k in _own(keys)}
        for role, alias in det.model_roles().items():
            wanted = [k for k in keys if k.startswith(role + "/")]
            if wanted:
                other = ctx.scores(alias, name, split)
                view.update({k: other[k.split("/", 1)[1]] for k in wanted})
        return view

    def run(self, ctx) -> Iterator[dict]:
        ind = self.in_distribution
        data = ind["data"]
        fit_data, fit_split = _split_ref(data, ind.get("fit", "train"))
        eval_data, eval_split = _split_ref(data, ind.get("eval", "test"))
        eval_sets = [(eval_data, eval_split)] + [_ref(r) for r in self.ood]
        in_label = _label(eval_data, eval_split)
        self.unavailable_: dict[str, str] = {}
        for model in self.models:
            try:
                fit_scores = ctx.scores(model, fit_data, fit_split)
            except Exception as e:
                ctx.fail(f"model {model} on {fit_data}:{fit_split}", e)
                continue
            base = {"model": model, "in_distribution": data}
            evals: dict[str, tuple[str, str, dict[str, np.ndarray]]] = {}
            for name, split in eval_sets:
                try:
                    evals[_label(name, split)] = (name, split, ctx.scores(model, name, split))
                except Exception as e:
                    reason = " ".join(f"{type(e).__name__}: {e}".split())
                    self.unavailable_.setdefault(_label(name, split), reason[:500] + ("…" if len(reason) > 500 else ""))
                    ctx.fail(f"model {model} on {name}:{split}", e)
            fit_label = f"{fit_data}:{fit_split}"
            for label, sc in [(fit_label, fit_scores)] + [(k, v[2]) for k, v in evals.items()]:
                if "bpd" in sc:
                    bpd = np.asarray(sc["bpd"], dtype=np.float64)
                    yield {**base, "eval_set": label, "metric": "bpd_mean", "value": float(bpd.mean()), "n": len(bpd)}
                    yield {**base, "eval_set": label, "metric": "bpd_std", "value": float(bpd.std()), "n": len(bpd)}
                if "logits" in sc and "labels" in sc and label in (fit_label, in_label):  # a classifier's accuracy
                    hit = np.argmax(np.asarray(sc["logits"]), 1) == np.asarray(sc["labels"])
                    yield {**base, "eval_set": label, "metric": "accuracy", "value": 100.0 * float(hit.mean()), "n": len(hit)}
            for det_name in self.detectors:
                try:
                    det = ctx.detector(det_name)
                    need, roles = tuple(det.requires), det.model_roles()
                    if not set(_own(need)) <= set(fit_scores) or model in roles.values():
                        continue  # this detector reads other scores (e.g. a classifier's): not this model's
                    fit_need = need + tuple(det.fit_requires)
                    missing = [k for k in _own(fit_need) if k not in fit_scores]
                    if missing:
                        raise ValueError(f"the fit split {fit_label} has no {missing} (a detector that needs labels needs a labelled split)")
                    # the fit split only: never an outlier set, and fit-only names (labels) never reach eval sets
                    det.fit(self._view(ctx, det, fit_need, fit_scores, fit_data, fit_split))
                except Exception as e:
                    ctx.fail(f"detector {det_name} (model {model})", e)
                    continue
                outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
                for label, (name, split, sc) in evals.items():
                    try:
                        view = self._view(ctx, det, need, sc, name, split)
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

    def report(self, rows: list[dict]) -> str:
        """Markdown: Table 1 in the paper's layout (sets x detectors), bits/dim and AUROC, beside ``reference``."""
        from benchbench_plugins.ood_report import render

        eval_sets = [_label(*_split_ref(self.in_distribution["data"], self.in_distribution.get("eval", "test")))]
        eval_sets += [_label(*_ref(r)) for r in self.ood]
        return render(rows, eval_sets=eval_sets, detectors=list(self.detectors), models=list(self.models),
                      reference=self.reference or {}, source=self.reference_source,
                      unavailable=getattr(self, "unavailable_", {}))


def _provides(suite, alias: str) -> tuple[str, ...]:
    """Score names a suite model provides (plus ``labels``, which labelled splits add)."""
    return tuple(getattr(suite.factory(suite.models[alias]), "provides", ())) + ("labels",)


@hookimpl
def register_studies():
    return {"ood": OODGrid}
