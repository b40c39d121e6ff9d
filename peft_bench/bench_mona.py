"""Mona's module alone: its forward and backward against the reference code's formulation.

    python -m peft_bench.bench_mona --backbone swin_t --img-size 224 --batch 8

Both compute the same function with the same tensors (`ReferenceMona` borrows a `MonaModule`'s
parameters), on each stage's tokens of the backbone; they are timed in turns (interleaved
repeats, medians), as `peft_bench.bench` times methods. The last row weighs each stage by the
number of Mona modules it holds (two per block): the modules' share of one training step.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from peft_bench.backbones.swin import swin_spec
from peft_bench.bench import timed, to_csv, to_markdown
from peft_bench.methods.mona import MonaModule
from peft_bench.results.atomic import write_text_atomic

COLUMNS = ["stage", "tokens", "modules", "reference_ms", "ours_ms", "speedup"]


class ReferenceMona(nn.Module):
    """The reference code's formulation of `module` (`Mona` and `MonaOp` of the authors' Swin): tokens
    (B, N, C), the scaled LayerNorm as written, reshape and permute to NCHW, three depthwise convs
    averaged plus the skip, a 1x1 conv plus the skip, permute back; `nn.Dropout`."""

    def __init__(self, module: MonaModule) -> None:
        super().__init__()
        self.module = module  # the parameters, not the forward

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        m = self.module
        bottleneck, filters = m.bottleneck, m.bottleneck.mid
        identity = x
        x = m.norm(x) * m.gamma + x * m.gammax
        u = bottleneck.down(x)
        batch, tokens, channels = u.shape
        u = u.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        u = sum(conv(u) for conv in filters.depthwise) / 3.0 + u
        u = u + filters.pointwise(u)
        u = u.permute(0, 2, 3, 1).reshape(batch, tokens, channels)
        return identity + bottleneck.up(F.dropout(F.gelu(u), bottleneck.drop.p, self.training))


def stage_shapes(backbone: str, img_size: int) -> list[tuple[int, int, int]]:
    """(side, channels, Mona modules) of each stage's tokens: stride 4 * 2^s, two modules a block."""
    spec = swin_spec(backbone)
    return [
        (img_size // (4 * 2**s), dim, 2 * depth)
        for s, (dim, depth) in enumerate(zip(spec.stage_dims, spec.depths, strict=True))
    ]


def measure(backbone: str, img_size: int, batch: int, hidden: int, repeats: int, warmup: int) -> list[dict]:
    rows = []
    for stage, (side, dim, modules) in enumerate(stage_shapes(backbone, img_size)):
        reference_s, ours_s = time_stage(side, dim, batch, hidden, repeats, warmup)
        rows.append(_row(f"{stage}", f"{side}x{side}x{dim}", modules, reference_s, ours_s))
    total = [sum(r["modules"] * r[f"{name}_ms"] for r in rows) / 1000 for name in ("reference", "ours")]
    rows.append(_row("all", "per step", sum(r["modules"] for r in rows), *total))
    return rows


def time_stage(
    side: int, dim: int, batch: int, hidden: int, repeats: int, warmup: int
) -> tuple[float, float]:
    """Median seconds of the reference's and our forward and backward on (batch, side, side, dim) tokens."""
    torch.manual_seed(0)
    ours = MonaModule(dim, hidden, dropout=0.1, scalar_scales=False, merged_conv=True).train()
    reference = ReferenceMona(ours).train()
    x = torch.randn(batch, side, side, dim, requires_grad=True)  # as inside a tuned network
    grad = torch.randn_like(x)
    steps = {
        "reference": lambda: reference(x.flatten(1, 2), side, side).backward(grad.flatten(1, 2)),
        "ours": lambda: ours(x).backward(grad),
    }
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(warmup + repeats):
        order = list(steps.items()) if r % 2 else list(reversed(steps.items()))  # neither always first
        for name, step in order:
            elapsed = timed(step, x.device)
            if r >= warmup:
                seconds[name].append(elapsed)
    return statistics.median(seconds["reference"]), statistics.median(seconds["ours"])


def _row(stage: str, tokens: str, modules: int, reference_s: float, ours_s: float) -> dict:
    return {
        "stage": stage,
        "tokens": tokens,
        "modules": modules,
        "reference_ms": round(1000 * reference_s, 2),
        "ours_ms": round(1000 * ours_s, 2),
        "speedup": round(reference_s / ours_s, 2),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="swin_t")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64, help="Mona's bottleneck n (method.dim)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default results/bench/...)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args.backbone, args.img_size, args.batch, args.dim, args.repeats, args.warmup)
    name = f"mona-module-{args.backbone}-{args.img_size}px-b{args.batch}.csv"
    out = args.out or Path("results/bench") / name
    write_text_atomic(out, to_csv(rows, COLUMNS))
    print(to_markdown(rows, COLUMNS))
    print(f"\nwritten to {out}")
    return rows


if __name__ == "__main__":
    main()
