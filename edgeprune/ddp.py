"""Process-group helpers the training loop uses (rank, world size, shards, DDP wrapping).

Invariants: every process of a run draws the same index permutation per epoch (a generator
seeded only by ``seed`` and the epoch) and takes the slice ``order[rank::world]``, so the ranks'
shards partition the data set and each rank runs the same number of steps; outside a process
group every function answers as a single process (rank 0 of 1). This module imports nothing
from the rest of edgeprune but ``errors``, so ``train`` and the torchrun entry point
(``edgeprune.distributed``) both use it without an import cycle.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from edgeprune.errors import UserInputError

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_MASK = (1 << 64) - 1


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def init_from_env() -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; returns (rank, world size)."""
    missing = [k for k in _ENV if not os.environ.get(k)]
    if missing:
        raise UserInputError(f"not started by torchrun: {', '.join(missing)} unset",
                             "run: torchrun --nproc_per_node=N -m edgeprune.distributed finetune ...")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return rank(), world_size()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def epoch_shard(n: int, seed: int, epoch: int, rank_: int, world: int) -> torch.Tensor:
    """This rank's indices for ``epoch``: a slice of a permutation every rank draws identically."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen)[rank_::world]


def shard_plan_size(n: int, world: int) -> int:
    """The smallest shard's size: steps are planned on it so every rank runs the same number."""
    return n // world


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in DistributedDataParallel (device ids only for a CUDA model)."""
    first = next(model.parameters(), None)
    ids = [first.device.index] if first is not None and first.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def fingerprint(indices) -> int:
    """An order-free 64-bit digest of a multiset of indices: fp(A + B) = fp(A) + fp(B) mod 2**64."""
    x = np.asarray(indices, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return int(x.sum(dtype=np.uint64)) & _MASK


def param_checksum(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) over every parameter and buffer, in state_dict order."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
