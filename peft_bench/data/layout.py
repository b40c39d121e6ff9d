"""Missing data: a fast check of the files a loader opens, and one paragraph on how to fix it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from peft_bench.config import DataConfig
from peft_bench.errors import UserError


@dataclass(frozen=True)
class Layout:
    required: tuple[str, ...]  # relative to the dataset folder, checked in order
    tree: str  # the expected layout, quoted in the error
    downloadable: bool  # torchvision can download the dataset


def not_found(cfg: DataConfig, problem: str, layout: Layout) -> UserError:
    fix = "set data.root=<the folder that holds this layout>"
    if layout.downloadable:
        fix += ", or data.download=true on a connected machine to let torchvision download it"
    return UserError(f"Dataset {cfg.name!r}: {problem}. Expected layout: {layout.tree}. To fix it, {fix}.")


def data_root(cfg: DataConfig, layout: Layout) -> Path:
    if cfg.root is None:
        raise not_found(cfg, "data.root is not set", layout)
    return Path(cfg.root).expanduser()


def first_missing(folder: Path, layout: Layout) -> Path | None:
    return next((folder / r for r in layout.required if not (folder / r).exists()), None)


def require(cfg: DataConfig, folder: Path, layout: Layout) -> None:
    """Fail before any loader runs, naming the first missing path (a few stat calls, no scan)."""
    missing = first_missing(folder, layout)
    if missing is not None:
        raise not_found(cfg, f"{missing} does not exist (data.root={cfg.root})", layout)


@contextmanager
def torchvision_not_found(cfg: DataConfig, layout: Layout) -> Iterator[None]:
    """Turn torchvision's "Dataset not found" and ImageFolder's empty folders into a UserError."""
    try:
        yield
    except (RuntimeError, FileNotFoundError) as error:
        if isinstance(error, RuntimeError) and not str(error).startswith("Dataset not found"):
            raise
        raise not_found(cfg, f"torchvision could not load it from {cfg.root}: {error}", layout) from error
