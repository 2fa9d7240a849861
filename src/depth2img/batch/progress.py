"""The batch's progress bar: jobs done out of jobs to do, with tqdm's ETA and the rate in images per minute."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm

__all__ = ["JobProgress"]


class JobProgress:
    def __init__(self, total: int, quiet: bool) -> None:
        self.bar = tqdm(total=total, unit="img", desc="batch", disable=quiet or total == 0, file=sys.stderr)
        self.started = time.perf_counter()
        self.count = 0

    def advance(self, record: dict[str, Any]) -> None:
        self.count += 1
        minutes = (time.perf_counter() - self.started) / 60
        self.bar.set_postfix_str(f"{self.count / minutes:.1f} img/min" if minutes > 0 else "", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
