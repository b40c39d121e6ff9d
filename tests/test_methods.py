"""The methods that insert modules: counts, what trains, and each method's defining math; the methods
beyond the paper have their own files (test_ssf_dora, test_vpt, test_e3va), and all run end to end here."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_DETECTION, records, run_cli
from hydra import compose
from torch import nn

from peft_bench.backbones.swin import SwinBackbone, build_swin, run_block
from peft_bench.layers.slots import slots_of
from peft_bench.methods import METHODS
from peft_bench.methods.lora import LoRAQKV
from peft_bench.methods.lorand import LoRandLinear
from peft_bench.methods.mona import KERNEL_SIZES, MonaModule
from peft_bench.params import count
from peft_bench.plugins import config_session

INSERTING = ("adapter", "lora", "adaptformer", "lorand", "mona")
N = 64  # bottleneck n, and LoRA's rank r
ALPHA, BETA = 2, 8  # LoRand's branches and kernel size; its bottleneck is m // 2

# Trainable tensors per block of width m, written from docs/methods.md's formulas.
PER_BLOCK = {
    "adapter": lambda m: 2 * (2 * m * N + m + N),
    "lora": lambda m: 4 * N * m,
    "adaptformer": lambda m: 2 * m * N + m + N,
    "lorand": lambda m: lorand_per_block(m, ALPHA, m // 2),
    "mona": lambda m: 2 * ((2 * N + 5) * m + N**2 + 88 * N),
}
# embed dim (stage s has embed * 2**s channels) and depths of each size.
ARCHS = {"swin_t": (96, (2, 2, 6, 2)), "swin_b": (128, (2, 2, 18, 2)), "swin_l": (192, (2, 2, 18, 2))}
# docs/methods.md's reference column for Swin-B.
SWIN_B_REFERENCE = {
    "adapter": 3_107_328,
    "lora": 3_080_192,
    "adaptformer": 1_553_664,
    "lorand": 1_203_456,
    "mona": 3_667_456,
}


def lorand_per_block(m: int, branches: int, n: int) -> int:
    """docs/methods.md's 2(2ab(m + n) + 2ab^2 + m + n), with a = branches, b = BETA."""
    return 2 * (2 * branches * BETA * (m + n) + 2 * branches * BETA**2 + m + n)


def formula_count(method: str, size: str) -> int:
    embed, depths = ARCHS[size]
    return sum(depth * PER_BLOCK[method](embed * 2**s) for s, depth in enumerate(depths))


def applied(backbone: SwinBackbone, name: str, **fields) -> SwinBackbone:
    method = METHODS[name]
    method(method.config_class(name=name, **fields)).apply(backbone)
    return backbone


def trainable_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def big_backbones() -> dict[str, SwinBackbone]:
    """Swin-T/B/L on the meta device: the counts depend on shapes only, and it builds in no time."""
    with torch.device("meta"):
        return {size: build_swin(size) for size in ARCHS}


def test_swin_b_formulas_give_the_reference_counts() -> None:
    assert {name: formula_count(name, "swin_b") for name in INSERTING} == SWIN_B_REFERENCE


@pytest.mark.parametrize("size", list(ARCHS))
@pytest.mark.parametrize("name", INSERTING)
def test_trainable_counts(big_backbones: dict[str, SwinBackbone], name: str, size: str) -> None:
    backbone = applied(copy.deepcopy(big_backbones[size]), name)
    assert trainable_count(backbone) == formula_count(name, size)
    if size == "swin_b":
        assert trainable_count(backbone) == SWIN_B_REFERENCE[name]


def micro() -> SwinBackbone:
    torch.manual_seed(0)
    return build_swin("swin_micro")


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", [*INSERTING, "ssf", "vpt", "dora"])  # E3VA also trains norms: test_e3va
def test_only_the_method_tensors_train(name: str) -> None:
    backbone = micro()
    base_names = {n for n, _ in backbone.named_parameters()}
    applied(backbone, name)
    params = dict(backbone.named_parameters())
    new = {n for n in params if n not in base_names}
    assert base_names <= set(params)  # wrapped modules (LoRA, DoRA, SSF) keep the frozen tensors' names
    assert new and {n for n, p in params.items() if p.requires_grad} == new

    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=1e-2)
    # Two steps: zero-initialised up projections (LoRA's B) pass no gradient to the down side
    # until one step has made them non-zero.
    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        backbone(images()).square().mean().backward()
        if step == 0:
            assert all((p.grad is not None) == (n in new) for n, p in params.items())
        optimizer.step()
    for n, p in params.items():
        assert torch.equal(p, before[n]) == (n not in new), n


