"""Swin checkpoint files in the three formats they circulate in, told apart by their keys and
converted to timm names on load:

* timm: `SwinBackbone.state_dict()`, or a timm classifier's; a stage's downsample is at its start.
* Microsoft (the paper's release): the downsample of stage N sits at the *end* of stage N.
* OpenMMLab (mmdet, mmseg, mmpretrain): other names (`stages`, `w_msa`, `ffn`), downsample at
  the end of a stage as Microsoft, and `nn.Unfold` patch merging, which orders the four merged
  patches' channels differently (see `_unfold_order`).

timm's `checkpoint_filter_fn` then resizes relative-position tables (and the patch embedding)
for a model built with another window (or patch) size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from timm.models.swin_transformer import checkpoint_filter_fn

from peft_bench.backbones.weights import key_problems, read_state_dict, shape_problems
from peft_bench.errors import UserError

# Swin sizes by (embed_dim, depths), to name the size a mismatching file holds.
KnownSizes = Mapping[str, tuple[int, tuple[int, ...]]]

TIMM, MICROSOFT, OPENMMLAB = "timm", "Microsoft", "OpenMMLab"

# (Microsoft/timm, OpenMMLab) name pieces: at the start of a key, then anywhere in it.
_PREFIXES = (("layers.", "stages."), ("norm.", "norm3."), ("patch_embed.proj.", "patch_embed.projection."))
_INFIXES = ((".attn.", ".attn.w_msa."), (".mlp.fc1.", ".ffn.layers.0.0."), (".mlp.fc2.", ".ffn.layers.1."))
# Microsoft concatenates the 2x2 patches as (h, w) = 00, 10, 01, 11; `nn.Unfold` as 00, 01, 10, 11.
_PATCH_SWAP = [0, 2, 1, 3]


def load_checkpoint(backbone: torch.nn.Module, path: Path, known: KnownSizes) -> str:
    """Load a timm, Microsoft or OpenMMLab Swin checkpoint file into a freshly built `SwinBackbone`.

    Returns a short description of what was loaded, for the log. Keys and shapes are checked
    before loading, so a file of another Swin size fails with the difference named.
    """
    state_dict = _backbone_only(read_state_dict(path))
    fmt = _detect_format(state_dict)
    state_dict = {_timm_key(k, fmt): _to_timm_order(k, v, fmt) for k, v in state_dict.items()}
    expected = backbone.state_dict()

    def show(key: str) -> str:
        return _key_in(key, fmt)

    if problems := key_problems(state_dict, expected, show):
        raise _mismatch(problems, state_dict, fmt, backbone, path, known)
    state_dict = checkpoint_filter_fn(state_dict, backbone)  # resizes tables for another window size
    if problems := shape_problems(state_dict, expected, show):
        raise _mismatch(problems, state_dict, fmt, backbone, path, known)
    backbone.load_state_dict(state_dict)
    return f"{fmt}-format checkpoint {path}"


def _backbone_only(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop what a backbone never loads: a detector's non-backbone parts, the classifier, buffers.

    Also drops mmdet's output norms of stages 0-2 (`norm0`..`norm2`); `norm3` is the final norm.
    """
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {
            k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")
        }
    return {k: v for k, v in state_dict.items() if not _ignored(k)}


def _ignored(key: str) -> bool:
    """Whether a backbone key is one no backbone loads (see `_backbone_only`)."""
    buffer = key.rsplit(".", 1)[-1] in ("relative_position_index", "attn_mask")
    return buffer or key.startswith(("head.", "norm0.", "norm1.", "norm2."))


def _detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which of the three formats the keys are in (timm when neither marker is found)."""
    if any(k.startswith(("stages.", "patch_embed.projection.")) for k in state_dict):
        return OPENMMLAB
    if "layers.0.downsample.reduction.weight" in state_dict:  # timm's stage 0 has no downsample
        return MICROSOFT
    return TIMM


def _timm_key(key: str, fmt: str) -> str:
    """A key of format `fmt` in timm's name (the inverse of `_key_in`).

    Renaming Microsoft keys too maps the final norm `norm3` of Microsoft's detection and
    segmentation repos to `norm`; nothing else in them has an OpenMMLab word.
    """
    if fmt == TIMM:
        return key
    return _shift_downsample(_rename(key, to_openmmlab=False), 1)


def _key_in(key: str, fmt: str) -> str:
    """A timm key in format `fmt`'s name."""
    if fmt == TIMM:
        return key
    key = _shift_downsample(key, -1)
    return _rename(key, to_openmmlab=True) if fmt == OPENMMLAB else key


