"""The Mona COCO config's Cascade box heads (4 convs + 1 FC with BN, class-specific deltas, GIoU x10
on decoded boxes), mmcv's RoIAlign and mmdet's RPN assignment: shapes counted from the config, the
loss and the decoding on hand-made cases, and a training step and a prediction of the detector."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align

from peft_bench.backbones.swin import build_swin
from peft_bench.config import BoxHead, MaskRCNNHeadConfig
from peft_bench.models.cascade import (
    STAGE_BOX_WEIGHTS,
    ConvFCBoxHead,
    MmcvRoIAlign,
    mmdet_mask_loss,
    mmdet_mask_targets,
    mmdet_stages,
    refinement_classes,
)
from peft_bench.models.mask_rcnn import InstanceSegmentationModel, ProposalBudget
from peft_bench.models.rpn import MmdetRPN

COCO_CLASSES = 80


def test_each_stage_has_the_configs_shapes() -> None:
    """`ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1, conv_out_channels=256,
    fc_out_channels=1024, roi_feat_size=7, num_classes=80, reg_class_agnostic=False)` with SyncBN."""
    convs = 4 * 256 * 256 * 9 + 4 * 2 * 256  # 3x3 convs without bias (a norm follows), BN weight + bias
    fc = 256 * 7 * 7 * 1024 + 1024
    cls = 1024 * (COCO_CLASSES + 1) + (COCO_CLASSES + 1)  # background included
    reg = 1024 * 4 * COCO_CLASSES + 4 * COCO_CLASSES  # class-specific: 4 per object class
    for stage in mmdet_stages(256, COCO_CLASSES + 1, masks=False, box_head=BoxHead.convfc):
        assert sum(p.numel() for p in stage.box_head.parameters()) == convs + fc
        assert sum(p.numel() for p in stage.box_predictor.parameters()) == cls + reg
        assert isinstance(stage.box_head, ConvFCBoxHead) and stage.giou_loss_weight == 10.0
    assert [s.box_coder.weights for s in mmdet_stages(256, 81, masks=False)] == list(STAGE_BOX_WEIGHTS)


def _giou(a: list[float], b: list[float]) -> float:
    """GIoU of two xyxy boxes, by hand."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_giou_loss_on_decoded_boxes_of_each_rois_class() -> None:
    """Four sampled RoIs, one positive of class 2 whose class-2 deltas are zero (its box is the RoI)
    and whose other classes' deltas are not: loss = 10 x (1 - GIoU) / 4 sampled RoIs."""
    stage = mmdet_stages(8, 4, masks=False, box_head=BoxHead.convfc)[0]
    rois = [
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0], [1.0, 1.0, 5.0, 5.0], [0, 0, 3, 3]])
    ]
    labels = [torch.tensor([2, 0, 0, 0])]
    matched = [torch.tensor([[5.0, 5.0, 15.0, 15.0]] * 4)]
    deltas = torch.full((4, 4 * 3), 0.7)
    deltas[0, 4:8] = 0.0  # class 2's columns (classes 1..3 at 0-3, 4-7, 8-11)
    logits = torch.zeros(4, 4)
    loss_cls, loss_box = stage.box_losses(logits, deltas, rois, labels, [torch.zeros(4, 4)], matched)
    expected = 10.0 * (1.0 - _giou([0, 0, 10, 10], [5, 5, 15, 15])) / 4
    assert loss_box.item() == pytest.approx(expected, rel=1e-5)
    assert loss_cls.item() == pytest.approx(math.log(4))  # uniform logits over 4 classes


def test_class_specific_deltas_and_refinement_classes() -> None:
    predictor = mmdet_stages(8, 4, masks=False, box_head=BoxHead.convfc)[0].box_predictor
    deltas = torch.arange(2 * 12, dtype=torch.float32).reshape(2, 12)
    picked = predictor.deltas_of(deltas, torch.tensor([3, 1]))
    assert picked.tolist() == [deltas[0, 8:12].tolist(), deltas[1, 0:4].tolist()]
    layout = predictor.per_class(deltas, 4)  # torchvision's: background first
    assert layout.shape == (2, 16) and not layout[:, :4].any() and torch.equal(layout[:, 4:], deltas)
    logits = torch.tensor([[9.0, 1.0, 5.0, 2.0], [0.0, 3.0, 1.0, 2.0]])
    assert refinement_classes(logits).tolist() == [2, 1]  # the arg-max over the object classes
    assert refinement_classes(logits, torch.tensor([3, 0])).tolist() == [3, 1]  # a label wins


