"""The backbone contract: everything a method, a head or the builder may ask of any backbone.

A method asks for the blocks (each with its width, stage and depth index), a block's named parts
(the fused query/key/value projection, the attention output, the MLP's two layers, the two norms),
the patch embedding and the norms outside the blocks, and fills the blocks' slots
(`peft_bench.layers.slots`). A head asks for pooled features (classification) or a pyramid of
NCHW maps at strides 4-32 (`Backbone.pyramid`); it never asks how the backbone made them. A family
(`backbones/swin.py`, `backbones/vit.py`, or a plugin's) subclasses `Backbone`, says how its
tokens are embedded, how a block runs with its slots and how its tokens become a map, and
registers its sizes with `register_backbone`. The forward pass, the no-grad prefix, the side
network, the output norms and `frozen_stages` are written here once, for every family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

import torch
from torch import nn

from peft_bench.config import BackboneConfig
from peft_bench.errors import UserError
from peft_bench.layers.slots import BlockSlots, Branches, TokenLayout, slots_of
from peft_bench.registry import BACKBONES, BackboneEntry, register_backbone  # noqa: F401  (re-exported)


class Part(str, Enum):
    """The named parts of a block that methods target."""

    norm1 = "norm1"  # the norm before attention
    qkv = "qkv"  # the fused query/key/value projection, m -> 3m, output rows q, k, v
    proj = "proj"  # the attention's output projection
    norm2 = "norm2"  # the norm before the MLP
    fc1 = "fc1"  # the MLP's first layer
    fc2 = "fc2"  # the MLP's second layer


# Where timm's transformer blocks (Swin, ViT, DeiT, ...) keep each part.
TIMM_BLOCK_PARTS: Mapping[Part, str] = {
    Part.norm1: "norm1",
    Part.qkv: "attn.qkv",
    Part.proj: "attn.proj",
    Part.norm2: "norm2",
    Part.fc1: "mlp.fc1",
    Part.fc2: "mlp.fc2",
}


@dataclass(frozen=True)
class Block:
    """One transformer block as a method sees it."""

    name: str  # its name in the backbone's state dict, e.g. `layers.2.blocks.1` or `blocks.7`
    module: nn.Module
    dim: int  # the width m of its tokens
    stage: int  # the stage it belongs to (a plain ViT has one)
    index: int  # its depth: 0 for the first block of the backbone
    parts: Mapping[Part, str] = field(default_factory=lambda: TIMM_BLOCK_PARTS)  # part -> path in `module`

    @property
    def slots(self) -> BlockSlots:
        """The block's slots (`peft_bench.layers.slots.BlockSlots`), created on first use."""
        return slots_of(self.module)

    def part(self, part: Part) -> nn.Module:
        return self.module.get_submodule(self._path(part))

    def part_name(self, part: Part) -> str:
        """The part's name in the backbone's state dict."""
        return f"{self.name}.{self._path(part)}"

    def replace(self, part: Part, module: nn.Module) -> None:
        """Put `module` in the part's place (a wrapper that takes over its tensors keeps their names)."""
        parent, _, leaf = self._path(part).rpartition(".")
        setattr(self.module.get_submodule(parent), leaf, module)

    def _path(self, part: Part) -> str:
        if part not in self.parts:
            raise UserError(
                f"The block {self.name} has no {part.value} part (its parts: "
                f"{', '.join(p.value for p in self.parts)}), so a method that tunes it cannot run on "
                "this backbone. Choose another method or backbone."
            )
        return self.parts[part]


class SideNetwork(nn.Module, ABC):
    """A trainable network beside the frozen blocks (`Backbone.side`): it reads them and adds to
    their stage outputs, so that backpropagation never enters a block (E3VA's highway)."""

    @abstractmethod
    def forward(
        self,
        backbone: Backbone,
        branches: list[list[Branches]],
        stages: list[torch.Tensor],
        layouts: list[TokenLayout | None],
    ) -> list[torch.Tensor]:
        """One term per stage, of that stage's output's shape, added to it.

        `branches[s]` holds the (attention, MLP) branch outputs of stage `s`'s blocks in order, and
        `stages[s]` its output, all detached, laid out as `layouts[s]` says; `backbone` lends its own
        (frozen) modules, e.g. the transitions between stages (`Backbone.enter_stage`).
        """


Tensors = Sequence[nn.Module | nn.Parameter]  # what a piece of the forward pass computes with


def _trainable(tensors: Tensors) -> bool:
    params = (p for t in tensors for p in (t.parameters() if isinstance(t, nn.Module) else (t,)))
    return any(p.requires_grad for p in params)


