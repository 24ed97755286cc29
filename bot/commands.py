"""Parse the text after `/finetune` into a typed command. Pure: no I/O, no Slack, no OpenAI.

Every value is checked here against the spec's ranges before any request is built, so a bad
command costs no HTTP call and gets a message that says what was wrong and what would work.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from bot import ids

LIST_DEFAULT_LIMIT = 10
EVENTS_DEFAULT_LIMIT = 20
CHECKPOINTS_DEFAULT_LIMIT = 10
FILES_DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_SEED = 2_147_483_647
MAX_SUFFIX = 64
METHODS = ("supervised", "dpo")
# What `list status=` accepts: the spec's statuses plus `paused`, which OpenAI returns but the
# spec's enum does not list yet.
LIST_STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")

# Base models (`gpt-4o-mini-2024-07-18`) and fine-tuned ones (`ft:gpt-4o-mini:acme:support:abc123`).
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# OpenAI puts the suffix into a model name; keep to characters that survive there.
SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
OPTION_KEY = re.compile(r"^[a-z_]{1,40}$")
_ECHO_LIMIT = 60


@dataclass(frozen=True)
class HelpCommand:
    pass


@dataclass(frozen=True)
class CreateCommand:
    training_file: str
    model: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    method: str = "supervised"
    # Only the hyperparameters the user set; OpenAI picks `auto` for the rest.
    hyperparameters: dict[str, int | float | str] = field(default_factory=dict)

    def method_payload(self) -> dict[str, Any]:
        """The spec's `method` object; `hyperparameters` at top level is deprecated."""
        payload: dict[str, Any] = {"type": self.method}
        if self.hyperparameters:
            payload[self.method] = {"hyperparameters": dict(self.hyperparameters)}
        return payload


@dataclass(frozen=True)
class OpenCreateFormCommand:
    """`create` with nothing after it: open the create form (a modal) instead."""


@dataclass(frozen=True)
class ValidateCommand:
    """Check a training file already in OpenAI, as the create form checks an upload."""

    file_id: str
    model: str
    method: str = "supervised"


@dataclass(frozen=True)
class FilesCommand:
    """The fine-tune files already uploaded to OpenAI, newest first."""

    limit: int = FILES_DEFAULT_LIMIT


@dataclass(frozen=True)
class ListCommand:
    limit: int = LIST_DEFAULT_LIMIT
    status: str | None = None  # filtered on our side: the API's list has no status filter
    mine: bool = False  # only jobs the person asking started from Slack (metadata `slack_user`)
    after: str | None = None  # the API's cursor: list jobs older than this one (the Next page button)

    def as_text(self) -> str:
        """The command that lists this page again: the Next page button carries it (re-parsed on
        click, so a forged value can ask for nothing a typed command could not)."""
        parts = ["list"]
        if self.mine:
            parts.append("mine")
        if self.status:
            parts.append(f"status={self.status}")
        parts.append(f"limit={self.limit}")
        if self.after:
            parts.append(f"after={self.after}")
        return " ".join(parts)


@dataclass(frozen=True)
class GetCommand:
    job_id: str


@dataclass(frozen=True)
class EventsCommand:
    job_id: str
    limit: int = EVENTS_DEFAULT_LIMIT


@dataclass(frozen=True)
class CancelCommand:
    job_id: str


@dataclass(frozen=True)
class PauseCommand:
    job_id: str


@dataclass(frozen=True)
class ResumeCommand:
    job_id: str


@dataclass(frozen=True)
class CheckpointsCommand:
    job_id: str
    limit: int = CHECKPOINTS_DEFAULT_LIMIT


@dataclass(frozen=True)
class ReportCommand:
    """The loss chart and scorecard of a job, running or finished."""

    job_id: str


@dataclass(frozen=True)
class HistoryCommand:
    """A job's audit trail (who cancelled, paused, watched it…), for admins and its starter."""

    job_id: str


@dataclass(frozen=True)
class WatchCommand:
    """Follow a job in this channel; without an id, list what this channel follows."""

    job_id: str | None = None


