"""The checks a CPU cannot make, in one script for a GPU machine (about ten minutes on one GPU).

    bash scripts/gpu_check.sh            # on a CUDA machine
    bash scripts/gpu_check.sh --dry-run  # on the CPU: the checks that can run there, the rest skipped

One line per check: PASS, FAIL (with why) or SKIP (with why); the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose
from torch.utils.data import DataLoader, default_collate
from torchvision.models.detection.image_list import ImageList

from peft_bench.builder import build_data, build_task_model, task_of
from peft_bench.config import Precision
from peft_bench.delta import backbone_fingerprint, load_delta
from peft_bench.engine.distributed import DistInfo
from peft_bench.engine.precision import DTYPES, autocast, grad_scaler, native_bf16
from peft_bench.engine.trainer import Trainer, to_device
from peft_bench.plugins import config_session
from peft_bench.results.store import run_dir

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = ("shapes", "shapes_det", "shapes_inst", "shapes_seg")  # one dataset per task
TINY = ["data.train_size=32", "data.val_size=8", "data.test_size=8", "trainer.progress=false"]


class Skip(Exception):
    """The check cannot run here; the message says why."""


def precisions(device: torch.device) -> list[Precision]:
    if device.type != "cuda":
        return [Precision.fp32, Precision.bf16]
    return [Precision.fp32, *([Precision.bf16] if native_bf16(device) else []), Precision.fp16]


def compose_tiny(dataset: str, *overrides: str):
    with config_session():
        return compose("config", [f"dataset={dataset}", "method=mona", *TINY, *overrides])


def one_step(dataset: str, device: torch.device, precision: Precision) -> str:
    """A training step: a finite loss, gradients on exactly the trainable tensors."""
    cfg = compose_tiny(dataset, "data.batch_size=2")
    data = build_data(cfg)
    torch.manual_seed(0)
    model = build_task_model(cfg, data.num_classes, pretrained=False).to(device).train()
    images, targets = (data.collate_fn or default_collate)([data.train[0], data.train[1]])
    images, targets = to_device(images, device), to_device(targets, device)
    with autocast(device, precision)():
        loss = model(images, targets)
    grad_scaler(device, precision).scale(loss).backward()
    assert torch.isfinite(loss), f"loss {loss.item()}"
    wrong = [n for n, p in model.named_parameters() if (p.grad is None) == p.requires_grad]
    assert not wrong, f"gradients where none should be, or none where they should: {wrong[:3]}"
    return f"loss {loss.item():.3f}"


def check_steps(device: torch.device) -> str:
    results = []
    for dataset in EMBEDDED:
        for precision in precisions(device):
            results.append(f"{dataset}/{precision.value}: {one_step(dataset, device, precision)}")
    return "; ".join(results)


def check_retinanet_boxes(device: torch.device) -> str:
    """Under each lower precision, RetinaNet's anchors and decoded boxes within 0.5 px of fp32's."""
    height, width = (512, 1024) if device.type == "cuda" else (128, 256)  # the CPU's bf16 is slow
    cfg = compose_tiny("shapes_det", f"head.min_size=[{height}]", f"head.max_size={width}")
    torch.manual_seed(0)
    detector = build_task_model(cfg, 10, pretrained=False).to(device).eval().detector
    images = torch.rand(1, 3, height, width, device=device)
    batch = ImageList(images, [(height, width)])
    shown = []
    with torch.no_grad():
        features = list(detector.backbone(images).values())
        deltas = detector.head(features)["bbox_regression"][0]
        anchors = detector.anchor_generator(batch, features)[0]
        reference = detector.box_coder.decode_single(deltas, anchors)
        for precision in precisions(device)[1:]:
            with torch.autocast(device.type, dtype=DTYPES[precision]):
                low = list(detector.backbone(images).values())
                low_anchors = detector.anchor_generator(batch, low)[0]
                boxes = detector.box_coder.decode_single(
                    detector.head(low)["bbox_regression"][0], low_anchors
                )
            error = (boxes - reference).abs().max().item()
            assert low_anchors.dtype == boxes.dtype == torch.float32, f"{precision.value}: not fp32"
            assert error < 0.5, f"{precision.value}: boxes {error:.2f} px from fp32's"
            shown.append(f"{precision.value} {error:.3f} px")
    return ", ".join(shown)


def cli(*arguments: str, env: dict[str, str] | None = None, module: str = "peft_bench") -> subprocess.Popen:
    command = [sys.executable, "-m", module, *arguments]
    return subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finished(process: subprocess.Popen, what: str) -> None:
    _, stderr = process.communicate()
    assert process.returncode == 0, f"{what} exited {process.returncode}: {stderr.decode()[-500:]}"


def the_record(results: Path) -> dict:
    [path] = (results / "runs").glob("*/metrics.json")
    return json.loads(path.read_text())


def needs_cuda(device: torch.device, count: int = 1) -> None:
    if device.type != "cuda" or torch.cuda.device_count() < count:
        raise Skip(f"needs {count} CUDA device{'s' if count > 1 else ''}")


def check_end_to_end(device: torch.device) -> str:
    """Each embedded task trained and evaluated on CUDA with DataLoader workers."""
    needs_cuda(device)
    shown = []
    for dataset in EMBEDDED:
        with tempfile.TemporaryDirectory() as results:
            overrides = ["trainer.epochs=1", "data.num_workers=2", "trainer.device=cuda"]
            finished(cli(f"dataset={dataset}", *TINY, *overrides, f"paths.results_dir={results}"), dataset)
            record = the_record(Path(results))
            assert record["status"] == "completed", record.get("error")
            shown.append(f"{dataset} {record['precision']} {json.dumps(record['metrics'])}")
    return "; ".join(shown)


def check_kill_and_resume(device: torch.device) -> str:
    """SIGKILL after the first epoch's checkpoint; resumed (on another visible device if there are
    two), the run ends with the uninterrupted run's metrics."""
    needs_cuda(device)
    overrides = [
        "experiment=smoke",
        "method=full",
        "trainer.epochs=4",
        "data.train_size=1024",
        "trainer.device=cuda",
    ]
    elsewhere = {"CUDA_VISIBLE_DEVICES": "1"} if torch.cuda.device_count() > 1 else {}
    with tempfile.TemporaryDirectory() as reference, tempfile.TemporaryDirectory() as results:
        finished(cli(*overrides, f"paths.results_dir={reference}"), "the reference run")
        expected = the_record(Path(reference))
        process = cli(*overrides, f"paths.results_dir={results}")
        checkpoint = Path(results) / "runs" / expected["run_id"] / "checkpoints" / "last.pt"
        deadline = time.time() + 600
        while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        finished(cli(*overrides, f"paths.results_dir={results}", env=elsewhere), "the resumed run")
        record = the_record(Path(results))
    assert record["metrics"] == expected["metrics"], f"{record['metrics']} != {expected['metrics']}"
    return f"resumed{' with CUDA_VISIBLE_DEVICES=1' if elsewhere else ''} to {record['metrics']}"


