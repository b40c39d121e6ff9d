"""Count a method's trainable backbone parameters without training and without weights.

    python -m peft_bench.params backbone=swin_b method=mona
    python -m peft_bench.params -m method=mona,lora backbone=swin_t,swin_l method.dim=32

prints one JSON line per combination. The task model is built as a run builds it
(`peft_bench.builder`), on the meta device: no memory, no initialisation, no download.
Percentages follow the paper's Tables 4 and 5: trainable / (frozen backbone + trainable) * 100.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from peft_bench.accounting import parameter_counts
from peft_bench.errors import UserError
from peft_bench.plugins import register_configs

register_configs()


def count(cfg: DictConfig) -> dict[str, Any]:
    """The backbone's counts of the task model that `cfg` builds (`peft_bench.builder`, as a run does)."""
    from peft_bench.builder import build_task_model

    with torch.device("meta"):
        model = build_task_model(cfg, num_classes=1, pretrained=False)  # the class count sizes the head only
    counts = parameter_counts(model, model.backbone)
    options = {k: v for k, v in OmegaConf.to_container(cfg.method).items() if k != "name"}
    return {
        "method": cfg.method.name,
        "backbone": cfg.backbone.name,
        "task": cfg.data.task,
        "backbone_total": counts["backbone_total"],
        "backbone_trainable": counts["backbone_trainable"],
        "backbone_frozen": counts["backbone_total"] - counts["backbone_trainable"],
        "trainable_percent": round(counts["trainable_percent"], 4),
        "method_options": options,
    }


@hydra.main(config_path="pkg://peft_bench.conf", config_name="params", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        print(json.dumps(count(cfg)), flush=True)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
