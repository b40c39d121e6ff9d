"""torchrun-aware process setup: DDP over NCCL on GPUs, gloo on the CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from peft_bench.config import Device
from peft_bench.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: Device | str, local_rank: int = 0) -> torch.device:
    requested = Device(requested)
    if requested is Device.auto:
        requested = Device.cuda if torch.cuda.is_available() else Device.cpu
    if requested is Device.cpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            "trainer.device=cuda was asked for, but no CUDA device is visible. Use trainer.device=cpu."
        )
    return torch.device("cuda", local_rank)


def init_distributed(requested_device: Device | str) -> DistInfo:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world_size, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_to_main(items: list) -> list | None:
    """Every process's `items`, concatenated in rank order, on rank 0 (None elsewhere); this
    process's own when not distributed."""
    if not _distributed():
        return items
    parts: list[list] | None = [[] for _ in range(dist.get_world_size())] if dist.get_rank() == 0 else None
    dist.gather_object(items, parts, dst=0)
    return None if parts is None else [item for part in parts for item in part]


def gather_in_sample_order(items: list) -> list | None:
    """Every process's per-sample `items` of a `ShardSampler` evaluation, on rank 0 in the dataset's
    order (None elsewhere): rank r's j-th item is sample r + j * world size. This process's own when
    not distributed."""
    if not _distributed():
        return items
    world = dist.get_world_size()
    parts: list[list] | None = [[] for _ in range(world)] if dist.get_rank() == 0 else None
    dist.gather_object(items, parts, dst=0)
    if parts is None:
        return None
    ordered: list = [None] * sum(map(len, parts))
    for rank, part in enumerate(parts):
        ordered[rank::world] = part
    return ordered


def broadcast_object(obj: T) -> T:
    """Rank 0's value of `obj` on every rank; `obj` itself when not distributed."""
    if not _distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardSampler(Sampler[int]):
    """Evaluation sharding without padding: rank r takes indices r, r+W, r+2W, ...

    `DistributedSampler` pads the last shard with repeated samples, which would count them twice
    in a metric; metrics here sync their states across ranks instead.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
