"""Count a method's trainable backbone parameters without training and without weights.

    python -m peft_bench.params backbone=swin_b method=mona
    python -m peft_bench.params -m method=mona,lora backbone=swin_t,swin_l method.dim=32

prints one JSON line per combination. The backbone is built on the meta device: no memory, no
initialisation, no download. Percentages follow the paper's Tables 4 and 5:
trainable / (frozen backbone + trainable) * 100.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from peft_bench.accounting import parameter_counts
from peft_bench.config import register_configs
from peft_bench.errors import UserError

register_configs()


def count(cfg: DictConfig) -> dict[str, Any]:
    from peft_bench.backbones.swin import build_swin
    from peft_bench.methods import build_method
    from peft_bench.tasks import build_task

    with torch.device("meta"):
        backbone = build_swin(
            cfg.backbone.name,
            cfg.backbone.img_size,
            cfg.backbone.window_size,
            always_partition=cfg.backbone.always_partition,  # changes the size of a shrunk window's table
        )
        dense = build_task(cfg.data.task).dense
        backbone.prepare_output_norms(per_stage=dense, fresh=cfg.backbone.fresh_output_norms)
        build_method(cfg.method).apply(backbone)
        backbone.freeze_stages(cfg.backbone.frozen_stages)
    counts = parameter_counts(backbone, backbone)
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


@hydra.main(config_path="../conf", config_name="params", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        print(json.dumps(count(cfg)), flush=True)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
