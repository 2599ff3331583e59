"""The paper's real image data sets: ``cifar10``, ``svhn``, ``mnist``, ``fashion_mnist``, ``colored_mnist``.

Every loader returns the exact uint8 pixels, in the original row order, with
int64 labels. ``load(split)`` tries three sources in order and keeps the outcome
of each (``dataset.last_attempts_``); the first that works is named in
``Split.source``:

1. **mirror** -- a local folder in the Hugging Face parquet layout,
   ``<dir>/<name>/<split>.parquet`` with an image column ``img`` or ``image``
   (struct{bytes: PNG, path}) and an integer ``label`` column. ``<dir>`` is the
   constructor's ``data_dir``, else the environment variable ``BENCHBENCH_DATA``.
   A file that exists but is broken (not parquet, a missing column, an image of
   the wrong size or mode, a label out of range) is an error naming the file: it
   is never skipped in favour of another source.
2. **hub** -- ``datasets.load_dataset(repo, config, revision=REVISION)`` (imported
   lazily). A cheap metadata request (5 s timeout, no retries) is made first; if it
   cannot reach the hub, or ``HF_HUB_OFFLINE`` is set, only the local ``datasets``
   cache is consulted, and a cached copy is accepted only if it is of the pinned
   revision. Offline this step takes well under a second instead of the ~25 s of
   ``datasets``' own retry schedule.
3. **torchvision** -- ``torchvision.datasets.<Class>(root, ..., download=False)`` for
   root in ``data_dir``, ``<TORCH_HOME or ~/.cache/torch>/datasets`` and ``~/.cache``.

When all three fail, :class:`DataUnavailable` lists every place tried with the
reason, and how to provide the data.

A split with fewer rows than the official split (CIFAR-10 50,000/10,000; MNIST and
Fashion-MNIST 60,000/10,000; SVHN 73,257/26,032/531,131) is marked
``partial`` (e.g. ``"4000 of 50000 rows (mirror /data/cifar10/train.parquet)"``), as is
one cut by ``limit=N`` (the first N rows, for smoke runs).

``colored_mnist``
-----------------
MNIST digits coloured deterministically from ``seed``. Image ``i`` of a split gets one
RGB colour ``c`` with each channel drawn uniformly from {0, ..., 255}; the strokes are
coloured and the background stays black: ``out[k] = round(x * c[k] / 255)`` for greyscale
intensity ``x`` (exact integer arithmetic), three channels. The colour of image ``i``
depends only on ``(seed, split, i)`` -- the i-th draw of a generator seeded with
``SeedSequence([seed, split_index])`` -- so ``limit`` does not change it, and train and
test get independent colours. ``size=32`` pads 2 black pixels on each side.

Why this scheme: coloured-MNIST domains used in unpaired image-to-image translation
(CycleGAN-style MNIST <-> coloured-MNIST set-ups) and in the dataset-bias literature colour
the *strokes* and leave a black background, so the digit's shape -- the content -- is
untouched and only a per-image colour "style" changes. Multiplying the intensity by the
colour keeps the anti-aliased stroke edges as ramps towards black, so no new edges are
introduced, and drawing colours independently of the label keeps colour free of class
information. The exact recipe of the ARCycle paper could not be checked here (offline);
this is a documented choice of this package, not a verified reproduction. Note that a
uniform colour is sometimes dark (e.g. all channels < 40), giving faint digits; that is
part of the distribution as defined.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchbench import DataFileError, DataUnavailable, Dataset, Split, hookimpl
from benchbench.adapters import pad_images

logger = logging.getLogger(__name__)

#: Environment variable naming a mirror folder (``<dir>/<name>/<split>.parquet``).
DATA_ENV = "BENCHBENCH_DATA"
#: Seconds allowed for the hub metadata request that decides whether to try a download.
HUB_PROBE_TIMEOUT_S = 5.0

# Hub revisions (full commit hashes of the dataset repositories). CIFAR-10, MNIST and SVHN
# are the commit hashes used as pinned revisions by several independent public projects
# (seen in their source; not re-checked against the hub, which is unreachable here).
# For Fashion-MNIST no verifiable commit hash was found, so it is pinned to "main" (NOT a
# content pin: the data can change under it) -- replace it with the real commit hash.
CIFAR10_REVISION = "0b2714987fa478483af9968de7c934580d0bb9a2"
SVHN_REVISION = "f9e1717d73324ebbc1ece84267ccd80d0aca0690"
MNIST_REVISION = "77f3279092a1c1579b2250db8eafed0ad422088c"
FASHION_MNIST_REVISION = "main"  # TODO: pin to a commit hash (none could be verified offline)


class _NotHere(Exception):
    """Internal: this source does not have the split (the reason is the message)."""


@dataclass(frozen=True)
class ImageSpec:
    """Everything that differs between the four image data sets."""

    name: str
    channels: int
    size: int
    #: Official number of rows per split.
    split_sizes: dict[str, int]
    hub_repo: str
    hub_config: str | None
    revision: str
    #: Preferred image column on the hub; the other of ("img", "image") is accepted too.
    image_column: str
    torchvision_class: str
    num_classes: int = 10
    #: Pillow modes accepted, each converted losslessly to the expected one ("P" -> "RGB").
    modes: tuple[str, ...] = field(default=())

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def accepted_modes(self) -> tuple[str, ...]:
        return self.modes or ((self.mode,) if self.channels == 1 else ("RGB", "P"))


SPECS: dict[str, ImageSpec] = {
    "cifar10": ImageSpec(
        "cifar10", 3, 32, {"train": 50_000, "test": 10_000},
        "uoft-cs/cifar10", None, CIFAR10_REVISION, "img", "CIFAR10"),
    "svhn": ImageSpec(
        "svhn", 3, 32, {"train": 73_257, "test": 26_032, "extra": 531_131},
        "ufldl-stanford/svhn", "cropped_digits", SVHN_REVISION, "image", "SVHN"),
    "mnist": ImageSpec(
        "mnist", 1, 28, {"train": 60_000, "test": 10_000},
        "ylecun/mnist", None, MNIST_REVISION, "image", "MNIST"),
    "fashion_mnist": ImageSpec(
        "fashion_mnist", 1, 28, {"train": 60_000, "test": 10_000},
        "zalando-datasets/fashion_mnist", None, FASHION_MNIST_REVISION, "image", "FashionMNIST"),
}


# --------------------------------------------------------------------------- decoding


def decode_image_table(table: Any, where: str, spec: ImageSpec) -> tuple[np.ndarray, np.ndarray]:
    """A pyarrow table in the HF image layout -> (uint8 images (N, C, H, W), int64 labels).

    ``where`` names the file (or hub repo) in every error message.
    """
    import pyarrow as pa

    names = table.column_names
    img_col = next((c for c in (spec.image_column, "img", "image") if c in names), None)
    if img_col is None:
        raise DataFileError(f"{where}: no image column (expected 'img' or 'image'); columns are {names}")
    if "label" not in names:
        raise DataFileError(f"{where}: no 'label' column; columns are {names}")

    labels_arr = table.column("label")
    if not pa.types.is_integer(labels_arr.type):
        raise DataFileError(f"{where}: column 'label' has type {labels_arr.type}, expected an integer type")
    if labels_arr.null_count:
        raise DataFileError(f"{where}: column 'label' has {labels_arr.null_count} missing values")
    labels = labels_arr.to_numpy().astype(np.int64, copy=False)
    bad = np.flatnonzero((labels < 0) | (labels >= spec.num_classes))
    if len(bad):
        raise DataFileError(
            f"{where}: row {bad[0]} has label {labels[bad[0]]}, outside 0..{spec.num_classes - 1}")

    col = table.column(img_col)
    if pa.types.is_struct(col.type):
        if col.type.get_field_index("bytes") < 0:
            raise DataFileError(f"{where}: image column {img_col!r} has no 'bytes' field ({col.type})")
        blobs = [chunk.field("bytes") for chunk in col.chunks]
        blob_list = [b for chunk in blobs for b in chunk.to_pylist()]
    elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        blob_list = col.to_pylist()
    else:
        raise DataFileError(
            f"{where}: image column {img_col!r} has type {col.type}; expected struct{{bytes, path}} or binary")
    return decode_images(blob_list, where, spec), labels


def decode_images(blobs: list, where: str, spec: ImageSpec) -> np.ndarray:
    """Encoded images (PNG bytes) -> uint8 (N, C, H, W), checking every image's size and mode."""
    from PIL import Image

    n, s, c = len(blobs), spec.size, spec.channels
    out = np.empty((n, s, s) if c == 1 else (n, s, s, c), dtype=np.uint8)
    accepted = spec.accepted_modes()
    for i, blob in enumerate(blobs):
        if blob is None:
            raise DataFileError(f"{where}: row {i}: the image has no bytes")
        try:
            im = Image.open(io.BytesIO(blob))
            im.load()
        except Exception as e:  # noqa: BLE001 -- any decoder failure is a bad file
            raise DataFileError(f"{where}: row {i}: cannot decode the image ({type(e).__name__}: {e})") from e
        if im.size != (s, s):
            raise DataFileError(
                f"{where}: row {i}: image is {im.size[0]}x{im.size[1]}, expected {s}x{s} for {spec.name}")
        if im.mode not in accepted:
            raise DataFileError(
                f"{where}: row {i}: image mode is {im.mode!r}, expected {spec.mode!r} for {spec.name}")
        if im.mode != spec.mode:
            im = im.convert(spec.mode)  # lossless: palette -> RGB
        out[i] = np.asarray(im)
    if c == 1:
        return out[:, None]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- sources


