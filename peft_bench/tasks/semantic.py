"""Semantic segmentation: the Swin's four normed stage maps, UperNet and its auxiliary FCN head; mIoU.

As mmsegmentation's `upernet_swin` config: the UperNet decoder (`peft_bench.models.upernet`) and a
classifier at stride 4; in training an auxiliary FCN head on stage 3 (stride 16, 256 channels)
adds `head.aux_weight` times its loss. Each loss is mmseg's: the logits upsampled to the labels,
cross-entropy with 255 ignored, averaged over all pixels (mmseg's `avg_non_ignore=False`).

Parameter groups: `backbone` is the Swin (the paper counts it alone), `neck` the UperNet decoder
(pyramid pooling, FPN and fusion), and the head is the classifier plus the auxiliary head.

Inference (`head.inference`): `whole` runs the image at once; `slide` is mmseg's sliding window,
windows of `head.slide_crop` every `head.slide_stride` pixels, the last of each row and column
moved back inside the image, logits summed and divided by the number of windows over each pixel.
Images are padded (bottom-right, zeros) to a multiple of the patch size, and the logits cropped.

Config: for ADE20K, `data.image_size` is the side of the training crops (None: 512) and the resize
scale is `head.max_size` (long side cap) by `head.min_size` (short side, a single value); for the
embedded `shapes_seg`, `data.image_size` is the side of the generated scenes (None: the backbone's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

from peft_bench.backbones.swin import SWIN_SPECS, SwinBackbone
from peft_bench.config import Config
from peft_bench.data.ade20k import ADE20K_CROP, FlipNormalise, build_ade20k_data
from peft_bench.data.base import TaskData, collate_lists
from peft_bench.data.embedded import scene_task_data
from peft_bench.data.scenes import DOWNSTREAM_CLASSES, SceneGenerator, SceneSegmentation
from peft_bench.errors import UserError
from peft_bench.metrics.miou import IGNORE_INDEX, SegmentationScores
from peft_bench.models.upernet import FCNHead, UperNetDecoder, classifier, resize
from peft_bench.tasks.base import Task, TaskModel
from peft_bench.tasks.pyramid import PyramidBackbone

AUX_STAGE = 2  # mmseg's in_index=2: stage 3, stride 16
AUX_CHANNELS = 256
INFERENCE_MODES = ("whole", "slide")


def pad_stack(tensors: Sequence[torch.Tensor], value: float, multiple: int = 1) -> torch.Tensor:
    """Stack maps of different sizes, padded at the bottom and right to the largest size rounded
    up to `multiple`: images with 0 (after normalisation), labels with the ignore index."""
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    height, width = height + -height % multiple, width + -width % multiple
    return torch.stack(
        [F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value) for t in tensors]
    )


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits upsampled to the labels, 255 ignored, averaged over all pixels."""
    losses = F.cross_entropy(
        resize(logits, labels.shape[-2:]), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return losses.mean()


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[slice, slice]]:
    """mmseg's sliding windows as (rows, columns) slices; a side shorter than `crop` is one window."""

    def spans(size: int) -> list[slice]:
        count = max(size - crop + stride - 1, 0) // stride + 1
        ends = [min(i * stride + crop, size) for i in range(count)]
        return [slice(max(end - crop, 0), end) for end in ends]

    return [(rows, cols) for rows in spans(height) for cols in spans(width)]


def slide_inference(
    logits_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, crop: int, stride: int
) -> torch.Tensor:
    """Logits (B, K, H, W) of `images` (B, 3, H, W), averaged over the windows covering each pixel;
    `logits_fn` maps a window to its logits at the window's size."""
    count = images.new_zeros(images.shape[-2:], dtype=torch.float32)
    total: torch.Tensor | None = None
    for rows, cols in slide_windows(*images.shape[-2:], crop, stride):
        logits = logits_fn(images[..., rows, cols])
        if total is None:
            total = logits.new_zeros((*logits.shape[:2], *images.shape[-2:]), dtype=torch.float32)
        total[..., rows, cols] += logits
        count[rows, cols] += 1
    assert total is not None  # there is always at least one window
    return total / count


