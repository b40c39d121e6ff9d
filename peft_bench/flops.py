"""FLOPs (and the step memory account) for run records made before runs counted them, from each
record's stored config.

    python -m peft_bench.flops results/mini/store [--device cpu|cuda|auto]

A run counts its FLOPs and accounts its step's memory at start-up (`peft_bench.engine.flops`) and
keeps them in its record's `flops`. For a record without them (recorded before), without the step
memory (counted before it was), or with the error that kept its run from counting them, this
rebuilds the run's config from its `config.yaml` (the config groups it names, composed anew, with
every stored value that the schema still has, and keys added since at their `NEUTRAL` value), checks
that it hashes to the record's protocol, builds data and model as the run did (on random weights:
counts follow shapes, not weights, but where a head's shapes follow its predictions,
`peft_bench.engine.flops`) and counts as a run counts, once per protocol and per-device batch; then
adds `flops` to each such record, marked `"source": "config"`. Nothing else in a record changes. A
record whose config does not recompose to its protocol (a key removed from the schema since), or
whose model fails to count, is left as it was, and named (exit status 1 for the latter).
Running it again fills only what is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from peft_bench.builder import build_data, build_task_model
from peft_bench.config import Device
from peft_bench.engine.distributed import resolve_device
from peft_bench.engine.flops import count_run_flops, preserved_rng
from peft_bench.errors import UserError
from peft_bench.plugins import config_session, load_plugins
from peft_bench.results.protocol import NEUTRAL, protocol_hash
from peft_bench.results.store import RUNS, read_record, write_record

MISSING = object()


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of `tree`; a list, or an empty section, is a leaf."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def recompose(stored: dict[str, Any]) -> DictConfig:
    """The config of a stored (resolved) one in today's schema: its dataset, method and backbone groups
    composed, its values where the schema has the key, keys it lacks at their NEUTRAL value. Call
    within `config_session`."""
    names = {
        group: stored[section]["name"]
        for group, section in (("dataset", "data"), ("method", "method"), ("backbone", "backbone"))
    }
    cfg = compose("config", [f"{group}={name}" for group, name in names.items()])
    values = dict(leaves(stored))
    updates = {key: value for key, value in NEUTRAL.items() if key not in values} | values
    for key, value in updates.items():
        if OmegaConf.select(cfg, key, default=MISSING) is not MISSING:
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def count_config(cfg: DictConfig, per_device: int, device: torch.device) -> dict[str, Any]:
    """The `flops` a run of `cfg` with `per_device` images per process records, counted on `device`."""
    with preserved_rng(device):  # the model's initialisation draws too
        data = build_data(cfg)
        model = build_task_model(cfg, data.num_classes, pretrained=False)
    flops = count_run_flops(model, data, per_device, cfg.data.eval_batch_size, device)
    return {**flops.record(cfg.data.batch_size), "source": "config"}


def complete(flops: dict[str, Any] | None) -> bool:
    """Whether a record's `flops` hold every count a run makes today."""
    return bool(flops) and "error" not in flops and "step_memory_bytes" in flops


def backfill(results_dir: Path, device: torch.device) -> tuple[int, list[str], list[str]]:
    """Add `flops` to every completed or failed record under `results_dir` without them (or without
    the step memory), or whose run failed to count them (out of memory on its device, say); not to a
    running one, which its run may still write. The records filled, the run ids whose config did not
    recompose, and those that failed to count here (why)."""
    records = []
    for path in sorted((results_dir / RUNS).glob("*/metrics.json")):
        record = read_record(path.parent)
        flops = (record or {}).get("flops")
        if record and not complete(flops) and record["status"] in ("completed", "failed"):
            records.append((path.parent, record))
    counted: dict[tuple[str, int], dict[str, Any]] = {}
    skipped, failed = [], []
    with config_session():
        for directory, record in records:
            stored = OmegaConf.to_container(OmegaConf.load(directory / "config.yaml"))
            per_device = (record.get("batch") or {}).get("per_device") or stored["data"]["batch_size"]
            cfg = recompose(stored)
            if protocol_hash(cfg) != record["protocol_hash"]:
                skipped.append(record["run_id"])
                continue
            key = (record["protocol_hash"], per_device)
            if key not in counted:
                try:
                    counted[key] = count_config(cfg, per_device, device)
                except Exception as error:  # one model that cannot be counted does not stop the others
                    counted[key] = {"error": f"{type(error).__name__}: {error}"}
                print(f"{record['run_id']}: {counted[key]}")
            if "error" in counted[key]:
                failed.append(f"{record['run_id']}: {counted[key]['error']}")
                continue
            write_record(directory, {**record, "flops": counted[key]})
    return len(records) - len(skipped) - len(failed), skipped, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path, help="the run store (holds runs/<run_id>/)")
    parser.add_argument("--device", default="cpu", choices=[d.value for d in Device])
    args = parser.parse_args(argv)
    load_plugins()
    try:
        device = resolve_device(args.device)
    except UserError as error:
        parser.error(str(error))
    filled, skipped, failed = backfill(args.results_dir, device)
    print(json.dumps({"filled": filled, "not_recomposed": skipped, "not_counted": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
