"""The checks a CPU cannot make, in one script for a GPU machine (about three minutes on one H200).

    bash scripts/gpu_check.sh                  # on a CUDA machine: the groups of checks side by side
    bash scripts/gpu_check.sh --dry-run        # on the CPU: what can run there, the rest skipped
    bash scripts/gpu_check.sh --only fp16_loss_scale,ddp   # some checks, one after another, in this process

One line per check as it ends: PASS, FAIL (with why) or SKIP (with why), its name and its time; then a
summary. The exit status is 1 if any failed. The groups (`GROUPS`) run as processes of this script, at
most `--jobs` at a time (a check mostly waits on Python, and a GPU lent briefly is best kept busy; on
the CPU one process runs them all): a group that crashes or outlives `--timeout` fails the checks it
had not reported.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hydra import compose
from omegaconf import OmegaConf
from torch import nn
from torch._dynamo.utils import counters
from torch.nn.modules._functions import SyncBatchNorm as SyncBatchNormFunction
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate
from torchvision.models.detection.image_list import ImageList

from peft_bench.builder import build_data, build_task_model, task_of
from peft_bench.config import Precision
from peft_bench.data.base import TaskData
from peft_bench.delta import backbone_fingerprint, load_delta
from peft_bench.engine import distributed
from peft_bench.engine import trainer as trainer_module
from peft_bench.engine.contract import TaskModel
from peft_bench.engine.cost import StepTimer
from peft_bench.engine.distributed import DistInfo, broadcast_object, gather_in_sample_order, gather_to_main
from peft_bench.engine.precision import DTYPES, autocast, grad_scaler, native_bf16
from peft_bench.engine.trainer import FitResult, Trainer, to_device
from peft_bench.methods import METHODS
from peft_bench.plugins import config_session, load_plugins
from peft_bench.results.store import run_dir
from peft_bench.run import seed_everything

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = ("shapes", "shapes_det", "shapes_inst", "shapes_seg")  # one dataset per task
TINY = ["data.train_size=32", "data.val_size=8", "data.test_size=8", "trainer.progress=false"]
IN_PROCESS = ["data.num_workers=0", "trainer.log_every=1"]  # a fit here: no workers, a row per step
FROZEN_BACKBONE = ("mona", "fixed")  # methods whose backbone tensors get no gradient
STATUSES = ("PASS", "FAIL", "SKIP")


class Skip(Exception):
    """The check cannot run here; the message says why."""


def precisions(device: torch.device) -> list[Precision]:
    if device.type != "cuda":
        return [Precision.fp32, Precision.bf16]
    return [Precision.fp32, *([Precision.bf16] if native_bf16(device) else []), Precision.fp16]


def needs_cuda(device: torch.device, count: int = 1) -> None:
    if device.type != "cuda" or torch.cuda.device_count() < count:
        raise Skip(f"needs {count} CUDA device{'s' if count > 1 else ''}")


def compose_run(*overrides: str):
    with config_session():
        return compose("config", list(overrides))


def compose_tiny(dataset: str, *overrides: str):
    return compose_run(f"dataset={dataset}", "method=mona", *TINY, *overrides)


# ---------------------------------------------------------------------------------------------
# Building blocks: a step, a fit and an evaluation in this process


def first_batch(cfg, device: torch.device) -> tuple[TaskData, Any, Any]:
    """The config's splits, and its first two training samples as a batch on `device`."""
    data = build_data(cfg)
    images, targets = (data.collate_fn or default_collate)([data.train[0], data.train[1]])
    return data, to_device(images, device), to_device(targets, device)


def fresh_model(cfg, num_classes: int, device: torch.device) -> TaskModel:
    """The config's task model from seed 0 (so that two builds start alike), in training mode."""
    torch.manual_seed(0)
    return build_task_model(cfg, num_classes, pretrained=False).to(device).train()


def backward(net: nn.Module, images: Any, targets: Any, device: torch.device, precision: Precision):
    """The loss of a forward under the precision's autocast, after its backward (scaled under fp16)."""
    with autocast(device, precision)():
        loss = net(images, targets)
    grad_scaler(device, precision).scale(loss).backward()
    assert torch.isfinite(loss), f"loss {loss.item()}"
    return loss


def assert_gradients_on_trainable(model: nn.Module) -> None:
    wrong = [n for n, p in model.named_parameters() if (p.grad is None) == p.requires_grad]
    assert not wrong, f"gradients where none should be, or none where they should: {wrong[:3]}"


