"""``gan_samples``: images drawn from a generative model trained in the same suite.

``gan_samples(generator=<model alias>, n=1000, seed=0, step=None)`` asks the run for the
model ``generator`` (training it if no cache entry has it), then draws ``n`` samples with
its ``sample(n, generator=torch.Generator)`` method. Any model with such a method works
(``wgan-gp``, ``made``, ...); ``step`` (a generator snapshot of that training step, kept
by models with ``snapshot_every``) needs a model that keeps snapshots (``wgan-gp``).

Determinism: the noise comes from a CPU ``torch.Generator`` seeded by (``seed``, CRC-32
of the split name), so ``train`` and ``test`` are different draws, and the model runs on
a CPU copy, so the images -- and hence the data fingerprint that score-cache keys use --
do not depend on the run's device.
"""
from __future__ import annotations

import copy
import zlib
from typing import ClassVar, Iterator

import numpy as np
import torch

from benchbench import Dataset, Split, hookimpl
from benchbench.registry import unknown


class GANSamples(Dataset):
    """``n`` samples of the suite's model ``generator`` (its final weights, or its snapshot at ``step``)."""

    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def __init__(self, generator: str, n: int = 1000, seed: int = 0, step: int | None = None):
        self.generator = generator
        self.n = n
        self.seed = seed
        self.step = step

    def check(self, suite) -> Iterator[tuple[str, str]]:
        """Static checks: ``generator`` is a model of the suite that can sample; ``step`` is one it snapshots."""
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            yield "n", f"must be a positive integer, got {self.n!r}"
        if self.step is not None and (not isinstance(self.step, int) or isinstance(self.step, bool) or self.step < 1):
            yield "step", f"must be a positive integer (a generator step) or null, got {self.step!r}"
            return
        if self.generator not in suite.models:
            yield "generator", unknown("model", self.generator, suite.models)
            return
        spec = suite.models[self.generator]
        factory = suite.factory(spec)
        if not callable(getattr(factory, "sample", None)):
            yield "generator", f"model {self.generator!r} ({spec.use}) has no sample() method: it cannot generate images"
            return
        if self.step is not None:
            planned = getattr(factory, "snapshot_steps", None)
            if not callable(planned):
                yield "step", f"model {self.generator!r} ({spec.use}) keeps no training snapshots; drop 'step'"
            elif self.step not in (steps := planned(spec.params)):
                shown = f"{steps[:5]} ... {steps[-3:]}" if len(steps) > 8 else str(steps)
                yield "step", (f"model {self.generator!r} snapshots no step {self.step}; it snapshots {shown}"
                               if steps else f"model {self.generator!r} keeps no snapshots: set its snapshot_every")

    def load(self, split: str, ctx) -> Split:
        self._check_split(split)
        model = ctx.model(self.generator)
        if not callable(getattr(model, "sample", None)):
            raise TypeError(f"model {self.generator!r} ({type(model).__name__}) has no sample() method")
        cpu = copy.deepcopy(model).cpu().eval()  # device-independent images
        seed = int(np.random.SeedSequence([int(self.seed), zlib.crc32(split.encode())]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        if self.step is None:
            x = cpu.sample(int(self.n), generator=gen)
        else:
            if not callable(getattr(cpu, "snapshots", None)):
                raise TypeError(f"model {self.generator!r} ({type(model).__name__}) keeps no training snapshots")
            work_dir = ctx.work_dir(self.generator)
            steps = [s for s, _ in cpu.snapshots(work_dir)]
            if int(self.step) not in steps:
                raise ValueError(f"model {self.generator!r} has no generator snapshot at step {self.step} in "
                                 f"{work_dir / 'snapshots'}; available steps: {steps or '(none)'}")
            x = cpu.sample(int(self.n), generator=gen, step=int(self.step), work_dir=work_dir)
        images = np.ascontiguousarray(torch.as_tensor(x).cpu().numpy().astype(np.uint8, copy=False))
        return Split(images, None, source=f"gan_samples of {self.generator} step {self.step or 'final'}, "
                                          f"seed {self.seed}, split {split}")


@hookimpl
def register_datasets():
    return {"gan_samples": GANSamples}
