"""Guard: nothing the test suite opens lies beside the repository (a user's clone has nothing there).

An audit hook (PEP 578) sees every `open` and directory listing in the pytest process; paths inside
the repository's parent folder but outside the repository itself are recorded, and the session
fails at its end if there are any (tests/conftest.py). Bot subprocesses are covered by the static
check in tests/test_self_contained.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_OUTSIDE: list[str] = []
_WATCHED_EVENTS = frozenset({"open", "os.listdir", "os.scandir"})


def leaves_repository(path: object, *, cwd: str | None = None) -> bool:
    """True for a path beside the repository: under its parent folder, not under the repository."""
    if isinstance(path, int) or path is None:
        return False
    try:
        raw = os.fsdecode(path)  # type: ignore[arg-type]
    except TypeError:
        return False
    full = os.path.normpath(os.path.join(cwd or os.getcwd(), raw))
    parent = str(REPO.parent)
    inside_parent = full == parent or full.startswith(parent.rstrip(os.sep) + os.sep)
    inside_repo = full == str(REPO) or full.startswith(str(REPO) + os.sep)
    return inside_parent and not inside_repo


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event in _WATCHED_EVENTS and args and leaves_repository(args[0]):
        _OUTSIDE.append(f"{event} {os.fsdecode(args[0])}")  # type: ignore[arg-type]


def install() -> None:
    if not getattr(install, "done", False):
        sys.addaudithook(_hook)
        install.done = True  # type: ignore[attr-defined]


def paths_opened_outside() -> list[str]:
    return list(_OUTSIDE)