def one_step(cfg, device: torch.device, precision: Precision) -> tuple[TaskModel, Any, torch.Tensor]:
    """A fresh model after a training step's backward on two images: a finite loss, gradients on
    exactly the trainable tensors. The model and the images, for what follows, and the loss."""
    data, images, targets = first_batch(cfg, device)
    model = fresh_model(cfg, data.num_classes, device)
    loss = backward(model, images, targets, device, precision)
    assert_gradients_on_trainable(model)
    return model, images, loss


def fit_here(
    cfg, data: TaskData, model: TaskModel, device: torch.device, step_timer: StepTimer | None = None
) -> FitResult:
    """`Trainer.fit` on one rank in this process, its checkpoints in a folder of its own; `step_timer`
    stands in for the trainer's (it wraps each step)."""
    task = task_of(cfg)
    with tempfile.TemporaryDirectory() as checkpoints:
        trainer = Trainer(cfg.trainer, cfg.data, DistInfo(0, 1, device), Path(checkpoints))
        trainer.step_timer = step_timer or trainer.step_timer
        return trainer.fit(model, data, task.build_evaluator(data, device), task.main_metric)


def evaluate_here(cfg, data: TaskData, model: TaskModel, device: torch.device) -> dict[str, float]:
    """The test metrics of `model`, as a run evaluates them, by one process."""
    trainer = Trainer(cfg.trainer, cfg.data, DistInfo(0, 1, device), REPO / "unused")
    loader = DataLoader(data.test, batch_size=cfg.data.eval_batch_size, collate_fn=data.collate_fn)
    return trainer.evaluate(model.to(device), loader, task_of(cfg).build_evaluator(data, device))


def trainable_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def moved(before: dict[str, torch.Tensor], model: nn.Module) -> bool:
    """Whether any trainable tensor differs from its copy in `before`."""
    now = dict(model.named_parameters())
    return any(not torch.equal(now[name], value) for name, value in before.items())


def finite(outputs: Any) -> bool:
    """Whether every floating tensor in `outputs` (nested in lists, tuples and dicts) is finite."""
    if isinstance(outputs, torch.Tensor):
        return not outputs.is_floating_point() or bool(torch.isfinite(outputs).all())
    if isinstance(outputs, dict):
        return all(finite(value) for value in outputs.values())
    if isinstance(outputs, list | tuple):
        return all(finite(value) for value in outputs)
    return True


def relative_difference(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference.float()).abs().max() / reference.float().abs().max()).item()


# ---------------------------------------------------------------------------------------------
# Steps under each precision


def check_steps(device: torch.device) -> str:
    """Each task's training step under each precision."""
    shown = []
    for dataset in EMBEDDED:
        cfg = compose_tiny(dataset)
        for precision in precisions(device):
            loss = one_step(cfg, device, precision)[2]
            shown.append(f"{dataset}/{precision.value}: loss {loss.item():.3f}")
    return "; ".join(shown)


def check_every_method(device: torch.device) -> str:
    """Every registered method, plugins' included, trains on small classification images: a finite loss
    and gradients on exactly its trainable tensors, under each precision."""
    load_plugins()
    shown = []
    for name in sorted(METHODS):
        cfg = compose_tiny("shapes", f"method={name}")
        losses = [one_step(cfg, device, precision)[2].item() for precision in precisions(device)]
        shown.append(f"{name} {'/'.join(f'{loss:.2f}' for loss in losses)}")
    return f"{len(shown)} methods, loss {'/'.join(p.value for p in precisions(device))}: {', '.join(shown)}"


def coco_head_overrides() -> list[str]:
    """The paper's COCO preset's head choices (ConvFC box heads with BN, mmcv's RoIAlign, mmdet's RPN
    assignment), as overrides of the instance scenes' head."""
    head = OmegaConf.to_container(compose_run("dataset=coco").head, enum_to_str=True)
    return [f"head.{key}={json.dumps(head[key])}" for key in ("box_head", "mmcv_roi_align", "mmdet_rpn")]


def check_coco_heads(device: torch.device) -> str:
    """The COCO preset's heads on the instance scenes: a training step and a prediction under each
    precision."""
    overrides = coco_head_overrides()
    cfg = compose_tiny("shapes_inst", *overrides)
    shown = []
    for precision in precisions(device):
        model, images, loss = one_step(cfg, device, precision)
        with torch.no_grad(), autocast(device, precision)():
            detections = model.eval().predict(images)
        assert finite(detections), f"{precision.value}: a prediction is not finite"
        shown.append(
            f"{precision.value}: loss {loss.item():.3f}, {sum(len(d['boxes']) for d in detections)} boxes"
        )
    return f"{' '.join(overrides)}: {'; '.join(shown)}"


