"""`manifest.yml` is what a user pastes into Slack: it must validate against Slack's own schema and
declare what the bot relies on."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from bot.listeners.shortcuts import SHORTCUT_CALLBACK

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "tests" / "specs" / "slack-manifest" / "manifest.schema.1.0.0.json"


def load_manifest() -> dict:
    return yaml.safe_load((REPO / "manifest.yml").read_text())


def test_manifest_validates_against_slacks_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(load_manifest()), key=str)
    assert [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors] == []


def test_manifest_declares_the_command_and_the_scopes_the_bot_uses() -> None:
    manifest = load_manifest()
    commands = [c["command"] for c in manifest["features"]["slash_commands"]]
    assert commands == ["/finetune"]
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    # chat:write for posts, im:write for the DM fallback, *:history for the exactly-once check,
    # files:write for the completion report's chart.
    needed = {"commands", "chat:write", "im:write", "channels:history", "groups:history", "files:write"}
    assert needed <= scopes


def test_manifest_declares_the_create_forms_surfaces() -> None:
    """Issue 14: the message shortcut, the file menus' options URL and reading uploaded files."""
    manifest = load_manifest()
    shortcuts = manifest["features"]["shortcuts"]
    assert [(s["type"], s["callback_id"]) for s in shortcuts] == [("message", SHORTCUT_CALLBACK)]
    interactivity = manifest["settings"]["interactivity"]
    assert interactivity["message_menu_options_url"].endswith("/slack/events")
    assert interactivity["message_menu_options_url"] == interactivity["request_url"]
    assert "files:read" in manifest["oauth_config"]["scopes"]["bot"]
