"""What a run costs, measured while it trains: step time, throughput and peak memory.

Researchers choose a method by its score against what it costs, so every run record carries these
(`cost` in `metrics.json`), measured in the process that trains (rank 0 under DDP), over the steps
that process ran (after a resume, those since it).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

WARMUP_STEPS = 5  # the first steps (allocator, autotuning, lazy init) are not timed
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


class StepTimer:
    """Durations of training steps, without a host sync per step.

    On CUDA each step is bracketed by two events, read once the device has passed them (the time the
    device spent between them); on the CPU, where a step is synchronous, by the wall clock.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds: list[float] = []
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def step(self) -> Iterator[None]:
        if not self.cuda:
            start = time.perf_counter()
            yield
            self.seconds.append(time.perf_counter() - start)
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self._pending.append((start, end))
        self._collect(wait=False)

    def _collect(self, wait: bool) -> None:
        while self._pending and (wait or self._pending[0][1].query()):
            start, end = self._pending.pop(0)
            end.synchronize()
            self.seconds.append(start.elapsed_time(end) / 1000)

    def median(self) -> float | None:
        """The median step after the warm-up (half the steps, if the run is shorter); None: no step."""
        self._collect(wait=True)
        timed = self.seconds[min(WARMUP_STEPS, len(self.seconds) // 2) :]
        return statistics.median(timed) if timed else None


class Throughput:
    """Images and seconds summed over calls (evaluation loops), as images per second."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.images = 0
        self.seconds = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        self._sync()  # queued training work is not the evaluation's
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds += time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds else None


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak-memory watermark now: CUDA's allocator statistics, or the process's peak
    resident set (Linux: `clear_refs`; elsewhere the watermark stays the process's lifetime peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with suppress(OSError):
        CLEAR_REFS.write_text("5")


def peak_memory(device: torch.device) -> dict[str, Any]:
    """The peak since `reset_peak_memory`: on CUDA the allocated and reserved bytes, on the CPU the
    process's peak resident set (which includes the data and libraries every method loads alike)."""
    if device.type == "cuda":
        return {
            "peak_mem_bytes": torch.cuda.max_memory_allocated(device),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
            "mem_source": "cuda_max_allocated",
        }
    return {"peak_mem_bytes": _peak_rss_bytes(), "peak_reserved_bytes": None, "mem_source": "peak_rss"}


def _peak_rss_bytes() -> int:
    if STATUS.exists():
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kilobytes elsewhere