def check_retinanet_boxes(device: torch.device) -> str:
    """Under each lower precision, RetinaNet's anchors in fp32 and equal to fp32's, and its boxes
    decoded in fp32: as fp32 decodes the same deltas (the deltas themselves carry the network's
    low-precision error, a few pixels on large anchors, which is not the decode's)."""
    height, width = (512, 1024) if device.type == "cuda" else (128, 256)  # the CPU's bf16 is slow
    cfg = compose_tiny("shapes_det", f"head.min_size=[{height}]", f"head.max_size={width}")
    torch.manual_seed(0)
    detector = build_task_model(cfg, 10, pretrained=False).to(device).eval().detector
    images = torch.rand(1, 3, height, width, device=device)
    batch = ImageList(images, [(height, width)])
    shown = []
    with torch.no_grad():
        anchors = detector.anchor_generator(batch, list(detector.backbone(images).values()))[0]
        for precision in precisions(device)[1:]:
            with torch.autocast(device.type, dtype=DTYPES[precision]):
                low = list(detector.backbone(images).values())
                low_anchors = detector.anchor_generator(batch, low)[0]
                deltas = detector.head(low)["bbox_regression"][0]
                boxes = detector.box_coder.decode_single(deltas, low_anchors)
            reference = detector.box_coder.decode_single(deltas.float(), anchors)
            assert low_anchors.dtype == boxes.dtype == torch.float32, f"{precision.value}: not fp32"
            anchor_error = (low_anchors - anchors).abs().max().item()
            error = (boxes - reference).abs().max().item()
            assert anchor_error < 1e-3, f"{precision.value}: anchors {anchor_error:.4f} px from fp32's"
            assert error < 1e-2, f"{precision.value}: boxes {error:.4f} px from fp32's decode"
            shown.append(f"{precision.value} {error:.4f} px")
    return ", ".join(shown)


# ---------------------------------------------------------------------------------------------
# The trainer's step: fp16's loss scale, host syncs, torch.compile


def overflowing_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """A loss scale of 2^40, at which fp16's gradients overflow; the first overflow drops it to 2^10,
    where they do not (halving would take some 25 skipped steps to get there)."""
    return torch.amp.GradScaler(device.type, init_scale=2.0**40, backoff_factor=2.0**-30)


def fp16_fit(steps: int, device: torch.device) -> tuple[bool, list[tuple[float, int]]]:
    """`steps` fp16 steps through `Trainer.fit` from an overflowing loss scale: whether the trainable
    tensors moved, and each history row's loss scale and skipped steps."""
    cfg = compose_tiny(
        "shapes", "trainer.precision=fp16", f"trainer.max_steps={steps}", "data.batch_size=8", *IN_PROCESS
    )
    data = build_data(cfg)
    model = fresh_model(cfg, data.num_classes, device)
    before = trainable_copy(model)
    with mock.patch.object(trainer_module, "grad_scaler", overflowing_scaler):
        history = fit_here(cfg, data, model, device).history
    return moved(before, model), [(row["loss_scale"], row["skipped_steps"]) for row in history]


def check_fp16_loss_scale(device: torch.device) -> str:
    """The trainer's fp16 step skips an update whose gradients overflow, counts it and lowers the loss
    scale, then takes the next one: made to happen, not waited for."""
    needs_cuda(device)
    changed, rows = fp16_fit(1, device)
    assert not changed, "the step whose gradients overflowed changed the parameters"
    assert rows == [(2.0**10, 1)], f"(loss scale, skipped steps) by step: {rows}"
    changed, rows = fp16_fit(2, device)
    assert changed, "the step after the overflow left the parameters as they were"
    assert rows == [(2.0**10, 1), (2.0**10, 1)], f"(loss scale, skipped steps) by step: {rows}"
    return "step 1 at scale 2^40 skipped and counted, parameters unchanged, scale 2^10; step 2 taken at 2^10"


