"""Model selection for every loader: which split selects the model (`data.selection_split`, set by
`protocol=`: `conf/protocol`), the stratified hold-out of the harness's protocol, and the words that
say in the run record where each split came from."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from peft_bench.config import DataConfig, Selection
from peft_bench.errors import UserError


def selection_of(cfg: DataConfig) -> Selection:
    """`data.selection_split` as a `Selection`; any other value fails with the choices named."""
    try:
        return Selection(cfg.selection_split)
    except ValueError:
        choices = ", ".join(s.value for s in Selection)
        raise UserError(
            f"data.selection_split must be one of {choices}, got {cfg.selection_split!r}: choose the "
            "protocol instead, with protocol=harness (val), paper or vtab (none), vtab_tune (val) or "
            "test_max (test)."
        ) from None


def stratified_holdout(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into (kept, held out), holding out `fraction` of every class, from `seed` alone.

    Each class gives round(fraction * n) samples, but at least one and never all of them (a class of
    one stays in training), so that val covers every class even on small datasets.
    """
    if not 0 < fraction < 1:
        raise UserError(f"data.val_fraction must lie strictly between 0 and 1, got {fraction}.")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    held: set[int] = set()
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(max(math.floor(fraction * len(members) + 0.5), 1), len(members) - 1)
        held.update(members[:count].tolist())
    return [i for i in range(len(labels)) if i not in held], sorted(held)


def without_holdout(selection: Selection, test: Dataset, trained_on: str) -> tuple[Dataset | None, str]:
    """The val split and its description where nothing is held out of the training data
    (`selection` test or none): the test split itself, or no val split at all."""
    if selection is Selection.test:
        return test, f"test: the best checkpoint on the test split (optimistic); trained on {trained_on}"
    return None, f"none (no model selection): trained on {trained_on}; the last checkpoint is reported"
