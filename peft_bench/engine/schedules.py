"""Learning-rate schedules: the harness's warm-up + cosine, and mmcv's policies as the reference
configs use them (`CosineAnnealing`, `step`, `poly`, each with mmcv's warm-up).

A schedule is a factor of the configured lr as a function of the 0-based index of the optimiser
step about to run (mmcv's `runner.iter`), so that `LambdaLR` applies it. mmcv's semantics, from
`mmcv/runner/hooks/lr_updater.py` (mmcv 1.x, which the reference code runs on):

* the policy gives the *regular* rate: cosine and poly by iteration over the whole run, step by
  epoch (`runner.epoch`, the 0-based epoch of the iteration);
* during the first `warmup_iters` iterations the warm-up *multiplies* the regular rate:
  linear `1 - (1 - i / W) * (1 - ratio)`, constant `ratio`, exp `ratio ** (1 - i / W)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from peft_bench.config import Schedule, TrainerConfig, Warmup

LrFactor = Callable[[int], float]


def warmup_steps(cfg: TrainerConfig, steps_per_epoch: int, total_steps: int) -> int:
    """The warm-up's length in optimiser steps: `warmup_iters`, else `warmup_epochs` epochs (mmcv's
    `warmup_by_epoch`); never the whole run."""
    steps = cfg.warmup_iters if cfg.warmup_iters is not None else round(cfg.warmup_epochs * steps_per_epoch)
    return max(0, min(total_steps - 1, steps))


def lr_factor(cfg: TrainerConfig, steps_per_epoch: int, total_steps: int) -> LrFactor:
    """The lr factor of `cfg.schedule` at each step of a run of `total_steps` steps."""
    warmup = warmup_steps(cfg, steps_per_epoch, total_steps)
    if Schedule(cfg.schedule) is Schedule.warmup_cosine:
        return warmup_cosine(total_steps, warmup, cfg.min_lr_ratio)
    regular = _regular(cfg, steps_per_epoch, total_steps)
    return with_warmup(regular, Warmup(cfg.warmup), warmup, cfg.warmup_ratio)


def _regular(cfg: TrainerConfig, steps_per_epoch: int, total_steps: int) -> LrFactor:
    policy = Schedule(cfg.schedule)
    if policy is Schedule.cosine:
        return cosine(total_steps, cfg.min_lr_ratio)
    if policy is Schedule.step:
        return step_decay(steps_per_epoch, list(cfg.steps), cfg.gamma)
    return poly(total_steps, cfg.power, cfg.min_lr_ratio)


def warmup_cosine(total_steps: int, warmup_steps: int, min_lr_ratio: float) -> LrFactor:
    """The harness's schedule: a linear ramp to 1 over `warmup_steps` (from 1 / warmup_steps), then
    cosine over the remaining steps to `min_lr_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        decay = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return min_lr_ratio + (1.0 - min_lr_ratio) * decay

    return factor


def cosine(total_steps: int, min_lr_ratio: float) -> LrFactor:
    """mmcv's `CosineAnnealing` with `by_epoch=False`: from 1 at step 0 towards `min_lr_ratio`."""
    return lambda step: _annealed_cos(1.0, min_lr_ratio, step / total_steps)


def step_decay(steps_per_epoch: int, steps: list[int], gamma: float) -> LrFactor:
    """mmcv's `step` policy by epoch: x `gamma` for each epoch of `steps` that has begun
    (`steps=[3]`: the 4th epoch and later run at 0.1x)."""
    return lambda step: gamma ** sum(step // steps_per_epoch >= s for s in steps)


def poly(total_steps: int, power: float, min_lr_ratio: float) -> LrFactor:
    """mmcv's `poly` policy by iteration: `(1 - i / total) ** power` between 1 and `min_lr_ratio`."""
    return lambda step: (1.0 - min_lr_ratio) * (1.0 - step / total_steps) ** power + min_lr_ratio


def with_warmup(regular: LrFactor, kind: Warmup, warmup_steps: int, ratio: float) -> LrFactor:
    """mmcv's warm-up over the first `warmup_steps` steps, multiplying the regular factor."""
    if kind is Warmup.none or warmup_steps == 0:
        return regular

    def warm(step: int) -> float:
        progress = step / warmup_steps
        if kind is Warmup.linear:
            return 1.0 - (1.0 - progress) * (1.0 - ratio)
        if kind is Warmup.constant:
            return ratio
        return ratio ** (1.0 - progress)

    return lambda step: regular(step) * (warm(step) if step < warmup_steps else 1.0)


def _annealed_cos(start: float, end: float, progress: float) -> float:
    """mmcv's `annealing_cos`: from `start` at progress 0 to `end` at progress 1."""
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainerConfig, steps_per_epoch: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch, total_steps))
