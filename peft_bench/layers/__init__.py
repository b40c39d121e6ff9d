"""Torch-only building blocks below every backbone family: block slots, bottlenecks, merging.

Nothing here knows a family, a method or a task.
"""
