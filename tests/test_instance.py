"""Instance segmentation: the COCO metric against pycocotools (and across DDP ranks), the cascade
stages, the COCO loader on a fixture in the real on-disk layout, training steps of both heads and of
every method, and a CLI run on the fixture."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import records, run_cli
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torchvision.ops import MultiScaleRoIAlign

from peft_bench.accounting import trainable_manifest
from peft_bench.backbones.swin import build_swin
from peft_bench.builder import build_data
from peft_bench.config import Config, DataConfig, MaskRCNNHeadConfig
from peft_bench.data.coco import CropBranch
from peft_bench.data.embedded import build_scene_instance_data
from peft_bench.data.scenes import tight_boxes
from peft_bench.data.targets import RandomFlip, crop_instances, resize_instances
from peft_bench.errors import UserError
from peft_bench.methods import METHODS
from peft_bench.metrics.coco import InstanceEvaluator
from peft_bench.models.cascade import (
    STAGE_BOX_WEIGHTS,
    BoxPredictor,
    CascadeRoIHeads,
    CascadeStage,
    mmdet_stages,
)
from peft_bench.models.mask_rcnn import InstanceSegmentationModel, ProposalBudget
from peft_bench.results.outcomes import read_outcomes
from peft_bench.tasks import TASKS


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test, restored after: on the shared 2-core machine, two threads that
    wait on each other make a step of these tiny models a hundred times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# The metric: torchmetrics through the evaluator against a direct pycocotools COCOeval.

SIDE = 40


def _rect(x0: int, y0: int, x1: int, y1: int, notch: bool = False) -> np.ndarray:
    """A (SIDE, SIDE) bool mask of the pixels x0..x1-1, y0..y1-1, optionally without its top-left
    quarter (so that masks and boxes disagree)."""
    mask = np.zeros((SIDE, SIDE), dtype=bool)
    mask[y0:y1, x0:x1] = True
    if notch:
        mask[y0 : (y0 + y1) // 2, x0 : (x0 + x1) // 2] = False
    return mask


# Per image: ground truth (box, label, mask, crowd) and detections (box, label, mask, score). The
# case has a false positive above a true positive, a detection on a crowd (ignored), a box that
# matches only at low IoU thresholds, and a class absent from one image.
CASE = [
    {
        "truth": [
            ((5, 5, 20, 20), 1, _rect(5, 5, 20, 20, notch=True), 0),
            ((22, 22, 38, 38), 2, _rect(22, 22, 38, 38), 0),
            ((0, 25, 15, 40), 1, _rect(0, 25, 15, 40), 1),
        ],
        "detections": [
            ((6, 5, 21, 20), 1, _rect(6, 5, 21, 20, notch=True), 0.9),
            ((1, 27, 12, 38), 1, _rect(1, 27, 12, 38), 0.8),
            ((22, 22, 30, 30), 2, _rect(22, 22, 30, 30), 0.7),
            ((23, 22, 38, 35), 2, _rect(23, 22, 38, 35), 0.6),
        ],
    },
    {
        "truth": [((10, 10, 30, 25), 1, _rect(10, 10, 30, 25), 0)],
        "detections": [
            ((10, 12, 30, 28), 1, _rect(10, 12, 30, 28), 0.5),
            ((0, 0, 10, 10), 2, _rect(0, 0, 10, 10), 0.95),
        ],
    },
    {
        "truth": [((2, 2, 12, 30), 2, _rect(2, 2, 12, 30, notch=True), 0)],
        "detections": [((3, 2, 12, 26), 2, _rect(3, 2, 12, 26, notch=True), 0.85)],
    },
]


def _torch_case(images: list[dict]) -> tuple[list[dict], list[dict]]:
    """The case as the model and the data loader give it: mask probabilities (N, 1, H, W) for the
    detections, uint8 masks and `iscrowd` for the ground truth."""
    predictions, targets = [], []
    for image in images:
        boxes, labels, masks, scores = zip(*image["detections"], strict=True)
        probs = torch.from_numpy(np.stack(masks)).float()[:, None] * 0.8 + 0.1
        predictions.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor(labels),
                "scores": torch.tensor(scores),
                "masks": probs,
            }
        )
        boxes, labels, masks, crowd = zip(*image["truth"], strict=True)
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor(labels),
                "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)),
                "iscrowd": torch.tensor(crowd),
            }
        )
    return predictions, targets


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _pycocotools_ap(images: list[dict], iou_type: str) -> float:
    """COCO mAP@[.5:.95] in percent, from COCO json dicts evaluated by pycocotools directly."""
    annotations, results = [], []
    for image_id, image in enumerate(images):
        for box, label, mask, crowd in image["truth"]:
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(mask.sum()) if iou_type == "segm" else float((x1 - x0) * (y1 - y0)),
                    "iscrowd": crowd,
                    "segmentation": _rle(mask),
                }
            )
        for box, label, mask, score in image["detections"]:
            x0, y0, x1, y1 = box
            shape = (
                {"bbox": [x0, y0, x1 - x0, y1 - y0]} if iou_type == "bbox" else {"segmentation": _rle(mask)}
            )
            results.append({"image_id": image_id, "category_id": label, "score": score, **shape})
    truth = COCO()
    truth.dataset = {
        "images": [{"id": i, "height": SIDE, "width": SIDE} for i in range(len(images))],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": annotations,
    }
    truth.createIndex()
    evaluation = COCOeval(truth, truth.loadRes(results), iou_type)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return 100.0 * evaluation.stats[0]


def test_metrics_equal_a_direct_pycocotools_evaluation() -> None:
    evaluator = InstanceEvaluator()
    predictions, targets = _torch_case(CASE)
    evaluator.update(predictions[:2], targets[:2])  # over two batches, as the trainer feeds it
    evaluator.update(predictions[2:], targets[2:])
    metrics = evaluator.compute()
    expected = {"ap_box": _pycocotools_ap(CASE, "bbox"), "ap_mask": _pycocotools_ap(CASE, "segm")}
    assert 10 < expected["ap_box"] < 90 and 10 < expected["ap_mask"] < 90  # a case that tells
    assert expected["ap_box"] != pytest.approx(expected["ap_mask"])
    assert metrics == pytest.approx(expected, abs=1e-6)
    evaluator.reset()
    evaluator.update(predictions[:1], targets[:1])
    assert evaluator.compute() != pytest.approx(metrics)


def _sync_worker(rank: int, world_size: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        evaluator = InstanceEvaluator()
        predictions, targets = _torch_case(CASE)
        for i in range(rank, len(CASE), world_size):  # the trainer's ShardSampler: 2 images and 1
            evaluator.update(predictions[i : i + 1], targets[i : i + 1])
        Path(f"{out}.{rank}").write_text(json.dumps(evaluator.compute()))
    finally:
        dist.destroy_process_group()


def test_metrics_gather_uneven_shards_across_ranks(tmp_path: Path) -> None:
    args = (2, str(tmp_path / "store"), str(tmp_path / "out"))
    mp.start_processes(_sync_worker, args=args, nprocs=2, start_method="fork")  # fork: no re-imports
    evaluator = InstanceEvaluator()
    evaluator.update(*_torch_case(CASE))
    expected = evaluator.compute()
    for rank in range(2):
        assert json.loads((tmp_path / f"out.{rank}").read_text()) == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# The cascade, with hand-made stages whose outputs are known.


class ConstantPredictor(BoxPredictor):
    """Class logits and an agnostic box delta, the same for every RoI (a `BoxPredictor` without its
    layers, for its class-agnostic `deltas_of` and `per_class`)."""

    def __init__(self, logits: list[float], delta: list[float]) -> None:
        nn.Module.__init__(self)
        self.class_specific = False
        self.logits = nn.Parameter(torch.tensor(logits))
        self.delta = nn.Parameter(torch.tensor(delta))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        return self.logits.expand(n, -1), self.delta.expand(n, -1)


class ConstantMask(nn.Module):
    def __init__(self, value: float, num_classes: int) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], self.num_classes, 28, 28)


class RecordingPool(MultiScaleRoIAlign):
    """torchvision's RoI pooling that records the RoIs of each call."""

    def __init__(self) -> None:
        super().__init__(["0"], 7, 2)
        self.calls: list[list[torch.Tensor]] = []

    def forward(self, x, boxes, image_shapes):
        self.calls.append([b.detach().clone() for b in boxes])
        return super().forward(x, boxes, image_shapes)


