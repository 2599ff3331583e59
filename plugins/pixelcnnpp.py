"""PixelCNN++ (Salimans, Karpathy, Chen & Kingma 2017, arXiv:1701.05517).

A faithful PyTorch re-implementation of the authors' reference code
(github.com/openai/pixel-cnn, ``pixel_cnn_pp/model.py``, ``nn.py``, ``train.py``),
with the same defaults, tuned for speed without changing the function computed.

Architecture (``model_spec`` in the reference)
    * Two streams: ``u`` sees the rows above (down-shifted 2x3 convolutions) and
      ``ul`` sees the rows above plus the pixels to the left in the current row
      (down-right-shifted 2x2 convolutions). Shifts replace masked convolutions.
    * Up pass: ``nr_resnet`` gated ResNet blocks per stage at three resolutions
      (HxW, H/2, H/4) with stride-2 shifted convolutions in between; every
      intermediate output is pushed on ``u_list`` / ``ul_list``.
    * Down pass: ``nr_resnet`` blocks at H/4, then ``nr_resnet + 1`` blocks at H/2
      and H after stride-2 shifted transposed convolutions; each block pops its
      short-cut input from the lists (``ul`` gets ``concat(u, ul_list.pop())``).
    * Gated ResNet: ``c1 = conv(concat_elu(x)) [+ nin(concat_elu(a))]``,
      ``c2 = conv(dropout(concat_elu(c1)))`` (init_scale 0.1), ``x + a * sigmoid(b)``
      with ``a, b = split(c2)``.
    * Output ``nin(elu(ul))`` -> parameters of a mixture of ``nr_logistic_mix``
      discretized logistics per pixel.
    * Every convolution is weight-normalised (Salimans & Kingma 2016):
      ``W = g * V / ||V||`` per output channel, with the reference's *data-dependent*
      initialisation (V ~ N(0, 0.05); g, b set so that each layer's outputs have zero
      mean and std ``init_scale`` on a first batch of ``init_batch_size`` images).
      That initialisation runs in ``fit`` only (on a fresh start). A model that was
      never fitted uses the data-independent analogue g = init_scale, b = 0
      (unit-norm filters scaled to the same target gain).

Likelihood (``discretized_mix_logistic_loss``)
    RGB: per pixel a mixture over K components of a product over R, G, B of
    discretized logistics; the channel means are coupled linearly,
    ``mu_G + tanh(a) x_R`` and ``mu_B + tanh(b) x_R + tanh(c) x_G`` (reference
    parameter layout: ``[logits K | (means K, log_scales K, coeffs K) x 3]``).
    Greyscale (C=1): ``[logits K | means K | log_scales K]``, no coupling.
    The per-bin mass is the shared exact float32-safe
    :func:`benchbench_plugins.likelihoods.discretized_logistic_log_prob`.

Deliberate deviations from the reference (none changes what the model computes in practice)
    * Sampling draws *discrete* values exactly from the model's distribution
      (component, then R, G, B from their 256-bin conditionals), instead of the
      reference's continuous logistic samples clipped to [-1, 1].
    * Data-dependent init of the two transposed convolutions takes its moments on
      the cropped output (the reference includes the extra padding rows/columns).
    * Image sizes not divisible by 4 are supported by cropping after up-sampling
      (the reference requires divisibility); this keeps the autoregressive order.
    * Means and log-scales are clamped to bounds no sane model reaches (see
      ``MEAN_BOUND``), so that a diverging run stays finite.
    * Dropout masks use 8 (p a multiple of 1/256, e.g. 0.5) or 16 random bits per unit.

Speed (same function, fewer memory passes; see ``benchmarks/bench_pixelcnnpp.py``)
    * NHWC (channels_last) layout throughout: oneDNN's native CPU layout, no reorders.
    * concat_elu, the causal zero padding and dropout are written by one custom op
      directly into the padded input buffer of the next convolution (no pad / concat
      copies), with one ``exp`` per element for both halves (elu(x) = max(x, e),
      elu(-x) = max(-x, e), e = exp(-|x|) - 1). Where that buffer feeds a single
      convolution, the pair is one autograd op that saves the C-channel input instead
      of the 2C-channel buffer and rebuilds the buffer in the backward pass (about a
      third less activation memory). The u stream's buffer is built once and shared by
      its next block and the ul stream's short-cut ``nin`` (weight columns split per input).
    * The dropout scale 1/(1-p) is folded into the next convolution's weights; masks are
      cut from 64-bit random words (``bernoulli_`` is ~10x slower on CPU).
    * The gate ``x + a * sigmoid(b)`` is one custom op that saves only ``c2``.
    * Transposed convolutions use ``padding``/``output_padding`` instead of crops.
    * Without autograd, weight-normalised weights are memoised until the parameters
      change (their version counters): sampling runs the network H*W times.
    * ``compile=True`` (or ``"net"``) runs the network through ``torch.compile`` (plain-op path,
      which inductor fuses); ``compile="loss"`` compiles only the mixture likelihood; ``"all"``
      both. Each has an eager fallback if compilation fails.

Input shape: the number of channels is a constructor argument (``in_channels``,
default 3; use 1 for greyscale) because the output layer depends on it; the image
height/width are recorded by ``fit`` in the ``image_shape`` buffer (part of the
``state_dict``) and used by ``sample``. The network itself is fully convolutional.
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchbench import Model, Split, TrainContext, bits_per_dim
from benchbench_plugins.likelihoods import all_levels, discretized_logistic_log_prob, to_unit_range


@dataclass
class PixelCNNppConfig:
    """Constructor parameters of :class:`PixelCNNpp`; defaults are the reference's (train.py)."""

    #: Image channels: 3 (RGB, coupled channel means) or 1 (greyscale). Fixes the output layer.
    in_channels: int = 3
    #: Gated ResNet blocks per stage (reference -q 5).
    nr_resnet: int = 5
    #: Channels everywhere in the network (reference -n 160).
    nr_filters: int = 160
    #: Logistic mixture components per pixel (reference -m 10).
    nr_logistic_mix: int = 10
    #: Dropout probability inside the gated ResNet blocks (reference -p 0.5).
    dropout: float = 0.5
    #: Adam base learning rate (reference -l 0.001).
    lr: float = 1e-3
    #: Learning-rate decay applied every step: lr_t = lr * lr_decay**t (reference -e 0.999995).
    lr_decay: float = 0.999995
    #: Adam moment decays, as in train.py's nn.adam_updates(..., mom1=0.95, mom2=0.9995);
    #: the update is v_hat / sqrt(m2_hat + 1e-8) (epsilon inside the square root, as there).
    adam_beta1: float = 0.95
    adam_beta2: float = 0.9995
    #: Polyak averaging (EMA) of the weights, used for evaluation (reference --polyak_decay).
    polyak_decay: float = 0.9995
    #: Images per step. The reference uses 12 per GPU x 8 GPUs = 96.
    batch_size: int = 96
    #: Images for the data-dependent weight-norm initialisation (reference -a 100).
    init_batch_size: int = 100
    #: Run the data-dependent initialisation at the start of fit (reference: always).
    data_init: bool = True
    #: Optimisation steps (ignored when ``epochs`` is set).
    steps: int = 100_000
    #: If set, train for this many passes over the data instead of ``steps``
    #: (steps = epochs * floor(N / batch_size), as the reference drops the last partial batch).
    epochs: int | None = None
    #: Save a resumable checkpoint to ctx.work_dir every this many steps (and at the end).
    checkpoint_every: int = 1000
    #: Record train bits/dim with ctx.log every this many steps.
    log_every: int = 100
    #: torch.compile route (eager fallback if compilation fails): False = eager; True or "net" = the
    #: network (plain-op path, which inductor fuses); "loss" = only the discretized-logistic-mixture
    #: likelihood (elementwise ops, fused by inductor), the network stays on the hand-fused eager path;
    #: "all" = both. See benchmarks/README.md for what each costs (first call) and gains on CPU.
    compile: bool | str = False
    #: Training-input perturbation of Ren et al. (2019)'s background model: each sub-pixel is
    #: replaced, independently with this probability, by a uniform draw from {0..255} (0 = off).
    mutation_rate: float = 0.0
    #: L2 regularisation (Ren et al. 2019's background model): the objective per image becomes
    #: NLL(x) + l2 * ||theta||^2 over all parameters (0 = off, as in the reference).
    l2: float = 0.0


