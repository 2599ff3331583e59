"""Discretized likelihoods over 256 levels, shared by the autoregressive models.

The discretized logistic of PixelCNN++ (Salimans et al. 2017, eq. 2): pixel values
0..255 are rescaled to [-1, 1]; value x gets the logistic mass of the bin
[x - 1/255, x + 1/255]; the edge bins take the whole tail, (-inf, -1 + 1/255] for
0 and [1 - 1/255, inf) for 255. The per-bin mass is computed in log space with
``log(sigmoid(a) - sigmoid(b)) = logsigmoid(a) + logsigmoid(-b) + log(-expm1(b - a))``,
which is exact and finite in float32 for every input, so no pdf-midpoint
approximation (the reference code's fallback) is needed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Half the width of one of the 256 bins on the [-1, 1] scale.
HALF_BIN = 1.0 / 255.0
#: The reference implementation's lower bound on log-scales.
MIN_LOG_SCALE = -7.0
#: Below this bin width (in logistic units) the log bin mass uses its series in log space.
_WIDE = 1e-3


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Pixel values in [0, 255] -> [-1, 1] (the scale the logistic lives on)."""
    return x / 127.5 - 1.0


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log-mass of the 256-bin discretized logistic at ``x`` (on the [-1, 1] scale).

    ``x``, ``mean`` and ``log_scale`` broadcast together. Edge bins take the tail mass.
    Differentiable in all three arguments (``x`` may be a continuous relaxation).
    """
    log_scale = log_scale.clamp(min=MIN_LOG_SCALE)
    inv_s = torch.exp(-log_scale)
    centered = x - mean
    plus_in = inv_s * (centered + HALF_BIN)
    min_in = inv_s * (centered - HALF_BIN)
    log_cdf_plus = F.logsigmoid(plus_in)  # mass of (-inf, x + 1/255]: the 0 bin
    log_one_minus_cdf_min = F.logsigmoid(-min_in)  # mass of [x - 1/255, inf): the 255 bin
    # log(sigmoid(plus_in) - sigmoid(min_in)), exactly; plus_in - min_in = w = 2 inv_s / 255 > 0.
    # A very wide logistic (w < 1e-3) uses log(1 - e^-w) = log w - w/2 + w^2/24 with log w taken
    # from log_scale, so that exp(-log_scale) underflowing (log_scale > ~88 in float32) stays finite.
    w = plus_in - min_in
    wide = w < _WIDE
    log_w = (math.log(2.0 * HALF_BIN) - log_scale)
    ws = torch.where(wide, w, 0.0)
    log_gap = torch.where(wide, log_w - 0.5 * ws + ws * ws / 24.0, torch.log(-torch.expm1(-w.clamp(min=_WIDE))))
    log_delta = log_cdf_plus + log_one_minus_cdf_min + log_gap
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def logistic_mixture_log_prob(x: torch.Tensor, logit_probs: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-mass of a K-component discretized logistic mixture, one dimension at a time.

    ``x``: (...,) on the [-1, 1] scale; ``logit_probs``, ``means``, ``log_scales``: (..., K).
    Returns (...,).
    """
    comp = discretized_logistic_log_prob(x.unsqueeze(-1), means, log_scales)
    return torch.logsumexp(comp + F.log_softmax(logit_probs, dim=-1), dim=-1)


def all_levels(device=None, dtype=torch.float32) -> torch.Tensor:
    """The 256 pixel levels on the [-1, 1] scale, for normalisation checks and sampling."""
    return to_unit_range(torch.arange(256, device=device, dtype=dtype))


LOG2 = math.log(2.0)


# --------------------------------------------------------------------------- discretized Gaussian

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT1_2 = math.sqrt(0.5)
#: Below this bin width (in standard deviations, times max(|midpoint|, 1)) the mass is
#: taken from the midpoint rule with its w^2 and w^4 corrections (relative error < 1e-11).
_NARROW = 0.1
#: Below this z, ``log Phi(z)`` is taken from ``erfcx`` (see :func:`_log_ndtr`).
_FAR_TAIL = -20.0


