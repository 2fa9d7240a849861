"""``OUTDIR/batch.jsonl``: one JSON line per finished or failed job, appended atomically.

Locally each line goes out in a single ``write`` on a file opened with ``O_APPEND``, so lines never interleave
and a killed process loses at most the line being written (what was written is in the kernel's page cache: a
kill cannot lose it; it is not fsynced, like the images, so a power cut can); a torn last line is ended with a
newline on the next run and skipped by ``read_journal``. For an fsspec OUTDIR,
where objects cannot be appended to, the whole journal is rewritten atomically on each line.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..utils.files import atomic_write_bytes
from .store import LocalStore, Store

__all__ = ["JOURNAL_NAME", "Journal", "read_journal"]

JOURNAL_NAME = "batch.jsonl"


class Journal:
    """Appends records to OUTDIR's journal; open it once per run."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.location = store.location(JOURNAL_NAME)
        if isinstance(store, LocalStore):
            self._fd: int | None = os.open(self.location, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._end_torn_line()
            self._text = b""
        else:
            self._fd = None
            self._text = store.read_bytes(JOURNAL_NAME) if store.exists(JOURNAL_NAME) else b""
            if self._text and not self._text.endswith(b"\n"):
                self._text += b"\n"

    def _end_torn_line(self) -> None:
        with open(self.location, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                os.write(self._fd, b"\n")

    def append(self, record: dict[str, Any]) -> None:
        """Add one record (a ``time`` field is added: UTC, ISO 8601, milliseconds)."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        record = {"time": stamp, **record}
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        if self._fd is not None:
            os.write(self._fd, line)
            return
        self._text += line
        with self.store.output_file(JOURNAL_NAME) as path:
            atomic_write_bytes(path, self._text)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_journal(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a local journal, in order; a torn or invalid line is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
