"""Test hook: `FINETUNE_CRASH_AT=<name>` kills the process with a real SIGKILL at that point, so the
exactly-once tests can stop the bot at the precise moments that matter. Never set in production."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)


def crash_point(name: str) -> None:
    if os.environ.get("FINETUNE_CRASH_AT") == name:
        log.warning("FINETUNE_CRASH_AT=%s: killing this process now", name)
        os.kill(os.getpid(), signal.SIGKILL)
