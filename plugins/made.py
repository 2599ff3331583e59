"""MADE: Masked Autoencoder for Distribution Estimation.

Germain, Gregor, Murray & Larochelle (2015), arXiv:1502.03509. In the style of
karpathy's pytorch-made ``made.py``: an MLP whose weight matrices are masked so that
output d only sees the inputs that come before d in an ordering, which makes the D
per-dimension outputs the parameters of autoregressive conditionals
p(x) = prod_d p(x_d | x_<d) computed in one pass.

* **Dimensions.** An image (C, H, W) is flattened channel-major (``x.reshape(N, -1)``:
  all of channel 0 in raster order, then channel 1, ...) to D = C*H*W dimensions. The
  autoregressive order is that natural order (``ordering="natural"``) or a seeded random
  permutation of it (``"random"``). The network sees the inputs rescaled to [-1, 1].
* **Masks** (paper §3, eq. 12-13): every unit gets a degree; inputs have their position
  in the ordering, hidden units a random degree in [min degree of the layer below, D-2],
  hidden masks are ``deg_out >= deg_in`` and the output mask is strict ``deg_out > deg_in``.
  With ``num_masks > 1`` a fixed, seeded set of degree assignments (orderings for
  ``"random"``, connectivities only for ``"natural"``) is drawn once; training picks one at
  random per step (order-/connectivity-agnostic training, §3.2) and ``log_prob`` averages
  the probabilities of all masks (the ensemble: log-mean-exp of per-mask log-likelihoods).
* **Heads** (all over the same 256 bins per dimension, edge bins taking the tail mass, so
  bits/dim means what it means for PixelCNN++): ``"logistic"``, a mixture of ``nr_mix``
  discretized logistics; ``"categorical"``, a 256-way softmax (the value is rounded to its
  level, so this head is *not* differentiable in x through the likelihood term); and
  ``"gaussian"``, the discretized Gaussian of the paper's toy experiment on the [-1, 1]
  scale with bin width 2/255 (see :func:`~benchbench_plugins.likelihoods.discretized_gaussian_log_prob`).
* **Lazy shape.** D is only known from the data, so layers are built on the first ``fit``
  (or at construction when ``shape=[C, H, W]`` is given). The data shape lives in the
  ``data_shape`` buffer, so ``state_dict()`` carries it; ``load_state_dict`` on an unbuilt
  ``MADE(**params)`` builds the layers from it first. ``fit`` re-initialises the weights
  (seeded by ``ctx.seed``) and trains from scratch.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from benchbench import Model, Split, TrainContext, hookimpl
from benchbench_plugins import likelihoods as lk

HEADS = ("logistic", "categorical", "gaussian")
ORDERINGS = ("natural", "random")


@dataclass
class MADEConfig:
    hidden: Sequence[int] = (512, 512)  # hidden layer widths (ReLU); [] = masked logistic regression
    ordering: str = "natural"  # "natural" (channel-major raster order) or "random" (seeded permutations)
    num_masks: int = 1  # >1: order/connectivity-agnostic training and an ensemble of that many masks
    head: str = "logistic"  # "logistic" | "categorical" | "gaussian", all over 256 bins per dimension
    nr_mix: int = 5  # mixture components of the logistic head
    steps: int = 5000  # optimizer steps
    batch_size: int = 100  # images per step
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0  # seeds the orderings / hidden degrees (weights and minibatches use ctx.seed)
    eval_batch_size: int = 256  # batch size the runner uses when scoring
    shape: Sequence[int] | None = None  # [C, H, W] to build at construction; None = learn it in fit


_D = MADEConfig  # defaults


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (``set_mask``)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", torch.ones(out_features, in_features), persistent=False)

    def set_mask(self, mask: torch.Tensor) -> None:
        # a new tensor, not copy_: an ensemble forward may still need the previous mask for backward
        self.mask = mask.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.mask * self.weight, self.bias)


class MADE(Model):
    """MADE over the C*H*W dimensions of an image with a discretized 256-level head per dimension."""

    provides = ("log_prob", "bpd")

    def __init__(self, hidden: Sequence[int] = _D.hidden, ordering: str = _D.ordering, num_masks: int = _D.num_masks,
                 head: str = _D.head, nr_mix: int = _D.nr_mix, steps: int = _D.steps, batch_size: int = _D.batch_size,
                 lr: float = _D.lr, seed: int = _D.seed, eval_batch_size: int = _D.eval_batch_size,
                 shape: Sequence[int] | None = _D.shape):
        super().__init__()
        if ordering not in ORDERINGS:
            raise ValueError(f"MADE ordering must be one of {ORDERINGS}; got {ordering!r}")
        if head not in HEADS:
            raise ValueError(f"MADE head must be one of {HEADS}; got {head!r}")
        if int(num_masks) < 1 or int(nr_mix) < 1:
            raise ValueError("MADE needs num_masks >= 1 and nr_mix >= 1")
        self.hidden = [int(h) for h in hidden]
        self.ordering, self.num_masks, self.head = ordering, int(num_masks), head
        self.nr_mix, self.steps, self.batch_size, self.lr = int(nr_mix), int(steps), int(batch_size), float(lr)
        self.seed, self.eval_batch_size = int(seed), int(eval_batch_size)
        self.shape = None if shape is None else [int(s) for s in shape]
        self.register_buffer("data_shape", torch.zeros(3, dtype=torch.long))  # (C, H, W); zeros = not built
        self.net: nn.Sequential | None = None
        self._shape: tuple[int, ...] = ()  # data_shape as Python ints (no device sync per call)
        self._mask_index: int | None = None
        if self.shape is not None:
            self._build(self.shape)

    # ------------------------------------------------------------------ structure

    @property
    def built(self) -> bool:
        return self.net is not None

    @property
    def num_dims(self) -> int:
        return math.prod(self._shape)

    @property
    def params_per_dim(self) -> int:
        return {"logistic": 3 * self.nr_mix, "categorical": 256, "gaussian": 2}[self.head]

    def _build(self, shape: Sequence[int]) -> None:
        """Create the layers and the ``num_masks`` seeded degree assignments for data of ``shape``."""
        shape = [int(s) for s in shape]
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"MADE needs an image shape [C, H, W]; got {shape}")
        device = self.data_shape.device
        self.data_shape.copy_(torch.tensor(shape))
        self._shape = tuple(shape)
        D, P = self.num_dims, self.params_per_dim
        sizes = [D, *self.hidden]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [MaskedLinear(n_in, n_out), nn.ReLU()]
        layers.append(MaskedLinear(sizes[-1], P * D))  # output unit p * D + d: parameter p of dimension d
        self.net = nn.Sequential(*layers).to(device)
        # degrees[l]: (num_masks, width of layer l); degrees[0][k] is mask k's position of each input.
        rng = np.random.RandomState(self.seed)
        degrees = [np.zeros((self.num_masks, n), dtype=np.int64) for n in sizes]
        for k in range(self.num_masks):
            degrees[0][k] = np.arange(D) if self.ordering == "natural" else rng.permutation(D)
            for l, n in enumerate(self.hidden, start=1):
                low = degrees[l - 1][k].min()
                degrees[l][k] = rng.randint(low, max(D - 1, low + 1), size=n)
        for l, deg in enumerate(degrees):
            self.register_buffer(f"degrees_{l}", torch.from_numpy(deg).to(device))
        self._mask_index = None

    def _degrees(self, layer: int) -> torch.Tensor:
        return getattr(self, f"degrees_{layer}")

    def set_mask(self, k: int) -> None:
        """Use degree assignment ``k`` (0 <= k < num_masks) for the following forward passes."""
        if self._mask_index == k:
            return
        masked = [m for m in self.net if isinstance(m, MaskedLinear)]
        for l, layer in enumerate(masked[:-1], start=1):
            layer.set_mask(self._degrees(l)[k][:, None] >= self._degrees(l - 1)[k][None, :])
        out_deg = self._degrees(0)[k].repeat(self.params_per_dim)
        masked[-1].set_mask(out_deg[:, None] > self._degrees(len(masked) - 1)[k][None, :])
        self._mask_index = k

    def order(self, k: int = 0) -> torch.Tensor:
        """The dimensions (flat channel-major indices) in mask ``k``'s autoregressive order."""
        return torch.argsort(self._degrees(0)[k])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Build the layers from the saved ``data_shape`` first when this model is not built yet."""
        shape = state_dict.get("data_shape")
        if not self.built and shape is not None and int(torch.as_tensor(shape).prod()) > 0:
            self._build(torch.as_tensor(shape).tolist())
        self._mask_index = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _check_built(self) -> None:
        if not self.built:
            raise RuntimeError("MADE is not built yet: call fit() (or pass shape=[C, H, W], or load_state_dict)")

    # ------------------------------------------------------------------ likelihood

    def _flat_unit(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self._shape:
            raise ValueError(f"MADE was built for images {list(self._shape)}; got {list(x.shape[1:])}")
        weight = self.net[-1].weight
        return lk.to_unit_range(x.reshape(len(x), -1).to(weight.device, weight.dtype))

    def _params(self, xu: torch.Tensor) -> torch.Tensor:
        """Head parameters (N, D, P) of the conditionals, from flat inputs on the [-1, 1] scale."""
        out = self.net(xu)
        return out.view(len(xu), self.params_per_dim, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: int = 0) -> torch.Tensor:
        """Head parameters (N, D, P) of every conditional under mask ``mask``; x: (N, C, H, W) in [0, 255].

        Row d (flat channel-major index) depends only on the inputs before d in mask ``mask``'s order.
        """
        self._check_built()
        self.set_mask(mask)
        return self._params(self._flat_unit(x))

    def _head_log_prob(self, params: torch.Tensor, xu: torch.Tensor) -> torch.Tensor:
        """Log-mass (...,) of values ``xu`` (..., on [-1, 1]) under head parameters (..., P)."""
        if self.head == "logistic":
            K = self.nr_mix
            return lk.logistic_mixture_log_prob(xu, params[..., :K], params[..., K:2 * K], params[..., 2 * K:])
        if self.head == "gaussian":
            return lk.discretized_gaussian_log_prob(xu, params[..., 0], params[..., 1])
        level = ((xu.detach() + 1.0) * 127.5).round().clamp(0, 255).long()
        return F.log_softmax(params, dim=-1).gather(-1, level.unsqueeze(-1)).squeeze(-1)

    def conditional_log_probs(self, x: torch.Tensor, mask: int = 0) -> torch.Tensor:
        """log p(x_d | x_<d) in nats, shape (N, D), under mask ``mask``; x: (N, C, H, W) in [0, 255]."""
        self._check_built()
        self.set_mask(mask)
        xu = self._flat_unit(x)
        return self._head_log_prob(self._params(xu), xu)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, (N,): log-mean-exp over the ``num_masks`` masks of the per-mask likelihoods."""
        per_mask = torch.stack([self.conditional_log_probs(x, k).sum(1) for k in range(self.num_masks)])
        return torch.logsumexp(per_mask, dim=0) - math.log(self.num_masks)

    # ------------------------------------------------------------------ training

    def fit(self, data: Split, ctx: TrainContext) -> "MADE":
        """Adam on random minibatches (shuffled epochs) of ``data.images``; one random mask per step."""
        shape = list(data.images.shape[1:])
        if not self.built:
            self._build(shape)
        elif tuple(shape) != self._shape:
            raise ValueError(f"MADE was built for images {list(self._shape)}; got {shape}")
        device = torch.device(ctx.device)
        self.to(device)
        gen = torch.Generator().manual_seed(int(ctx.seed))  # CPU: init, shuffling and masks, same on every device
        with torch.no_grad():  # fresh init, nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            for layer in self.net:
                if isinstance(layer, MaskedLinear):
                    bound = 1.0 / math.sqrt(layer.in_features)
                    for p in (layer.weight, layer.bias):
                        p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
        images = torch.from_numpy(data.images).to(device)
        n, D = len(images), self.num_dims
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        log_every = max(1, self.steps // 20)
        self.train()
        net = ctx.data_parallel(self)  # DDP in a torchrun run; gradients averaged over ranks
        global_batch = self.batch_size * ctx.world_size  # batch_size is per rank
        if global_batch > n:
            raise ValueError(f"MADE batch_size x world size = {global_batch} exceeds the {n} training images")
        perm, pos, running, window = torch.randperm(n, generator=gen), 0, None, []
        bar = tqdm(range(self.steps), desc="made", file=sys.stderr, disable=not ctx.progress, leave=False)
        for step in bar:
            if pos + global_batch > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = ctx.shard(perm[pos:pos + global_batch]).to(device)  # every rank draws the same global batch
            pos += global_batch
            k = int(torch.randint(self.num_masks, (), generator=gen)) if self.num_masks > 1 else 0
            x = images[idx].float()
            lp = self._head_log_prob(net(x, k), self._flat_unit(x)).sum(1)
            loss = -lp.mean() / (D * lk.LOG2)  # bits/dim
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bpd = loss.item()
            window.append(bpd)
            running = bpd if running is None else 0.98 * running + 0.02 * bpd
            if step % 10 == 0 or step == self.steps - 1:
                bar.set_postfix(bpd=f"{running:.3f}")
            if (step + 1) % log_every == 0 or step == self.steps - 1:
                ctx.log(step=step + 1, train_bpd=float(np.mean(window)))
                window = []
        bar.close()
        self.eval()
        return self

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral samples, uint8 (n, C, H, W): each sample picks a mask uniformly (the ensemble is their
        mixture), then draws its dimensions in that mask's order from the exact 256-bin conditionals."""
        self._check_built()
        device = self.data_shape.device
        gdev = generator.device if generator is not None else device
        D, levels = self.num_dims, lk.all_levels(device=device, dtype=self.net[-1].weight.dtype)
        which = torch.randint(self.num_masks, (n,), generator=generator, device=gdev).to(device)
        xu = torch.zeros(n, D, device=device, dtype=levels.dtype)
        for k in range(self.num_masks):
            rows = (which == k).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            self.set_mask(k)
            xk = xu[rows]
            for d in self.order(k).tolist():
                params = self._params(xk)[:, d]  # (m, P)
                lp = self._head_log_prob(params[:, None, :].expand(-1, 256, -1), levels.expand(len(rows), 256))
                idx = torch.multinomial(lp.softmax(-1).to(gdev), 1, generator=generator).squeeze(1).to(device)
                xk[:, d] = levels[idx]
            xu[rows] = xk
        return ((xu + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).view(n, *self._shape)


@hookimpl
def register_models():
    return {"made": MADE}
