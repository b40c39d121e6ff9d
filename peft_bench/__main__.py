"""`python -m peft_bench method=<m> dataset=<d> backbone=<b> ...` (Hydra; `-m` for sweeps)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from peft_bench.config import register_configs
from peft_bench.errors import TrainingDiverged, UserError

register_configs()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from peft_bench.run import run

    try:
        run(cfg)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as error:
        print(f"run failed: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
