"""Backbones: the contract every family meets (`base`), the registry of sizes, and the package's
families, Swin and ViT (importing a family's module registers its sizes)."""

from peft_bench.backbones import swin, vit  # noqa: F401
from peft_bench.backbones.base import (
    BACKBONES,
    Backbone,
    BackboneEntry,
    Block,
    Part,
    Pyramid,
    SideNetwork,
    StageLevels,
    backbone_entry,
    build_backbone,
    image_size,
    register_backbone,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneEntry",
    "Block",
    "Part",
    "Pyramid",
    "SideNetwork",
    "StageLevels",
    "backbone_entry",
    "build_backbone",
    "image_size",
    "register_backbone",
]