class Backbone(nn.Module, ABC):
    """A backbone family behind the contract: attributes set by its constructor, the hooks below.

    Attributes: `name` (the registered size), `stage_dims` (the width of each stage), `patch_size`,
    `num_features` (the pooled feature's width), `map_stages` (the stages whose outputs become the
    dense layout's maps, one output norm each), `level_maps` (for each pyramid level, strides 4,
    8, 16, 32, the index of the map it is made from), `norm` (the final norm; replaced by
    `output_norms` in the dense layout) and `side` (a `SideNetwork`, or None).

    `forward_stages` runs the embedding, each stage's transition and blocks. Everything before the
    first piece that holds a trainable tensor runs under `torch.no_grad()`, so a frozen backbone
    builds no autograd graph it does not need. With `side` set, it first runs as without it,
    keeping each block's attention and MLP branch outputs, detached; then `side(self, branches,
    stages, layouts)` gives one term per stage, added to that stage's output, i.e. to what the output norm
    and the head read, never to what the next stage reads: the gradient reaches the side (and the
    frozen modules it borrows) but no block.
    """

    # Where the family's reference VPT-deep code joins its prompts: after norm1 (True), or with the
    # tokens, normed by norm1 (False: VPT's own code). `method=vpt` follows it unless told otherwise.
    prompts_after_norm: ClassVar[bool] = False
    # Whether the family's reference SSF code scales and shifts the output of each transition between
    # stages (`outer_layers(stage)`); `method=ssf` follows it unless told otherwise.
    ssf_after_transitions: ClassVar[bool] = True

    stage_dims: tuple[int, ...]
    patch_size: tuple[int, int]
    num_features: int
    map_stages: tuple[int, ...]
    level_maps: tuple[int, ...]
    norm: nn.Module

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.output_norms: nn.ModuleList | None = None
        self.side: SideNetwork | None = None

    # The family's hooks.

    @abstractmethod
    def transformer_blocks(self) -> list[Block]:
        """Every transformer block, in order."""

    @abstractmethod
    def embedding(self) -> Tensors:
        """The modules and tensors of the embedding: what `frozen_stages >= 0` freezes."""

    @abstractmethod
    def outer_layers(self, stage: int | None) -> list[str]:
        """The names of the affine layers outside the blocks that a method modulating every layer's
        output follows (SSF): with `stage` None, the embedding's (the patch projection and its
        norm), else those of the transition into `stage` (a patch merging's norm)."""

    @abstractmethod
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, TokenLayout | None]:
        """The tokens that enter the first stage, and their layout (None: the tokens' shape holds it)."""

    def transition(self, stage: int) -> nn.Module | None:
        """The module that starts `stage` from the previous stage's output (a patch merging), if any."""
        return None

    def enter_stage(
        self, stage: int, x: torch.Tensor, layout: TokenLayout | None
    ) -> tuple[torch.Tensor, TokenLayout | None]:
        """The previous stage's output as `stage`'s input, and its layout: through `transition(stage)`,
        the layout kept. Called for each stage that has a transition; a family whose transition
        needs or changes the layout (prefix tokens on a shrinking grid) overrides this."""
        transition = self.transition(stage)
        return (x if transition is None else transition(x)), layout

    @abstractmethod
    def run_block(
        self, block: Block, x: torch.Tensor, layout: TokenLayout | None, taps: list[Branches] | None
    ) -> torch.Tensor:
        """One block on tokens `x`, with its slots (`peft_bench.layers.slots.run_slotted`)."""

    @abstractmethod
    def to_map(self, tokens: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
        """A stage's tokens as a (B, C, H, W) map, prefix tokens dropped."""

    @abstractmethod
    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """The classification view of final-normed tokens, (B, num_features)."""

    @abstractmethod
    def pyramid(self, levels: Sequence[int]) -> Pyramid:
        """A fresh module that turns `forward_pyramid`'s maps into the pyramid `levels` (0-3)."""

    # Written once for every family.

    def head_norms(self) -> list[str]:
        """The names of the norms whose outputs the head reads: the output norms, or the final one."""
        if self.output_norms is not None:
            return [f"output_norms.{i}" for i in range(len(self.output_norms))]
        return ["norm"]

    @property
    def size_divisor(self) -> int:
        """Dense inputs are padded to a multiple of this (the patch)."""
        return self.patch_size[0]

    def prepare_output_norms(self, per_stage: bool, fresh: bool) -> None:
        """The norms that feed the head: one per map stage (`use_output_norms`, dense tasks) or the
        final one; `fresh` starts them at weight 1, bias 0, as in the reference runs. Call before a
        method is applied."""
        if per_stage:
            self.use_output_norms(fresh)
        elif fresh:
            self.norm.reset_parameters()

    def use_output_norms(self, fresh: bool = False) -> None:
        """Switch to the dense-task layout: one LayerNorm per map stage (`output_norms.i`, the
        reference backbones' norm0..norm3) in place of the final norm, whose pretrained weights the
        last one takes, unless `fresh`: then all start at weight 1, bias 0, as in the reference runs
        (their checkpoint's `norm` has no `norm3` to load into). Call before a method is applied."""
        device = self.norm.weight.device
        norms = nn.ModuleList(nn.LayerNorm(self.stage_dims[s], device=device) for s in self.map_stages)
        if not fresh:
            norms[-1].load_state_dict(self.norm.state_dict())
        self.output_norms = norms
        del self.norm

    def freeze_stages(self, frozen_stages: int) -> None:
        """Freeze as `frozen_stages` of the Swin detection code the paper builds on, after a method
        was applied: >= 0 (and 1) freezes the embedding; N >= 2 also stages 0..N-2 and the
        transition into stage N-1 (a patch merging ends a stage in that code's layout)."""
        frozen: list[nn.Module | nn.Parameter] = [*self.embedding()] if frozen_stages >= 0 else []
        blocks = self.transformer_blocks()
        for stage in range(max(0, frozen_stages - 1)):
            frozen.extend(b.module for b in blocks if b.stage == stage)
            if stage + 1 < len(self.stage_dims):
                frozen.append(self.transition(stage + 1))
        for tensors in frozen:
            if tensors is not None:
                tensors.requires_grad_(False)

    def _pieces(self) -> list[tuple[int | None, Tensors, Block | None]]:
        """The forward pass in order: (stage, its tensors, the block or None) per piece."""
        pieces: list[tuple[int | None, Tensors, Block | None]] = [(None, self.embedding(), None)]
        blocks = self.transformer_blocks()
        for stage in range(len(self.stage_dims)):
            transition = self.transition(stage)
            if transition is not None:
                pieces.append((stage, [transition], None))
            pieces.extend((stage, [b.module], b) for b in blocks if b.stage == stage)
        return pieces

    def _run(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[TokenLayout | None]]:
        """The output of each stage before any output norm, plus the `side` terms, and its layout."""
        pieces = self._pieces()
        first_trainable = next((i for i, (_, t, _) in enumerate(pieces) if _trainable(t)), len(pieces))
        grad = torch.is_grad_enabled()
        branches: list[list[Branches]] | None = None if self.side is None else [[] for _ in self.stage_dims]
        outputs: list[torch.Tensor] = []
        layouts: list[TokenLayout | None] = []
        with torch.set_grad_enabled(grad and first_trainable == 0):
            x, layout = self.embed(images)
        for i, (stage, _, block) in enumerate(pieces[1:], start=1):
            with torch.set_grad_enabled(grad and i >= first_trainable):
                if block is None:
                    x, layout = self.enter_stage(stage, x, layout)
                else:
                    x = self.run_block(block, x, layout, None if branches is None else branches[stage])
            if i + 1 == len(pieces) or pieces[i + 1][0] != stage:
                outputs.append(x)
                layouts.append(layout)
        if self.side is None:
            return outputs, layouts
        terms = self.side(self, branches, [s.detach() for s in outputs], layouts)
        return [s + t for s, t in zip(outputs, terms, strict=True)], layouts

    def forward_stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The output of each stage, in the family's token shape, before any output norm, plus
        the terms of the `side` network if one is set."""
        return self._run(images)[0]

    def forward_pyramid(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The normed outputs of the map stages as (B, C, H, W) maps: what `pyramid(levels)` reads."""
        assert self.output_norms is not None, "call use_output_norms() first"
        stages, layouts = self._run(images)
        norms = zip(self.output_norms, self.map_stages, strict=True)
        return [self.to_map(norm(stages[s]), layouts[s]) for norm, s in norms]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Final-normed tokens of the last stage."""
        last = self.forward_stages(images)[-1]
        with torch.set_grad_enabled(
            torch.is_grad_enabled() and (last.requires_grad or _trainable([self.norm]))
        ):
            return self.norm(last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features, (B, num_features): the classification view."""
        return self.pool(self.forward_features(images))


class Pyramid(nn.Module, ABC):
    """Turns a backbone's normed maps (`Backbone.forward_pyramid`) into pyramid levels, strides
    4 * 2^l. Part of the neck: its parameters, if any, train with the head, whatever the method."""

    channels: tuple[int, ...]  # the width of each level it returns, in order

    @abstractmethod
    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]: ...


class StageLevels(Pyramid):
    """The levels of a hierarchical backbone: its stage maps as they are (level l = map l)."""

    def __init__(self, levels: Sequence[int], stage_dims: Sequence[int]) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.channels = tuple(stage_dims[level] for level in self.levels)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [maps[level] for level in self.levels]


# The registered sizes (`backbone=<name>`: `peft_bench.registry.BACKBONES`).


def backbone_entry(name: str) -> BackboneEntry:
    """The registered size `name`; an unknown one is a user error that lists the known ones."""
    return BACKBONES.lookup(name)


def image_size(cfg: BackboneConfig) -> int:
    """The side of the backbone's input images: `img_size`, else the size's native resolution."""
    return cfg.img_size or backbone_entry(cfg.name).img_size


def build_backbone(cfg: BackboneConfig, dynamic_size: bool = False, pretrained: bool = True) -> Backbone:
    """The backbone of a run: `cfg.name` built, `cfg.weights` loaded; a bad value raises `UserError`.

    `dynamic_size` accepts inputs of any size (dense tasks). `pretrained=False` builds the same
    architecture without loading anything (parameter counts on the meta device).
    """
    return backbone_entry(cfg.name).build(cfg, dynamic_size, pretrained)
