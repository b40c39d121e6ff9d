"""Where backbone weights come from, for every family: timm's hub, a shipped checkpoint, or a local file.

`backbone.weights` is checked against the size's registered entry before anything is built or
downloaded (`resolve_weights`); each family then loads what it resolved to, reading files with
`read_state_dict` and checking them with `fit_problems`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import huggingface_hub
import safetensors.torch
import timm
import torch
from huggingface_hub import try_to_load_from_cache

from peft_bench.backbones.base import BACKBONES, BackboneEntry
from peft_bench.errors import UserError
from peft_bench.shipped import shipped_files, shipped_path

NONE = "none"
HUB_HOST = "huggingface.co"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches from a hub repository
_SHOWN_KEYS = 3  # how many offending keys an error message names
M = TypeVar("M", bound=torch.nn.Module)


@dataclass(frozen=True)
class HubWeights:
    """Pretrained weights on timm's hub, by timm's name with its tag."""

    key: str  # the `backbone.weights` value, e.g. `in22k`
    model: str  # e.g. `swin_tiny_patch4_window7_224.ms_in22k`


Weights = str | HubWeights | Path  # `none`, hub weights, or a checkpoint file


def _shipped_keys() -> list[str]:
    return sorted({key for e in BACKBONES.values() for key in e.shipped})


def _hub_keys() -> list[str]:
    return sorted({key for e in BACKBONES.values() for key in e.hub})


def resolve_weights(entry: BackboneEntry, weights: str) -> Weights:
    """Check `backbone.weights` for the size `entry` before anything is built or downloaded.

    Returns `none`, the hub weights of the size it names, or the path of an existing checkpoint file.
    """
    if weights == NONE:
        return NONE
    if weights in entry.hub:
        return HubWeights(weights, entry.hub[weights])
    options = f"backbone.weights={NONE}, {_own_options(entry)}or a path to a checkpoint file"
    if weights in _hub_keys():
        raise UserError(
            f"{entry.name} has no hub weights named {weights!r} ({_described(weights)}): use {options}"
        )
    if weights in _shipped_keys() and weights not in entry.shipped:
        sizes = ", ".join(shipped_files(weights))
        raise UserError(f"backbone.weights={weights} is shipped for {sizes}, not {entry.name}: use {options}")
    path = shipped_path(entry, weights) if weights in entry.shipped else Path(weights).expanduser()
    if path.is_file():
        return path
    if weights in entry.shipped or path.suffix or len(path.parts) > 1:
        raise UserError(f"checkpoint file not found: {path.absolute()} (backbone.weights={weights})")
    raise UserError(
        f"unknown backbone.weights {weights!r} for {entry.name}: expected {NONE} (random init), "
        f"{_own_options(entry)}or a path to a checkpoint file (.pth, .pt, .bin or .safetensors; .npz for "
        "a ViT). Hub weights of other sizes: "
        f"{', '.join(_hub_keys()) or 'none'}; shipped checkpoints: {', '.join(_shipped_keys()) or 'none'}"
    )


def _own_options(entry: BackboneEntry) -> str:
    own = [f"{key} (hub: {model})" for key, model in entry.hub.items()]
    own += [f"{key} (shipped)" for key in entry.shipped]
    return "".join(f"{option}, " for option in own)


def _described(key: str) -> str:
    sizes = [name for name, e in BACKBONES.items() if key in e.hub]
    return f"those are registered for {', '.join(sizes)}"


def from_hub(weights: HubWeights, create: Callable[[Path | None], M], local_hint: str) -> M:
    """`create(cached_file)`, a timm model built with its hub weights: from the Hugging Face cache when
    it holds them (`cached_file`; None: timm downloads), else from the hub. Without either it fails
    at once (the hub client would retry for about a minute), saying how to pass a local checkpoint
    (`local_hint`)."""
    cached = cached_hub_file(weights.model)
    if cached is None and not _hub_reachable():
        raise _hub_error(
            weights, "there is no network connection and no copy in the Hugging Face cache", local_hint
        )
    try:
        return create(cached)
    except Exception as e:  # a cold cache with a network that fails, an HTTP error: the same fixes
        raise _hub_error(weights, f"{type(e).__name__}: {first_line(e)}", local_hint) from e


def _hub_error(weights: HubWeights, reason: str, local_hint: str) -> UserError:
    return UserError(
        f"the weights {weights.model} could not be loaded from the Hugging Face hub (backbone.weights="
        f"{weights.key}: {reason}). Connect to the network or warm the HF cache, or pass the checkpoint as a "
        f"local file: {local_hint}."
    )


def cached_hub_file(model: str) -> Path | None:
    """The weights file of the timm model's hub repository in the local Hugging Face cache, if there."""
    repository = timm.models.get_pretrained_cfg(model).hf_hub_id
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


def first_line(error: Exception) -> str:
    """An exception's message cut to one line: a `UserError` is printed as one paragraph."""
    return next(iter(str(error).splitlines()), "")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file, unwrapped from training checkpoints' `model`/`state_dict`,
    read without running pickled code."""
    try:
        if path.suffix == ".safetensors":
            obj: object = safetensors.torch.load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever the parser's complaint, the file is the problem
        raise UserError(
            f"cannot read the checkpoint {path} ({type(e).__name__}: {first_line(e)}): expected a "
            "state dict saved with torch.save or safetensors"
        ) from e
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


def key_problems(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], show: Callable[[str], str]
) -> list[str]:
    """The missing and unexpected keys of `state_dict` against `expected`, named by `show`."""
    return [
        f"{kind} keys {_some(sorted(keys), show)}"
        for kind, keys in (
            ("missing", expected.keys() - state_dict.keys()),
            ("unexpected", state_dict.keys() - expected.keys()),
        )
        if keys
    ]


def shape_problems(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], show: Callable[[str], str]
) -> list[str]:
    """The tensors of `state_dict` whose shape differs from `expected`'s, named by `show`."""
    wrong = [
        f"{show(k)} is {tuple(state_dict[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if state_dict[k].shape != v.shape
    ]
    return [f"{len(wrong)} tensors have another shape: {'; '.join(wrong[:_SHOWN_KEYS])}"] if wrong else []


def _some(keys: list[str], show: Callable[[str], str]) -> str:
    shown = ", ".join(show(k) for k in keys[:_SHOWN_KEYS])
    return f"{shown} (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else shown
