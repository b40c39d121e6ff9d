"""Detection: the VOC metric on a hand-worked case, the VOC0712 loader on a devkit-layout fixture, the
RetinaNet model under every method, and a run through the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SMOKE, records, run_cli
from PIL import Image
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.image_list import ImageList

from peft_bench.backbones.swin import build_swin
from peft_bench.builder import build_data, build_task_model, head_of, task_of
from peft_bench.config import BackboneConfig, Config, DataConfig, RetinaNetHeadConfig
from peft_bench.data.classification import VOC_CLASSES
from peft_bench.data.voc import VOCDetectionSplit, parse_annotation
from peft_bench.errors import UserError
from peft_bench.methods import METHODS
from peft_bench.metrics.voc_map import Detections, GroundTruth, VOCEvaluator, voc_map
from peft_bench.models.retinanet import RetinaNetModel, retinanet_fpn
from peft_bench.results.outcomes import read_outcomes
from peft_bench.tasks import TASKS


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test, restored after: on the shared 2-core machine two threads that wait
    on each other make a step of these tiny models a hundred times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# The metric, on a case worked by hand.
#
# Class 1, three positives (g1, g3, g4; g2 is difficult). Detections by descending score:
#   d1 0.9 image 0 [0,0,10,10]     IoU 1 with g1                   -> TP
#   d2 0.8 image 0 [0,0,10,10]     duplicate of d1, g1 taken       -> FP
#   d3 0.7 image 0 [20,0,30,10]    IoU 1 with the difficult g2     -> ignored (no TP, no FP)
#   d4 0.6 image 1 [0,0,10,8]      IoU 80/100 = 0.8 with g3        -> TP
#   d5 0.5 image 1 [100,100,110,110] overlaps nothing              -> FP
#   d6 0.4 image 1 [50,50,60,72]   IoU 100/220 = 0.45 with g4      -> FP
# Cumulative TP 1 1 1 2 2 2, FP 0 1 1 1 2 3: recall 1/3 1/3 1/3 2/3 2/3 2/3,
# precision 1 1/2 1/2 2/3 1/2 2/5.
# 11 points: recall >= 0, .1, .2, .3 -> max precision 1; >= .4, .5, .6 -> 2/3; >= .7 ... 1 -> 0.
#   AP = (4 * 1 + 3 * 2/3) / 11 = 6/11.
# Area: the interpolated precision is 1 up to recall 1/3, then 2/3 up to 2/3, then 0.
#   AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
# Class 2: one positive (image 0), no detection -> AP 0.
# Class 3: no ground truth, a detection on g3's box in image 1 -> left out of the mean (and no
#   effect on class 1).
# mAP = (6/11 + 0) / 2 = 3/11 (11 points), (5/9 + 0) / 2 = 5/18 (area).


def hand_case() -> tuple[list[Detections], list[GroundTruth]]:
    def arr(*rows: list[float]) -> np.ndarray:
        return np.asarray(rows, dtype=np.float32).reshape(-1, 4)

    detections = [
        Detections(
            arr([0, 0, 10, 10], [0, 0, 10, 10], [20, 0, 30, 10]),
            np.array([0.9, 0.8, 0.7]),
            np.array([1, 1, 1]),
        ),
        Detections(
            arr([0, 0, 10, 8], [100, 100, 110, 110], [50, 50, 60, 72], [0, 0, 10, 10]),
            np.array([0.6, 0.5, 0.4, 0.95]),
            np.array([1, 1, 1, 3]),
        ),
    ]
    ground_truths = [
        GroundTruth(
            arr([0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30]),
            np.array([1, 1, 2]),
            np.array([0, 1, 0], bool),
        ),
        GroundTruth(arr([0, 0, 10, 10], [50, 50, 60, 60]), np.array([1, 1]), np.array([0, 0], bool)),
    ]
    return detections, ground_truths


@pytest.mark.parametrize(("mode", "class_1", "mean"), [("11points", 6 / 11, 3 / 11), ("area", 5 / 9, 5 / 18)])
def test_voc_map_on_the_hand_worked_case(mode: str, class_1: float, mean: float) -> None:
    detections, ground_truths = hand_case()
    result, per_class = voc_map(detections, ground_truths, [1, 2, 3], 0.5, mode)
    assert per_class == pytest.approx({1: class_1, 2: 0.0})
    assert result == pytest.approx(mean)


def as_tensors(det: Detections, gt: GroundTruth) -> tuple[list[dict], list[dict]]:
    """One image of the hand-worked case as the model's prediction and the loader's target."""
    prediction = {k: torch.tensor(getattr(det, k)) for k in ("boxes", "scores", "labels")}
    target = {k: torch.tensor(getattr(gt, k)) for k in ("boxes", "labels", "difficult")}
    return [prediction], [target]


def test_evaluator_reports_percent_from_tensors() -> None:
    evaluator = VOCEvaluator(num_classes=3)
    for det, gt in zip(*hand_case(), strict=True):
        evaluator.update(*as_tensors(det, gt))
    assert evaluator.compute() == {"ap50": pytest.approx(300 / 11)}
    evaluator.reset()
    assert evaluator.compute() == {"ap50": 0.0}


def evaluate_shard(rank: int, init_file: str, out: str) -> None:
    """One of two gloo ranks: it sees image `rank` of the hand-worked case only."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        evaluator = VOCEvaluator(num_classes=3)
        evaluator.update(*as_tensors(*(part[rank] for part in hand_case())))
        (Path(out) / f"{rank}.json").write_text(json.dumps(evaluator.compute()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_evaluator_gathers_the_shards_of_all_ranks(tmp_path: Path) -> None:
    mp.spawn(evaluate_shard, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        assert json.loads((tmp_path / f"{rank}.json").read_text())["ap50"] == pytest.approx(300 / 11)


# ---------------------------------------------------------------------------------------------
# A VOC0712 fixture in the devkit layout (VOC2007 only): 64 x 48 images.

WIDTH, HEIGHT = 64, 48
# id -> objects (class, xmin, ymin, xmax, ymax, difficult), in VOC's 1-based inclusive pixels.
OBJECTS = {
    "000001": [("dog", 10, 8, 40, 30, 0), ("cat", 45, 5, 60, 20, 1)],
    "000002": [("dog", 5, 5, 30, 40, 0), ("person", 35, 5, 60, 48, 0)],
    "000003": [("cat", 1, 1, 64, 48, 0)],
    "000004": [("cat", 20, 10, 50, 40, 0), ("car", 3, 3, 12, 12, 1)],
    "000005": [("dog", 8, 8, 32, 32, 0), ("bird", 40, 4, 60, 20, 1)],
    "000006": [("person", 10, 5, 40, 45, 0)],
}
TRAINVAL, TEST = ["000001", "000002", "000003", "000004"], ["000005", "000006"]


def annotation_xml(objects: list[tuple]) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, x1, y1, x2, y2, difficult in objects
    )
    size = f"<size><width>{WIDTH}</width><height>{HEIGHT}</height><depth>3</depth></size>"
    return f"<annotation><folder>VOC2007</folder>{size}<segmented>0</segmented>{body}</annotation>"


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    folder = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id, objects in OBJECTS.items():
        pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "JPEGImages" / f"{image_id}.jpg")
        (folder / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(objects))
    (folder / "ImageSets/Main/trainval.txt").write_text("\n".join(TRAINVAL) + "\n")
    (folder / "ImageSets/Main/test.txt").write_text("\n".join(TEST) + "\n")
    return root


def voc_config(root: Path, **data: object) -> Config:
    head = RetinaNetHeadConfig(name="retinanet", fpn_channels=32, min_size=[64], max_size=64)
    return Config(data=DataConfig(name="voc", task="detection", root=str(root), **data), head=head)


def ids(split: VOCDetectionSplit) -> list[str]:
    return [image.path.stem for image in split.images]


def test_voc_splits_and_selection(voc_root: Path) -> None:
    data = build_data(voc_config(voc_root, val_fraction=0.5, split_seed=3))
    assert data.num_classes == 20 and data.class_names == list(VOC_CLASSES)
    assert sorted(ids(data.train) + ids(data.val)) == TRAINVAL and ids(data.test) == TEST
    # Stratified by the class of the largest non-difficult object (dog, person, cat, cat): only cat
    # has two images, so one cat image is held out.
    assert len(ids(data.val)) == 1 and ids(data.val)[0] in ("000003", "000004")
    assert "VOC2007 trainval" in data.selection and "no VOC2012" in data.selection
    again = build_data(voc_config(voc_root, val_fraction=0.5, split_seed=3))
    assert ids(again.val) == ids(data.val)

    reference = build_data(voc_config(voc_root, selection_split="test"))
    assert ids(reference.train) == TRAINVAL and reference.val is reference.test
    assert reference.selection.startswith("test:")
    paper = build_data(voc_config(voc_root, selection_split="none", voc2007_only=True))
    assert ids(paper.train) == TRAINVAL and paper.val is None
    assert "VOC2007 trainval only (data.voc2007_only=true" in paper.selection


def test_the_papers_voc_protocol_needs_voc2012_unless_told_otherwise(voc_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        build_data(voc_config(voc_root, selection_split="none"))
    message = str(error.value)
    assert f"no VOC2012 at {voc_root / 'VOCdevkit' / 'VOC2012'}" in message
    assert "data.voc2007_only=true" in message
    # With VOC2012 beside it, both years train, unless VOC2007 alone is asked for.
    devkit = tmp_path / "VOCdevkit"
    shutil.copytree(voc_root / "VOCdevkit" / "VOC2007", devkit / "VOC2007")
    shutil.copytree(voc_root / "VOCdevkit" / "VOC2007", devkit / "VOC2012")
    both = build_data(voc_config(tmp_path, selection_split="none"))
    assert ids(both.train) == TRAINVAL * 2 and "trained on VOC2007+2012 trainval;" in both.selection
    alone = build_data(voc_config(tmp_path, selection_split="none", voc2007_only=True))
    assert ids(alone.train) == TRAINVAL


def test_voc_targets(voc_root: Path) -> None:
    data = build_data(voc_config(voc_root, selection_split="test"))
    image, target = data.test[0]  # 000005: a dog, and a difficult bird
    assert (
        image.shape == (3, HEIGHT, WIDTH)
        and image.dtype == torch.float32
        and 0 <= image.min() <= image.max() <= 1
    )
    assert torch.equal(target["boxes"], torch.tensor([[7.0, 7, 31, 31], [39, 3, 59, 19]]))  # less 1, as mmdet
    dog, bird = VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("bird") + 1
    assert torch.equal(target["labels"], torch.tensor([dog, bird]))
    assert torch.equal(target["difficult"], torch.tensor([False, True]))

    record = parse_annotation(
        voc_root / "VOCdevkit/VOC2007/JPEGImages/000001.jpg",
        voc_root / "VOCdevkit/VOC2007/Annotations/000001.xml",
    )
    unflipped = torch.tensor([[9.0, 7, 39, 29]])  # the difficult cat is left out of training
    flipped = torch.tensor([[WIDTH - 39.0, 7, WIDTH - 9, 29]])
    plain, _ = VOCDetectionSplit([record], train=False)[0]
    train = VOCDetectionSplit([record], train=True)
    seen = set()
    torch.manual_seed(0)
    for _ in range(16):
        image, target = train[0]
        assert set(target) == {"boxes", "labels"} and torch.equal(target["labels"], torch.tensor([dog]))
        if torch.equal(target["boxes"], flipped):
            assert torch.equal(image, plain.flip(-1))
            seen.add("flipped")
        else:
            assert torch.equal(target["boxes"], unflipped) and torch.equal(image, plain)
            seen.add("unflipped")
    assert seen == {"flipped", "unflipped"}

    images, targets = data.collate_fn([data.train[0], data.train[1]])
    assert isinstance(images, list) and len(images) == 2 and isinstance(targets, list) and len(targets) == 2


def test_missing_voc_names_the_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        build_data(voc_config(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages") in message
    assert "ImageSets/Main/trainval.txt" in message and "data.root=" in message


# ---------------------------------------------------------------------------------------------
# The model.


def micro_backbone(method: str = "full"):
    torch.manual_seed(0)
    backbone = build_swin("swin_micro", dynamic_size=True)
    backbone.use_output_norms()
    cls = METHODS[method]
    cls(cls.config_class(name=method)).apply(backbone)
    return backbone


def test_mmdet_candidates_are_the_top_anchors_with_every_class() -> None:
    """Four separate anchors of two classes, 2 candidates per level: mmdet keeps the two anchors of the
    best top scores with both their classes (above 0.05); torchvision the two best (anchor, class) pairs."""
    head = RetinaNetHeadConfig(
        name="retinanet", fpn_channels=32, min_size=[64], max_size=64, mmdet_candidates=True
    )
    detector = RetinaNetModel(micro_backbone(), 2, head).detector
    detector.topk_candidates = 2
    probabilities = torch.tensor([[0.9, 0.8], [0.85, 0.1], [0.2, 0.7], [0.01, 0.02]])
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]])
    outputs = {"cls_logits": [torch.logit(probabilities)[None]], "bbox_regression": [torch.zeros(1, 4, 4)]}
    [ours] = detector.postprocess_detections(outputs, [[anchors]], [(100, 100)])
    [torchvisions] = RetinaNet.postprocess_detections(detector, outputs, [[anchors]], [(100, 100)])
    found = {(int(a), int(c)) for a, c in zip(ours["boxes"][:, 0] // 20, ours["labels"], strict=True)}
    assert found == {(0, 0), (0, 1), (1, 0), (1, 1)}  # anchors 0 and 1, each class above 0.05
    assert torch.allclose(ours["scores"], torch.tensor([0.9, 0.85, 0.8, 0.1]))  # by score
    assert torch.allclose(torchvisions["scores"], torch.tensor([0.9, 0.85]))  # pairs (0, 0) and (1, 0)


def test_mmdet_anchors_have_exact_octave_sizes_and_are_not_rounded() -> None:
    """mmdet's RetinaNet anchors (octave_base_scale 4, 3 scales per octave, ratios h/w 0.5, 1, 2): at
    the first cell of P3, w = 32 * 2^(k/3) / sqrt(r), h = 32 * 2^(k/3) * sqrt(r), centred on (0, 0)."""
    expected = torch.tensor(
        [
            [-w / 2, -h / 2, w / 2, h / 2]
            for r in (0.5, 1.0, 2.0)
            for k in range(3)
            for w, h in [(32 * 2 ** (k / 3) / r**0.5, 32 * 2 ** (k / 3) * r**0.5)]
        ]
    )
    images = torch.rand(1, 3, 64, 64)
    first_cell = {}
    for mmdet in (True, False):
        head = RetinaNetHeadConfig(fpn_channels=32, min_size=[64], max_size=64, mmdet_anchors=mmdet)
        detector = RetinaNetModel(micro_backbone(), 2, head).detector
        features = list(detector.backbone(images).values())
        anchors = detector.anchor_generator(ImageList(images, [(64, 64)]), features)[0]
        first_cell[mmdet] = anchors[:9]
    assert torch.allclose(first_cell[True], expected, atol=1e-4)
    assert (first_cell[False] - expected).abs().max() > 0.3  # torchvision's: truncated sizes, rounded anchors


def test_fpn_takes_p6_from_c5_even_when_widths_agree() -> None:
    neck = retinanet_fpn(
        micro_backbone(), RetinaNetHeadConfig(fpn_channels=256)
    )  # C5 of swin_micro is 256 wide too
    images = torch.randn(1, 3, 64, 64)
    features = neck(images)
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    c5 = neck.body(images)["2"]
    assert torch.allclose(features["p6"], neck.fpn.extra_blocks.p6(c5))


@pytest.mark.parametrize("relu", [True, False])
def test_p7_follows_p6_with_or_without_the_relu_between(relu: bool) -> None:
    """torchvision puts a ReLU between P6 and P7; mmdet's FPN (the reference VOC config) does not."""
    neck = retinanet_fpn(micro_backbone(), RetinaNetHeadConfig(fpn_channels=32, relu_before_extra_convs=relu))
    with torch.no_grad():
        features = neck(torch.randn(1, 3, 128, 128))
        p6 = features["p6"]
        assert (p6 < 0).any()  # so the ReLU changes P7
        extra = neck.fpn.extra_blocks
        expected = extra.p7(p6.clamp(min=0) if relu else p6)
        torch.testing.assert_close(features["p7"], expected)
        assert not torch.allclose(features["p7"], extra.p7(p6 if relu else p6.clamp(min=0)))


def test_group_norm_in_the_head_follows_each_subnet_conv_and_leaves_the_plain_head_alone() -> None:
    """head.group_norm: a GroupNorm(32) after each of the four convs of both subnets, whose bias it
    replaces (torchvision's v2 head): 16 tensors more, 8 fewer; off, the plain head of the paper; a
    width that 32 groups cannot split is a one-paragraph error."""

    def head(**options: object) -> nn.Module:
        config = RetinaNetHeadConfig(**{"fpn_channels": 64, "min_size": [64], "max_size": 64, **options})
        return RetinaNetModel(micro_backbone(), 10, config).detector.head

    plain, normed = head(), head(group_norm=True)
    norms = [m for m in normed.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 8 and all((m.num_groups, m.num_channels) == (32, 64) for m in norms)
    assert not any(isinstance(m, nn.GroupNorm) for m in plain.modules())
    subnet_convs = [m for m in normed.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 64]
    assert len(subnet_convs) == 8 and all(m.bias is None for m in subnet_convs)
    assert len(normed.state_dict()) - len(plain.state_dict()) == 16 - 8
    with pytest.raises(UserError, match=r"head\.fpn_channels to a multiple of 32"):
        head(group_norm=True, fpn_channels=48)


def test_training_step_and_predict_on_voc(voc_root: Path) -> None:
    cfg = voc_config(voc_root, selection_split="test")
    data = build_data(cfg)
    model = head_of(cfg).build(micro_backbone(), data.num_classes, cfg)
    assert isinstance(model, RetinaNetModel)
    assert model.detector.head.classification_head.num_classes == 20
    images, targets = data.collate_fn([data.train[i] for i in range(2)])
    loss = model(images, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()

    model.eval()
    model.detector.score_thresh = 0.0  # an untrained head scores below the usual 0.05
    images, targets = data.collate_fn([data.test[i] for i in range(2)])
    with torch.no_grad():
        predictions = model.predict(images)
    assert len(predictions) == 2
    for prediction in predictions:
        assert set(prediction) == {"boxes", "scores", "labels"}
        n = len(prediction["scores"])
        assert 0 < n <= 100 and prediction["boxes"].shape == (n, 4) and prediction["labels"].shape == (n,)
        assert prediction["labels"].min() >= 1 and prediction["labels"].max() <= 20
        assert prediction["boxes"][:, 2].max() <= WIDTH and prediction["boxes"][:, 3].max() <= HEIGHT
    evaluator = task_of(cfg).build_evaluator(data, torch.device("cpu"))
    evaluator.update(predictions, targets)
    assert 0.0 <= evaluator.compute()["ap50"] <= 100.0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_training_step_per_method(method: str) -> None:
    head = RetinaNetHeadConfig(
        name="retinanet", fpn_channels=32, min_size=[64], max_size=64, anchor_sizes=[8, 16, 32, 64, 128]
    )
    cfg = Config(
        method=METHODS[method].config_class(name=method),
        backbone=BackboneConfig(name="swin_micro"),
        data=DataConfig(name="shapes_det", task="detection"),
        head=head,
    )
    torch.manual_seed(0)
    model = build_task_model(cfg, num_classes=10)
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 64, generator=generator) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6, 30, 28]]), "labels": torch.tensor([3])},
        {"boxes": torch.tensor([[10.0, 10, 50, 60], [0, 0, 12, 9]]), "labels": torch.tensor([10, 1])},
    ]
    loss = model(images, targets)
    assert torch.isfinite(loss)
    loss.backward()
    params = dict(model.named_parameters())
    frozen = [n for n, p in params.items() if not p.requires_grad]
    assert all(params[n].grad is None for n in frozen)
    assert all(p.grad is not None for p in params.values() if p.requires_grad)
    assert all(not p.requires_grad for p in model.backbone.output_norms[0].parameters())  # feeds no FPN level
    assert all(p.requires_grad for p in model.neck.parameters())


