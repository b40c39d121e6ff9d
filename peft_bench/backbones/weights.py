"""Where backbone weights come from: timm's hub, a shipped checkpoint, or a local file.

Local files may be in any of the three formats Swin checkpoints circulate in, told apart by their
keys and converted to timm names on load:

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
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import huggingface_hub
import safetensors.torch
import timm
import torch
from huggingface_hub import try_to_load_from_cache
from timm.models.swin_transformer import checkpoint_filter_fn

from peft_bench.backbones.swin import SWIN_SPECS, SwinBackbone, SwinSpec, build_swin, swin_spec
from peft_bench.errors import UserError

IN22K, NONE = "in22k", "none"
HUB_HOST = "huggingface.co"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches from a hub repository
TIMM, MICROSOFT, OPENMMLAB = "timm", "Microsoft", "OpenMMLab"

# Short names of checkpoints shipped with the package, per backbone: `backbone.weights=<name>`.
# `mini` is the size's own pretraining on the embedded upstream task (`python -m peft_bench.pretrain
# backbone=<size>`; each sidecar JSON holds the command, the config, the upstream metrics and the
# SHA-256), shipped for the sizes that have no hub weights.
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
SHIPPED_WEIGHTS: dict[str, dict[str, Path]] = {
    "mini": {
        size: PRETRAINED_DIR / f"{size}-shapes_upstream.safetensors"
        for size, spec in SWIN_SPECS.items()
        if spec.hub_tag is None
    }
}

# (Microsoft/timm, OpenMMLab) name pieces: at the start of a key, then anywhere in it.
_PREFIXES = (("layers.", "stages."), ("norm.", "norm3."), ("patch_embed.proj.", "patch_embed.projection."))
_INFIXES = ((".attn.", ".attn.w_msa."), (".mlp.fc1.", ".ffn.layers.0.0."), (".mlp.fc2.", ".ffn.layers.1."))
# Microsoft concatenates the 2x2 patches as (h, w) = 00, 10, 01, 11; `nn.Unfold` as 00, 01, 10, 11.
_PATCH_SWAP = [0, 2, 1, 3]
_SHOWN_KEYS = 3  # how many offending keys an error message names


def resolve_weights(name: str, weights: str) -> str | Path:
    """Check `backbone.name` and `backbone.weights` before anything is built or downloaded.

    Returns `in22k`, `none`, or the path of an existing checkpoint file.
    """
    if weights == IN22K and swin_spec(name).hub_tag is None:
        raise UserError(
            f"{name} has no ImageNet-22k weights on the hub (the paper has no such size): use backbone."
            f"weights={NONE}, a shipped checkpoint ({_shipped_names()}) or a path to a checkpoint file"
        )
    if weights in (IN22K, NONE):
        return weights
    if weights in SHIPPED_WEIGHTS and name not in SHIPPED_WEIGHTS[weights]:
        raise UserError(
            f"backbone.weights={weights} is shipped for {', '.join(SHIPPED_WEIGHTS[weights])}, not {name}: "
            f"use one of those sizes, {IN22K}, {NONE} or a path to a checkpoint file"
        )
    path = SHIPPED_WEIGHTS[weights][name] if weights in SHIPPED_WEIGHTS else Path(weights).expanduser()
    if path.is_file():
        return path
    if weights in SHIPPED_WEIGHTS or path.suffix or len(path.parts) > 1:
        raise UserError(f"checkpoint file not found: {path.absolute()} (backbone.weights={weights})")
    raise UserError(
        f"unknown backbone.weights {weights!r}: expected {IN22K} (ImageNet-22k weights from the Hugging "
        f"Face hub), {NONE} (random init), a shipped checkpoint ({_shipped_names()}) or a path to a "
        "checkpoint file (.pth, .pt, .bin or .safetensors; timm, Microsoft or OpenMMLab format)"
    )


def _shipped_names() -> str:
    """The shipped checkpoints' names, for messages that list the options."""
    return ", ".join(SHIPPED_WEIGHTS) or "none shipped yet"


def build_from_hub(name: str, **options: Any) -> SwinBackbone:
    """`build_swin` with the paper's ImageNet-22k weights: from the Hugging Face cache when it holds
    them, else from the hub. Without either it fails at once (the hub client would retry for
    about a minute), saying how to pass a local checkpoint. `options` are `build_swin`'s."""
    spec = swin_spec(name)
    cached = _cached_hub_file(spec)
    if cached is None and not _hub_reachable():
        raise _hub_error(spec, "there is no network connection and no copy in the Hugging Face cache")
    try:
        return build_swin(name, pretrained_hub=True, hub_file=cached, **options)
    except Exception as e:  # a cold cache with a network that fails, an HTTP error: the same fixes
        raise _hub_error(spec, f"{type(e).__name__}: {_first_line(e)}") from e


def _hub_error(spec: SwinSpec, reason: str) -> UserError:
    return UserError(
        f"the ImageNet-22k weights of {spec.timm_name}.{spec.hub_tag} could not be loaded from the "
        f"Hugging Face hub ({reason}). Connect to the network or warm the HF cache, or pass the "
        f"released checkpoint as a local file: backbone.weights=/path/to/{spec.timm_name}_22k.pth "
        "(Microsoft's release; timm and OpenMMLab files load too)."
    )