IMAGE = (100, 100)
GT_BOX = torch.tensor([[20.0, 20.0, 60.0, 60.0]])
DELTAS = ([1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.5, 0.0])  # per stage, encoded
LOGITS = ([0.0, 2.0, 0.0], [1.0, 0.0, 3.0], [0.5, 1.0, -1.0])  # per stage: background, class 1, 2
MASK_LOGITS = (0.0, 2.0, -1.0)


def _constant_heads(uniform_logits: bool = False) -> CascadeRoIHeads:
    stages = [
        CascadeStage(
            nn.Flatten(),
            ConstantPredictor([0.0, 0.0, 0.0] if uniform_logits else logits, delta),
            iou,
            weights,
            loss_weight,
            nn.Identity(),
            ConstantMask(mask, 3),
        )
        for logits, delta, iou, weights, loss_weight, mask in zip(
            LOGITS, DELTAS, (0.5, 0.6, 0.7), STAGE_BOX_WEIGHTS, (1.0, 0.5, 0.25), MASK_LOGITS, strict=True
        )
    ]
    return CascadeRoIHeads(RecordingPool(), stages, MultiScaleRoIAlign(["0"], 14, 2), score_thresh=0.0)


def _decode(weights: tuple[float, ...], delta: list[float], boxes: torch.Tensor) -> torch.Tensor:
    """Box decoding written out: centre shift by dx * w / wx, size scaled by exp(dw / ww)."""
    (wx, wy, ww, wh), (dx, dy, dw, dh) = weights, delta
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + w / 2 + dx / wx * w, boxes[:, 1] + h / 2 + dy / wy * h
    w, h = w * math.exp(dw / ww), h * math.exp(dh / wh)
    decoded = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    return decoded.clamp(0, IMAGE[0])


