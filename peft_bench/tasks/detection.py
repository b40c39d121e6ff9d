"""Object detection: torchvision's RetinaNet on a Swin + FPN, evaluated by VOC mAP at IoU 0.5.

The neck follows the paper's reference mmdet config for VOC: an FPN over Swin stages 1-3 (strides 8,
16, 32; widths 2m, 4m, 8m) with 5 outputs, P6 computed from C5 and P7 from P6 (mmdet's
`add_extra_convs='on_input'`), with a ReLU before P7 as torchvision's or none as mmdet's default
(`head.relu_before_extra_convs`). The head is torchvision's RetinaNet, whose settings match mmdet's
RetinaNet: 3 scales x 3 ratios of anchors per level, IoU 0.5 / 0.4 assignment, focal + L1 losses;
at test, score > 0.05, the top 1000 per level, NMS at 0.5, at most 100 detections per image.

Labels. Datasets give labels 1..K (0 is torchvision's background id). torchvision's RetinaNet has no
background class: its sigmoid classifier has `num_classes` outputs, and a box of label l trains
output l. It is built with K outputs, as mmdet's (`num_classes=20` for VOC), and labels are shifted
by one on the way in and out, so that no output is wasted on a background that never occurs.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from peft_bench.backbones.swin import SwinBackbone
from peft_bench.config import Config, DataConfig, HeadConfig
from peft_bench.data.base import collate_lists
from peft_bench.data.embedded import scene_task_data
from peft_bench.data.scenes import DOWNSTREAM_CLASSES, SceneDetection, SceneGenerator
from peft_bench.data.targets import RandomFlip, Target
from peft_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from peft_bench.data.voc import build_voc_data
from peft_bench.errors import UserError
from peft_bench.metrics.voc_map import Detections, GroundTruth, voc_map
from peft_bench.tasks.base import Task, TaskData, TaskModel
from peft_bench.tasks.pyramid import PyramidBackbone

FPN_STAGES = (1, 2, 3)
RATIOS = (0.5, 1.0, 2.0)


class ExtraLevelsOnInput(LastLevelP6P7):
    """P6 from C5 and P7 from P6, as mmdet's `add_extra_convs='on_input'`: C5 even where its width
    equals the FPN's (torchvision then takes P5), and a ReLU before P7 only if `relu` (mmdet's
    `relu_before_extra_convs`, false by default; torchvision's always has it)."""

    def __init__(self, in_channels: int, out_channels: int, relu: bool) -> None:
        super().__init__(in_channels, out_channels)
        self.use_P5 = False
        self.relu = relu

    def forward(
        self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]
    ) -> tuple[list[torch.Tensor], list[str]]:
        p6 = self.p6(c[-1])
        p7 = self.p7(F.relu(p6) if self.relu else p6)
        return [*p, p6, p7], [*names, "p6", "p7"]


class SwinFPN(nn.Module):
    """Swin stages -> FPN with P6/P7 from C5: the `backbone` of a torchvision detector."""

    def __init__(
        self,
        swin: SwinBackbone,
        channels: int,
        stages: tuple[int, ...] = FPN_STAGES,
        relu_before_extra_convs: bool = True,
    ) -> None:
        super().__init__()
        self.body = PyramidBackbone(swin, stages)
        extra = ExtraLevelsOnInput(self.body.in_channels[-1], channels, relu_before_extra_convs)
        self.fpn = FeaturePyramidNetwork(self.body.in_channels, channels, extra_blocks=extra)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(images))


def anchor_generator(base_sizes: list[int]) -> AnchorGenerator:
    """Anchors of sizes base * 2^(0, 1/3, 2/3) and ratios 0.5, 1, 2 per level, as torchvision's default
    (base sizes 32-512) and mmdet's (octave_base_scale 4, 3 scales per octave) are."""
    sizes = tuple(tuple(int(s * 2 ** (k / 3)) for k in range(3)) for s in base_sizes)
    return AnchorGenerator(sizes, (RATIOS,) * len(sizes))


