"""The training loop: AdamW and the configured lr schedule, AMP on CUDA, DDP, model selection on a
validation split (or none: the last checkpoint), epoch checkpoints, exact resume, a loss history.

Resume is exact on the CPU: the data order depends only on (seed, epoch), and a checkpoint at the
end of each epoch holds the RNG states, so a run killed mid-epoch and resumed repeats that epoch
from the same state and ends with the same metrics as a run that was never interrupted. With
DataLoader workers, each sample's augmentation is keyed on (seed, epoch, index) (`sample_seeds`);
on CUDA, bit-exactness also needs `trainer.deterministic` (cuDNN's autotuner, atomics).
"""

from __future__ import annotations

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
from peft_bench.engine.distributed import (
    DistInfo,
    ShardSampler,
    barrier,
    broadcast_object,
    check_shared_directory,
    cpus_per_process,
    gather_to_main,
)
from peft_bench.engine.optim import build_optimizer
from peft_bench.engine.precision import autocast, grad_scaler, resolve_precision
from peft_bench.engine.sample_seeds import EpochKeys, SeededSamples
from peft_bench.engine.schedules import build_scheduler
from peft_bench.errors import TrainingDiverged, UserError
from peft_bench.layers.ghost_norm import synchronise_batch_norms
from peft_bench.layers.merge import merged

# fairseq's `min_loss_scale`: a dynamic loss scale halved this far has met inf or NaN gradients at
# every scale it tried, so the model itself, not the fp16 range, has diverged.
MIN_LOSS_SCALE = 1e-4


@dataclass
class RowAccount:
    """What the steps of a history row left: their mean finite loss (nan when none was finite), the
    steps whose loss was not finite, and the steps the fp16 loss scale skipped."""

    loss: float
    non_finite: int
    skipped: int


class StepAccount:
    """The steps since the last history row, kept on the device: the sum of their finite losses,
    their count of finite losses and of steps the loss scale skipped. Reading them is one host sync,
    which happens once a row (`trainer.log_every`), not once a step."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, device=device)  # finite losses, finite steps, skipped steps
        self.steps = 0

    def add(self, loss: torch.Tensor, skipped: torch.Tensor | None) -> None:
        loss = loss.float()
        finite = torch.isfinite(loss)
        self.sums[:2] += torch.stack([torch.where(finite, loss, 0.0), finite.float()])
        if skipped is not None:
            self.sums[2] += skipped
        self.steps += 1

    def take_skipped(self) -> int:
        """The steps skipped since the last take; every process skips the same ones (DDP gives each
        the same gradients), so this process's count is the run's."""
        skipped = int(self.sums[2].item())
        self.sums[2] = 0
        return skipped

    def read(self, info: DistInfo) -> RowAccount:
        """The row's account over the steps and the processes; then it starts again."""
        sums = self.sums
        if info.distributed:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        values = torch.stack([sums[0] / sums[1], sums[1], sums[2] / info.world_size])  # 0 / 0: nan
        loss, finite, skipped = values.tolist()
        steps = self.steps * info.world_size
        self.sums.zero_()
        self.steps = 0
        return RowAccount(loss, steps - round(finite), round(skipped))


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


