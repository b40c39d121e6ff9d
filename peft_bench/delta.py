"""Delta checkpoints: a tuned model saved as only what tuning changed.

The file (safetensors) holds the trainable tensors and persistent buffers of the task model and,
in its metadata, a fingerprint of the *base* backbone it was tuned from. Loading onto another
backbone is refused: adapters tuned on one set of weights mean nothing on another.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save

from peft_bench.engine.checkpoint import load_trainable_state, trainable_state
from peft_bench.errors import UserError
from peft_bench.results.atomic import write_atomic


def backbone_fingerprint(backbone: torch.nn.Module) -> str:
    """A hash of the backbone's names, shapes and values: equal iff the base weights are equal.

    Compute it before tuning (Full changes the weights; LoRA merges into them).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def serialized_delta(
    model: torch.nn.Module, fingerprint: str = "", info: dict[str, Any] | None = None
) -> bytes:
    """The model's trainable state as a safetensors file, with the base fingerprint and `info`."""
    tensors = {k: v.contiguous() for k, v in trainable_state(model).items()}
    metadata = {"base_fingerprint": fingerprint, "info": json.dumps(info or {}, sort_keys=True, default=str)}
    return save(tensors, metadata=metadata)


def save_delta(path: Path, model: torch.nn.Module, fingerprint: str, info: dict[str, Any]) -> None:
    """Atomically write the model's delta (`serialized_delta`)."""
    data = serialized_delta(model, fingerprint, info)
    write_atomic(path, lambda f: f.write(data))


def read_delta_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_delta(path: Path, model: torch.nn.Module, fingerprint: str) -> None:
    """Load a delta onto `model`, whose base backbone must have the fingerprint it was tuned from."""
    if not Path(path).exists():
        raise UserError(f"No delta checkpoint at {path}.")
    saved = read_delta_metadata(path).get("base_fingerprint")
    if saved != fingerprint:
        raise UserError(
            f"The delta checkpoint {path} was tuned from a backbone with fingerprint {saved}, but this "
            f"backbone's fingerprint is {fingerprint}: the base weights differ (another size, or other "
            "pretrained weights). Build the backbone with the same backbone.name and backbone.weights."
        )
    try:
        load_trainable_state(model, load_file(str(path)))
    except RuntimeError as error:
        raise UserError(
            f"The delta checkpoint {path} does not fit this model ({error}): same method and task?"
        ) from None
