"""The strategy registry: `method=<name>` selects one of these (importing a module registers it).

What a method of your own needs is exported here; `docs/extending.md` writes one.
"""

from peft_bench.backbones.swin import BlockSlots, Branches, SideNetwork, slots_of
from peft_bench.config import MethodConfig
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
from peft_bench.methods.merge import Mergeable, merged

__all__ = [
    "METHODS",
    "BlockInsertion",
    "BlockSlots",
    "Branches",
    "Mergeable",
    "Method",
    "MethodConfig",
    "SideNetwork",
    "build_method",
    "freeze",
    "merged",
    "register_method",
    "slots_of",
]
