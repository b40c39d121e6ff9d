"""Backbones: the contract every family meets (`base`), the registry of sizes (`backbone=<name>`),
and the package's families, Swin (`swin`) and ViT (`vit`). Their sizes (`sizes`) are registered
here with their builders by name: a family's module (torch, timm) is imported when one of its sizes
is first built, so importing this package imports no torch. The contract's names are exported here
(imported at their first use).
"""

from peft_bench.backbones.sizes import SWIN_SPECS, VIT_SPECS
from peft_bench.registry import BACKBONES, BackboneEntry, lazy_exports, register_backbone


def _register_sizes() -> None:
    """Each size with its hub weights (the first the default), or its shipped checkpoint, `mini`."""
    for family, specs in (("swin", SWIN_SPECS), ("vit", VIT_SPECS)):
        for name, spec in specs.items():
            register_backbone(
                name,
                build=f"peft_bench.backbones.{family}:build",
                label=spec.label,
                img_size=spec.img_size,
                weights=next(iter(spec.hub), "mini"),
                hub={key: f"{spec.timm_name}.{tag}" for key, tag in spec.hub.items()},
                shipped={} if spec.hub else {"mini": f"{name}-shapes_upstream.safetensors"},
            )


_register_sizes()

CONTRACT = ("Backbone", "Block", "Part", "Pyramid", "SideNetwork", "StageLevels")
BUILDING = ("backbone_entry", "build_backbone", "image_size")
__getattr__ = lazy_exports(__name__, {"peft_bench.backbones.base": (*CONTRACT, *BUILDING)})
__all__ = ["BACKBONES", "BackboneEntry", "register_backbone", *CONTRACT, *BUILDING]
