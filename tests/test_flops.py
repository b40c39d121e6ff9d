"""FLOPs (`peft_bench.engine.flops`): counts against a count written out by hand from a Swin block's
shapes, what autograd's backward skips for frozen weights, inference merged, the CPU's fused attention,
the bytes estimate, and that counting leaves the model and every generator as they were, so that a run
which counts ends as one that does not; the backfill of records made before (`peft_bench.flops`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from peft_bench import flops as backfill_module
from peft_bench import run as run_module
from peft_bench.builder import build_data, build_task_model
from peft_bench.engine.contract import TaskModel
from peft_bench.engine.flops import BytesMoved, count_flops, count_run_flops, counting
from peft_bench.engine.step_memory import saved_activations, step_memory
from peft_bench.plugins import config_session
from peft_bench.results.store import read_record, write_record

CPU = torch.device("cpu")


def model_of(*overrides: str, num_classes: int = 10) -> TaskModel:
    with config_session():
        cfg = compose("config", list(overrides))
    torch.manual_seed(0)
    return build_task_model(cfg, num_classes=num_classes, pretrained=False)


# ---------------------------------------------------------------------------------------------
# Counts against a count by hand


@pytest.mark.parametrize("frozen", [False, True])
def test_a_swin_t_block_counts_as_written_out_by_hand(frozen: bool) -> None:
    """Swin-T's stage-1 block (C = 96, 3 heads, 7x7 windows, shifted) on a 56x56 map: forward
    qkv 2N·C·3C, q·kᵀ and attn·v 2N·49·C each (per window and head: 2·49·49·C/3, over N/49 windows
    and 3 heads), proj 2N·C², fc1 and fc2 2N·C·4C each. Backward: each matmul's input gradient
    (1x its forward), plus, for a trainable weight, its weight gradient (1x again); attention's two
    matmuls have two activation operands, so 2x. A frozen block skips exactly the weight gradients."""
    block = model_of("method=full", "backbone=swin_t").backbone.transformer_blocks()[1].module
    assert (block.window_size, block.shift_size, block.attn.num_heads) == ((7, 7), (3, 3), 3)
    images, height, width, channels = 2, 56, 56, 96
    tokens = images * height * width
    linear = 2 * tokens * channels * (3 * channels + channels + 4 * channels + 4 * channels)  # 24NC²
    attention = 2 * (2 * tokens * 49 * channels)  # 196NC
    weight_gradients = linear
    by_hand_backward = 2 * attention + linear + (0 if frozen else weight_gradients)

    block.requires_grad_(not frozen)
    x = torch.randn(images, height, width, channels, requires_grad=True)  # a gradient passes the block
    with counting() as forward:
        y = block(x)
    with counting() as backward:
        y.sum().backward()
    assert forward.flops == pytest.approx(linear + attention, rel=0.05)
    assert backward.flops == pytest.approx(by_hand_backward, rel=0.05)
    assert forward.flops == linear + attention and backward.flops == by_hand_backward  # exactly, in fact


def test_a_frozen_backbone_skips_its_weight_gradients_and_fixed_its_whole_backward() -> None:
    """On the whole model: Full's backward less NormTuning's (every weight frozen, a gradient still
    through every block to the norms) is exactly the backbone's weight-gradient matmuls, which cost
    what the weights' forward matmuls cost; Fixed's backward is the head's weight gradient alone.
    The forward and the inference are the same matmuls for all three."""
    images, targets = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    overrides = ("backbone=swin_micro", "backbone.img_size=64")
    full, fixed, norms = (
        count_flops(model_of(f"method={m}", *overrides), images, targets, images, CPU)
        for m in ("full", "fixed", "normtuning")
    )
    model = model_of("method=full", *overrides)
    with FlopCounterMode(display=False) as ops:
        model(images, targets)
    by_op = {str(op): n for op, n in ops.get_flop_counts()["Global"].items()}
    head = 2 * 2 * model.backbone.num_features * 10  # (2 x 256) @ (256 x 10)
    weights_forward = by_op["aten.addmm"] + by_op["aten.mm"] + by_op["aten.convolution"] - head
    assert full.forward == fixed.forward == norms.forward == full.inference == fixed.inference
    assert full.backward - norms.backward == weights_forward
    assert fixed.backward == head  # the pooled features need no gradient: the head's weight only
    # Full: everything twice, but the patch embedding's input gradient (the images need none)
    assert full.backward == 2 * full.forward - by_op["aten.convolution"]


def test_inference_counts_the_merged_model() -> None:
    """LoRA's training forward adds its low-rank matmuls; its inference, merged as evaluation runs
    it, costs Full's."""
    images, targets = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    overrides = ("backbone=swin_micro", "backbone.img_size=64")
    full = count_flops(model_of("method=full", *overrides), images, targets, images, CPU)
    lora = count_flops(model_of("method=lora", *overrides), images, targets, images, CPU)
    assert lora.inference == full.inference < lora.forward
    assert lora.backward < full.backward  # frozen weights: no weight gradients but LoRA's own


