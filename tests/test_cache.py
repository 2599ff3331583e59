"""Content-addressed, atomically written cache entries."""
import os

import numpy as np
import pytest

from benchbench.cache import Cache, atomic_write, cache_key


def test_key_is_stable_and_sensitive():
    a = cache_key(plugin="made", params={"hidden": [8, 8], "lr": 1e-3}, seed=0)
    assert a == cache_key(seed=0, params={"lr": 1e-3, "hidden": [8, 8]}, plugin="made")
    assert a != cache_key(plugin="made", params={"hidden": [8, 8], "lr": 1e-3}, seed=1)
    assert a != cache_key(plugin="made", params={"hidden": [8, 9], "lr": 1e-3}, seed=0)


def test_arrays_round_trip(tmp_path):
    cache = Cache(tmp_path)
    assert cache.load_arrays("k" * 32) is None
    cache.save_arrays("k" * 32, {"bpd": np.arange(3.0)})
    np.testing.assert_array_equal(cache.load_arrays("k" * 32)["bpd"], np.arange(3.0))
    assert (cache.hits, cache.misses) == (1, 1)


def test_a_write_killed_midway_leaves_no_entry(tmp_path):
    target = tmp_path / "scores" / "entry.npz"

    def dies_halfway(f):
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt  # as if the run were killed

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, dies_halfway)
    assert not target.exists()
    assert os.listdir(target.parent) == []  # no temporary file left behind either


def test_a_failed_overwrite_keeps_the_old_entry(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write(target, lambda f: f.write(b"old"))
    with pytest.raises(RuntimeError):
        atomic_write(target, lambda f: (f.write(b"ne"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert target.read_bytes() == b"old"


def test_ephemeral_cache_is_removed(tmp_path):
    cache = Cache(None)
    cache.save_arrays("a" * 32, {"x": np.zeros(1)})
    root = cache.root
    assert root.exists()
    cache.close()
    assert not root.exists()


def test_entries_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
