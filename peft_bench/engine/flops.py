"""What a model computes per step: the FLOPs of a training step (forward and backward) and of
inference, counted by torch's `FlopCounterMode`, and an estimate of the bytes its ops move.

FLOPs (a multiply-add is 2) are those of the ops `torch.utils.flop_counter` has formulas for: matmuls
(`mm`, `addmm`, `bmm`, `baddbmm`), convolutions (forward and `convolution_backward`, which skips the
weight gradient of a frozen weight) and fused attention (SDPA's CUDA kernels), plus `EXTRA_FORMULAS`
for those it lacks or miscounts that the models run: SDPA's CPU kernel (so a ViT counts the same on
the CPU as on CUDA), matrix-vector products, and a grouped convolution's weight gradient (torch counts
it as ungrouped). An attention written as matmuls (timm's Swin) counts as its
`bmm`s: 2x forward in its backward, where a fused kernel's formula counts 2.5x (it recomputes the
scores). Everything else counts zero: elementwise ops, norms, softmax, activations, pooling, the
loss, the optimiser's update, data movement. The backward is what autograd runs: a trainable
weight's matmul costs 2x its forward (input and weight gradients), a frozen one's 1x (the input
gradient) where a gradient must pass it, and nothing runs upstream of the first tensor that needs one
(Fixed's backward is its head's).
Inference is counted as evaluation runs it: `predict` with every mergeable update merged
(`peft_bench.layers.merge.merged`: LoRA, DoRA and SSF cost the plain model's matmuls there), the
merge itself not counted.

Bytes moved are an estimate, not a measurement: for every op that runs (views excluded), the bytes
of its tensor inputs and outputs, as if each op read its inputs from and wrote its outputs to memory
(unfused, no cache reuse). It is what eager mode's elementwise ops roughly move on a GPU, where a
memory-bound method's extra ops (SSF's scale-and-shifts, DoRA's norms, Mona's depthwise convs) cost
their bytes rather than their FLOPs; it overestimates what stays in cache (small tensors on a CPU)
and what a fused kernel keeps on chip, and it leaves out the optimiser's update (AdamW reads and
writes about 7 fp32 tensors per trainable parameter), as the FLOPs do.

Counting runs one forward and backward on a deep copy of the model, so the model's parameters,
buffers (BatchNorm's running statistics) and gradients stay as they were, under a fixed seed, with
every generator (torch's CPU and the device's, numpy's, Python's) restored afterwards: the run that
counts draws exactly what it would have drawn without counting. Counts are shape-driven: for a given
batch they do not depend on the weights, except where a head's shapes follow its predictions (a
two-stage detector's proposals and detections, which the counted batch at those weights decides).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.data import Dataset, default_collate
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_flop_count,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from peft_bench.data.base import TaskData
from peft_bench.engine.checkpoint import rng_state, set_rng_state
from peft_bench.engine.contract import TaskModel
from peft_bench.engine.step_memory import saved_activations, step_memory
from peft_bench.engine.trainer import to_device
from peft_bench.layers.merge import merged

COUNTER = "torch.utils.flop_counter.FlopCounterMode"
COUNT_SEED = 0  # the generators' seed while counting (dropout, drop path, a detector's sampling)


@dataclass(frozen=True)
class Flops:
    """One training step's forward and backward over `train_images` images, and inference over
    `infer_images` (None: no evaluation split to count on); FLOPs and estimated bytes moved."""

    forward: int
    backward: int
    train_bytes: int
    train_images: int
    inference: int | None = None
    infer_bytes: int | None = None
    infer_images: int = 0
    step_memory: int | None = None  # bytes the training step holds (`engine.step_memory`)

    @property
    def train(self) -> int:
        return self.forward + self.backward

    def record(self, batch: int) -> dict[str, Any]:
        """The run record's `flops`: per image, and per optimiser step of the run's global `batch`."""
        per_image = self.train / self.train_images
        infer = None if self.inference is None else self.inference / self.infer_images
        infer_bytes = None if self.infer_bytes is None else self.infer_bytes / self.infer_images
        return {
            "train_step": per_image * batch,
            "train_per_image": per_image,
            "forward_per_image": self.forward / self.train_images,
            "backward_per_image": self.backward / self.train_images,
            "infer_per_image": infer,
            "train_bytes_per_image": self.train_bytes / self.train_images,
            "infer_bytes_per_image": infer_bytes,
            # Of the counted training batch (counted_images.train), the per-device batch: not per image,
            # as the weights and optimiser state are not.
            "step_memory_bytes": self.step_memory,
            "batch": batch,
            "counted_images": {"train": self.train_images, "infer": self.infer_images},
            "counter": COUNTER,
        }


class BytesMoved(TorchDispatchMode):
    """Sums, over the ops that run inside it, the bytes of their tensor inputs and outputs. Ops that
    move nothing are left out: views, and ops whose every output shares an input's storage without
    writing to it (`_unsafe_view`, `alias`). A broadcast operand (a stride of 0) counts its distinct
    elements once."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        inputs = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        shared = {_storage(t) for t in inputs}
        if outputs and not func._schema.is_mutable and all(_storage(t) in shared for t in outputs):
            return out
        self.bytes += sum(footprint(t) for t in inputs + outputs)
        return out


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def footprint(tensor: torch.Tensor) -> int:
    """The bytes of the distinct elements `tensor` addresses."""
    elements = 1
    for size, stride in zip(tensor.shape, tensor.stride(), strict=True):
        if stride:
            elements *= size
    return elements * tensor.element_size()


