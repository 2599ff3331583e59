"""Synthetic data sets: uniform noise and constant images.

``noise``: each dimension i.i.d. uniform over {0, ..., 255} (the paper's "random
noise images from {0, ..., 255}^D"), seeded. ``constant``: every pixel equal to
``value`` (0 = all black, 255 = all white, anything in between).
"""
from __future__ import annotations

import zlib

import numpy as np

from benchbench import Dataset, Split, hookimpl


def _shape(shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be [C, H, W] with positive sizes, got {list(shape)}")
    return shape


class Noise(Dataset):
    """Uniform noise over {0..255}^D: ``n`` images of ``shape`` [C, H, W], seeded per split."""

    splits = ("train", "test")

    def __init__(self, n: int = 1000, shape: list[int] = (3, 32, 32), seed: int = 0):
        self.n = n
        self.shape = shape
        self.seed = seed

    def load(self, split: str) -> Split:
        self._check_split(split)
        rng = np.random.default_rng([self.seed, zlib.crc32(split.encode())])
        images = rng.integers(0, 256, size=(self.n, *_shape(self.shape)), dtype=np.uint8)
        return Split(images, None, source=f"uniform noise, seed {self.seed}, split {split}")


class Constant(Dataset):
    """``n`` images of ``shape`` whose every pixel is ``value`` (0 black, 255 white)."""

    splits = ("train", "test")

    def __init__(self, value: int = 0, n: int = 100, shape: list[int] = (3, 32, 32)):
        self.value = value
        self.n = n
        self.shape = shape

    def load(self, split: str) -> Split:
        self._check_split(split)
        if not 0 <= int(self.value) <= 255:
            raise ValueError(f"constant value must be in 0..255, got {self.value}")
        images = np.full((self.n, *_shape(self.shape)), int(self.value), dtype=np.uint8)
        return Split(images, None, source=f"constant {int(self.value)}")


@hookimpl
def register_datasets():
    return {"noise": Noise, "constant": Constant}