def test_the_cpus_fused_attention_counts_as_its_matmuls() -> None:
    """A ViT's SDPA runs one fused kernel on the CPU, which torch's counter has no formula for: counted
    here as the two matmuls it does (as torch counts the CUDA kernels), 2.5x that in its backward
    (torch's formula for fused kernels, which recompute the scores)."""
    q, k, v = (torch.randn(2, 3, 49, 32, requires_grad=True) for _ in range(3))
    matmuls = 2 * (2 * 2 * 3 * 49 * 49 * 32)
    with counting() as forward:
        out = F.scaled_dot_product_attention(q, k, v)
    with counting() as backward:
        out.sum().backward()
    with counting() as explicit:
        (q @ k.transpose(-1, -2)).softmax(-1) @ v
    assert forward.flops == explicit.flops == matmuls
    assert backward.flops == 5 * matmuls // 2


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_a_grouped_convolutions_gradients_each_cost_its_forward(groups: int) -> None:
    """A conv of 16 channels, 7x7, on 2 x 16 x 10 x 10: forward 2 * B * HW * C_out * (C_in / groups)
    * k^2 multiply-adds; the input's and the weight's gradients the same each (torch's own formula
    counts the weight's as ungrouped: 16x too many for Mona's depthwise filters)."""
    conv = torch.nn.Conv2d(16, 16, 7, padding=3, groups=groups)
    x = torch.randn(2, 16, 10, 10, requires_grad=True)
    written_out = 2 * 2 * 100 * 16 * (16 // groups) * 49
    with counting() as forward:
        out = conv(x)
    with counting() as backward:
        out.sum().backward()
    assert forward.flops == written_out
    assert backward.flops == 2 * written_out
    conv.weight.requires_grad_(False)
    out = conv(x)
    with counting() as frozen_backward:
        out.sum().backward()
    assert frozen_backward.flops == written_out


def test_bytes_moved_are_each_ops_inputs_and_outputs_and_views_move_none() -> None:
    a, b, bias = torch.ones(1000), torch.ones(1000), torch.ones(10)
    with BytesMoved() as moved:
        a.view(10, 100).t()  # views
        a + b  # reads 2 x 4000 bytes, writes 4000
        a.view(100, 10) + bias  # the broadcast bias: its 10 floats once
    assert moved.bytes == 3 * 4000 + (4000 + 40 + 4000)


# ---------------------------------------------------------------------------------------------
# Counting leaves the model and the generators alone


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def generators() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_counting_leaves_the_model_and_every_generator_as_they_were() -> None:
    """UperNet's BatchNorms (running statistics), drop path and dropout in a training step: the model's
    tensors, gradients and every generator are as before, and the count is a function of the batch,
    whatever the generators' state."""
    with config_session():
        cfg = compose(
            "config",
            ["dataset=shapes_seg", "backbone=swin_micro", "method=mona", "backbone.drop_path_rate=0.2"],
        )
    data = build_data(cfg)
    torch.manual_seed(0)
    model = build_task_model(cfg, data.num_classes, pretrained=False)
    model.train()
    before, drawn = state(model), generators()
    assert any("running_mean" in k for k in before)
    first = count_run_flops(model, data, 2, 2, CPU)
    after, drawn_after = state(model), generators()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert torch.equal(drawn[0], drawn_after[0]) and np.array_equal(drawn[1], drawn_after[1])
    assert drawn[2] == drawn_after[2]
    torch.manual_seed(123)
    assert count_run_flops(model, data, 2, 2, CPU) == first
    assert first.train_images == first.infer_images == 2 and first.inference < first.forward


# ---------------------------------------------------------------------------------------------
# The step memory account


@pytest.mark.parametrize("first_frozen", [False, True])
def test_the_step_memory_account_is_weights_optimiser_state_and_saved_activations(
    first_frozen: bool,
) -> None:
    """Linear(8, 16), ReLU, Linear(16, 4) on 5 inputs, in float32. Trainable: the first linear saves
    its input x (for its weight's gradient), ReLU its output, which the second linear saves too (one
    storage, counted once); its weight is a parameter, counted as a weight. With the first linear
    frozen nothing upstream of the second needs a gradient: only the ReLU output is saved, by the
    second linear, and the first linear's parameters carry no gradient or moments."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    model[0].requires_grad_(not first_frozen)
    with saved_activations(model) as saved:
        model(torch.randn(5, 8)).sum().backward()
    first, second = (8 * 16 + 16) * 4, (16 * 4 + 4) * 4
    relu_output, inputs = 5 * 16 * 4, 5 * 8 * 4
    activations = relu_output + (0 if first_frozen else inputs)
    trainable = second + (0 if first_frozen else first)
    assert sum(saved.values()) == activations
    assert step_memory(model, saved) == first + second + 3 * trainable + activations


def test_a_frozen_backbone_holds_less_for_its_step_than_full() -> None:
    """Fixed's step holds the weights and the head's state, no backbone activation; NormTuning's the
    activations that carry a gradient to every norm; Full's also the backbone's AdamW state."""
    images, targets = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    overrides = ("backbone=swin_micro", "backbone.img_size=64")
    full, fixed, norms = (
        count_flops(model_of(f"method={m}", *overrides), images, targets, None, CPU).step_memory
        for m in ("full", "fixed", "normtuning")
    )
    weights = sum(p.numel() * 4 for p in model_of("method=full", *overrides).parameters())
    assert weights < fixed < norms < full
    assert full - norms > 3 * (weights - 2 * 256 * 10)  # Full's gradients and moments, less the head's


# ---------------------------------------------------------------------------------------------
# Run records


def tiny(results_dir: Path) -> DictConfig:
    """BitFit on swin_nano with drop path (a draw per block and step), a few embedded scenes."""
    with config_session():
        return compose(
            "config",
            [
                "method=bitfit",
                "backbone=swin_nano",
                "backbone.drop_path_rate=0.1",
                "protocol=paper",
                "data.train_size=32",
                "data.test_size=8",
                "data.batch_size=16",
                "trainer.epochs=2",
                "trainer.progress=false",
                "trainer.threads=1",
                f"paths.results_dir={results_dir}",
            ],
        )


def test_a_run_records_its_flops_and_ends_as_one_that_does_not_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count at start-up draws nothing from the run's generators and changes none of its tensors:
    the same losses, metrics and run id as the same run without it. Its record's `flops` are those the
    backfill counts from the stored config, which is how records made before get theirs."""
    counted = run_module.run(tiny(tmp_path / "counted"))
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "start_up_flops", lambda *args: None)
        plain = run_module.run(tiny(tmp_path / "plain"))
    assert counted["run_id"] == plain["run_id"] and plain["flops"] is None
    assert counted["metrics"] == plain["metrics"]
    directory = tmp_path / "counted" / "runs" / counted["run_id"]
    history = (directory / "history.csv").read_text()
    assert history == (tmp_path / "plain" / "runs" / plain["run_id"] / "history.csv").read_text()
    flops = counted["flops"]
    assert flops["source"] == "run" and flops["batch"] == 16
    assert flops["train_per_image"] == flops["forward_per_image"] + flops["backward_per_image"]
    assert flops["train_step"] == 16 * flops["train_per_image"]
    assert 0 < flops["infer_per_image"] == flops["forward_per_image"]  # no dropout or loss matmuls

    # The backfill: a record whose run could not count its `flops` (or made before runs counted) gets
    # them from its config; one whose config no longer hashes to its protocol is named and left alone.
    record = read_record(directory)
    write_record(directory, record | {"flops": {"error": "OutOfMemoryError: CUDA out of memory"}})
    other = tmp_path / "counted" / "runs" / "z-changed"  # after the first, whose protocol it claims
    other.mkdir()
    changed = OmegaConf.load(directory / "config.yaml")
    changed.trainer.lr = 123.0
    (other / "config.yaml").write_text(OmegaConf.to_yaml(changed))
    write_record(other, {k: v for k, v in record.items() if k != "flops"} | {"run_id": "z-changed"})
    assert backfill_module.main([str(tmp_path / "counted")]) == 0
    filled = json.loads((directory / "metrics.json").read_text())["flops"]
    assert filled["source"] == "config"
    counts = (
        "train_step",
        "train_per_image",
        "forward_per_image",
        "backward_per_image",
        "infer_per_image",
        "step_memory_bytes",
    )
    assert {k: filled[k] for k in counts} == {k: flops[k] for k in counts}
    assert "flops" not in read_record(other)

    # A record counted before the step memory account existed is counted again, and only it.
    write_record(directory, record | {"flops": {k: v for k, v in flops.items() if k != "step_memory_bytes"}})
    assert backfill_module.main([str(tmp_path / "counted")]) == 0
    assert read_record(directory)["flops"]["step_memory_bytes"] == flops["step_memory_bytes"]
    before = (directory / "metrics.json").stat().st_mtime_ns
    assert backfill_module.main([str(tmp_path / "counted")]) == 0
    assert (directory / "metrics.json").stat().st_mtime_ns == before