def _mirror_dir(data_dir: str | os.PathLike | None) -> tuple[Path | None, str]:
    if data_dir is not None:
        return Path(data_dir).expanduser(), "data_dir"
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser(), DATA_ENV
    return None, ""


def _read_head(path: Path, n: int | None) -> tuple[Any, int]:
    """The first ``n`` rows (all if None) of a parquet file, and its total row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        total = pf.metadata.num_rows
        if n is None or n >= total:
            return pf.read(), total
        batches, got = [], 0
        for batch in pf.iter_batches(batch_size=max(1, min(n, 65_536))):
            batches.append(batch)
            got += batch.num_rows
            if got >= n:
                break
        return pa.Table.from_batches(batches, schema=pf.schema_arrow).slice(0, n), total
    except (pa.ArrowException, OSError) as e:
        raise DataFileError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e


@dataclass
class _Loaded:
    images: np.ndarray
    labels: np.ndarray
    source: str
    #: Rows the source holds for this split (before ``limit``).
    available: int
    #: Short description of the source for the ``partial`` sentence.
    where: str


def _from_mirror(spec: ImageSpec, split: str, limit: int | None, data_dir) -> _Loaded:
    root, origin = _mirror_dir(data_dir)
    if root is None:
        raise _NotHere(f"no mirror folder: data_dir was not given and ${DATA_ENV} is not set")
    path = (root / spec.name / f"{split}.parquet").resolve()
    if not root.is_dir():
        raise _NotHere(f"{root} (from {origin}) is not a folder")
    if not path.is_file():
        raise _NotHere(f"{path} does not exist (mirror folder {root}, from {origin})")
    table, total = _read_head(path, limit)
    images, labels = decode_image_table(table, str(path), spec)
    return _Loaded(images, labels, f"mirror:{path}", total, f"mirror {path}")


def _hub_flags_offline():
    """Context manager: make ``datasets`` / ``huggingface_hub`` use only the local cache."""
    import datasets.config as dconfig
    import huggingface_hub.constants as hconst

    @contextlib.contextmanager
    def cm():
        saved = (dconfig.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE)
        dconfig.HF_HUB_OFFLINE = hconst.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            dconfig.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE = saved

    return cm()


def _probe_hub(spec: ImageSpec) -> str | None:
    """None if the hub answers for the pinned revision; otherwise why not (raises _NotHere if it never will)."""
    from huggingface_hub import HfApi
    from huggingface_hub import constants as hconst

    if hconst.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        HfApi().dataset_info(spec.hub_repo, revision=spec.revision, timeout=HUB_PROBE_TIMEOUT_S)
        return None
    except Exception as e:  # noqa: BLE001
        kind = type(e).__name__
        if kind in ("RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"):
            raise _NotHere(f"{kind}: {str(e).splitlines()[0]}") from e
        return f"hub unreachable ({kind}: {str(e).splitlines()[0] if str(e) else ''})"


def _from_hub(spec: ImageSpec, split: str, limit: int | None, data_dir) -> _Loaded:
    repo = f"{spec.hub_repo}@{spec.revision}" + (f" (config {spec.hub_config})" if spec.hub_config else "")
    try:
        import datasets
    except ImportError as e:
        raise _NotHere(f"{repo}: the 'datasets' package is not installed ({e})") from e

    unreachable = _probe_hub(spec)
    kwargs = dict(split=split, revision=spec.revision)
    try:
        if unreachable is None:
            ds = datasets.load_dataset(spec.hub_repo, spec.hub_config, **kwargs)
            kind = "hub"
        else:
            with _hub_flags_offline():
                ds = datasets.load_dataset(spec.hub_repo, spec.hub_config, **kwargs)
            kind = "hub-cache"
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if unreachable is not None:
            raise _NotHere(f"{repo}: {unreachable}; not in the local datasets cache either ({msg})") from e
        raise _NotHere(f"{repo}: {msg}") from e
    if kind == "hub-cache" and spec.revision != "main":
        files = [f.get("filename", "") for f in ds.cache_files]
        if not any(f"{os.sep}{spec.revision}{os.sep}" in f for f in files):
            raise _NotHere(
                f"{repo}: {unreachable}; the local datasets cache holds a different revision ({files[:1]})")
    where = f"{kind}:{spec.hub_repo}@{spec.revision}"
    total = len(ds)
    img_col = next((c for c in (spec.image_column, "img", "image") if c in ds.column_names), None)
    if img_col is not None:
        ds = ds.cast_column(img_col, datasets.Image(decode=False))
    n = total if limit is None else min(limit, total)
    table = ds.with_format("arrow")[0:n]
    images, labels = decode_image_table(table, where, spec)
    return _Loaded(images, labels, where, total, where)


def _torchvision_roots(data_dir) -> list[Path]:
    torch_home = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch").expanduser()
    roots = ([Path(data_dir).expanduser()] if data_dir is not None else []) + [
        torch_home / "datasets", Path.home() / ".cache"]
    out: list[Path] = []
    for r in roots:
        if r not in out:
            out.append(r)
    return out


def _from_torchvision(spec: ImageSpec, split: str, limit: int | None, data_dir) -> _Loaded:
    roots = _torchvision_roots(data_dir)
    existing = [r for r in roots if r.is_dir()]
    if not existing:
        raise _NotHere(f"{spec.torchvision_class}: none of the roots exists: {', '.join(map(str, roots))}")
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise _NotHere(f"torchvision is not installed ({e})") from e
    cls = getattr(tvd, spec.torchvision_class)
    reasons = [f"{r}: no such folder" for r in roots if r not in existing]
    for root in existing:
        try:
            if spec.name == "svhn":
                ds = cls(root=str(root), split=split, download=False)
            else:
                ds = cls(root=str(root), train=(split == "train"), download=False)
        except Exception as e:  # noqa: BLE001 -- torchvision raises RuntimeError, OSError, ...
            reasons.append(f"{root}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        data = np.asarray(ds.data)
        labels = np.asarray(ds.labels if spec.name == "svhn" else ds.targets, dtype=np.int64)
        if spec.name == "cifar10":
            data = data.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        elif spec.channels == 1:
            data = data[:, None]
        where = f"torchvision:{spec.torchvision_class}(root={root})"
        expected = (spec.channels, spec.size, spec.size)
        if data.dtype != np.uint8 or data.shape[1:] != expected:
            raise DataFileError(f"{where}: images are {data.dtype} {data.shape[1:]}, expected uint8 {expected}")
        total = len(data)
        n = total if limit is None else min(limit, total)
        return _Loaded(np.ascontiguousarray(data[:n]), labels[:n].copy(), where, total, where)
    raise _NotHere(f"{spec.torchvision_class} (download=False): " + "; ".join(reasons))


#: The sources, in the order tried: (short name, loader).
SOURCES = (("mirror", _from_mirror), ("hub", _from_hub), ("torchvision", _from_torchvision))


def _help(spec: ImageSpec, split: str, data_dir) -> str:
    roots = ", ".join(str(r) for r in _torchvision_roots(data_dir))
    cfg = f", {spec.hub_config!r}" if spec.hub_config else ""
    return (
        "To provide the data, do one of:\n"
        f"  - set ${DATA_ENV} (or pass data_dir=...) to a folder holding {spec.name}/{split}.parquet in the "
        "Hugging Face parquet layout (image column 'img' or 'image' as struct{bytes: PNG, path}, int 'label');\n"
        f"  - on a machine with internet, run datasets.load_dataset({spec.hub_repo!r}{cfg}, "
        f"revision={spec.revision!r}) once to fill the Hugging Face cache (or write the parquet mirror from it);\n"
        f"  - put torchvision's files for {spec.torchvision_class} under one of: {roots}."
    )


def _limit_value(limit) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"limit must be a positive int or None; got {limit!r}")
    return int(limit)


def _partial(spec: ImageSpec, split: str, got: _Loaded, limit: int | None) -> str | None:
    official = spec.split_sizes[split]
    if got.available > official:
        raise DataFileError(
            f"{got.where}: has {got.available} rows, more than the official {spec.name} {split} split "
            f"({official}): not this data set?")
    n = len(got.images)
    if n >= official:
        return None
    if limit is not None and n == limit and limit < got.available:
        short = "" if got.available >= official else f"; the {got.where} holds only {got.available}"
        return f"first {n} of {official} rows (limit={limit}{short})"
    return f"{n} of {official} rows ({got.where})"


# --------------------------------------------------------------------------- dataset plugins


class ImageDataset(Dataset):
    """One of the paper's image data sets; subclasses only name their :class:`ImageSpec`."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        cls.splits = tuple(SPECS[cls.name].split_sizes)  # the spec is the one place that lists them

    def __init__(self, data_dir: str | None = None, limit: int | None = None):
        self.data_dir = data_dir
        self.limit = limit

    @property
    def spec(self) -> ImageSpec:
        return SPECS[self.name]

    def load(self, split: str) -> Split:
        self._check_split(split)
        spec, limit = self.spec, _limit_value(self.limit)
        attempts: list[tuple[str, str]] = []
        self.last_attempts_ = attempts
        for place, loader in SOURCES:
            t0 = time.perf_counter()
            try:
                got = loader(spec, split, limit, self.data_dir)
            except _NotHere as e:
                attempts.append((place, f"{e} [{time.perf_counter() - t0:.1f}s]"))
                continue
            attempts.append((place, f"ok: {got.source}"))
            for p, why in attempts[:-1]:
                logger.info("%s/%s: %s not used: %s", spec.name, split, p, why)
            return Split(got.images, got.labels, source=got.source, partial=_partial(spec, split, got, limit))
        tried = "\n".join(f"  {i}. {place}: {why}" for i, (place, why) in enumerate(attempts, 1))
        raise DataUnavailable(
            f"{spec.name}/{split} is not available. Tried, in order:\n{tried}\n{_help(spec, split, self.data_dir)}",
            attempts,
        )


