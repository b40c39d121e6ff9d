"""Pretrain a backbone offline on the embedded upstream task, and export it as a timm checkpoint.

    python -m peft_bench.pretrain backbone=swin_micro

Delta-tuning presumes a pretrained backbone, and no weights can be downloaded here: this trains
`swin_micro` (Full fine-tuning, from random weights) on `shapes_upstream`, scenes of 22 shape kinds
disjoint from the downstream ten and drawn in another style, the ImageNet-22k of this small world.
It is an ordinary run (run record, resume, progress bar); at its end the selected backbone is
written in timm's format, fp16, with a sidecar JSON holding the config that produced it, its
upstream metrics, the file's SHA-256 and its revision (the next one where it replaces a file exported
from another run: `peft_bench.shipped`). `backbone.weights=mini` loads the shipped one.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save

from peft_bench.errors import TrainingDiverged, UserError
from peft_bench.plugins import register_configs
from peft_bench.results.atomic import write_atomic, write_json_atomic
from peft_bench.results.store import run_dir
from peft_bench.shipped import export_revision, sidecar_of

register_configs()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_backbone(record: dict[str, Any], cfg: DictConfig, output: Path) -> dict[str, Any]:
    """Write the run's selected backbone (timm names, fp16) to `output` and its sidecar JSON."""
    delta = load_file(str(run_dir(cfg.paths.results_dir, record["run_id"]) / "model.safetensors"))
    prefix = "backbone."
    backbone = {k[len(prefix) :]: v.half().contiguous() for k, v in delta.items() if k.startswith(prefix)}
    metadata = {"format": "timm", "backbone": cfg.backbone.name, "run_id": record["run_id"]}
    revision = export_revision(output, record["run_id"])  # read before the file it may replace is written
    write_atomic(output, lambda f: f.write(save(backbone, metadata=metadata)))
    info = {
        "file": output.name,
        "sha256": sha256_of(output),
        "run_id": record["run_id"],
        "revision": revision,
        "backbone": cfg.backbone.name,
        "command": "python -m peft_bench.pretrain " + " ".join(sys.argv[1:]),
        "upstream": {"dataset": cfg.data.name, "test": record["metrics"], "best": record["best"]},
        "steps": record["steps"],
        "wall_s": record["wall_s"],
        "versions": record["versions"],
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_json_atomic(sidecar_of(output), info)
    return info


@hydra.main(config_path="pkg://peft_bench.conf", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from peft_bench.run import run

    try:
        record = run(cfg)
    except (UserError, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, UserError) else 1)
    output = Path(cfg.paths.export_dir) / f"{cfg.backbone.name}-{cfg.data.name}.safetensors"
    if int(os.environ.get("RANK", "0")) == 0:
        info = export_backbone(record, cfg, output)
        print(f"exported {output} (sha256 {info['sha256'][:16]}...), upstream test {record['metrics']}")


if __name__ == "__main__":
    main()
