"""Image classifiers whose logits and penultimate features feed OOD detectors.

Lee, Lee, Lee & Shin (2018), "A Simple Unified Framework for Detecting Out-of-Distribution
Samples and Adversarial Attacks" (NeurIPS, arXiv:1807.03888), fit class-conditional
Gaussians with a shared covariance to the penultimate-layer features of a trained ResNet
(and DenseNet) and score inputs by their Mahalanobis distance; max-softmax and energy
detectors use the logits. This plugin trains such networks on a labelled in-distribution
split and returns, per image, ``logits`` (N, num_classes) and ``features`` (N, F): the
penultimate activations after global average pooling.

Architectures (``arch``)
    * ``"resnet18"``: ResNet-18 (He, Zhang, Ren & Sun 2016, "Deep Residual Learning for
      Image Recognition", CVPR, arXiv:1512.03385) in its CIFAR form, as in Lee et al.'s code
      and the common pytorch-cifar recipe: a 3x3 stride-1 stem conv + BN + ReLU, no max-pool,
      four stages of two BasicBlocks (conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU) with widths
      w, 2w, 4w, 8w and strides 1, 2, 2, 2 (1x1 conv + BN shortcut where the shape changes),
      global average pooling, a linear layer. F = 8w (512 at the default w = 64).
    * ``"googlenet"``: GoogLeNet / Inception-v1 (Szegedy et al. 2015, "Going Deeper with
      Convolutions", CVPR, arXiv:1409.4842), torchvision's ``googlenet(weights=None,
      aux_logits=False, init_weights=True)`` (batch-normalised, as torchvision builds it)
      adapted to small images: the 7x7 stride-2 stem conv becomes a 3x3 stride-1 conv from
      ``in_channels`` and the first max-pool is removed, so a 32x32 input reaches the
      inception blocks at 16x16, 8x8 and 4x4. F = 1024. The channel counts are the paper's;
      ``width`` does not apply (leave it unset). Its dropout (p = 0.2, before the linear
      layer) is active in training only.
    * ``"small_cnn"``: a small VGG-style network for quick runs: [conv3x3-BN-ReLU] x2 at w,
      max-pool, x2 at 2w, max-pool, x1 at 4w, global average pooling, linear. F = 4w.
    All three are fully convolutional up to the global pooling: any image size from 8x8 up
    works (28x28 and 32x32 are the usual ones; sklearn's digits are 8x8).

Inputs are uint8 images (N, C, H, W); the network sees ``x / 127.5 - 1`` (fixed, no
per-dataset mean/std), so a checkpoint depends on nothing but the pixels.

Training (``fit``): cross-entropy, SGD with Nesterov momentum and weight decay on all
parameters, learning rate following a cosine from ``lr`` to 0 over the total steps
(updated every step), minibatches from a per-epoch permutation (the last partial batch is
dropped). ``augment="auto"``: random crops with ``crop_padding`` (4) pixels of black (0)
padding on each side, plus random horizontal flips for 3-channel images only (digits and
letters are not mirror-symmetric); ``"crop"`` / ``"crop+flip"`` force either, ``"none"``
turns augmentation off. Everything is seeded by ``ctx.seed`` (weights, batch order, crops
and flips, dropout) and leaves the caller's global RNG untouched; the same seed gives the
same weights (on the same device and thread count). Data-parallel (torchrun): every rank
draws the same global batch of ``batch_size x world_size`` images (and augmentations) and
trains on its part under DistributedDataParallel; BatchNorm statistics are per rank (no
SyncBN), and the saved running statistics are rank 0's.

Speed: the network runs in the channels_last (NHWC) memory layout, the native one of
oneDNN on CPUs (1.2-2.4x faster than NCHW there, most for GoogLeNet's stride-1 max-pools)
and of cuDNN's tensor-core kernels; this changes no result beyond float rounding.
Measured on one CPU thread at batch 128 (train = a full SGD step with augmentation), images/s:
small_cnn w32 460 train / 1750 eval at 32x32x3, 665 / 2570 at 28x28x1; resnet18 w16 430 / 1630
and 550 / 1920; resnet18 w64 35 / 122 and 45 / 146; googlenet 37 / 121 and 51 / 161.

Construction builds the network from the parameters alone (seeded weights, no data
needed), so ``Classifier(**params).load_state_dict(state)`` restores a trained model.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchbench import Model, Split, TrainContext, hookimpl

ARCHS = ("small_cnn", "resnet18", "googlenet")
AUGMENTS = ("auto", "none", "crop", "crop+flip")
#: Default base width per architecture (googlenet has the paper's fixed channel counts).
DEFAULT_WIDTH = {"small_cnn": 32, "resnet18": 64, "googlenet": None}
#: Record the training curve (mean loss / accuracy over the window) every this many steps.
LOG_EVERY = 50


@dataclass
class ClassifierConfig:
    """Constructor parameters of :class:`Classifier` and their defaults."""

    arch: str = "resnet18"  # "small_cnn" | "resnet18" | "googlenet"
    in_channels: int = 3  # 1 (greyscale) or 3 (RGB); fixes the stem
    num_classes: int = 10  # labels must lie in [0, num_classes)
    width: int | None = None  # base channels; None = 32 (small_cnn), 64 (resnet18); must stay None for googlenet
    epochs: int | None = None  # passes over the data; when set, overrides steps (steps = epochs * floor(N / batch))
    steps: int = 40_000  # SGD steps when epochs is None (~100 CIFAR-10 epochs at batch 128)
    batch_size: int = 128  # images per step (per process in a data-parallel run)
    lr: float = 0.1  # peak learning rate, cosine-annealed to 0 over the run
    momentum: float = 0.9  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 on every parameter (SGD's weight_decay)
    augment: str = "auto"  # "auto" (crop + flip for RGB, crop only for greyscale) | "crop" | "crop+flip" | "none"
    crop_padding: int = 4  # zero (black) padding in pixels on each side for random crops
    eval_batch_size: int = 256  # batch size the runner uses when scoring


_D = ClassifierConfig  # defaults


# =========================================================================== networks


class _Net(nn.Module):
    """A feature extractor ending in global average pooling, and a linear head: forward -> (logits, features)."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor):
        feats = self.body(x)
        return self.head(feats), feats


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def small_cnn(in_channels: int, num_classes: int, width: int) -> _Net:
    w = width
    body = nn.Sequential(
        *_conv_bn_relu(in_channels, w), *_conv_bn_relu(w, w), nn.MaxPool2d(2),
        *_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2),
        *_conv_bn_relu(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return _Net(body, nn.Linear(4 * w, num_classes))


class BasicBlock(nn.Module):
    """He et al.'s two-conv residual block; 1x1 conv + BN shortcut when the stride or width changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


def resnet18(in_channels: int, num_classes: int, width: int) -> _Net:
    """CIFAR-style ResNet-18: 3x3 stride-1 stem, no max-pool, BasicBlocks [2, 2, 2, 2] at w, 2w, 4w, 8w."""
    layers: list[nn.Module] = _conv_bn_relu(in_channels, width)
    cin = width
    for i, stride in enumerate((1, 2, 2, 2)):
        cout = width * 2 ** i
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for m in body.modules():  # torchvision's ResNet initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return _Net(body, nn.Linear(cin, num_classes))


def googlenet(in_channels: int, num_classes: int) -> _Net:
    """torchvision's GoogLeNet with a 3x3 stride-1 stem and no first max-pool (for 8-32 pixel images)."""
    from torchvision.models import googlenet as tv_googlenet
    from torchvision.models.googlenet import BasicConv2d

    g = tv_googlenet(weights=None, aux_logits=False, init_weights=True, num_classes=num_classes)
    g.conv1 = BasicConv2d(in_channels, 64, kernel_size=3, stride=1, padding=1)
    nn.init.trunc_normal_(g.conv1.conv.weight, mean=0.0, std=0.01, a=-2, b=2)  # as torchvision inits the rest
    g.maxpool1 = nn.Identity()
    # the order of torchvision's GoogLeNet._forward (transform_input is off without pretrained weights)
    body = nn.Sequential(g.conv1, g.maxpool1, g.conv2, g.conv3, g.maxpool2, g.inception3a, g.inception3b,
                         g.maxpool3, g.inception4a, g.inception4b, g.inception4c, g.inception4d, g.inception4e,
                         g.maxpool4, g.inception5a, g.inception5b, g.avgpool, nn.Flatten())
    return _Net(body, nn.Sequential(g.dropout, g.fc))


def build_network(arch: str, in_channels: int, num_classes: int, width: int | None, seed: int = 0) -> _Net:
    """The network of ``arch``, its weights drawn from ``seed`` (the caller's global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if arch == "small_cnn":
            return small_cnn(in_channels, num_classes, width)
        if arch == "resnet18":
            return resnet18(in_channels, num_classes, width)
        return googlenet(in_channels, num_classes)


# =========================================================================== augmentation


def random_crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None,
                     pad: int) -> torch.Tensor:
    """Per-image crops of ``x`` (N, C, H, W) zero-padded by ``pad``: image i is the H x W window at
    (dy[i], dx[i]) of the padded image, mirrored left-right where ``flip[i]``. Works on any dtype/device."""
    n, c, h, w = x.shape
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W)
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = x[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)  # (N, C, H, W) in channels_last memory layout, as the network wants it


# =========================================================================== model


class Classifier(Model):
    """A supervised image classifier as a benchbench model (see the module docstring).

    ``score`` returns ``logits`` (N, num_classes) and ``features`` (N, F), the globally
    average-pooled penultimate activations. A classifier has no likelihood: ``log_prob``
    raises NotImplementedError.
    """

    provides = ("logits", "features")

    def __init__(self, arch: str = _D.arch, in_channels: int = _D.in_channels, num_classes: int = _D.num_classes,
                 width: int | None = _D.width, epochs: int | None = _D.epochs, steps: int = _D.steps,
                 batch_size: int = _D.batch_size, lr: float = _D.lr, momentum: float = _D.momentum,
                 weight_decay: float = _D.weight_decay, augment: str = _D.augment,
                 crop_padding: int = _D.crop_padding, eval_batch_size: int = _D.eval_batch_size):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"Classifier arch must be one of {ARCHS}; got {arch!r}")
        if int(in_channels) not in (1, 3):
            raise ValueError(f"Classifier in_channels must be 1 or 3; got {in_channels!r}")
        if int(num_classes) < 2:
            raise ValueError(f"Classifier num_classes must be at least 2; got {num_classes!r}")
        if arch == "googlenet" and width is not None:
            raise ValueError(f"Classifier(arch='googlenet') has the paper's fixed channel counts: leave width unset "
                             f"(got width={width!r})")
        if width is not None and int(width) < 1:
            raise ValueError(f"Classifier width must be a positive integer; got {width!r}")
        if int(crop_padding) < 0:
            raise ValueError(f"Classifier crop_padding must be >= 0; got {crop_padding!r}")
        if augment not in AUGMENTS:
            raise ValueError(f"Classifier augment must be one of {AUGMENTS}; got {augment!r}")
        if (epochs is not None and int(epochs) < 1) or int(steps) < 1:
            raise ValueError(f"Classifier needs epochs >= 1 (or None) and steps >= 1; got epochs={epochs!r}, "
                             f"steps={steps!r}")
        self.arch, self.in_channels, self.num_classes = arch, int(in_channels), int(num_classes)
        self.width = None if width is None else int(width)
        self.epochs = None if epochs is None else int(epochs)
        self.steps, self.batch_size = int(steps), int(batch_size)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.augment, self.crop_padding = augment, int(crop_padding)
        self.eval_batch_size = int(eval_batch_size)
        # weights from seed 0 until fit re-draws them from ctx.seed; a checkpoint overwrites them anyway
        self.net = build_network(arch, self.in_channels, self.num_classes, self.resolved_width, seed=0)
        self.net.to(memory_format=torch.channels_last)  # NHWC: faster on CPU (oneDNN) and with cuDNN

    # ------------------------------------------------------------------ structure / scores

    @property
    def resolved_width(self) -> int | None:
        """The base width in use (the per-architecture default when ``width`` is None)."""
        return self.width if self.width is not None else DEFAULT_WIDTH[self.arch]

    def _check_channels(self, c: int, what: str) -> None:
        if c != self.in_channels:
            raise ValueError(f"Classifier(in_channels={self.in_channels}) got {c}-channel {what}; "
                             f"construct it with in_channels={c} (or adapt the data set's channels)")

    def forward(self, x: torch.Tensor):
        """(logits, features) of images given as pixel values in [0, 255] (uint8 or float), (N, C, H, W)."""
        x = x.contiguous(memory_format=torch.channels_last).float()
        return self.net(x / 127.5 - 1.0)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "Classifier is a discriminative model and has no likelihood (log_prob/bpd); use detectors that "
            "need its 'logits' or 'features' scores")

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` (N, num_classes) and ``features`` (N, F) of a uint8 batch (N, C, H, W), in eval mode."""
        if x.ndim != 4:
            raise ValueError(f"Classifier.score expects images (N, C, H, W); got shape {tuple(x.shape)}")
        self._check_channels(x.shape[1], "images")
        was_training = self.training
        self.eval()
        try:
            logits, feats = self(x)
        finally:
            self.train(was_training)
        return {"logits": logits.float(), "features": feats.float()}

    # ------------------------------------------------------------------ training

    def _flip_allowed(self) -> bool:
        return self.augment == "crop+flip" or (self.augment == "auto" and self.in_channels == 3)

    def fit(self, data: Split, ctx: TrainContext) -> "Classifier":
        """Supervised training on ``data.images`` / ``data.labels`` (see the module docstring)."""
        images, labels = data.images, data.labels
        self._check_channels(images.shape[1], f"training data ({data.source or 'training split'})")
        if labels is None:
            raise ValueError(f"Classifier.fit needs class labels, but the training split "
                             f"({data.source or 'no source'}) has none (labels is None): train it on a "
                             f"labelled data set")
        labels = np.asarray(labels)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"Classifier.fit needs integer class labels; got dtype {labels.dtype}")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"Classifier(num_classes={self.num_classes}) got labels in "
                             f"[{labels.min()}, {labels.max()}]; they must lie in [0, {self.num_classes}) "
                             f"(set num_classes to match the data)")
        n = len(images)
        bs = min(self.batch_size, n)  # per process; the global batch is bs x world size
        gbs = bs * ctx.world_size
        if gbs > n or n == 0:
            raise ValueError(f"Classifier: batch_size {bs} x {ctx.world_size} processes exceeds the {n} "
                             f"training images")
        per_epoch = max(1, n // gbs)
        total = self.epochs * per_epoch if self.epochs is not None else self.steps
        pad = self.crop_padding if self.augment != "none" else 0
        crop = self.augment != "none"
        flip = self._flip_allowed()

        device = torch.device(ctx.device)
        # fresh weights from ctx.seed (drawn on the CPU: the same on every device)
        self.net.load_state_dict(build_network(self.arch, self.in_channels, self.num_classes,
                                               self.resolved_width, ctx.seed).state_dict())
        self.to(device)
        data_t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        labels_t = torch.from_numpy(labels.astype(np.int64)).to(device)
        opt = torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay, nesterov=self.momentum > 0)
        net = ctx.data_parallel(self)  # DDP in a torchrun run: gradients averaged over the ranks

        from tqdm.auto import tqdm

        bar = tqdm(total=total, disable=not ctx.progress, file=sys.stderr, desc=f"classifier {self.arch}",
                   dynamic_ncols=True, leave=False)
        cuda_devs = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        win_loss = torch.zeros((), device=device)  # sums over the logging window, kept on the device
        win_correct = torch.zeros((), device=device, dtype=torch.long)
        win_seen = 0
        self.train()
        with torch.random.fork_rng(devices=cuda_devs):  # the caller's global RNG state is left untouched
            torch.manual_seed((int(ctx.seed) * 1_000_003 + ctx.rank + 1) % (2**63 - 1))  # dropout (googlenet)
            for step in range(total):
                epoch, i = divmod(step, per_epoch)
                if i == 0:
                    perm = np.random.default_rng([int(ctx.seed), epoch]).permutation(n)
                # every rank draws the same global batch and augmentation, and trains on its part
                rng = np.random.default_rng([int(ctx.seed), epoch, i + 1])
                gidx = perm[i * gbs:(i + 1) * gbs]
                dy, dx = rng.integers(0, 2 * pad + 1, size=(2, gbs)) if crop else (None, None)
                fl = rng.random(gbs) < 0.5 if flip else None
                idx = torch.from_numpy(ctx.shard(gidx)).to(device)
                xb, yb = data_t.index_select(0, idx), labels_t.index_select(0, idx)
                if crop:
                    part = lambda a: torch.from_numpy(np.ascontiguousarray(ctx.shard(a))).to(device)  # noqa: E731
                    xb = random_crop_flip(xb, part(dy), part(dx), part(fl) if flip else None, pad)
                for g in opt.param_groups:  # cosine annealing from lr to 0 over the run
                    g["lr"] = self.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
                logits, _ = net(xb)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    win_loss += loss.detach() * len(yb)
                    win_correct += (logits.argmax(1) == yb).sum()
                win_seen += len(yb)
                bar.update(1)
                if (step + 1) % LOG_EVERY == 0 or step + 1 == total:
                    tl, ta = float(win_loss) / win_seen, float(win_correct) / win_seen
                    ctx.log(step=step + 1, train_loss=tl, train_acc=ta)
                    bar.set_postfix(loss=f"{tl:.3f}", acc=f"{ta:.3f}", refresh=False)
                    win_loss.zero_()
                    win_correct.zero_()
                    win_seen = 0
        bar.close()
        return self.eval()


@hookimpl
def register_models():
    return {"classifier": Classifier}
