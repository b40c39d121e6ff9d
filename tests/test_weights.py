"""Backbone weights: every checkpoint format loads to the same function, and bad input fails clearly."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before timm imports huggingface_hub: the hub fails fast

import logging
import re
import time
from dataclasses import replace
from pathlib import Path

import huggingface_hub.constants
import pytest
import safetensors.torch
import torch

from peft_bench import shipped
from peft_bench.backbones import BACKBONES, build_backbone, weights
from peft_bench.backbones.swin import KNOWN_SIZES, SwinBackbone, build_swin
from peft_bench.backbones.swin_checkpoints import load_checkpoint, to_openmmlab
from peft_bench.config import BackboneConfig
from peft_bench.errors import UserError


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline even if huggingface_hub was imported before the variable was set (it reads it once)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _random_micro(seed: int, **kwargs: int) -> SwinBackbone:
    """swin_micro with every tensor perturbed (LayerNorms too), so a misplaced channel shows."""
    torch.manual_seed(seed)
    model = build_swin("swin_micro", **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _load(source: str | Path, **kwargs: int) -> SwinBackbone:
    """`build_backbone` of swin_micro with `source`, from another seed than the saved models."""
    torch.manual_seed(1)
    return build_backbone(BackboneConfig(name="swin_micro", weights=str(source), **kwargs)).eval()


def _assert_same_function(a: SwinBackbone, b: SwinBackbone) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def _microsoft(state_dict: dict[str, torch.Tensor]) -> dict:
    """A timm state dict as the Microsoft release has it: downsample at a stage's end, a head."""
    moved = {
        re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k): v
        for k, v in state_dict.items()
    }
    return {"model": {**moved, "head.weight": torch.zeros(10, 256), "head.bias": torch.zeros(10)}}


def _microsoft_detector(state_dict: dict[str, torch.Tensor]) -> dict:
    """As Microsoft's Swin detection repo saves it: Microsoft names, output norms `norm0`..`norm3`."""
    backbone = _microsoft(state_dict)["model"]
    backbone["norm3.weight"], backbone["norm3.bias"] = backbone.pop("norm.weight"), backbone.pop("norm.bias")
    backbone["norm1.weight"] = torch.zeros(64)
    return {"state_dict": {f"backbone.{k}": v for k, v in backbone.items()}}


def _openmmlab_detector(state_dict: dict[str, torch.Tensor], final_norm: str) -> dict:
    """A timm state dict as an mmdet detector checkpoint holds it, buffers and other parts included."""
    backbone = to_openmmlab(state_dict)
    backbone[f"{final_norm}.weight"] = backbone.pop("norm3.weight")
    backbone[f"{final_norm}.bias"] = backbone.pop("norm3.bias")
    backbone["norm0.weight"] = torch.zeros(32)  # mmdet's output norm of stage 0: not the final norm
    backbone["stages.0.blocks.0.attn.w_msa.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    detector = {f"backbone.{k}": v for k, v in backbone.items()}
    detector["neck.fpn_convs.0.conv.weight"] = torch.zeros(8, 8, 3, 3)
    return {"meta": {"epoch": 12}, "state_dict": detector}


# file name: (format, writer of a state dict to a path)
_WRITERS = {
    "timm.pth": ("timm", torch.save),
    "timm.safetensors": ("timm", safetensors.torch.save_file),
    "microsoft.pth": ("Microsoft", lambda sd, path: torch.save(_microsoft(sd), path)),
    "microsoft_detector.pth": ("Microsoft", lambda sd, path: torch.save(_microsoft_detector(sd), path)),
    "mmdet.pth": ("OpenMMLab", lambda sd, path: torch.save(_openmmlab_detector(sd, "norm3"), path)),
    "swin2mmdet.pth": ("OpenMMLab", lambda sd, path: torch.save(_openmmlab_detector(sd, "norm"), path)),
}


@pytest.mark.parametrize("file_name", _WRITERS)
def test_each_format_loads_the_same_function(
    file_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fmt, write = _WRITERS[file_name]
    saved = _random_micro(seed=0)
    path = tmp_path / file_name
    write(saved.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="peft_bench.backbones"):
        loaded = _load(path)
    _assert_same_function(saved, loaded)
    assert f"{fmt}-format checkpoint {path}" in caplog.text


def test_openmmlab_names() -> None:
    keys = to_openmmlab(_random_micro(seed=0).state_dict()).keys()
    expected = {
        "patch_embed.projection.weight",
        "stages.0.blocks.0.attn.w_msa.qkv.weight",
        "stages.0.blocks.0.attn.w_msa.relative_position_bias_table",
        "stages.0.blocks.0.ffn.layers.0.0.weight",
        "stages.0.blocks.0.ffn.layers.1.weight",
        "stages.0.downsample.reduction.weight",
        "stages.2.downsample.norm.weight",
        "norm3.weight",
    }
    assert expected <= keys
    assert not any(k.startswith(("layers.", "stages.3.downsample")) for k in keys)


def test_openmmlab_merging_order_matches_an_unfold_patch_merging() -> None:
    """mm's PatchMerging (`nn.Unfold`, LayerNorm, Linear) on the exported weights equals timm's."""
    model = _random_micro(seed=0)
    timm_merging = model.layers[1].downsample
    mm = to_openmmlab(model.state_dict())
    x = torch.randn(2, 8, 8, 32)  # (B, H, W, C) tokens of stage 0

    unfolded = torch.nn.Unfold(2, stride=2)(x.permute(0, 3, 1, 2)).transpose(1, 2)  # (B, 16, 4C)
    normed = torch.nn.functional.layer_norm(
        unfolded, (128,), mm["stages.0.downsample.norm.weight"], mm["stages.0.downsample.norm.bias"]
    )
    mm_out = torch.nn.functional.linear(normed, mm["stages.0.downsample.reduction.weight"])
    with torch.no_grad():
        torch.testing.assert_close(mm_out.reshape(2, 4, 4, 64), timm_merging(x))


def test_a_checkpoint_of_another_window_size_loads(tmp_path: Path) -> None:
    path = tmp_path / "window7.pth"
    torch.save(_random_micro(seed=0, window_size=7).state_dict(), path)
    loaded = _load(path, window_size=4)
    table = loaded.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (7 * 7, 1)  # resized from the 13 * 13 of window 7


def test_a_shipped_name_loads_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _random_micro(seed=0)
    torch.save(saved.state_dict(), tmp_path / "mini.pth")
    monkeypatch.setattr(shipped, "PRETRAINED_DIR", tmp_path)
    monkeypatch.setitem(
        BACKBONES, "swin_micro", replace(BACKBONES["swin_micro"], shipped={"mini": "mini.pth"})
    )
    _assert_same_function(saved, _load("mini"))


def test_a_shipped_name_without_a_file_for_the_size_lists_the_sizes() -> None:
    with pytest.raises(
        UserError, match=r"weights=mini is shipped for swin_nano, swin_micro, vit_nano, vit_micro, not swin_t"
    ):
        build_backbone(BackboneConfig(name="swin_t", weights="mini"))


def test_load_checkpoint_describes_what_it_loaded(tmp_path: Path) -> None:
    path = tmp_path / "ms.pth"
    torch.save(_microsoft(_random_micro(seed=0).state_dict()), path)
    assert load_checkpoint(_random_micro(seed=1), path, KNOWN_SIZES) == f"Microsoft-format checkpoint {path}"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "absent.pth"))):
        _load(tmp_path / "absent.pth")


