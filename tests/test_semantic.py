"""Semantic segmentation: mIoU against sklearn, sliding windows, the ADE20K loader on a fixture in
the real layout, the UperNet model under every method, and a run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import records, run_cli
from hydra import compose
from PIL import Image
from sklearn.metrics import accuracy_score, jaccard_score, recall_score
from torch import nn

from peft_bench.accounting import trainable_manifest
from peft_bench.backbones.swin import build_swin
from peft_bench.builder import build_data, head_of, task_of
from peft_bench.config import Config, DataConfig, MethodConfig, UperNetHeadConfig
from peft_bench.data.ade20k import ADE20K_CLASSES
from peft_bench.data.base import collate_lists
from peft_bench.errors import UserError
from peft_bench.layers.ghost_norm import GhostBatchNorm2d, synchronise_batch_norms
from peft_bench.methods import METHODS
from peft_bench.metrics.miou import COUNTS, SegmentationEvaluator, image_counts, segmentation_scores
from peft_bench.models.segmenter import UperNetSegmenter, slide_inference, slide_windows
from peft_bench.plugins import config_session
from peft_bench.results.outcomes import read_outcomes
from peft_bench.tasks import TASKS

ADE_SIZE = (32, 40)  # (height, width) of the fixture images
SMALL_HEAD = ["head.min_size=[24]", "head.max_size=128", "head.channels=16", "data.image_size=32"]


# ---------------------------------------------------------------------------------------------
# mIoU


def test_scores_match_sklearn_with_ignored_pixels_and_absent_classes() -> None:
    """Classes 0-3 appear in the labels, 4 only in predictions (IoU 0, in the mean), 5 nowhere
    (no union: out of the mean); 255 pixels count nowhere."""
    rng = np.random.default_rng(0)
    totals = np.zeros((3, 6), dtype=np.int64)
    all_labels, all_preds = [], []
    for shape in [(7, 9), (5, 4), (8, 8)]:
        labels = rng.integers(0, 4, shape)
        labels[rng.random(shape) < 0.2] = 255
        preds = rng.integers(0, 5, shape)
        totals += image_counts(torch.from_numpy(preds), torch.from_numpy(labels), num_classes=6)
        valid = labels != 255
        all_labels.append(labels[valid])
        all_preds.append(preds[valid])
    labels, preds = np.concatenate(all_labels), np.concatenate(all_preds)

    result = segmentation_scores(*totals)
    present = sorted(set(labels) | set(preds))
    assert present == [0, 1, 2, 3, 4]
    assert result["miou"] == pytest.approx(
        100 * jaccard_score(labels, preds, labels=present, average="macro")
    )
    assert result["aacc"] == pytest.approx(100 * accuracy_score(labels, preds))
    assert result["macc"] == pytest.approx(
        100 * recall_score(labels, preds, labels=[0, 1, 2, 3], average="macro")
    )


def test_evaluator_resizes_logits_to_the_label_size() -> None:
    """Logits (4 x 6) choosing class 1 on the left half and 2 on the right, against an 8 x 12 label
    map: bilinear upsampling keeps the halves, so a matching label map scores 100%."""
    logits = torch.zeros(3, 4, 6)
    logits[1, :, :3] = 5.0
    logits[2, :, 3:] = 5.0
    target = torch.full((8, 12), 2)
    target[:, :6] = 1
    evaluator = SegmentationEvaluator(num_classes=3)
    evaluator.update([logits], [target])
    assert evaluator.compute() == {"miou": 100.0, "macc": 100.0, "aacc": 100.0}


# ---------------------------------------------------------------------------------------------
# Sliding windows


def test_slide_windows_are_mmsegs_clamped_grid() -> None:
    windows = [(r.start, r.stop, c.start, c.stop) for r, c in slide_windows(6, 8, crop=4, stride=3)]
    rows, cols = [(0, 4), (2, 6)], [(0, 4), (3, 7), (4, 8)]  # the last of each moved back inside
    assert windows == [(*r, *c) for r in rows for c in cols]
    assert [(r.stop, c.stop) for r, c in slide_windows(3, 2, crop=4, stride=3)] == [(3, 2)]


def test_slide_inference_averages_the_windows() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 6, 8)
    # Position-dependent: each window's logits are its first channel minus the window's mean.
    centred = lambda x: x[:, :1] - x[:, :1].mean(dim=(2, 3), keepdim=True)  # noqa: E731
    expected = np.zeros((2, 1, 6, 8))
    count = np.zeros((6, 8))
    for y0, y1 in [(0, 4), (2, 6)]:
        for x0, x1 in [(0, 4), (3, 7), (4, 8)]:
            window = images[:, :1, y0:y1, x0:x1].numpy()
            expected[..., y0:y1, x0:x1] += window - window.mean(axis=(2, 3), keepdims=True)
            count[y0:y1, x0:x1] += 1
    result = slide_inference(centred, images, crop=4, stride=3)
    np.testing.assert_allclose(result.numpy(), expected / count, rtol=1e-5, atol=1e-6)

    # A per-pixel map does not depend on the window: slide equals whole, whatever the crop.
    per_pixel = nn.Conv2d(3, 5, 1)
    with torch.no_grad():
        for crop, stride in [(4, 3), (5, 2), (16, 8)]:
            torch.testing.assert_close(slide_inference(per_pixel, images, crop, stride), per_pixel(images))


# ---------------------------------------------------------------------------------------------
# ADE20K on a fixture in the real layout


def write_ade20k(root: Path, counts: dict[str, int] | None = None) -> Path:
    """ADEChallengeData2016 with 40x32 jpg images and png label maps of values 0-150; the first
    three pixels of every map are 0 ("other"), 1 and 150."""
    rng = np.random.default_rng(0)
    folder = root / "ADEChallengeData2016"
    for split, count in (counts or {"training": 4, "validation": 2}).items():
        prefix = "train" if split == "training" else "val"
        (folder / "images" / split).mkdir(parents=True)
        (folder / "annotations" / split).mkdir(parents=True)
        for i in range(1, count + 1):
            name = f"ADE_{prefix}_{i:08d}"
            image = rng.integers(0, 256, (*ADE_SIZE, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / "images" / split / f"{name}.jpg")
            label = rng.integers(0, 151, ADE_SIZE, dtype=np.uint8)
            label[0, :3] = (0, 1, 150)
            Image.fromarray(label, mode="L").save(folder / "annotations" / split / f"{name}.png")
    return root


def ade20k_config(root: Path | None, **data) -> Config:
    return Config(
        method=MethodConfig(name="full"),
        data=DataConfig(name="ade20k", task="semantic", root=None if root is None else str(root), **data),
        head=UperNetHeadConfig(name="upernet", channels=16, min_size=[24], max_size=128),
    )


def micro_swin(method: str = "full") -> nn.Module:
    torch.manual_seed(0)
    swin = build_swin("swin_micro", dynamic_size=True)
    swin.use_output_norms()
    cls = METHODS[method]
    cls(cls.config_class(name=method)).apply(swin)
    return swin


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ade20k(tmp_path_factory.mktemp("ade20k"))


def test_ade20k_loader_splits_labels_and_transforms(ade_root: Path) -> None:
    data = build_data(ade20k_config(ade_root, image_size=32))
    assert (len(data.train), len(data.val), len(data.test)) == (3, 1, 2)
    assert data.num_classes == len(data.class_names) == len(ADE20K_CLASSES) == 150
    assert "held out" in data.selection

    image, label = data.test[0]  # resized to short side 24 (factor 0.75); the label keeps its size
    assert image.shape == (3, 24, 30) and image.dtype == torch.float32
    assert label.shape == ADE_SIZE and label.dtype == torch.int64
    raw = np.asarray(
        Image.open(ade_root / "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png")
    )
    assert label[0, :3].tolist() == [255, 0, 149]  # reduce_zero_label
    np.testing.assert_array_equal(label.numpy(), np.where(raw == 0, 255, raw.astype(np.int64) - 1))

    torch.manual_seed(0)
    for _ in range(4):  # random scales 0.5-2.0: some crops are padded, others cut
        image, label = data.train[0]
        assert image.shape == (3, 32, 32) and label.shape == (32, 32)
        assert set(label.unique().tolist()) <= set(range(150)) | {255}

    reference = build_data(ade20k_config(ade_root, selection_split="test"))
    assert reference.val is reference.test and len(reference.train) == 4


def test_ade20k_training_step_and_prediction(ade_root: Path) -> None:
    cfg = ade20k_config(ade_root, image_size=32)
    data = build_data(cfg)
    model = head_of(cfg).build(micro_swin(), data.num_classes, cfg)
    images, labels = collate_lists([data.train[0], data.train[1]])
    loss = model(images, labels)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()

    model.eval()
    images, labels = collate_lists([data.test[0], data.test[1]])
    with torch.no_grad():
        predictions = model.predict(images)
    assert [p.shape for p in predictions] == [(150, 24, 30)] * 2
    evaluator = task_of(cfg).build_evaluator(data, torch.device("cpu"))
    evaluator.update(predictions, labels)
    metrics = evaluator.compute()
    assert set(metrics) == {"miou", "macc", "aacc"} and 0 <= metrics["miou"] <= 100


@pytest.mark.slow
def test_run_on_the_ade20k_fixture_writes_miou(ade_root: Path, results_dir: Path) -> None:
    result = run_cli(
        "dataset=ade20k",
        f"data.root={ade_root}",
        "method=mona",
        "backbone=swin_micro",
        "trainer=ade20k_seg",
        "trainer.max_steps=2",
        "trainer.progress=false",
        "trainer.threads=1",
        "data.batch_size=2",
        "data.num_workers=0",
        "head.inference=slide",
        "head.slide_crop=16",
        "head.slide_stride=12",
        *SMALL_HEAD,
        results_dir=results_dir,
    )
    assert result.returncode == 0, result.stderr
    [record] = records(results_dir)
    assert record["status"] == "completed" and record["steps"] == 2
    assert record["task"] == "semantic" and record["best"]["metric"] == "miou"
    assert set(record["metrics"]) == {"miou", "macc", "aacc"}
    assert 0.0 <= record["metrics"]["miou"] <= 100.0
    outcomes = read_outcomes(results_dir / "runs" / record["run_id"])  # per test image, 150 classes
    shape = (record["split_sizes"]["test"], len(ADE20K_CLASSES))
    assert {name: counts.shape for name, counts in outcomes.items()} == dict.fromkeys(COUNTS, shape)
    assert TASKS["semantic"].score(outcomes, None) == record["metrics"]  # exactly


def test_missing_ade20k_names_the_path_and_the_layout(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data\.root is not set"):
        build_data(ade20k_config(None))
    with pytest.raises(
        UserError, match=r"ADEChallengeData2016/images/training does not exist.*Expected layout"
    ):
        build_data(ade20k_config(tmp_path))
    write_ade20k(tmp_path / "partial")
    (tmp_path / "partial/ADEChallengeData2016/annotations/validation/ADE_val_00000002.png").unlink()
    with pytest.raises(UserError, match=r"ADE_val_00000002\.png of ADE_val_00000002\.jpg does not exist"):
        build_data(ade20k_config(tmp_path / "partial"))


# ---------------------------------------------------------------------------------------------
# The model under every method; the embedded data


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_training_step_under_each_method(method: str) -> None:
    model = UperNetSegmenter(micro_swin(method), num_classes=5, channels=16)
    images = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 5, (2, 32, 32))
    labels[:, :4] = 255
    loss = model(images, labels)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    manifest = trainable_manifest(model, model.backbone, model.neck)
    assert set(manifest["neck"]) == {f"decoder.{n}" for n, _ in model.decoder.named_parameters()}
    assert {n.split(".")[0] for n in manifest["head"]} == {"classifier", "aux_head"}
    assert (len(manifest["backbone"]) == 0) == (method == "fixed")


def test_shapes_seg_keeps_the_background_as_a_class() -> None:
    cfg = Config(
        method=MethodConfig(name="full"),
        data=DataConfig(
            name="shapes_seg", task="semantic", train_size=4, val_size=2, test_size=2, image_size=32
        ),
        head=UperNetHeadConfig(name="upernet"),
    )
    data = build_data(cfg)
    assert data.num_classes == 11 and data.class_names[0] == "background"
    images, labels = collate_lists([data.train[i] for i in range(4)])
    assert [tuple(i.shape) for i in images] == [(3, 32, 32)] * 4
    assert all(label.max() <= 10 and (label == 0).any() for label in labels)


# ---------------------------------------------------------------------------------------------
# The head's BatchNorm per method (ADE20K: plain BN per GPU for six of the reference's configs)


def test_ghost_batch_norm_normalises_each_group_by_its_own_statistics() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    ghost, plain = GhostBatchNorm2d(3, group=2), nn.BatchNorm2d(3)
    plain.load_state_dict(ghost.state_dict())  # the same keys: checkpoints move between the two
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 2), ghost.bias.uniform_(-1, 1)
        plain.weight.copy_(ghost.weight), plain.bias.copy_(ghost.bias)
    out = ghost(x)
    first, second = (
        plain(x[:2]),
        nn.functional.batch_norm(x[2:], None, None, plain.weight, plain.bias, True, 0.0, plain.eps),
    )
    assert torch.allclose(out, torch.cat([first, second]), atol=1e-6)
    assert torch.equal(ghost.running_mean, plain.running_mean)  # the first group's, once a step
    assert torch.equal(ghost.running_var, plain.running_var) and ghost.num_batches_tracked == 1
    ghost.eval(), plain.eval()
    assert torch.equal(ghost(x), plain(x))


def test_only_plain_batch_norms_become_sync_batch_norms() -> None:
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Sequential(GhostBatchNorm2d(3, 2), nn.BatchNorm1d(2)))
    synchronise_batch_norms(model)
    assert [type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__] == [
        "SyncBatchNorm",
        "GhostBatchNorm2d",
        "SyncBatchNorm",
    ]


@pytest.mark.parametrize(
    ("method", "group"), [("lora", 2), ("normtuning", 2), ("full", None), ("mona", None)]
)
def test_ade20k_heads_normalise_as_the_references_config_of_each_method(
    method: str, group: int | None
) -> None:
    with config_session():
        cfg = compose("config", ["dataset=ade20k", f"method={method}"])
    assert cfg.head.norm_group == group
    model = UperNetSegmenter(micro_swin(), 5, channels=16, norm_group=cfg.head.norm_group)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 13 and all(isinstance(m, GhostBatchNorm2d) == (group is not None) for m in norms)
