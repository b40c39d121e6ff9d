"""The sizes of the package's backbone families, Swin (`swin`) and ViT (`vit`): each one's
architecture as timm names it, its label and its weights. `peft_bench.backbones` registers every
size from these tables (imported there without torch); the families build them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SwinSpec:
    """Architecture of one Swin size, as timm names and builds it."""

    label: str  # its name in tables
    timm_name: str
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    img_size: int = 224
    window_size: int = 7
    hub_tag: str | None = "ms_in22k"  # timm pretrained tag of the paper's ImageNet-22k weights

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    @property
    def hub(self) -> Mapping[str, str]:
        """As a ViT's: `backbone.weights` names of the hub weights (`in22k`), and their timm tags."""
        return {"in22k": self.hub_tag} if self.hub_tag else {}


def _cpu_swin(label: str, embed_dim: int) -> SwinSpec:
    """A Swin for the CPU: 4 stages of 2 blocks (so shifted windows and Partial-1's "last block"
    exist), 64 px images, window 4, no hub weights."""
    return SwinSpec(
        label,
        "swin_tiny_patch4_window7_224",
        embed_dim,
        (2, 2, 2, 2),
        (1, 2, 4, 8),
        img_size=64,
        window_size=4,
        hub_tag=None,
    )


SWIN_SPECS: dict[str, SwinSpec] = {
    "swin_t": SwinSpec("Swin-T", "swin_tiny_patch4_window7_224", 96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_s": SwinSpec("Swin-S", "swin_small_patch4_window7_224", 96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_b": SwinSpec("Swin-B", "swin_base_patch4_window7_224", 128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "swin_l": SwinSpec("Swin-L", "swin_large_patch4_window7_224", 192, (2, 2, 18, 2), (6, 12, 24, 48)),
    # Small Swins that train on a 2-core CPU in minutes (0.57M and 2.3M parameters), pretrained
    # offline rather than on the hub.
    "swin_nano": _cpu_swin("Swin-nano", 16),
    "swin_micro": _cpu_swin("Swin-micro", 32),
}


@dataclass(frozen=True)
class ViTSpec:
    """One ViT size: the timm model it is, its weights, and any change to timm's architecture."""

    label: str  # its name in tables
    timm_name: str
    img_size: int = 224
    # `backbone.weights` names of the hub weights, and their timm pretrained tags.
    hub: Mapping[str, str] = field(default_factory=dict)
    # Architecture arguments over timm's (the embedded sizes); none for a hub model.
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shipped(self) -> bool:
        """Whether the size has its own checkpoint shipped instead of hub weights (`mini`)."""
        return not self.hub


def _cpu_vit(label: str, embed_dim: int, num_heads: int) -> ViTSpec:
    """A ViT for the CPU: 6 blocks, patch 8 on 64 px images (an 8 x 8 grid and a class token)."""
    overrides = {"embed_dim": embed_dim, "depth": 6, "num_heads": num_heads, "patch_size": 8}
    return ViTSpec(label, "vit_tiny_patch16_224", img_size=64, overrides=overrides)


_IN21K = {"augreg_in21k": "augreg_in21k"}
VIT_SPECS: dict[str, ViTSpec] = {
    # ImageNet-21k ViTs: `in21k` is the original Google release that every VTAB-1k table uses
    # (timm's legacy `vit_base_patch16_224_in21k` now means the AugReg weights, `augreg_in21k`).
    "vit_t": ViTSpec("ViT-T/16", "vit_tiny_patch16_224", hub=_IN21K),
    "vit_s": ViTSpec("ViT-S/16", "vit_small_patch16_224", hub=_IN21K),
    "vit_b": ViTSpec("ViT-B/16", "vit_base_patch16_224", hub={"in21k": "orig_in21k", **_IN21K}),
    "vit_l": ViTSpec("ViT-L/16", "vit_large_patch16_224", hub={"in21k": "orig_in21k", **_IN21K}),
    # Self-supervised and language-supervised ViTs, through their timm names (patch 14, registers).
    "dinov2_s": ViTSpec("DINOv2-S/14", "vit_small_patch14_dinov2", hub={"lvd142m": "lvd142m"}),
    "dinov2_b": ViTSpec("DINOv2-B/14", "vit_base_patch14_dinov2", hub={"lvd142m": "lvd142m"}),
    "dinov2_b_reg": ViTSpec("DINOv2-B/14+reg", "vit_base_patch14_reg4_dinov2", hub={"lvd142m": "lvd142m"}),
    "clip_b16": ViTSpec("CLIP ViT-B/16", "vit_base_patch16_clip_224", hub={"openai": "openai"}),
    "clip_l14": ViTSpec("CLIP ViT-L/14", "vit_large_patch14_clip_224", hub={"openai": "openai"}),
    # Small ViTs that train on a 2-core CPU in minutes, pretrained offline rather than on the hub.
    "vit_nano": _cpu_vit("ViT-nano", 64, 2),
    "vit_micro": _cpu_vit("ViT-micro", 128, 4),
}