def test_a_checkpoint_of_another_size_names_the_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "swin_t.pth"
    torch.save(build_swin("swin_t", img_size=64, window_size=4).state_dict(), path)
    with pytest.raises(UserError) as error:
        _load(path)
    message = str(error.value)
    assert "timm format" in message
    assert "unexpected keys layers.2.blocks.2." in message
    assert "(swin_t)" in message
    assert "you built swin_micro" in message


def test_a_tensor_of_another_shape_is_named(tmp_path: Path) -> None:
    state_dict = _random_micro(seed=0).state_dict()
    state_dict["norm.weight"] = torch.zeros(5)
    path = tmp_path / "bad_shape.pth"
    torch.save(_openmmlab_detector(state_dict, "norm3"), path)
    with pytest.raises(UserError, match=r"norm3\.weight is \(5,\) in the file, \(256,\) in the model"):
        _load(path)


@pytest.mark.parametrize(
    ("content", "complaint"), [([1, 2, 3], "holds no state dict"), (b"junk", "cannot read")]
)
def test_a_file_without_a_state_dict_fails_clearly(content: object, complaint: str, tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(UserError, match=complaint):
        _load(path)


def test_an_unknown_weights_value_lists_the_options() -> None:
    with pytest.raises(UserError) as error:
        _load("imagenet")
    message = str(error.value)
    assert all(
        option in message for option in ("in22k", "none", "mini (shipped)", "path to a checkpoint file")
    )


def test_an_unknown_backbone_name_lists_the_sizes() -> None:
    with pytest.raises(
        UserError, match=r"Unknown backbone 'swin_xl' \(backbone.name\). Known: .*swin_b.*vit_b"
    ):
        build_backbone(BackboneConfig(name="swin_xl"))


@pytest.mark.usefixtures("offline_hub")
def test_in22k_offline_fails_fast_with_the_fixes() -> None:
    start = time.monotonic()
    with pytest.raises(UserError) as error:
        build_backbone(BackboneConfig(name="swin_t", weights="in22k", img_size=64, window_size=4))
    assert time.monotonic() - start < 20
    message = str(error.value)
    assert "swin_tiny_patch4_window7_224.ms_in22k could not be loaded from the Hugging Face hub" in message
    assert "no network connection and no copy in the Hugging Face cache" in message
    assert "backbone.weights=/path/to/swin_tiny_patch4_window7_224_22k.pth" in message


@pytest.mark.usefixtures("offline_hub")
def test_in22k_weights_load_from_the_hf_cache_without_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = tmp_path / "model.safetensors"
    released = build_swin("swin_t", img_size=64, window_size=4)
    safetensors.torch.save_file(released.state_dict(), cached)
    monkeypatch.setattr(weights, "cached_hub_file", lambda model: cached)
    loaded = build_backbone(BackboneConfig(name="swin_t", weights="in22k", img_size=64, window_size=4))
    for name, tensor in released.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_swin_micro_has_no_hub_weights() -> None:
    with pytest.raises(UserError, match="swin_micro has no hub weights named 'in22k'"):
        _load("in22k")
