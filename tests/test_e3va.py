"""E3VA: counts, what trains, a backbone without autograd, and the highway against a plain re-computation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_DETECTION
from hydra import compose
from test_methods import ARCHS, applied, images, micro, trainable_count
from torch import nn

from peft_bench.backbones.swin import SwinBackbone, build_swin
from peft_bench.methods.e3va import BlockAdapters
from peft_bench.params import count
from peft_bench.plugins import config_session

N = 64  # the adapters' bottleneck n


def e3va_count(size: str, dense: bool) -> int:
    """2(2mn + m + n) per block, plus the norms that lead to the head: the four stage norms (2m each)
    of a dense backbone, the final norm (2 * 8C) of a classifier."""
    embed, depths = ARCHS[size]
    widths = [embed * 2**s for s in range(4)]
    adapters = sum(d * 2 * (2 * m * N + m + N) for m, d in zip(widths, depths, strict=True))
    return adapters + 2 * (sum(widths) if dense else widths[-1])


def layout(backbone: SwinBackbone, dense: bool) -> SwinBackbone:
    if dense:
        backbone.use_output_norms()
    return backbone


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("size", list(ARCHS))
def test_trainable_count_is_the_formula(size: str, dense: bool) -> None:
    with torch.device("meta"):
        backbone = applied(layout(build_swin(size), dense), "e3va")
    assert trainable_count(backbone) == e3va_count(size, dense)


def test_swin_b_counts() -> None:
    assert (e3va_count("swin_b", dense=False), e3va_count("swin_b", dense=True)) == (3_109_376, 3_111_168)


def randomised(backbone: SwinBackbone) -> SwinBackbone:
    """The highway's up projections start at zero; random ones make every adapter show."""
    with torch.no_grad():
        for module in backbone.side.modules():
            if isinstance(module, BlockAdapters):
                for adapter in (module.attn, module.mlp):
                    adapter.up.weight.normal_(std=0.05)
                    adapter.up.bias.normal_(std=0.05)
    return backbone


@pytest.mark.parametrize("dense", [False, True])
def test_equals_the_base_at_init(dense: bool) -> None:
    backbone = layout(micro(), dense)
    base = copy.deepcopy(backbone).eval()
    applied(backbone, "e3va").eval()
    x = images()
    with torch.no_grad():
        if dense:
            for ours, theirs in zip(backbone.forward_pyramid(x), base.forward_pyramid(x), strict=True):
                assert torch.equal(ours, theirs)
        else:
            assert torch.equal(backbone(x), base(x))
        randomised(backbone)
        assert not torch.allclose(backbone.forward_stages(x)[-1], base.forward_stages(x)[-1], atol=1e-3)


def plain_adapter(adapter: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return F.linear(
        F.gelu(F.linear(z, adapter.down.weight, adapter.down.bias)), adapter.up.weight, adapter.up.bias
    )


def test_stage_outputs_match_a_plain_recomputation() -> None:
    """The highway written out as its own stream: it starts on the patch embedding, takes each
    block's residual adds plus both adapters, and goes through the backbone's patch mergings."""
    backbone = randomised(applied(layout(micro(), dense=True), "e3va")).eval()
    x = images()
    expected = []
    with torch.no_grad():
        stream = highway = backbone.patch_embed(x)
        for stage, adapters in zip(backbone.layers, backbone.side.stages, strict=True):
            stream, highway = stage.downsample(stream), stage.downsample(highway)
            for block, pair in zip(stage.blocks, adapters, strict=True):
                attn = block._attn(block.norm1(stream))
                stream = stream + attn
                mlp = block.mlp(block.norm2(stream))
                stream = stream + mlp
                highway = highway + attn + mlp + plain_adapter(pair.attn, attn) + plain_adapter(pair.mlp, mlp)
            expected.append(highway)
        got = backbone.forward_stages(x)
        pyramid = backbone.forward_pyramid(x)
    for ours, theirs, norm, level in zip(got, expected, backbone.output_norms, pyramid, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(level, norm(theirs).permute(0, 3, 1, 2), rtol=1e-4, atol=1e-4)
    assert (expected[-1] - stream).abs().max() > 1e-2  # the highway has left the backbone's stream


@pytest.mark.parametrize("dense", [False, True])
def test_only_the_highway_and_its_norms_train(dense: bool) -> None:
    backbone = layout(micro(), dense)
    base_names = {n for n, _ in backbone.named_parameters()}
    applied(backbone, "e3va")
    params = dict(backbone.named_parameters())
    norms = ("output_norms." if dense else "norm.",)
    owned = {n for n in params if n not in base_names or n.startswith(norms)}
    assert {n for n, p in params.items() if p.requires_grad} == owned
    assert {n for n in owned if n in base_names} == {n for n in base_names if n.startswith(norms)}

    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=1e-2)

    def loss() -> torch.Tensor:
        if dense:
            return sum(level.square().mean() for level in backbone.forward_pyramid(images()))
        return backbone(images()).square().mean()

    for step in range(2):  # zero up projections pass no gradient to the down side until one step
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        if step == 0:
            assert all((p.grad is not None) == (n in owned) for n, p in params.items())
        optimizer.step()
    for n, p in params.items():
        assert torch.equal(p, before[n]) == (n not in owned), n


def block_outputs(backbone: SwinBackbone) -> tuple[list[torch.Tensor], list]:
    """Every output of the patch embedding and of every module inside a block, kept by forward hooks."""
    outputs: list[torch.Tensor] = []
    modules = [*backbone.patch_embed.modules()]
    modules += [m for stage in backbone.layers for m in stage.blocks.modules()]
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in modules]
    return outputs, hooks


