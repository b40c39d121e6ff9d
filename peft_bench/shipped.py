"""The checkpoints shipped with the package, and the revision of each.

`mini` is a size's own pretraining on the embedded upstream task (`python -m peft_bench.pretrain
backbone=<size>`), shipped for the sizes that have no hub weights, each file beside a sidecar JSON
with the command, the config, the upstream metrics and the SHA-256. A shipped file replaced by
another pretraining keeps its name and gains a revision (the sidecar's `revision`; 1 where it has
none), which enters the protocol hash (`peft_bench.results.protocol`): runs on the new weights never
pass for runs on the old ones. A module of its own, above the folders and importing no torch: the
backbones load these files, and the protocol hash, on the lowest floor, reads their revisions.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from peft_bench.errors import UserError
from peft_bench.registry import BACKBONES, BackboneEntry

PRETRAINED_DIR = Path(__file__).parent / "backbones" / "pretrained"
FIRST_REVISION = 1


def shipped_path(entry: BackboneEntry, key: str) -> Path:
    """The file of a checkpoint shipped for `entry`."""
    return PRETRAINED_DIR / entry.shipped[key]


def shipped_files(key: str) -> dict[str, Path]:
    """Every size's shipped checkpoint named `key` (e.g. `mini`), by size."""
    return {name: shipped_path(e, key) for name, e in BACKBONES.items() if key in e.shipped}


def sidecar_of(checkpoint: Path) -> Path:
    """The JSON beside a shipped or exported checkpoint."""
    return checkpoint.with_suffix(".json")


def shipped_revision(entry: BackboneEntry, key: str) -> int:
    """The revision of the checkpoint shipped for `entry` as `key`."""
    return _revision(sidecar_of(shipped_path(entry, key)))


@cache
def _revision(sidecar: Path) -> int:
    return int(_read_sidecar(sidecar).get("revision", FIRST_REVISION))


def export_revision(output: Path, run_id: str) -> int:
    """The revision of a checkpoint about to be exported from the run `run_id` to `output`: that of
    the file it replaces if that came from the same run (an export repeated: the same weights, though
    not the same bytes, as safetensors orders its metadata freely), the next one if from another run
    or of unknown origin, the first where there is none."""
    replaced = _read_sidecar(sidecar_of(output))
    if not replaced:
        return FIRST_REVISION
    revision = int(replaced.get("revision", FIRST_REVISION))
    return revision if replaced.get("run_id") == run_id else revision + 1


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    """A sidecar's fields; none where there is no sidecar."""
    if not sidecar.is_file():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except json.JSONDecodeError as error:
        raise UserError(
            f"the checkpoint sidecar {sidecar} is not valid JSON ({error}): restore it (git checkout -- "
            "the file) or export the checkpoint again with python -m peft_bench.pretrain."
        ) from error