def _shift_downsample(key: str, stages: int) -> str:
    """Move a downsample key `stages` stages on: +1 from Microsoft's stage end to timm's stage start."""
    return re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + stages}.downsample.", key)


def _rename(key: str, to_openmmlab: bool) -> str:
    """Rename a key between Microsoft and OpenMMLab names (same structure, other words)."""
    for ms, mm in _PREFIXES:
        old, new = (ms, mm) if to_openmmlab else (mm, ms)
        if key.startswith(old):
            key = new + key.removeprefix(old)
            break
    for ms, mm in _INFIXES:
        old, new = (ms, mm) if to_openmmlab else (mm, ms)
        key = key.replace(old, new)
    return key


def _to_timm_order(key: str, value: torch.Tensor, fmt: str) -> torch.Tensor:
    """OpenMMLab patch-merging tensors in timm's channel order; everything else as is."""
    is_merging = fmt == OPENMMLAB and ".downsample." in key
    return _unfold_order(value, to_openmmlab=False) if is_merging else value


def _unfold_order(value: torch.Tensor, to_openmmlab: bool) -> torch.Tensor:
    """Reorder the input channels (last dim) of a patch-merging tensor between the two layouts.

    Microsoft/timm concatenate the four patches: channel `p * C + c`, patches (h, w) = 00, 10, 01,
    11. OpenMMLab's `nn.Unfold` is channel-major: channel `c * 4 + (2h + w)`. This is mmdet's
    `correct_unfold_reduction_order`/`correct_unfold_norm_order` (to OpenMMLab) and its inverse.
    """
    lead, channels = value.shape[:-1], value.shape[-1] // 4
    if to_openmmlab:
        return value.reshape(*lead, 4, channels)[..., _PATCH_SWAP, :].transpose(-1, -2).reshape(value.shape)
    return value.reshape(*lead, channels, 4).transpose(-1, -2)[..., _PATCH_SWAP, :].reshape(value.shape)


def to_openmmlab(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm-named Swin state dict (as `SwinBackbone.state_dict()`) in OpenMMLab names and orders.

    The keys are those of mm's `SwinTransformer` backbone (final norm as `norm3`); prefix them with
    `backbone.` for a detector's or segmentor's checkpoint.
    """
    return {
        _key_in(k, OPENMMLAB): _unfold_order(v, to_openmmlab=True) if ".downsample." in k else v
        for k, v in state_dict.items()
    }


def _mismatch(
    problems: list[str],
    state_dict: Mapping[str, torch.Tensor],
    fmt: str,
    backbone: torch.nn.Module,
    path: Path,
    known: KnownSizes,
) -> UserError:
    """The error for a checkpoint that does not fit: what differs, and which Swin each side is."""
    spec = backbone.spec
    return UserError(
        f"the checkpoint {path} ({fmt} format detected) does not fit the backbone: {'; '.join(problems)}. "
        f"{_architecture(state_dict, known)}; you built {backbone.name} (embed_dim {spec.embed_dim}, depths "
        f"{spec.depths}): is it a checkpoint of another Swin size? If so, set backbone.name to match"
    )


def _architecture(state_dict: Mapping[str, torch.Tensor], known: KnownSizes) -> str:
    """What Swin the (timm-named) checkpoint holds, as far as its keys tell."""
    embed = state_dict.get("patch_embed.proj.weight")
    blocks = [
        tuple(map(int, m.groups()))
        for k in state_dict
        if (m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k))
    ]
    if embed is None or not blocks:
        return "The file does not look like a Swin backbone"
    depths = tuple(1 + max(b for s, b in blocks if s == stage) for stage in sorted({s for s, _ in blocks}))
    embed_dim = embed.shape[0]
    names = [name for name, size in known.items() if size == (embed_dim, depths)]
    known = f" ({names[0]})" if names else ""
    return f"The file holds a Swin with embed_dim {embed_dim} and depths {depths}{known}"
