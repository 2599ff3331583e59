from __future__ import annotations

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")

from benchbench import DataFileError  # noqa: E402
from benchbench_plugins.samples import Samples, register_datasets  # noqa: E402


def _rgb(n=5, h=8, w=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, h, w), dtype=np.uint8)


def test_npz_images_key_with_labels(tmp_path):
    x = _rgb()
    f = tmp_path / "s.npz"
    np.savez(f, images=x, labels=np.arange(5), other=np.zeros(3))
    s = Samples(path=str(f)).load("test")
    np.testing.assert_array_equal(s.images, x)
    np.testing.assert_array_equal(s.labels, np.arange(5))
    assert s.labels.dtype == np.int64
    assert s.source == f"samples:{f.resolve()}" and s.partial is None


def test_npz_only_array_nhwc_auto(tmp_path):
    x = _rgb()
    f = tmp_path / "s.npz"
    np.savez_compressed(f, arr_0=x.transpose(0, 2, 3, 1))
    s = Samples(path=str(f)).load()
    np.testing.assert_array_equal(s.images, x)
    assert s.labels is None


def test_npz_several_arrays_without_images_key(tmp_path):
    f = tmp_path / "s.npz"
    np.savez(f, a=_rgb(), b=_rgb())
    with pytest.raises(DataFileError, match="no 'images' array") as e:
        Samples(path=str(f)).load("test")
    assert str(f) in str(e.value)


def test_npy_greyscale_nhw_and_explicit_layout(tmp_path):
    g = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    f = tmp_path / "g.npy"
    np.save(f, g)
    assert Samples(path=str(f)).load().images.shape == (4, 1, 28, 28)
    amb = np.zeros((2, 3, 5, 3), np.uint8)  # channel axis could be 1 or 3
    np.save(f, amb)
    with pytest.raises(DataFileError, match="ambiguous") as e:
        Samples(path=str(f)).load()
    assert str(f) in str(e.value)
    assert Samples(path=str(f), layout="NHWC").load().images.shape == (2, 3, 3, 5)
    assert Samples(path=str(f), layout="NCHW").load().images.shape == (2, 3, 5, 3)


def test_float_unit_scale_is_rounded(tmp_path):
    x = _rgb()
    f = tmp_path / "f.npy"
    np.save(f, x.astype(np.float32) / 255)
    np.testing.assert_array_equal(Samples(path=str(f)).load().images, x)


def test_float_whole_numbers_and_small_ints_accepted(tmp_path):
    x = _rgb()
    f = tmp_path / "f.npy"
    np.save(f, x.astype(np.float64))
    np.testing.assert_array_equal(Samples(path=str(f)).load().images, x)
    np.save(f, x.astype(np.int64))
    np.testing.assert_array_equal(Samples(path=str(f)).load().images, x)


@pytest.mark.parametrize("bad, match", [
    (np.full((2, 3, 4, 4), 0.5) * np.array([1, 1, 3]).reshape(1, 3, 1, 1), "neither the"),
    (np.full((2, 3, 4, 4), -0.5), "negatives"),
    (np.full((2, 3, 4, 4), 300.0), "neither the"),
    (np.full((2, 3, 4, 4), np.nan), "NaN"),
    (np.full((2, 3, 4, 4), 256, dtype=np.int32), "outside 0..255"),
    (np.zeros((2, 3, 4, 4), dtype=bool), "dtype bool"),
    (np.zeros((2, 3, 4, 4), dtype=np.complex64), "dtype complex64"),
    (np.zeros((2, 4, 4), dtype=np.uint8)[None, None], "shape"),
    (np.zeros((2, 5, 4, 4), dtype=np.uint8), "no channel axis"),
])
def test_bad_arrays_name_the_file(tmp_path, bad, match):
    f = tmp_path / "bad.npy"
    np.save(f, bad)
    with pytest.raises(DataFileError, match=match) as e:
        Samples(path=str(f)).load("test")
    assert str(f) in str(e.value)


def test_unreadable_files_name_the_file(tmp_path):
    for name in ("x.npy", "x.npz"):
        f = tmp_path / name
        f.write_bytes(b"garbage")
        with pytest.raises(DataFileError, match="cannot read") as e:
            Samples(path=str(f)).load()
        assert str(f) in str(e.value)
    f = tmp_path / "x.txt"
    f.write_text("hi")
    with pytest.raises(DataFileError, match="unsupported file type"):
        Samples(path=str(f)).load()
    with pytest.raises(FileNotFoundError, match="nope"):
        Samples(path=str(tmp_path / "nope")).load()


def test_image_folder_sorted_by_name(tmp_path):
    x = _rgb(n=3, h=10, w=12)
    for i, name in zip([2, 0, 1], ["c.png", "a.png", "b.png"]):
        Image.fromarray(x[i].transpose(1, 2, 0)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("ignored")
    s = Samples(path=str(tmp_path)).load("test")
    np.testing.assert_array_equal(s.images, x)
    assert s.source.endswith("(3 files)")


def test_image_folder_greyscale_and_mismatch(tmp_path):
    g = np.random.default_rng(0).integers(0, 256, size=(2, 7, 7), dtype=np.uint8)
    Image.fromarray(g[0]).save(tmp_path / "0.png")
    Image.fromarray(g[1]).save(tmp_path / "1.png")
    s = Samples(path=str(tmp_path)).load()
    np.testing.assert_array_equal(s.images[:, 0], g)
    Image.fromarray(np.zeros((8, 7), np.uint8)).save(tmp_path / "2.png")
    with pytest.raises(DataFileError, match="all images must match") as e:
        Samples(path=str(tmp_path)).load()
    assert str(tmp_path / "2.png") in str(e.value)


def test_image_folder_bad_mode_and_empty(tmp_path):
    Image.fromarray(np.zeros((4, 4, 4), np.uint8), mode="RGBA").save(tmp_path / "a.png")
    with pytest.raises(DataFileError, match="mode 'RGBA'") as e:
        Samples(path=str(tmp_path)).load()
    assert str(tmp_path / "a.png") in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFileError, match="no .png"):
        Samples(path=str(empty)).load()


def test_only_the_test_split(tmp_path):
    f = tmp_path / "s.npy"
    np.save(f, _rgb())
    with pytest.raises(ValueError, match="single split 'test'"):
        Samples(path=str(f)).load("train")
    with pytest.raises(ValueError, match="layout"):
        Samples(path=str(f), layout="CHW").load()


def test_registered():
    assert register_datasets() == {"samples": Samples}
    assert Samples(path="x").path == "x"
