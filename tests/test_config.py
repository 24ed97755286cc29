from __future__ import annotations

import pytest

from bot.config import DEFAULT_MODEL, Settings, load_settings

BASE = {"SLACK_BOT_TOKEN": "xoxb-1-abc", "SLACK_SIGNING_SECRET": "s3cret", "OPENAI_API_KEY": "sk-abc123"}


def test_defaults() -> None:
    settings = load_settings(BASE)
    assert isinstance(settings, Settings)
    assert settings.slack_api_url == "https://slack.com/api/"
    assert settings.openai_base_url == "https://api.openai.com/v1"
    assert settings.default_model == DEFAULT_MODEL
    assert settings.database_url.startswith("sqlite:///")
    assert (settings.poll_interval_seconds, settings.port, settings.log_level) == (30.0, 3000, "INFO")
    assert not settings.socket_mode


def test_overrides() -> None:
    settings = load_settings(
        {
            **BASE,
            "SLACK_APP_TOKEN": "xapp-1-xyz",
            "SLACK_API_URL": "http://127.0.0.1:9/api",
            "OPENAI_BASE_URL": "http://127.0.0.1:8/v1/",
            "OPENAI_ORGANIZATION": "org-1",
            "OPENAI_PROJECT": "proj_1",
            "DEFAULT_MODEL": "gpt-4.1-mini-2025-04-14",
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
            "POLL_INTERVAL_SECONDS": "2.5",
            "PORT": "8080",
            "LOG_LEVEL": "debug",
        }
    )
    assert isinstance(settings, Settings)
    assert settings.socket_mode
    assert settings.slack_api_url == "http://127.0.0.1:9/api/"
    assert settings.openai_base_url == "http://127.0.0.1:8/v1"
    assert (settings.openai_organization, settings.openai_project) == ("org-1", "proj_1")
    assert (settings.poll_interval_seconds, settings.port, settings.log_level) == (2.5, 8080, "DEBUG")


def test_socket_mode_needs_no_signing_secret() -> None:
    env = {k: v for k, v in BASE.items() if k != "SLACK_SIGNING_SECRET"}
    assert isinstance(load_settings({**env, "SLACK_APP_TOKEN": "xapp-1"}), Settings)
    problems = load_settings(env)
    assert isinstance(problems, list) and any("SLACK_SIGNING_SECRET" in p for p in problems)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SLACK_BOT_TOKEN": ""}, "SLACK_BOT_TOKEN"),
        ({"SLACK_BOT_TOKEN": "xoxp-user"}, "SLACK_BOT_TOKEN"),
        ({"SLACK_APP_TOKEN": "xoxb-wrong"}, "SLACK_APP_TOKEN"),
        ({"OPENAI_API_KEY": ""}, "OPENAI_API_KEY"),
        ({"SLACK_API_URL": "slack.com/api"}, "SLACK_API_URL"),
        ({"OPENAI_BASE_URL": "ftp://x"}, "OPENAI_BASE_URL"),
        ({"DEFAULT_MODEL": "gpt 4"}, "DEFAULT_MODEL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"POLL_INTERVAL_SECONDS": "0"}, "POLL_INTERVAL_SECONDS"),
        ({"POLL_INTERVAL_SECONDS": "soon"}, "POLL_INTERVAL_SECONDS"),
        ({"PORT": "70000"}, "PORT"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"FINETUNE_ADMINS": "U123,alice"}, "FINETUNE_ADMINS"),
        ({"FINETUNE_ALLOWED_CHANNELS": "#general"}, "FINETUNE_ALLOWED_CHANNELS"),
        ({"OPENAI_WEBHOOK_SECRET": "whsec_"}, "OPENAI_WEBHOOK_SECRET"),
        ({"RECONCILE_INTERVAL_SECONDS": "-5"}, "RECONCILE_INTERVAL_SECONDS"),
    ],
)
def test_each_problem_names_its_variable(env: dict[str, str], name: str) -> None:
    problems = load_settings({**BASE, **env})
    assert isinstance(problems, list)
    assert len(problems) == 1 and problems[0].startswith(name), problems


def test_all_problems_reported_together_and_secrets_kept_out_of_repr() -> None:
    problems = load_settings({"PORT": "x"})
    assert isinstance(problems, list)
    names = " ".join(problems)
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "OPENAI_API_KEY", "PORT"):
        assert name in names
    settings = load_settings({**BASE, "DATABASE_URL": "postgresql://u:pw-secret@h/db"})
    assert isinstance(settings, Settings)
    for secret in ("xoxb-1-abc", "s3cret", "sk-abc123", "pw-secret"):
        assert secret not in repr(settings)
        assert secret in settings.secrets()


def test_access_lists_and_webhooks() -> None:
    settings = load_settings(
        {
            **BASE,
            "FINETUNE_ADMINS": "U0ADMIN1, W0ADMIN2",
            "FINETUNE_ALLOWED_CHANNELS": "C0ML C0OPS",
            "OPENAI_WEBHOOK_SECRET": "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHM=",
        }
    )
    assert isinstance(settings, Settings)
    assert settings.admins == {"U0ADMIN1", "W0ADMIN2"}
    assert settings.allowed_channels == {"C0ML", "C0OPS"}
    assert settings.webhooks_enabled and settings.effective_poll_interval == 300.0
    assert "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHM=" in settings.secrets()
    assert "whsec_" not in repr(settings)