def test_lora_equals_the_base_at_init_and_merges() -> None:
    backbone = micro()
    base = copy.deepcopy(backbone).eval()
    applied(backbone, "lora").eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), base(x))
        qkvs = [m for m in backbone.modules() if isinstance(m, LoRAQKV)]
        assert len(qkvs) == 8
        for qkv in qkvs:
            qkv.b_q.normal_()
            qkv.b_v.normal_()
        unmerged = backbone(x)
        assert not torch.allclose(unmerged, base(x), atol=1e-3)
        for qkv in qkvs:
            qkv.merge()
        torch.testing.assert_close(backbone(x), unmerged, rtol=1e-4, atol=1e-4)
    assert "layers.0.blocks.0.attn.qkv.weight" in backbone.state_dict()


def test_lora_matches_its_formula_in_value_and_gradient() -> None:
    """The fused form (one GEMM for both A, the up projections as `addmm`) against LoRA written
    out: `W0 x + b` plus `scale * B A x` on the q and v rows."""
    torch.manual_seed(0)
    qkv = LoRAQKV(nn.Linear(12, 36).requires_grad_(False), rank=4, alpha=8.0)
    with torch.no_grad():
        qkv.b_q.normal_(), qkv.b_v.normal_()
    x, weights = torch.randn(2, 5, 12, requires_grad=True), torch.randn(2, 5, 36)
    q, k, v = F.linear(x, qkv.weight, qkv.bias).chunk(3, dim=-1)
    q = q + 2.0 * x @ qkv.a_q.t() @ qkv.b_q.t()
    v = v + 2.0 * x @ qkv.a_v.t() @ qkv.b_v.t()
    expected, ours = torch.cat((q, k, v), dim=-1), qkv(x)
    torch.testing.assert_close(ours, expected)
    tensors = [x, qkv.a_q, qkv.b_q, qkv.a_v, qkv.b_v]
    ours_grads = torch.autograd.grad((ours * weights).sum(), tensors)
    for got, want in zip(ours_grads, torch.autograd.grad((expected * weights).sum(), tensors), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_training_step_under_bf16_autocast_keeps_the_output_in_bf16(name: str) -> None:
    """Every method's step under CPU bf16 autocast: the features stay bf16 (no fp32 scale or ratio
    promotes them), close to the fp32 forward, and every trainable tensor gets a finite fp32
    gradient."""
    torch.manual_seed(0)
    backbone = applied(micro(), name)
    x = images()
    expected = backbone(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = backbone.forward_features(x)
        out = backbone(x)
    # E3VA adds its lead, carried in fp32 through the mergings (test_e3va), to each stage's output.
    assert features.dtype == (torch.float32 if name == "e3va" else torch.bfloat16)
    torch.testing.assert_close(out.float(), expected, rtol=0.1, atol=0.1)
    if out.requires_grad:  # Fixed trains nothing
        out.float().square().mean().backward()
    for tensor_name, tensor in backbone.named_parameters():
        if tensor.requires_grad and tensor.grad is not None:
            assert tensor.grad.dtype == tensor.dtype == torch.float32, tensor_name
            assert torch.isfinite(tensor.grad).all(), tensor_name


def test_adaptformer_block_output() -> None:
    backbone = applied(micro(), "adaptformer", scale=0.3).eval()
    block = backbone.layers[0].blocks[1]  # a shifted-window block
    branch = slots_of(block).mlp_parallel.body
    nn.init.normal_(branch.up.weight, std=0.1)  # large enough for the branch to show, whatever the init
    x = torch.randn(2, 16, 16, block.dim)
    with torch.no_grad():
        post_attn = x + block._attn(block.norm1(x))
        parallel = branch.up(F.gelu(branch.down(post_attn)))
        expected = post_attn + block.mlp(block.norm2(post_attn)) + 0.3 * parallel
        torch.testing.assert_close(run_block(block, x), expected)
    assert parallel.abs().max() > 1e-3


def plain_lorand(adapter: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The authors' adapter written out: `z + up(gelu(down(z)))`, each projection
    `z @ (A_0 g_0 B_0 + A_1 g_1 B_1 + ...) + bias`, summed branch by branch."""

    def project(p: LoRandLinear, v: torch.Tensor) -> torch.Tensor:
        weight = sum(p.a[i] @ p.g[i] @ p.b[i] for i in range(p.a.shape[0]))
        return v @ weight + p.bias

    body = adapter.body
    return z + project(body.up, F.gelu(project(body.down, z)))


def test_lorand_block_matches_a_plain_recomputation() -> None:
    backbone = applied(micro(), "lorand").eval()
    block = backbone.layers[1].blocks[1]  # a shifted-window block, m = 64
    slots = slots_of(block)
    x = torch.randn(2, 8, 8, block.dim)
    with torch.no_grad():
        attn = block._attn(block.norm1(x))
        post_attn = x + plain_lorand(slots.attn_out, attn)
        expected = post_attn + plain_lorand(slots.mlp_out, block.mlp(block.norm2(post_attn)))
        torch.testing.assert_close(run_block(block, x), expected)
        assert (plain_lorand(slots.attn_out, attn) - attn).abs().max() > 1e-2  # the adapter shows


def factor_shapes(projection: LoRandLinear) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(t.shape) for t in (projection.a, projection.g, projection.b))


def test_lorand_has_the_authors_structure() -> None:
    backbone = applied(micro(), "lorand")
    block = backbone.layers[1].blocks[0]
    m, n = block.dim, block.dim // 2
    slots = slots_of(block)
    for adapter in (slots.attn_out, slots.mlp_out):
        down, up = adapter.body.down, adapter.body.up
        assert factor_shapes(down) == ((ALPHA, m, BETA), (ALPHA, BETA, BETA), (ALPHA, BETA, n))
        assert factor_shapes(up) == ((ALPHA, n, BETA), (ALPHA, BETA, BETA), (ALPHA, BETA, m))
        assert not {id(p) for p in down.parameters()} & {id(p) for p in up.parameters()}  # own g_i
    assert trainable_count(slots) == lorand_per_block(m, ALPHA, n)


def test_lorand_init_is_the_authors_kaiming_uniform() -> None:
    """kaiming_uniform(a=sqrt(5)) on a 2-D (rows, cols) matrix is U(+-1/sqrt(cols)); the bias
    U(+-1/sqrt(in)), as nn.Linear's with the composed weight's fan-in."""
    torch.manual_seed(0)
    projection = LoRandLinear(256, 128, branches=ALPHA, kernel=BETA)
    bounds = {"a": BETA**-0.5, "g": BETA**-0.5, "b": 128**-0.5, "bias": 256**-0.5}
    for name, bound in bounds.items():
        largest = getattr(projection, name).abs().max().item()
        assert 0.9 * bound < largest <= bound, name


@pytest.mark.parametrize("branches", [1, 2, 3, 4])
def test_lorand_swin_b_count_per_branch_count(big_backbones: dict[str, SwinBackbone], branches: int) -> None:
    """Only 2 branches give the paper's Table 1 figure, 1.20M; the authors' code's 4 give 2.37M."""
    count = trainable_count(applied(copy.deepcopy(big_backbones["swin_b"]), "lorand", branches=branches))
    embed, depths = ARCHS["swin_b"]
    widths = [embed * 2**s for s in range(4)]
    assert count == sum(
        d * lorand_per_block(m, branches, m // 2) for m, d in zip(widths, depths, strict=True)
    )
    assert (round(count / 1e6, 2) == 1.20) == (branches == 2)


def test_lorand_fixed_bottleneck(big_backbones: dict[str, SwinBackbone]) -> None:
    backbone = applied(copy.deepcopy(big_backbones["swin_l"]), "lorand", dim=64)
    embed, depths = ARCHS["swin_l"]
    expected = sum(d * lorand_per_block(embed * 2**s, ALPHA, 64) for s, d in enumerate(depths))
    assert trainable_count(backbone) == expected == 1_304_832


def reference_mona(module: MonaModule, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """docs/methods.md's Mona written out op by op, with three separate depthwise convs; `keep` is a
    dropout mask (kept elements scaled by 1 / (1 - p)), None in evaluation."""
    b = module.bottleneck
    z = F.layer_norm(x, x.shape[-1:], module.norm.weight, module.norm.bias) * module.gamma + x * module.gammax
    u = F.linear(z, b.down.weight, b.down.bias).permute(0, 3, 1, 2)
    convs = [
        F.conv2d(u, conv.weight, conv.bias, padding=k // 2, groups=u.shape[1])
        for conv, k in zip(b.mid.depthwise, KERNEL_SIZES, strict=True)
    ]
    u = u + (convs[0] + convs[1] + convs[2]) / 3
    u = u + F.conv2d(u, b.mid.pointwise.weight, b.mid.pointwise.bias)
    h = F.gelu(u.permute(0, 2, 3, 1))
    if keep is not None:
        h = h * keep / (1 - b.drop.p)
    return x + F.linear(h, b.up.weight, b.up.bias)


def random_mona(merged: bool) -> MonaModule:
    torch.manual_seed(0)
    module = MonaModule(48, 16, dropout=0.1, scalar_scales=False, merged_conv=merged).eval()
    with torch.no_grad():  # gamma's 1e-6 init would hide the LayerNorm path
        module.gamma.normal_()
    return module


@pytest.mark.parametrize("merged", [True, False])
def test_mona_matches_a_plain_recomputation(merged: bool) -> None:
    backbone = applied(micro(), "mona", merged_conv=merged).eval()
    module = slots_of(backbone.layers[0].blocks[0]).post_attn
    with torch.no_grad():
        module.gamma.normal_()
    x = torch.randn(2, 16, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(module(x), reference_mona(module, x))


def test_mona_merged_conv_agrees_with_three_convs() -> None:
    merged, separate = random_mona(merged=True), random_mona(merged=False)
    x = torch.randn(2, 7, 9, 48)
    out_merged, out_separate = merged(x), separate(x)
    torch.testing.assert_close(out_merged, out_separate)
    weights = torch.randn_like(out_merged)
    (out_merged * weights).sum().backward()
    (out_separate * weights).sum().backward()
    pairs = zip(merged.bottleneck.mid.depthwise, separate.bottleneck.mid.depthwise, strict=True)
    for conv_merged, conv_separate in pairs:
        torch.testing.assert_close(conv_merged.weight.grad, conv_separate.weight.grad)
        torch.testing.assert_close(conv_merged.bias.grad, conv_separate.bias.grad)


def gradients(module: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> list:
    """The gradients of a fixed random projection of `forward(x)` for x and every parameter."""
    x = x.clone().requires_grad_()
    module.zero_grad()
    out = forward(x)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    return [x.grad, *(p.grad.clone() for p in module.parameters())]


@pytest.mark.parametrize("scalar_scales", [False, True])
@pytest.mark.parametrize("side", [(7, 9), (16, 17)])  # the second: the depthwise weight gradient as a conv
def test_mona_fast_path_has_the_plain_formulas_gradients(scalar_scales: bool, side: tuple[int, int]) -> None:
    """The fused scaled LayerNorm, the folded biases, the 1x1 conv as a matmul and the depthwise weight
    gradient of `depthwise_conv2d` change no gradient."""
    torch.manual_seed(0)
    module = MonaModule(48, 16, dropout=0.1, scalar_scales=scalar_scales, merged_conv=True).eval()
    with torch.no_grad():
        module.gamma.normal_()
        module.gammax.normal_()
    x = torch.randn(2, *side, 48)
    fast, plain = gradients(module, x, module), gradients(module, x, lambda t: reference_mona(module, t))
    assert len(fast) == len(list(module.parameters())) + 1
    for got, expected in zip(fast, plain, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_mona_dropout_keeps_one_minus_p_and_rescales() -> None:
    """Training: each bottleneck activation is kept with probability 1 - p, the kept ones scaled by
    1 / (1 - p); the mask is `rand >= p`, drawn from the default generator."""
    module = random_mona(merged=True).train()
    x = torch.randn(4, 14, 14, 48)
    torch.manual_seed(7)
    out = module(x)
    torch.manual_seed(7)
    keep = torch.rand(4, 14, 14, 16) >= 0.1
    torch.testing.assert_close(out, reference_mona(module, x, keep))
    assert keep.float().mean().item() == pytest.approx(0.9, abs=0.01)


def test_mona_under_bf16_autocast_keeps_its_layernorm_in_fp32() -> None:
    module = random_mona(merged=True)
    x = torch.randn(2, 7, 9, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = module(x), reference_mona(module, x)
        out.float().sum().backward()
    assert out.dtype == expected.dtype == torch.float32  # the residual stream stays fp32
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.parameters())


def test_mona_scalar_scales_count() -> None:
    vectors = trainable_count(applied(micro(), "mona"))
    scalars = trainable_count(applied(micro(), "mona", scalar_scales=True))
    # Per module, gamma and gammax shrink from 2m tensors to 2 scalars; two modules per block.
    embed, depths = 32, (2, 2, 2, 2)
    assert vectors - scalars == sum(d * 2 * (2 * embed * 2**s - 2) for s, d in enumerate(depths))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ssf", "vpt", "dora", "e3va"])
def test_a_method_beyond_the_paper_runs_end_to_end(name: str, results_dir: Path) -> None:
    """Two RetinaNet steps from the command line; the record counts what `params` counts."""
    result = run_cli(*TINY_DETECTION, f"method={name}", results_dir=results_dir)
    assert result.returncode == 0, result.stderr
    [record] = records(results_dir)
    assert record["status"] == "completed" and record["steps"] == 2
    with config_session():
        expected = count(compose("config", [*TINY_DETECTION, f"method={name}"]))
    assert record["params"]["backbone_trainable"] == expected["backbone_trainable"] > 0