@dataclass(frozen=True)
class UnwatchCommand:
    job_id: str


Command = (
    HelpCommand
    | CreateCommand
    | OpenCreateFormCommand
    | FilesCommand
    | ValidateCommand
    | ListCommand
    | GetCommand
    | EventsCommand
    | CancelCommand
    | PauseCommand
    | ResumeCommand
    | CheckpointsCommand
    | ReportCommand
    | HistoryCommand
    | WatchCommand
    | UnwatchCommand
)


@dataclass(frozen=True)
class ParseError:
    """What was wrong (plain text; the renderer escapes it) and the usage line that would work."""

    message: str
    usage: str | None = None
    show_help: bool = False


USAGE = {
    "create": "create <training-file-id> [model=…] [validation_file=file-…] [suffix=…] [epochs=N|auto] "
    "[batch_size=N|auto] [learning_rate_multiplier=X|auto] [seed=N] [method=supervised|dpo] [beta=X|auto]",
    "list": "list [mine] [status=running|queued|paused|succeeded|failed|cancelled|validating_files] "
    "[limit=N]",
    "get": "get <job-id>",
    "files": "files [limit=N]",
    "validate": "validate <file-id> [model=…] [method=supervised|dpo]",
    "events": "events <job-id> [limit=N]",
    "cancel": "cancel <job-id>",
    "pause": "pause <job-id>",
    "resume": "resume <job-id>",
    "checkpoints": "checkpoints <job-id> [limit=N]",
    "report": "report <job-id>",
    "history": "history <job-id>",
    "watch": "watch [<job-id>]",
    "unwatch": "unwatch <job-id>",
}

EXAMPLES = {
    "create": "create file-abc123 model=gpt-4o-mini-2024-07-18 suffix=support epochs=3",
    "list": "list mine status=running limit=20",
    "get": "get ftjob-abc123",
    "files": "files limit=20",
    "validate": "validate file-abc123 model=gpt-4o-mini-2024-07-18",
    "events": "events ftjob-abc123 limit=50",
    "cancel": "cancel ftjob-abc123",
    "pause": "pause ftjob-abc123",
    "resume": "resume ftjob-abc123",
    "checkpoints": "checkpoints ftjob-abc123 limit=5",
    "report": "report ftjob-abc123",
    "history": "history ftjob-abc123",
    "watch": "watch ftjob-abc123",
    "unwatch": "unwatch ftjob-abc123",
}

_ALIASES = {
    "help": "help",
    "create": "create",
    "start": "create",
    "list": "list",
    "ls": "list",
    "get": "get",
    "status": "get",
    "retrieve": "get",
    "show": "get",
    "files": "files",
    "file": "files",
    "validate": "validate",
    "check": "validate",
    "events": "events",
    "logs": "events",
    "cancel": "cancel",
    "pause": "pause",
    "resume": "resume",
    "unpause": "resume",
    "checkpoints": "checkpoints",
    "ckpt": "checkpoints",
    "report": "report",
    "chart": "report",
    "history": "history",
    "audit": "history",
    "watch": "watch",
    "follow": "watch",
    "unwatch": "unwatch",
    "unfollow": "unwatch",
}

_CREATE_OPTIONS = (
    "model",
    "validation_file",
    "suffix",
    "epochs",
    "batch_size",
    "learning_rate_multiplier",
    "seed",
    "method",
    "beta",
)
_OPTION_ALIASES = {"n_epochs": "epochs", "lr": "learning_rate_multiplier", "validation": "validation_file"}


def subcommand_name(text: str) -> str:
    """The canonical subcommand `text` asks for ("help" when empty), or "unknown": a bounded name
    for the metrics, whatever was typed."""
    words = text.split(maxsplit=1)
    return _ALIASES.get(words[0].lower(), "unknown") if words else "help"


