"""SSF and DoRA: counts from their formulas, what trains, equal-at-init, the math, and merging."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hydra import compose
from test_methods import ARCHS, N, applied, images, micro, trainable_count
from torch import nn

from peft_bench.backbones.swin import build_swin
from peft_bench.config import NoDecay
from peft_bench.engine.optim import parameter_groups
from peft_bench.methods.dora import DoRAQKV
from peft_bench.methods.ssf import ScaledLinear, ScaleShift, SSFConv2d, SSFLayerNorm, SSFLinear
from peft_bench.params import count
from peft_bench.plugins import config_session

METHODS = ("ssf", "dora")
# Trainable tensors per block of width m: SSF's scale and shift after norm1 (m), qkv (3m), proj (m),
# norm2 (m), fc1 (4m) and fc2 (m); DoRA's LoRA pairs on q and v (4rm) and their magnitudes (2m).
PER_BLOCK = {"ssf": lambda m: 2 * (m + 3 * m + m + m + 4 * m + m), "dora": lambda m: 4 * N * m + 2 * m}
SWIN_B_COUNTS = {"ssf": 267_264, "dora": 3_104_256}


def ssf_outside_blocks(embed: int, dense_norms: tuple[int, ...] | None = None, mergings: bool = False) -> int:
    """SSF's scale and shift outside the blocks: patch-embed conv and norm (C each), with `mergings`
    the mergings' norms (4m for m = C, 2C, 4C; not on Swin by default, as SSF's code runs), and the
    final norm (8C) or the given stages' output norms."""
    widths = [embed * 2**s for s in range(4)]
    norms = [widths[-1]] if dense_norms is None else [widths[s] for s in dense_norms]
    return 2 * (2 * embed + mergings * sum(4 * m for m in widths[:3]) + sum(norms))


def formula_count(method: str, embed: int, depths: tuple[int, ...]) -> int:
    blocks = sum(depth * PER_BLOCK[method](embed * 2**s) for s, depth in enumerate(depths))
    return blocks + (ssf_outside_blocks(embed) if method == "ssf" else 0)


@pytest.mark.parametrize("size", list(ARCHS))
@pytest.mark.parametrize("name", METHODS)
def test_trainable_counts(name: str, size: str) -> None:
    with torch.device("meta"):  # the counts depend on shapes only
        backbone = applied(build_swin(size), name)
    assert trainable_count(backbone) == formula_count(name, *ARCHS[size])
    if size == "swin_b":
        assert trainable_count(backbone) == SWIN_B_COUNTS[name]


@pytest.mark.parametrize("name", METHODS)
def test_micro_counts(name: str) -> None:
    assert trainable_count(applied(micro(), name)) == formula_count(name, 32, (2, 2, 2, 2))


def test_ssf_after_the_mergings_on_request() -> None:
    """`after_transitions=True` adds SSF's intended scale and shift after each merging's norm:
    Swin-B 274,432, as before the reference's placement was followed."""
    with torch.device("meta"):
        backbone = applied(build_swin("swin_b"), "ssf", after_transitions=True)
    without = formula_count("ssf", *ARCHS["swin_b"]) - ssf_outside_blocks(128)
    assert trainable_count(backbone) == without + ssf_outside_blocks(128, mergings=True) == 274_432


def test_ssf_on_a_detection_backbone_counts_the_output_norms_it_trains() -> None:
    """RetinaNet's backbone: four output norms, stage 0's frozen by the builder with its SSF."""
    with config_session():
        cfg = compose("config", ["dataset=shapes_det", "method=ssf", "backbone=swin_b"])
    blocks = formula_count("ssf", 128, (2, 2, 18, 2)) - ssf_outside_blocks(128)
    assert count(cfg)["backbone_trainable"] == blocks + ssf_outside_blocks(128, dense_norms=(1, 2, 3))


# --- SSF ---

