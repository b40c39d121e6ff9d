"""A run's identity: the protocol hash (what makes two runs comparable) and the run id.

The protocol is the resolved config without what cannot change a result (paths, logging,
device, worker counts, resume policy) and without the seed: seeds of one protocol are
repetitions of the same experiment, so they share the hash and differ in the run id.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Dotted keys that never change a result.
NON_PROTOCOL_KEYS = (
    "paths",
    "logger",
    "run_id",
    "trainer.seed",
    "trainer.device",
    "trainer.threads",
    "trainer.progress",
    "trainer.resume",
    "trainer.log_every",
    "data.root",
    "data.download",
    "data.num_workers",
    "data.eval_batch_size",
)


def protocol_of(cfg: DictConfig) -> dict[str, Any]:
    protocol = OmegaConf.to_container(cfg, resolve=True)
    for dotted in NON_PROTOCOL_KEYS:
        *parents, leaf = dotted.split(".")
        node = protocol
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return protocol


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
