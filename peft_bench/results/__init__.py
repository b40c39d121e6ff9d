"""The run store and run identity."""

from peft_bench.results.store import load_history, load_runs

__all__ = ["load_history", "load_runs"]
