"""The structured-config schema: every key a run accepts, with its type and default.

Hydra merges the package's configs (`peft_bench/conf`, also `conf/`) over these dataclasses, so a
misspelt key or a wrong type fails at start-up with the key named. Each method and each head
registers its own schema (a subclass of `MethodConfig`, `HeadConfig`; the package's methods' are in
`peft_bench.methods.configs`) when it registers itself; `peft_bench.plugins.register_configs`
stores the run schema and loads them all. None of the package's schemas imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from omegaconf import MISSING


class Selection(str, Enum):
    """Which split selects the model, and so which checkpoint a run reports (`conf/protocol`)."""

    val = "val"  # the harness's protocol: a held-out (or official) val split; the best checkpoint on it
    test = "test"  # the test split itself selects the best checkpoint: optimistic, kept for comparison
    none = "none"  # the paper's protocol: the whole training split trains; the last checkpoint


class TuningStage(str, Enum):
    """The stages of a tuned protocol (`protocol=vtab`, `peft_bench.tuning`)."""

    none = "none"  # the config's own hyperparameters
    tune = "tune"  # a grid point on train -> val (VTAB: train800 -> val200); the test split is not evaluated
    final = "final"  # the values chosen on val (`python -m peft_bench.tune`), trained on train + val


class Normalization(str, Enum):
    """The input normalisation of image classification (VTAB's peers differ: `docs/protocol.md`)."""

    imagenet = "imagenet"  # ImageNet's mean and std (FacT, V-PETL, Adapter+; the harness's)
    inception = "inception"  # mean 0.5, std 0.5: inputs in [-1, 1], as Google's ViT was trained (NOAH's VPT)
    none = "none"  # inputs in [0, 1] (PETL_Vision's default, VPT's TFDS pipeline)


class Schedule(str, Enum):
    """The learning-rate policy (`peft_bench.engine.schedules`)."""

    warmup_cosine = "warmup_cosine"  # the harness's: a linear ramp, then cosine over the remaining steps
    cosine = "cosine"  # mmcv's CosineAnnealing by iteration over the whole run, to lr * min_lr_ratio
    step = "step"  # mmcv's step policy: x gamma at each epoch of `steps`
    poly = "poly"  # mmcv's poly policy by iteration, with `power`, to lr * min_lr_ratio


class Warmup(str, Enum):
    """mmcv's warm-up, which multiplies the policy's regular rate (cosine, step and poly)."""

    linear = "linear"
    constant = "constant"
    exp = "exp"
    none = "none"


class NoDecay(str, Enum):
    """A rule that exempts parameters from weight decay (`peft_bench.engine.optim`)."""

    vectors = "vectors"  # every tensor of at most one dimension: norms, biases, scales (the harness's)
    layer_norms = "layer_norms"  # LayerNorm weights and biases (mmcv's norm_decay_mult=0, custom key 'norm')
    biases = "biases"  # every bias (mmcv's bias_decay_mult=0)
    position_tables = "position_tables"  # relative position bias tables, absolute position embeddings


class BoxHead(str, Enum):
    """The box heads of a Cascade Mask R-CNN stage (`peft_bench.models.cascade`)."""

    shared2fc = "shared2fc"  # two FC layers, class-agnostic deltas, smooth L1 (mmdet's default cascade)
    convfc = "convfc"  # 4 convs + 1 FC with BN, class-specific deltas, GIoU x10 (the Mona COCO config)


class MethodInit(str, Enum):
    """How a method's new Linear layers start."""

    reference = "reference"  # as the Mona authors' backbones: trunc-normal (std 0.02), zero bias
    original = "original"  # as the method's own authors wrote it


class HeadInit(str, Enum):
    """How a linear classification head starts."""

    trunc_normal = "trunc_normal"  # std 0.02, zero bias: Swin's `_init_weights`
    normal = "normal"  # std 0.01, zero bias: mmcls's LinearClsHead, the reference's head


class Inference(str, Enum):
    """How semantic segmentation predicts an image (`peft_bench.models.segmenter`)."""

    whole = "whole"  # the image at once
    slide = "slide"  # mmseg's sliding window


class Precision(str, Enum):
    """Numeric precision of a run (`peft_bench.engine.precision`)."""

    auto = "auto"  # bf16 where the GPU has it natively, else fp16 with a loss scale; fp32 on the CPU
    bf16 = "bf16"  # bf16 autocast (the CPU can autocast too)
    fp16 = "fp16"  # fp16 autocast with a dynamic loss scale (CUDA)
    fp32 = "fp32"


class Resume(str, Enum):
    auto = "auto"  # continue an interrupted run of the same id, or skip a completed one
    never = "never"  # a new run id, stamped with the time


class Device(str, Enum):
    auto = "auto"  # CUDA where there is one, else the CPU
    cpu = "cpu"
    cuda = "cuda"


class LoggerName(str, Enum):
    none = "none"
    wandb = "wandb"


class WandbMode(str, Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class MethodConfig:
    """Common to every tuning method."""

    name: str = MISSING
    # Multiplies the learning rate of every parameter group of the run (see also the recipe's
    # trainer.method_lr_mult).
    lr_mult: float = 1.0


@dataclass
class BackboneConfig:
    name: str = "swin_micro"  # a registered size (`peft_bench.backbones.BACKBONES`)
    # `none` (random init), a name of the size's hub weights (`in22k` for Swin, `in21k` for ViT-B/L,
    # ...), of a shipped checkpoint (`mini`), or a path to a local checkpoint (Swin: timm, Microsoft
    # or OpenMMLab format; ViT: timm, or Google's .npz).
    weights: str = "none"
    img_size: int | None = None  # None: the size's native resolution (224; 64 for the embedded sizes)
    window_size: int | None = None  # Swin only. None: the size's native window (7; 4 for swin_micro)
    drop_path_rate: float = 0.0
    # Every block keeps its window and shift whatever the size of its map, as the Swin detection and
    # segmentation code (the reference's) does; false: timm's, which shrinks the window of a map
    # no larger than it and drops its shift (stage 3 of a 224-px build, any stage of a small map).
    # A family without windows (ViT) has nothing to partition and ignores it.
    always_partition: bool = False
    # The norms that feed the head start fresh (weight 1, bias 0), as in the reference runs, whose
    # checkpoint's final `norm` has no place to load (dense: the four per-stage norms; classification:
    # the final one); false: the pretrained final norm's weights (the last per-stage norm's, dense).
    fresh_output_norms: bool = False
    # As the Swin detection code the paper builds on: >= 0 (and 1) freezes the embedding, N >= 2
    # also stages 0..N-2, whatever the method (a ViT has one stage). The reference VOC detection
    # config uses 1.
    frozen_stages: int = -1


@dataclass
class DataConfig:
    name: str = MISSING
    task: str = "classification"
    root: str | None = None  # the dataset's root folder (real datasets)
    download: bool = False  # let torchvision download into `root` (connected machines only)
    # Model selection (set by `protocol=harness|paper`): `val` holds out part of the training data (or
    # uses an official val split) and reports the best checkpoint on it; `none` trains on the whole
    # training split and reports the last checkpoint; `test` selects on the test split (optimistic).
    selection_split: Selection = Selection.val
    val_fraction: float = 0.1  # held out from the training split when there is no official val
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int | None = None  # None: 0 on the CPU; on CUDA, from the CPUs (`data_workers`)
    # The seed of the data, fixed across training seeds so that repetitions share their splits:
    # held-out validation splits, and the embedded generator's scenes.
    split_seed: int = 0
    # Embedded datasets only: the side of generated images (None: the backbone's img_size), and
    # split sizes.
    image_size: int | None = None
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    # Embedded scenes only (None: the dataset's own choice): the main object's radius range in fractions
    # of the image side, the distractors' in fractions of the main object's, and the most objects a
    # scene holds (`peft_bench.data.scenes.SceneGenerator`'s scale, distractor_scale, max_objects).
    object_scale: list[float] | None = None
    distractor_scale: list[float] | None = None
    max_objects: int | None = None
    normalization: Normalization = Normalization.imagenet  # classification inputs
    # VOC detection: train on VOC2007 trainval alone, deliberately (the paper's runs train on
    # VOC2007 + VOC2012, and `protocol=paper` refuses a devkit without VOC2012 unless this is set).
    voc2007_only: bool = False


@dataclass
class HeadConfig:
    """Common to every head (the neck and head of the task model). Each head registers its own schema,
    a subclass (`peft_bench.tasks.register_head`), as the config group entry `head/<name>`; each
    dataset config picks the head of its task (`override /head: <name>`)."""

    name: str = MISSING


@dataclass
class LinearHeadConfig(HeadConfig):
    """Classification: a linear layer on pooled features."""

    init: HeadInit = HeadInit.trunc_normal


@dataclass
class DetectorHeadConfig(HeadConfig):
    """A torchvision detector on a Swin + FPN. Images: the shorter side is resized to min_size (a
    random choice among several in training, as multi-scale training), the longer capped at max_size."""

    fpn_channels: int = 256
    anchor_sizes: list[int] | None = None  # a base anchor size per FPN level; None: torchvision's
    min_size: list[int] = field(default_factory=lambda: [800])
    max_size: int = 1333


@dataclass
class RetinaNetHeadConfig(DetectorHeadConfig):
    # A ReLU between P6 and P7 (torchvision's); mmdet's FPN has none by default.
    relu_before_extra_convs: bool = True
    # Test-time candidates as mmdet's RetinaHead: per level the top 1000 anchors by their best class
    # score, with all their classes; false: torchvision's top 1000 (anchor, class) pairs above the
    # score threshold.
    mmdet_candidates: bool = False
    # Anchors as mmdet's AnchorGenerator: octave scales base * 2^(k/3) exact, base anchors not rounded to
    # whole pixels; false: torchvision's (sizes truncated to integers, base anchors rounded).
    mmdet_anchors: bool = False
    # GroupNorm (32 groups) after each conv of the classification and box subnets, as torchvision's
    # RetinaNet v2 head (`retinanet_resnet50_fpn_v2`) and mmdet's `norm_cfg=dict(type="GN")`: a
    # from-scratch head that learns faster; false: the paper's (and torchvision's v1) plain convs.
    group_norm: bool = False


@dataclass
class MaskRCNNHeadConfig(DetectorHeadConfig):
    """Mask R-CNN and Cascade Mask R-CNN."""

    box_head: BoxHead = BoxHead.shared2fc  # Cascade Mask R-CNN's box heads
    # The width of the box heads' FC layers (mmdet's `fc_out_channels`, 1024 in every reference config).
    box_fc_channels: int = 1024
    # RoIAlign as mmcv's (aligned, adaptive sampling), and the cascade's mask targets as mmdet's (cropped
    # by it, binarised at 0.5); false: torchvision's.
    mmcv_roi_align: bool = False
    # The RPN's anchors assigned as mmdet's (border, low-quality IoU); false: torchvision's.
    mmdet_rpn: bool = False


@dataclass
class UperNetHeadConfig(HeadConfig):
    """UperNet and its auxiliary FCN head (semantic segmentation)."""

    channels: int = 512
    aux_weight: float = 0.4  # the auxiliary FCN head's (on stage 3) loss weight
    inference: Inference = Inference.whole
    slide_crop: int = 512  # sliding-window inference: window side and stride
    slide_stride: int = 341
    # BatchNorm statistics over groups of this many images (mmseg's plain BN per GPU, with the per-GPU
    # batch as the group: `GhostBatchNorm2d`); None: over the whole batch, SyncBN under DDP.
    norm_group: int | None = None
    # ADE20K's resize scale: the short side (one value) and the cap on the long side (its dataset
    # config sets mmseg's 512 and 2048).
    min_size: list[int] = field(default_factory=lambda: [800])
    max_size: int = 1333


@dataclass
class TrainerConfig:
    epochs: int = 10
    iterations: int | None = None  # train by iterations instead of epochs (ADE20K: 160k)
    max_steps: int | None = None  # a cap on optimiser steps (smoke runs): the schedule is unchanged
    lr: float = 1e-3
    # A task recipe's per-method lr multipliers, on top of method.lr_mult: the paper's Table 6
    # trains Mona at 2x the baselines' lr on classification and 5x on ADE20K.
    method_lr_mult: dict[str, float] = field(default_factory=dict)
    # The lr multiplier of the neck and head, which start from scratch (the backbone keeps 1).
    head_lr_mult: float = 1.0
    weight_decay: float = 0.05
    # Tensors without weight decay, by rule: mmcv's paramwise settings of each reference config.
    no_decay: list[NoDecay] = field(default_factory=lambda: [NoDecay.vectors, NoDecay.position_tables])
    schedule: Schedule = Schedule.warmup_cosine
    # The warm-up's length: warmup_iters optimiser steps, or (when null) warmup_epochs epochs.
    warmup_epochs: float = 1.0
    warmup_iters: int | None = None
    warmup: Warmup = Warmup.linear  # the mmcv policies' warm-up (warmup_cosine has its own ramp)
    warmup_ratio: float = 0.0  # mmcv's: the warm-up starts at lr * warmup_ratio
    min_lr_ratio: float = 0.01  # warmup_cosine, cosine and poly end at lr * min_lr_ratio
    steps: list[int] = field(default_factory=list)  # step: the epochs after which the lr is x gamma
    gamma: float = 0.1
    power: float = 1.0  # poly
    clip_grad_norm: float | None = 5.0
    label_smoothing: float = 0.0
    precision: Precision = Precision.auto
    device: Device = Device.auto
    seed: int = 0
    eval_every: int = 1  # validate every N epochs
    log_every: int = 1  # write a history row every N optimiser steps
    resume: Resume = Resume.auto
    progress: bool = True  # a tqdm progress bar
    threads: int | None = None  # torch CPU threads; None: torch's default
    compile: bool = False  # torch.compile the task model's training forward (`nn.Module.compile`)
    compile_backend: str = "inductor"  # torch.compile's; aot_eager: the graph capture without codegen
    # Deterministic kernels (`torch.use_deterministic_algorithms`, cuDNN without its autotuner): a
    # CUDA run bit for bit repeatable, and resumable to the same bits; an op without a deterministic
    # kernel then raises, naming itself.
    deterministic: bool = False
    # TF32 matmuls on Ampere and later GPUs (`torch.backends.cuda.matmul.allow_tf32`; convolutions use
    # TF32 either way, torch's default): the ADE20K reference's fp32 runs had them (PyTorch 1.8.1).
    tf32: bool = False


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.none
    project: str = "peft_bench"
    entity: str | None = None
    mode: WandbMode | None = None  # None: WANDB_MODE or wandb's default
    tags: list[str] = field(default_factory=list)


@dataclass
class PathsConfig:
    results_dir: str = "results"
    # Where `python -m peft_bench.pretrain` writes its backbone (<backbone>-<dataset>.safetensors).
    export_dir: str = "${paths.results_dir}/pretrained"


@dataclass
class TuningConfig:
    """Hyperparameters chosen on a val split (`protocol=vtab`; `peft_bench.tuning`, `docs/protocol.md`)."""

    stage: TuningStage = TuningStage.none
    # The chosen values per (dataset, method, backbone), written by `python -m peft_bench.tune` and
    # read by the final stage's runs.
    chosen: str = "${paths.results_dir}/tuned.yaml"


@dataclass
class Config:
    method: MethodConfig = MISSING
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    head: HeadConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    run_id: str | None = None  # None: derived from the protocol (so the same command resumes)