def _iou_box(iou: float) -> torch.Tensor:
    """A box shifted right from GT_BOX by as much as gives `iou` with it (same size)."""
    side = 40.0
    shift = side * (1 - iou) / (1 + iou)
    return GT_BOX + torch.tensor([shift, 0.0, shift, 0.0])


def test_stages_use_their_own_iou_threshold_and_box_coding() -> None:
    stages = mmdet_stages(channels=8, num_classes=3)
    assert [s.matcher.high_threshold for s in stages] == [0.5, 0.6, 0.7]
    assert [s.matcher.low_threshold for s in stages] == [0.5, 0.6, 0.7]
    assert [s.loss_weight for s in stages] == [1.0, 0.5, 0.25]
    assert [s.box_coder.weights for s in stages] == [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    heads = CascadeRoIHeads(MultiScaleRoIAlign(["0"], 7, 2), stages, batch_size_per_image=512)
    proposals = [torch.cat([_iou_box(0.55), _iou_box(0.65), _iou_box(0.75)])]
    targets = [{"boxes": GT_BOX, "labels": torch.tensor([2])}]
    positives, regression = [], []
    for stage in heads.stages:
        rois, _, labels, targets_, _, from_gt = heads.sample(stage, proposals, targets)
        order = rois[0][:, 0].argsort()  # the sampler shuffles: GT box first, then by shift
        assert from_gt[0][order].tolist() == [True, False, False, False]
        positives.append(labels[0][order].tolist())
        regression.append(targets_[0][order])
    assert positives == [[2, 2, 2, 2], [2, 2, 2, 0], [2, 2, 0, 0]]  # GT, IoU .75, .65, .55
    torch.testing.assert_close(regression[1], 2 * regression[0])
    torch.testing.assert_close(regression[2], 3 * regression[0])


def test_training_stages_sample_the_refined_boxes_of_the_previous_stage() -> None:
    heads = _constant_heads(uniform_logits=True).train()
    features = {"0": torch.randn(1, 4, 25, 25)}
    proposals = [torch.cat([_iou_box(0.55), _iou_box(0.8), torch.tensor([[70.0, 70.0, 95.0, 90.0]])])]
    targets = [
        {"boxes": GT_BOX, "labels": torch.tensor([1]), "masks": torch.zeros(1, *IMAGE, dtype=torch.uint8)}
    ]
    _, losses = heads(features, proposals, [IMAGE], targets)
    pool = heads.box_roi_pool
    assert len(pool.calls) == 3

    def rows(boxes: torch.Tensor) -> list[list[float]]:
        return sorted(boxes.round(decimals=4).tolist())

    expected = proposals[0]
    for stage, call in enumerate(pool.calls):
        assert rows(call[0]) == rows(torch.cat([expected, GT_BOX]))  # every candidate was sampled
        refined = _decode(STAGE_BOX_WEIGHTS[stage], DELTAS[stage], call[0])
        expected = refined[~(call[0] == GT_BOX).all(dim=1)]  # without the GT box it was given
    # Uniform logits: every stage's classification loss is log(3), times its stage weight.
    for stage, weight in enumerate((1.0, 0.5, 0.25)):
        assert losses[f"s{stage}.loss_classifier"].item() == pytest.approx(weight * math.log(3))
        assert f"s{stage}.loss_box_reg" in losses and f"s{stage}.loss_mask" in losses


def test_inference_averages_stage_logits_and_decodes_through_every_stage() -> None:
    heads = _constant_heads().eval()
    features = {"0": torch.randn(1, 4, 25, 25)}
    proposal = torch.tensor([[10.0, 20.0, 50.0, 44.0]])
    [result], _ = heads(features, [proposal], [IMAGE])
    boxes = proposal
    for weights, delta in zip(STAGE_BOX_WEIGHTS, DELTAS, strict=True):
        boxes = _decode(weights, delta, boxes)
    probabilities = torch.tensor(LOGITS).mean(0).softmax(0)
    assert sorted(result["labels"].tolist()) == [1, 2]
    for label in (1, 2):
        kept = result["labels"] == label
        assert result["scores"][kept].item() == pytest.approx(probabilities[label].item())
        torch.testing.assert_close(result["boxes"][kept], boxes)
    mask = torch.tensor(MASK_LOGITS).sigmoid().mean()
    assert result["masks"].shape == (2, 1, 28, 28)
    torch.testing.assert_close(result["masks"], mask.expand(2, 1, 28, 28))


# ---------------------------------------------------------------------------------------------
# The COCO loader on a fixture in the real layout.

H, W = 48, 64
CATEGORIES = [(1, "person"), (3, "car"), (90, "toothbrush")]  # ids with gaps, as COCO's


def _mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths of the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    bounds = [0, *(np.flatnonzero(np.diff(flat)) + 1).tolist(), len(flat)]
    counts = np.diff(bounds).tolist()
    return {"counts": ([0] if flat[0] else []) + counts, "size": [H, W]}


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = _rle(mask)
    return {"counts": rle["counts"].decode("ascii"), "size": rle["size"]}


CROWD = _mask(0, 30, 16, 46)
RLE_OBJECT = _mask(20, 10, 45, 30)
# (image id, category id, segmentation, bbox xywh, iscrowd) per split
ANNOTATIONS = {
    "train2017": [
        (1, 3, [[8, 6, 30, 6, 30, 26, 8, 26]], [8, 6, 22, 20], 0),
        (1, 1, [[40, 10, 60, 10, 50, 40]], [40, 10, 20, 30], 0),
        (2, 90, _compressed_rle(RLE_OBJECT), [20, 10, 25, 20], 0),
        (2, 1, _uncompressed_rle(CROWD), [0, 30, 16, 16], 1),
        (3, 3, [[5, 5, 25, 5, 25, 40, 5, 40]], [5, 5, 20, 35], 0),
        (3, 1, [[50, 2, 50.5, 2, 50.5, 12]], [50, 2, 0.5, 10], 0),  # thinner than a pixel
    ],
    "val2017": [
        (11, 1, [[10, 10, 40, 10, 40, 30, 10, 30]], [10, 10, 30, 20], 0),
        (11, 1, _uncompressed_rle(CROWD), [0, 30, 16, 16], 1),
        (12, 90, [[30, 5, 60, 5, 60, 45, 30, 45]], [30, 5, 30, 40], 0),
    ],
}
IMAGE_IDS = {"train2017": [1, 2, 3, 4], "val2017": [11, 12]}  # image 4 has no object


def _write_coco(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    for split, ids in IMAGE_IDS.items():
        (root / split).mkdir()
        images = []
        for image_id in ids:
            name = f"{image_id:012d}.jpg"
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / split / name)
            images.append({"id": image_id, "file_name": name, "height": H, "width": W})
        annotations = [
            {
                "id": 100 * image_id + i,
                "image_id": image_id,
                "category_id": category,
                "segmentation": segmentation,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "iscrowd": crowd,
            }
            for i, (image_id, category, segmentation, bbox, crowd) in enumerate(ANNOTATIONS[split])
        ]
        categories = [{"id": i, "name": n, "supercategory": "thing"} for i, n in CATEGORIES]
        document = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    _write_coco(root)
    return root


def _config(**data) -> Config:
    return Config(
        data=DataConfig(**{"name": "coco", "task": "instance", **data}),
        head=MaskRCNNHeadConfig(name="cascade_mask_rcnn"),
    )


def _by_id(dataset, image_id: int) -> tuple[torch.Tensor, dict]:
    return dataset[dataset.image_ids.index(image_id)]


def test_coco_loader_reads_polygons_rle_and_crowds_in_the_real_layout(coco_root: Path) -> None:
    data = build_data(_config(root=str(coco_root), selection_split="test"))
    assert (data.num_classes, data.class_names) == (3, ["person", "car", "toothbrush"])
    assert data.val is data.test and "val2017" in data.selection
    assert data.train.image_ids == [1, 2, 3]  # image 4 has no object to train on
    assert data.test.image_ids == [11, 12]
    data.train.transform = None  # the random flip is checked below

    image, target = _by_id(data.train, 1)
    assert image.shape == (3, H, W) and image.dtype == torch.float32 and 0 <= image.min() < image.max() <= 1
    assert target["labels"].tolist() == [2, 1]  # car (id 3) is label 2, person (id 1) label 1
    torch.testing.assert_close(target["boxes"], torch.tensor([[8.0, 6, 30, 26], [40, 10, 60, 40]]))
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, H, W)
    polygon_boxes = torch.from_numpy(tight_boxes(target["masks"].numpy().astype(bool)))
    # Rasterised polygons fill their boxes, but for the triangle's apex, thinner than a pixel.
    assert (polygon_boxes - target["boxes"]).abs().max() <= 2
    assert target["masks"][0].sum() == pytest.approx(22 * 20, rel=0.15)

    _, target = _by_id(data.train, 2)  # the RLE object, without the crowd
    assert target["labels"].tolist() == [3] and "iscrowd" not in target
    assert np.array_equal(target["masks"][0].numpy(), RLE_OBJECT)
    _, target = _by_id(data.train, 3)  # the sub-pixel object is dropped from training
    assert target["labels"].tolist() == [2]

    _, target = _by_id(data.test, 11)  # evaluation keeps the crowd, flagged
    assert target["iscrowd"].tolist() == [0, 1] and target["labels"].tolist() == [1, 1]
    assert np.array_equal(target["masks"][1].numpy(), CROWD)

    images, targets = data.collate_fn([data.test[0], data.test[1]])
    assert [i.shape for i in images] == [(3, H, W)] * 2 and [len(t["labels"]) for t in targets] == [2, 1]


