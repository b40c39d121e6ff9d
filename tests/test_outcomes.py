"""Per-sample outcomes: what a run stores beside its record so that its metrics can be recomputed on
any resampling of the test images (intervals, paired tests) without evaluating it again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SMOKE, records, run_cli
from sklearn.metrics import jaccard_score
from test_detection import as_tensors, hand_case
from test_instance import CASE, _pycocotools_ap, _torch_case
from torchmetrics.classification import MulticlassAccuracy

from peft_bench.engine.distributed import ShardSampler
from peft_bench.metrics.accuracy import ClassificationEvaluator, accuracy_scores
from peft_bench.metrics.coco import InstanceEvaluator, instance_scores
from peft_bench.metrics.miou import SegmentationEvaluator, miou_scores
from peft_bench.metrics.voc_map import VOCEvaluator, voc_map, voc_scores
from peft_bench.results.outcomes import read_outcomes, write_outcomes
from peft_bench.tasks import TASKS

CLASSES = 7


def logits_case(samples: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits, with rows of equal logits (a zero-initialised head's) where ties decide."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(samples, CLASSES, generator=generator)
    logits[::5] = 0.0
    return logits, torch.randint(0, CLASSES, (samples,), generator=generator)


def test_classification_outcomes_are_torchmetrics_hits_per_image() -> None:
    logits, labels = logits_case()
    evaluator = ClassificationEvaluator(CLASSES)
    evaluator.update(logits[:10], labels[:10])  # over two batches, as the trainer feeds it
    evaluator.update(logits[10:], labels[10:])
    outcomes = evaluator.outcomes()
    for name, k in (("top1", 1), ("top5", 5)):
        one_by_one = [
            MulticlassAccuracy(CLASSES, top_k=k, average="micro")(logits[i : i + 1], labels[i : i + 1]).item()
            for i in range(len(labels))
        ]
        assert outcomes[name].tolist() == [hit == 1.0 for hit in one_by_one]
        overall = 100 * MulticlassAccuracy(CLASSES, top_k=k, average="micro")(logits, labels).item()
        assert evaluator.compute()[name] == pytest.approx(overall, abs=1e-4)
    assert 0 < outcomes["top1"].sum() < outcomes["top5"].sum() < len(labels)  # a case that tells


def test_scores_over_a_resample_count_every_drawn_image() -> None:
    outcomes = {"top1": np.array([True, False, False, True]), "top5": np.array([True, True, False, True])}
    assert accuracy_scores(outcomes) == {"top1": 50.0, "top5": 75.0}
    drawn = np.array([0, 0, 0, 2])  # image 0 three times, image 2 once
    assert accuracy_scores(outcomes, drawn) == {"top1": 75.0, "top5": 75.0}


def _sharded_worker(rank: int, world_size: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        logits, labels = logits_case()
        evaluator = ClassificationEvaluator(CLASSES)
        shard = list(ShardSampler(len(labels), rank, world_size))
        for start in range(0, len(shard), 4):  # batches of the rank's shard, as its loader gives them
            batch = shard[start : start + 4]
            evaluator.update(logits[batch], labels[batch])
        metrics, outcomes = evaluator.compute(), evaluator.outcomes()
        stored = None if outcomes is None else {k: v.tolist() for k, v in outcomes.items()}
        Path(f"{out}.{rank}").write_text(json.dumps({"metrics": metrics, "outcomes": stored}))
    finally:
        dist.destroy_process_group()


def test_outcomes_of_uneven_shards_come_back_in_the_dataset_order(tmp_path: Path) -> None:
    args = (3, str(tmp_path / "store"), str(tmp_path / "out"))
    mp.start_processes(_sharded_worker, args=args, nprocs=3, start_method="fork")  # 23 images: 8, 8, 7
    evaluator = ClassificationEvaluator(CLASSES)
    evaluator.update(*logits_case())
    expected = {k: v.tolist() for k, v in evaluator.outcomes().items()}
    results = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in range(3)]
    assert results[0]["outcomes"] == expected
    assert results[1]["outcomes"] is None and results[2]["outcomes"] is None  # rank 0 holds them
    for result in results:
        assert result["metrics"] == pytest.approx(evaluator.compute(), abs=1e-12)


def test_stored_outcomes_round_trip_and_a_run_without_them_has_none(tmp_path: Path) -> None:
    assert read_outcomes(tmp_path) is None
    outcomes = {"top1": np.array([True, False]), "counts": np.arange(6, dtype=np.int64).reshape(2, 3)}
    path = write_outcomes(tmp_path, outcomes)
    back = read_outcomes(tmp_path)
    assert path.name == "outcomes.npz" and list(back) == ["top1", "counts"]
    assert all(back[k].dtype == v.dtype and np.array_equal(back[k], v) for k, v in outcomes.items())


def test_a_run_stores_outcomes_that_reproduce_its_metrics(results_dir: Path) -> None:
    done = run_cli(*SMOKE, "method=bitfit", results_dir=results_dir)
    assert done.returncode == 0, done.stderr
    [record] = records(results_dir)
    directory = results_dir / "runs" / record["run_id"]
    outcomes = read_outcomes(directory)
    stored = directory / "outcomes.npz"
    assert record["outcomes"] == {"file": stored.name, "bytes": stored.stat().st_size}
    assert {name: len(hits) for name, hits in outcomes.items()} == {"top1": 64, "top5": 64}
    assert record["split_sizes"]["test"] == 64
    assert TASKS["classification"].score(outcomes, None) == record["metrics"]  # exactly


def test_segmentation_outcomes_resample_whole_images() -> None:
    """Drawing image 0 twice and image 1 once scores as the three label maps put side by side."""
    rng = np.random.default_rng(0)
    maps = [(rng.integers(0, 4, (6, 5)), rng.integers(0, 4, (6, 5))) for _ in range(2)]  # (label, prediction)
    maps[1][0][0] = 255  # an ignored row
    evaluator = SegmentationEvaluator(num_classes=4)
    for label, prediction in maps:
        logits = torch.nn.functional.one_hot(torch.from_numpy(prediction), 4).permute(2, 0, 1).float()
        evaluator.update([logits], [torch.from_numpy(label)])
    outcomes = evaluator.outcomes()
    drawn = [0, 0, 1]
    labels = np.concatenate([maps[i][0].ravel() for i in drawn])
    predictions = np.concatenate([maps[i][1].ravel() for i in drawn])
    valid = labels != 255
    expected = 100 * jaccard_score(labels[valid], predictions[valid], average="macro")
    assert miou_scores(outcomes, np.array(drawn))["miou"] == pytest.approx(expected)
    assert miou_scores(outcomes) == evaluator.compute()
    assert miou_scores(outcomes, np.array(drawn)) != miou_scores(outcomes)


def test_detection_outcomes_score_a_resample_as_its_images_side_by_side() -> None:
    """The hand-worked VOC case (tests/test_detection.py): image 1 alone has class 1's d4 (TP), d5 and
    d6 (FP) against two positives, so AP = 6/11 at 11 points; drawing image 0 twice and image 1
    once scores as those three images evaluated together."""
    detections, ground_truths = hand_case()
    evaluator = VOCEvaluator(num_classes=3)
    for det, gt in zip(detections, ground_truths, strict=True):
        evaluator.update(*as_tensors(det, gt))
    outcomes = evaluator.outcomes()
    assert voc_scores(outcomes) == evaluator.compute()
    assert voc_scores(outcomes, np.array([1])) == {"ap50": pytest.approx(600 / 11)}
    drawn = (0, 0, 1)
    together, _ = voc_map([detections[i] for i in drawn], [ground_truths[i] for i in drawn], [1, 2, 3])
    assert voc_scores(outcomes, np.array(drawn)) == {"ap50": pytest.approx(100 * together)}
    assert together != pytest.approx(3 / 11)  # the duplicate changes the score


def test_instance_outcomes_score_a_resample_as_pycocotools_scores_its_images_side_by_side() -> None:
    """tests/test_instance.py's case: drawing image 0 twice and image 2 once scores as pycocotools
    evaluating those three images together, boxes and masks."""
    evaluator = InstanceEvaluator()
    evaluator.update(*_torch_case(CASE))
    outcomes = evaluator.outcomes()
    assert instance_scores(outcomes) == evaluator.compute()
    drawn = [CASE[i] for i in (0, 0, 2)]
    expected = {"ap_box": _pycocotools_ap(drawn, "bbox"), "ap_mask": _pycocotools_ap(drawn, "segm")}
    assert instance_scores(outcomes, np.array([0, 0, 2])) == pytest.approx(expected, abs=1e-9)
    assert expected != pytest.approx(evaluator.compute())


def test_detection_outcomes_stored_in_image_order_score_the_same() -> None:
    """Outcomes are stored ranked (by class, then score); files stored earlier, in image order, are
    ranked when scored, to the same AP for the whole split and any resample (VOC and COCO)."""
    detections, ground_truths = hand_case()
    evaluator = VOCEvaluator(num_classes=3)
    for det, gt in zip(detections, ground_truths, strict=True):
        evaluator.update(*as_tensors(det, gt))
    coco = InstanceEvaluator()
    coco.update(*_torch_case(CASE))
    drawn = np.array([1, 0, 1])
    for outcomes, score, prefix in (
        (evaluator.outcomes(), voc_scores, ""),
        (coco.outcomes(), instance_scores, "box."),
    ):
        # image-major as files were stored before; classes descending, so that they are out of order
        order = np.lexsort((-outcomes[f"{prefix}class_index"], outcomes[f"{prefix}image"]))
        rows = len(order)
        by_image = {
            name: values[order]
            if name.startswith(prefix) and len(values) == rows and "positives" not in name
            else values
            for name, values in outcomes.items()
        }
        assert np.any(np.diff(by_image[f"{prefix}class_index"]) < 0)  # really out of class order
        assert score(by_image) == score(outcomes)
        assert score(by_image, drawn) == score(outcomes, drawn)