class RetinaNetModel(TaskModel):
    """The detector; `backbone` and `neck` are views into it (the Swin and the FPN)."""

    def __init__(self, swin: SwinBackbone, num_classes: int, head: HeadConfig) -> None:
        super().__init__()
        if head.anchor_sizes is not None and len(head.anchor_sizes) != len(FPN_STAGES) + 2:
            raise UserError(
                f"head.anchor_sizes needs one base size per FPN level ({len(FPN_STAGES) + 2}: P3-P7), "
                f"got {list(head.anchor_sizes)}."
            )
        self.detector = RetinaNet(
            SwinFPN(swin, head.fpn_channels, relu_before_extra_convs=head.relu_before_extra_convs),
            num_classes=num_classes,
            min_size=tuple(head.min_size),
            max_size=head.max_size,
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
            anchor_generator=anchor_generator(list(head.anchor_sizes)) if head.anchor_sizes else None,
            detections_per_img=100,
        )
        # The reference Swin (out_indices=(1, 2, 3)) has no stage-0 output norm. Ours exists but
        # feeds nothing: trainable, it would get no gradient, which stalls DDP's gradient reduction.
        for stage in set(range(len(swin.stage_dims))) - set(FPN_STAGES):
            swin.output_norms[stage].requires_grad_(False)

    @property
    def backbone(self) -> SwinBackbone:
        return self.detector.backbone.body.swin

    @property
    def neck(self) -> nn.Module:
        return self.detector.backbone.fpn

    def forward(self, images: list[torch.Tensor], targets: list[Target]) -> torch.Tensor:
        """The sum of the focal classification and L1 box-regression losses."""
        shifted = [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets]
        return sum(self.detector(images, shifted).values())

    def predict(self, images: list[torch.Tensor]) -> list[Target]:
        """Per image: `boxes` (N, 4) xyxy in input pixels, `scores` (N,), `labels` (N,) in 1..K."""
        return [{**d, "labels": d["labels"] + 1} for d in self.detector(images)]


def _gather(items: list) -> list:
    """Every rank's items, in rank order, when torch.distributed is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return items
    parts: list[list | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


class VOCEvaluator:
    """`ap50`: VOC mAP at IoU 0.5 in percent (11-point by default), over the images of all ranks.
    Targets without `difficult` flags (the embedded scenes) have no difficult object."""

    def __init__(self, num_classes: int, mode: str = "11points") -> None:
        self.labels = range(1, num_classes + 1)
        self.mode = mode
        self.reset()

    def reset(self) -> None:
        self.detections: list[Detections] = []
        self.ground_truths: list[GroundTruth] = []

    def update(self, predictions: list[Target], targets: list[Target]) -> None:
        for prediction, target in zip(predictions, targets, strict=True):
            boxes, scores, labels = (_np(prediction[k]) for k in ("boxes", "scores", "labels"))
            self.detections.append(Detections(boxes, scores, labels))
            difficult = target.get("difficult", torch.zeros_like(target["labels"], dtype=torch.bool))
            self.ground_truths.append(
                GroundTruth(_np(target["boxes"]), _np(target["labels"]), _np(difficult))
            )

    def compute(self) -> dict[str, float]:
        mean, _ = voc_map(_gather(self.detections), _gather(self.ground_truths), self.labels, 0.5, self.mode)
        return {"ap50": 100.0 * mean}


def _np(tensor: torch.Tensor) -> np.ndarray:
    """On the CPU, floats as float32 (AMP may hand over half-precision boxes and scores)."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.is_floating_point() else tensor).numpy()


class SceneBoxes:
    """The detection view of a scene: its boxes and labels (masks dropped), flipped at random in training."""

    def __init__(self, train: bool) -> None:
        self.flip = RandomFlip(0.5) if train else None

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        boxes = {"boxes": target["boxes"], "labels": target["labels"]}
        return self.flip(image, boxes) if self.flip else (image, boxes)


def build_scene_detection_data(cfg: DataConfig, image_size: int) -> TaskData:
    """The embedded scenes' boxes over the ten downstream shape classes, generated at `image_size`."""
    generator = SceneGenerator(DOWNSTREAM_CLASSES, img_size=image_size, seed=cfg.split_seed)
    transforms = {
        "train": SceneBoxes(train=True),
        "val": SceneBoxes(train=False),
        "test": SceneBoxes(train=False),
    }
    return scene_task_data(cfg, SceneDetection, generator, transforms, (2000, 300, 500), collate_lists)


class DetectionTask(Task):
    name: ClassVar[str] = "detection"
    main_metric: ClassVar[str] = "ap50"
    dense: ClassVar[bool] = True

    def build_data(self, cfg: Config) -> TaskData:
        if cfg.data.name == "voc":
            return build_voc_data(cfg.data)
        if cfg.data.name == "shapes_det":
            return build_scene_detection_data(cfg.data, cfg.data.image_size or min(cfg.head.min_size))
        raise UserError(
            f"Unknown detection dataset {cfg.data.name!r} (data.name). Known datasets: shapes_det, voc."
        )

    def build_model(self, backbone: SwinBackbone, data: TaskData, cfg: Config) -> RetinaNetModel:
        if cfg.head.name != "retinanet":
            raise UserError(
                f"The detection task has the head 'retinanet' only, got head.name={cfg.head.name!r}."
            )
        return RetinaNetModel(backbone, data.num_classes, cfg.head)

    def build_evaluator(self, data: TaskData, device: torch.device) -> VOCEvaluator:
        return VOCEvaluator(data.num_classes)
