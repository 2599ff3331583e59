"""WGAN-GP: Wasserstein GAN with gradient penalty.

Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville (2017), "Improved Training of
Wasserstein GANs", arXiv:1704.00028 (Algorithm 1), with the networks of their CIFAR-10
experiment (``gan_cifar.py`` in github.com/igul222/improved_wgan_training).

* **Generator** (DCGAN-style, ``gan_cifar.py``): z ~ N(0, I) of size ``latent`` (128) ->
  linear to 4*4*4*DIM, BN, ReLU -> reshape (4*DIM, 4, 4) -> three 5x5 stride-2 transposed
  convolutions 4 -> 8 -> 16 -> 32 (4*DIM -> 2*DIM -> DIM -> C), the first two with BN +
  ReLU -> tanh. ``dim`` is their DIM (128).
* **Critic**: three 5x5 stride-2 convolutions (C -> DIM -> 2*DIM -> 4*DIM, 32 -> 16 -> 8
  -> 4) with LeakyReLU(0.2), **no batch norm** (the penalty is per-sample, §4), then a
  linear layer to one number.
* **28x28 (MNIST)**: as in their ``gan_mnist.py``, the generator crops the 8x8 output of
  its first transposed convolution to 7x7, so the next two give 14 and 28; the critic's
  padded stride-2 convolutions take 28 -> 14 -> 7 -> 4 unchanged. Sizes 32 and 28 only
  (any channel count); other sizes can be padded with a data set's ``adapt: {size: 32}``.
* **Loss** (eq. 3): the critic minimises D(x~) - D(x) + lambda (||grad D(x^)||_2 - 1)^2
  (two-sided penalty) on x^ = a x + (1 - a) x~, a ~ U[0, 1] per sample, lambda = 10;
  ``n_critic`` = 5 critic steps per generator step; the generator minimises -D(G(z)).
  Adam(lr 1e-4, betas (0.5, 0.9)) as in ``gan_cifar.py`` (their ResNet code,
  ``gan_cifar_resnet.py``, uses betas (0, 0.9) and a linear lr decay; pass
  ``betas=[0.0, 0.9]`` for the former). ``steps`` counts generator iterations (theirs: 200k).
* **Data**: uint8 images scaled to [-1, 1] (x / 127.5 - 1); samples map back with
  round((x + 1) * 127.5) clipped to 0..255.
* **No likelihood**: ``provides = ()``; ``log_prob`` raises. Use it as a sampler, e.g.
  through the ``gan_samples`` data set.

Deviations, stated: PyTorch's default weight initialisation (theirs is tflib's He /
Glorot uniform); the generator's batch norm keeps running statistics and samples in eval
mode use them (their TF code normalises every sampling batch by its own statistics), so a
sample does not depend on the other samples drawn with it.

Training state: all randomness (weights, minibatches, z, the interpolation weights) comes
from one CPU ``torch.Generator`` seeded by ``(ctx.seed, seed)``, so a run is the same on
any device up to floating-point differences. With ``ctx.work_dir`` set, generator
snapshots are kept every ``snapshot_every`` generator steps as
``work_dir/snapshots/step_NNNNNNN.pt`` (the generator's ``state_dict`` only), and a full
training state ``work_dir/resume.pt`` (both networks, both optimizers, the random state,
the data order, the curve so far) is written every 5% of the steps (and at least every
10 minutes), so a killed run resumes where it stopped; it is removed when ``fit`` ends.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from benchbench import Model, Split, TrainContext, hookimpl
from benchbench.api import get_params
from benchbench.cache import atomic_write

SIZES = (32, 28)
SNAPSHOT_RE = re.compile(r"^step_(\d+)\.pt$")


@dataclass
class WGANGPConfig:
    dim: int = 128  # DIM of gan_cifar.py: base width of both networks
    latent: int = 128  # size of z ~ N(0, I)
    steps: int = 200_000  # generator iterations (the paper's CIFAR-10 runs: 200k)
    batch_size: int = 64  # images per critic / generator step
    n_critic: int = 5  # critic iterations per generator iteration
    lam: float = 10.0  # gradient penalty weight lambda
    lr: float = 1e-4  # Adam learning rate (both networks)
    betas: Sequence[float] = (0.5, 0.9)  # Adam betas of gan_cifar.py (gan_cifar_resnet.py: (0.0, 0.9))
    snapshot_every: int = 0  # keep a generator snapshot every N generator steps; 0 = none
    seed: int = 0  # mixed with ctx.seed into the training seed (several GAN seeds in one suite)


_D = WGANGPConfig  # defaults


# --------------------------------------------------------------------------- networks


class Generator(nn.Module):
    """gan_cifar.py's generator: z -> (C, size, size) in [-1, 1]."""

    def __init__(self, dim: int, latent: int, channels: int, size: int):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"WGAN-GP supports image sizes {SIZES}; got {size} (pad with adapt: {{size: 32}})")
        self.dim, self.size = dim, size
        self.fc = nn.Linear(latent, 4 * 4 * 4 * dim)
        self.bn0 = nn.BatchNorm1d(4 * 4 * 4 * dim)
        # kernel 5, stride 2, padding 2, output_padding 1 doubles the size ("SAME" transposed conv)
        self.up1 = nn.ConvTranspose2d(4 * dim, 2 * dim, 5, stride=2, padding=2, output_padding=1)
        self.bn1 = nn.BatchNorm2d(2 * dim)
        self.up2 = nn.ConvTranspose2d(2 * dim, dim, 5, stride=2, padding=2, output_padding=1)
        self.bn2 = nn.BatchNorm2d(dim)
        self.up3 = nn.ConvTranspose2d(dim, channels, 5, stride=2, padding=2, output_padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn0(self.fc(z))).view(len(z), 4 * self.dim, 4, 4)
        h = F.relu(self.bn1(self.up1(h)))  # 8x8
        if self.size == 28:
            h = h[:, :, :7, :7]  # gan_mnist.py: 8 -> 7, so that 7 -> 14 -> 28
        h = F.relu(self.bn2(self.up2(h)))
        return torch.tanh(self.up3(h))