class SyncCheckedSteps(StepTimer):
    """The trainer's step timer, running every step after the first (the warm-up: lazy initialisation,
    the optimiser's state) under CUDA's sync debug mode "error": a host sync in the step raises."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.steps = 0

    @contextmanager
    def step(self) -> Iterator[None]:
        with super().step():
            torch.cuda.set_sync_debug_mode("error" if self.steps else "default")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")
        self.steps += 1


SYNC_FREE = ("shapes", "shapes_seg")  # the trainer keeps its loss on the device: a step need not sync
SYNCING = "shapes_det, shapes_inst not tested: torchvision's box matching and sampling sync by design"


def check_no_host_sync(device: torch.device) -> str:
    """The trainer's steps run without a host sync (bf16: fp16's loss scale reads its inf check) where
    the task's model needs none: a sync would stall the GPU once a step."""
    needs_cuda(device)
    shown = []
    for dataset in SYNC_FREE:
        cfg = compose_tiny(dataset, "trainer.max_steps=3", "data.batch_size=4", *IN_PROCESS)
        data = build_data(cfg)
        timer = SyncCheckedSteps(device)
        fit_here(cfg, data, fresh_model(cfg, data.num_classes, device), device, timer)
        shown.append(f"{dataset}: {timer.steps - 1} steps after the first")
    return f"{', '.join(shown)} without a sync; {SYNCING}"


def check_compile(device: torch.device) -> str:
    """`trainer.compile=true` (inductor on CUDA; on the CPU the graph capture alone): dynamo captures the
    training step's forward as one graph without graph breaks (an eager fallback would pass the loss
    comparison), and its losses follow eager's (LoRA, which has no dropout, so both draw nothing;
    within autocast's rounding)."""
    backend = "inductor" if device.type == "cuda" else "eager"
    steps = 6 if device.type == "cuda" else 2
    losses = {}
    for name, extra in (("eager", []), ("compiled", ["trainer.compile=true"])):
        cfg = compose_tiny(
            "shapes",
            "method=lora",
            f"trainer.max_steps={steps}",
            "data.batch_size=4",
            *IN_PROCESS,
            f"trainer.compile_backend={backend}",
            *extra,
        )
        data = build_data(cfg)
        torch._dynamo.reset()
        counters.clear()
        history = fit_here(cfg, data, fresh_model(cfg, data.num_classes, device), device).history
        losses[name] = [row["loss"] for row in history]
    graphs, breaks = counters["stats"]["unique_graphs"], dict(counters["graph_break"])
    assert graphs >= 1 and not breaks, f"{graphs} graphs, graph breaks: {breaks}"
    pairs = list(zip(losses["compiled"], losses["eager"], strict=True))
    worst = max(abs(compiled - eager) / abs(eager) for compiled, eager in pairs)
    assert worst < 0.02, f"compiled losses {losses['compiled']} against eager's {losses['eager']}"
    shown = f"{len(pairs)} steps, largest relative difference {worst:.2g}"
    return f"{backend}: {graphs} graph(s), no graph break; {shown}"


# ---------------------------------------------------------------------------------------------
# DDP on one rank


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def one_rank_group(device: torch.device) -> Iterator[str]:
    """A process group of this process alone (NCCL on CUDA, gloo on the CPU); its backend."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield backend
    finally:
        dist.destroy_process_group()


def ddp_steps(cfg, device: torch.device, precision: Precision) -> None:
    """Two training steps of the model wrapped as a distributed run wraps it: a trainable tensor
    without a gradient stops DDP at the second."""
    data, images, targets = first_batch(cfg, device)
    model = fresh_model(cfg, data.num_classes, device)
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = DistributedDataParallel(model, gradient_as_bucket_view=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(2):
        backward(net, images, targets, device, precision)
        assert_gradients_on_trainable(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def same_record(got: dict, sent: dict) -> bool:
    return got.keys() == sent.keys() and all(
        np.asarray(got[k]).dtype == np.asarray(sent[k]).dtype and np.array_equal(got[k], sent[k])
        for k in sent
    )


def object_round_trips() -> None:
    """The object collectives of the trainer and the evaluators, on a record with numpy arrays. One
    rank alone would skip them: here it takes the collective path."""
    record = {"scores": np.linspace(0, 1, 5, dtype=np.float32), "labels": np.arange(5), "image": 3}
    with mock.patch.object(distributed, "_distributed", dist.is_initialized):
        gathered = gather_to_main([record])
        ordered = gather_in_sample_order([record, record])
        broadcast = broadcast_object(record)
    assert len(gathered) == 1 and len(ordered) == 2, f"{len(gathered)} gathered, {len(ordered)} in order"
    assert all(same_record(got, record) for got in [*gathered, *ordered, broadcast]), "a record changed"


def check_ddp(device: torch.device) -> str:
    """DDP on one rank: two steps of every task with a frozen backbone, where an unused parameter would
    stop DDP; the object collectives' round trips of numpy records."""
    precision = precisions(device)[1]
    with one_rank_group(device) as backend:
        for dataset in EMBEDDED:
            for method in FROZEN_BACKBONE:
                ddp_steps(compose_tiny(dataset, f"method={method}"), device, precision)
        object_round_trips()
    batch_norm = "SyncBatchNorm" if device.type == "cuda" else "BatchNorm (SyncBatchNorm: CUDA only)"
    steps = f"2 steps of {', '.join(EMBEDDED)} with {' and '.join(FROZEN_BACKBONE)}"
    collectives = "gather_to_main, gather_in_sample_order, broadcast_object"
    return f"{backend}, {precision.value}, {batch_norm}: {steps}; {collectives} round trips"


