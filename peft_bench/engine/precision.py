"""Numeric precision of training and evaluation: `trainer.precision`, resolved on the run's device.

`auto` is bf16 autocast where the GPU computes bf16 natively (Ampere and later), else fp16 autocast
with a dynamic loss scale (V100, T4: their bf16 is emulated, slow), and fp32 on the CPU. Heads
whose losses or box decoding need the range keep those parts in fp32 under autocast
(`peft_bench.models.fp32`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from peft_bench.config import Precision
from peft_bench.errors import UserError

DTYPES = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}
Autocast = Callable[[], contextlib.AbstractContextManager]


def native_bf16(device: torch.device) -> bool:
    """Whether the CUDA device computes bf16 itself (emulation does not count)."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(requested: Precision | str, device: torch.device) -> Precision:
    """The precision a run on `device` uses: `auto` resolved, an impossible request a user error."""
    requested = Precision(requested)
    if device.type != "cuda":
        if requested is Precision.fp16:
            raise UserError(
                "trainer.precision=fp16 needs a CUDA device (its loss scaling is CUDA's): use "
                "trainer.precision=fp32 (or bf16, which the CPU autocasts) on the CPU."
            )
        return Precision.fp32 if requested is Precision.auto else requested
    if requested is Precision.auto:
        return Precision.bf16 if native_bf16(device) else Precision.fp16
    if requested is Precision.bf16 and not native_bf16(device):
        raise UserError(
            f"trainer.precision=bf16: {torch.cuda.get_device_name(device)} has no native bf16 (it would be "
            "emulated, slowly). Use trainer.precision=fp16 (or auto, which picks it) or fp32."
        )
    return requested


def autocast(device: torch.device, precision: Precision) -> Autocast:
    """A context-manager factory: autocast to the precision's dtype on `device` (none for fp32)."""
    if precision is Precision.fp32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """A dynamic loss scale for fp16 (its gradients underflow without one); disabled otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision is Precision.fp16)
