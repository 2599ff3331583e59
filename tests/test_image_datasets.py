"""Image data set loaders: the real offline mirror (when present) and self-built parquet fixtures."""
from __future__ import annotations

import io
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
Image = pytest.importorskip("PIL.Image")

from benchbench import Dataset  # noqa: E402
from benchbench_plugins import image_datasets as imd  # noqa: E402
from benchbench_plugins.image_datasets import (  # noqa: E402
    CIFAR10, MNIST, SVHN, ColoredMNIST, DataFileError, DataUnavailable, FashionMNIST,
)


def _mirror_root() -> Path:
    env = os.environ.get("BENCHBENCH_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


MIRROR = _mirror_root()


def _need(name: str, split: str) -> Path:
    f = MIRROR / name / f"{split}.parquet"
    if not f.is_file():
        pytest.skip(f"offline mirror file {f} not present (set BENCHBENCH_DATA to a mirror folder)")
    return MIRROR


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No BENCHBENCH_DATA, and HOME / TORCH_HOME pointing at an empty folder (no torchvision caches)."""
    monkeypatch.delenv("BENCHBENCH_DATA", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    return tmp_path


@pytest.fixture
def no_hub(monkeypatch):
    """Make the hub step fail instantly (the genuine offline path is tested separately)."""
    def fake_hub(spec, split, limit, data_dir):
        raise imd._NotHere(f"{spec.hub_repo}: hub disabled in this test")
    monkeypatch.setattr(imd, "SOURCES", tuple((n, fake_hub if n == "hub" else f) for n, f in imd.SOURCES))


# --------------------------------------------------------------------------- fixtures in the HF layout

_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def write_hf_parquet(path: Path, images: np.ndarray, labels, image_column="image", with_label=True, blobs=None):
    """images: (N, H, W) greyscale or (N, H, W, 3) RGB uint8. The schema of the HF hub parquet files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blobs = blobs if blobs is not None else [_png(a) for a in images]
    cols = {image_column: pa.array([{"bytes": b, "path": None} for b in blobs], type=_IMAGE_TYPE)}
    features = {image_column: {"_type": "Image"}}
    if with_label:
        cols["label"] = pa.array(np.asarray(labels, dtype=np.int64))
        features["label"] = {"names": [str(i) for i in range(10)], "_type": "ClassLabel"}
    table = pa.table(cols).replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, path)
    return path


def _grey(n=12, seed=0, size=28):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    x[:, :4] = 0  # some background
    return x, rng.integers(0, 10, size=n)


# --------------------------------------------------------------------------- the real mirror


def _check(split, n, counts, first, mean, channels, tol=6e-5):
    assert len(split) == n and split.images.shape[1] == channels
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(split.labels, minlength=10), counts)
    np.testing.assert_array_equal(split.labels[: len(first)], first)
    got = split.images.mean(axis=(0, 2, 3), dtype=np.float64) / 255
    np.testing.assert_allclose(got, mean, atol=tol)
    assert split.source.startswith("mirror:")


def test_mirror_mnist_test():
    s = MNIST(data_dir=str(_need("mnist", "test"))).load("test")
    _check(s, 10_000, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
           [7, 2, 1, 0, 4, 1, 4, 9, 5, 9], [0.1325], 1)
    assert s.partial is None and s.images.shape == (10_000, 1, 28, 28)
    assert s.source == f"mirror:{(MIRROR / 'mnist' / 'test.parquet').resolve()}"