def batch_norm_inputs(model: TaskModel, images: Any, targets: Any, device: torch.device) -> list:
    """Each BatchNorm of the model, with the input it gets in a bf16 autocast training step."""
    seen: list[tuple[nn.BatchNorm2d, torch.Tensor]] = []
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    hooks = [
        n.register_forward_pre_hook(lambda m, inputs: seen.append((m, inputs[0].detach()))) for n in norms
    ]
    with autocast(device, Precision.bf16)():
        model(images, targets)
    for hook in hooks:
        hook.remove()
    return seen


def sync_batch_norm_errors(norm: nn.BatchNorm2d, x: torch.Tensor) -> list[float]:
    """SyncBatchNorm's function, called as SyncBatchNorm calls it across processes, against batch norm's
    on `x`: the relative differences of the output and of the input, weight and bias gradients."""
    x = x.clone().requires_grad_()
    parameters = (x, norm.weight, norm.bias)
    synced = SyncBatchNormFunction.apply(*parameters, None, None, norm.eps, 0.0, dist.group.WORLD, 1)
    plain = F.batch_norm(x, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
    upstream = torch.randn_like(plain)
    synced_grads, plain_grads = (torch.autograd.grad(out, parameters, upstream) for out in (synced, plain))
    return [
        relative_difference(a, b) for a, b in zip((synced, *synced_grads), (plain, *plain_grads), strict=True)
    ]


def check_sync_batch_norm(device: torch.device) -> str:
    """SyncBatchNorm's kernels (all-gathered statistics, all-reduced gradients) on the segmentation
    model's bf16 autocast inputs, against batch norm's: outputs and gradients. One rank alone would fall
    back to batch norm, so the synced function is called as SyncBatchNorm calls it across processes."""
    needs_cuda(device)
    cfg = compose_tiny("shapes_seg")
    data, images, targets = first_batch(cfg, device)
    inputs = batch_norm_inputs(fresh_model(cfg, data.num_classes, device), images, targets, device)
    dtypes = {x.dtype for _, x in inputs}
    assert dtypes == {torch.bfloat16}, f"the BatchNorms got {dtypes}"
    with one_rank_group(device):
        errors = [sync_batch_norm_errors(norm, x) for norm, x in inputs]
    worst = max(max(e) for e in errors)
    assert worst < 0.02, (
        f"relative differences (output; input, weight, bias gradients) by BatchNorm: {errors}"
    )
    return f"{len(inputs)} BatchNorms on bf16: outputs and gradients within {worst:.2g} of batch norm's"


# ---------------------------------------------------------------------------------------------
# Whole runs (`python -m peft_bench` in processes of their own)


def cli(*arguments: str, env: dict[str, str] | None = None, module: str = "peft_bench") -> subprocess.Popen:
    command = [sys.executable, "-m", module, *arguments]
    return subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish_all(processes: dict[str, subprocess.Popen]) -> None:
    """Wait for every process, then fail naming each that did not exit 0."""
    errors = {what: process.communicate()[1].decode() for what, process in processes.items()}
    failed = [
        f"{what} exited {p.returncode}: {errors[what][-500:]}"
        for what, p in processes.items()
        if p.returncode
    ]
    assert not failed, "; ".join(failed)


def the_record(results: Path) -> dict:
    [path] = (results / "runs").glob("*/metrics.json")
    return json.loads(path.read_text())


# Enough steps to learn something measurable, in about a minute each on CUDA, side by side. On the CPU
# (fp32), runs of these lengths reach top-1 23.1 (untrained: 8.2), AP50 7.5-9.8, AP box / mask 6.0 / 5.2
# and mIoU 12.3 (0.6; UperNet predicts the background alone for its first ~150 steps).
LEARNING_RUNS = {
    "shapes": ["trainer.epochs=5", "data.val_size=200"],  # 310 steps
    "shapes_det": ["data.train_size=1200", "trainer.epochs=2", "data.val_size=100", "data.test_size=200"],
    "shapes_inst": ["data.train_size=1200", "trainer.epochs=2", "data.val_size=100", "data.test_size=100"],
    "shapes_seg": ["trainer.epochs=6", "data.val_size=100", "data.test_size=200"],  # 372 steps
}


def untrained_metrics(overrides: list[str], device: torch.device) -> dict[str, float]:
    """The test metrics of the model a run of `overrides` starts from (seeded as a run seeds it)."""
    cfg = compose_run(*overrides)
    seed_everything(cfg.trainer.seed)
    data = build_data(cfg)
    return evaluate_here(cfg, data, build_task_model(cfg, data.num_classes), device)


def check_end_to_end(device: torch.device) -> str:
    """Each embedded task trained and evaluated on CUDA with DataLoader workers, its test metrics each
    above the untrained model's."""
    needs_cuda(device)
    runs = {dataset: [f"dataset={dataset}", *extra] for dataset, extra in LEARNING_RUNS.items()}
    with_workers = ["data.num_workers=2", f"trainer.device={device.type}", "trainer.progress=false"]
    with tempfile.TemporaryDirectory() as results:
        processes = {d: cli(*o, *with_workers, f"paths.results_dir={results}/{d}") for d, o in runs.items()}
        try:
            untrained = {dataset: untrained_metrics(overrides, device) for dataset, overrides in runs.items()}
        finally:
            finish_all(processes)
        records = {dataset: the_record(Path(results) / dataset) for dataset in runs}
    shown, below = [], []
    for dataset, record in records.items():
        pairs = {metric: (untrained[dataset][metric], value) for metric, value in record["metrics"].items()}
        below += [f"{dataset} {metric}" for metric, (before, after) in pairs.items() if not after > before]
        moves = ", ".join(f"{metric} {old:.1f} -> {new:.1f}" for metric, (old, new) in pairs.items())
        shown.append(f"{dataset} {record['precision']} {record['steps']} steps: {moves}")
    assert not below, f"not above the untrained model: {', '.join(below)}; {'; '.join(shown)}"
    return "; ".join(shown)


def kill_at_first_checkpoint(process: subprocess.Popen, results: Path) -> None:
    """SIGKILL the run once it has written its first checkpoint (within 300 s)."""
    deadline = time.time() + 300
    written = False
    while not written and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
        written = any(results.glob("runs/*/checkpoints/last.pt"))
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert written, "no checkpoint within 300 s"
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def check_kill_and_resume(device: torch.device) -> str:
    """SIGKILL after the first epoch's checkpoint; resumed (on another visible device if there are
    two), the run ends with the uninterrupted run's metrics exactly: deterministic kernels, with
    DataLoader workers."""
    needs_cuda(device)
    overrides = [
        "experiment=smoke",
        "method=full",
        "trainer.epochs=4",
        "data.train_size=1024",
        f"trainer.device={device.type}",
        "trainer.deterministic=true",
        "data.num_workers=2",
    ]
    elsewhere = {"CUDA_VISIBLE_DEVICES": "1"} if torch.cuda.device_count() > 1 else {}
    with tempfile.TemporaryDirectory() as reference, tempfile.TemporaryDirectory() as results:
        uninterrupted = cli(*overrides, f"paths.results_dir={reference}")
        try:
            kill_at_first_checkpoint(cli(*overrides, f"paths.results_dir={results}"), Path(results))
        finally:
            finish_all({"the uninterrupted run": uninterrupted})
        finish_all({"the resumed run": cli(*overrides, f"paths.results_dir={results}", env=elsewhere)})
        expected, record = the_record(Path(reference)), the_record(Path(results))
    assert record["metrics"] == expected["metrics"], f"{record['metrics']} != {expected['metrics']}"
    where = " with CUDA_VISIBLE_DEVICES=1" if elsewhere else ""
    return (
        f"deterministic={record.get('deterministic')}, 2 workers: resumed{where} to {record['metrics']}, "
        "the uninterrupted run's exactly"
    )


def check_bench(device: torch.device) -> str:
    """The bench on CUDA: one candidate on the GPU at a time; Fixed's peak well under Full's."""
    needs_cuda(device)
    with tempfile.TemporaryDirectory() as results:
        out = Path(results) / "bench.csv"
        bench = ["--device", device.type, "--methods", "full,fixed,mona", "--repeats", "5", "--out", str(out)]
        finish_all({"the bench": cli(*bench, module="peft_bench.bench")})
        peaks = {row["method"]: float(row["peak_mem_mb"]) for row in csv.DictReader(out.open())}
    assert peaks["fixed"] < 0.6 * peaks["full"], f"Fixed {peaks['fixed']} MB vs Full {peaks['full']} MB"
    return ", ".join(f"{method} {peak:.0f} MB" for method, peak in peaks.items())


def evaluate_delta(cfg, results: str, record: dict, device: torch.device) -> dict[str, float]:
    """The test metrics of the run's saved delta, evaluated by one process."""
    data = build_data(cfg)
    fingerprints: list[str] = []
    model = build_task_model(
        cfg, data.num_classes, on_base=lambda b: fingerprints.append(backbone_fingerprint(b))
    )
    load_delta(run_dir(results, record["run_id"]) / "model.safetensors", model, fingerprints[0])
    return evaluate_here(cfg, data, model, device)


def check_torchrun(device: torch.device) -> str:
    """Two GPUs under torchrun (SyncBN on segmentation, the gathered COCO evaluation on instance):
    one record, whose metrics one GPU gets again from the saved delta."""
    needs_cuda(device, 2)
    shown = []
    for dataset in ("shapes_seg", "shapes_inst"):
        extra = ["trainer.epochs=1", "data.eval_batch_size=1", "data.batch_size=4"]
        overrides = [f"dataset={dataset}", "method=mona", *TINY, *extra, "trainer.device=cuda"]
        with tempfile.TemporaryDirectory() as results:
            torchrun = ["torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "peft_bench"]
            command = [sys.executable, "-m", *torchrun, *overrides, f"paths.results_dir={results}"]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-500:]
            record = the_record(Path(results))
            assert record["batch"]["world_size"] == 2, record["batch"]
            cfg = compose_tiny(dataset, *extra, "trainer.device=cuda")
            again = evaluate_delta(cfg, results, record, device)
        for metric, value in record["metrics"].items():
            assert abs(again[metric] - value) < 1e-6, (
                f"{dataset} {metric}: {value} (2 GPUs) vs {again[metric]}"
            )
        shown.append(f"{dataset} {json.dumps(record['metrics'])}")
    return "; ".join(shown)


# ---------------------------------------------------------------------------------------------
# Running the checks

Check = Callable[[torch.device], str]
CHECKS: dict[str, tuple[str, Check]] = {
    "steps": ("a training step of every task under each precision", check_steps),
    "every_method": ("a training step of every registered method under each precision", check_every_method),
    "coco_heads": ("the COCO preset's heads: a step and a prediction under each precision", check_coco_heads),
    "retinanet_boxes": ("RetinaNet's anchors and boxes in fp32 under autocast", check_retinanet_boxes),
    "fp16_loss_scale": ("fp16: an overflowing step skipped, counted, scale lowered", check_fp16_loss_scale),
    "no_host_sync": ("training steps without a host sync", check_no_host_sync),
    "compile": ("torch.compile: a graph without breaks, losses as eager's", check_compile),
    "ddp": ("DDP on one rank: frozen backbones, object collectives", check_ddp),
    "sync_batch_norm": ("SyncBatchNorm's kernels on bf16 autocast input", check_sync_batch_norm),
    "end_to_end": ("each embedded task end to end on CUDA with workers, above untrained", check_end_to_end),
    "kill_and_resume": ("kill -9 and resume, exactly", check_kill_and_resume),
    "bench": ("the CUDA bench", check_bench),
    "torchrun": ("torchrun on two GPUs against one GPU's evaluation of the delta", check_torchrun),
}
# Run side by side, each group in a process of its own: about the same time each on one H200.
GROUPS = (
    ("end_to_end",),
    ("kill_and_resume", "bench"),
    ("compile", "sync_batch_norm"),
    ("steps", "retinanet_boxes", "coco_heads", "every_method"),
    ("fp16_loss_scale", "no_host_sync", "ddp", "torchrun"),
)


def result_line(status: str, name: str, seconds: float, detail: str) -> str:
    """A check's line: its status first, then its name, title, time, and why, on one line."""
    return f"{status} {name}: {CHECKS[name][0]} ({seconds:.0f} s): {' '.join(detail.split())}"


def parse_result(line: str) -> tuple[str, str] | None:
    """(name, status) of a check's line; None for any other line."""
    words = line.split(maxsplit=2)
    if len(words) < 2 or words[0] not in STATUSES:
        return None
    return words[1].rstrip(":"), words[0]


def run_check(name: str, device: torch.device) -> str:
    """Run one check here, print its line, return its status."""
    started = time.time()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the result lines alone
            detail, status = CHECKS[name][1](device), "PASS"
    except Skip as reason:
        detail, status = str(reason), "SKIP"
    except Exception as error:  # a check's failure must not stop the others
        detail, status = f"{type(error).__name__}: {error}", "FAIL"
        traceback.print_exc(file=sys.stderr)
    print(result_line(status, name, time.time() - started, detail), flush=True)
    return status


def kill_session(pid: int) -> None:
    """SIGKILL a group's process and the processes it started (its session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


class GroupRunner:
    """Runs groups of checks as processes of this script, forwarding their lines as they come."""

    def __init__(self, dry_run: bool, timeout: float, logs: Path) -> None:
        self.dry_run = dry_run
        self.timeout = timeout
        self.logs = logs
        self.lock = threading.Lock()

    def emit(self, line: str) -> None:
        with self.lock:
            print(line, flush=True)

    def __call__(self, group: tuple[str, ...]) -> dict[str, str]:
        """The statuses of the group's checks; one that never reported fails, with the reason."""
        log = self.logs / f"{'+'.join(group)}.log"
        started = time.time()
        statuses, returncode = self.run(group, log)
        seconds = time.time() - started
        why = f"stopped after {self.timeout:.0f} s" if seconds >= self.timeout else f"exited {returncode}"
        for name in (n for n in group if n not in statuses):
            statuses[name] = "FAIL"
            self.emit(result_line("FAIL", name, seconds, f"its group's process {why} first"))
        if "FAIL" in statuses.values():
            self.emit_stderr(group, log)
        return statuses

    def run(self, group: tuple[str, ...], log: Path) -> tuple[dict[str, str], int]:
        """Run the group's process, its stderr to `log`, forwarding its lines; after the timeout it is
        killed with what it started. The statuses it reported, and its exit status."""
        command = [sys.executable, __file__, "--only", ",".join(group), *(["--dry-run"] * self.dry_run)]
        with log.open("w") as stderr:
            process = subprocess.Popen(
                command, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
            )
            timer = threading.Timer(self.timeout, kill_session, (process.pid,))
            timer.start()
            statuses = {}
            for line in process.stdout:
                result = parse_result(line)
                if result and result[0] in group:
                    statuses[result[0]] = result[1]
                    self.emit(line.rstrip("\n"))
            process.wait()
            timer.cancel()
        kill_session(process.pid)  # what the group left running
        return statuses, process.returncode

    def emit_stderr(self, group: tuple[str, ...], log: Path) -> None:
        tail = log.read_text()[-4000:]
        if tail:
            with self.lock:
                print(f"---- the end of {', '.join(group)}'s stderr:\n{tail}", file=sys.stderr, flush=True)


def run_groups(dry_run: bool, jobs: int, timeout: float) -> dict[str, str]:
    """The statuses of every check, run in `GROUPS` at most `jobs` at a time; one job: every check in
    one process (on the CPU, processes side by side would only share its cores)."""
    groups = GROUPS if jobs > 1 else (tuple(CHECKS),)
    with tempfile.TemporaryDirectory() as logs, ThreadPoolExecutor(jobs) as pool:
        runner = GroupRunner(dry_run, timeout, Path(logs))
        return {name: status for statuses in pool.map(runner, groups) for name, status in statuses.items()}


def summary(statuses: dict[str, str], seconds: float) -> str:
    counts = Counter(statuses.values())
    shown = f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"
    return f"gpu_check: {shown} in {seconds:.0f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: what can run there")
    parser.add_argument(
        "--only", help=f"comma-separated checks, run here one after another: {', '.join(CHECKS)}"
    )
    parser.add_argument("--jobs", type=int, help="groups at a time (default: all on CUDA, 1 on the CPU)")
    parser.add_argument("--timeout", type=float, default=330, help="seconds a group may run")
    args = parser.parse_args()
    unknown = set((args.only or "").split(",")) - {"", *CHECKS}
    if unknown:
        parser.error(f"no check named {', '.join(sorted(unknown))}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    started = time.time()
    if args.only:
        statuses = {name: run_check(name, device) for name in args.only.split(",")}
    else:
        print(f"gpu_check on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'the CPU'}")
        jobs = args.jobs or (len(GROUPS) if device.type == "cuda" else 1)
        statuses = run_groups(args.dry_run, jobs, args.timeout)
    print(summary(statuses, time.time() - started), flush=True)
    return 1 if "FAIL" in statuses.values() else 0


if __name__ == "__main__":
    sys.exit(main())
