"""The training loop: AdamW and the configured lr schedule, AMP on CUDA, DDP, model selection on a
validation split (or none: the last checkpoint), epoch checkpoints, exact resume, a loss history.

Resume is exact on the CPU: the data order depends only on (seed, epoch), and a checkpoint at the
end of each epoch holds the RNG states, so a run killed mid-epoch and resumed repeats that epoch
from the same state and ends with the same metrics as a run that was never interrupted. With
DataLoader workers, each sample's augmentation is keyed on (seed, epoch, index) (`sample_seeds`);
on CUDA, bit-exactness also needs `trainer.deterministic` (cuDNN's autotuner, atomics).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from peft_bench.config import DataConfig, TrainerConfig
from peft_bench.data.base import TaskData
from peft_bench.engine.checkpoint import (
    load_checkpoint,
    load_trainable_state,
    rank_rng_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    trainable_state,
)
from peft_bench.engine.contract import Evaluator, TaskModel
from peft_bench.engine.cost import StepTimer, Throughput, peak_memory, reset_peak_memory
from peft_bench.engine.distributed import DistInfo, ShardSampler, gather_to_main
from peft_bench.engine.optim import build_optimizer
from peft_bench.engine.precision import autocast, grad_scaler, resolve_precision
from peft_bench.engine.sample_seeds import EpochKeys, SeededSamples
from peft_bench.engine.schedules import build_scheduler
from peft_bench.errors import TrainingDiverged, UserError
from peft_bench.layers.merge import merged


class RunningLoss:
    """The sum of the losses since the last history row, kept on the device: reading it is a host
    sync, which happens once a row (`trainer.log_every`), not once a step."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.count = 0

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.float()
        self.count += 1

    def mean(self, info: DistInfo) -> float:
        """The mean over the steps and the processes; then it starts again."""
        total = self.total / self.count
        if info.distributed:  # gloo has no AVG: sum, then divide
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            total = total / info.world_size
        self.total, self.count = torch.zeros_like(self.total), 0
        return total.item()


@dataclass
class LoopState:
    """Everything about the loop's progress that a checkpoint must carry."""

    step: int = 0
    epoch: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    skipped_steps: int = 0  # fp16 steps skipped for inf or NaN gradients
    history: list[dict[str, float]] = field(default_factory=list)
    val_history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class FitResult:
    test_metrics: dict[str, float]  # of the reported checkpoint: the best on val, or the last
    last_metrics: dict[str, float]  # of the last checkpoint
    selected_metrics: dict[str, float] | None  # of the best checkpoint on val (None: no val split)
    best: dict[str, Any]
    history: list[dict[str, float]]
    val_history: list[dict[str, float]]
    steps: int
    cost: dict[str, Any]  # `engine.cost`'s measures of this process's steps and evaluations
    # Per test sample of the reported checkpoint, on rank 0 (None elsewhere, without a test split,
    # or where the evaluator keeps none: `Evaluator`)
    outcomes: dict[str, np.ndarray] | None = None


def sample_outcomes(evaluator: Evaluator) -> dict[str, np.ndarray] | None:
    """The per-sample outcomes of the evaluator's last evaluation, where it keeps them (every rank
    calls this: an evaluator may gather them)."""
    outcomes = getattr(evaluator, "outcomes", None)
    return outcomes() if outcomes is not None else None


def per_device_batch(batch_size: int, world_size: int) -> int:
    """Each process's share of the configured batch, which is the global one."""
    if batch_size % world_size:
        raise UserError(
            f"data.batch_size={batch_size} is the global batch, and {world_size} processes cannot share it "
            f"evenly. Choose a multiple of {world_size} (the lr was set for the global batch), or run on "
            "a number of processes that divides it."
        )
    return batch_size // world_size


