"""Every setting the bot reads is documented where an operator looks: the README's Configuration
table and `python -m bot --help`."""

from __future__ import annotations

import re

from bot.main import USAGE
from tests.bot_process import REPO

# How bot/config.py reads a variable: text("X"), number("X", …), required("X", …), id_list, url.
_READ = re.compile(r"\b(?:text|number|required|id_list|url)\(\s*\"([A-Z][A-Z0-9_]+)\"")


def settings_read() -> set[str]:
    names = set(_READ.findall((REPO / "bot" / "config.py").read_text()))
    assert "SLACK_BOT_TOKEN" in names and "DATABASE_URL" in names  # the pattern still matches
    return names


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Configuration") :]
    rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", table, flags=re.M))
    rows |= set(re.findall(r"^\| `[A-Z_]+` / `([A-Z][A-Z0-9_]+)`", table, flags=re.M))
    assert sorted(settings_read() - rows) == []


def test_every_setting_is_in_the_help_text() -> None:
    assert sorted(name for name in settings_read() if name not in USAGE) == []