SSF_BLOCK = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def wrappers(backbone: nn.Module, kind: type[nn.Module]) -> dict[str, nn.Module]:
    return {n: m for n, m in backbone.named_modules() if isinstance(m, kind)}


def test_ssf_placement_follows_the_reference() -> None:
    """Written out from the reference `swin_transformer.py` as it runs: patch embedding (after the
    conv and after its norm), every block's norm1, qkv, proj, norm2, fc1, fc2, and the final norm;
    no patch merging's norm (its `tuning_mode` is a list there, never 'ssf'), unless asked for."""
    expected = {"patch_embed.proj", "patch_embed.norm", "norm"}
    expected |= {f"layers.{s}.blocks.{b}.{t}" for s in range(4) for b in range(2) for t in SSF_BLOCK}
    wrapped = wrappers(applied(micro(), "ssf"), ScaleShift)
    assert set(wrapped) == expected
    mergings = {f"layers.{s}.downsample.norm" for s in (1, 2, 3)}
    assert set(wrappers(applied(micro(), "ssf", after_transitions=True), ScaleShift)) == expected | mergings
    assert isinstance(wrapped["patch_embed.proj"], SSFConv2d)
    assert isinstance(wrapped["norm"], SSFLayerNorm) and isinstance(
        wrapped["layers.1.blocks.0.mlp.fc1"], SSFLinear
    )


def test_ssf_init_as_the_reference() -> None:
    ssf = wrappers(applied(micro(), "ssf"), ScaleShift).values()
    scales = torch.cat([m.scale.detach() for m in ssf])
    shifts = torch.cat([m.shift.detach() for m in ssf])
    assert scales.numel() > 10_000
    assert scales.mean() == pytest.approx(1.0, abs=1e-3) and scales.std() == pytest.approx(0.02, rel=0.05)
    assert shifts.mean() == pytest.approx(0.0, abs=1e-3) and shifts.std() == pytest.approx(0.02, rel=0.05)


def test_ssf_at_scale_one_shift_zero_equals_the_base() -> None:
    backbone = micro()
    base = copy.deepcopy(backbone).eval()
    applied(backbone, "ssf", init_std=0.0).eval()
    x = images()
    with torch.no_grad():
        assert torch.equal(backbone(x), base(x))


def randomise_ssf(module: ScaleShift) -> None:
    with torch.no_grad():
        module.scale.normal_(1.0, 0.5)
        module.shift.normal_(0.0, 0.5)


