"""What a GPU run depends on, checked on the CPU: precision and its fp32 islands in the detectors,
the global batch across processes, per-process seeds, run identity, resume with another number of
processes, and the loss read once per history row."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, SMOKE, cli_env, records, run_cli
from omegaconf import OmegaConf
from torch import nn
from torchvision.models.detection.image_list import ImageList

from peft_bench.backbones.swin import build_swin
from peft_bench.config import (
    Config,
    LinearHeadConfig,
    MaskRCNNHeadConfig,
    MethodConfig,
    Precision,
    RetinaNetHeadConfig,
)
from peft_bench.engine import precision as precision_module
from peft_bench.engine.checkpoint import (
    load_checkpoint,
    rank_rng_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from peft_bench.engine.optim import build_optimizer
from peft_bench.engine.precision import resolve_precision
from peft_bench.engine.trainer import check_batch_fits, per_device_batch
from peft_bench.errors import UserError
from peft_bench.models.mask_rcnn import InstanceSegmentationModel, ProposalBudget
from peft_bench.models.retinanet import RetinaNetModel
from peft_bench.results.protocol import protocol_hash
from peft_bench.run import seed_everything

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


# ---------------------------------------------------------------------------------------------
# Precision


def test_precision_resolves_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("auto", CPU) is Precision.fp32
    assert resolve_precision("bf16", CPU) is Precision.bf16  # the CPU autocasts bf16
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)
    for native, expected in ((True, Precision.bf16), (False, Precision.fp16)):
        monkeypatch.setattr(precision_module, "native_bf16", lambda device, native=native: native)
        assert resolve_precision("auto", CUDA) is expected  # V100/T4: fp16 with a loss scale
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100")
    with pytest.raises(UserError, match="V100 has no native bf16"):
        resolve_precision("bf16", CUDA)


def micro_swin() -> nn.Module:
    torch.manual_seed(0)
    swin = build_swin("swin_micro", dynamic_size=True)
    swin.use_output_norms()
    return swin


def test_retinanet_keeps_anchors_outputs_boxes_and_scores_in_fp32_under_bf16() -> None:
    head = RetinaNetHeadConfig(name="retinanet", fpn_channels=32, min_size=[512], max_size=1024)
    detector = RetinaNetModel(micro_swin(), 5, head).eval().detector
    images = torch.rand(1, 3, 512, 1024)
    batch = ImageList(images, [(512, 1024)])
    with torch.no_grad():
        features = list(detector.backbone(images).values())
        reference = detector.head(features), detector.anchor_generator(batch, features)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = list(detector.backbone(images).values())
            assert low[0].dtype == torch.bfloat16  # the features are bf16 ...
            outputs, anchors = detector.head(low), detector.anchor_generator(batch, low)[0]
    assert anchors.dtype == torch.float32 and torch.equal(anchors, reference[1])  # ... the anchors not
    assert {o.dtype for o in outputs.values()} == {torch.float32}
    decode = detector.box_coder.decode_single
    boxes = decode(outputs["bbox_regression"][0], anchors)
    expected = decode(reference[0]["bbox_regression"][0], reference[1])
    assert (boxes - expected).abs().max() < 0.5
    assert (anchors.bfloat16().float() - anchors).abs().max() >= 2  # what bf16 anchors would lose

    detector.score_thresh = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        [prediction] = detector([images[0]])
    assert prediction["boxes"].dtype == prediction["scores"].dtype == torch.float32


def test_the_rpn_anchors_of_mask_rcnn_are_fp32_under_bf16() -> None:
    head = MaskRCNNHeadConfig(name="mask_rcnn", fpn_channels=16, min_size=[64], max_size=64)
    budget = ProposalBudget((64, 64), (32, 32), roi_samples=32, detections=10)
    detector = InstanceSegmentationModel(micro_swin(), 3, head, budget, cascade=False).eval().detector
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = list(detector.backbone(images).values())
        anchors = detector.rpn.anchor_generator(ImageList(images, [(64, 64)]), features)
    assert features[0].dtype == torch.bfloat16 and anchors[0].dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# The global batch, per-process seeds


def test_the_batch_is_global_and_must_divide_among_the_processes() -> None:
    assert per_device_batch(16, 2) == 8 and per_device_batch(2, 1) == 2
    with pytest.raises(UserError, match=r"data\.batch_size=16 is the global batch, and 3 processes"):
        per_device_batch(16, 3)
    with pytest.raises(UserError, match="fewer than one batch of 8"):
        check_batch_fits(7, 8, 1)
    check_batch_fits(8, 8, 2)  # 4 samples and a batch of 4 for each of the 2 processes


def draws(rank: int, world: int, init: str, out: str) -> None:
    """One process: seed as a run does, build a model, wrap it in DDP, draw a dropout mask."""
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    seed_everything(7, rank)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)))
    mask = model(torch.ones(4, 8)) != 0
    torch.save({"weight": model.module[0].weight.detach(), "mask": mask}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_each_process_draws_its_own_masks_on_the_same_weights(world: int, tmp_path: Path) -> None:
    mp.spawn(draws, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(world)]
    assert all(torch.equal(r["weight"], results[0]["weight"]) for r in results)  # rank 0's, broadcast
    masks = [r["mask"] for r in results]
    assert all(not torch.equal(masks[i], masks[j]) for i in range(world) for j in range(i + 1, world))
    seed_everything(7, 0)  # rank 0 draws as a single process of the same seed
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    assert torch.equal(model(torch.ones(4, 8)) != 0, masks[0])


@pytest.mark.slow
def test_three_processes_refuse_a_batch_of_16(results_dir: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]
    command += ["-m", "peft_bench", f"paths.results_dir={results_dir}", *SMOKE, "data.batch_size=16"]
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "data.batch_size=16 is the global batch, and 3 processes cannot share it" in result.stderr
    assert not records(results_dir)


# ---------------------------------------------------------------------------------------------
# Run identity


def test_the_protocol_hash_holds_the_precision_and_the_global_batch() -> None:
    def cfg(**overrides: object):
        base = OmegaConf.structured(Config)
        base.method = OmegaConf.structured(MethodConfig(name="fixed"))
        base.head = OmegaConf.structured(LinearHeadConfig(name="linear"))
        base.data.name = "shapes"
        trainer = {k: v for k, v in overrides.items() if k != "batch"}
        return OmegaConf.merge(base, {"trainer": trainer, "data": {"batch_size": overrides.get("batch", 32)}})

    fp32 = protocol_hash(cfg(precision="fp32"))
    assert protocol_hash(cfg(precision="auto")) == fp32  # a report's cell: what the CPU resolves
    assert protocol_hash(cfg(precision="bf16")) != fp32 != protocol_hash(cfg(precision="fp16"))
    assert protocol_hash(cfg(precision="fp32", batch=16)) != fp32


# ---------------------------------------------------------------------------------------------
# Resume with another number of processes


def test_each_process_restores_its_own_generators(monkeypatch: pytest.MonkeyPatch) -> None:
    states = []
    for rank in range(3):
        torch.manual_seed(100 + rank)
        states.append(rng_state(CPU))
    assert rank_rng_state(states, 2) is states[2]
    assert rank_rng_state(states, 3) is None  # a process the saved run did not have keeps its seed
    assert rank_rng_state(states[0], 0) is states[0]  # an older checkpoint: one state, rank 0's
    set_rng_state(states[1], CPU)
    torch.manual_seed(101)
    expected = torch.rand(3)
    set_rng_state(states[1], CPU)
    assert torch.equal(torch.rand(3), expected)

    # An older checkpoint saved every visible GPU's state; a resume on fewer takes its own device's.
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    eight = [torch.full((4,), i, dtype=torch.uint8) for i in range(8)]
    set_rng_state({**states[0], "cuda": eight}, torch.device("cuda", 1))
    set_rng_state({**states[0], "cuda": eight[:1]}, torch.device("cuda", 1))  # none for device 1
    assert len(restored) == 1 and torch.equal(restored[0][0], eight[1])


@pytest.mark.slow
def test_a_run_saved_by_three_processes_resumes_in_one(results_dir: Path, tmp_path: Path) -> None:
    """The checkpoint of one epoch, its generators rewritten as a 3-process run saves them (rank 0's
    first): a single process resumes from rank 0's and ends as the uninterrupted run."""
    overrides = [*SMOKE, "method=bitfit", "trainer.epochs=2"]
    reference = run_cli(*overrides, results_dir=tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr
    [expected] = records(tmp_path / "reference")
    first = run_cli(*overrides, "trainer.max_steps=8", results_dir=results_dir)  # the first of two epochs
    assert first.returncode == 0, first.stderr
    # max_steps is part of the protocol: the checkpoints move under the full run's id.
    [partial] = records(results_dir)
    source = results_dir / "runs" / partial["run_id"] / "checkpoints"
    target = results_dir / "runs" / expected["run_id"] / "checkpoints"
    target.mkdir(parents=True)
    shutil.copy(source / "best.pt", target / "best.pt")
    checkpoint = load_checkpoint(source / "last.pt")
    assert isinstance(checkpoint["rng"], list) and len(checkpoint["rng"]) == 1
    assert checkpoint["loop"]["epoch"] == 1
    checkpoint["rng"] = checkpoint["rng"] * 3
    save_checkpoint(target / "last.pt", **checkpoint)
    resumed = run_cli(*overrides, results_dir=results_dir)
    assert resumed.returncode == 0, resumed.stderr
    record = next(r for r in records(results_dir) if r["run_id"] == expected["run_id"])
    assert record["metrics"] == expected["metrics"] and record["precision"] == "fp32"
    assert record["batch"] == {"global": 32, "per_device": 32, "world_size": 1}


# ---------------------------------------------------------------------------------------------
# The loss, read once per history row


@pytest.mark.slow
def test_history_rows_hold_the_mean_loss_of_their_steps(results_dir: Path) -> None:
    every = run_cli(*SMOKE, "method=fixed", "trainer.log_every=1", results_dir=results_dir / "every")
    fourth = run_cli(*SMOKE, "method=fixed", "trainer.log_every=4", results_dir=results_dir / "fourth")
    assert every.returncode == 0 and fourth.returncode == 0, every.stderr + fourth.stderr
    [one], [four] = records(results_dir / "every"), records(results_dir / "fourth")
    assert one["metrics"] == four["metrics"]  # when the loss is read changes nothing of training
    rows = {
        name: (results_dir / name / "runs" / one["run_id"] / "history.csv").read_text().splitlines()
        for name in ("every", "fourth")
    }
    losses = [float(line.split(",")[2]) for line in rows["every"][1:]]
    means = [float(line.split(",")[2]) for line in rows["fourth"][1:]]
    assert len(means) == math.ceil(len(losses) / 4)
    assert means[0] == pytest.approx(sum(losses[:4]) / 4, rel=1e-5)


@pytest.mark.slow
def test_the_gpu_check_runs_what_the_cpu_can_and_skips_the_rest() -> None:
    command = ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"]
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    _, *lines, last = result.stdout.splitlines()
    shown = {line.split()[1].rstrip(":"): line for line in lines}  # "<status> <name>: ..."
    ran = {"steps", "every_method", "coco_heads", "retinanet_boxes", "compile", "ddp"}
    cuda = {"fp16_loss_scale", "no_host_sync", "sync_batch_norm", "end_to_end", "kill_and_resume", "bench"}
    skipped = {*cuda, "torchrun"}
    statuses = {name: line.split()[0] for name, line in shown.items()}
    assert statuses == {**dict.fromkeys(ran, "PASS"), **dict.fromkeys(skipped, "SKIP")}
    assert "shapes_inst/bf16" in shown["steps"] and "needs 2 CUDA devices" in shown["torchrun"]
    assert last.startswith("gpu_check: 6 passed, 0 failed, 7 skipped in ")


# ---------------------------------------------------------------------------------------------
# GPU-ready defaults


def test_the_optimiser_fuses_its_update_when_asked() -> None:
    model = nn.Linear(4, 2)
    assert build_optimizer(model, 1e-3, 0.05, fused=True).param_groups[0]["fused"] is True
    assert not build_optimizer(model, 1e-3, 0.05).param_groups[0]["fused"]
