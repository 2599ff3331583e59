"""scikit-learn's bundled handwritten digits (UCI optdigits test set, 1,797 images of 8x8).

Levels 0..16 are mapped onto 0..255 as round(v * 255 / 16). The split is
deterministic and stratified by position: every 5th image (index % 5 == 0) is
``test`` (360 images), the rest ``train`` (1,437). Ships with scikit-learn, so
it works on any machine with no download.
"""
from __future__ import annotations

import gzip

import numpy as np

from benchbench import Dataset, Split, hookimpl
from benchbench_plugins.bundled import sklearn_file


class Digits(Dataset):
    """8x8 greyscale digits, uint8 (N, 1, 8, 8), labels 0..9."""

    splits = ("train", "test", "all")

    def load(self, split: str) -> Split:
        self._check_split(split)
        path = sklearn_file("datasets", "data", "digits.csv.gz")
        with gzip.open(path) as f:  # what sklearn.datasets.load_digits reads: 64 pixels then the label
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
        images = np.rint(table[:, :64].reshape(-1, 1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
        labels = table[:, 64].astype(np.int64)
        idx = np.arange(len(images))
        keep = {"train": idx % 5 != 0, "test": idx % 5 == 0, "all": np.ones_like(idx, bool)}[split]
        return Split(images[keep], labels[keep], source=f"scikit-learn {path.name}")


@hookimpl
def register_datasets():
    return {"digits": Digits}