def check_bench(device: torch.device) -> str:
    """The bench on CUDA: one candidate on the GPU at a time; Fixed's peak well under Full's."""
    needs_cuda(device)
    with tempfile.TemporaryDirectory() as results:
        out = Path(results) / "bench.csv"
        bench = ["--device", "cuda", "--methods", "full,fixed,mona", "--repeats", "5", "--out", str(out)]
        finished(cli(*bench, module="peft_bench.bench"), "the bench")
        peaks = {row["method"]: float(row["peak_mem_mb"]) for row in csv.DictReader(out.open())}
    assert peaks["fixed"] < 0.6 * peaks["full"], f"Fixed {peaks['fixed']} MB vs Full {peaks['full']} MB"
    return ", ".join(f"{method} {peak:.0f} MB" for method, peak in peaks.items())


def check_fp16_loss_scale(device: torch.device) -> str:
    """fp16 training with its dynamic loss scale: the scale moves, skipped steps are counted."""
    needs_cuda(device)
    with tempfile.TemporaryDirectory() as results:
        overrides = ["experiment=smoke", "method=full", "trainer.precision=fp16", "trainer.device=cuda"]
        finished(cli(*overrides, f"paths.results_dir={results}"), "the fp16 run")
        record = the_record(Path(results))
        history = list(csv.DictReader((run_dir(results, record["run_id"]) / "history.csv").open()))
    scales = sorted({float(row["loss_scale"]) for row in history})
    assert len(scales) > 1, f"the loss scale never moved from {scales}"
    return f"scales {scales[0]:g}-{scales[-1]:g}, {record['skipped_steps']} skipped steps"


