"""torch.distributed support: runs launched by ``torchrun`` (and so by Slurm / Kubernetes wrappers).

``torchrun --nproc-per-node N -m benchbench run SUITE`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`init` joins the process group
(``nccl`` on CUDA devices, ``gloo`` on CPUs). Then:

* **training** runs under DistributedDataParallel: every rank draws the same global
  minibatch of ``batch_size x world_size`` indices from the suite seed and trains on
  its own contiguous part (``TrainContext.shard``); gradients are averaged by DDP, so
  the update equals a single process with the global batch. Only rank 0 writes
  checkpoints and resumable state; the others wait and read.
* **scoring** is sharded: rank r scores the r-th contiguous slice of the data set,
  cut at multiples of the evaluation batch size (so every batch holds the same images
  as in one process); the slices are gathered back in the original order, so per-sample
  scores are the same as in one process, bit for bit.
* rank 0 alone writes the cache and the leaderboard.

Seeds: data order comes from the suite seed on every rank; anything random inside a
rank (dropout) is seeded with ``seed + rank``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: rank, world size, local rank (1 process: 0, 1, 0)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_env() -> DistInfo:
    """The rank layout torchrun put in the environment (a single process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(rank=int(os.environ.get("RANK", "0")), world_size=world,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun; return the layout."""
    info = from_env()
    if info.enabled:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
    return info


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_bounds(n: int, rank: int, world_size: int, align: int = 1) -> tuple[int, int]:
    """The contiguous slice [start, stop) of n items that ``rank`` handles.

    The items are cut into blocks of ``align`` (the last may be short) and the blocks are
    shared out contiguously, counts differing by at most one block. Scoring aligns shards to
    the evaluation batch size, so every batch holds the same images as in one process and the
    per-sample scores are bit-for-bit the same.
    """
    blocks = -(-n // align) if n else 0
    base, extra = divmod(blocks, world_size)
    first = rank * base + min(rank, extra)
    last = first + base + (1 if rank < extra else 0)
    return min(first * align, n), min(last * align, n)


def gather_arrays(info: DistInfo, local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate every rank's arrays in rank order (so contiguous shards come back in data order)."""
    if not info.enabled:
        return local
    import torch.distributed as dist

    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, local)
    names = next((list(p) for p in parts if p), [])  # a rank with an empty shard sends {}
    return {k: np.concatenate([p[k] for p in parts if p]) for k in names}


def data_parallel(info: DistInfo, module, device) -> Any:
    """``module`` wrapped in DistributedDataParallel when the run is distributed, else itself."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = getattr(device, "type", str(device))
    # buffers are not broadcast: benchbench's models keep none that training changes across ranks
    # (MADE swaps its mask buffers per step identically on every rank)
    return DDP(module, device_ids=[info.local_rank] if dev == "cuda" else None, broadcast_buffers=False)


def all_reduce_gradients(info: DistInfo, grads: list, average: bool = False) -> list:
    """Sum (or average) a list of gradient tensors over the ranks, in one flattened all-reduce.

    For models whose training loop computes gradients with ``torch.autograd.grad`` rather than
    ``backward()`` (which DistributedDataParallel hooks into): the same reduction DDP performs.
    """
    if not info.enabled or not grads:
        return grads
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    flat = _flatten_dense_tensors([g.contiguous() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if average:
        flat /= info.world_size
    return [t.view_as(g) for t, g in zip(_unflatten_dense_tensors(flat, grads), grads)]
