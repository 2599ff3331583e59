"""Content-addressed cache of trained checkpoints and per-sample scores.

A key is the sha256 of the canonical JSON of everything that determines the
entry (plugin, its version, its parameters, checkpoint hash, dataset
fingerprint, split, seed). Every file is written to a temporary name in the
same folder and moved into place with ``os.replace``, so a run killed mid-write
leaves either the old state or the complete new entry, never a corrupt one.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchbench.suite import canonical_json


_UMASK = os.umask(0)
os.umask(_UMASK)


def default_cache_dir() -> Path:
    """``$BENCHBENCH_CACHE``, else ``$XDG_CACHE_HOME/benchbench``, else ``~/.cache/benchbench``."""
    if os.environ.get("BENCHBENCH_CACHE"):
        return Path(os.environ["BENCHBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "benchbench"


def cache_key(**parts: Any) -> str:
    """A stable key for the given parts (sha256 of their canonical JSON, 32 hex digits)."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:32]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class Cache:
    """Checkpoints (``.pt``) and score arrays (``.npz``) under one root, addressed by key.

    ``Cache(None)`` is a throw-away cache in a temporary folder (``--no-cache``):
    nothing is read from or left in the persistent cache.
    """

    def __init__(self, root: str | Path | None = "default") -> None:
        self.ephemeral = root is None
        if root is None:
            self.root = Path(tempfile.mkdtemp(prefix="benchbench-nocache-"))
        else:
            self.root = default_cache_dir() if root == "default" else Path(root).expanduser()
        self.hits = 0
        self.misses = 0

    def close(self) -> None:
        if self.ephemeral:
            shutil.rmtree(self.root, ignore_errors=True)

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def work_dir(self, key: str) -> Path:
        """A scratch folder for resumable training state of the entry ``key``."""
        d = self.root / "work" / key
        d.mkdir(parents=True, exist_ok=True)
        return d

    # scores ------------------------------------------------------------------------------
    def load_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.path("scores", key, ".npz")
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
        except Exception:  # unreadable entry (e.g. disk trouble): recompute rather than fail
            self.misses += 1
            return None
        self.hits += 1
        return out

    def save_arrays(self, key: str, arrays: dict[str, np.ndarray]) -> Path:
        return atomic_write(self.path("scores", key, ".npz"), lambda f: np.savez(f, **arrays))

    # checkpoints -------------------------------------------------------------------------
    def checkpoint(self, key: str) -> Path | None:
        path = self.path("checkpoints", key, ".pt")
        if path.is_file():
            self.hits += 1
            return path
        self.misses += 1
        return None

    def save_checkpoint(self, key: str, obj: Any) -> Path:
        import torch

        return atomic_write(self.path("checkpoints", key, ".pt"), lambda f: torch.save(obj, f))
