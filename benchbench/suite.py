"""Suites: YAML -> a validated, frozen description of a run.

A suite names components by alias. In each section (``models``, ``datasets``,
``detectors``, ``studies``) an entry is ``alias: {use: <registered name>, <arg>: <value>, ...}``;
``use`` picks the factory, the other keys are its constructor arguments, except
a few core keys per section (:data:`CORE_KEYS`). Profiles are named sets of
overrides, ``dotted.key.path: value``, applied before validation, exactly like
``--set`` on the command line.

Validation is strict and collects every problem; each message names the file,
the key path and the offending value, with a suggestion for near misses.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from benchbench.registry import SINGULAR, Registry, RegistryError, get_registry, suggest

TOP_KEYS = ("suite", "description", "seed", "data_dir", "default_profile", "profiles",
            "models", "datasets", "detectors", "studies")
SECTIONS = ("models", "datasets", "detectors", "studies")
#: Keys of a section entry that belong to benchbench, not to the factory.
CORE_KEYS = {
    "models": ("use", "train", "checkpoint"),
    "datasets": ("use", "adapt"),
    "detectors": ("use",),
    "studies": ("use",),
}
TRAIN_KEYS = ("data", "split", "seed")
ADAPT_KEYS = ("channels", "size")
#: Constructor arguments filled from the suite when a factory accepts them and the suite does not set them.
INJECTED = ("seed", "data_dir")


class SuiteError(ValueError):
    """A suite is malformed; ``problems`` lists every (key path, message)."""

    def __init__(self, path: str | Path, problems: list[tuple[str, str]]):
        self.path = str(path)
        self.problems = problems
        lines = [f"{self.path}: {key}: {msg}" if key else f"{self.path}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Spec:
    """One component of a suite: its alias, the registered factory it uses, and its arguments."""

    kind: str
    alias: str
    use: str
    params: dict[str, Any]
    core: dict[str, Any] = field(default_factory=dict)

    @property
    def key_path(self) -> str:
        return f"{self.kind}.{self.alias}"


@dataclass(frozen=True)
class Suite:
    """A validated suite with one profile applied."""

    path: Path
    name: str
    seed: int
    profile: str | None
    data_dir: str | None
    config: dict[str, Any]
    models: dict[str, Spec]
    datasets: dict[str, Spec]
    detectors: dict[str, Spec]
    studies: dict[str, Spec]
    registry: Registry = field(repr=False, compare=False, default=None)

    @property
    def hash(self) -> str:
        """sha256 of the resolved configuration (profile and overrides applied)."""
        return hashlib.sha256(canonical_json(self.config).encode()).hexdigest()

    def section(self, kind: str) -> dict[str, Spec]:
        return getattr(self, kind)

    def spec(self, kind: str, name: str) -> Spec:
        """The suite's alias ``name`` in section ``kind``, or else the registered factory of that name with defaults."""
        table = self.section(kind)
        if name in table:
            return table[name]
        if kind in ("detectors", "datasets") and name in self.registry.tables[kind]:
            comp = self.registry.tables[kind][name]
            return Spec(kind, name, name, _inject({}, comp.factory, self.seed, self.data_dir))
        where = list(table) + (list(self.registry.tables[kind]) if kind in ("detectors", "datasets") else [])
        raise KeyError(f"unknown {SINGULAR[kind]} {name!r}{suggest(name, where)}")

    def has(self, kind: str, name: str) -> bool:
        try:
            self.spec(kind, name)
            return True
        except KeyError:
            return False

    def factory(self, spec: Spec):
        return self.registry.get(spec.kind, spec.use).factory


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def parse_value(text: str) -> Any:
    """A ``--set`` value, read as YAML (``3`` is an int, ``[1, 2]`` a list, ``abc`` a string)."""
    return yaml.safe_load(text)


