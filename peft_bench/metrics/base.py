"""What the trainer needs from a task's evaluator."""

from __future__ import annotations

from typing import Any, Protocol


class Evaluator(Protocol):
    """Accumulates predictions over a split (across DDP ranks) and reports metrics in percent."""

    def reset(self) -> None: ...

    def update(self, predictions: Any, targets: Any) -> None: ...

    def compute(self) -> dict[str, float]: ...
