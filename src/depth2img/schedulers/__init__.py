"""Noise schedulers: one sampling algorithm per file, sharing ``base.py``."""

from .base import SchedulerMixin, SchedulerOutput

__all__ = ["SchedulerMixin", "SchedulerOutput"]
