"""The tuning methods: `method=<name>` chooses one. Each is registered here with its schema
(`peft_bench.methods.configs`) and label, and its class by name: the class's module (torch) is
imported when the method is first looked up, so importing this package imports no torch.

What a method of your own needs is exported here (imported at its first use); `docs/extending.md`
writes one.
"""

from peft_bench.config import MethodConfig
from peft_bench.methods.configs import (
    AdapterConfig,
    AdaptFormerConfig,
    DoRAConfig,
    E3VAConfig,
    LoRAConfig,
    LoRandConfig,
    MonaConfig,
    SSFConfig,
    VPTConfig,
)
from peft_bench.registry import METHODS, lazy_exports, register_method

register_method("full", label="Full")("peft_bench.methods.selection:Full")
register_method("fixed", label="Fixed")("peft_bench.methods.selection:Fixed")
register_method("bitfit", label="BitFit")("peft_bench.methods.selection:BitFit")
register_method("normtuning", label="NormTuning")("peft_bench.methods.selection:NormTuning")
register_method("partial1", label="Partial-1")("peft_bench.methods.selection:Partial1")
register_method("adapter", config=AdapterConfig, label="Adapter")("peft_bench.methods.adapter:Adapter")
register_method("lora", config=LoRAConfig, label="LoRA")("peft_bench.methods.lora:LoRA")
register_method("adaptformer", config=AdaptFormerConfig, label="AdaptFormer")(
    "peft_bench.methods.adaptformer:AdaptFormer"
)
register_method("lorand", config=LoRandConfig, label="LoRand")("peft_bench.methods.lorand:LoRand")
register_method("mona", config=MonaConfig, label="Mona")("peft_bench.methods.mona:Mona")
register_method("ssf", config=SSFConfig, label="SSF")("peft_bench.methods.ssf:SSF")
register_method("vpt", config=VPTConfig, label="VPT")("peft_bench.methods.vpt:VPT")
register_method("dora", config=DoRAConfig, label="DoRA")("peft_bench.methods.dora:DoRA")
register_method("e3va", config=E3VAConfig, label="E3VA")("peft_bench.methods.e3va:E3VA")

# What a method of your own needs, by module: imported at its first use.
API = {
    "peft_bench.backbones.base": ("Backbone", "Block", "Part", "SideNetwork"),
    "peft_bench.layers.merge": ("Mergeable", "merged"),
    "peft_bench.layers.slots": ("BlockSlots", "Branches", "SpatialSlot", "TokenLayout", "slots_of"),
    "peft_bench.methods.base": ("BlockInsertion", "Method", "build_method", "freeze"),
}
__getattr__ = lazy_exports(__name__, API)
__all__ = ["METHODS", "MethodConfig", "register_method", *(name for names in API.values() for name in names)]
