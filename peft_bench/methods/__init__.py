"""The strategy registry: `method=<name>` selects one of these (importing a module registers it)."""

from peft_bench.methods import adapter, adaptformer, lora, lorand, mona, selection  # noqa: F401
from peft_bench.methods.base import METHODS, Method, build_method, register

__all__ = ["METHODS", "Method", "build_method", "register"]
