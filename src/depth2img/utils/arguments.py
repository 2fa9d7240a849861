"""One error for keyword arguments a loader does not take, worded the same by every loader."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["refuse_unknown_arguments"]


def refuse_unknown_arguments(caller: str, given: Iterable[str], known: Iterable[str], accepted: str) -> None:
    """Raise ``TypeError`` naming the arguments in ``given`` that are not ``known``, and what ``caller`` accepts."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"{caller} got unknown argument(s) {', '.join(unknown)}; accepted: {accepted}")
