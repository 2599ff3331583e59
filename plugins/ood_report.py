"""Markdown for the OOD study's leaderboard section: the paper's Table 1 layout beside published numbers.

Tables (cells are ours, then ``/ reference (difference)`` where a reference number exists):

* **% classified as in-distribution** (``pct_in``): rows are the eval sets in the suite's
  order, columns the detectors -- labelled ``detector (model)`` when a detector ran on more
  than one model. A set no model could load is listed as *unavailable* (beside the reference
  number, if any), with the reason.
* **bits/dim** (``bpd_mean``) of every set under every likelihood model, the reference
  beside the first of them.
* **AUROC** of the in-distribution eval split against each outlier set.
* classifier **accuracy** on the in-distribution eval split, when a classifier ran.
"""
from __future__ import annotations

import math

import pandas as pd
from tabulate import tabulate


def _fmt(v: float | None, digits: int) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _cell(ours: float | None, ref: float | None, digits: int) -> str:
    if ref is None:
        return _fmt(ours, digits)
    if ours is None:
        return f"– / {_fmt(ref, digits)}"
    return f"{_fmt(ours, digits)} / {_fmt(ref, digits)} ({ours - ref:+.{digits}f})"


def _unavailable(ref: float | None, digits: int) -> str:
    """The cell of a set that could not be loaded: the reference number stays visible beside it."""
    return "unavailable" if ref is None else f"unavailable / {_fmt(ref, digits)}"


def _columns(df: pd.DataFrame, detectors: list[str]) -> list[tuple[str, str, str]]:
    """(detector, model, header) for every (detector, model) pair present, in suite order."""
    out = []
    for det in detectors:
        models = list(dict.fromkeys(df.loc[df["detector"] == det, "model"]))
        for m in models:
            out.append((det, m, det if len(models) == 1 else f"{det} ({m})"))
    return out


def _lookup(df: pd.DataFrame, **key) -> float | None:
    sel = df
    for k, v in key.items():
        sel = sel[sel[k] == v]
    return float(sel["value"].iloc[0]) if len(sel) else None


def render(rows: list[dict], *, eval_sets: list[str], detectors: list[str], models: list[str],
           reference: dict, source: str, unavailable: dict[str, str]) -> str:
    df = pd.DataFrame(rows)
    if df.empty:
        return ""
    ref_note = f" Reference: {source.rstrip('.')}." if source else ""
    lines: list[str] = []

    pct = df[df["metric"] == "pct_in"]
    ref_pct = reference.get("pct_in", {}) or {}
    cols = _columns(pct, detectors)
    if cols:
        body = []
        for s in eval_sets:
            if s in unavailable and not (pct["eval_set"] == s).any():
                body.append([s] + [_unavailable((ref_pct.get(s) or {}).get(d), 1) for d, _, _ in cols])
                continue
            body.append([s] + [_cell(_lookup(pct, eval_set=s, detector=d, model=m), (ref_pct.get(s) or {}).get(d), 1)
                               for d, m, _ in cols])
        lines += ["### Table 1: % of each set classified as in-distribution",
                  "", f"Cells: ours{' / reference (ours − reference)' if ref_pct else ''}.{ref_note}", "",
                  tabulate(body, headers=["eval set"] + [h for _, _, h in cols], tablefmt="github", disable_numparse=True), ""]

    bpd = df[df["metric"] == "bpd_mean"]
    bpd_models = [m for m in models if (bpd["model"] == m).any()]
    if bpd_models:
        ref_bpd = reference.get("bpd_mean", {}) or {}
        sets = list(dict.fromkeys(list(bpd["eval_set"])))
        body = []
        for s in sets + [s for s in eval_sets if s in unavailable and s not in sets]:
            if s not in sets:
                body.append([s] + [_unavailable(ref_bpd.get(s) if i == 0 else None, 3) for i in range(len(bpd_models))])
                continue
            row = [s]
            for i, m in enumerate(bpd_models):
                row.append(_cell(_lookup(bpd, eval_set=s, model=m), ref_bpd.get(s) if i == 0 else None, 3))
            body.append(row)
        head = [f"{m}" + (" / reference (Δ)" if i == 0 and ref_bpd else "") for i, m in enumerate(bpd_models)]
        lines += ["### Bits/dim (mean over the set)", "", tabulate(body, headers=["set"] + head, tablefmt="github",
                                                                    disable_numparse=True), ""]

    au = df[df["metric"] == "auroc"]
    cols = _columns(au, detectors)
    if cols:
        sets = [s for s in eval_sets[1:] if (au["eval_set"] == s).any()]
        body = [[s] + [_fmt(_lookup(au, eval_set=s, detector=d, model=m), 3) for d, m, _ in cols] for s in sets]
        lines += [f"### AUROC: {eval_sets[0]} (positive) against each outlier set", "",
                  tabulate(body, headers=["outlier set"] + [h for _, _, h in cols], tablefmt="github", disable_numparse=True), ""]

    acc = df[(df["metric"] == "accuracy") & (df["eval_set"] == eval_sets[0])]
    if len(acc):
        lines += ["Classifier accuracy on " + eval_sets[0] + ": "
                  + ", ".join(f"`{r.model}` {r.value:.2f}%" for r in acc.itertuples()) + ".", ""]
    if unavailable:
        lines += ["Unavailable sets (every model's scores of them failed; details under *Not computed*):", ""]
        lines += [f"- `{k}`: {v}" for k, v in unavailable.items()] + [""]
    return "\n".join(lines)
