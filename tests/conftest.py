import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "suites"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder; nothing leaks into ~/.cache."""
    monkeypatch.setenv("BENCHBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture
def registry():
    from benchbench.registry import Registry

    return Registry(autoload=False)


def shared_data_dir() -> Path | None:
    """The offline mirror (BENCHBENCH_DATA, else ../shared/data beside the checkout), or None."""
    for cand in (os.environ.get("BENCHBENCH_DATA"), ROOT.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: extra intra-op threads only add overhead (and contend on shared CPUs)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