def test_coco_holds_out_part_of_train2017_for_validation(coco_root: Path) -> None:
    cfg = _config(root=str(coco_root), val_fraction=0.25, split_seed=3)
    data = build_data(cfg)
    assert len(data.val) == 1 and "25%" in data.selection
    assert not set(data.val.image_ids) & set(data.train.image_ids)
    assert set(data.val.image_ids) | set(data.train.image_ids) | {4} == {1, 2, 3, 4}
    assert data.test.image_ids == [11, 12]
    again = build_data(cfg)
    assert again.val.image_ids == data.val.image_ids


def test_flip_moves_boxes_with_their_masks() -> None:
    data = build_scene_instance_data(
        DataConfig(name="shapes_inst", train_size=1, val_size=1, test_size=2), 64
    )
    image, target = data.test[1]  # evaluation splits are not flipped
    flipped, moved = RandomFlip(p=1.0)(image, target)
    assert torch.equal(flipped, image.flip(-1)) and torch.equal(moved["masks"], target["masks"].flip(-1))
    assert torch.equal(moved["labels"], target["labels"])
    boxes_of_masks = torch.from_numpy(tight_boxes(moved["masks"].numpy().astype(bool)))
    torch.testing.assert_close(moved["boxes"], boxes_of_masks)
    kept, same = RandomFlip(p=0.0)(image, target)
    assert torch.equal(kept, image) and torch.equal(same["boxes"], target["boxes"])