class UperNetSegmenter(TaskModel):
    """The Swin through `PyramidBackbone`, the UperNet decoder and classifier, and in training the
    auxiliary FCN head. Images and labels come as lists (sizes may differ) or batched tensors."""

    def __init__(
        self,
        swin: SwinBackbone,
        num_classes: int,
        channels: int = 512,
        aux_weight: float = 0.4,
        inference: str = "whole",
        slide_crop: int = 512,
        slide_stride: int = 341,
    ) -> None:
        super().__init__()
        if inference not in INFERENCE_MODES:
            raise UserError(f"head.inference must be one of {', '.join(INFERENCE_MODES)}, got {inference!r}.")
        self.body = PyramidBackbone(swin, (0, 1, 2, 3))
        self.decoder = UperNetDecoder(self.body.in_channels, channels)
        self.classifier = classifier(channels, num_classes)
        in_aux = self.body.in_channels[AUX_STAGE]
        self.aux_head = FCNHead(in_aux, AUX_CHANNELS, num_classes) if aux_weight > 0 else None
        self.aux_weight = aux_weight
        self.inference = inference
        self.slide_crop = slide_crop
        self.slide_stride = slide_stride
        self.size_divisor = swin.patch_embed.patch_size[0]  # the Swin takes multiples of its patch

    @property
    def backbone(self) -> SwinBackbone:  # type: ignore[override]
        return self.body.swin

    @property
    def neck(self) -> UperNetDecoder:  # type: ignore[override]
        return self.decoder

    def _maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(images).values())

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Whole-image logits (B, K, H, W) at the size of `images` (B, 3, H, W)."""
        height, width = images.shape[-2:]
        padded = pad_stack(images, 0.0, self.size_divisor)
        logits = self.classifier(self.decoder(self._maps(padded)))
        return resize(logits, padded.shape[-2:])[..., :height, :width]

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        padded = pad_stack(images, 0.0, self.size_divisor)
        labels = pad_stack(targets, IGNORE_INDEX, self.size_divisor)
        maps = self._maps(padded)
        loss = segmentation_loss(self.classifier(self.decoder(maps)), labels)
        if self.aux_head is not None:
            loss = loss + self.aux_weight * segmentation_loss(self.aux_head(maps[AUX_STAGE]), labels)
        return loss

    def predict(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Logits (K, H, W) of each image at its own size."""
        batch = pad_stack(images, 0.0)
        if self.inference == "slide":
            logits = slide_inference(self.logits, batch, self.slide_crop, self.slide_stride)
        else:
            logits = self.logits(batch)
        return [x[:, : image.shape[-2], : image.shape[-1]] for x, image in zip(logits, images, strict=True)]


class SegmentationEvaluator:
    """mIoU, mAcc and aAcc over a split (`SegmentationScores`), each prediction's logits resized
    (bilinear) to its label map's original size before the argmax, as mmseg does."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.scores = SegmentationScores(num_classes).to(device)

    def reset(self) -> None:
        self.scores.reset()

    def update(self, predictions: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> None:
        for logits, target in zip(predictions, targets, strict=True):
            if logits.shape[-2:] != target.shape[-2:]:
                logits = resize(logits[None].float(), target.shape[-2:])[0]
            self.scores.update(logits.argmax(0), target)

    def compute(self) -> dict[str, float]:
        return self.scores.compute()


def build_scene_segmentation(cfg: Config) -> TaskData:
    """The embedded scenes' semantic maps: 11 classes, the background a class of its own (it is a
    real region of each scene, unlike ADE20K's "other")."""
    size = cfg.data.image_size or cfg.backbone.img_size or SWIN_SPECS[cfg.backbone.name].img_size
    generator = SceneGenerator(DOWNSTREAM_CLASSES, img_size=size, seed=cfg.data.split_seed)
    evaluation = FlipNormalise(train=False)
    transforms = {"train": FlipNormalise(train=True), "val": evaluation, "test": evaluation}
    return scene_task_data(
        cfg.data, SceneSegmentation, generator, transforms, (1000, 200, 200), collate_lists, True
    )


def build_ade20k(cfg: Config) -> TaskData:
    if len(cfg.head.min_size) != 1:
        raise UserError(
            f"ADE20K takes one head.min_size (the short side of its scale), got {cfg.head.min_size}."
        )
    scale = (cfg.head.max_size, cfg.head.min_size[0])
    return build_ade20k_data(cfg.data, scale, crop=cfg.data.image_size or ADE20K_CROP)


BUILDERS: dict[str, Callable[[Config], TaskData]] = {
    "ade20k": build_ade20k,
    "shapes_seg": build_scene_segmentation,
}


class SemanticSegmentationTask(Task):
    name: ClassVar[str] = "semantic"
    main_metric: ClassVar[str] = "miou"
    dense: ClassVar[bool] = True

    def build_data(self, cfg: Config) -> TaskData:
        if cfg.data.name not in BUILDERS:
            known = ", ".join(sorted(BUILDERS))
            raise UserError(
                f"Unknown semantic segmentation dataset {cfg.data.name!r} (data.name). Known: {known}."
            )
        return BUILDERS[cfg.data.name](cfg)

    def build_model(self, backbone: SwinBackbone, data: TaskData, cfg: Config) -> UperNetSegmenter:
        head = cfg.head
        if head.name != "upernet":
            raise UserError(f"Semantic segmentation has the head 'upernet', got head.name={head.name!r}.")
        return UperNetSegmenter(
            backbone,
            data.num_classes,
            channels=head.channels,
            aux_weight=head.aux_weight,
            inference=head.inference,
            slide_crop=head.slide_crop,
            slide_stride=head.slide_stride,
        )

    def build_evaluator(self, data: TaskData, device: torch.device) -> SegmentationEvaluator:
        return SegmentationEvaluator(data.num_classes, device)