def _set_path(config: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            here = ".".join(parts[: i + 1])
            options = node.keys() if isinstance(node, dict) else ()
            raise KeyError(f"no key {here!r} in the suite{suggest(part, options)}")
        node = node[part]
    if not isinstance(node, dict):
        raise KeyError(f"{'.'.join(parts[:-1])!r} is not a mapping")
    node[parts[-1]] = value


def _signature(factory) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def _accepts(factory, name: str) -> bool:
    sig = _signature(factory)
    return sig is not None and name in sig.parameters


def _inject(params: dict, factory, seed: int, data_dir: str | None) -> dict:
    params = dict(params)
    if "seed" not in params and _accepts(factory, "seed"):
        params["seed"] = seed
    if data_dir is not None and "data_dir" not in params and _accepts(factory, "data_dir"):
        params["data_dir"] = data_dir
    return params


def _check_params(factory, params: dict, key: str) -> Iterable[tuple[str, str]]:
    sig = _signature(factory)
    if sig is None:
        return
    accepted = [n for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"]
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    for name in params:
        if name not in accepted:
            yield f"{key}.{name}", f"unknown argument {name!r}{suggest(name, accepted)}; accepted: {', '.join(accepted) or '(none)'}"
    for name, p in sig.parameters.items():
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and name not in params:
            yield key, f"missing required argument {name!r}"


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SuiteError(path, [("", f"cannot read suite: {e.strerror or e}")]) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SuiteError(path, [("", f"{where}invalid YAML: {getattr(e, 'problem', e)}")]) from e
    if not isinstance(data, dict):
        raise SuiteError(path, [("", f"a suite must be a mapping at the top level, got {type(data).__name__}")])
    return data


def load_suite(path: str | Path, profile: str | None = None, overrides: Iterable[str] = (),
               registry: Registry | None = None) -> Suite:
    """Read, override and validate a suite. Raises :class:`SuiteError` listing every problem."""
    path = Path(path)
    registry = registry or get_registry()
    raw = read_yaml(path)
    problems: list[tuple[str, str]] = []

    for key in raw:
        if key not in TOP_KEYS:
            problems.append((str(key), f"unknown top-level key{suggest(key, TOP_KEYS)}; allowed: {', '.join(TOP_KEYS)}"))
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        problems.append(("profiles", "must be a mapping of profile name -> {dotted.key: value}"))
        profiles = {}
    if profile is None:
        profile = raw.get("default_profile")
    if profile is not None and profile not in profiles:
        problems.append(("profiles", f"no profile {profile!r}{suggest(profile, profiles)}; defined: {', '.join(map(str, profiles)) or '(none)'}"))
    if problems:
        raise SuiteError(path, problems)

    config = copy.deepcopy({k: v for k, v in raw.items() if k != "profiles"})
    for name, over in profiles.items():
        if not isinstance(over, dict):
            problems.append((f"profiles.{name}", "must be a mapping of dotted.key: value"))
    if profile is not None and isinstance(profiles[profile], dict):
        for dotted, value in profiles[profile].items():
            try:
                _set_path(config, str(dotted), value)
            except KeyError as e:
                problems.append((f"profiles.{profile}.{dotted}", e.args[0]))
    for item in overrides:
        if "=" not in item:
            problems.append(("--set", f"{item!r} is not key=value"))
            continue
        dotted, value = item.split("=", 1)
        try:
            _set_path(config, dotted.strip(), parse_value(value))
        except KeyError as e:
            problems.append((f"--set {dotted}", e.args[0]))
    if problems:
        raise SuiteError(path, problems)

    seed = config.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(("seed", f"must be an integer, got {seed!r}"))
        seed = 0
    data_dir = config.get("data_dir")
    if data_dir is not None:
        data_dir = str((path.parent / str(data_dir)).resolve()) if not Path(str(data_dir)).is_absolute() else str(data_dir)
    sections: dict[str, dict[str, Spec]] = {}
    for kind in SECTIONS:
        sections[kind] = {}
        entries = config.get(kind) or {}
        if not isinstance(entries, dict):
            problems.append((kind, f"must be a mapping of alias -> {{use: ..., ...}}, got {type(entries).__name__}"))
            continue
        for alias, entry in entries.items():
            spec = _parse_entry(kind, str(alias), entry, registry, seed, data_dir, problems)
            if spec is not None:
                sections[kind][str(alias)] = spec
    if not sections["studies"] and "studies" not in [p[0] for p in problems]:
        problems.append(("studies", "a suite needs at least one study"))

    suite = Suite(path=path, name=str(config.get("suite") or path.stem), seed=seed, profile=profile,
                  data_dir=data_dir, config=config, registry=registry, **sections)
    for kind in ("models", "datasets"):
        for spec in sections[kind].values():
            problems.extend(_check_core(suite, spec))
            check = getattr(suite.factory(spec), "check", None)
            if callable(check):  # components may check their references against the suite, like studies
                try:
                    found = list(suite.factory(spec)(**spec.params).check(suite))
                except Exception as e:
                    found = [("", f"cannot build {spec.use!r}: {type(e).__name__}: {e}")]
                problems.extend((f"{spec.key_path}.{k}" if k else spec.key_path, m) for k, m in found)
    for alias, spec in sections["studies"].items():
        try:
            study = suite.factory(spec)(**spec.params)
        except Exception as e:
            problems.append((spec.key_path, f"cannot build study {spec.use!r}: {type(e).__name__}: {e}"))
            continue
        for key, msg in study.check(suite):
            problems.append((f"{spec.key_path}.{key}" if key else spec.key_path, msg))
    if problems:
        raise SuiteError(path, problems)
    return suite


def _parse_entry(kind, alias, entry, registry, seed, data_dir, problems) -> Spec | None:
    key = f"{kind}.{alias}"
    if not isinstance(entry, dict):
        problems.append((key, f"must be a mapping with a 'use' key, got {entry!r}"))
        return None
    use = entry.get("use")
    if use is None:
        problems.append((key, "missing 'use' (the registered name of the factory)"))
        return None
    table = registry.tables[kind]
    if use not in table:
        problems.append((f"{key}.use", f"unknown {SINGULAR[kind]} {use!r}{suggest(use, table)}; registered: {', '.join(table)}"))
        return None
    factory = table[use].factory
    params = {k: v for k, v in entry.items() if k not in CORE_KEYS[kind]}
    core = {k: v for k, v in entry.items() if k in CORE_KEYS[kind] and k != "use"}
    problems.extend(_check_params(factory, params, key))
    return Spec(kind, alias, use, _inject(params, factory, seed, data_dir), core)


def _check_core(suite: Suite, spec: Spec) -> Iterable[tuple[str, str]]:
    key = spec.key_path
    if spec.kind == "models":
        train, ckpt = spec.core.get("train"), spec.core.get("checkpoint")
        trainable = getattr(suite.factory(spec), "trainable", True)
        if train is None and ckpt is None and trainable:
            yield key, "a model needs 'train: {data: <dataset>, split: train}' or 'checkpoint: <path or URI>'"
        if not trainable and (train is not None or ckpt is not None):
            yield key, f"model {spec.use!r} has nothing to learn: drop 'train' and 'checkpoint'"
            return
        if train is not None:
            if not isinstance(train, dict):
                yield f"{key}.train", f"must be a mapping {{data: ..., split: ...}}, got {train!r}"
                return
            for k in train:
                if k not in TRAIN_KEYS:
                    yield f"{key}.train.{k}", f"unknown key{suggest(k, TRAIN_KEYS)}; allowed: {', '.join(TRAIN_KEYS)}"
            seed = train.get("seed")
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
                yield f"{key}.train.seed", f"must be an integer (this model's training seed), got {seed!r}"
            data = train.get("data")
            if data is None:
                yield f"{key}.train", "missing 'data'"
            elif not suite.has("datasets", data):
                yield f"{key}.train.data", f"unknown dataset {data!r}{suggest(data, suite.datasets)}"
            else:
                yield from check_split(suite, data, train.get("split", "train"), f"{key}.train.split")
    if spec.kind == "datasets" and "adapt" in spec.core:
        adapt = spec.core["adapt"]
        if not isinstance(adapt, dict):
            yield f"{key}.adapt", f"must be a mapping {{channels: 1|3, size: N}}, got {adapt!r}"
            return
        for k, v in adapt.items():
            if k not in ADAPT_KEYS:
                yield f"{key}.adapt.{k}", f"unknown key{suggest(k, ADAPT_KEYS)}; allowed: {', '.join(ADAPT_KEYS)}"
            elif k == "channels" and v not in (1, 3):
                yield f"{key}.adapt.channels", f"must be 1 or 3, got {v!r}"
            elif k == "size" and (not isinstance(v, int) or v < 1):
                yield f"{key}.adapt.size", f"must be a positive integer, got {v!r}"


def check_split(suite: Suite, dataset: str, split: str, key: str) -> Iterable[tuple[str, str]]:
    """Problems with ``dataset`` offering ``split`` (static: uses the factory's ``splits`` attribute)."""
    spec = suite.spec("datasets", dataset)
    splits = getattr(suite.factory(spec), "splits", None)
    if splits is not None and split not in splits:
        yield key, f"dataset {dataset!r} ({spec.use}) has no split {split!r}{suggest(split, splits)}; it has {', '.join(splits)}"


def validate_all_profiles(path: str | Path, registry: Registry | None = None) -> list[str | None]:
    """Validate the suite with no profile and with each of its profiles; return the profiles checked."""
    raw = read_yaml(path)
    profiles = list((raw.get("profiles") or {}).keys()) if isinstance(raw.get("profiles"), dict) else []
    checked: list[str | None] = []
    for profile in [raw.get("default_profile")] + [p for p in profiles if p != raw.get("default_profile")]:
        load_suite(path, profile=profile, registry=registry)
        checked.append(profile)
    return checked


__all__ = ["Suite", "Spec", "SuiteError", "load_suite", "validate_all_profiles", "RegistryError"]