def _agree(target: dict, tolerance: float) -> None:
    """Every box is the tight box of its mask (within `tolerance` px), and no box lacks area."""
    boxes_of_masks = torch.from_numpy(tight_boxes(target["masks"].numpy().astype(bool)))
    torch.testing.assert_close(target["boxes"], boxes_of_masks, rtol=0, atol=tolerance)
    assert len(target["labels"]) == len(target["boxes"]) == len(target["masks"])
    assert ((target["boxes"][:, 2:] - target["boxes"][:, :2]) > 0).all()


def test_coco_crop_branch_keeps_boxes_and_masks_together() -> None:
    """Resize then crop: boxes stay the tight boxes of their masks, instances cut out are dropped,
    instances cut through keep the part inside."""
    image = torch.rand(3, 300, 500)
    masks = torch.zeros(3, 300, 500, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate([(10, 20, 110, 120), (200, 50, 480, 290), (460, 10, 495, 40)]):
        masks[i, y0:y1, x0:x1] = 1
    target = {
        "boxes": torch.from_numpy(tight_boxes(masks.numpy().astype(bool))),
        "labels": torch.tensor([1, 2, 3]),
        "masks": masks,
    }
    resized_image, resized = resize_instances(image, target, short_side=600, max_long_side=1333)
    assert resized_image.shape[-2:] == (600, 1000) and resized["masks"].shape[-2:] == (600, 1000)
    _agree(resized, tolerance=1.0)  # nearest-resized masks against scaled boxes
    cropped_image, cropped = crop_instances(resized_image, resized, top=100, left=100, height=400, width=500)
    assert torch.equal(cropped_image, resized_image[:, 100:500, 100:600])
    assert cropped["labels"].tolist() == [1, 2]  # the third object lies right of the window
    # x2: the first object (20, 40, 220, 240) cut at the window's top-left corner, the second
    # (400, 100, 960, 580) at its bottom-right
    assert cropped["boxes"].tolist() == [[0.0, 0.0, 120.0, 140.0], [300.0, 0.0, 500.0, 400.0]]
    _agree(cropped, tolerance=1.0)
    torch.manual_seed(0)
    for _ in range(5):  # the branch itself: a 400-600 short side, then a 384-600 px window
        branch_image, branched = CropBranch(p=1.0)(image, target)
        assert all(384 <= side <= 600 for side in branch_image.shape[-2:])
        assert branched["masks"].shape[-2:] == branch_image.shape[-2:]
        _agree(branched, tolerance=1.0)


def test_missing_coco_names_the_path_and_the_layout(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        build_data(_config(root=str(tmp_path / "nowhere")))
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "annotations" / "instances_train2017.json") in message
    assert "val2017" in message and "data.root" in message
    with pytest.raises(UserError, match="selection_split"):
        build_data(_config(root=str(tmp_path), selection_split="train"))


# ---------------------------------------------------------------------------------------------
# Training steps with swin_micro: tiny images, tiny proposal budgets.

TINY = ProposalBudget(rpn_pre_nms=(64, 64), rpn_post_nms=(32, 32), roi_samples=32, detections=10)


def _head(name: str) -> MaskRCNNHeadConfig:
    return MaskRCNNHeadConfig(
        name=name, fpn_channels=16, anchor_sizes=[8, 16, 32, 64, 128], min_size=[64], max_size=64
    )


def _model(name: str = "cascade_mask_rcnn", method: str = "full", **head: Any) -> InstanceSegmentationModel:
    """The detector `name` with `method` on swin_micro, its head as `_head`'s with `head`'s fields."""
    swin = build_swin("swin_micro", dynamic_size=True)
    swin.use_output_norms()
    METHODS[method](METHODS[method].config_class(name=method)).apply(swin)
    config = dataclasses.replace(_head(name), **head)
    return InstanceSegmentationModel(swin, 10, config, TINY, cascade=name == "cascade_mask_rcnn")


@pytest.fixture(scope="module")
def scenes() -> tuple[list[torch.Tensor], list[dict]]:
    data = build_scene_instance_data(
        DataConfig(name="shapes_inst", train_size=2, val_size=1, test_size=1), 64
    )
    return data.collate_fn([data.train[0], data.train[1]])


def _transformed(model: InstanceSegmentationModel, images: list[torch.Tensor]) -> tuple:
    """The RPN's inputs: the resized image batch and its FPN features."""
    batch, _ = model.detector.transform(images)
    return batch, model.detector.backbone(batch.tensors)


@pytest.mark.parametrize("name", ["mask_rcnn", "cascade_mask_rcnn"])
def test_training_step_and_prediction(name: str, scenes) -> None:
    torch.manual_seed(0)
    model = _model(name)
    images, targets = scenes
    torch.manual_seed(1)  # the same proposal sampling for both calls
    losses = model.detector(images, targets)
    if name == "cascade_mask_rcnn":
        parts = ("loss_classifier", "loss_box_reg", "loss_mask")
        assert {f"s{s}.{k}" for s in range(3) for k in parts} <= set(losses)
    else:
        assert "loss_mask" in losses
    torch.manual_seed(1)
    loss = model(images, targets)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(
        sum(v.item() for v in losses.values()), rel=1e-4
    )
    loss.backward()
    assert all(p.grad is not None for p in model.neck.parameters())
    manifest = trainable_manifest(model, model.backbone, model.neck)  # the paper's grouping
    assert all(n.startswith("detector.backbone.body.backbone.") for n in manifest["backbone"])
    assert all(n.startswith("detector.backbone.fpn.") for n in manifest["neck"]) and manifest["neck"]
    assert all(n.startswith(("detector.rpn.", "detector.roi_heads.")) for n in manifest["head"])
    model.eval()
    with torch.no_grad():
        predictions = model.predict(images)
    assert len(predictions) == 2
    for prediction in predictions:
        n = len(prediction["boxes"])
        assert n <= TINY.detections and prediction["masks"].shape == (n, 1, 64, 64)
        assert prediction["scores"].shape == prediction["labels"].shape == (n,)
    # Under bfloat16 autocast, boxes are still decoded in float32 (bfloat16 rounds coordinates).
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        proposals, _ = model.detector.rpn(*_transformed(model, images))
        predictions = model.predict(images)
    assert all(p.dtype == torch.float32 for p in proposals)
    assert all(p["boxes"].dtype == torch.float32 for p in predictions)


@pytest.mark.parametrize("name", ["mask_rcnn", "cascade_mask_rcnn"])
def test_box_heads_are_as_wide_as_head_box_fc_channels(name: str, scenes) -> None:
    model = _model(name, box_fc_channels=24)
    heads = model.detector.roi_heads
    stages = heads.stages if name == "cascade_mask_rcnn" else [heads]
    for stage in stages:
        assert (stage.box_head.fc6.in_features, stage.box_head.fc6.out_features) == (16 * 7 * 7, 24)
        assert stage.box_head.fc7.out_features == stage.box_predictor.cls_score.in_features == 24
    assert torch.isfinite(model(*scenes))
    with pytest.raises(UserError, match=r"box_fc_channels .* at least 1, got 0"):
        _model(name, box_fc_channels=0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_training_step_of_each_method_on_the_cascade(method: str, scenes) -> None:
    torch.manual_seed(0)
    model = _model(method=method)
    images, targets = scenes
    loss = model(images, targets)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    trains = [p for p in model.backbone.parameters() if p.requires_grad]
    assert bool(trains) == (method != "fixed")
    assert any(p.grad.abs().sum() > 0 for p in trains) or method == "fixed"


# ---------------------------------------------------------------------------------------------
# End to end through the command line.


def test_cli_run_on_the_coco_fixture_records_box_and_mask_ap(coco_root: Path, tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    result = run_cli(
        "dataset=coco",
        "protocol=harness",  # the harness's held-out val split on a paper dataset
        f"data.root={coco_root}",
        "backbone=swin_micro",
        "backbone.weights=none",
        "method=mona",
        "trainer.epochs=2",
        "trainer.max_steps=2",
        "trainer.progress=false",
        "trainer.threads=1",
        "data.batch_size=2",
        "data.eval_batch_size=2",
        "data.val_fraction=0.25",
        "head.min_size=[64]",
        "head.max_size=64",
        "head.fpn_channels=16",
        results_dir=results_dir,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [record] = records(results_dir)
    assert record["status"] == "completed" and record["task"] == "instance" and record["steps"] == 2
    assert set(record["metrics"]) == {"ap_box", "ap_mask"}
    assert all(0.0 <= v <= 100.0 for v in record["metrics"].values())
    assert record["best"]["metric"] == "ap_mask" and "held out" in record["best"]["split"]
    assert 0 < record["params"]["backbone_trainable"] < record["params"]["backbone_total"]
    outcomes = read_outcomes(results_dir / "runs" / record["run_id"])  # per test image and category
    assert {name: len(values) for name, values in outcomes.items() if name.endswith("positives")} == {
        "box.positives": record["split_sizes"]["test"],
        "mask.positives": record["split_sizes"]["test"],
    }
    assert TASKS["instance"].score(outcomes, None) == record["metrics"]  # exactly
