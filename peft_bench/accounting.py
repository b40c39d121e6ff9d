"""Parameter counts in the paper's convention, and the manifest of what trains.

"Trainable params" in the paper count the backbone only (the neck and head always train), and the
percentages of its Tables 4 and 5 are trainable / (frozen backbone + trainable), i.e. relative to
the backbone *with* the method's inserted modules.
"""

from __future__ import annotations

from torch import nn

GROUPS = ("backbone", "neck", "head")


def group_of(name: str) -> str:
    """`backbone.*` and `neck.*` by their prefix; everything else is the head."""
    prefix = name.split(".", 1)[0]
    return prefix if prefix in GROUPS else "head"


def parameter_counts(model: nn.Module) -> dict[str, float]:
    """`backbone_total` (frozen + trainable, inserted modules included), `backbone_trainable`,
    `trainable_total` (backbone, neck and head) and `trainable_percent` of the backbone."""
    backbone_total = backbone_trainable = trainable_total = 0
    for name, p in model.named_parameters():
        in_backbone = group_of(name) == "backbone"
        backbone_total += p.numel() if in_backbone else 0
        if p.requires_grad:
            trainable_total += p.numel()
            backbone_trainable += p.numel() if in_backbone else 0
    return {
        "backbone_total": backbone_total,
        "backbone_trainable": backbone_trainable,
        "trainable_total": trainable_total,
        "trainable_percent": 100.0 * backbone_trainable / backbone_total if backbone_total else 0.0,
    }


def trainable_manifest(model: nn.Module) -> dict[str, dict[str, int]]:
    """The trainable tensors by name and element count, grouped as backbone, neck and head."""
    manifest: dict[str, dict[str, int]] = {group: {} for group in GROUPS}
    for name, p in model.named_parameters():
        if p.requires_grad:
            manifest[group_of(name)][name] = p.numel()
    return manifest
