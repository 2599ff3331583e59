"""The run context and the loop over a suite's studies.

Data flows one way: suite -> registry -> datasets -> models -> per-sample scores
(cached) -> detectors -> metrics -> leaderboard. Studies reach everything
through :class:`RunContext`, which memoises loaded splits, trained models and
scores, records provenance, and keeps failures without stopping the run.
"""
from __future__ import annotations

import inspect
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchbench.api import RESULT_COLUMNS, Detector, Model, Split, TrainContext
from benchbench import distributed
from benchbench.cache import Cache, atomic_write, cache_key, file_sha256
from benchbench.distributed import DistInfo
from benchbench.suite import Spec, Suite


def resolve_device(name: str = "auto", local_rank: int = 0):
    """'auto' -> cuda if available, else cpu; anything else is passed to torch.device.

    Under torchrun, a bare 'cuda' (or 'auto' on a GPU host) means this process's GPU, cuda:LOCAL_RANK.
    """
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}" if "LOCAL_RANK" in os.environ else "cuda"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return dev


def _progress(iterable, *, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


@dataclass
class Failure:
    """Something that could not be computed, and why; the rest of the run goes on."""

    where: str
    error: str
    detail: str = ""


@dataclass
class RunContext:
    """What a study sees: the suite, the registry-built components, the cache, the device."""

    suite: Suite
    cache: Cache
    device: Any = "cpu"
    progress: bool = True
    out_dir: Path | None = None
    current_study: str = ""
    dist: DistInfo = field(default_factory=DistInfo)
    failures: list[Failure] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=lambda: {"datasets": {}, "checkpoints": {}, "components": {}})
    samples: list[dict[str, Any]] = field(default_factory=list)
    model_scores: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    #: Markdown a study wrote about its own rows (``Study.report``), by study alias, for the leaderboard.
    reports: dict[str, str] = field(default_factory=dict)
    _splits: dict[tuple[str, str], Split] = field(default_factory=dict)
    _checkpoints: dict[str, tuple[Path, str]] = field(default_factory=dict)
    _models: dict[str, Model] = field(default_factory=dict)
    _scores: dict[tuple[str, str, str], dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.suite.seed

    @property
    def figures_dir(self) -> Path:
        d = (self.out_dir or Path(".")) / "figures"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _component(self, spec: Spec) -> dict[str, Any]:
        comp = self.suite.registry.get(spec.kind, spec.use)
        info = {"use": spec.use, "params": spec.params, "plugin": comp.plugin, "package": comp.package,
                "version": comp.component_version}
        if spec.core:
            info.update(spec.core)
        self.provenance["components"].setdefault(spec.kind, {})[spec.alias] = info
        return info

    def fail(self, where: str, error: BaseException | str) -> None:
        """Record a failure (shown in the leaderboard and run.json) and carry on."""
        if isinstance(error, BaseException):
            detail = "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=-3))
            self.failures.append(Failure(where, f"{type(error).__name__}: {error}", detail))
        else:
            self.failures.append(Failure(where, str(error)))

    # datasets ------------------------------------------------------------------------------
    def load(self, dataset: str, split: str) -> Split:
        """Load (once per run) the split of the suite's dataset alias (or registered name)."""
        if (dataset, split) in self._splits:
            return self._splits[(dataset, split)]
        spec = self.suite.spec("datasets", dataset)
        self._component(spec)
        ds = self.suite.factory(spec)(**spec.params)
        data = ds.load(split, ctx=self) if "ctx" in inspect.signature(ds.load).parameters else ds.load(split)
        adapt = spec.core.get("adapt")
        if adapt:
            from benchbench.adapters import adapt as apply_adapt

            data = apply_adapt(data, **adapt)
        self._splits[(dataset, split)] = data
        self.provenance["datasets"][f"{dataset}:{split}"] = {
            "fingerprint": data.fingerprint, "n": len(data), "shape": list(data.images.shape[1:]),
            "source": data.source, "partial": data.partial, "adapters": list(data.adapters),
        }
        return data

    # models --------------------------------------------------------------------------------
    def checkpoint(self, alias: str) -> tuple[Path, str]:
        """The checkpoint file of the suite's model alias and its sha256, training the model if no cache entry has it."""
        if alias in self._checkpoints:
            return self._checkpoints[alias]
        spec = self.suite.spec("models", alias)
        comp = self._component(spec)
        record: dict[str, Any] = {}
        if not getattr(self.suite.factory(spec), "trainable", True):
            record.update(source="untrained", sha256=None)  # nothing to learn (e.g. a compressor)
            self.provenance["checkpoints"][alias] = record
            self._checkpoints[alias] = (None, f"untrained:{spec.use}")
            return self._checkpoints[alias]
        if "checkpoint" in spec.core:
            path = self.suite.registry.resolve_checkpoint(str(spec.core["checkpoint"]))
            record["source"] = str(spec.core["checkpoint"])
        else:
            train = spec.core["train"]
            split = train.get("split", "train")
            seed = int(train.get("seed", self.seed))  # train.seed: e.g. independently seeded ensemble members
            data = self.load(train["data"], split)
            key = cache_key(kind="checkpoint", plugin=spec.use, version=comp["version"], params=spec.params,
                            data=data.fingerprint, split=split, seed=seed)
            path = self.cache.checkpoint(key)
            cached = distributed.broadcast(self.dist, path is not None)  # every rank takes rank 0's decision
            record.update(source="cache" if cached else "trained", cache_key=key, trained_on=f"{train['data']}:{split}")
            if seed != self.seed:
                record["seed"] = seed
            if not cached:
                path = self._train(alias, spec, data, key, record, seed)
                distributed.barrier(self.dist)  # rank 0 has written the checkpoint
                if not self.dist.is_main:
                    path = self.cache.checkpoint(key)
            if path is None:
                raise RuntimeError(f"rank {self.dist.rank}: no checkpoint for {alias!r} in {self.cache.root} after "
                                   "training: in a run over several hosts the cache folder must be shared")
            curve = self.cache.path("checkpoints", key, ".curve.json")
            if curve.is_file():
                self.curves[alias] = json.loads(curve.read_text())
        record["sha256"] = file_sha256(path)
        self.provenance["checkpoints"][alias] = record
        self._checkpoints[alias] = (path, record["sha256"])
        return self._checkpoints[alias]

    def _train(self, alias: str, spec: Spec, data: Split, key: str, record: dict[str, Any], seed: int) -> Path | None:
        """Train on every rank (data-parallel when distributed); rank 0 writes and returns the checkpoint."""
        import torch

        torch.manual_seed(seed + self.dist.rank)  # in-rank randomness (e.g. dropout) differs per rank
        np.random.seed((seed + self.dist.rank) % 2**32)
        model = self.suite.factory(spec)(**spec.params).to(self.device)
        ctx = TrainContext(device=self.device, seed=seed, work_dir=self.cache.work_dir(key),
                           progress=self.progress and self.dist.is_main, dist=self.dist)
        t0 = time.perf_counter()
        model.fit(data, ctx)
        record["train_seconds"] = round(time.perf_counter() - t0, 3)
        if self.dist.enabled:
            record["world_size"] = self.dist.world_size
        if not self.dist.is_main:
            return None
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        blob = json.dumps(ctx.curve).encode()
        atomic_write(self.cache.path("checkpoints", key, ".curve.json"), lambda f: f.write(blob))
        return self.cache.save_checkpoint(key, {"state_dict": state, "curve": ctx.curve, "use": spec.use, "params": spec.params})

    def work_dir(self, alias: str) -> Path:
        """The training work folder of a model trained by this run (snapshots, resumable state)."""
        self.checkpoint(alias)
        key = self.provenance["checkpoints"][alias].get("cache_key")
        if key is None:
            raise ValueError(f"model {alias!r} was loaded from a checkpoint, not trained: it has no work folder")
        return self.cache.work_dir(key)

    def model(self, alias: str) -> Model:
        """The trained (or loaded) model of the suite's alias, on the run's device, in eval mode."""
        if alias in self._models:
            return self._models[alias]
        import torch

        path, _ = self.checkpoint(alias)
        spec = self.suite.spec("models", alias)
        model = self.suite.factory(spec)(**spec.params)
        if path is not None:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt)
        model.to(self.device).eval()
        self._models[alias] = model
        return model

    # scores --------------------------------------------------------------------------------
    def scores(self, model_alias: str, dataset: str, split: str) -> dict[str, np.ndarray]:
        """Per-sample scores of a model on a split (cached on disk); adds ``labels`` when the split has them."""
        memo = (model_alias, dataset, split)
        if memo in self._scores:
            return self._scores[memo]
        import torch

        data = self.load(dataset, split)
        _, digest = self.checkpoint(model_alias)
        mspec = self.suite.spec("models", model_alias)
        dspec = self.suite.spec("datasets", dataset)
        comp = self.suite.registry.get("models", mspec.use)
        key = cache_key(kind="scores", plugin=mspec.use, version=comp.component_version, params=mspec.params,
                        checkpoint=digest, data=data.fingerprint, dataset=dspec.use, split=split, seed=self.seed)
        out = self.cache.load_arrays(key) if self.dist.is_main else None
        if distributed.broadcast(self.dist, out is not None):
            out = distributed.broadcast(self.dist, out)
        else:
            model = self.model(model_alias)
            torch.manual_seed(self.seed)
            bs = int(getattr(model, "eval_batch_size", 256))
            start, stop = distributed.shard_bounds(len(data), self.dist.rank, self.dist.world_size, align=bs)
            parts: dict[str, list[np.ndarray]] = {}
            starts = range(start, stop, bs)
            for i in _progress(starts, enabled=self.progress and self.dist.is_main, desc=f"score {model_alias} on {dataset}:{split}"):
                x = torch.from_numpy(data.images[i:min(i + bs, stop)]).to(self.device)
                for name, value in model.score(x).items():
                    parts.setdefault(name, []).append(value.detach().cpu().numpy())
            out = distributed.gather_arrays(self.dist, {name: np.concatenate(vs) for name, vs in parts.items()})
            missing = set(getattr(model, "provides", ())) - set(out)
            if missing:
                raise RuntimeError(f"model {model_alias!r} ({mspec.use}) declares {sorted(missing)} in 'provides' but score() did not return them")
            if self.dist.is_main:
                self.cache.save_arrays(key, out)
        if data.labels is not None:
            out = dict(out, labels=np.asarray(data.labels))
        self._scores[memo] = out
        scalar = {k: v for k, v in out.items() if v.ndim == 1 and k != "labels"}
        for k, v in scalar.items():
            self.model_scores.append({"model": model_alias, "dataset": dataset, "split": split, "score": k, "values": v})
        return out

    # detectors -----------------------------------------------------------------------------
    def detector(self, name: str) -> Detector:
        """A fresh, unfitted detector for the suite's alias (or registered name)."""
        spec = self.suite.spec("detectors", name)
        self._component(spec)
        return self.suite.factory(spec)(**spec.params)

    def keep_samples(self, **record: Any) -> None:
        """Keep per-sample outputs (e.g. a detector's scores and predictions) for the leaderboard."""
        self.samples.append({"study": self.current_study, **record})


