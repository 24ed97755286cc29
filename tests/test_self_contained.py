"""A plain clone of the repository, with nothing beside it, must pass its own tests."""

from __future__ import annotations

import re
import subprocess

from tests.self_contained import REPO, leaves_repository

# A reference to a folder beside the repository, the way the old layout had one.
_OUTSIDE_REFERENCE = re.compile(r"\.\./shared|parents\[\d\]\.parent")


def test_no_code_test_or_ci_script_refers_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "bot", "tests", "bench", ".ci", "pyproject.toml", "Procfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked, "git ls-files found nothing: is this a clone?"
    offenders = [
        path
        for path in tracked
        if path.endswith((".py", ".toml", "run", "Procfile"))
        and path != "tests/test_self_contained.py"
        and _OUTSIDE_REFERENCE.search((REPO / path).read_text(errors="replace"))
    ]
    assert offenders == []


def test_the_specs_the_tests_need_are_in_the_repository_with_their_licences() -> None:
    specs = REPO / "tests" / "specs"
    for name in (
        "openai-fine-tuning.openapi.json",
        "OPENAI-OPENAPI-LICENSE",
        "README.md",
        "slack-manifest/manifest.schema.1.0.0.json",
        "slack-manifest/LICENSE",
    ):
        assert (specs / name).is_file(), name


def test_the_guard_tells_inside_from_beside() -> None:
    # The session-wide audit hook (tests/conftest.py) relies on this distinction.
    assert leaves_repository(REPO.parent / "beside" / "x.json")
    assert leaves_repository("../beside/x.json", cwd=str(REPO))
    assert not leaves_repository(REPO / "tests" / "specs" / "x.json")
    assert not leaves_repository("/tmp/bot-workdir/finetune-bot.db")
    assert not leaves_repository(3)