def test_mirror_mnist_train():
    t0 = time.perf_counter()
    s = MNIST(data_dir=str(_need("mnist", "train"))).load("train")
    elapsed = time.perf_counter() - t0
    _check(s, 60_000, [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
           [5, 0, 4, 1, 9, 2, 1, 3, 1, 4], [0.1307], 1)
    assert s.partial is None
    assert elapsed < 15, f"decoding 60k MNIST PNGs took {elapsed:.1f}s"


def test_mirror_fashion_mnist_test_via_env(monkeypatch):
    monkeypatch.setenv("BENCHBENCH_DATA", str(_need("fashion_mnist", "test")))
    s = FashionMNIST().load("test")
    _check(s, 10_000, [1000] * 10, [9, 2, 1, 1, 6, 1, 4, 6, 5, 7], [0.2868], 1)
    assert s.partial is None


def test_mirror_cifar10_train_is_partial():
    s = CIFAR10(data_dir=str(_need("cifar10", "train"))).load("train")
    _check(s, 4_000, [396, 366, 420, 384, 422, 393, 414, 385, 407, 413],
           [6, 9, 9, 4, 1, 1, 2, 7, 8, 3], [0.4916, 0.4818, 0.4447], 3)
    assert s.images.shape == (4_000, 3, 32, 32)
    assert s.partial is not None and s.partial.startswith("4000 of 50000 rows (mirror ")


def test_mirror_cifar10_test_is_partial():
    s = CIFAR10(data_dir=str(_need("cifar10", "test"))).load("test")
    _check(s, 1_000, [103, 89, 100, 103, 90, 86, 112, 102, 106, 109],
           [3, 8, 8, 0, 6, 6, 1, 6, 3, 1], [0.4967, 0.4867, 0.4510], 3)
    assert s.partial.startswith("1000 of 10000 rows (mirror ")


def test_mirror_limit_marks_partial_and_keeps_order():
    root = str(_need("cifar10", "test"))
    full = CIFAR10(data_dir=root).load("test")
    head = CIFAR10(data_dir=root, limit=25).load("test")
    np.testing.assert_array_equal(head.images, full.images[:25])
    np.testing.assert_array_equal(head.labels, full.labels[:25])
    assert head.partial.startswith("first 25 of 10000 rows (limit=25")


def test_mirror_colored_mnist_small():
    s = ColoredMNIST(seed=3, data_dir=str(_need("mnist", "test")), limit=50).load("test")
    assert s.images.shape == (50, 3, 28, 28) and s.partial.startswith("first 50 of 10000")
    assert "mirror:" in s.source


# --------------------------------------------------------------------------- self-built fixtures


def test_fixture_round_trip_exact_pixels(isolated):
    x, y = _grey()
    write_hf_parquet(isolated / "m" / "mnist" / "test.parquet", x, y)
    s = MNIST(data_dir=str(isolated / "m")).load("test")
    np.testing.assert_array_equal(s.images[:, 0], x)
    np.testing.assert_array_equal(s.labels, y)
    assert s.partial == f"12 of 10000 rows (mirror {(isolated / 'm' / 'mnist' / 'test.parquet').resolve()})"


def test_fixture_rgb_img_column_and_svhn_extra(isolated):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    y = [1, 2, 3, 4, 0]
    write_hf_parquet(isolated / "m" / "cifar10" / "train.parquet", x, y, image_column="img")
    write_hf_parquet(isolated / "m" / "svhn" / "extra.parquet", x, y, image_column="image")
    s = CIFAR10(data_dir=str(isolated / "m")).load("train")
    np.testing.assert_array_equal(s.images, x.transpose(0, 3, 1, 2))
    e = SVHN(data_dir=str(isolated / "m")).load("extra")
    np.testing.assert_array_equal(e.images, s.images)
    assert e.partial.startswith("5 of 531131 rows")


def test_data_dir_beats_env(isolated, monkeypatch):
    x, y = _grey(n=3)
    write_hf_parquet(isolated / "a" / "mnist" / "test.parquet", x, y)
    write_hf_parquet(isolated / "b" / "mnist" / "test.parquet", x[:2], y[:2])
    monkeypatch.setenv("BENCHBENCH_DATA", str(isolated / "b"))
    assert len(MNIST().load("test")) == 2
    assert len(MNIST(data_dir=str(isolated / "a")).load("test")) == 3


def test_corrupt_parquet_names_the_file(isolated):
    bad = isolated / "m" / "mnist" / "test.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(DataFileError, match="not a readable parquet") as e:
        MNIST(data_dir=str(isolated / "m")).load("test")
    assert str(bad.resolve()) in str(e.value)


def test_missing_image_column_names_the_file(isolated):
    x, y = _grey(n=3)
    f = write_hf_parquet(isolated / "m" / "mnist" / "test.parquet", x, y, image_column="pixels")
    with pytest.raises(DataFileError, match="no image column") as e:
        MNIST(data_dir=str(isolated / "m")).load("test")
    assert str(f.resolve()) in str(e.value) and "pixels" in str(e.value)


def test_missing_label_column_names_the_file(isolated):
    x, y = _grey(n=3)
    f = write_hf_parquet(isolated / "m" / "mnist" / "test.parquet", x, y, with_label=False)
    with pytest.raises(DataFileError, match="no 'label' column") as e:
        MNIST(data_dir=str(isolated / "m")).load("test")
    assert str(f.resolve()) in str(e.value)


def test_wrong_image_size_names_the_file_and_row(isolated):
    x, y = _grey(n=4)
    blobs = [_png(a) for a in x]
    blobs[2] = _png(np.zeros((30, 30), np.uint8))
    f = write_hf_parquet(isolated / "m" / "mnist" / "test.parquet", x, y, blobs=blobs)
    with pytest.raises(DataFileError, match=r"row 2: image is 30x30, expected 28x28") as e:
        MNIST(data_dir=str(isolated / "m")).load("test")
    assert str(f.resolve()) in str(e.value)


def test_wrong_image_mode_names_the_file(isolated):
    x, y = _grey(n=2)
    rgb = np.repeat(x[..., None], 3, axis=-1)
    f = write_hf_parquet(isolated / "m" / "mnist" / "test.parquet", rgb, y)
    with pytest.raises(DataFileError, match="mode is 'RGB', expected 'L'") as e:
        MNIST(data_dir=str(isolated / "m")).load("test")
    assert str(f.resolve()) in str(e.value)


def test_undecodable_png_and_bad_label(isolated):
    x, y = _grey(n=3)
    f = write_hf_parquet(isolated / "m" / "mnist" / "test.parquet", x, y, blobs=[b"junk"] * 3)
    with pytest.raises(DataFileError, match="row 0: cannot decode") as e:
        MNIST(data_dir=str(isolated / "m")).load("test")
    assert str(f.resolve()) in str(e.value)
    write_hf_parquet(isolated / "m" / "mnist" / "test.parquet", x, [0, 10, 1])
    with pytest.raises(DataFileError, match="row 1 has label 10"):
        MNIST(data_dir=str(isolated / "m")).load("test")


def test_bad_split_and_limit(isolated):
    with pytest.raises(ValueError, match="no split 'extra'"):
        MNIST().load("extra")
    with pytest.raises(ValueError, match="limit"):
        MNIST(limit=0).load("test")


def test_missing_file_falls_through_to_torchvision(isolated, no_hub):
    """No parquet in data_dir: the torchvision files there are used, and a short split is partial."""
    pytest.importorskip("torchvision")
    raw = isolated / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x, y = _grey(n=5)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([2051, 5, 28, 28], ">i4").tobytes() + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([2049, 5], ">i4").tobytes() + y.astype(np.uint8).tobytes())
    ds = MNIST(data_dir=str(isolated / "tv"))
    s = ds.load("test")
    np.testing.assert_array_equal(s.images[:, 0], x)
    np.testing.assert_array_equal(s.labels, y)
    assert s.source.startswith("torchvision:MNIST(root=") and s.partial.startswith("5 of 10000 rows")
    assert [p for p, _ in ds.last_attempts_] == ["mirror", "hub", "torchvision"]
    assert "does not exist" in ds.last_attempts_[0][1]