def test_scene_detection_data() -> None:
    cfg = Config(
        data=DataConfig(
            name="shapes_det", task="detection", image_size=96, train_size=4, val_size=2, test_size=2
        ),
        head=RetinaNetHeadConfig(name="retinanet", min_size=[96], max_size=96),
    )
    data = build_data(cfg)
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 2) and data.num_classes == 10
    images, targets = data.collate_fn([data.val[0], data.val[1]])
    assert images[0].shape == (3, 96, 96)
    for target in targets:
        assert set(target) == {"boxes", "labels"}
        assert target["labels"].min() >= 1 and target["labels"].max() <= 10
        assert (target["boxes"][:, :2] < target["boxes"][:, 2:]).all()


@pytest.mark.slow
def test_cli_run_on_voc_records_ap50(voc_root: Path, results_dir: Path) -> None:
    result = run_cli(
        *SMOKE,
        "dataset=voc",
        f"data.root={voc_root}",
        "method=mona",
        "backbone=swin_micro",
        "backbone.weights=none",
        "trainer.max_steps=2",
        "head.min_size=[64]",
        "head.max_size=64",
        "head.fpn_channels=32",
        "data.eval_batch_size=2",
        "data.voc2007_only=true",  # the fixture has no VOC2012, which the paper's protocol needs
        results_dir=results_dir,
    )
    assert result.returncode == 0, result.stderr
    [record] = records(results_dir)
    assert record["status"] == "completed" and record["task"] == "detection" and record["steps"] == 2
    assert "VOC2007 trainval only" in record["best"]["split"]
    assert set(record["metrics"]) == {"ap50"} and 0.0 <= record["metrics"]["ap50"] <= 100.0
    # dataset=voc brings the paper's protocol: all of trainval trains, the last checkpoint is reported
    assert record["protocol"] == "paper" and record["best"]["split"].startswith("none (no model selection)")
    assert record["metrics"] == record["metrics_last"] and record["val_history"] == []
    outcomes = read_outcomes(results_dir / "runs" / record["run_id"])  # per test image and class
    assert outcomes["positives"].shape == (record["split_sizes"]["test"], len(VOC_CLASSES))
    assert TASKS["detection"].score(outcomes, None) == record["metrics"]  # exactly
