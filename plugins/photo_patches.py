"""Patches of natural photographs, from the two sample images scikit-learn ships.

``sklearn.datasets.load_sample_images()`` holds ``china.jpg`` and ``flower.jpg``
(427x640 RGB). Each is optionally converted to greyscale (ITU-R 601 luma),
shrunk by ``scale`` with area averaging (so an 8x8 patch covers a 32x32 region
and shows structure, not just smooth texture), and ``n`` patches of the
requested ``shape`` are cut at seeded random positions, alternating images.
A real, natural-image outlier set for any small in-distribution shape, with no
download.
"""
from __future__ import annotations

import zlib

import numpy as np

from benchbench import Dataset, Split, hookimpl
from benchbench_plugins.bundled import sklearn_file

PHOTOS = ("china.jpg", "flower.jpg")


def _shrink(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = (img.shape[0] // scale) * scale, (img.shape[1] // scale) * scale
    img = img[:h, :w].astype(np.float64)
    return img.reshape(h // scale, scale, w // scale, scale, -1).mean(axis=(1, 3))


class PhotoPatches(Dataset):
    """``n`` patches of shape [C, H, W] (C = 1 or 3) from scikit-learn's sample photographs."""

    splits = ("train", "test")

    def __init__(self, n: int = 500, shape: list[int] = (1, 8, 8), scale: int = 4, seed: int = 0):
        self.n = n
        self.shape = shape
        self.scale = scale
        self.seed = seed

    def load(self, split: str) -> Split:
        self._check_split(split)
        from PIL import Image

        c, h, w = (int(s) for s in self.shape)
        if c not in (1, 3):
            raise ValueError(f"photo_patches: channels must be 1 or 3, got shape {list(self.shape)}")
        photos = []
        for name in PHOTOS:  # what sklearn.datasets.load_sample_images reads
            with Image.open(sklearn_file("datasets", "images", name)) as im:
                img = np.asarray(im.convert("RGB"), dtype=np.float64)
            if c == 1:
                img = (img @ np.array([0.299, 0.587, 0.114]))[..., None]
            photos.append(_shrink(img, int(self.scale)))
        rng = np.random.default_rng([self.seed, zlib.crc32(split.encode())])
        out = np.empty((self.n, c, h, w), dtype=np.uint8)
        for i in range(self.n):
            p = photos[i % len(photos)]
            y = rng.integers(0, p.shape[0] - h + 1)
            x = rng.integers(0, p.shape[1] - w + 1)
            out[i] = np.clip(np.rint(p[y:y + h, x:x + w]), 0, 255).astype(np.uint8).transpose(2, 0, 1)
        return Split(out, None, source=f"sklearn sample images (china.jpg, flower.jpg), scale 1/{self.scale}, seed {self.seed}")


@hookimpl
def register_datasets():
    return {"photo_patches": PhotoPatches}