def test_hub_step_decodes_a_datasets_table(isolated, monkeypatch):
    """The hub path, with datasets.load_dataset replaced by a local parquet file of the hub schema."""
    datasets = pytest.importorskip("datasets")
    x, y = _grey(n=6)
    f = write_hf_parquet(isolated / "hubfile.parquet", x, y)
    calls = []

    def fake_load(repo, config=None, split=None, revision=None, **kw):
        calls.append((repo, config, split, revision))
        return datasets.Dataset(pq.read_table(f))

    monkeypatch.setattr(imd, "_probe_hub", lambda spec: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    s = MNIST(limit=4).load("test")
    assert calls == [("ylecun/mnist", None, "test", imd.MNIST_REVISION)]
    np.testing.assert_array_equal(s.images[:, 0], x[:4])
    assert s.source == f"hub:ylecun/mnist@{imd.MNIST_REVISION}"
    assert s.partial.startswith("first 4 of 10000 rows (limit=4; the hub:ylecun/mnist@")


def test_svhn_unavailable_lists_all_three_places(isolated, no_hub):
    empty = isolated / "empty"
    empty.mkdir()
    with pytest.raises(DataUnavailable) as e:
        SVHN(data_dir=str(empty)).load("test")
    msg = str(e.value)
    assert [p for p, _ in e.value.attempts] == ["mirror", "hub", "torchvision"]
    assert str((empty / "svhn" / "test.parquet").resolve()) in msg
    assert "ufldl-stanford/svhn" in msg and "hub disabled" in msg
    assert "SVHN" in msg and str(empty) in msg
    assert "BENCHBENCH_DATA" in msg and "svhn/test.parquet" in msg


def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return True
    except OSError:
        return False


def test_svhn_genuinely_offline_fails_fast(isolated):
    if _hub_reachable():
        pytest.skip("the hub is reachable: this would start downloading SVHN")
    t0 = time.perf_counter()
    with pytest.raises(DataUnavailable) as e:
        SVHN().load("test")
    elapsed = time.perf_counter() - t0
    assert [p for p, _ in e.value.attempts] == ["mirror", "hub", "torchvision"]
    assert "ufldl-stanford/svhn" in e.value.attempts[1][1]
    assert elapsed < 15, f"offline failure took {elapsed:.1f}s"


# --------------------------------------------------------------------------- colored_mnist


def test_colored_mnist_deterministic_seeded_black_background(isolated):
    x, y = _grey(n=12)
    write_hf_parquet(isolated / "m" / "mnist" / "test.parquet", x, y)
    d = str(isolated / "m")
    a = ColoredMNIST(seed=0, data_dir=d).load("test")
    b = ColoredMNIST(seed=0, data_dir=d).load("test")
    c = ColoredMNIST(seed=1, data_dir=d).load("test")
    assert a.images.shape == (12, 3, 28, 28)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    np.testing.assert_array_equal(a.labels, y)
    # black wherever MNIST is 0
    background = np.broadcast_to((x == 0)[:, None], a.images.shape)
    assert background.any() and not a.images[background].any()
    # each image is one colour times the intensity: round(x * c / 255)
    cols = imd.stroke_colors(0, ColoredMNIST.splits.index("test"), 12)
    expect = np.floor(x[:, None].astype(np.float64) * cols[:, :, None, None] / 255 + 0.5)
    np.testing.assert_array_equal(a.images, expect.astype(np.uint8))
    # a colour depends only on (seed, split, index): limit keeps the first images' colours
    head = ColoredMNIST(seed=0, data_dir=d, limit=5).load("test")
    np.testing.assert_array_equal(head.images, a.images[:5])


def test_colored_mnist_size_32_pads_black(isolated):
    x, y = _grey(n=3)
    write_hf_parquet(isolated / "m" / "mnist" / "test.parquet", x, y)
    a = ColoredMNIST(data_dir=str(isolated / "m")).load("test")
    p = ColoredMNIST(size=32, data_dir=str(isolated / "m")).load("test")
    assert p.images.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(p.images[:, :, 2:30, 2:30], a.images)
    assert p.images.sum() == a.images.sum()
    with pytest.raises(ValueError, match="28 or 32"):
        ColoredMNIST(size=30, data_dir=str(isolated / "m")).load("test")


# --------------------------------------------------------------------------- registration


def test_register_datasets():
    reg = imd.register_datasets()
    assert set(reg) == {"cifar10", "svhn", "mnist", "fashion_mnist", "colored_mnist"}
    for name, factory in reg.items():
        obj = factory()
        assert isinstance(obj, Dataset)
    assert SVHN.splits == ("train", "test", "extra")
    assert MNIST(data_dir="x", limit=3).limit == 3


def test_registers_through_the_registry_without_name_clashes():
    from benchbench.registry import Registry

    reg = Registry(autoload=False)
    for name in ("cifar10", "svhn", "mnist", "fashion_mnist", "colored_mnist", "samples"):
        assert reg.get("datasets", name).plugin in ("image_datasets", "samples")
