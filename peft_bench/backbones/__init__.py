"""Swin backbones: `build_backbone` builds the configured size with the configured weights."""

from __future__ import annotations

import logging

from peft_bench.backbones.swin import SwinBackbone, build_swin, swin_spec
from peft_bench.backbones.weights import IN22K, build_from_hub, load_weights, resolve_weights
from peft_bench.config import BackboneConfig

log = logging.getLogger(__name__)


def image_size(cfg: BackboneConfig) -> int:
    """The side of the backbone's input images: `img_size`, else the size's native resolution."""
    return cfg.img_size or swin_spec(cfg.name).img_size


def build_backbone(cfg: BackboneConfig, dynamic_size: bool = False, pretrained: bool = True) -> SwinBackbone:
    """The backbone of a run: `cfg.name` built, `cfg.weights` loaded; a bad value raises `UserError`.

    The weights value is checked first, so a typo fails before a model is built or a download starts.
    `dynamic_size` accepts inputs of any size (dense tasks). `pretrained=False` builds the same
    architecture without loading anything (parameter counts on the meta device).
    """
    options = {
        "img_size": cfg.img_size,
        "window_size": cfg.window_size,
        "drop_path_rate": cfg.drop_path_rate,
        "dynamic_size": dynamic_size,
        "always_partition": cfg.always_partition,
    }
    if not pretrained:
        return build_swin(cfg.name, **options)
    source = resolve_weights(cfg.name, cfg.weights)
    build = build_from_hub if source == IN22K else build_swin
    backbone = build(cfg.name, **options)
    log.info("backbone %s: %s", cfg.name, load_weights(backbone, source))
    return backbone
