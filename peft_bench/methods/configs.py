"""The package's methods' schemas: the keys of `method.<key>=...`, with their types and defaults.

They live apart from the methods' modules, which import torch, so that composing a config (and
failing on a bad key) imports none: `peft_bench.methods` registers each method with its schema here
and its class by name. Selection methods (Full, Fixed, BitFit, NormTuning, Partial-1) have no keys
of their own (`MethodConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from peft_bench.config import MethodConfig, MethodInit


@dataclass
class AdapterConfig(MethodConfig):
    dim: int = 64  # bottleneck width n
    dropout: float = 0.1
    init: MethodInit = MethodInit.reference  # original: Houlsby et al.'s near-identity init


@dataclass
class LoRAConfig(MethodConfig):
    rank: int = 64  # r
    alpha: float = 1.0  # the update is scaled by alpha / r, as the reference code


@dataclass
class AdaptFormerConfig(MethodConfig):
    dim: int = 64  # bottleneck width n
    dropout: float = 0.1
    scale: float = 0.1  # the fixed factor on the adapter's output
    init: MethodInit = MethodInit.reference  # original: AdaptFormer's zero up projection


@dataclass
class LoRandConfig(MethodConfig):
    # alpha: A_i g_i B_i branches per projection. 2 gives the paper's Table 1 count (docs/methods.md);
    # the authors' code hard-codes 4.
    branches: int = 2
    kernel: int = 8  # beta: the side of each g_i, i.e. each branch's rank (the authors' code: 8)
    factor: int = 2  # bottleneck width n = m // factor, from the block's width m (the authors' FACTOR)
    # A fixed bottleneck width n for every block instead (64: the other baselines' n); None: m // factor.
    dim: int | None = None


class PrefixTokens(str, Enum):
    """How Mona's 2-D filter treats the tokens outside the patch grid (a ViT's class token, registers).

    Mona has no official definition on a ViT; these are this repository's (docs/methods.md).
    """

    convpass = "convpass"  # each as a 1 x 1 map through the same filters, as Convpass treats the class token
    bypass = "bypass"  # they skip the depthwise filters (and their bias); the 1x1 conv is per token


@dataclass
class MonaConfig(MethodConfig):
    dim: int = 64  # bottleneck width n
    dropout: float = 0.1
    # The input scales S1, S2 (gamma, gammax). Default: per-channel vectors, as the reference code,
    # whose counts match the paper's Tables 4 and 5. True: two scalars, as the paper's text and
    # its formula (2m - 2 fewer parameters per module).
    scalar_scales: bool = False
    # Run the three depthwise convs as one 7x7 conv with their merged kernel (same parameters,
    # gradients and optimiser state as three convs; faster).
    merged_conv: bool = True
    # Backbones with prefix tokens (a ViT's class token): how the 2-D filter treats them. Unofficial.
    prefix_tokens: PrefixTokens = PrefixTokens.convpass


@dataclass
class SSFConfig(MethodConfig):
    # Scales start at N(1, std^2) and shifts at N(0, std^2), as the reference code (std 0.02);
    # 0 starts every SSF at the identity.
    init_std: float = 0.02
    # An SSF after each transition between stages (a patch merging's norm): None follows the
    # family's reference code (`Backbone.ssf_after_transitions`), True / False force it.
    after_transitions: bool | None = None


@dataclass
class VPTConfig(MethodConfig):
    prompts: int = 49  # prompt tokens per block P (the reference's NUM_PROMPTS, one 7x7 window)
    # Where the prompts join the attention: after norm1, unnormed (true: the Mona authors' code), or
    # with the tokens, normed by norm1 (false: VPT's own code). None: as the backbone family's
    # reference VPT code (`Backbone.prompts_after_norm`).
    after_norm: bool | None = None


@dataclass
class DoRAConfig(LoRAConfig):
    """LoRA's keys (`rank`, `alpha`) and A, B init; the magnitudes start at the rows' norms."""


@dataclass
class E3VAConfig(MethodConfig):
    dim: int = 64  # bottleneck width n of each adapter (the paper's is not given: as the other adapters)
    dropout: float = 0.1  # inside each adapter, as the other adapters here
