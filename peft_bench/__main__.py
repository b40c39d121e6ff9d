"""`python -m peft_bench method=<m> dataset=<d> backbone=<b> ...` (Hydra; `-m` for sweeps)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from peft_bench.errors import TrainingDiverged, UserError
from peft_bench.plugins import register_configs

register_configs()


@hydra.main(config_path="pkg://peft_bench.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from peft_bench.run import run

    try:
        run(cfg)
    except (UserError, TrainingDiverged) as error:
        print(f"error: {error}" if isinstance(error, UserError) else f"run failed: {error}", file=sys.stderr)
        # In a sweep, one failed cell (recorded as such) must not stop the others.
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(2 if isinstance(error, UserError) else 1)


if __name__ == "__main__":
    main()
