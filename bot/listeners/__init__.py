"""Every Slack surface the bot listens on, registered in one place."""

from slack_bolt.async_app import AsyncApp

from bot.clock import SYSTEM_CLOCK, Clock
from bot.inflight import InFlight
from bot.listeners import actions, commands, shortcuts, training, views
from bot.listeners.actions import RefreshCard
from bot.metrics import Metrics
from bot.runner import CommandRunner
from bot.training_flow import TrainingFlow


def register_listeners(
    app: AsyncApp,
    runner: CommandRunner,
    *,
    default_model: str,
    inflight: InFlight,
    allowed_channels: frozenset[str] = frozenset(),
    refresh_card: RefreshCard | None = None,
    training_flow: TrainingFlow | None = None,
    metrics: Metrics | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    # Every surface counts what each request came to (bot/metrics.py). A reply that Slack refused
    # for now is retried after a wait on `clock`.
    metrics = metrics or Metrics()
    commands.register(
        app,
        runner,
        default_model=default_model,
        inflight=inflight,
        allowed_channels=allowed_channels,
        metrics=metrics,
        sleep=clock.sleep,
    )
    # `refresh_card`: how a Refresh click edits a job's card (default: re-render the announcement).
    actions.register(
        app,
        runner,
        inflight=inflight,
        allowed_channels=allowed_channels,
        refresh_card=refresh_card,
        metrics=metrics,
        sleep=clock.sleep,
    )
    # The create form: its submission and its file menus; the message shortcut that opens it.
    views.register(
        app,
        runner,
        default_model=default_model,
        inflight=inflight,
        allowed_channels=allowed_channels,
        metrics=metrics,
    )
    shortcuts.register(
        app, runner, inflight=inflight, allowed_channels=allowed_channels, metrics=metrics, sleep=clock.sleep
    )
    # The training report's Start fine-tuning button.
    if training_flow is not None:
        training.register(
            app,
            training_flow,
            inflight=inflight,
            allowed_channels=allowed_channels,
            metrics=metrics,
            sleep=clock.sleep,
        )