def test_ssf_wrappers_scale_and_shift_each_output_channel() -> None:
    torch.manual_seed(0)
    linear, conv, norm = nn.Linear(6, 5), nn.Conv2d(3, 5, 2, stride=2), nn.LayerNorm(5)
    cases = [  # (wrapper, plain module, input, plain forward, per-channel view)
        (SSFLinear, linear, torch.randn(2, 4, 6), lambda x: F.linear(x, linear.weight, linear.bias), (-1,)),
        (
            SSFConv2d,
            conv,
            torch.randn(2, 3, 8, 8),
            lambda x: F.conv2d(x, conv.weight, conv.bias, stride=2),
            (-1, 1, 1),
        ),
        (
            SSFLayerNorm,
            norm,
            torch.randn(2, 4, 5),
            lambda x: F.layer_norm(x, (5,), norm.weight, norm.bias),
            (-1,),
        ),
    ]
    for wrapper, plain, x, forward, view in cases:
        ssf = wrapper(plain, 0.02)
        assert ssf.weight is plain.weight and ssf.bias is plain.bias
        randomise_ssf(ssf)
        plain.weight.requires_grad_(False), plain.bias.requires_grad_(False)
        x.requires_grad_(True)
        grad_out = torch.randn_like(forward(x))
        # The gradients of the folded forms (ScaledLinear, the norm's own affine map) are the
        # written-out formula's, for the input, the scale and the shift.
        expected = forward(x) * ssf.scale.view(view) + ssf.shift.view(view)
        expected_grads = torch.autograd.grad(expected, (x, ssf.scale, ssf.shift), grad_out)
        out = ssf(x)
        torch.testing.assert_close(out, expected)
        grads = torch.autograd.grad(out, (x, ssf.scale, ssf.shift), grad_out)
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_scaled_linear_gradients_pass_gradcheck() -> None:
    """The backward recovers `x W^T + b` from the output: checked against finite differences in
    float64, with scales of both signs and shifts far larger than some scaled outputs."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    scale = torch.tensor([1.0, -0.5, 0.02, 2.0, 0.9], dtype=torch.float64, requires_grad=True)
    shift = (3 * torch.randn(5, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(ScaledLinear.apply, (x, weight, bias, scale, shift))


def example_input(module: nn.Module) -> torch.Tensor:
    if isinstance(module, nn.Conv2d):
        return torch.randn(2, module.in_channels, 8, 8)
    width = module.in_features if isinstance(module, nn.Linear) else module.normalized_shape[0]
    return torch.randn(3, width)


def test_ssf_merges_into_the_frozen_tensors() -> None:
    backbone = micro()
    base = copy.deepcopy(backbone).eval()
    applied(backbone, "ssf").eval()
    ssf = wrappers(backbone, ScaleShift)
    for module in ssf.values():
        randomise_ssf(module)
    x = images()
    probes = {name: example_input(module) for name, module in ssf.items()}
    with torch.no_grad():
        unmerged = backbone(x)
        assert not torch.allclose(unmerged, base(x), atol=1e-2)
        expected = {name: module(probes[name]) for name, module in ssf.items()}
        for module in ssf.values():
            module.merge()
        torch.testing.assert_close(backbone(x), unmerged, rtol=1e-5, atol=1e-5)
        for name, module in ssf.items():
            plain = super(ScaleShift, module).forward(probes[name])  # the torch module's own, merged tensors
            torch.testing.assert_close(plain, expected[name], rtol=1e-5, atol=1e-5)
            module.merge()  # idempotent
            torch.testing.assert_close(module(probes[name]), expected[name], rtol=1e-5, atol=1e-5)
    assert "layers.0.blocks.0.attn.qkv.weight" in backbone.state_dict()


# --- DoRA ---


def dora_qkvs(backbone: nn.Module) -> list[DoRAQKV]:
    return list(wrappers(backbone, DoRAQKV).values())


def test_dora_equals_the_base_at_init() -> None:
    backbone = micro()
    base = copy.deepcopy(backbone).eval()
    applied(backbone, "dora").eval()
    x = images()
    qkvs = dora_qkvs(backbone)
    assert len(qkvs) == 8
    for qkv in qkvs:  # m starts at the rows' norms of W0
        rows = qkv.weight.detach().norm(dim=1).chunk(3)
        assert torch.equal(qkv.m_q, rows[0]) and torch.equal(qkv.m_v, rows[2])
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), base(x), rtol=0, atol=1e-6)


def randomise_dora(qkv: DoRAQKV) -> None:
    with torch.no_grad():
        for tensor in (qkv.a_q, qkv.a_v, qkv.b_q, qkv.b_v):
            tensor.normal_(0.0, 0.3)
        qkv.m_q.mul_(torch.empty_like(qkv.m_q).uniform_(0.5, 1.5))
        qkv.m_v.mul_(torch.empty_like(qkv.m_v).uniform_(0.5, 1.5))


def peft_style_dora(qkv: DoRAQKV, x: torch.Tensor) -> torch.Tensor:
    """Hugging Face peft's form, written out: the base output plus `(s - 1) W0 x + s * scale * B A x`
    on q and v, with `s = m / ||W0 + scale * B A||` and the norm detached."""
    out = F.linear(x, qkv.weight, qkv.bias)
    q, k, v = out.chunk(3, dim=-1)
    w_q, _, w_v = qkv.weight.chunk(3)

    def adapted(base, w0, a, b, magnitude):
        norm = (w0 + qkv.scale * b @ a).norm(dim=1).detach()
        s = magnitude / norm
        return base + (s - 1) * F.linear(x, w0) + s * qkv.scale * F.linear(F.linear(x, a), b)

    q = adapted(q, w_q, qkv.a_q, qkv.b_q, qkv.m_q)
    v = adapted(v, w_v, qkv.a_v, qkv.b_v, qkv.m_v)
    return torch.cat((q, k, v), dim=-1)


def test_dora_matches_peft_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    qkv = DoRAQKV(nn.Linear(12, 36), rank=4, alpha=8.0)
    qkv.weight.requires_grad_(False)
    qkv.bias.requires_grad_(False)
    randomise_dora(qkv)
    x, weights = torch.randn(2, 5, 12, requires_grad=True), torch.randn(2, 5, 36)
    tensors = [x, qkv.a_q, qkv.b_q, qkv.a_v, qkv.b_v, qkv.m_q, qkv.m_v]
    ours, reference = qkv(x), peft_style_dora(qkv, x)
    torch.testing.assert_close(ours, reference)
    ours_grads = torch.autograd.grad((ours * weights).sum(), tensors)
    reference_grads = torch.autograd.grad((reference * weights).sum(), tensors)
    for ours_grad, reference_grad in zip(ours_grads, reference_grads, strict=True):
        torch.testing.assert_close(ours_grad, reference_grad)


def test_dora_merges_into_the_frozen_weight() -> None:
    backbone = applied(micro(), "dora").eval()
    qkvs = dora_qkvs(backbone)
    for qkv in qkvs:
        randomise_dora(qkv)
    x = images()
    with torch.no_grad():
        unmerged = backbone(x)
        bias_before = qkvs[0].bias.clone()
        for qkv in qkvs:
            qkv.merge()
        torch.testing.assert_close(backbone(x), unmerged, rtol=1e-5, atol=1e-5)
        assert torch.equal(qkvs[0].bias, bias_before)  # DoRA leaves the bias as it is
        for qkv in qkvs:
            probe = torch.randn(3, qkv.in_features)
            plain = F.linear(probe, qkv.weight, qkv.bias)
            assert qkv.merged and torch.equal(qkv(probe), plain)
            qkv.merge()  # idempotent
            assert torch.equal(qkv(probe), plain)
    assert "layers.0.blocks.0.attn.qkv.weight" in backbone.state_dict()


def test_ssf_tensors_are_exempt_from_weight_decay_under_any_rules() -> None:
    """SSF's source never decays its scales and shifts; the paper recipes' rules would decay those
    after linear maps (they exempt LayerNorms only), and so would pull those scales toward 0."""
    backbone = applied(micro(), "ssf")
    groups = parameter_groups(backbone, lr=1e-4, weight_decay=0.05, no_decay=[NoDecay.layer_norms])
    decayed = {id(p) for group in groups if group["weight_decay"] for p in group["params"]}
    ssf = [p for m in backbone.modules() if isinstance(m, ScaleShift) for p in (m.scale, m.shift)]
    assert ssf and not any(id(p) in decayed for p in ssf)
    dora = applied(micro(), "dora")  # DoRA's source (peft under Hugging Face's Trainer) decays them
    groups = parameter_groups(dora, lr=1e-4, weight_decay=0.05, no_decay=[NoDecay.layer_norms])
    assert all(group["weight_decay"] == 0.05 for group in groups)


def test_ssf_keeps_the_dtype_of_autocast() -> None:
    """Its fp32 scale and shift must not turn a bf16 activation back into fp32 (memory, speed)."""
    linear = SSFLinear(nn.Linear(8, 4), std=0.02)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(torch.randn(2, 8)).dtype == nn.Linear(8, 4)(torch.randn(2, 8)).dtype == torch.bfloat16
