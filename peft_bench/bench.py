"""Speed and memory of each method's training step, in the spirit of timm's benchmark.py.

    python -m peft_bench.bench --backbone swin_t --img-size 128 --batch 8

All methods' models live side by side and are timed in an interleaved, rotating order, so that
drift of the machine (other load, thermal state) hits every method alike; the table reports
medians and ratios to Full. One CSV row per method, with a run record's cost fields: step time and
training images per second, inference images per second, peak memory, the delta checkpoint's bytes
(the trainable state, serialised as a run's `model.safetensors`), device and precision. Inference
runs as evaluation runs it: with every mergeable update merged (`peft_bench.methods.merged`).

Each candidate is on the device only while it is measured (the others wait on the CPU), under the
autocast of training (`--precision`, as `trainer.precision`), with the trainer's optimiser (AdamW,
fused on CUDA). A training step zeroes its gradients after the update, as the trainer's does, so
none are alive through the next forward and backward. On CUDA each placement of a candidate starts
with an emptied allocator cache, so its first step (cudaMalloc, cold caches) is not timed: a
placement runs one untimed training step and inference, then times `--steps` of each (default 3)
back to back, without a host sync between them; their mean is one sample. On the CPU, where
placement moves nothing, a placement times one step of each. Peak memory: on CUDA,
`torch.cuda.max_memory_allocated` (and `_reserved`) over a training step of that candidate alone.
The CPU allocator keeps no such statistics, and the process holds every candidate, so on the CPU
the column is the step's own account (not a run's peak resident set): weights, gradients
and AdamW state of the trainable tensors, and the activations autograd saves for backward
(`mem_source` says which).

FLOPs: each method's training step (forward and backward) and inference of one batch, counted once
by `torch.utils.flop_counter.FlopCounterMode` on a copy of its model before anything is timed
(`peft_bench.engine.flops`: matmuls, convolutions and attention; not elementwise ops, norms, softmax
or activations), inference merged as timed; beside them an estimate of the bytes the step's ops move
(unfused). `flops_vs_full` beside `step_vs_full`, and their quotient `step_vs_flops`, show a method
whose time is out of proportion to its arithmetic.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from hydra import compose

from peft_bench.builder import build_task_model
from peft_bench.config import Device, Precision
from peft_bench.delta import serialized_delta
from peft_bench.engine.contract import TaskModel
from peft_bench.engine.cost import peak_memory, reset_peak_memory
from peft_bench.engine.distributed import resolve_device
from peft_bench.engine.flops import Flops, count_flops
from peft_bench.engine.optim import build_optimizer
from peft_bench.engine.precision import Autocast, autocast, resolve_precision
from peft_bench.errors import UserError
from peft_bench.methods import METHODS, merged
from peft_bench.plugins import config_session, load_plugins
from peft_bench.results.atomic import write_text_atomic

COLUMNS = [
    "method",
    "backbone",
    "img_size",
    "batch",
    "device",
    "precision",
    "trainable_params",
    "step_ms",
    "train_img_s",
    "infer_ms",
    "infer_img_s",
    "peak_mem_mb",
    "peak_reserved_mb",
    "mem_source",
    "delta_bytes",
    "step_gflop",
    "forward_gflop",
    "backward_gflop",
    "infer_gflop",
    "step_gb",
    "step_vs_full",
    "flops_vs_full",
    "step_vs_flops",
    "bytes_vs_full",
    "mem_vs_full",
    "infer_vs_full",
    "infer_flops_vs_full",
]
LEGEND = """\
FLOPs (step_gflop = forward_gflop + backward_gflop, one training step of the batch; infer_gflop, the
batch's inference, merged as timed): counted once per method by torch.utils.flop_counter.FlopCounterMode
on a copy of the model, outside the timed steps. Only matmuls, convolutions and attention count;
elementwise ops, norms, softmax, activations, the loss and the optimiser's update count zero.
step_gb / bytes_vs_full: an estimate, not a measurement: the bytes every op of the step reads and
writes, as if none were fused and nothing stayed in cache. step_vs_flops = step_vs_full / flops_vs_full:
above 1, the step takes longer than its FLOPs say, relative to Full (memory-bound or small ops)."""


CUDA_STEPS = 3  # timed steps per sample on CUDA, by default


def default_placement_warmup(device: torch.device) -> int:
    """Untimed steps at the start of each placement: on CUDA one, as the placement starts with an
    emptied allocator cache and cold caches; none on the CPU, where placement moves nothing."""
    return 1 if device.type == "cuda" else 0


@dataclass
class Candidate:
    method: str
    model: TaskModel
    optimizer: torch.optim.Optimizer
    step_s: list[float] = field(default_factory=list)
    infer_s: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    peak_reserved_bytes: int | None = None
    flops: Flops | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def timed_mean(fn: Callable[[], None], device: torch.device, steps: int, warmup: int) -> float:
    """Mean seconds of `steps` calls of `fn`, after `warmup` untimed ones. The timed calls run as one
    block, synced only at its ends, so that on CUDA the host queues each step while the device runs
    the last, as in training."""
    for _ in range(warmup):
        fn()

    def block() -> None:
        for _ in range(steps):
            fn()

    return timed(block, device) / steps


def _train_step(c: Candidate, images: torch.Tensor, targets: torch.Tensor, amp: Autocast) -> None:
    """One training step. Gradients are freed right after the update, not before the next backward:
    stale ones would be alive through the next forward and count in its peak memory."""
    c.model.train()
    with amp():
        loss = c.model(images, targets)
    loss.backward()
    c.optimizer.step()
    c.optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def _infer(c: Candidate, images: torch.Tensor, amp: Autocast) -> None:
    c.model.eval()
    with amp():
        c.model.predict(images)


@contextmanager
def on_device(c: Candidate, device: torch.device) -> Iterator[None]:
    """`c` on `device` (model and optimiser state) while it is measured, then back on the CPU (a bench
    step leaves no gradients): the GPU holds one candidate at a time, so its memory is that
    candidate's alone."""
    _move(c, device)
    try:
        yield
    finally:
        _move(c, torch.device("cpu"))
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _move(c: Candidate, device: torch.device) -> None:
    c.model.to(device)  # in place: the optimiser's parameters are the model's
    move_optimizer_state(c.optimizer, device)


def move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """The optimiser's state to where it would have created it for parameters on `device`."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[key] = value.to(state_device(group, key, device))


def state_device(group: dict, key: str, device: torch.device) -> torch.device:
    """Where AdamW keeps a state tensor of `group`'s parameters on `device`: with them, but for the
    `step` count of a non-fused, non-capturable AdamW, which stays on the CPU (torch's note [special
    device hosting for step]): on CUDA, that optimiser reads it on the host for every tensor, a sync
    each time."""
    if key == "step" and not (group.get("fused") or group.get("capturable")):
        return torch.device("cpu")
    return device


def build_candidates(methods: list[str], backbone: str, img_size: int, fused: bool) -> list[Candidate]:
    """Each method's classifier over 100 classes, built as a run builds it (random weights), with the
    trainer's optimiser (`fused` as the trainer's on the device measured)."""
    candidates = []
    with config_session():
        for name in methods:
            cfg = compose(
                "config", [f"method={name}", f"backbone={backbone}", f"backbone.img_size={img_size}"]
            )
            torch.manual_seed(0)
            model = build_task_model(cfg, num_classes=100, pretrained=False)  # on the CPU until measured
            optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.05, fused=fused)
            candidates.append(Candidate(name, model, optimizer))
    return candidates


def count(candidates: list[Candidate], batch: int, img_size: int, device: torch.device) -> None:
    """Each candidate's FLOPs and estimated bytes, once, on a copy of its model (`engine.flops`): a
    training step and the inference (merged) of one batch, before anything is timed."""
    images = torch.zeros(batch, 3, img_size, img_size)
    targets = torch.zeros(batch, dtype=torch.long)
    for c in candidates:
        c.flops = count_flops(c.model, images, targets, images, device)


def measure(
    candidates: list[Candidate],
    batch: int,
    img_size: int,
    repeats: int,
    warmup: int,
    device: torch.device,
    precision: Precision,
    *,
    steps: int,
    placement_warmup: int,
) -> None:
    """`warmup` steps and the peak memory of each candidate, then `repeats` samples of each, a sample
    being the mean of `steps` steps after `placement_warmup` untimed ones, all in one placement."""
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    targets = torch.randint(0, 100, (batch,), device=device)
    amp = autocast(device, precision)
    for c in candidates:
        with on_device(c, device):
            for _ in range(warmup):
                _train_step(c, images, targets, amp)
                with merged(c.model):
                    _infer(c, images, amp)
            if device.type == "cuda":  # as a run measures it (engine.cost), over one step
                reset_peak_memory(device)
                _train_step(c, images, targets, amp)
                peak = peak_memory(device)
                c.peak_bytes, c.peak_reserved_bytes = peak["peak_mem_bytes"], peak["peak_reserved_bytes"]
            else:  # the step account of the counted step (`engine.step_memory`), fp32
                c.peak_bytes = c.flops.step_memory
    for r in range(repeats):
        shift = r % len(candidates)  # rotate the order: no method always runs first or last
        for c in candidates[shift:] + candidates[:shift]:
            with on_device(c, device):
                train = partial(_train_step, c, images, targets, amp)
                c.step_s.append(timed_mean(train, device, steps, placement_warmup))
                with merged(c.model):  # as evaluation runs it; the merge itself is not timed
                    infer = partial(_infer, c, images, amp)
                    c.infer_s.append(timed_mean(infer, device, steps, placement_warmup))


def table(
    candidates: list[Candidate],
    backbone: str,
    img_size: int,
    batch: int,
    device: torch.device,
    precision: Precision,
) -> list[dict]:
    rows = []
    for c in candidates:
        step, infer = statistics.median(c.step_s), statistics.median(c.infer_s)
        rows.append(
            {
                "method": c.method,
                "backbone": backbone,
                "img_size": img_size,
                "batch": batch,
                "device": str(device),
                "precision": precision.value,
                "trainable_params": sum(p.numel() for p in c.model.backbone.parameters() if p.requires_grad),
                "step_ms": round(1000 * step, 2),
                "train_img_s": round(batch / step, 2),
                "infer_ms": round(1000 * infer, 2),
                "infer_img_s": round(batch / infer, 2),
                "peak_mem_mb": round(c.peak_bytes / 2**20, 1),
                "peak_reserved_mb": round(c.peak_reserved_bytes / 2**20, 1)
                if c.peak_reserved_bytes
                else None,
                "mem_source": "cuda_max_allocated" if device.type == "cuda" else "step_account",
                "delta_bytes": len(serialized_delta(c.model)),
                **flops_columns(c.flops),
            }
        )
    full = next((r for r in rows if r["method"] == "full"), None)
    for r in rows:
        for ratio, column in RATIOS.items():
            r[ratio] = (
                round(r[column] / full[column], 3)
                if full and full[column] and r[column] is not None
                else None
            )
        r["step_vs_flops"] = (
            round(r["step_vs_full"] / r["flops_vs_full"], 3)
            if r["step_vs_full"] and r["flops_vs_full"]
            else None
        )
    return rows


RATIOS = {  # each column over Full's
    "step_vs_full": "step_ms",
    "flops_vs_full": "step_gflop",
    "bytes_vs_full": "step_gb",
    "mem_vs_full": "peak_mem_mb",
    "infer_vs_full": "infer_ms",
    "infer_flops_vs_full": "infer_gflop",
}


def flops_columns(flops: Flops | None) -> dict[str, float | None]:
    """A row's FLOPs (G) and estimated bytes (GB) of the batch; None where they were not counted."""
    if flops is None:
        return dict.fromkeys(("step_gflop", "forward_gflop", "backward_gflop", "infer_gflop", "step_gb"))
    return {
        "step_gflop": round(flops.train / 1e9, 6),
        "forward_gflop": round(flops.forward / 1e9, 6),
        "backward_gflop": round(flops.backward / 1e9, 6),
        "infer_gflop": round(flops.inference / 1e9, 6) if flops.inference is not None else None,
        "step_gb": round(flops.train_bytes / 1e9, 6),
    }


