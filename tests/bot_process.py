"""Run `python -m bot` as a real subprocess, configured the way an operator would configure it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import httpx

REPO = Path(__file__).resolve().parents[1]

SIGNING_SECRET = "test-signing-secret-8f2a41c9d0"
OPENAI_KEY = "sk-test-fake-openai-key-0000000000"
BOT_TOKEN = "xoxb-test-fake-bot-token"
APP_TOKEN = "xapp-test-fake-app-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SECRET_VARIABLES = (
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "OPENAI_API_KEY",
    "OPENAI_WEBHOOK_SECRET",
)


class BotProcess:
    # Every bot this test session started, for the session-wide secret scan (tests/conftest.py).
    started: ClassVar[list[BotProcess]] = []

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.port = int(env.get("PORT") or free_port())
        self.env = {
            # A clean environment: nothing from the developer's shell (or a real key) leaks in.
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "DEBUG",
            **env,
            "PORT": str(self.port),
        }
        self.workdir = workdir
        self.log_path = workdir / f"bot-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def secrets(self) -> list[str]:
        """The configured secrets of this process: none may ever appear in its logs."""
        return [self.env[name] for name in SECRET_VARIABLES if self.env.get(name)]

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> BotProcess:
        BotProcess.started.append(self)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot"],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"bot exited with {self.process.returncode}:\n{self.logs}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"bot not healthy within {timeout}s:\n{self.logs}")

    @property
    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"bot ignored SIGTERM for {timeout}s:\n{self.logs}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_bot_once(
    env: dict[str, str], workdir: Path, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run `python -m bot` to completion (for configuration errors, which exit at once)."""
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=workdir,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