def parse_command(text: str, *, default_model: str) -> Command | ParseError:
    tokens = _tokenize(text)
    if not tokens:
        return HelpCommand()
    word = tokens[0].lower()
    name = _ALIASES.get(word)
    if name is None:
        return ParseError(f"I don't know the command `{_echo(tokens[0])}`.", show_help=True)
    args = tokens[1:]
    if name == "help":
        return HelpCommand()
    if name == "create":
        return _parse_create(args, default_model)
    if name == "list":
        return _parse_list(args)
    if name == "files":
        positional, options = _split(args, "files", ("limit",))
        if isinstance(options, ParseError):
            return options
        if positional:
            return _unexpected(positional, "files")
        limit = _parse_limit(options, FILES_DEFAULT_LIMIT, "files")
        return limit if isinstance(limit, ParseError) else FilesCommand(limit)
    if name == "validate":
        return _parse_validate(args, default_model)
    if name == "watch" and not args:
        return WatchCommand()
    # get / events / cancel / pause / resume / checkpoints / report / history / watch / unwatch:
    # one job id.
    allowed = ("limit",) if name in ("events", "checkpoints") else ()
    positional, options = _split(args, name, allowed)
    if isinstance(options, ParseError):
        return options
    job_id = _one_id(positional, name, "job id", ids.JOB_ID, "ftjob-")
    if isinstance(job_id, ParseError):
        return job_id
    if name == "get":
        return GetCommand(job_id)
    if name == "cancel":
        return CancelCommand(job_id)
    if name == "pause":
        return PauseCommand(job_id)
    if name == "resume":
        return ResumeCommand(job_id)
    if name == "checkpoints":
        limit = _parse_limit(options, CHECKPOINTS_DEFAULT_LIMIT, name)
        return limit if isinstance(limit, ParseError) else CheckpointsCommand(job_id, limit)
    if name == "report":
        return ReportCommand(job_id)
    if name == "history":
        return HistoryCommand(job_id)
    if name == "watch":
        return WatchCommand(job_id)
    if name == "unwatch":
        return UnwatchCommand(job_id)
    limit = _parse_limit(options, EVENTS_DEFAULT_LIMIT, name)
    return limit if isinstance(limit, ParseError) else EventsCommand(job_id, limit)


def _parse_list(args: list[str]) -> ListCommand | ParseError:
    positional, options = _split(args, "list", ("limit", "status", "after"))
    if isinstance(options, ParseError):
        return options
    mine = False
    for word in positional:
        if word.lower() != "mine" or mine:
            return _unexpected([word], "list")
        mine = True
    limit = _parse_limit(options, LIST_DEFAULT_LIMIT, "list")
    if isinstance(limit, ParseError):
        return limit
    status = options.get("status")
    if status is not None:
        status = status.lower().replace("-", "_")
        if status == "canceled":  # the American spelling people type; OpenAI's is `cancelled`
            status = "cancelled"
        if status not in LIST_STATUSES:
            valid = ", ".join(f"`{s}`" for s in LIST_STATUSES)
            return ParseError(
                f"`status` must be one of {valid}, not `{_echo(options['status'])}`.", usage=USAGE["list"]
            )
    after = options.get("after")
    if after is not None and not ids.is_job_id(after):
        message = f"`after` must be a job id like `ftjob-abc123`, not `{_echo(after)}`."
        return ParseError(message, usage=USAGE["list"])
    return ListCommand(limit=limit, status=status, mine=mine, after=after)


def _tokenize(text: str) -> list[str]:
    # Slack sends `&`, `<`, `>` escaped; undo that so `&lt;` is judged as the `<` the user typed.
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    tokens = []
    for raw in text.split():
        # People paste ids formatted as code or quoted; the quotes are not part of the id.
        token = raw.strip("`'\"\u201c\u201d\u2018\u2019")
        if token:
            tokens.append(token)
    return tokens


