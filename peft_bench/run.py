"""One run, end to end: config -> data -> task model (`peft_bench.builder`) -> trainer -> run record."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torchvision
from omegaconf import DictConfig, OmegaConf

from peft_bench.accounting import parameter_counts, trainable_manifest
from peft_bench.builder import build_data, build_task_model, check_choices, head_of
from peft_bench.config import Precision, Resume
from peft_bench.data.base import TaskData
from peft_bench.delta import backbone_fingerprint, save_delta
from peft_bench.engine.contract import TaskModel
from peft_bench.engine.distributed import DistInfo, broadcast_object, init_distributed, shutdown_distributed
from peft_bench.engine.flops import count_run_flops
from peft_bench.engine.precision import resolve_precision
from peft_bench.engine.trainer import Trainer, check_batch_fits, per_device_batch
from peft_bench.loggers import make_logger
from peft_bench.results.atomic import write_json_atomic, write_text_atomic
from peft_bench.results.outcomes import write_outcomes
from peft_bench.results.protocol import protocol_hash, protocol_name, run_id_for
from peft_bench.results.store import read_record, run_dir, write_history, write_record
from peft_bench.tuning import apply_chosen


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, numpy and torch with `seed + rank`: each process draws its own augmentation,
    dropout and drop path; the weights stay rank 0's (DDP broadcasts them), so rank 0 trains as a
    single-process run of the same seed. DataLoader workers seed each sample's augmentation from
    (seed, epoch, index) instead (`engine.sample_seeds`)."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def set_deterministic(deterministic: bool) -> None:
    """`trainer.deterministic`: deterministic kernels, cuDNN without its autotuner (which picks kernels
    by timing them) and cuBLAS with a fixed workspace (read at its first call, which comes later: the
    model is built and moved after this). Set either way, so that a run does not inherit an earlier
    run's mode in the same process; a workspace the user set is kept."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic


def set_tf32(tf32: bool) -> None:
    """`trainer.tf32`: fp32 matmuls in TF32 on Ampere and later GPUs (no effect on the CPU). Set either
    way, so that a run does not inherit an earlier run's in the same process."""
    torch.backends.cuda.matmul.allow_tf32 = tf32


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
    }


def device_name(info: DistInfo) -> str:
    if info.device.type == "cuda":
        return f"{torch.cuda.get_device_name(info.device)} x{info.world_size}"
    return f"cpu ({torch.get_num_threads()} threads) x{info.world_size}"


def split_sizes(data: TaskData) -> dict[str, int | None]:
    """The images of each split (None: no such split), as the record keeps them: a test set's size
    bounds how finely its metric can tell two methods apart."""
    splits = {"train": data.train, "val": data.val, "test": data.test}
    return {name: None if split is None else len(split) for name, split in splits.items()}


def start_up_flops(
    model: TaskModel, data: TaskData, cfg: DictConfig, per_device: int, device: torch.device
) -> dict[str, Any]:
    """The record's `flops`: one training step and inference counted on a copy of `model` before it
    trains (its state and every generator left as they were); the error where counting failed, which
    does not stop the run."""
    try:
        flops = count_run_flops(model, data, per_device, cfg.data.eval_batch_size, device)
    except Exception as error:  # a count, not the run: the run goes on without it
        print(f"warning: FLOPs not counted: {type(error).__name__}: {error}", file=sys.stderr)
        return {"error": f"{type(error).__name__}: {error}"}
    return {**flops.record(cfg.data.batch_size), "source": "run"}


