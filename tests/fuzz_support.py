"""Helpers for the fuzz tests: a per-case time limit (no hang passes unnoticed), the outcome contract, the tally."""

from __future__ import annotations

import contextlib
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from depth2img.errors import Depth2ImgError

TALLY: Counter = Counter()  # (kind, outcome) -> cases; printed at the end of the session (conftest)
CASE_SECONDS = 60  # far beyond any case (milliseconds to a second): only a hang reaches it


@contextlib.contextmanager
def within(seconds: float = CASE_SECONDS) -> Iterator[None]:
    """Fail with TimeoutError when the block runs longer than ``seconds`` (SIGALRM: main thread, POSIX)."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"a fuzz case ran for more than {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(kind: str, action: Callable[[], Any], check_result: Callable[[Any], None] | None = None) -> str:
    """Run ``action``: it must return (then ``check_result`` must accept the result) or raise one of our errors
    whose message is one non-empty line. Anything else — a raw exception, a hang — fails the test. Tallied."""
    try:
        with within():
            result = action()
    except Depth2ImgError as error:
        message = str(error)
        assert message.strip() and "\n" not in message, f"{kind}: not one line: {message!r}"
        assert "weights_only=False" not in message, message
        ended = f"refused: {type(error).__name__}"
    else:
        if check_result is not None:
            check_result(result)
        ended = "accepted"
    TALLY[(kind, ended)] += 1
    return ended