class CIFAR10(ImageDataset):
    """CIFAR-10, 32x32 RGB, splits train (50,000) / test (10,000)."""

    name = "cifar10"


class SVHN(ImageDataset):
    """SVHN cropped digits (format 2), 32x32 RGB, splits train / test / extra; labels 0..9 (digit 0 is 0)."""

    name = "svhn"


class MNIST(ImageDataset):
    """MNIST, 28x28 greyscale, splits train (60,000) / test (10,000)."""

    name = "mnist"


class FashionMNIST(ImageDataset):
    """Fashion-MNIST, 28x28 greyscale, splits train (60,000) / test (10,000)."""

    name = "fashion_mnist"


def stroke_colors(seed: int, split_index: int, n: int) -> np.ndarray:
    """The (n, 3) uint8 colours of images 0..n-1; row i depends only on (seed, split_index, i)."""
    u = np.random.default_rng(np.random.SeedSequence([seed, split_index])).random((n, 3))
    return np.floor(u * 256).astype(np.uint8)


def colorize(grey: np.ndarray, colors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(N, 1, H, W) uint8 intensities x (N, 3) colours -> (N, 3, H, W): round(x * c / 255), exact."""
    n, _, h, w = grey.shape
    out = np.empty((n, 3, h, w), dtype=np.uint8)
    for s in range(0, n, chunk):
        x = grey[s:s + chunk].astype(np.uint16)  # x * c <= 65025: fits
        c = colors[s:s + chunk].astype(np.uint16)[:, :, None, None]
        out[s:s + chunk] = (x * c + 127) // 255  # == round half up; x*c/255 is never exactly k + 1/2
    return out


class ColoredMNIST(Dataset):
    """MNIST with each digit's strokes in one seeded random colour on black; see the module docstring."""

    name: ClassVar[str] = "colored_mnist"
    splits = ("train", "test")

    def __init__(self, seed: int = 0, size: int = 28, data_dir: str | None = None, limit: int | None = None):
        self.seed = seed
        self.size = size
        self.data_dir = data_dir
        self.limit = limit

    def load(self, split: str) -> Split:
        self._check_split(split)
        if self.size not in (28, 32):
            raise ValueError(f"colored_mnist size must be 28 or 32; got {self.size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"colored_mnist seed must be a non-negative int; got {self.seed!r}")
        base_ds = MNIST(data_dir=self.data_dir, limit=self.limit)
        base = base_ds.load(split)
        self.last_attempts_ = base_ds.last_attempts_
        images = colorize(base.images, stroke_colors(int(self.seed), self.splits.index(split), len(base)))
        if self.size == 32:
            images = pad_images(images, 32)
        return Split(
            images, base.labels,
            source=f"colored_mnist(seed={self.seed}, size={self.size}) of {base.source}",
            partial=base.partial,
        )


@hookimpl
def register_datasets():
    return {
        "cifar10": CIFAR10,
        "svhn": SVHN,
        "mnist": MNIST,
        "fashion_mnist": FashionMNIST,
        "colored_mnist": ColoredMNIST,
    }
