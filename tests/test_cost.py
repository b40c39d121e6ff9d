"""What a run costs (`peft_bench.engine.cost`): which steps the median reads, and the CPU's peak memory
watermark. The record's cost fields are checked end to end in tests/test_cli.py; no timing is
asserted anywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from peft_bench.engine.cost import WARMUP_STEPS, StepTimer, peak_memory, reset_peak_memory

CPU = torch.device("cpu")


def test_the_median_step_leaves_out_the_warm_up() -> None:
    timer = StepTimer(CPU)
    timer.seconds = [9.0] * WARMUP_STEPS + [1.0, 3.0, 2.0] * 4
    assert timer.median() == 2.0


def test_a_short_run_times_its_second_half_and_no_step_gives_none() -> None:
    timer = StepTimer(CPU)
    assert timer.median() is None
    timer.seconds = [9.0, 1.0, 2.0]
    assert timer.median() == 1.5
    with timer.step():
        pass
    assert len(timer.seconds) == 4 and timer.seconds[-1] >= 0.0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's peak-RSS reset")
def test_the_cpu_peak_is_the_process_peak_since_the_reset() -> None:
    size = 400 * 2**20
    reset_peak_memory(CPU)
    before = peak_memory(CPU)["peak_mem_bytes"]
    block = np.ones(size // 8)  # touched: resident
    with_block = peak_memory(CPU)["peak_mem_bytes"]
    assert with_block - before >= 0.9 * size
    del block
    reset_peak_memory(CPU)
    after = peak_memory(CPU)
    assert after["peak_mem_bytes"] < with_block - 0.9 * size
    assert after["mem_source"] == "peak_rss" and after["peak_reserved_bytes"] is None