def _cpu_attention(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(
    grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _mv(mat_shape: Any, vec_shape: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * mat_shape[0] * mat_shape[1]


def _addmv(self_shape: Any, mat_shape: Any, vec_shape: Any, *args: Any, **kwargs: Any) -> int:
    return _mv(mat_shape, vec_shape)


def _conv_backward(
    grad_out_shape: Any,
    x_shape: Any,
    w_shape: Any,
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: Any,
    *args: Any,
    **kwargs: Any,
) -> int:
    """Each gradient a convolution's backward computes (input's, weight's) costs its forward. torch's
    formula counts the weight gradient as if ungrouped: a depthwise conv's C times too many."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)  # w_shape: C_in / groups
    return forward * (int(output_mask[0]) + int(output_mask[1]))


# Formulas FlopCounterMode lacks or gets wrong, for ops the models run: the CPU's fused attention (a
# ViT's SDPA on the CPU; on CUDA its kernels are counted by torch's own formulas, the same count),
# matrix-vector products (Mona's merged convolution's bias) and a grouped convolution's weight gradient
# (Mona's depthwise filters).
EXTRA_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
    torch.ops.aten.mv: _mv,
    torch.ops.aten.addmv: _addmv,
    torch.ops.aten.convolution_backward: _conv_backward,
}


@dataclass
class Count:
    flops: int = 0
    bytes: int = 0


@contextmanager
def counting() -> Iterator[Count]:
    """FLOPs and bytes of what runs inside, read when it ends."""
    count = Count()
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as flops, BytesMoved() as moved:
        yield count
    count.flops, count.bytes = flops.get_total_flops(), moved.bytes


@contextmanager
def preserved_rng(device: torch.device, seed: int = COUNT_SEED) -> Iterator[None]:
    """Every generator this process draws from seeded with `seed` inside, and restored on exit."""
    saved = rng_state(device)
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index or 0].manual_seed(seed)
    try:
        yield
    finally:
        set_rng_state(saved, device)


def count_flops(
    model: TaskModel,
    images: Any,
    targets: Any,
    infer_images: Any | None = None,
    device: torch.device | None = None,
) -> Flops:
    """FLOPs and bytes of one training step of `model` on (`images`, `targets`) and of its inference
    on `infer_images` (merged, as evaluation runs it; None: not counted), on a deep copy on `device`
    (default: the model's), in full precision (counts do not depend on it). `model` and the
    generators are left as they were. Images are a batch tensor, or a list (the dense tasks')."""
    device = device or next(model.parameters()).device
    with preserved_rng(device):
        try:
            return _count(copy.deepcopy(model).to(device), images, targets, infer_images, device)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the copy's blocks: a run's memory watermark starts after this


def _count(
    twin: TaskModel, images: Any, targets: Any, infer_images: Any | None, device: torch.device
) -> Flops:
    twin.train()
    with counting() as forward, saved_activations(twin) as saved:
        loss = twin(to_device(images, device), to_device(targets, device))
    with counting() as backward:
        loss.backward()
    result = Flops(
        forward.flops,
        backward.flops,
        forward.bytes + backward.bytes,
        len(images),
        step_memory=step_memory(twin, saved),
    )
    if infer_images is None:
        return result
    twin.eval()
    # No gradient flags for inference: FlopCounterMode's module tracker cannot hook a trainable
    # parameter that enters a module as its input under no_grad (VPT's prompts).
    twin.requires_grad_(False)
    with torch.no_grad(), merged(twin), counting() as infer:
        twin.predict(to_device(infer_images, device))
    return replace(result, inference=infer.flops, infer_bytes=infer.bytes, infer_images=len(infer_images))


def first_batches(data: TaskData, batch: int, eval_batch: int) -> tuple[Any, Any, Any | None]:
    """(images, targets) of the training split's first `batch` samples, as the training loader
    collates them, and the images of the first `eval_batch` samples of the split evaluation scores
    first (val, else test; None: neither). Augmentation draws from the generators: call this under
    `preserved_rng`."""

    def take(split: Dataset, n: int) -> tuple[Any, Any]:
        collate = data.collate_fn or default_collate
        return collate([split[i] for i in range(min(n, len(split)))])

    images, targets = take(data.train, batch)
    evaluated = data.val if data.val is not None else data.test
    return images, targets, None if evaluated is None else take(evaluated, eval_batch)[0]


def count_run_flops(
    model: TaskModel, data: TaskData, batch: int, eval_batch: int, device: torch.device
) -> Flops:
    """`count_flops` on the run's data: a training step on its first per-device `batch` of training
    samples, inference on `eval_batch` samples of its val (else test) split. The samples are drawn
    under the counting seed, so the count is a function of the config, whatever the run's seed."""
    with preserved_rng(device):
        images, targets, infer_images = first_batches(data, batch, eval_batch)
    return count_flops(model, images, targets, infer_images, device)