def check_batch_fits(train_size: int, batch_size: int, world_size: int) -> None:
    """Every process must get one whole batch an epoch (an epoch drops its last, partial batch)."""
    if train_size // world_size < per_device_batch(batch_size, world_size):
        raise UserError(
            f"The training split has {train_size} samples, fewer than one batch of {batch_size} "
            f"(data.batch_size{f', over {world_size} processes' if world_size > 1 else ''}): an epoch "
            "would have no step. Lower data.batch_size, or give the split more samples (data.train_size "
            "for the embedded datasets; data.selection_split=none trains on the whole training split)."
        )


def data_workers(requested: int | None, device: torch.device, world_size: int) -> int:
    """DataLoader workers: as configured; else none on the CPU (they would compete with the model
    for its cores) and, on CUDA, up to 8 per process from the machine's CPUs, one left to each process."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) // world_size - 1))


def compile_in_place(model: nn.Module, backend: str) -> None:
    """torch.compile `model`'s forward (the training step's graph) in place, so that its state dict keeps
    its keys; evaluation's `predict` stays eager. An unknown backend is refused before any step."""
    known = torch.compiler.list_backends(exclude_tags=())
    if backend not in known:
        raise UserError(
            f"trainer.compile_backend={backend!r} is not a torch.compile backend here. Known: "
            f"{', '.join(sorted(known))} (inductor generates kernels; aot_eager only captures the graph)."
        )
    model.compile(backend=backend)


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors, and tensors nested in lists, tuples and dicts, to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