@pytest.mark.parametrize("name", ["e3va", "adapter"])
def test_no_autograd_graph_through_the_backbone(name: str) -> None:
    """With E3VA, no block output is part of a graph while the loss still reaches the highway; with
    the Houlsby adapters (in the blocks), the same hooks see one."""
    backbone = applied(layout(micro(), dense=True), name)
    outputs, hooks = block_outputs(backbone)
    # A random projection: the plain sum of a LayerNorm's output has an analytically zero gradient.
    generator = torch.Generator().manual_seed(3)
    levels = backbone.forward_pyramid(images())
    loss = sum((level * torch.randn(level.shape, generator=generator)).sum() for level in levels)
    for hook in hooks:
        hook.remove()
    tensors = [t for t in outputs if isinstance(t, torch.Tensor)]
    assert len(tensors) > 50
    in_graph = [t.requires_grad or t.grad_fn is not None for t in tensors]
    assert not any(in_graph) if name == "e3va" else any(in_graph)
    loss.backward()
    if name == "e3va":
        ups = [m.attn.up.weight.grad for m in backbone.side.modules() if isinstance(m, BlockAdapters)]
        assert len(ups) == 8 and all(g is not None and g.abs().sum() > 0 for g in ups)


def test_a_detection_run_trains_no_stage_0_norm() -> None:
    """RetinaNet reads no stage-0 map: the builder leaves that norm frozen, as for every method."""
    with config_session():
        counted = count(compose("config", [*TINY_DETECTION, "method=e3va"]))
    expected = trainable_count(applied(layout(micro(), dense=True), "e3va")) - 2 * 32
    assert counted["backbone_trainable"] == expected


def lead_into(backbone: SwinBackbone, stage: int, previous: torch.Tensor, lead: torch.Tensor) -> torch.Tensor:
    """`merge(x + lead) - merge(x)`, in the precision of the arguments (and of any autocast)."""
    merged = backbone.enter_stage(stage, previous + lead, None)[0]
    return merged - backbone.enter_stage(stage, previous, None)[0]


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.double() - reference).norm() / reference.norm()).item()


def test_the_lead_survives_bf16_autocast() -> None:
    """Under bf16 autocast, the lead carried through each patch merging is the float32 one, close to
    the exact (float64) one although it is only ~3e-4 of the stream, below the bf16 rounding of a
    merge's outputs: the difference of two bf16 merges, as autocast would compute it, is noise."""
    backbone = applied(layout(micro(), dense=True), "e3va").eval()
    generator = torch.Generator().manual_seed(4)
    dims = backbone.stage_dims
    stages = [torch.randn(2, 16 >> s, 16 >> s, d, generator=generator).bfloat16() for s, d in enumerate(dims)]
    branches = [[(x, x)] * len(adapters) for x, adapters in zip(stages, backbone.side.stages, strict=True)]
    with torch.no_grad():
        for pair in backbone.side.stages[0]:  # a small lead out of stage 0; later up projections stay 0
            for adapter in (pair.attn, pair.mlp):
                adapter.up.weight.normal_(std=3e-4, generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            leads = backbone.side(backbone, branches, stages, [None] * len(stages))
            naive = lead_into(backbone, 1, stages[0], leads[0])
        for s in range(1, len(stages)):
            assert torch.equal(leads[s], lead_into(backbone, s, stages[s - 1].float(), leads[s - 1].float()))
        exact = copy.deepcopy(backbone).double()
        previous = stages[0].double()
        reference = lead_into(exact, 1, previous, leads[0].double())
        assert 2e-4 < reference.norm() / exact.enter_stage(1, previous, None)[0].norm() < 4e-4
    assert relative_error(leads[1], reference) < 2e-3  # float32's own cancellation: 1.1e-3
    assert relative_error(naive, reference) > 0.1  # bf16's: 2.8
