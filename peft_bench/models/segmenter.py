"""The segmenter of the paper's ADE20K runs: UperNet and its auxiliary FCN head on the backbone's pyramid.

As mmsegmentation's `upernet_swin` config: the UperNet decoder (`peft_bench.models.upernet`) and a
classifier at stride 4; in training an auxiliary FCN head on level 2 (stride 16, 256 channels)
adds `head.aux_weight` times its loss. Each loss is mmseg's: the logits upsampled to the labels,
cross-entropy with 255 ignored, averaged over all pixels (mmseg's `avg_non_ignore=False`).

Parameter groups: `backbone` is the backbone (the paper counts it alone), `neck` the UperNet decoder
(pyramid pooling, FPN and fusion) and the pyramid's own layers if any, and the head is the
classifier plus the auxiliary head.

Inference (`head.inference`): `whole` runs the image at once; `slide` is mmseg's sliding window,
windows of `head.slide_crop` every `head.slide_stride` pixels, the last of each row and column
moved back inside the image, logits summed and divided by the number of windows over each pixel.
Images are padded (bottom-right, zeros) to a multiple of the patch size, and the logits cropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peft_bench.backbones.base import Backbone
from peft_bench.config import Config, Inference
from peft_bench.data.targets import IGNORE_INDEX
from peft_bench.engine.contract import TaskModel
from peft_bench.layers.maps import resize
from peft_bench.models.fpn import PyramidBackbone
from peft_bench.models.upernet import FCNHead, UperNetDecoder, classifier

AUX_STAGE = 2  # mmseg's in_index=2: the third level (stage), stride 16
AUX_CHANNELS = 256


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
    """The backbone through `PyramidBackbone`, the UperNet decoder and classifier, and in training the
    auxiliary FCN head. Images and labels come as lists (sizes may differ) or batched tensors."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        channels: int = 512,
        aux_weight: float = 0.4,
        inference: Inference = Inference.whole,
        slide_crop: int = 512,
        slide_stride: int = 341,
        norm_group: int | None = None,
    ) -> None:
        super().__init__()
        self.body = PyramidBackbone(backbone, (0, 1, 2, 3))
        self.decoder = UperNetDecoder(self.body.in_channels, channels, norm_group=norm_group)
        self.classifier = classifier(channels, num_classes)
        in_aux = self.body.in_channels[AUX_STAGE]
        self.aux_head = (
            FCNHead(in_aux, AUX_CHANNELS, num_classes, norm_group=norm_group) if aux_weight > 0 else None
        )
        self.aux_weight = aux_weight
        self.inference = inference
        self.slide_crop = slide_crop
        self.slide_stride = slide_stride
        self.size_divisor = backbone.size_divisor

    @property
    def backbone(self) -> Backbone:  # type: ignore[override]
        return self.body.backbone

    @property
    def neck(self) -> nn.ModuleList:  # type: ignore[override]
        return nn.ModuleList([self.body.pyramid, self.decoder])

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
        if Inference(self.inference) is Inference.slide:
            logits = slide_inference(self.logits, batch, self.slide_crop, self.slide_stride)
        else:
            logits = self.logits(batch)
        return [x[:, : image.shape[-2], : image.shape[-1]] for x, image in zip(logits, images, strict=True)]


def upernet_head(backbone: Backbone, num_classes: int, cfg: Config) -> UperNetSegmenter:
    """`head=upernet` (registered in `peft_bench.tasks`)."""
    head = cfg.head
    return UperNetSegmenter(
        backbone,
        num_classes,
        channels=head.channels,
        aux_weight=head.aux_weight,
        inference=head.inference,
        slide_crop=head.slide_crop,
        slide_stride=head.slide_stride,
        norm_group=head.norm_group,
    )