def _split(
    args: list[str], command: str, allowed: tuple[str, ...]
) -> tuple[list[str], dict[str, str] | ParseError]:
    positional: list[str] = []
    options: dict[str, str] = {}
    for arg in args:
        if "=" not in arg:
            positional.append(arg)
            continue
        key, _, value = arg.partition("=")
        key = _OPTION_ALIASES.get(key.lower().lstrip("-"), key.lower().lstrip("-"))
        if key not in allowed:
            valid = ", ".join(f"`{k}`" for k in allowed) if allowed else "none"
            return positional, ParseError(
                f"`{_echo(key)}` is not an option of `{command}`. Valid options: {valid}.",
                usage=USAGE[command],
            )
        if key in options:
            return positional, ParseError(f"`{key}` is given twice.", usage=USAGE[command])
        if value == "":
            return positional, ParseError(f"`{key}=` needs a value.", usage=USAGE[command])
        options[key] = value
    return positional, options


def _parse_validate(args: list[str], default_model: str) -> ValidateCommand | ParseError:
    positional, options = _split(args, "validate", ("model", "method"))
    if isinstance(options, ParseError):
        return options
    file_id = _one_id(positional, "validate", "file id", ids.FILE_ID, "file-")
    if isinstance(file_id, ParseError):
        return file_id
    model = check_model(options.get("model", default_model), default_model)
    if isinstance(model, ParseError):
        return model
    method = check_method(options.get("method", "supervised"))
    if isinstance(method, ParseError):
        return method
    return ValidateCommand(file_id, model, method)


def _unexpected(positional: list[str], command: str) -> ParseError:
    return ParseError(f"I didn't expect `{_echo(positional[0])}` here.", usage=USAGE[command])


def _one_id(
    positional: list[str], command: str, what: str, pattern: re.Pattern[str], prefix: str
) -> str | ParseError:
    if not positional:
        return ParseError(f"`{command}` needs a {what}, like `{prefix}abc123`.", usage=USAGE[command])
    if len(positional) > 1:
        return _unexpected(positional[1:], command)
    value = positional[0]
    if pattern.fullmatch(value) is None:
        return ParseError(
            f"`{_echo(value)}` is not a {what}. A {what} looks like `{prefix}abc123` "
            f"(`{prefix}` followed by up to 64 letters, digits, `_` or `-`).",
            usage=USAGE[command],
        )
    return value


def _parse_limit(options: dict[str, str], default: int, command: str) -> int | ParseError:
    if "limit" not in options:
        return default
    return _parse_int(options["limit"], "limit", 1, MAX_LIMIT, command)


def _parse_int(value: str, key: str, low: int, high: int, command: str) -> int | ParseError:
    # [0-9], not \d: \d also matches other scripts' digits, which no one means as a limit.
    if re.fullmatch(r"[+]?[0-9]{1,12}", value) is None or not low <= int(value) <= high:
        return ParseError(
            f"`{key}` must be a whole number from {low} to {high}, not `{_echo(value)}`.",
            usage=USAGE[command],
        )
    return int(value)