def test_mmcv_roi_align_pools_each_box_from_its_level_with_aligned_sampling() -> None:
    torch.manual_seed(0)
    strides = (4, 8, 16, 32)
    features = {str(i): torch.randn(2, 3, 128 // s, 128 // s) for i, s in enumerate(strides)}
    boxes = [
        torch.tensor([[0.0, 0.0, 40.0, 40.0], [3.0, 5.0, 123.0, 120.0]]),
        torch.tensor([[10.0, 12.0, 20.0, 30.0]]),
    ]
    pool = MmcvRoIAlign(list(features), 7, strides)
    pooled = pool(features, boxes, [(128, 128)] * 2)
    # sqrt(area) 40 and 13.4 -> level 0; 117.5 -> floor(log2(117.5 / 56)) = 1
    for index, (image, box, level) in enumerate(
        [(0, boxes[0][0], 0), (0, boxes[0][1], 1), (1, boxes[1][0], 0)]
    ):
        roi = torch.cat([torch.tensor([float(image)]), box])[None]
        direct = roi_align(features[str(level)], roi, 7, 1 / strides[level], sampling_ratio=0, aligned=True)
        torch.testing.assert_close(pooled[index], direct[0])
    rois = torch.tensor([[0, 0, 0, 130.0, 130.0], [0, 0, 0, 300.0, 300.0], [0, 0, 0, 500.0, 500.0]])
    assert pool.levels(rois).tolist() == [1, 2, 3]  # floor(log2(s / 56)): 1.2, 2.4, 3.2


def test_mmcv_roi_align_pools_at_float32_rois_under_bf16_autocast() -> None:
    """Near 800 px bf16 has a 4 px grid (8 px above 1024): under bf16 autocast each box is pooled
    at its exact corners (torchvision's op in float32 on the same bf16 maps, outside autocast),
    within the bf16 rounding of the output, and far from the pooling at bf16-rounded corners. bf16
    maps pool alike without autocast (torchvision's CPU kernel has no bf16)."""
    strides = (4, 8, 16, 32)
    generator = torch.Generator().manual_seed(0)
    shapes = {str(i): (1, 4, 1344 // s, 1344 // s) for i, s in enumerate(strides)}
    maps = {name: torch.randn(shape, generator=generator).bfloat16() for name, shape in shapes.items()}
    boxes = torch.tensor(  # sqrt(area) 60, 130, 250, 500: levels 0, 1, 2, 3
        [
            [801.37, 803.61, 861.37, 863.61],
            [805.13, 809.77, 935.13, 939.77],
            [811.29, 802.45, 1061.29, 1052.45],
            [817.53, 806.91, 1317.53, 1306.91],
        ]
    )
    pool = MmcvRoIAlign(list(maps), 7, strides)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = pool(maps, [boxes], [(1344, 1344)])
    assert pooled.dtype == torch.bfloat16
    assert torch.equal(pool(maps, [boxes], [(1344, 1344)]), pooled)
    rois = torch.cat([torch.zeros(4, 1), boxes], dim=1)

    def at(corners: torch.Tensor) -> torch.Tensor:
        """Box i pooled from level i at `corners`, in float32."""
        return torch.cat(
            [
                roi_align(maps[str(i)].float(), corners[i : i + 1], 7, 1 / s, sampling_ratio=0, aligned=True)
                for i, s in enumerate(strides)
            ]
        )

    exact = at(rois)
    torch.testing.assert_close(pooled.float(), exact, rtol=2**-8, atol=1e-6)
    assert (at(rois.bfloat16().float()) - exact).abs().max() > 0.1


def test_the_convfc_cascade_trains_and_predicts() -> None:
    torch.manual_seed(0)
    swin = build_swin("swin_micro", dynamic_size=True)
    swin.use_output_norms()
    head = MaskRCNNHeadConfig(
        name="cascade_mask_rcnn",
        fpn_channels=16,
        anchor_sizes=[8, 16, 32, 64, 128],
        min_size=[64],
        max_size=64,
        box_head=BoxHead.convfc,
        mmcv_roi_align=True,
        mmdet_rpn=True,
    )
    budget = ProposalBudget(rpn_pre_nms=(64, 64), rpn_post_nms=(32, 32), roi_samples=32, detections=10)
    model = InstanceSegmentationModel(swin, 3, head, budget)
    assert isinstance(model.detector.roi_heads.box_roi_pool, MmcvRoIAlign)
    assert isinstance(model.detector.rpn, MmdetRPN) and model.detector.rpn.post_nms_top_n() == 32
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:40, 12:44] = 1
    targets = [
        {"boxes": torch.tensor([[12.0, 10.0, 44.0, 40.0]]), "labels": torch.tensor([2]), "masks": masks}
    ] * 2
    loss = model(images, targets)
    assert torch.isfinite(loss)
    loss.backward()
    for stage in model.detector.roi_heads.stages:
        assert all(p.grad is not None for p in stage.box_head.parameters())
        assert stage.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        predictions = model.predict(images)
    for prediction in predictions:
        n = len(prediction["boxes"])
        assert n <= 10 and prediction["masks"].shape == (n, 1, 64, 64)
        assert (prediction["labels"] >= 1).all()


def test_mmdet_mask_targets_are_aligned_crops_binarised_at_a_half() -> None:
    """A RoI over the whole 8x8 image, 8x8 targets: mmcv's aligned RoIAlign samples each pixel's centre,
    so the target is the mask itself, binary; torchvision's unaligned crop (its `maskrcnn_loss`) is
    shifted by half a pixel and soft at the edges."""
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:6, 1:5] = 1.0
    roi, matched = torch.tensor([[0.0, 0, 8, 8]]), torch.tensor([0])
    assert torch.equal(mmdet_mask_targets(mask, roi, matched, 8)[0], mask[0])
    soft = roi_align(mask[:, None], torch.cat([matched[:, None].float(), roi], 1), (8, 8), 1.0)[:, 0]
    assert ((soft > 0) & (soft < 1)).any()
    logits = torch.randn(1, 3, 8, 8)
    loss = mmdet_mask_loss(logits, [roi], [mask], [torch.tensor([2])], [matched])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, 2], mask[0])
    assert torch.allclose(loss, expected)
