"""Data files that scikit-learn ships, read without importing scikit-learn (which costs ~1 s)."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def sklearn_file(*parts: str) -> Path:
    """The path of a file inside the installed scikit-learn package, e.g. ``("datasets", "data", "digits.csv.gz")``."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("scikit-learn is not installed; it ships the bundled data this data set reads")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the installed scikit-learn")
    return path
