"""Lossless compressors as likelihood models: the complexity estimate of Serrà et al. (2020).

Serrà, Álvarez, Gómez, Slizovskaia, Núñez & Luque, "Input complexity and out-of-distribution
detection with likelihood-based generative models", ICLR 2020. A lossless code of length
L(x) bits defines a (sub-normalised) probability 2^-L(x) over images, so a compressor is
a likelihood model with nothing to learn:

* ``log_prob(x) = -L(x) ln 2`` nats, where L is the length in bits of the **whole encoded
  file** (container headers included, as in the paper's use of PNG / JPEG2000 / FLIF
  files), and ``bpd = L(x) / D`` with D = C*H*W -- the same units as a model's bits/dim.
* Codecs: ``png`` (Pillow, compress_level 9: the paper's main choice), ``jpeg2000``
  (Pillow/OpenJPEG, reversible wavelet = lossless), and the general-purpose ``lzma``,
  ``zlib`` and ``bz2`` over the raw uint8 bytes (channel-major). FLIF is not available in
  Python wheels.
* Not differentiable: ``log_prob`` rounds its input to uint8 first.

The ``input-complexity`` detector (``plugins/ood_detectors.py``) reads this model's ``bpd``
as the role ``complexity``.
"""
from __future__ import annotations

import bz2
import io
import lzma
import math
import zlib

import numpy as np
import torch

from benchbench import Model, bits_per_dim, hookimpl

CODECS = ("png", "jpeg2000", "lzma", "zlib", "bz2")


def _image(a: np.ndarray):
    from PIL import Image

    c = a.shape[0]
    if c == 1:
        return Image.fromarray(a[0], mode="L")
    if c == 3:
        return Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)), mode="RGB")
    raise ValueError(f"image codecs need 1 or 3 channels, got {c}")


def encoded_bytes(a: np.ndarray, codec: str) -> int:
    """Length in bytes of one uint8 image (C, H, W) losslessly encoded with ``codec``."""
    if codec in ("png", "jpeg2000"):
        buf = io.BytesIO()
        if codec == "png":
            _image(a).save(buf, format="PNG", compress_level=9)
        else:
            _image(a).save(buf, format="JPEG2000", irreversible=False)
        return buf.tell()
    raw = np.ascontiguousarray(a).tobytes()
    if codec == "lzma":
        return len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
    if codec == "zlib":
        return len(zlib.compress(raw, 9))
    if codec == "bz2":
        return len(bz2.compress(raw, 9))
    raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")


class Compressor(Model):
    """A lossless compressor as a likelihood model: log p(x) = -(encoded length in bits) ln 2."""

    provides = ("log_prob", "bpd")
    eval_batch_size = 256
    trainable = False

    def __init__(self, codec: str = "png"):
        super().__init__()
        if codec not in CODECS:
            raise ValueError(f"compressor: unknown codec {codec!r}; known: {', '.join(CODECS)}")
        self.codec = codec

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Minus the code length in nats of each image (x in [0, 255], rounded to uint8 first)."""
        arr = x.detach().round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        bits = [8.0 * encoded_bytes(a, self.codec) for a in arr]
        return torch.tensor(bits, dtype=torch.float64, device=x.device).mul(-math.log(2.0))

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        lp = self.log_prob(x)
        return {"log_prob": lp, "bpd": bits_per_dim(lp, x[0].numel())}

    def fit(self, data, ctx):  # pragma: no cover - the runner never calls it (trainable = False)
        return self


@hookimpl
def register_models():
    return {"compressor": Compressor}
