"""Every Slack surface the bot listens on, registered in one place."""

from slack_bolt.async_app import AsyncApp

from bot.inflight import InFlight
from bot.listeners import actions, commands, shortcuts, views
from bot.listeners.actions import RefreshCard
from bot.runner import CommandRunner


def register_listeners(
    app: AsyncApp,
    runner: CommandRunner,
    *,
    default_model: str,
    inflight: InFlight,
    allowed_channels: frozenset[str] = frozenset(),
    refresh_card: RefreshCard | None = None,
) -> None:
    commands.register(
        app, runner, default_model=default_model, inflight=inflight, allowed_channels=allowed_channels
    )
    # `refresh_card`: how a Refresh click edits a job's card (default: re-render the announcement).
    actions.register(
        app, runner, inflight=inflight, allowed_channels=allowed_channels, refresh_card=refresh_card
    )
    # The create form: its submission and its file menus; the message shortcut that opens it.
    views.register(
        app, runner, default_model=default_model, inflight=inflight, allowed_channels=allowed_channels
    )
    shortcuts.register(app, runner, inflight=inflight, allowed_channels=allowed_channels)
