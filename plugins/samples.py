"""``samples``: anyone's generated images, as an evaluation set.

``samples(path=..., layout="auto")`` reads

* an ``.npz`` file: the array under the key ``images``, or the only array in the file
  (an optional ``labels`` array of the same length becomes the labels);
* an ``.npy`` file;
* a folder of ``.png`` / ``.jpg`` / ``.jpeg`` files, read in order of their names
  (plain string order: name them ``000123.png``, not ``123.png``). All must have the
  same size and the same mode: ``L`` (greyscale) or ``RGB`` (``1`` and ``P`` are converted
  to ``L`` / ``RGB``, which is lossless; any other mode is an error). JPEG is lossy: what
  is read is what was saved.

Arrays may be (N, C, H, W), (N, H, W, C) or (N, H, W) (greyscale). ``layout="auto"``
decides from which axis has 1 or 3 entries and refuses when both (or neither) could be
the channel axis; pass ``"NCHW"`` or ``"NHWC"`` then.

Pixel values (decided here, once):

* ``uint8``: used as is.
* other integer dtypes: accepted when every value is in 0..255 (lossless), else an error.
* floating point: every value must be finite. If all lie in [0, 1] the images are taken to
  be on the [0, 1] scale and converted with ``round(x * 255)`` (``numpy.rint``, ties to
  even): a sampler writing ``k / 255`` gets exactly ``k`` back. (A float image whose
  values are all 0 or 1 is therefore read as black/white 0/255.) Otherwise the values must
  be whole numbers in [0, 255] (a [0, 255] float array that round-trips exactly); anything
  else -- negatives (e.g. a [-1, 1] scale), fractions above 1, values above 255 -- is an
  error naming the file.
* ``bool`` and other dtypes: an error.

Splits: generated samples are one set of images with no train/test division, so the
plugin has exactly one split, ``"test"``; asking for any other name (including
``"train"``) is an error -- a sample set should never be mistaken for training data.
Every error names the file (or folder) it is about.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from benchbench import Dataset, Split, hookimpl
from benchbench import DataFileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUTS = ("auto", "NCHW", "NHWC")
#: Lossless Pillow mode conversions accepted for image folders.
_MODE_MAP = {"L": "L", "1": "L", "RGB": "RGB", "P": "RGB"}


class Samples(Dataset):
    """Generated samples from ``path`` (``.npz``, ``.npy`` or an image folder); one split, ``"test"``."""

    splits: ClassVar[tuple[str, ...]] = ("test",)

    def __init__(self, path: str | None = None, layout: str = "auto"):
        self.path = path
        self.layout = layout

    def load(self, split: str = "test") -> Split:
        if split not in self.splits:
            raise ValueError(
                f"samples from {self.path} have a single split 'test'; got {split!r} "
                "(generated samples are an evaluation set only)")
        if self.path is None:
            raise ValueError("samples needs path=... (an .npz, an .npy or a folder of PNG/JPEG images)")
        if self.layout not in LAYOUTS:
            raise ValueError(f"samples layout must be one of {LAYOUTS}; got {self.layout!r}")
        path = Path(self.path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"samples path {path} does not exist")
        labels = None
        if path.is_dir():
            images, note = read_image_folder(path)
        elif path.suffix.lower() == ".npz":
            arr, labels = _read_npz(path)
            images, note = to_uint8(to_nchw(arr, self.layout, path), path), ""
        elif path.suffix.lower() == ".npy":
            arr = _read_npy(path)
            images, note = to_uint8(to_nchw(arr, self.layout, path), path), ""
        else:
            raise DataFileError(f"{path}: unsupported file type {path.suffix!r}; use .npz, .npy or a folder of images")
        if len(images) == 0:
            raise DataFileError(f"{path}: holds no images")
        if labels is not None and len(labels) != len(images):
            raise DataFileError(f"{path}: {len(labels)} labels for {len(images)} images")
        return Split(images, labels, source=f"samples:{path.resolve()}{note}")


# --------------------------------------------------------------------------- readers


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise DataFileError(f"{path}: cannot read as .npy ({type(e).__name__}: {e})") from e


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            if "images" in keys:
                arr = z["images"]
            elif len(keys) == 1:
                arr = z[keys[0]]
            else:
                raise DataFileError(
                    f"{path}: has no 'images' array and more than one array ({keys}); "
                    "name the images 'images'")
            labels = z["labels"] if "images" in keys and "labels" in keys else None
    except DataFileError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataFileError(f"{path}: cannot read as .npz ({type(e).__name__}: {e})") from e
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataFileError(f"{path}: 'labels' must be a 1-D integer array; got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
    return arr, labels


def read_image_folder(folder: Path) -> tuple[np.ndarray, str]:
    """A folder of PNG/JPEG files (sorted by name) -> uint8 (N, C, H, W), and a note for the source."""
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataFileError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} files in this folder")
    out = None
    mode0 = size0 = None
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im.load()
                if im.mode not in _MODE_MAP:
                    raise DataFileError(
                        f"{f}: image mode {im.mode!r} is not supported (use greyscale 'L' or 'RGB')")
                mode = _MODE_MAP[im.mode]
                if out is None:
                    mode0, size0 = mode, im.size
                    c = 1 if mode == "L" else 3
                    out = np.empty((len(files), im.size[1], im.size[0], c), dtype=np.uint8)
                elif mode != mode0 or im.size != size0:
                    raise DataFileError(
                        f"{f}: is {im.size[0]}x{im.size[1]} {mode}, but {files[0].name} is "
                        f"{size0[0]}x{size0[1]} {mode0}: all images must match")
                a = np.asarray(im.convert(mode) if im.mode != mode else im)
        except DataFileError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DataFileError(f"{f}: cannot read the image ({type(e).__name__}: {e})") from e
        out[i] = a.reshape(out.shape[1:])
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)), f" ({len(files)} files)"


# --------------------------------------------------------------------------- conversions


def to_nchw(arr: np.ndarray, layout: str, path: Path) -> np.ndarray:
    """(N, C, H, W), (N, H, W, C) or (N, H, W) -> (N, C, H, W), per ``layout`` ("auto", "NCHW", "NHWC")."""
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim != 4:
        raise DataFileError(f"{path}: images must be (N, C, H, W), (N, H, W, C) or (N, H, W); got shape {arr.shape}")
    if layout == "auto":
        first, last = arr.shape[1] in (1, 3), arr.shape[3] in (1, 3)
        if first and last:
            raise DataFileError(f"{path}: shape {arr.shape} is ambiguous; pass layout='NCHW' or 'NHWC'")
        if not (first or last):
            raise DataFileError(
                f"{path}: shape {arr.shape} has no channel axis of 1 or 3 entries; pass layout='NCHW' or 'NHWC'")
        layout = "NCHW" if first else "NHWC"
    return arr if layout == "NCHW" else arr.transpose(0, 3, 1, 2)


def to_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Pixel values -> uint8 by the rules in the module docstring; errors name ``path``."""
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataFileError(f"{path}: pixel dtype {arr.dtype} is not supported (use uint8, or floats in [0, 1])")
    if arr.size == 0:
        return np.ascontiguousarray(arr.astype(np.uint8))
    lo, hi = arr.min(), arr.max()
    if np.issubdtype(arr.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise DataFileError(f"{path}: {arr.dtype} pixel values span [{lo}, {hi}], outside 0..255")
        return np.ascontiguousarray(arr.astype(np.uint8))
    if not np.isfinite(arr).all():
        raise DataFileError(f"{path}: pixel values include NaN or infinity")
    if lo < 0:
        raise DataFileError(
            f"{path}: float pixel values span [{lo:g}, {hi:g}]; negatives are not accepted "
            "(for a [-1, 1] scale, save (x + 1) / 2 or uint8)")
    if hi <= 1:
        return np.ascontiguousarray(np.rint(arr.astype(np.float64) * 255).astype(np.uint8))
    if hi <= 255 and (arr == np.round(arr)).all():
        return np.ascontiguousarray(arr.astype(np.uint8))
    raise DataFileError(
        f"{path}: float pixel values span [{lo:g}, {hi:g}]: neither the [0, 1] scale nor whole numbers "
        "in [0, 255]; save uint8 (or floats in [0, 1])")


@hookimpl
def register_datasets():
    return {"samples": Samples}