def data_workers(requested: int | None, device: torch.device, local_processes: int) -> int:
    """DataLoader workers: as configured; else none on the CPU (they would compete with the model
    for its cores) and, on CUDA, up to 8 per process from the CPUs this process may use (its share of
    its node's, or its SLURM task's), one left to the process itself."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return 0
    return max(0, min(8, cpus_per_process(local_processes) - 1))


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
        self.workers = data_workers(data_cfg.num_workers, self.device, info.local_world_size)
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
            # batch statistics noisy, and undefined on UperNet's 1x1 pooled map (a head that asks for
            # per-group statistics keeps them: `GhostBatchNorm2d`). (CUDA only: SyncBatchNorm has no
            # CPU kernels.) The parameters and state-dict keys stay the same.
            synchronise_batch_norms(model)
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

        state = self.state
        last_path = self.checkpoint_dir / "last.pt"
        best_path = self.checkpoint_dir / "best.pt"
        check_shared_directory(self.checkpoint_dir)
        if broadcast_object(last_path.exists()):  # rank 0 decides: every process resumes, or none
            ckpt = load_checkpoint(last_path)
            load_trainable_state(model, ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt["scaler"] and scaler.is_enabled():  # a run without a loss scale saved none
                scaler.load_state_dict(ckpt["scaler"])
            state = self.state = LoopState(**ckpt["loop"])
            set_rng_state(rank_rng_state(ckpt["rng"], self.info.rank), self.device)
        # Wrapped after the resume: DDP starts every process from rank 0's weights and buffers.
        net: nn.Module = model
        if self.info.distributed:
            net = DistributedDataParallel(model, gradient_as_bucket_view=True)

        bar = tqdm(
            total=stop_step,
            initial=state.step,
            disable=not (cfg.progress and self.info.is_main),
            desc="train",
            dynamic_ncols=True,
        )
        account = StepAccount(self.device)
        reset_peak_memory(self.device)
        while state.step < stop_step:
            train_loader.sampler.set_epoch(state.epoch)
            net.train()
            for images, targets in train_loader:
                with self.step_timer.step():
                    loss, skipped = self._train_step(
                        net, optimizer, scheduler, scaler, trainable, images, targets
                    )
                account.add(loss, skipped)
                state.step += 1
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == stop_step:
                    self._log_row(account.read(self.info), scheduler, scaler, state, bar)
                if state.step >= stop_step:
                    break
            state.epoch += 1
            if scaler.is_enabled():  # the checkpoint's count includes the steps since the last row
                state.skipped_steps += account.take_skipped()
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
            barrier()
        bar.close()

        if data.test is None:  # a grid point of a tuned protocol: val scores it, test stays unseen
            return FitResult({}, {}, None, self._best(main_metric, data), *self._trace())
        test_loader = self._eval_loader(data.test, data.collate_fn)
        last_metrics = self.evaluate(model, test_loader, evaluator)
        outcomes = sample_outcomes(evaluator)
        selected_metrics = None
        if val_loader is not None:
            selected_metrics = last_metrics
            # the model ends as the selected one; none was selected when no step was taken (max_steps=0)
            if state.best_step not in (None, state.step):
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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimiser step. Its loss, and under fp16 whether the loss scale skipped it, stay on the
        device (read when a history row is written). Gradients are freed right after the update, so
        that the next forward runs without them (a step's peak holds no stale gradients)."""
        images, targets = to_device(images, self.device), to_device(targets, self.device)
        with self.autocast():
            loss = net(images, targets)
        scaler.scale(loss).backward()
        if self.cfg.clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, self.cfg.clip_grad_norm)
        skipped = None
        if scaler.is_enabled():  # fp16: a step with inf or NaN gradients is skipped, the scale halved
            scale = scaler._scale.clone()  # the scale's device tensor: get_scale() would sync the host
            scaler.step(optimizer)
            scaler.update()
            skipped = scaler._scale < scale
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return loss.detach(), skipped

    def _log_row(
        self,
        row_account: RowAccount,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        state: LoopState,
        bar: tqdm,
    ) -> None:
        """A history row: the mean loss since the last one and the lr; under fp16 the loss scale (read
        once a row) and the skipped steps so far. A non-finite loss ends the run, except under fp16:
        there the scale skips such steps (a row of skipped steps has a nan loss), and the run ends when
        the scale has collapsed, which a diverged model reaches within about 30 steps."""
        loss = row_account.loss
        state.skipped_steps += row_account.skipped
        if not scaler.is_enabled():
            scale = None
            if row_account.non_finite:
                raise TrainingDiverged(
                    f"the training loss became inf or NaN by step {state.step} (epoch {state.epoch}); "
                    "lower trainer.lr or set trainer.clip_grad_norm"
                )
        elif (scale := scaler.get_scale()) < MIN_LOSS_SCALE:
            raise TrainingDiverged(
                f"the fp16 loss scale fell to {scale:g} by step {state.step} (epoch {state.epoch}): every "
                "step met inf or NaN gradients. Lower trainer.lr, set trainer.clip_grad_norm, or train "
                "in bf16 or fp32 (trainer.precision)"
            )
        row = {"step": state.step, "epoch": state.epoch, "loss": loss, "lr": scheduler.get_last_lr()[0]}
        if scale is not None:
            row.update(loss_scale=scale, skipped_steps=state.skipped_steps)
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
