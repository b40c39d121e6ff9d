"""Parameter counts in the paper's convention, and the manifest of what trains.

"Trainable params" in the paper count the backbone only (the neck and head always train), and the
percentages of its Tables 4 and 5 are trainable / (frozen backbone + trainable), i.e. relative to
the backbone *with* the method's inserted modules. Parameters are grouped by the module that owns
them (a torchvision detector nests the backbone and the FPN under its own names).
"""

from __future__ import annotations

from torch import nn

GROUPS = ("backbone", "neck", "head")


def _groups(model: nn.Module, backbone: nn.Module, neck: nn.Module | None) -> dict[int, str]:
    owner = {id(p): "neck" for p in (neck.parameters() if neck is not None else ())}
    owner.update({id(p): "backbone" for p in backbone.parameters()})
    return {id(p): owner.get(id(p), "head") for p in model.parameters()}


def parameter_counts(model: nn.Module, backbone: nn.Module) -> dict[str, float]:
    """`backbone_total` (frozen + trainable, inserted modules included), `backbone_trainable`,
    `trainable_total` (backbone, neck and head) and `trainable_percent` of the backbone."""
    backbone_total = sum(p.numel() for p in backbone.parameters())
    backbone_trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    trainable_total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "backbone_total": backbone_total,
        "backbone_trainable": backbone_trainable,
        "trainable_total": trainable_total,
        "trainable_percent": 100.0 * backbone_trainable / backbone_total if backbone_total else 0.0,
    }


def trainable_manifest(
    model: nn.Module, backbone: nn.Module, neck: nn.Module | None = None
) -> dict[str, dict[str, int]]:
    """The trainable tensors by name and element count, grouped as backbone, neck and head."""
    group = _groups(model, backbone, neck)
    manifest: dict[str, dict[str, int]] = {g: {} for g in GROUPS}
    for name, p in model.named_parameters():
        if p.requires_grad:
            manifest[group[id(p)]][name] = p.numel()
    return manifest