DECIMAL = re.compile(r"[+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


def _parse_positive_float(value: str, key: str, upper: float | None, command: str) -> float | ParseError:
    number = float(value) if DECIMAL.fullmatch(value) else None
    if number is None or not math.isfinite(number) or number <= 0 or (upper is not None and number > upper):
        bound = f"greater than 0 and at most {upper:g}" if upper is not None else "a number greater than 0"
        return ParseError(f"`{key}` must be {bound} (or `auto`), not `{_echo(value)}`.", usage=USAGE[command])
    return number


def _parse_create(args: list[str], default_model: str) -> Command | ParseError:
    if not args:
        return OpenCreateFormCommand()  # nothing typed after `create`: the form asks for it all
    positional, options = _split(args, "create", _CREATE_OPTIONS)
    if isinstance(options, ParseError):
        return options
    training_file = _one_id(positional, "create", "training file id", ids.FILE_ID, "file-")
    if isinstance(training_file, ParseError):
        return training_file

    model = check_model(options.get("model", default_model), default_model)
    if isinstance(model, ParseError):
        return model
    validation_file = options.get("validation_file")
    if validation_file is not None:
        checked_validation = check_validation_file(validation_file)
        if isinstance(checked_validation, ParseError):
            return checked_validation
        validation_file = checked_validation
    suffix = options.get("suffix")
    if suffix is not None:
        checked_suffix = check_suffix(suffix)
        if isinstance(checked_suffix, ParseError):
            return checked_suffix
        suffix = checked_suffix
    seed: int | None = None
    if "seed" in options:
        parsed_seed = check_seed(options["seed"])
        if isinstance(parsed_seed, ParseError):
            return parsed_seed
        seed = parsed_seed
    method = check_method(options.get("method", "supervised"))
    if isinstance(method, ParseError):
        return method

    hyperparameters: dict[str, int | float | str] = {}
    for key in HYPERPARAMETERS:
        if key in options:
            checked = check_hyperparameter(key, options[key], method)
            if isinstance(checked, ParseError):
                return checked
            api_key, value = checked
            hyperparameters[api_key] = value

    return CreateCommand(
        training_file=training_file,
        model=model,
        validation_file=validation_file,
        suffix=suffix,
        seed=seed,
        method=method,
        hyperparameters=hyperparameters,
    )


# -- one check per `create` option: the command and the create form (bot/modal.py) share them, so
# a value the one refuses the other refuses too, with the same words.

# The option names people use, in the order they are checked, and the name the API gives each.
HYPERPARAMETERS = {
    "epochs": "n_epochs",
    "batch_size": "batch_size",
    "learning_rate_multiplier": "learning_rate_multiplier",
    "beta": "beta",
}


def check_model(model: str, default_model: str) -> str | ParseError:
    if MODEL_NAME.fullmatch(model) is None:
        return ParseError(
            f"`{_echo(model)}` is not a model name. Try a fine-tunable model such as `{default_model}`.",
            usage=USAGE["create"],
        )
    return model


def check_validation_file(value: str) -> str | ParseError:
    if not ids.is_file_id(value):
        return ParseError(
            f"`validation_file` must be a file id like `file-abc123`, not `{_echo(value)}`.",
            usage=USAGE["create"],
        )
    return value


def check_suffix(suffix: str) -> str | ParseError:
    if SUFFIX.fullmatch(suffix) is None:
        return ParseError(
            f"`suffix` must be 1 to {MAX_SUFFIX} letters, digits, `.`, `_` or `-`"
            f" (it becomes part of the model name), not `{_echo(suffix)}`.",
            usage=USAGE["create"],
        )
    return suffix


def check_seed(value: str) -> int | ParseError:
    return _parse_int(value, "seed", 0, MAX_SEED, "create")


def check_method(value: str) -> str | ParseError:
    method = value.lower()
    if method not in METHODS:
        return ParseError(
            f"`method` must be `supervised` or `dpo`, not `{_echo(method)}`.", usage=USAGE["create"]
        )
    return method


def check_hyperparameter(key: str, value: str, method: str) -> tuple[str, int | float | str] | ParseError:
    """`key` is one of HYPERPARAMETERS; returns the API's name for it and the value to send."""
    api_key = HYPERPARAMETERS[key]
    if key == "beta" and method != "dpo":
        return ParseError("`beta` only applies to `method=dpo`.", usage=USAGE["create"])
    if value.lower() == "auto":
        return api_key, "auto"
    if key in ("epochs", "batch_size"):
        low, high = (1, 50) if key == "epochs" else (1, 256)
        number = _parse_int(value, key, low, high, "create")
        if isinstance(number, ParseError):
            return ParseError(number.message.replace(", not", " (or `auto`), not"), usage=USAGE["create"])
        return api_key, number
    parsed = _parse_positive_float(value, key, 2.0 if key == "beta" else None, "create")
    return parsed if isinstance(parsed, ParseError) else (api_key, parsed)


def _echo(value: str) -> str:
    """Quote a bit of user input back without letting a 4,000-character paste flood the reply."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in value).replace("`", "'")
    return cleaned if len(cleaned) <= _ECHO_LIMIT else cleaned[: _ECHO_LIMIT - 1] + "…"
