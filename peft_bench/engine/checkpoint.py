"""Training checkpoints that hold what trains, never the frozen backbone.

A checkpoint is the trainable tensors and every persistent buffer (heads may have BatchNorm
statistics), the optimiser, scheduler and grad-scaler state, the RNG states and the loop's
progress. Written atomically, so a run killed at any moment resumes from the last complete one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from peft_bench.results.atomic import write_atomic


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that training changes: trainable parameters and persistent buffers."""
    state = model.state_dict()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    params = {name for name, _ in model.named_parameters()}
    return {k: v.detach().clone() for k, v in state.items() if k in trainable or k not in params}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a `trainable_state`; every key must belong to the model."""
    missing_ok = set(model.state_dict()) - set(state)
    result = model.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    wrongly_missing = [k for k in result.missing_keys if k not in missing_ok]
    if unexpected or wrongly_missing:
        raise RuntimeError(
            f"checkpoint does not fit the model: unexpected {unexpected[:5]}, missing {wrongly_missing[:5]}"
        )


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's generators: the CPU's, numpy's, Python's and its own CUDA device's."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def rank_rng_state(saved: list[dict[str, Any]] | dict[str, Any], rank: int) -> dict[str, Any] | None:
    """The generators that process `rank` saved: checkpoints hold one state per process (older ones a
    single state, rank 0's). None for a process the saved run did not have: it keeps its own seed."""
    states = saved if isinstance(saved, list) else [saved]
    return states[rank] if rank < len(states) else None


def set_rng_state(state: dict[str, Any] | None, device: torch.device) -> None:
    """Restore `rng_state`'s generators (nothing for None). A CUDA state goes to this process's device;
    an older checkpoint's list of every visible device's gives the one of the same index, if any."""
    if state is None:
        return
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):
        cuda = cuda[device.index] if device.type == "cuda" and device.index < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def save_checkpoint(path: Path, **state: Any) -> None:
    """Atomically save a dict of tensors, state dicts and plain values."""
    write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    # RNG states hold numpy arrays and tuples: not loadable with weights_only. These files are
    # written by this run itself, in its own results folder.
    return torch.load(path, map_location="cpu", weights_only=False)