def _log_ndtr(z: torch.Tensor) -> torch.Tensor:
    """``torch.special.log_ndtr`` with a gradient that stays right in the far lower tail.

    In float32 the backward of ``log_ndtr`` drifts below z ~ -30 and turns inf/0 near
    z ~ -4e4; below :data:`_FAR_TAIL` use log Phi(z) = log(erfcx(-z/sqrt2) / 2) - z^2 / 2.
    """
    near = z > _FAR_TAIL
    zn = torch.where(near, z, 0.0)
    zf = torch.where(near, 2.0 * _FAR_TAIL, z)
    far = torch.log(0.5 * torch.special.erfcx(-zf * _SQRT1_2)) - 0.5 * zf * zf
    return torch.where(near, torch.special.log_ndtr(zn), far)


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log-mass of the 256-bin discretized Gaussian at ``x`` (on the [-1, 1] scale).

    The same bins as :func:`discretized_logistic_log_prob`: width 2/255, value x gets the
    normal mass of [x - 1/255, x + 1/255], and the edge bins take the tails (``log_ndtr``, see :func:`_log_ndtr`).
    For an interior bin with standardized end points lo < hi (reflected so that the bin's
    midpoint m is <= 0, where ``log_ndtr`` keeps its relative precision), the log-difference
    of the normal CDFs is computed without cancellation:

    * narrow bins (w * max(|m|, 1) < 0.1, w = hi - lo computed as 2 / (255 s), never as a
      difference): log(w phi(m)) + log1p(w^2 He2(m) / 24 + w^4 He4(m) / 1920), the
      Taylor series of the bin integral about m, accurate to ~1e-11 relative;
    * bins straddling 0: log((erf(hi/sqrt2) + erf(-lo/sqrt2)) / 2), a sum of two positives;
    * bins below 0: log_ndtr(hi) + log(-expm1(delta)), with
      delta = log Phi(lo) - log Phi(hi) = log(erfcx(-lo/sqrt2) / erfcx(-hi/sqrt2)) + w m,
      which is bounded away from 0 here (no catastrophic ``log_ndtr(lo) - log_ndtr(hi)``).

    Finite in float32, values and gradients, for every finite input with |x - mean| < 1e15
    (any log-scale: a huge one only makes the bins narrow, handled in log space); the
    branches not taken are fed harmless stand-in values so that ``torch.where`` passes no
    NaN gradients. ``log_scale`` is clamped at :data:`MIN_LOG_SCALE`.
    """
    log_scale = log_scale.clamp(min=MIN_LOG_SCALE)
    inv_s = torch.exp(-log_scale)
    centered = x - mean
    plus = inv_s * (centered + HALF_BIN)
    minus = inv_s * (centered - HALF_BIN)
    log_cdf_plus = _log_ndtr(plus)  # mass of (-inf, x + 1/255]: the 0 bin
    log_sf_minus = _log_ndtr(-minus)  # mass of [x - 1/255, inf): the 255 bin

    # Interior bins, reflected to the lower half: [lo, hi] with midpoint m = -|centered| / s <= 0.
    flip = centered > 0
    lo = torch.where(flip, -plus, minus)
    hi = torch.where(flip, -minus, plus)
    m = -centered.abs() * inv_s
    w = (2.0 * HALF_BIN) * inv_s
    narrow = w * m.abs().clamp(min=1.0) < _NARROW
    straddle = ~narrow & (hi > 0)
    lower = ~narrow & ~straddle

    # (i) narrow: midpoint rule with corrections (stand-ins w=0, m=0 elsewhere)
    wn, mn = torch.where(narrow, w, 0.0), torch.where(narrow, m, 0.0)
    m2, w2 = mn * mn, wn * wn
    corr = w2 * (m2 - 1.0) / 24.0 + w2 * w2 * (m2 * m2 - 6.0 * m2 + 3.0) / 1920.0
    log_narrow = (math.log(2.0 * HALF_BIN) - log_scale) - 0.5 * m2 - _LOG_SQRT_2PI + torch.log1p(corr)
    # (ii) straddling 0: Phi(hi) - Phi(lo) = (erf(hi/sqrt2) + erf(-lo/sqrt2)) / 2, both terms > 0
    hs, ls = torch.where(straddle, hi, 1.0), torch.where(straddle, lo, -1.0)
    log_straddle = torch.log(0.5 * (torch.erf(hs * _SQRT1_2) + torch.erf(-ls * _SQRT1_2)))
    # (iii) entirely below 0: log Phi(hi) + log(1 - Phi(lo) / Phi(hi))
    hl, ll = torch.where(lower, hi, -1.0), torch.where(lower, lo, -2.0)
    wl, ml = torch.where(lower, w, 1.0), torch.where(lower, m, -1.5)
    delta = torch.log(torch.special.erfcx(-ll * _SQRT1_2) / torch.special.erfcx(-hl * _SQRT1_2)) + wl * ml
    log_lower = _log_ndtr(hl) + torch.log(-torch.expm1(delta))

    interior = torch.where(narrow, log_narrow, torch.where(straddle, log_straddle, log_lower))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_sf_minus, interior))
