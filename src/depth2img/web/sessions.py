"""Per-browser state: each session's own folder of results and its Stop flag.

gradio gives every page load (and every ``gradio_client.Client``) a ``session_hash``; results are written to
that session's own temporary folder and returned only to it, so two browsers never see each other's images.
The folders live under one server-wide temporary root, removed when the session ends (tab closed) or the
server stops.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

__all__ = ["Session", "Sessions"]


class Session:
    """One browser session: where its files go, and whether it asked to stop the running generation."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.stop = threading.Event()
        self.runs = 0

    def new_run_folder(self) -> Path:
        """A fresh folder for one run's files (names inside a run never collide with another run's)."""
        self.runs += 1
        folder = self.folder / f"run-{self.runs:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder


class Sessions:
    """All live sessions, by gradio's ``session_hash``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="depth2img-serve-"))
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, session_hash: str | None) -> Session:
        """The session for ``session_hash``, created on first use."""
        key = session_hash or "anonymous"
        with self._lock:
            if key not in self._sessions:
                folder = Path(tempfile.mkdtemp(prefix="session-", dir=self.root))
                self._sessions[key] = Session(folder)
            return self._sessions[key]

    def end(self, session_hash: str | None) -> None:
        """Forget a session and delete its files (its tab was closed)."""
        with self._lock:
            session = self._sessions.pop(session_hash or "anonymous", None)
        if session is not None:
            session.stop.set()  # a run still going for a closed tab has nobody to show its images to
            shutil.rmtree(session.folder, ignore_errors=True)

    def close(self) -> None:
        """Delete every session's files (the server is stopping)."""
        shutil.rmtree(self.root, ignore_errors=True)
