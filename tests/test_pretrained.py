"""The shipped offline-pretrained backbone (`backbone.weights=mini`) and the export that makes it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from peft_bench.backbones import Part, build_backbone
from peft_bench.config import BackboneConfig, Config, MethodConfig
from peft_bench.errors import UserError
from peft_bench.pretrain import export_backbone
from peft_bench.shipped import export_revision, shipped_files, sidecar_of


@pytest.mark.parametrize("size", sorted(shipped_files("mini")))
def test_shipped_checkpoint_matches_its_hash_and_loads(size: str) -> None:
    path = shipped_files("mini")[size]
    info = json.loads(path.with_suffix(".json").read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"]
    assert path.stat().st_size <= 5 * 2**20
    assert info["command"].startswith("python -m peft_bench.pretrain") and info["backbone"] == size

    backbone = build_backbone(BackboneConfig(name=size, weights="mini"))
    random = build_backbone(BackboneConfig(name=size, weights="none"))
    first_qkv = [b.transformer_blocks()[0].part(Part.qkv).weight for b in (backbone, random)]
    assert not torch.equal(*first_qkv)
    features = backbone.eval()(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, backbone.num_features) and torch.isfinite(features).all()


def test_export_writes_a_timm_checkpoint_of_the_selected_backbone(tmp_path: Path) -> None:
    torch.manual_seed(3)
    trained = build_backbone(BackboneConfig(name="swin_micro", weights="none"))
    run_dir = tmp_path / "runs" / "r0"
    run_dir.mkdir(parents=True)
    delta = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    delta["head.weight"] = torch.zeros(22, 256)
    save_file(delta, str(run_dir / "model.safetensors"))
    record = {
        "run_id": "r0",
        "metrics": {"top1": 50.0},
        "best": {},
        "steps": 10,
        "wall_s": 1.0,
        "versions": {},
    }
    cfg = OmegaConf.structured(Config)
    cfg.method = OmegaConf.structured(MethodConfig(name="full"))
    cfg.data.name, cfg.paths.results_dir = "shapes_upstream", str(tmp_path)

    output = tmp_path / "out" / "swin_micro-shapes_upstream.safetensors"
    info = export_backbone(record, cfg, output)
    assert info["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert sidecar["upstream"]["test"] == {"top1": 50.0} and sidecar["revision"] == 1

    loaded = build_backbone(BackboneConfig(name="swin_micro", weights=str(output)))
    x = torch.randn(1, 3, 64, 64)
    trained.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), trained.half().float()(x))  # stored in fp16


def test_an_export_over_a_checkpoint_of_another_run_is_its_next_revision(tmp_path: Path) -> None:
    """The same run again keeps the revision (an export repeated); another run, or a file of unknown
    origin, takes the next."""
    output = tmp_path / "swin_micro-shapes_upstream.safetensors"
    assert export_revision(output, "r1") == 1
    sidecar_of(output).write_text(json.dumps({"run_id": "r1", "revision": 2}))
    assert export_revision(output, "r1") == 2
    assert export_revision(output, "r2") == 3
    sidecar_of(output).write_text(json.dumps({"sha256": "0" * 64}))
    assert export_revision(output, "r1") == 2


def test_a_broken_sidecar_is_a_one_paragraph_error_naming_it(tmp_path: Path) -> None:
    output = tmp_path / "swin_micro-shapes_upstream.safetensors"
    sidecar_of(output).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON") as error:
        export_revision(output, "r1")
    assert str(sidecar_of(output)) in str(error.value) and "\n" not in str(error.value)