@dataclass
class RunResult:
    rows: list[dict[str, Any]]
    ctx: RunContext
    seconds: float


def run_suite(suite: Suite, *, cache: Cache, device: Any = "cpu", progress: bool = True,
              out_dir: Path | None = None, dist: DistInfo | None = None) -> RunResult:
    """Run every study of the suite; a failing study is recorded, the others still run.

    In a distributed run every rank calls this; only rank 0 should write the leaderboard.
    """
    t0 = time.perf_counter()
    ctx = RunContext(suite=suite, cache=cache, device=device, progress=progress, out_dir=out_dir,
                     dist=dist or DistInfo())
    rows: list[dict[str, Any]] = []
    for alias, spec in suite.studies.items():
        ctx._component(spec)
        ctx.current_study = alias
        study_rows: list[dict[str, Any]] = []
        study = None
        try:
            study = suite.factory(spec)(**spec.params)
            for row in study.run(ctx):
                row = {**{c: "" for c in RESULT_COLUMNS}, **row, "study": alias}
                unknown = set(row) - set(RESULT_COLUMNS)
                if unknown:
                    raise ValueError(f"study {alias!r} yielded unknown columns {sorted(unknown)}")
                study_rows.append(row)
        except Exception as e:  # keep what the other studies (and this one, so far) produced
            ctx.fail(f"studies.{alias}", e)
        rows.extend(study_rows)
        if study is not None and study_rows:
            try:
                ctx.reports[alias] = study.report(study_rows) or ""
            except Exception as e:
                ctx.fail(f"studies.{alias} (report)", e)
    return RunResult(rows=rows, ctx=ctx, seconds=time.perf_counter() - t0)