def to_csv(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="swin_t")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--methods", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--repeats", type=int, default=15, help="samples per method (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method before any sample")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"timed steps per sample (default {CUDA_STEPS} on CUDA, 1 on the CPU)",
    )
    parser.add_argument("--device", default="auto", choices=[d.value for d in Device])
    parser.add_argument(
        "--precision", default="auto", choices=[p.value for p in Precision], help="as trainer.precision"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default results/bench/...)")
    args = parser.parse_args(argv)

    load_plugins()
    methods = sorted(METHODS) if args.methods == "all" else args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(sorted(METHODS))}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        precision = resolve_precision(args.precision, device)
    except UserError as error:
        parser.error(str(error))
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    cuda = device.type == "cuda"
    candidates = build_candidates(methods, args.backbone, args.img_size, fused=cuda)
    count(candidates, args.batch, args.img_size, device)
    measure(
        candidates,
        args.batch,
        args.img_size,
        args.repeats,
        args.warmup,
        device,
        precision,
        steps=args.steps or (CUDA_STEPS if cuda else 1),
        placement_warmup=default_placement_warmup(device),
    )
    rows = table(candidates, args.backbone, args.img_size, args.batch, device, precision)
    out = (
        args.out
        or Path("results/bench") / f"bench-{args.backbone}-{args.img_size}px-b{args.batch}-{device.type}.csv"
    )
    write_text_atomic(out, to_csv(rows))
    print(to_markdown(rows))
    print(f"\n{LEGEND}")
    print(f"\nwritten to {out}")
    return rows


if __name__ == "__main__":
    main()