class Trainer:
    def __init__(
        self,
        cfg: TrainerConfig,
        data_cfg: DataConfig,
        info: DistInfo,
        checkpoint_dir: Path,
        lr_mult: float = 1.0,
        log: Callable[[dict[str, float], int], None] | None = None,
        on_epoch_end: Callable[[LoopState], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.data_cfg = data_cfg
        self.info = info
        self.device = info.device
        self.checkpoint_dir = checkpoint_dir
        self.lr_mult = lr_mult
        self.log = log or (lambda metrics, step: None)
        self.on_epoch_end = on_epoch_end or (lambda state: None)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.autocast = autocast(self.device, self.precision)
        self.workers = data_workers(data_cfg.num_workers, self.device, info.world_size)
        self.state = LoopState()  # readable after a failure: the history up to that point
        self.step_timer = StepTimer(self.device)
        self.eval_throughput = Throughput(self.device)

    # ---- data -------------------------------------------------------------------------------
    def _train_loader(self, dataset: Dataset, collate_fn: Callable | None) -> DataLoader:
        sampler = DistributedSampler(
            dataset,
            num_replicas=self.info.world_size,
            rank=self.info.rank,
            shuffle=True,
            seed=self.cfg.seed,
            drop_last=True,
        )
        generator = None  # without workers, samples draw from the main process's generators
        if self.workers > 0:
            # Persistent workers' generators would depend on when the loader's iterator was made (a
            # resume) and on the worker count: each sample draws from its own seed of (seed, epoch,
            # index) instead, and the loader's own generator leaves the main process's untouched.
            dataset, sampler = SeededSamples(dataset, self.cfg.seed), EpochKeys(sampler)
            generator = torch.Generator().manual_seed(self.cfg.seed)
        return DataLoader(
            dataset,
            batch_size=per_device_batch(self.data_cfg.batch_size, self.info.world_size),
            sampler=sampler,
            drop_last=True,
            num_workers=self.workers,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.workers > 0,
            generator=generator,
        )

    def _eval_loader(self, dataset: Dataset, collate_fn: Callable | None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.data_cfg.eval_batch_size,
            sampler=ShardSampler(len(dataset), self.info.rank, self.info.world_size),
            num_workers=self.workers,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
        )

    # ---- loop -------------------------------------------------------------------------------
    def fit(self, model: TaskModel, data: TaskData, evaluator: Evaluator, main_metric: str) -> FitResult:
        cfg = self.cfg
        model.to(self.device)
        if self.info.distributed and self.device.type == "cuda":
            # As mmdet and mmseg train their heads: per-GPU batches of 1-2 images leave BatchNorm's
            # batch statistics noisy, and undefined on UperNet's 1x1 pooled map. (CUDA only:
            # SyncBatchNorm has no CPU kernels.) The parameters and state-dict keys stay the same.
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if cfg.compile:
            compile_in_place(model, cfg.compile_backend)
        train_loader = self._train_loader(data.train, data.collate_fn)
        val_loader = None if data.val is None else self._eval_loader(data.val, data.collate_fn)
        steps_per_epoch = len(train_loader)
        total_steps = cfg.iterations or cfg.epochs * steps_per_epoch
        stop_step = min(total_steps, cfg.max_steps) if cfg.max_steps is not None else total_steps

        optimizer = build_optimizer(
            model,
            cfg.lr * self.lr_mult,
            cfg.weight_decay,
            cfg.head_lr_mult,
            cfg.no_decay,
            fused=self.device.type == "cuda",
        )
        scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, total_steps)
        scaler = grad_scaler(self.device, self.precision)
        trainable = [p for p in model.parameters() if p.requires_grad]
        net: nn.Module = DistributedDataParallel(model) if self.info.distributed else model

        state = self.state
        last_path = self.checkpoint_dir / "last.pt"
        best_path = self.checkpoint_dir / "best.pt"
        if last_path.exists():
            ckpt = load_checkpoint(last_path)
            load_trainable_state(model, ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt["scaler"] and scaler.is_enabled():  # a run without a loss scale saved none
                scaler.load_state_dict(ckpt["scaler"])
            state = self.state = LoopState(**ckpt["loop"])
            set_rng_state(rank_rng_state(ckpt["rng"], self.info.rank), self.device)

        bar = tqdm(
            total=stop_step,
            initial=state.step,
            disable=not (cfg.progress and self.info.is_main),
            desc="train",
            dynamic_ncols=True,
        )
        losses = RunningLoss(self.device)
        reset_peak_memory(self.device)
        while state.step < stop_step:
            train_loader.sampler.set_epoch(state.epoch)
            net.train()
            for images, targets in train_loader:
                with self.step_timer.step():
                    loss = self._train_step(
                        net, optimizer, scheduler, scaler, trainable, images, targets, state
                    )
                losses.add(loss)
                state.step += 1
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == stop_step:
                    self._log_row(losses.mean(self.info), scheduler, scaler, state, bar)
                if state.step >= stop_step:
                    break
            state.epoch += 1
            if val_loader is not None and (state.epoch % cfg.eval_every == 0 or state.step >= stop_step):
                self._validate(model, val_loader, evaluator, main_metric, state, best_path)
            rng = gather_to_main([rng_state(self.device)])  # each process's own generators
            if self.info.is_main:
                save_checkpoint(
                    last_path,
                    model=trainable_state(model),
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict(),
                    loop=vars(state),
                    rng=rng,
                )
                self.on_epoch_end(state)
            self._barrier()
        bar.close()

        if data.test is None:  # a grid point of a tuned protocol: val scores it, test stays unseen
            return FitResult({}, {}, None, self._best(main_metric, data), *self._trace())
        test_loader = self._eval_loader(data.test, data.collate_fn)
        last_metrics = self.evaluate(model, test_loader, evaluator)
        outcomes = sample_outcomes(evaluator)
        selected_metrics = None
        if val_loader is not None:
            selected_metrics = last_metrics
            if state.best_step != state.step:  # the model ends as the selected one
                best_state = torch.load(best_path, map_location=self.device, weights_only=True)
                load_trainable_state(model, best_state)
                selected_metrics = self.evaluate(model, test_loader, evaluator)
                outcomes = sample_outcomes(evaluator)
        return FitResult(
            last_metrics if selected_metrics is None else selected_metrics,
            last_metrics,
            selected_metrics,
            self._best(main_metric, data),
            *self._trace(),
            outcomes,
        )

    def _best(self, main_metric: str, data: TaskData) -> dict[str, Any]:
        state = self.state
        return {
            "metric": main_metric,
            "value": state.best_value,
            "epoch": state.best_epoch,
            "step": state.best_step,
            "split": data.selection,
        }

    def _trace(self) -> tuple[list, list, int, dict[str, Any]]:
        """What every fit returns after its metrics: the histories, the steps and the cost."""
        state = self.state
        return state.history, state.val_history, state.step, self.cost()

    def cost(self) -> dict[str, Any]:
        """Median step time; training and evaluation images per second of all processes together
        (the global batch per step; each process evaluates its shard at this process's rate); the peak
        memory since training began."""
        step_s = self.step_timer.median()
        eval_img_s = self.eval_throughput.per_second()
        return {
            "step_s": step_s,
            "train_img_s": self.data_cfg.batch_size / step_s if step_s else None,
            "steps_timed": len(self.step_timer.seconds),
            "eval_img_s": eval_img_s * self.info.world_size if eval_img_s else None,
            **peak_memory(self.device),
        }

    def _train_step(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        trainable: list[nn.Parameter],
        images: Any,
        targets: Any,
        state: LoopState,
    ) -> torch.Tensor:
        """One optimiser step; its loss stays on the device (read when a history row is written)."""
        images, targets = to_device(images, self.device), to_device(targets, self.device)
        with self.autocast():
            loss = net(images, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.cfg.clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, self.cfg.clip_grad_norm)
        scaler.step(optimizer)
        if scaler.is_enabled():  # fp16: a step with inf or NaN gradients is skipped, the scale halved
            scale = scaler.get_scale()
            scaler.update()
            state.skipped_steps += int(scaler.get_scale() < scale)
        scheduler.step()
        return loss.detach()

    def _log_row(
        self,
        loss: float,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        state: LoopState,
        bar: tqdm,
    ) -> None:
        """A history row: the mean loss since the last one, checked to be finite, and the lr."""
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss} by step {state.step} (epoch {state.epoch}); "
                "lower trainer.lr or set trainer.clip_grad_norm"
            )
        row = {"step": state.step, "epoch": state.epoch, "loss": loss, "lr": scheduler.get_last_lr()[0]}
        if scaler.is_enabled():
            row.update(loss_scale=scaler.get_scale(), skipped_steps=state.skipped_steps)
        state.history.append(row)
        self.log({f"train/{k}": v for k, v in row.items() if k not in ("step", "epoch")}, state.step)
        bar.set_postfix(epoch=state.epoch, loss=f"{loss:.4f}")

    def _validate(
        self,
        model: TaskModel,
        loader: DataLoader,
        evaluator: Evaluator,
        main_metric: str,
        state: LoopState,
        best_path: Path,
    ) -> None:
        metrics = self.evaluate(model, loader, evaluator)
        state.val_history.append({"epoch": state.epoch, "step": state.step, **metrics})
        self.log({f"val/{k}": v for k, v in metrics.items()}, state.step)
        value = metrics[main_metric]
        if state.best_value is None or value > state.best_value:
            state.best_value, state.best_epoch, state.best_step = value, state.epoch, state.step
            if self.info.is_main:
                save_checkpoint(best_path, **trainable_state(model))
        if self.info.is_main:
            shown = " ".join(f"{k} {v:.2f}" for k, v in metrics.items())
            best = f"best {main_metric} {state.best_value:.2f}"
            tqdm.write(f"epoch {state.epoch} step {state.step}: val {shown} ({best})")

    @torch.no_grad()
    def evaluate(self, model: TaskModel, loader: DataLoader, evaluator: Evaluator) -> dict[str, float]:
        """The metrics of `model` on `loader`, its mergeable updates merged (the deployed model's cost)."""
        model.eval()
        evaluator.reset()
        with merged(model), self.eval_throughput.timing():
            for images, targets in loader:
                with self.autocast():
                    predictions = model.predict(to_device(images, self.device))
                evaluator.update(predictions, targets)  # on the CPU: an evaluator moves what it needs
                self.eval_throughput.images += len(images)
        return evaluator.compute()

    def _barrier(self) -> None:
        if self.info.distributed:
            dist.barrier()