def check_compile(device: torch.device) -> str:
    """`trainer.compile=true` (inductor) on CUDA: the compiled steps' losses follow eager's (LoRA, which
    has no dropout, so both draw nothing; within autocast's rounding)."""
    needs_cuda(device)
    overrides = ["experiment=smoke", "method=lora", "trainer.max_steps=6", "trainer.device=cuda"]
    losses = {}
    for name, extra in (("eager", []), ("compiled", ["trainer.compile=true"])):
        with tempfile.TemporaryDirectory() as results:
            finished(cli(*overrides, *extra, f"paths.results_dir={results}"), f"the {name} run")
            record = the_record(Path(results))
            history = csv.DictReader((run_dir(results, record["run_id"]) / "history.csv").open())
            losses[name] = [float(row["loss"]) for row in history]
    pairs = list(zip(losses["compiled"], losses["eager"], strict=True))
    worst = max(abs(compiled - eager) / abs(eager) for compiled, eager in pairs)
    assert worst < 0.02, f"compiled losses {losses['compiled']} against eager's {losses['eager']}"
    return f"{len(pairs)} steps, largest relative difference {worst:.2g}"


def evaluate_delta(cfg, results: str, record: dict, device: torch.device) -> dict[str, float]:
    """The test metrics of the run's saved delta, evaluated by one process."""
    data = build_data(cfg)
    fingerprints: list[str] = []
    model = build_task_model(
        cfg, data.num_classes, on_base=lambda b: fingerprints.append(backbone_fingerprint(b))
    )
    load_delta(run_dir(results, record["run_id"]) / "model.safetensors", model, fingerprints[0])
    trainer = Trainer(cfg.trainer, cfg.data, DistInfo(0, 1, device), Path(results) / "unused")
    loader = DataLoader(data.test, batch_size=cfg.data.eval_batch_size, collate_fn=data.collate_fn)
    return trainer.evaluate(model.to(device), loader, task_of(cfg).build_evaluator(data, device))


def check_torchrun(device: torch.device) -> str:
    """Two GPUs under torchrun (SyncBN on segmentation, the gathered COCO evaluation on instance):
    one record, whose metrics one GPU gets again from the saved delta."""
    needs_cuda(device, 2)
    shown = []
    for dataset in ("shapes_seg", "shapes_inst"):
        extra = ["trainer.epochs=1", "data.eval_batch_size=1", "data.batch_size=4"]
        overrides = [f"dataset={dataset}", "method=mona", *TINY, *extra, "trainer.device=cuda"]
        with tempfile.TemporaryDirectory() as results:
            torchrun = ["torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "peft_bench"]
            command = [sys.executable, "-m", *torchrun, *overrides, f"paths.results_dir={results}"]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-500:]
            record = the_record(Path(results))
            assert record["batch"]["world_size"] == 2, record["batch"]
            cfg = compose_tiny(dataset, *extra, "trainer.device=cuda")
            again = evaluate_delta(cfg, results, record, device)
        for metric, value in record["metrics"].items():
            assert abs(again[metric] - value) < 1e-6, (
                f"{dataset} {metric}: {value} (2 GPUs) vs {again[metric]}"
            )
        shown.append(f"{dataset} {json.dumps(record['metrics'])}")
    return "; ".join(shown)


CHECKS: dict[str, Callable[[torch.device], str]] = {
    "a training step of every task under each precision": check_steps,
    "RetinaNet's anchors and boxes in fp32 under autocast": check_retinanet_boxes,
    "each embedded task end to end on CUDA with workers": check_end_to_end,
    "kill -9 and resume": check_kill_and_resume,
    "the CUDA bench": check_bench,
    "fp16 with a changing loss scale": check_fp16_loss_scale,
    "torch.compile (inductor) against eager": check_compile,
    "torchrun on two GPUs against one GPU's evaluation of the delta": check_torchrun,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: what can run there")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    print(f"gpu_check on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'the CPU'}")
    failed = 0
    for name, check in CHECKS.items():
        started = time.time()
        try:
            detail, status = check(device), "PASS"
        except Skip as reason:
            detail, status = str(reason), "SKIP"
        except Exception as error:  # a check's failure must not stop the others
            detail, status = f"{type(error).__name__}: {error}", "FAIL"
            failed += 1
            traceback.print_exc(file=sys.stderr)
        print(f"{status} {name} ({time.time() - started:.0f} s): {detail}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
