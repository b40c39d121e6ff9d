"""Experiment loggers: none (the run record is always written) or Weights & Biases."""

from __future__ import annotations

from typing import Any, Protocol

from peft_bench.config import LoggerConfig, LoggerName
from peft_bench.errors import UserError


class Logger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


class NullLogger:
    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


class WandbLogger:
    """Logs to W&B; `logger.mode` (or the WANDB_MODE environment variable) picks online/offline."""

    def __init__(self, cfg: LoggerConfig, run_id: str, config: dict[str, Any], results_dir: str) -> None:
        try:
            import wandb
        except ImportError:
            raise UserError(
                "logger=wandb needs the wandb package: pip install 'peft_bench[wandb]'."
            ) from None
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            mode=cfg.mode.value if cfg.mode else None,
            name=run_id,
            id=run_id,
            resume="allow",
            config=config,
            tags=list(cfg.tags),
            dir=results_dir,
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(summary)
        self.run.finish()


def make_logger(cfg: LoggerConfig, run_id: str, config: dict[str, Any], results_dir: str) -> Logger:
    if LoggerName(cfg.name) is LoggerName.wandb:
        return WandbLogger(cfg, run_id, config, results_dir)
    return NullLogger()