_D = PixelCNNppConfig()
_CKPT_NAME = "pixelcnnpp_checkpoint.pt"
#: Config fields that define the parameter shapes / the function; a checkpoint must match them.
_ARCH_FIELDS = ("in_channels", "nr_resnet", "nr_filters", "nr_logistic_mix")


# =========================================================================== fused ops


def _keep_mask(like: torch.Tensor, drop_p: float) -> torch.Tensor:
    """Dropout keep-mask (uint8 0/1, shape and memory layout of ``like``) with P(drop) = drop_p.

    8 random bits per element when drop_p is a multiple of 1/256 (as the default 0.5), else 16
    (P(drop) = round(drop_p * 2^16) / 2^16), cut from 64-bit draws: ~10x faster on CPU than
    ``bernoulli_``. Uses the global RNG (which ``fit`` seeds per step).
    """
    n, c, h, w = like.shape
    bits = 8 if float(drop_p * 256).is_integer() else 16
    per_word = 64 // bits
    words = torch.empty((like.numel() + per_word - 1) // per_word, dtype=torch.int64, device=like.device)
    words.random_(-2**63, None)
    r = words.view(torch.int8 if bits == 8 else torch.int16)[:like.numel()]
    r = r.view(n, c, h, w) if like.is_contiguous() else r.view(n, h, w, c).permute(0, 3, 1, 2)
    half = 2 ** (bits - 1)
    threshold = min(int(round(drop_p * 2 * half)) - half, half - 1)
    return torch.ge(r, threshold).view(torch.uint8)


def _concat_elu_pad_forward(pad, drop_p: float, xs, keep: torch.Tensor | None = None):
    """The buffer of :class:`_ConcatEluPad` and its dropout keep-mask (``keep`` given: reuse that mask)."""
    top, left, right = pad
    n, _, h, w = xs[0].shape
    c = sum(x.shape[1] for x in xs)
    fmt = torch.channels_last if xs[0].is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty((n, 2 * c, h + top, w + left + right), dtype=xs[0].dtype, device=xs[0].device,
                      memory_format=fmt)
    if top:
        out[:, :, :top].zero_()
    if left:
        out[:, :, top:, :left].zero_()
    if right:
        out[:, :, top:, left + w:].zero_()
    inner = out[:, :, top:, left:left + w]
    off = 0
    for x in xs:
        ci = x.shape[1]
        # One exp per element for both halves: with e = exp(-|x|) - 1, elu(x) = max(x, e) and
        # elu(-x) = max(-x, e). (exp - 1 as in TF's Elu kernel; torch's elu uses expm1, ~4x slower here.)
        pos, neg = inner[:, off:off + ci], inner[:, c + off:c + off + ci]
        torch.neg(x, out=neg)
        e = torch.minimum(x, neg).exp_().sub_(1.0)
        torch.maximum(x, e, out=pos)
        torch.maximum(neg, e, out=neg)
        off += ci
    if keep is None and drop_p > 0:  # one mask over the whole buffer (the zero pads stay zero)
        keep = _keep_mask(out, drop_p)
    if keep is not None:
        out.mul_(keep)
    return out, keep


def _concat_elu_pad_backward(out, keep, grad_out, pad, sizes, grad_is_ours: bool = False):
    """Gradients w.r.t. the inputs of :func:`_concat_elu_pad_forward` from its output buffer and mask.

    ``grad_is_ours``: ``grad_out`` may be overwritten (it was allocated by the caller)."""
    top, left, right = pad
    w = out.shape[3] - left - right
    if keep is not None:  # mask the whole buffer (same layout: fast) rather than a strided slice of it
        grad_out = grad_out.mul_(keep) if grad_is_ours else grad_out * keep
    # elu_backward(is_result=True): grad * (1 if y > 0 else y + 1)
    g = torch.ops.aten.elu_backward(grad_out[:, :, top:, left:left + w], 1.0, 1, 1, True, out[:, :, top:, left:left + w])
    c, grads, off = sum(sizes), [], 0
    for ci in sizes:
        grads.append(g[:, off:off + ci] - g[:, c + off:c + off + ci])  # d elu(-x)/dx = -elu'(-x)
        off += ci
    return grads


class _ConcatEluPad(torch.autograd.Function):
    """``pad(dropout(elu(concat([*xs, *(-x for x in xs)]))))`` written into one buffer.

    ``pad = (top, left, right)`` zero rows/columns (the causal shift of the following
    convolution). Dropout here only zeroes (mask); its 1/(1-p) scale is folded into the
    next convolution's weights. The backward pass needs only the output buffer (which the
    convolution that consumes it saves anyway) and the dropout mask: for y = elu(z),
    elu'(z) = 1 if y > 0 else y + 1.
    """

    @staticmethod
    def forward(ctx, pad: tuple[int, int, int], drop_p: float, *xs: torch.Tensor) -> torch.Tensor:
        out, keep = _concat_elu_pad_forward(pad, drop_p, xs)
        ctx.pad, ctx.sizes, ctx.c = pad, [x.shape[1] for x in xs], sum(x.shape[1] for x in xs)
        ctx.save_for_backward(out, keep)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        out, keep = ctx.saved_tensors
        return (None, None, *_concat_elu_pad_backward(out, keep, grad_out, ctx.pad, ctx.sizes))


class _ConcatEluConv(torch.autograd.Function):
    """``conv2d(concat_elu_pad(xs, pad, drop_p), weight, bias)`` that saves the inputs ``xs`` (C channels)
    instead of the 2C-channel padded buffer, and rebuilds the buffer in the backward pass: elementwise
    work traded for activation memory (the inputs are usually kept alive for other uses anyway)."""

    @staticmethod
    def forward(ctx, pad, drop_p: float, weight, bias, *xs):
        buf, keep = _concat_elu_pad_forward(pad, drop_p, xs)
        ctx.pad, ctx.sizes, ctx.has_bias = pad, [x.shape[1] for x in xs], bias is not None
        ctx.save_for_backward(weight, keep, *xs)
        return F.conv2d(buf, weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        weight, keep, *xs = ctx.saved_tensors
        if keep is not None:  # one dtype conversion for both uses below (mul_ by uint8 converts each time)
            keep = keep.to(weight.dtype)
        buf, _ = _concat_elu_pad_forward(ctx.pad, 0.0, xs, keep)
        need_x = any(ctx.needs_input_grad[4:])
        g_buf, g_w, g_b = torch.ops.aten.convolution_backward(
            grad_y, buf, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [need_x, ctx.needs_input_grad[2], ctx.has_bias and ctx.needs_input_grad[3]])
        g_xs = _concat_elu_pad_backward(buf, keep, g_buf, ctx.pad, ctx.sizes, True) if need_x else [None] * len(xs)
        return (None, None, g_w, g_b if ctx.has_bias else None, *g_xs)


class _GatedResidual(torch.autograd.Function):
    """``x + a * sigmoid(b)`` with ``a, b = c2.chunk(2, dim=1)``; saves only ``c2``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
        f = x.shape[1]
        ctx.save_for_backward(c2)
        return torch.addcmul(x, c2[:, :f], torch.sigmoid(c2[:, f:]))

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (c2,) = ctx.saved_tensors
        f = c2.shape[1] // 2
        a, b = c2[:, :f], c2[:, f:]
        s = torch.sigmoid(b)
        gc2 = torch.empty_like(c2)
        torch.mul(g, s, out=gc2[:, :f])
        torch.ops.aten.sigmoid_backward.grad_input(g * a, s, grad_input=gc2[:, f:])
        return g, gc2


def concat_elu_pad(xs: Sequence[torch.Tensor], pad=(0, 0, 0), drop_p: float = 0.0, fused: bool = True) -> torch.Tensor:
    """concat_elu of the channel-concatenation of ``xs``, then dropout mask (unscaled), then causal zero pad."""
    if fused:
        if not torch.is_grad_enabled():  # inference: skip the autograd.Function machinery
            return _concat_elu_pad_forward(tuple(pad), float(drop_p), xs)[0]
        return _ConcatEluPad.apply(tuple(pad), float(drop_p), *xs)
    y = F.elu(torch.cat([*xs, *[-x for x in xs]], 1))
    if drop_p > 0:
        y = y * torch.empty_like(y).bernoulli_(1.0 - drop_p)
    top, left, right = pad
    return F.pad(y, (left, right, top, 0)) if (top or left or right) else y


def gated_residual(x: torch.Tensor, c2: torch.Tensor, fused: bool = True) -> torch.Tensor:
    if fused:
        if not torch.is_grad_enabled():
            f = x.shape[1]
            return torch.addcmul(x, c2[:, :f], torch.sigmoid(c2[:, f:]))
        return _GatedResidual.apply(x, c2)
    a, b = c2.chunk(2, 1)
    return x + a * torch.sigmoid(b)


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift rows down by one, zero first row (reference nn.down_shift)."""
    return F.pad(x[:, :, :-1], (0, 0, 1, 0))


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift columns right by one, zero first column (reference nn.right_shift)."""
    return F.pad(x[:, :, :, :-1], (1, 0))


# =========================================================================== layers


class WNConv2d(nn.Module):
    """Weight-normalised convolution / transposed convolution / 1x1 'nin' (reference conv2d, deconv2d, dense).

    ``W = g * V / ||V||`` with the norm over everything but the output channel. Holds a
    ``ddi`` flag: while set, ``forward`` performs the reference's data-dependent
    initialisation of ``g`` and ``b`` on its input and returns the normalised output.
    ``padding``/``output_padding`` are the torch ones: callers pass inputs that are
    already causally padded (or transposed-conv crops expressed as padding).
    """

    def __init__(self, cin, cout, kernel=(1, 1), stride=1, padding=0, output_padding=0,
                 transposed=False, init_scale=1.0, eps=1e-8):
        super().__init__()
        kh, kw = kernel
        self.transposed, self.stride, self.padding, self.output_padding = transposed, stride, padding, output_padding
        self.init_scale, self.eps = float(init_scale), float(eps)
        self.v = nn.Parameter(torch.empty((cin, cout, kh, kw) if transposed else (cout, cin, kh, kw)))
        self.g = nn.Parameter(torch.empty(cout))
        self.b = nn.Parameter(torch.empty(cout))
        self._out_dim = 1 if transposed else 0
        self._norm_dims = (0, 2, 3) if transposed else (1, 2, 3)
        self.ddi = False
        self._w_cache = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """V ~ N(0, 0.05) (reference initializer); data-independent g = init_scale, b = 0."""
        self.v.copy_(torch.randn(self.v.shape, generator=generator) * 0.05)
        self.g.fill_(self.init_scale)
        self.b.zero_()

    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1) if self.transposed else t.view(-1, 1, 1, 1)

    def weight(self, input_scale: float = 1.0) -> torch.Tensor:
        """g * V / ||V|| (times ``input_scale``). Without autograd the result is memoised until V or g change
        (their version counters), which saves ~6 small ops per layer per call, e.g. during sampling."""
        cacheable = not torch.is_grad_enabled()
        if cacheable:
            key = (self.v._version, self.g._version, self.v.data_ptr(), self.g.data_ptr(), input_scale)
            if self._w_cache is not None and self._w_cache[0] == key:
                return self._w_cache[1]
        scale = self.g * torch.rsqrt(self.v.square().sum(self._norm_dims))
        if input_scale != 1.0:
            scale = scale * input_scale
        w = self.v * self._shape(scale)
        self._w_cache = (key, w) if cacheable else None
        return w

    def _conv(self, x, w, b):
        if self.transposed:
            return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding)
        return F.conv2d(x, w, b, self.stride, self.padding)

    def forward(self, x: torch.Tensor, input_scale: float = 1.0) -> torch.Tensor:
        if self.ddi:
            return self._data_init(lambda w: self._conv(x, w * input_scale, None))
        return self._conv(x, self.weight(input_scale), self.b)

    def forward_concat_elu(self, xs, pad, drop_p: float = 0.0, fused: bool = True, recompute: bool = True):
        """This layer on ``concat_elu_pad(xs, pad, drop_p)``, with the dropout scale 1/(1-p) folded into the weights.

        ``recompute``: keep ``xs`` rather than the buffer for the backward pass (:class:`_ConcatEluConv`)."""
        scale = 1.0 / (1.0 - drop_p)
        if recompute and fused and torch.is_grad_enabled() and not self.ddi and not self.transposed and self.stride == 1:
            return _ConcatEluConv.apply(tuple(pad), float(drop_p), self.weight(scale), self.b, *xs)
        return self(concat_elu_pad(xs, pad, drop_p, fused=fused), input_scale=scale)

    def forward_parts(self, parts, fused: bool = True, recompute: bool = True) -> torch.Tensor:
        """This 1x1 layer applied to ``concat_elu(concat([s_1, ..., s_m]))`` (the reference's short-cut
        ``nin``), one part at a time: the weight's input columns ``[elu(s_1..s_m) | elu(-s_1..-s_m)]`` are
        split per part. A part is ``(s_j, None)`` or ``(buffer, pad)`` with an existing
        ``concat_elu_pad(s_j, pad)`` buffer made for another convolution (the output is cropped)."""
        m = len(parts)

        def run(w, b):
            c = w.shape[1] // (2 * m)
            y = None
            for j, (t, pad) in enumerate(parts):
                wj = w if m == 1 else torch.cat([w[:, j * c:(j + 1) * c], w[:, (m + j) * c:(m + j + 1) * c]], 1)
                bj = b if j == 0 else None
                if pad is None:  # a raw input: concat_elu it here
                    if recompute and fused and torch.is_grad_enabled() and not self.ddi:
                        yj = _ConcatEluConv.apply(NO_PAD, 0.0, wj, bj, t)
                    else:
                        yj = F.conv2d(concat_elu_pad((t,), NO_PAD, fused=fused), wj, bj)
                else:
                    yj = F.conv2d(t, wj, bj)
                    top, left, right = pad
                    if top or left or right:
                        yj = yj[:, :, top:, left:yj.shape[3] - right]
                y = yj if y is None else y + yj
            return y

        if self.ddi:
            return self._data_init(lambda w: run(w, None))
        return run(self.weight(), self.b)

    @torch.no_grad()
    def _data_init(self, conv) -> torch.Tensor:
        """Reference data-dependent init: conv with V/||V||, then g, b so the outputs have mean 0, std init_scale."""
        v_norm = self.v / self._shape(self.v.square().sum(self._norm_dims).sqrt())
        y = conv(v_norm)
        m = y.mean((0, 2, 3))
        var = y.var((0, 2, 3), unbiased=False)
        scale = self.init_scale / torch.sqrt(var + self.eps)
        self.g.copy_(scale)
        self.b.copy_(-m * scale)
        return (y - m.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)


#: Causal zero padding (top, left, right) in front of the 'VALID' convolutions of each stream.
PAD_U, PAD_UL, NO_PAD = (1, 1, 1), (1, 1, 0), (0, 0, 0)


class GatedResnet(nn.Module):
    """Reference ``gated_resnet`` with concat_elu, on a down-shifted ('u') or down-right-shifted ('ul') conv.

    ``forward(x, h1, skips)``: ``h1`` is ``concat_elu_pad(x)`` if the caller already has it (else computed);
    ``skips`` are the short-cut inputs ``a`` of the reference (``nin(concat_elu(concat(a...)))``) as parts
    for :meth:`WNConv2d.forward_parts`, so that the u stream's padded buffer serves both its next block
    and the ul stream's short-cut.
    """

    def __init__(self, nf: int, stream: str, skip_channels: int = 0, dropout: float = 0.5):
        super().__init__()
        kernel = (2, 3) if stream == "u" else (2, 2)
        self.pad = PAD_U if stream == "u" else PAD_UL
        self.dropout = float(dropout)
        self.fused = True
        #: Rebuild concat_elu buffers in the backward pass instead of keeping them (less memory, more work).
        self.recompute = True
        self.conv1 = WNConv2d(2 * nf, nf, kernel)
        self.nin = WNConv2d(2 * skip_channels, nf, eps=1e-10) if skip_channels else None
        self.conv2 = WNConv2d(2 * nf, 2 * nf, kernel, init_scale=0.1)

    def forward(self, x: torch.Tensor, h1: torch.Tensor | None = None, skips=()) -> torch.Tensor:
        rec = self.recompute
        c1 = self.conv1(h1) if h1 is not None else self.conv1.forward_concat_elu((x,), self.pad, 0.0, self.fused, rec)
        if skips:
            c1 = c1.add_(self.nin.forward_parts(skips, self.fused, rec))  # the conv output is not needed by autograd
        p = self.dropout if self.training else 0.0
        c2 = self.conv2.forward_concat_elu((c1,), self.pad, p, self.fused, rec)
        return gated_residual(x, c2, fused=self.fused)


class PixelCNNppNet(nn.Module):
    """The network of ``model_spec``: images on [-1, 1] (N, C, H, W) -> mixture parameters (N, n_out, H, W)."""

    def __init__(self, in_channels=3, nr_resnet=5, nr_filters=160, nr_logistic_mix=10, dropout=0.5):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"PixelCNN++ supports 1 (greyscale) or 3 (RGB) channels, got in_channels={in_channels}")
        c, r, nf, k = in_channels, nr_resnet, nr_filters, nr_logistic_mix
        self.in_channels, self.nr_resnet, self.nr_logistic_mix = c, r, k
        self.n_out = k * (1 + c * (3 if c == 3 else 2))
        cp = c + 1  # + a channel of ones, to tell the image from the zero padding
        self.u_init = WNConv2d(cp, nf, (2, 3))
        self.ul_init_down = WNConv2d(cp, nf, (1, 3))
        self.ul_init_right = WNConv2d(cp, nf, (2, 1))

        def blocks(n, stream, skip):
            return nn.ModuleList([GatedResnet(nf, stream, skip, dropout) for _ in range(n)])

        self.up_u = nn.ModuleList([blocks(r, "u", 0) for _ in range(3)])
        self.up_ul = nn.ModuleList([blocks(r, "ul", nf) for _ in range(3)])
        self.downsize_u = nn.ModuleList([WNConv2d(nf, nf, (2, 3), stride=2) for _ in range(2)])
        self.downsize_ul = nn.ModuleList([WNConv2d(nf, nf, (2, 2), stride=2) for _ in range(2)])
        self.down_u = nn.ModuleList([blocks(r + (s > 0), "u", nf) for s in range(3)])
        self.down_ul = nn.ModuleList([blocks(r + (s > 0), "ul", 2 * nf) for s in range(3)])
        # Transposed convs: the reference's 'VALID' deconv + crop == these paddings.
        self.upsize_u = nn.ModuleList([WNConv2d(nf, nf, (2, 3), stride=2, padding=(0, 1), output_padding=(0, 1),
                                                transposed=True) for _ in range(2)])
        self.upsize_ul = nn.ModuleList([WNConv2d(nf, nf, (2, 2), stride=2, transposed=True) for _ in range(2)])
        self.out = WNConv2d(nf, self.n_out, eps=1e-10)
        #: Run in NHWC layout (oneDNN's native layout on CPU: no reorders around each convolution).
        self.channels_last = True
        #: Hand-fused elementwise ops (custom autograd functions); False = plain torch ops (for torch.compile).
        self.fused = True

    def set_fused(self, fused: bool) -> None:
        self.fused = fused
        for m in self.modules():
            if isinstance(m, GatedResnet):
                m.fused = fused

    def set_data_init(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, WNConv2d):
                m.ddi = on

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for m in self.modules():
            if isinstance(m, WNConv2d):
                m.reset_parameters(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        x_pad = torch.cat([x, x.new_ones((n, 1, h, w))], 1)
        if self.channels_last:  # every later op keeps this memory layout
            x_pad = x_pad.contiguous(memory_format=torch.channels_last)
        # ////////// up pass //////////
        u_list = [down_shift(self.u_init(F.pad(x_pad, (1, 1, 1, 0))))]
        ul_list = [down_shift(self.ul_init_down(F.pad(x_pad, (1, 1, 0, 0))))
                   + right_shift(self.ul_init_right(F.pad(x_pad, (0, 0, 1, 0))))]
        cat = lambda ts, pad: concat_elu_pad(ts, pad, fused=self.fused)  # noqa: E731
        for s in range(3):
            if s > 0:
                u_list.append(self.downsize_u[s - 1](F.pad(u_list[-1], (1, 1, 1, 0))))
                ul_list.append(self.downsize_ul[s - 1](F.pad(ul_list[-1], (1, 0, 1, 0))))
            hu = None  # concat_elu_pad(u): input of the next u block's conv1 and of the ul short-cut
            for bu, bul in zip(self.up_u[s], self.up_ul[s]):
                u_list.append(bu(u_list[-1], hu))
                hu = cat((u_list[-1],), PAD_U)
                ul_list.append(bul(ul_list[-1], skips=[(hu, PAD_U)]))
        # ////////// down pass //////////
        u, ul = u_list.pop(), ul_list.pop()
        for s in range(3):
            if s > 0:
                u, ul = self.upsize_u[s - 1](u), self.upsize_ul[s - 1](ul)
                th, tw = u_list[-1].shape[2:]
                if u.shape[2:] != (th, tw):  # odd sizes: crop the extra bottom row / right column
                    u, ul = u[:, :, :th, :tw], ul[:, :, :th, :tw]
            hu = None
            for bu, bul in zip(self.down_u[s], self.down_ul[s]):
                u = bu(u, hu, skips=[(u_list.pop(), None)])
                hu = cat((u,), PAD_U)
                # nin(concat_elu(concat(u, ul_skip))) in two parts, the first reusing hu
                ul = bul(ul, skips=[(hu, PAD_U), (ul_list.pop(), None)])
        assert not u_list and not ul_list
        return self.out(F.elu(ul))


# =========================================================================== likelihood


#: Safety bounds applied to the mixture parameters before the shared discretized logistic.
#: ``discretized_logistic_log_prob`` is exact and finite for sane parameters, but in float32 its
#: bin mass underflows to log(0) = -inf (and NaN gradients) for log-scales above ~88 or for
#: |x - mean| beyond ~1e5 (the reference avoids this with its pdf-midpoint fallback).
#: A diverging optimiser can get there (seen with lr=0.02 on a tiny model), so the means
#: (after coupling) are clamped to [-1e3, 1e3] and the log-scales to <= 30, far outside anything
#: a model of data on [-1, 1] uses (a logistic of scale e^30 puts < e^-33 mass in any bin):
#: the function is unchanged wherever it is sane, and finite everywhere.
MEAN_BOUND = 1e3
LOG_SCALE_MAX = 30.0


def _bin_log_prob(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    return discretized_logistic_log_prob(x, means.clamp(-MEAN_BOUND, MEAN_BOUND), log_scales.clamp(max=LOG_SCALE_MAX))


def split_params(out: torch.Tensor, channels: int, nr_mix: int):
    """Unpack the network output (reference layout) -> logits (N,K,H,W), means, log_scales, coeffs (N,C,K,H,W).

    ``coeffs`` are the tanh'ed coupling coefficients (RGB only; None for greyscale).
    """
    n, _, h, w = out.shape
    k = nr_mix
    p = out[:, k:].reshape(n, channels, -1, k, h, w)
    coeffs = torch.tanh(p[:, :, 2]) if channels == 3 else None
    return out[:, :k], p[:, :, 0], p[:, :, 1], coeffs


def coupled_means(x: torch.Tensor, means: torch.Tensor, coeffs: torch.Tensor | None) -> torch.Tensor:
    """Reference channel coupling: mu_G += c0 x_R, mu_B += c1 x_R + c2 x_G. x: (N,C,1,H,W) or broadcastable."""
    if coeffs is None:
        return means
    return torch.stack([
        means[:, 0],
        means[:, 1] + coeffs[:, 0] * x[:, 0],
        means[:, 2] + coeffs[:, 1] * x[:, 0] + coeffs[:, 2] * x[:, 1],
    ], 1)


def mixture_log_prob_pixels(x: torch.Tensor, out: torch.Tensor, nr_mix: int) -> torch.Tensor:
    """log p(pixel | pixels before) in nats, (N, H, W), summed over the pixel's channels.

    ``x``: (N, C, H, W) on the [-1, 1] scale (may be a continuous relaxation);
    ``out``: the network output (N, K * (1 + C*P), H, W). The mixture component is shared
    by the channels of a pixel: log sum_k pi_k prod_c p(x_c | k, x_<c).
    """
    channels = x.shape[1]
    logits, means, log_scales, coeffs = split_params(out, channels, nr_mix)
    xk = x.unsqueeze(2)  # (N, C, 1, H, W): broadcast over the K components
    means = coupled_means(xk, means, coeffs)
    comp = _bin_log_prob(xk, means, log_scales).sum(1)  # (N, K, H, W)
    return torch.logsumexp(comp + F.log_softmax(logits, 1), 1)


def mixture_log_prob_subpixels(x: torch.Tensor, out: torch.Tensor, nr_mix: int) -> torch.Tensor:
    """Per-sub-pixel conditionals log p(x_c | x_<c of the pixel, earlier pixels), (N, C, H, W).

    log p(x_<=c) - log p(x_<c) with the mixture marginalised; sums over C to
    :func:`mixture_log_prob_pixels`.
    """
    channels = x.shape[1]
    logits, means, log_scales, coeffs = split_params(out, channels, nr_mix)
    xk = x.unsqueeze(2)
    comp = _bin_log_prob(xk, coupled_means(xk, means, coeffs), log_scales)  # (N, C, K, H, W)
    joint = torch.logsumexp(comp.cumsum(1) + F.log_softmax(logits, 1).unsqueeze(1), 2)  # log p(x_<=c), (N, C, H, W)
    return torch.cat([joint[:, :1], joint[:, 1:] - joint[:, :-1]], 1)


# =========================================================================== the model


class PixelCNNpp(Model):
    """PixelCNN++ as a benchbench model (see the module docstring; parameters: :class:`PixelCNNppConfig`)."""

    provides = ("log_prob", "bpd", "nll_pixels")
    eval_batch_size = 64

    def __init__(
        self,
        in_channels: int = _D.in_channels,
        nr_resnet: int = _D.nr_resnet,
        nr_filters: int = _D.nr_filters,
        nr_logistic_mix: int = _D.nr_logistic_mix,
        dropout: float = _D.dropout,
        lr: float = _D.lr,
        lr_decay: float = _D.lr_decay,
        adam_beta1: float = _D.adam_beta1,
        adam_beta2: float = _D.adam_beta2,
        polyak_decay: float = _D.polyak_decay,
        batch_size: int = _D.batch_size,
        init_batch_size: int = _D.init_batch_size,
        data_init: bool = _D.data_init,
        steps: int = _D.steps,
        epochs: int | None = _D.epochs,
        checkpoint_every: int = _D.checkpoint_every,
        log_every: int = _D.log_every,
        compile: bool | str = _D.compile,
        mutation_rate: float = _D.mutation_rate,
        l2: float = _D.l2,
    ):
        super().__init__()
        self.config = PixelCNNppConfig(
            in_channels=in_channels, nr_resnet=nr_resnet, nr_filters=nr_filters, nr_logistic_mix=nr_logistic_mix,
            dropout=dropout, lr=lr, lr_decay=lr_decay, adam_beta1=adam_beta1, adam_beta2=adam_beta2,
            polyak_decay=polyak_decay, batch_size=batch_size, init_batch_size=init_batch_size, data_init=data_init,
            steps=steps, epochs=epochs, checkpoint_every=checkpoint_every, log_every=log_every, compile=compile,
            mutation_rate=mutation_rate, l2=l2)
        if not 0.0 <= float(mutation_rate) <= 1.0:
            raise ValueError(f"PixelCNNpp: mutation_rate must be in [0, 1], got {mutation_rate!r}")
        if float(l2) < 0:
            raise ValueError(f"PixelCNNpp: l2 must be >= 0, got {l2!r}")
        # Parameters are also attributes under their own names (benchbench.api.get_params reads them back);
        # note that ``self.compile`` (a bool or str) shadows nn.Module.compile on purpose.
        for f in fields(PixelCNNppConfig):
            object.__setattr__(self, f.name, getattr(self.config, f.name))
        self.net = PixelCNNppNet(in_channels, nr_resnet, nr_filters, nr_logistic_mix, dropout)
        self.net.reset_parameters(torch.Generator().manual_seed(0))  # construction never touches the global RNG
        #: (C, H, W) of the training images, recorded by fit (zeros until then); used by sample().
        self.register_buffer("image_shape", torch.zeros(3, dtype=torch.long))
        if self.compile not in (False, True, "net", "loss", "all"):
            raise ValueError(f"PixelCNNpp: compile must be False, True, 'net', 'loss' or 'all', got {compile!r}")
        self._compiled = None
        self._compile_failed = False
        self._compiled_loss = None
        self._loss_compile_failed = False

    # ------------------------------------------------------------------ network / likelihood

    def network(self, x_unit: torch.Tensor) -> torch.Tensor:
        """Mixture parameters (N, n_out, H, W) for images on the [-1, 1] scale."""
        if self.compile in (True, "net", "all") and not self._compile_failed:
            if self._compiled is None:
                self.net.set_fused(False)  # plain ops: inductor fuses them itself
                self._compiled = torch.compile(self.net)
            try:
                return self._compiled(x_unit)
            except Exception as e:  # pragma: no cover - depends on the toolchain
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); falling back to eager", stacklevel=2)
                self._compile_failed = True
                self.net.set_fused(True)
        return self.net(x_unit)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PixelCNNpp(in_channels={self.in_channels}) expects (N, {self.in_channels}, H, W) "
                             f"images; got shape {tuple(x.shape)} (set in_channels to match the data)")

    def log_prob_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel log-likelihood (N, H, W) in nats (channels summed), x float in [0, 255]."""
        self._check_input(x)
        xu = to_unit_range(x.float())
        return self.likelihood(xu, self.network(xu))

    def likelihood(self, x_unit: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """:func:`mixture_log_prob_pixels` of the network output ``out``, through torch.compile for
        ``compile="loss"`` / ``"all"`` (eager fallback if compilation fails)."""
        if self.compile in ("loss", "all") and not self._loss_compile_failed:
            if self._compiled_loss is None:
                self._compiled_loss = torch.compile(mixture_log_prob_pixels, dynamic=False)
            try:
                return self._compiled_loss(x_unit, out, self.nr_logistic_mix)
            except Exception as e:  # pragma: no cover - depends on the toolchain
                warnings.warn(f"torch.compile of the likelihood failed ({type(e).__name__}: {e}); falling back to "
                              "eager", stacklevel=2)
                self._loss_compile_failed = True
        return mixture_log_prob_pixels(x_unit, out, self.nr_logistic_mix)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob_pixels(x).sum((1, 2))

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        lpp = self.log_prob_pixels(x.float())
        lp = lpp.sum((1, 2))
        return {"log_prob": lp, "bpd": bits_per_dim(lp, x[0].numel()), "nll_pixels": -lpp}

    # ------------------------------------------------------------------ training

    def _num_steps(self, n_images: int, world_size: int = 1) -> int:
        if self.epochs is not None:
            return int(self.epochs) * max(1, n_images // (min(self.batch_size, n_images) * world_size))
        return int(self.steps)

    def fit(self, data: Split, ctx: TrainContext) -> "PixelCNNpp":
        images = data.images
        if images.shape[1] != self.in_channels:
            raise ValueError(f"PixelCNNpp(in_channels={self.in_channels}) got {images.shape[1]}-channel data; "
                             f"construct it with in_channels={images.shape[1]}")
        device = torch.device(ctx.device)
        self.to(device)
        n = len(images)
        bs = min(int(self.batch_size), n)  # per process; the global batch is bs x world size
        gbs = bs * ctx.world_size
        if gbs > n:
            raise ValueError(f"PixelCNNpp: batch_size {bs} x {ctx.world_size} processes exceeds the {n} training images")
        per_epoch = max(1, n // gbs)
        total = self._num_steps(n, ctx.world_size)
        dims = int(np.prod(images.shape[1:]))
        data_t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        ckpt_path = Path(ctx.work_dir) / _CKPT_NAME if ctx.work_dir is not None else None

        trainer = PixelCNNppTrainer(self)
        resumed = self._load_checkpoint(ckpt_path, trainer, total) if ckpt_path is not None else None
        if resumed is None:
            self._fresh_init(data_t, ctx.seed, device)
            trainer.reset()
        else:
            ctx.curve.extend(c for c in resumed if c not in ctx.curve)
        self.image_shape.copy_(torch.tensor(images.shape[1:], dtype=torch.long))

        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=trainer.step, disable=not ctx.progress, file=sys.stderr,
                   desc="pixelcnn++", dynamic_ncols=True, leave=False)
        cuda_devs = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        running, running_n = 0.0, 0
        self.train()
        with torch.random.fork_rng(devices=cuda_devs):  # the caller's global RNG state is left untouched
            while trainer.step < total:
                epoch, i = divmod(trainer.step, per_epoch)
                # stateless batch order and dropout seeds: resuming at any step replays the same run
                # every rank draws the same global batch and trains on its part (torch.distributed)
                perm = np.random.default_rng([ctx.seed, epoch]).permutation(n)
                idx = torch.from_numpy(ctx.shard(perm[i * gbs:(i + 1) * gbs])).to(device)
                torch.manual_seed(_step_seed(ctx.seed, trainer.step) + ctx.rank)  # dropout differs per rank
                x = data_t.index_select(0, idx).float()
                if self.mutation_rate > 0:
                    x = mutate(x, self.mutation_rate)
                nll = trainer.train_step(x, reduce=ctx.all_reduce)
                step = trainer.step
                bpd = float(nll.mean()) / (dims * math.log(2.0))
                running, running_n = running + bpd, running_n + 1
                bar.update(1)
                bar.set_postfix(bpd=f"{bpd:.3f}", refresh=False)
                if step % max(1, self.log_every) == 0 or step == total:
                    ctx.log(step=step, train_bpd=running / running_n)
                    running, running_n = 0.0, 0
                if ckpt_path is not None and ctx.is_main and (step % max(1, self.checkpoint_every) == 0 or step == total):
                    self._save_checkpoint(ckpt_path, trainer, ctx.curve)
        bar.close()
        trainer.use_ema_weights()  # evaluate with the Polyak-averaged weights
        return self.eval()

    def _fresh_init(self, data_t: torch.Tensor, seed: int, device: torch.device) -> None:
        """Seeded V ~ N(0, 0.05), then the reference's data-dependent init on init_batch_size images."""
        self.net.reset_parameters(torch.Generator().manual_seed(int(seed)))
        self.to(device)
        if not self.data_init:
            return
        n = len(data_t)
        idx = np.random.default_rng([seed, 2**32 - 1]).permutation(n)[:min(self.init_batch_size, n)]
        torch.manual_seed(_step_seed(seed, -1))
        xb = to_unit_range(data_t[torch.from_numpy(idx).to(device)].float())
        self.train()
        self.net.set_data_init(True)
        try:
            with torch.no_grad():
                self.net(xb)  # dropout on, as the reference's init pass
        finally:
            self.net.set_data_init(False)

    def _save_checkpoint(self, path: Path, trainer: "PixelCNNppTrainer", curve) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "config": asdict(self.config),
            "model": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "trainer": trainer.state_dict(),
            "curve": list(curve),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)  # atomic: an interruption never leaves a half-written checkpoint

    def _load_checkpoint(self, path: Path, trainer: "PixelCNNppTrainer", total: int):
        """Restore model + optimiser state from ``path``; returns the saved curve, or None to start fresh."""
        if not path.exists():
            return None
        blob = torch.load(path, map_location="cpu", weights_only=False)
        cfg = blob.get("config", {})
        if any(cfg.get(k) != getattr(self, k) for k in _ARCH_FIELDS) or blob["trainer"]["step"] > total:
            warnings.warn(f"ignoring checkpoint {path}: it belongs to a different configuration", stacklevel=3)
            return None
        self.load_state_dict(blob["model"])
        trainer.load_state_dict(blob["trainer"])
        return blob.get("curve", [])

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, image_size: tuple[int, int] | None = None):
        """Ancestral sampling -> uint8 (n, C, H, W). Exact: discrete values drawn from the model's 256-bin
        conditionals (component k ~ pi, then R | k, G | R, k, B | R, G, k), one pixel at a time in raster order.

        Rows below the current one cannot influence it, so each step runs the network on rows [0, i] only.
        """
        c = self.in_channels
        if image_size is None:
            _, h, w = (int(v) for v in self.image_shape.tolist())
            if h == 0:
                raise RuntimeError("sample() needs image_size=(H, W) for a model that was never fitted")
        else:
            h, w = image_size
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        k = self.nr_logistic_mix
        levels = all_levels(device)

        def uniform(*shape):
            gdev = generator.device if generator is not None else device
            u = torch.rand(shape, generator=generator, device=gdev).to(device)
            return u.clamp_(1e-10, 1.0 - 1e-7)

        def gumbel_argmax(logits):
            return (logits - torch.log(-torch.log(uniform(*logits.shape)))).argmax(-1)

        x = torch.zeros(n, c, h, w, device=device)  # on the [-1, 1] scale
        for i in range(h):
            for j in range(w):
                out = self.network(x[:, :, :i + 1])[:, :, i, j]  # (n, n_out)
                logits, means, log_scales, coeffs = split_params(out[:, :, None, None], c, k)
                comp = gumbel_argmax(logits[:, :, 0, 0])  # (n,)
                pick = lambda t: t[..., 0, 0].gather(-1, comp.view(-1, 1, 1).expand(-1, t.shape[1], 1))[..., 0]  # noqa: E731
                mu, ls = pick(means), pick(log_scales)  # (n, C)
                cf = pick(coeffs) if coeffs is not None else None
                vals = []
                for ch in range(c):
                    m = mu[:, ch]
                    if ch == 1:
                        m = m + cf[:, 0] * vals[0]
                    elif ch == 2:
                        m = m + cf[:, 1] * vals[0] + cf[:, 2] * vals[1]
                    logp = _bin_log_prob(levels, m[:, None], ls[:, ch, None])  # (n, 256)
                    vals.append(levels[gumbel_argmax(logp)])
                x[:, :, i, j] = torch.stack(vals, 1)
        self.train(was_training)
        return torch.round((x + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


# =========================================================================== optimiser


class PixelCNNppTrainer:
    """One training run's optimiser state: the reference's Adam and Polyak averaging (EMA) of the weights.

    ``train_step(x)`` does forward, backward, Adam update with lr * lr_decay**t and the EMA update,
    exactly what ``fit`` does per step (the benchmark times this).
    """

    def __init__(self, model: "PixelCNNpp"):
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.reset()

    def reset(self) -> None:
        """Fresh optimiser state for the model's current weights (EMA starts at them, as in TF)."""
        self.step = 0
        self.ema = [p.detach().clone() for p in self.params]
        self.m1 = [torch.zeros_like(p) for p in self.params]
        self.m2 = [torch.zeros_like(p) for p in self.params]

    def train_step(self, x: torch.Tensor, reduce=None) -> torch.Tensor:
        """One update on a float batch in [0, 255]; returns the per-image NLL (nats, detached).

        ``reduce`` sums the gradients over data-parallel processes (``TrainContext.all_reduce``):
        the loss is a sum over images, so summed gradients equal one process with the global batch.
        """
        m = self.model
        nll = -m.log_prob(x)
        # the reference minimises summed nats (its Adam epsilon sits inside the sqrt, so the scale matters)
        grads = torch.autograd.grad(nll.sum(), self.params)
        if m.l2 > 0:  # d/dtheta of sum_images l2 ||theta||^2 (summed over processes by reduce, like the NLL)
            grads = [g.add(p.detach(), alpha=2.0 * m.l2 * len(x)) for g, p in zip(grads, self.params)]
        if reduce is not None:
            grads = reduce(list(grads))
        self.step += 1
        _adam_update(self.params, grads, self.m1, self.m2, self.step, m.lr * m.lr_decay ** self.step,
                     m.adam_beta1, m.adam_beta2)
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - m.polyak_decay)
        return nll.detach()

    @torch.no_grad()
    def use_ema_weights(self) -> None:
        for p, e in zip(self.params, self.ema):
            p.copy_(e)

    def state_dict(self) -> dict:
        cpu = lambda ts: [t.detach().cpu() for t in ts]  # noqa: E731
        return {"step": self.step, "names": self.names, "ema": cpu(self.ema), "m1": cpu(self.m1), "m2": cpu(self.m2)}

    def load_state_dict(self, sd: dict) -> None:
        if sd["names"] != self.names:
            raise ValueError("optimiser state does not match the model's parameters")
        dev = lambda ts: [t.to(p.device) for t, p in zip(ts, self.params)]  # noqa: E731
        self.step, self.ema, self.m1, self.m2 = int(sd["step"]), dev(sd["ema"]), dev(sd["m1"]), dev(sd["m2"])



def mutate(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Ren et al. (2019): each value replaced, with probability ``rate``, by a uniform draw from {0..255}."""
    hit = torch.rand(x.shape, device=x.device) < rate
    return torch.where(hit, torch.randint(0, 256, x.shape, device=x.device).to(x.dtype), x)


def _step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) + 1) % (2**63 - 1)


@torch.no_grad()
def _adam_update(params, grads, m1, m2, t: int, lr: float, beta1: float, beta2: float, eps: float = 1e-8) -> None:
    """The reference's nn.adam_updates: p -= lr * m_hat / sqrt(v_hat + eps) (bias-corrected, t from 1)."""
    torch._foreach_lerp_(m1, grads, 1.0 - beta1)
    torch._foreach_mul_(m2, beta2)
    torch._foreach_addcmul_(m2, grads, grads, value=1.0 - beta2)
    denom = torch._foreach_div(m2, 1.0 - beta2 ** t)
    torch._foreach_add_(denom, eps)
    torch._foreach_sqrt_(denom)
    torch._foreach_addcdiv_(params, m1, denom, value=-lr / (1.0 - beta1 ** t))


from benchbench import hookimpl  # noqa: E402


@hookimpl
def register_models():
    return {"pixelcnnpp": PixelCNNpp}