def _hub_model(spec: SwinSpec) -> str:
    """The hub repository of the size's ImageNet-22k weights, as timm names it."""
    return timm.models.get_pretrained_cfg(f"{spec.timm_name}.{spec.hub_tag}").hf_hub_id


def _cached_hub_file(spec: SwinSpec) -> Path | None:
    """The weights file of the hub repository in the local Hugging Face cache, if it is there."""
    repository = _hub_model(spec)
    for filename in HUB_FILES:
        path = try_to_load_from_cache(repository, filename)
        if isinstance(path, str):
            return Path(path)
    return None


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub answers a TCP connection within `timeout_s` (never with HF_HUB_OFFLINE set)."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _first_line(error: Exception) -> str:
    """An exception's message cut to one line: a `UserError` is printed as one paragraph."""
    return next(iter(str(error).splitlines()), "")


def load_weights(backbone: SwinBackbone, source: str | Path) -> str:
    """Load `source` (as returned by `resolve_weights`) into a freshly built backbone; says what was loaded.

    Hub weights are loaded by `build_from_hub` already, so only a file needs work here.
    """
    if isinstance(source, Path):
        return load_checkpoint(backbone, source)
    if source == IN22K:
        spec = backbone.spec
        return f"ImageNet-22k weights {spec.timm_name}.{spec.hub_tag} from the Hugging Face hub"
    return "random init"


def load_checkpoint(backbone: SwinBackbone, path: Path) -> str:
    """Load a timm, Microsoft or OpenMMLab Swin checkpoint file into a freshly built backbone.

    Returns a short description of what was loaded, for the log. Keys and shapes are checked
    before loading, so a file of another Swin size fails with the difference named.
    """
    state_dict = _backbone_only(_state_dict_in(_read(path), path))
    fmt = _detect_format(state_dict)
    state_dict = {_timm_key(k, fmt): _to_timm_order(k, v, fmt) for k, v in state_dict.items()}
    _check_keys(state_dict, fmt, backbone, path)
    state_dict = checkpoint_filter_fn(state_dict, backbone)  # resizes tables for another window size
    _check_shapes(state_dict, fmt, backbone, path)
    backbone.load_state_dict(state_dict)
    return f"{fmt}-format checkpoint {path}"


def _read(path: Path) -> object:
    """The file's contents, without running pickled code."""
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever the parser's complaint, the file is the problem
        raise UserError(
            f"cannot read the checkpoint {path} ({type(e).__name__}: {_first_line(e)}): expected a "
            "state dict saved with torch.save or safetensors"
        ) from e


def _state_dict_in(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint, unwrapped from training checkpoints' `model`/`state_dict`."""
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise UserError(
            f"{path} holds no state dict (a dict of parameter names to tensors, possibly under 'model' "
            f"or 'state_dict'): found a {type(obj).__name__}"
        )
    return dict(obj)


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


def _check_keys(state_dict: Mapping[str, torch.Tensor], fmt: str, backbone: SwinBackbone, path: Path) -> None:
    """Fail, naming the difference, unless the (timm-named) keys are exactly the backbone's."""
    expected = backbone.state_dict().keys()
    problems = [
        f"{kind} keys {_some(sorted(keys), fmt)}"
        for kind, keys in (
            ("missing", expected - state_dict.keys()),
            ("unexpected", state_dict.keys() - expected),
        )
        if keys
    ]
    if problems:
        raise _mismatch(problems, state_dict, fmt, backbone, path)


def _check_shapes(
    state_dict: Mapping[str, torch.Tensor], fmt: str, backbone: SwinBackbone, path: Path
) -> None:
    """Fail, naming the tensors, when a shape differs from the backbone's (after any resizing)."""
    wrong = [
        f"{_key_in(k, fmt)} is {tuple(state_dict[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in backbone.state_dict().items()
        if state_dict[k].shape != v.shape
    ]
    if wrong:
        problems = [f"{len(wrong)} tensors have another shape: {'; '.join(wrong[:_SHOWN_KEYS])}"]
        raise _mismatch(problems, state_dict, fmt, backbone, path)


def _some(keys: list[str], fmt: str) -> str:
    """The first few timm keys, as the file names them."""
    shown = ", ".join(_key_in(k, fmt) for k in keys[:_SHOWN_KEYS])
    return f"{shown} (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else shown


def _mismatch(
    problems: list[str], state_dict: Mapping[str, torch.Tensor], fmt: str, backbone: SwinBackbone, path: Path
) -> UserError:
    """The error for a checkpoint that does not fit: what differs, and which Swin each side is."""
    spec = backbone.spec
    return UserError(
        f"the checkpoint {path} ({fmt} format detected) does not fit the backbone: {'; '.join(problems)}. "
        f"{_architecture(state_dict)}; you built {backbone.name} (embed_dim {spec.embed_dim}, depths "
        f"{spec.depths}): is it a checkpoint of another Swin size? If so, set backbone.name to match"
    )


def _architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
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
    names = [n for n, s in SWIN_SPECS.items() if (s.embed_dim, s.depths) == (embed_dim, depths)]
    known = f" ({names[0]})" if names else ""
    return f"The file holds a Swin with embed_dim {embed_dim} and depths {depths}{known}"
