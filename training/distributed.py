"""One process, or many under ``torchrun``: process group, device, sampler, reductions.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process joins a group with
the NCCL backend on CUDA and gloo on CPU; each rank takes ``cuda:LOCAL_RANK`` or the CPU.
Evaluation results are gathered from every rank (:func:`gather`) so that metrics are computed
once over the whole split, never averaged per rank; the copies a ``DistributedSampler`` adds to
even out the ranks are removed by case name.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands.

    Attributes:
        rank, world_size, local_rank: as torchrun sets them (0, 1, 0 for one process).
        device: this rank's device. backend: ``nccl``/``gloo`` or ``None`` without a group.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this rank's GPU) when available, else CPU; or the device named."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(requested_device: str = "auto") -> DistInfo:
    """Join torchrun's process group when there is one; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def cleanup() -> None:
    """Leave the process group: drain pending work, free what holds it, then destroy it.

    The order matters: a gloo group destroyed while a collective's tensors are still being
    released, or later freed by a DistributedDataParallel reducer at interpreter exit, can join
    its worker thread while that thread waits for the GIL the joining thread holds (a deadlock
    seen here). A barrier first lets every pending collective finish.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            gc.collect()
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def gather(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (pickled), in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_records(info: DistInfo, records: list[dict], key: str = "name") -> list[dict]:
    """Per-case records of all ranks, each case once (first copy kept), sorted by ``key``."""
    seen: dict[str, dict] = {}
    for part in gather(info, records):
        for record in part:
            seen.setdefault(record[key], record)
    return [seen[k] for k in sorted(seen)]


def broadcast(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(info: DistInfo, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks."""
    if not info.distributed:
        return list(values)
    tensor = torch.tensor(
        values, dtype=torch.float64, device=info.device if info.backend == "nccl" else "cpu"
    )
    dist.all_reduce(tensor)
    return tensor.tolist()


def on_main(info: DistInfo, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` on rank 0 only, and let every rank know whether it failed.

    Without this, an error in a rank-0-only step (writing a file, say) leaves the other ranks
    waiting at their next collective until the process group times out. Here rank 0 re-raises
    its error and the other ranks raise a ``RuntimeError`` naming it. Returns ``fn``'s result on
    rank 0, ``None`` elsewhere.
    """
    error: BaseException | None = None
    result = None
    if info.is_main:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # re-raised below, after the other ranks are told
            error = exc
    if info.distributed:
        message = broadcast(info, None if error is None else f"{type(error).__name__}: {error}")
        if message is not None and error is None:
            raise RuntimeError(f"rank 0 failed: {message}")
    if error is not None:
        raise error
    return result
