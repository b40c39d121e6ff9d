"""A preset's grid of cells, each with its composed config and protocol hash.

A cell is one job of `python -m peft_bench -m experiment=<preset> ...`. The grid is expanded by
Hydra's own basic sweeper (the preset's `hydra.sweeper.params` first, the command's arguments
after, a repeated key replaced in place), so the reporter's cells are exactly the jobs a sweep runs,
and their protocol hashes are those the runs record.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from peft_bench.errors import UserError
from peft_bench.plugins import config_session
from peft_bench.results.protocol import protocol_hash
from peft_bench.tuning import apply_chosen


@dataclass(frozen=True)
class Part:
    """One sweep command of a table beyond `experiment=<preset>`: its extra overrides."""

    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cell:
    overrides: tuple[str, ...]  # everything composed, as the sweep's job receives it
    cfg: DictConfig
    protocol: str


def jobs(arguments: Sequence[str], sweep_params: Mapping[str, object]) -> list[list[str]]:
    """The override lists of a sweep's jobs, expanded as Hydra's basic sweeper does."""
    params = [f"{key}={value}" for key, value in sweep_params.items()]
    overrides = OverridesParser.create().parse_overrides([*params, *arguments])
    (batch,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return batch


def sweep_params(arguments: Sequence[str]) -> Mapping[str, object]:
    """The preset's `hydra.sweeper.params`, from the config as a multirun composes it: without the
    arguments that are themselves sweeps (a list given on the command line replaces the preset's)."""
    fixed = [
        o.input_line for o in OverridesParser.create().parse_overrides(arguments) if not o.is_sweep_override()
    ]
    return compose(config_name="config", overrides=fixed, return_hydra_config=True).hydra.sweeper.params or {}


_composed: ContextVar[dict[tuple, list[Cell]] | None] = ContextVar("composed", default=None)


@contextmanager
def composed_once() -> Iterator[None]:
    """Within it, each preset's cells are composed once (per parts and overrides), however many
    targets read them: one report's tables, cost tables, figures and ranks share them. Composing is
    most of a report's time; the store, whose choices enter some cells, does not change meanwhile."""
    token = _composed.set({})
    try:
        yield
    finally:
        _composed.reset(token)


def preset_cells(preset: str, parts: Sequence[Part] = (Part(),), overrides: Sequence[str] = ()) -> list[Cell]:
    """The cells of `experiment=<preset>`, one sweep per part, with `overrides` added to every job
    (as on the sweep's command line). Cells of the same protocol from two parts are one cell."""
    memo, key = _composed.get(), (preset, tuple(parts), tuple(overrides))
    if memo is not None and key in memo:
        return list(memo[key])
    cells: dict[str, Cell] = {}
    with config_session():
        known = GlobalHydra.instance().config_loader().get_group_options("experiment")
        if preset not in known:
            raise UserError(
                f"No preset {preset!r} in the config group experiment; known: {', '.join(known)}."
            )
        for part in parts:
            arguments = [f"experiment={preset}", *part.overrides, *overrides]
            for job in jobs(arguments, sweep_params(arguments)):
                cfg = compose(config_name="config", overrides=job)
                apply_chosen(cfg)  # as the run does before it hashes its protocol
                cell = Cell(tuple(job), cfg, protocol_hash(cfg))
                cells.setdefault(cell.protocol, cell)
    if memo is not None:
        memo[key] = list(cells.values())
    return list(cells.values())
