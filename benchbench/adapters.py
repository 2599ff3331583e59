"""Shape adapters: make a :class:`~benchbench.api.Split` fit a model's input shape.

``adapt(split, channels=..., size=...)`` returns a new Split whose ``adapters``
tuple records every change made (e.g. ``("rgb", "pad32")``), so that the change
enters :attr:`Split.fingerprint` and a result computed on adapted data can never
be mistaken for one computed on the original pixels. A request that changes
nothing records nothing.

* ``channels=3`` on greyscale: the one channel is repeated three times (tag ``"rgb"``).
* ``channels=1`` on RGB: ITU-R BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B``,
  rounded half up, computed exactly in integers as ``(299 R + 587 G + 114 B + 500) // 1000``
  (tag ``"grey"``). An image with R = G = B comes back unchanged. (Pillow's ``convert("L")``
  uses a 16-bit fixed-point version of the same formula and can differ by one level.)
* ``size=S``: zero (black) padding, centred, to S x S (tag ``"padS"``). When the total
  padding along an axis is odd, the extra pixel goes to the bottom / right. Asking for
  a size smaller than the image is an error: adapters never crop or resample.

Channels are adapted before padding (the two commute).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from benchbench.api import Split

__all__ = ["adapt", "to_rgb", "to_grey", "pad_images"]

#: ITU-R BT.601 luma weights, in thousandths (they sum to 1000).
LUMA_601 = (299, 587, 114)


def to_rgb(images: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) uint8 -> (N, 3, H, W) by repeating the channel."""
    _check_images(images)
    if images.shape[1] != 1:
        raise ValueError(f"to_rgb needs one channel; got shape {images.shape}")
    return np.repeat(images, 3, axis=1)


def to_grey(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, 1, H, W): ITU-R 601 luma, rounded half up, exact in integers."""
    _check_images(images)
    if images.shape[1] != 3:
        raise ValueError(f"to_grey needs three channels; got shape {images.shape}")
    wr, wg, wb = LUMA_601
    x = images.astype(np.uint32)
    y = (wr * x[:, 0] + wg * x[:, 1] + wb * x[:, 2] + 500) // 1000  # at most 255
    return y.astype(np.uint8)[:, None]


def pad_images(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (N, C, H, W) uint8 images, centred, to (N, C, size, size)."""
    _check_images(images)
    n, c, h, w = images.shape
    if size < h or size < w:
        raise ValueError(
            f"cannot pad {h}x{w} images to {size}x{size}: the target is smaller than the image "
            "(adapters never crop or resample)"
        )
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, c, size, size), dtype=np.uint8)
    out[:, :, top:top + h, left:left + w] = images
    return out


def adapt(split: Split, channels: int | None = None, size: int | None = None) -> Split:
    """Return ``split`` adapted to ``channels`` (1 or 3) and/or square ``size``; see the module docstring.

    Labels, ``source`` and ``partial`` are kept; the tags of what was done are appended
    to ``split.adapters``. Returns ``split`` itself when nothing needs changing.
    """
    images = split.images
    tags: list[str] = []
    if channels is not None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {channels!r}")
        have = images.shape[1]
        if have not in (1, 3):
            raise ValueError(f"can only adapt 1- or 3-channel images; this split has {have} channels")
        if have != channels:
            images = to_rgb(images) if channels == 3 else to_grey(images)
            tags.append("rgb" if channels == 3 else "grey")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size must be a positive int; got {size!r}")
        size = int(size)
        if images.shape[2:] != (size, size):
            images = pad_images(images, size)
            tags.append(f"pad{size}")
    if not tags:
        return split
    return dataclasses.replace(split, images=images, adapters=tuple(split.adapters) + tuple(tags))


def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = getattr(images, "dtype", type(images).__name__), getattr(images, "shape", None)
        raise TypeError(f"expected uint8 images of shape (N, C, H, W); got {got}")