def resolve_run_id(cfg: DictConfig, info: DistInfo) -> str:
    """The protocol-derived id; with `trainer.resume=never`, a fresh id stamped with the time."""
    run_id = run_id_for(cfg)
    if Resume(cfg.trainer.resume) is Resume.never:
        run_id = f"{run_id}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}"
    return broadcast_object(run_id)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one configuration; return its run record."""
    info = init_distributed(cfg.trainer.device)
    try:
        return _run(cfg, info)
    finally:
        shutdown_distributed()


def _run(cfg: DictConfig, info: DistInfo) -> dict[str, Any]:
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    # Resolved before the run id, which it enters: a CPU fp32 run and a GPU bf16 run are not the same run.
    cfg.trainer.precision = resolve_precision(cfg.trainer.precision, info.device)
    per_device = per_device_batch(cfg.data.batch_size, info.world_size)
    tuning = apply_chosen(cfg)  # before the run id, which the chosen values enter
    run_id = resolve_run_id(cfg, info)
    directory = run_dir(cfg.paths.results_dir, run_id)
    existing = read_record(directory)
    if existing and existing.get("status") == "completed":
        if info.is_main:
            print(f"run {run_id} is already completed: {directory} (trainer.resume=never starts a new one)")
        return existing

    started = time.time()
    seed_everything(cfg.trainer.seed, info.rank)
    task = check_choices(cfg)
    if info.device.type == "cuda":  # cuDNN's autotuner pays off where every batch has one shape
        torch.backends.cudnn.benchmark = not head_of(cfg).dense
    set_deterministic(cfg.trainer.deterministic)  # after the autotuner's switch: it may turn it off
    set_tf32(cfg.trainer.tf32)
    data = build_data(cfg)  # first: a missing dataset fails before any model is built
    if tuning and tuning["stage"] == "tune":  # a grid point is scored on val; test stays unseen
        data = replace(data, test=None)
    check_batch_fits(len(data.train), cfg.data.batch_size, info.world_size)
    fingerprints: list[str] = []  # of the base weights, before any tuning
    model = build_task_model(
        cfg, data.num_classes, on_base=lambda b: fingerprints.append(backbone_fingerprint(b))
    )
    (fingerprint,) = fingerprints
    flops = start_up_flops(model, data, cfg, per_device, info.device) if info.is_main else None

    record: dict[str, Any] = {
        "run_id": run_id,
        "status": "running",
        "method": cfg.method.name,
        "dataset": cfg.data.name,
        "task": cfg.data.task,
        "backbone": cfg.backbone.name,
        "weights": cfg.backbone.weights,
        "seed": cfg.trainer.seed,
        # harness, paper, test-max, vtab or vtab-tune: what chose the hyperparameters and the checkpoint
        "protocol": protocol_name(cfg),
        "metrics": {},
        "best": {},
        "tuning": tuning,  # None: the config's own hyperparameters
        "split_sizes": split_sizes(data),
        "params": parameter_counts(model, model.backbone),
        "protocol_hash": protocol_hash(cfg),
        "base_fingerprint": fingerprint,
        "git_sha": git_sha(),
        "versions": versions(),
        "device": device_name(info),
        "precision": Precision(cfg.trainer.precision).value,
        "deterministic": cfg.trainer.deterministic,
        "tf32": cfg.trainer.tf32,
        "batch": {"global": cfg.data.batch_size, "per_device": per_device, "world_size": info.world_size},
        "flops": flops,  # counted at start-up on one batch (`engine.flops`), outside the run's draws
        "wall_s": None,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if info.is_main:
        write_text_atomic(directory / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_json_atomic(directory / "manifest.json", trainable_manifest(model, model.backbone, model.neck))
        write_record(directory, record)
        print(
            f"run {run_id}: {cfg.method.name} on {cfg.data.name} with {cfg.backbone.name}; "
            f"{record['params']['backbone_trainable']:,} trainable backbone parameters "
            f"({record['params']['trainable_percent']:.2f}%); protocol {record['protocol']}: {data.selection}"
        )
        if tuning and tuning.get("untuned"):
            print(f"untuned: {tuning['untuned']}")
    logger = make_logger(cfg.logger, run_id, resolved, str(cfg.paths.results_dir)) if info.is_main else None
    trainer = Trainer(
        cfg.trainer,
        cfg.data,
        info,
        directory / "checkpoints",
        lr_mult=cfg.method.lr_mult * cfg.trainer.method_lr_mult.get(cfg.method.name, 1.0),
        log=logger.log if logger else None,
        on_epoch_end=lambda state: write_history(directory, state.history),
    )
    try:
        result = trainer.fit(model, data, task.build_evaluator(data, info.device), task.main_metric)
    except Exception as error:
        record.update(status="failed", error=f"{type(error).__name__}: {error}", wall_s=time.time() - started)
        if info.is_main:
            write_history(directory, trainer.state.history)
            write_record(directory, record)
            if logger:
                logger.finish({"status": "failed"})
        raise
    record.update(
        status="completed",
        metrics=result.test_metrics,
        metrics_last=result.last_metrics,
        metrics_selected=result.selected_metrics,
        best=result.best,
        val_history=result.val_history,
        steps=result.steps,
        skipped_steps=trainer.state.skipped_steps,
        cost={**result.cost, "device": record["device"], "precision": record["precision"]},
        wall_s=time.time() - started,
    )
    if info.is_main:
        write_history(directory, result.history)
        # The selected (best) model, as a delta on the base backbone.
        delta = directory / "model.safetensors"
        save_delta(delta, model, fingerprint, {"run_id": run_id, "config": resolved})
        record["cost"]["delta_bytes"] = delta.stat().st_size
        if result.outcomes is not None:
            stored = write_outcomes(directory, result.outcomes)
            record["outcomes"] = {"file": stored.name, "bytes": stored.stat().st_size}
        write_record(directory, record)
        if logger:
            logger.finish({f"test/{k}": v for k, v in result.test_metrics.items()})
        shown = " ".join(f"{k} {v:.2f}" for k, v in result.test_metrics.items())
        print(f"run {run_id} completed: test {shown}; record in {directory}", file=sys.stdout)
    return record
