"""Process setup for DDP: over NCCL on GPUs, gloo on the CPU, launched by torchrun or by SLURM's srun.

Objects (evaluation records, metrics, RNG states) and barriers travel over a gloo group on the CPU
even when the tensors go over NCCL: a rank that waits there while rank 0 scores an evaluation (COCO's
takes minutes) is outside NCCL's watchdog, whose timeout would otherwise end the run.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from peft_bench.config import Device
from peft_bench.errors import UserError

T = TypeVar("T")

# How long a rank waits in an object collective or barrier: rank 0's scoring of a whole test set.
OBJECT_TIMEOUT = timedelta(hours=2)
_objects: dist.ProcessGroup | None = None  # the gloo group of objects and barriers (None: the default)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device
    local_world_size: int = 1  # the processes on this node

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class Launch:
    """Where this process stands among the processes its launcher started."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1


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


def slurm_root_node(nodelist: str) -> str:
    """The first host of a SLURM node list (`gpu[03-05,09],cpu1` -> `gpu03`), as Lightning's
    `SLURMEnvironment` resolves the main address."""
    first = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?", nodelist)
    prefix, ranges = first.group(1), first.group(2)
    return prefix + re.split(r"[-,]", ranges)[0] if ranges else prefix


def launch_from_environment(environ: dict[str, str] | os._Environ = os.environ) -> Launch:
    """torchrun's variables where they are set; else, in a SLURM step of several tasks (each task an
    srun process), SLURM's, with the main address and port that torchrun would have been given derived
    from the job (as Lightning and submitit do) and exported for `init_process_group`; else one
    process. A batch script or an allocation's shell is no step: a process started there is one run."""
    if "WORLD_SIZE" in environ:
        world_size = int(environ["WORLD_SIZE"])
        return Launch(
            int(environ.get("RANK", "0")),
            world_size,
            int(environ.get("LOCAL_RANK", "0")),
            int(environ.get("LOCAL_WORLD_SIZE", str(world_size))),
        )
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS", "1"))
    if tasks <= 1:
        return Launch()
    environ.setdefault(
        "MASTER_ADDR", slurm_root_node(environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"])
    )
    environ.setdefault("MASTER_PORT", str(15000 + int(environ["SLURM_JOB_ID"][-4:])))
    per_node = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE", "1")
    local_tasks = int(re.match(r"\d+", per_node).group())
    return Launch(int(environ["SLURM_PROCID"]), tasks, int(environ.get("SLURM_LOCALID", "0")), local_tasks)


def init_distributed(requested_device: Device | str) -> DistInfo:
    """Join the process group that torchrun or srun describes in the environment, if any."""
    global _objects
    launch = launch_from_environment()
    device = resolve_device(requested_device, launch.local_rank)
    if launch.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend=backend, init_method="env://", rank=launch.rank, world_size=launch.world_size
        )
        if backend == "nccl":
            _objects = dist.new_group(backend="gloo", timeout=OBJECT_TIMEOUT)
    return DistInfo(launch.rank, launch.world_size, device, launch.local_world_size)


def shutdown_distributed() -> None:
    global _objects
    if dist.is_initialized():
        dist.destroy_process_group()
    _objects = None


def cpus_per_process(local_processes: int) -> int:
    """The CPUs this process may use for itself: SLURM's per-task CPUs where SLURM set them (a task's
    affinity is its own), else this process's affinity shared among the processes of its node."""
    if "SLURM_CPUS_PER_TASK" in os.environ:
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, available // local_processes)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_to_main(items: list) -> list | None:
    """Every process's `items`, concatenated in rank order, on rank 0 (None elsewhere); this
    process's own when not distributed."""
    if not _distributed():
        return items
    parts: list[list] | None = [[] for _ in range(dist.get_world_size())] if dist.get_rank() == 0 else None
    dist.gather_object(items, parts, dst=0, group=_objects)
    return None if parts is None else [item for part in parts for item in part]


def gather_in_sample_order(items: list) -> list | None:
    """Every process's per-sample `items` of a `ShardSampler` evaluation, on rank 0 in the dataset's
    order (None elsewhere): rank r's j-th item is sample r + j * world size. This process's own when
    not distributed."""
    if not _distributed():
        return items
    world = dist.get_world_size()
    parts: list[list] | None = [[] for _ in range(world)] if dist.get_rank() == 0 else None
    dist.gather_object(items, parts, dst=0, group=_objects)
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
    dist.broadcast_object_list(box, src=0, group=_objects)
    return box[0]


def barrier() -> None:
    """Wait for every process (over the object group: no NCCL watchdog on a long wait)."""
    if _distributed():
        dist.barrier(group=_objects)


def check_shared_directory(directory: Path) -> None:
    """Refuse a run folder that some process cannot see: rank 0 writes the checkpoints and every rank
    resumes from them. Rank 0 leaves a marker there, and every process looks for it."""
    if not _distributed():
        return
    marker = directory / f".shared-{broadcast_object(secrets.token_hex(8))}"
    if dist.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        marker.touch()
    barrier()
    seen: list[tuple[bool, str]] = [(False, "")] * dist.get_world_size()
    dist.all_gather_object(seen, (marker.exists(), socket.gethostname()), group=_objects)
    barrier()
    if dist.get_rank() == 0:
        marker.unlink()
    blind = [f"rank {rank} ({host})" for rank, (sees, host) in enumerate(seen) if not sees]
    if blind:
        raise UserError(
            f"The run folder {directory} is not visible to {', '.join(blind)}: rank 0 writes the run's "
            "checkpoints and every process reads them to resume. Put paths.results_dir on a file system "
            "that every node mounts at the same path."
        )


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
