"""The strategy registry: `method=<name>` selects one of these (importing a module registers it).

What a method of your own needs is exported here; `docs/extending.md` writes one.
"""

from peft_bench.backbones.base import Backbone, Block, Part, SideNetwork
from peft_bench.config import MethodConfig
from peft_bench.layers.merge import Mergeable, merged
from peft_bench.layers.slots import BlockSlots, Branches, SpatialSlot, TokenLayout, slots_of
from peft_bench.methods import (  # noqa: F401
    adapter,
    adaptformer,
    dora,
    e3va,
    lora,
    lorand,
    mona,
    selection,
    ssf,
    vpt,
)
from peft_bench.methods.base import METHODS, BlockInsertion, Method, build_method, freeze, register_method

__all__ = [
    "METHODS",
    "Backbone",
    "Block",
    "BlockInsertion",
    "BlockSlots",
    "Branches",
    "Mergeable",
    "Method",
    "MethodConfig",
    "Part",
    "SideNetwork",
    "SpatialSlot",
    "TokenLayout",
    "build_method",
    "freeze",
    "merged",
    "register_method",
    "slots_of",
]