class Critic(nn.Module):
    """gan_cifar.py's critic: three 5x5 stride-2 convolutions with LeakyReLU(0.2), no batch norm, linear to 1."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.dim = dim
        self.conv1 = nn.Conv2d(channels, dim, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(dim, 2 * dim, 5, stride=2, padding=2)
        self.conv3 = nn.Conv2d(2 * dim, 4 * dim, 5, stride=2, padding=2)
        self.fc = nn.Linear(4 * 4 * 4 * dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.leaky_relu(self.conv2(h), 0.2)
        h = F.leaky_relu(self.conv3(h), 0.2)  # (4*dim, 4, 4) for 32 and for 28
        return self.fc(h.flatten(1)).squeeze(1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """E[(||grad_x^ D(x^)||_2 - 1)^2] on x^ = alpha real + (1 - alpha) fake (alpha: (N, 1, 1, 1)); differentiable."""
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 255]) -> float in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 0..255: round((x + 1) * 127.5), clipped."""
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- the model


class WGANGP(Model):
    """WGAN-GP with the DCGAN-style networks of the paper's CIFAR-10 experiment; a sampler, no likelihood."""

    provides = ()

    def __init__(self, dim: int = _D.dim, latent: int = _D.latent, steps: int = _D.steps,
                 batch_size: int = _D.batch_size, n_critic: int = _D.n_critic, lam: float = _D.lam,
                 lr: float = _D.lr, betas: Sequence[float] = _D.betas, snapshot_every: int = _D.snapshot_every,
                 seed: int = _D.seed):
        super().__init__()
        self.dim, self.latent, self.steps, self.batch_size = int(dim), int(latent), int(steps), int(batch_size)
        self.n_critic, self.lam, self.lr = int(n_critic), float(lam), float(lr)
        self.betas = [float(b) for b in betas]
        self.snapshot_every, self.seed = int(snapshot_every), int(seed)
        if min(self.dim, self.latent, self.batch_size, self.n_critic) < 1 or self.steps < 0:
            raise ValueError("WGAN-GP needs dim, latent, batch_size, n_critic >= 1 and steps >= 0")
        if len(self.betas) != 2 or self.snapshot_every < 0:
            raise ValueError(f"WGAN-GP needs betas [b1, b2] and snapshot_every >= 0; got {betas}, {snapshot_every}")
        self.register_buffer("data_shape", torch.zeros(3, dtype=torch.long))  # (C, H, W); zeros = not built
        self.generator_net: Generator | None = None
        self.critic: Critic | None = None
        self.snapshot_dir: Path | None = None  # work_dir of the last fit (for sample(step=...))

    # ------------------------------------------------------------------ structure

    @property
    def built(self) -> bool:
        return self.generator_net is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data_shape.tolist())

    def _build(self, shape: Sequence[int]) -> None:
        c, h, w = (int(s) for s in shape)
        if h != w or h not in SIZES:
            raise ValueError(f"WGAN-GP supports square images of size {SIZES}; got [{c}, {h}, {w}] "
                             "(pad with the data set's adapt: {size: 32})")
        device = self.data_shape.device
        self.data_shape.copy_(torch.tensor([c, h, w]))
        self.generator_net = Generator(self.dim, self.latent, c, h).to(device)
        self.critic = Critic(self.dim, c).to(device)

    def _make_generator(self) -> Generator:
        c, h, _ = self.shape
        return Generator(self.dim, self.latent, c, h).to(self.data_shape.device)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Build the networks from the saved ``data_shape`` first when this model is not built yet."""
        shape = state_dict.get("data_shape")
        if not self.built and shape is not None and int(torch.as_tensor(shape).prod()) > 0:
            self._build(torch.as_tensor(shape).tolist())
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _check_built(self) -> None:
        if not self.built:
            raise RuntimeError("WGAN-GP is not built yet: call fit() or load_state_dict()")

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "WGAN-GP has no likelihood (provides = ()): it is an implicit model. Use it as a sampler, "
            "e.g. a data set {use: gan_samples, generator: <this model's alias>}, not in a bits/dim study.")

    # ------------------------------------------------------------------ snapshots

    @staticmethod
    def snapshots(work_dir: str | Path | None) -> list[tuple[int, Path]]:
        """The generator snapshots under ``work_dir/snapshots``: sorted (step, path)."""
        if work_dir is None:
            return []
        folder = Path(work_dir) / "snapshots"
        if not folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := SNAPSHOT_RE.match(p.name))]
        return sorted(found)

    @classmethod
    def snapshot_steps(cls, params: dict) -> list[int]:
        """The steps that a training run with these constructor ``params`` snapshots (for static checks)."""
        every = int(params.get("snapshot_every", _D.snapshot_every))
        steps = int(params.get("steps", _D.steps))
        return list(range(every, steps + 1, every)) if every > 0 else []

    def load_snapshot(self, step: int, work_dir: str | Path | None = None) -> Generator:
        """A generator network (eval mode, on this model's device) with the weights of snapshot ``step``."""
        self._check_built()
        work_dir = work_dir if work_dir is not None else self.snapshot_dir
        snaps = dict(self.snapshots(work_dir))
        if int(step) not in snaps:
            where = "no work folder known (pass work_dir=...)" if work_dir is None else f"{Path(work_dir) / 'snapshots'}"
            raise ValueError(f"WGAN-GP has no generator snapshot at step {step} ({where}); "
                             f"available steps: {sorted(snaps) or '(none: set snapshot_every > 0)'}")
        net = self._make_generator()
        net.load_state_dict(torch.load(snaps[int(step)], map_location=self.data_shape.device, weights_only=True))
        return net.eval()

    def _save_snapshot(self, work_dir: Path, step: int) -> None:
        state = {k: v.detach().cpu() for k, v in self.generator_net.state_dict().items()}
        atomic_write(work_dir / "snapshots" / f"step_{step:07d}.pt", lambda f: torch.save(state, f))

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, step: int | None = None,
               work_dir: str | Path | None = None, batch_size: int = 256) -> torch.Tensor:
        """``n`` samples, uint8 (n, C, H, W): z ~ N(0, I) drawn with ``generator`` (on its device), then moved here.

        ``step``: use the generator snapshot of that step (from ``work_dir``, default the last fit's) instead of
        the final weights. The generator's batch norm uses its running statistics (eval mode).
        """
        self._check_built()
        net = self.generator_net if step is None else self.load_snapshot(step, work_dir)
        was_training = net.training
        net.eval()
        device = self.data_shape.device
        gdev = generator.device if generator is not None else device
        z = torch.randn(int(n), self.latent, generator=generator, device=gdev).to(device)
        out = [to_uint8(net(z[i:i + batch_size])) for i in range(0, int(n), batch_size)]
        net.train(was_training)
        c, h, w = self.shape
        return torch.cat(out) if out else torch.zeros(0, c, h, w, dtype=torch.uint8, device=device)

    # ------------------------------------------------------------------ training

    def _meta(self, data: Split, seed: int) -> dict:
        params = get_params(self)
        params["betas"] = list(params["betas"])
        return {"params": params, "shape": list(data.images.shape), "fingerprint": data.fingerprint, "seed": seed}

    def fit(self, data: Split, ctx: TrainContext) -> "WGANGP":
        """Algorithm 1 of the paper: ``n_critic`` critic steps (WGAN loss + gradient penalty), then one generator step."""
        shape = list(data.images.shape[1:])
        if self.built and tuple(shape) != self.shape:
            raise ValueError(f"WGAN-GP was built for images {list(self.shape)}; got {shape}")
        if len(data) == 0:
            raise ValueError("WGAN-GP cannot train on an empty split")
        device = torch.device(ctx.device)
        seed = int(np.random.SeedSequence([int(ctx.seed), self.seed]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)  # CPU: every random draw of training, same on every device
        with torch.random.fork_rng(devices=[]):  # fresh, seeded initialisation (PyTorch defaults), built on CPU
            torch.manual_seed(seed)
            self.data_shape.zero_()
            self.generator_net = self.critic = None
            self.to("cpu")
            self._build(shape)
        self.to(device)
        G, D = self.generator_net, self.critic
        opt_g = torch.optim.Adam(G.parameters(), lr=self.lr, betas=tuple(self.betas))
        opt_d = torch.optim.Adam(D.parameters(), lr=self.lr, betas=tuple(self.betas))
        images = torch.from_numpy(np.ascontiguousarray(data.images)).to(device)
        n, bs = len(images), min(self.batch_size, len(images))
        work_dir = Path(ctx.work_dir) if ctx.work_dir is not None else None
        self.snapshot_dir = work_dir
        meta = self._meta(data, seed)
        start, perm, pos = 0, torch.randperm(n, generator=gen), 0
        resume = self._load_resume(work_dir, meta)
        if resume is not None:
            G.load_state_dict(resume["G"])
            D.load_state_dict(resume["D"])
            opt_g.load_state_dict(resume["opt_g"])
            opt_d.load_state_dict(resume["opt_d"])
            gen.set_state(resume["rng"])
            start, perm, pos = int(resume["step"]), resume["perm"], int(resume["pos"])
            ctx.curve.extend(resume["curve"])
            print(f"wgan-gp: resuming from step {start} of {self.steps} ({work_dir / 'resume.pt'})", file=sys.stderr)

        def real_batch() -> torch.Tensor:
            nonlocal perm, pos
            if pos + bs > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos:pos + bs]
            pos += bs
            return to_unit(images[idx.to(device)])

        def noise(m: int) -> torch.Tensor:
            return torch.randn(m, self.latent, generator=gen).to(device)

        log_every = max(1, self.steps // 100)
        save_every = max(1, self.steps // 20)
        window: dict[str, list[float]] = {"critic_loss": [], "wasserstein": [], "gp": [], "gen_loss": []}
        running, last_save = None, time.monotonic()
        self.train()
        bar = tqdm(range(start, self.steps), desc="wgan-gp", file=sys.stderr, disable=not ctx.progress,
                   leave=False, initial=start, total=self.steps)
        for step in bar:
            # --- critic: n_critic steps on D(fake) - D(real) + lam * GP
            D.requires_grad_(True)
            for _ in range(self.n_critic):
                real = real_batch()
                with torch.no_grad():
                    fake = G(noise(bs))
                alpha = torch.rand(bs, 1, 1, 1, generator=gen).to(device)
                d_real, d_fake = D(real).mean(), D(fake).mean()
                gp = gradient_penalty(D, real, fake, alpha)
                loss_d = d_fake - d_real + self.lam * gp
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                c = loss_d.item()
                window["critic_loss"].append(c)
                window["wasserstein"].append((d_real - d_fake).item())
                window["gp"].append(gp.item())
                running = c if running is None else 0.95 * running + 0.05 * c
            # --- generator: one step on -D(G(z))
            D.requires_grad_(False)
            loss_g = -D(G(noise(bs))).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            window["gen_loss"].append(loss_g.item())
            done = step + 1
            if step % 10 == 0 or done == self.steps:
                bar.set_postfix(critic=f"{running:.3f}")
            if done % log_every == 0 or done == self.steps:
                ctx.log(step=done, **{k: float(np.mean(v)) for k, v in window.items()})
                window = {k: [] for k in window}
            if work_dir is not None:
                if self.snapshot_every and done % self.snapshot_every == 0:
                    self._save_snapshot(work_dir, done)
                if done < self.steps and (done % save_every == 0 or time.monotonic() - last_save > 600):
                    self._save_resume(work_dir, meta, done, opt_g, opt_d, gen, perm, pos, ctx.curve)
                    last_save = time.monotonic()
        bar.close()
        D.requires_grad_(True)
        if work_dir is not None and (work_dir / "resume.pt").exists():
            (work_dir / "resume.pt").unlink()  # the runner keeps the final checkpoint
        self.eval()
        return self

    def _save_resume(self, work_dir: Path, meta: dict, step: int, opt_g, opt_d, gen: torch.Generator,
                     perm: torch.Tensor, pos: int, curve: list) -> None:
        state = {"meta": meta, "step": step, "G": self.generator_net.state_dict(), "D": self.critic.state_dict(),
                 "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "rng": gen.get_state(),
                 "perm": perm, "pos": pos, "curve": list(curve)}
        atomic_write(work_dir / "resume.pt", lambda f: torch.save(state, f))

    def _load_resume(self, work_dir: Path | None, meta: dict) -> dict | None:
        path = None if work_dir is None else work_dir / "resume.pt"
        if path is None or not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - an unreadable state is ignored, training starts over
            print(f"wgan-gp: ignoring unreadable {path} ({type(e).__name__}: {e})", file=sys.stderr)
            return None
        if state.get("meta") != meta:
            print(f"wgan-gp: ignoring {path}: it belongs to another configuration or data", file=sys.stderr)
            return None
        return state


@hookimpl
def register_models():
    return {"wgan-gp": WGANGP}
