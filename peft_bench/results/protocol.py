"""A run's identity: the protocol hash (what makes two runs comparable) and the run id.

The protocol is the resolved config without what cannot change a result (paths, logging,
device, worker counts, resume policy) and without the seed: seeds of one protocol are
repetitions of the same experiment, so they share the hash and differ in the run id.

Keys added to the schema after results were recorded stay out of the hash while they hold the
value that reproduces the behaviour from before they existed (`NEUTRAL`), and a head's fields are
hashed as the single head schema of that time had them (`SINGLE_HEAD_SCHEMA`), so that the same
command keeps its run id and committed results stay matched to their cells. The resolved precision
is part of the protocol (fp32, the CPU's, hashes as before it was); the device is not. A shipped
checkpoint (`backbone.weights=mini`) enters by its name and its revision (`peft_bench.shipped`), the
first revision hashing as before revisions existed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from peft_bench.config import Selection, TuningStage
from peft_bench.registry import BACKBONES
from peft_bench.shipped import FIRST_REVISION, shipped_revision

# Dotted keys that never change a result.
NON_PROTOCOL_KEYS = (
    "paths",
    "logger",
    "run_id",
    "trainer.seed",
    "trainer.device",
    "trainer.threads",
    "trainer.progress",
    "trainer.compile",
    "trainer.compile_backend",
    "trainer.resume",
    "trainer.log_every",
    "data.root",
    "data.download",
    "data.num_workers",
    "data.eval_batch_size",
    "tuning.chosen",  # where the chosen values are read from; the values themselves are hashed
)

# Dotted key -> the value that does what the harness did before the key existed.
NEUTRAL: dict[str, Any] = {
    "backbone.weights_revision": FIRST_REVISION,
    "backbone.always_partition": False,
    "backbone.fresh_output_norms": False,
    "method.after_norm": None,  # VPT: the family's own placement (the Mona authors' on Swin)
    # SSF after every transition, as before the key: the default (None, the family's reference
    # code, none after Swin's mergings) is hashed, so no earlier Swin SSF record passes for it.
    "method.after_transitions": True,
    "method.prefix_tokens": "convpass",  # Mona: nothing to treat on a backbone without prefix tokens
    "head.init": "trunc_normal",
    "head.relu_before_extra_convs": True,
    "head.box_head": "shared2fc",
    "head.box_fc_channels": 1024,
    "head.mmcv_roi_align": False,
    "head.mmdet_rpn": False,
    "head.mmdet_candidates": False,
    "head.mmdet_anchors": False,
    "head.group_norm": False,
    "head.norm_group": None,
    "trainer.no_decay": ["vectors", "position_tables"],
    "trainer.schedule": "warmup_cosine",
    "trainer.warmup_iters": None,
    "trainer.warmup": "linear",
    "trainer.warmup_ratio": 0.0,
    "trainer.steps": [],
    "trainer.gamma": 0.1,
    "trainer.power": 1.0,
    "trainer.precision": "fp32",
    "trainer.deterministic": False,
    "trainer.tf32": False,
    "data.normalization": "imagenet",
    "data.voc2007_only": False,
    "data.object_scale": None,
    "data.distractor_scale": None,
    "data.max_objects": None,
    "tuning.stage": "none",
}

# The head's fields as one schema for every head had them, before each head had its own: a field
# that the run's head lacks enters the hash at its old default, so that committed runs keep their ids.
SINGLE_HEAD_SCHEMA: dict[str, Any] = {
    "fpn_channels": 256,
    "anchor_sizes": None,
    "min_size": [800],
    "max_size": 1333,
    "channels": 512,
    "aux_weight": 0.4,
    "inference": "whole",
    "slide_crop": 512,
    "slide_stride": 341,
}

# What each model-selection choice (`data.selection_split`, set by `protocol=...`) and each stage of a
# tuned protocol (`tuning.stage`) is called in records and tables, and what it means.
PROTOCOLS = {Selection.val: "harness", Selection.none: "paper", Selection.test: "test-max"}
TUNED_PROTOCOLS = {TuningStage.tune: "vtab-tune", TuningStage.final: "vtab"}
PROTOCOL_MEANING = {
    "harness": "trained on the training split less a val split; the best checkpoint on val",
    "paper": "trained on the whole training split; the last checkpoint",
    "test-max": "trained on the whole training split; the best test score over periodic evaluations "
    "(test-set selection, optimistic: NOAH's, FacT's and V-PETL's VTAB protocol)",
    "vtab": "hyperparameters chosen on the val split from a declared grid (VTAB-1k: train800 -> val200), "
    "then trained on train + val; the last checkpoint",
    "vtab-tune": "one point of the hyperparameter grid: trained on the training split, scored on val; "
    "the test split is not evaluated",
}


def protocol_of(cfg: DictConfig) -> dict[str, Any]:
    protocol = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    protocol["head"] = {**SINGLE_HEAD_SCHEMA, **protocol["head"]}
    trainer = protocol["trainer"]
    # A run resolves `auto` before it hashes; a config that is not run (a report's cell) stands for
    # what the CPU resolves. A GPU run's cell names its precision: override=trainer.precision=bf16.
    if trainer.get("precision") == "auto":
        trainer["precision"] = "fp32"
    trainer["amp"] = True  # the key that `precision` replaced, as every run before it had it
    backbone = protocol["backbone"]
    entry = BACKBONES.get(backbone["name"])
    if entry is not None and backbone["weights"] in entry.shipped:
        backbone["weights_revision"] = shipped_revision(entry, backbone["weights"])
    for dotted in NON_PROTOCOL_KEYS:
        _pop(protocol, dotted)
    for dotted, neutral in NEUTRAL.items():
        _pop(protocol, dotted, only_if=neutral)
    return protocol


def _pop(tree: dict[str, Any], dotted: str, only_if: Any = ...) -> None:
    """Remove the key at `dotted` from `tree` (when given, only if its value equals `only_if`), and
    its section if that leaves it empty (a section added to the schema, left at its defaults)."""
    parent, *rest = dotted.split(".", 1)
    if not rest:
        if parent in tree and (only_if is ... or tree[parent] == only_if):
            del tree[parent]
        return
    section = tree.get(parent)
    if isinstance(section, dict):
        _pop(section, rest[0], only_if)
        if not section:
            del tree[parent]


def protocol_name(cfg: DictConfig) -> str:
    """`harness`, `paper`, `test-max`, `vtab` or `vtab-tune`: how a run chose its hyperparameters and
    the checkpoint it reports."""
    stage = TuningStage(cfg.tuning.stage)
    if stage in TUNED_PROTOCOLS:
        return TUNED_PROTOCOLS[stage]
    return PROTOCOLS[Selection(cfg.data.selection_split)]


def protocol_hash(cfg: DictConfig) -> str:
    text = json.dumps(protocol_of(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_id_for(cfg: DictConfig) -> str:
    """`<dataset>-<method>-<backbone>-s<seed>-<protocol hash>`: the same command, the same id."""
    if cfg.run_id:
        return cfg.run_id
    return (
        f"{cfg.data.name}-{cfg.method.name}-{cfg.backbone.name}-s{cfg.trainer.seed}-{protocol_hash(cfg)[:8]}"
    )
