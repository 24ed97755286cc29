"""The create form (a Slack modal): the view, and its submission read back into a command.

Pure: no I/O, no Slack calls, no clock (callers pass `now`). Every field is checked with the very
functions `/finetune create` uses (bot/commands.py), so the form and the command accept and refuse
the same values with the same words; problems come back keyed by the input block they belong to,
which is where Slack shows them (`response_action: errors`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot import ids
from bot.commands import (
    HYPERPARAMETERS,
    MAX_SEED,
    MAX_SUFFIX,
    CreateCommand,
    ParseError,
    check_hyperparameter,
    check_method,
    check_model,
    check_seed,
    check_suffix,
)
from bot.models import OpenAIFile
from bot.render import escape, size_words

CREATE_VIEW_CALLBACK = "create_job"
# The external selects' action id: one options listener serves both (training and validation).
OPENAI_FILE_ACTION = "openai_file"

# Fine-tunable base models offered in the select, newest family last. Source: OpenAI's fine-tuning
# guide ("Which models can be fine-tuned?") and the spec's CreateFineTuningJobRequest.model
# examples, as of 2026; anything else (a fine-tuned `ft:…` model) goes in "Other model".
BASE_MODELS = (
    "gpt-4o-mini-2024-07-18",
    "gpt-4o-2024-08-06",
    "gpt-4.1-2025-04-14",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano-2025-04-14",
)

# Input block ids: stable, since a submission's values and its errors are keyed by them.
TRAINING_UPLOAD = "training_upload"
TRAINING_OPENAI = "training_openai"
VALIDATION_UPLOAD = "validation_upload"
VALIDATION_OPENAI = "validation_openai"
MODEL = "model"
MODEL_OTHER = "model_other"
METHOD = "method"
SUFFIX = "suffix"
EPOCHS = "epochs"
BATCH_SIZE = "batch_size"
LEARNING_RATE = "learning_rate_multiplier"
BETA = "beta"
SEED = "seed"
# Action ids inside those blocks (the block id tells them apart).
FILE_ACTION = "file"
VALUE_ACTION = "value"

# Slack's limits on a modal (FACTS-interactive §4, §5).
TITLE_CHARS = 24
MAX_VIEW_BLOCKS = 100
PRIVATE_METADATA_CHARS = 3000
MAX_OPTIONS = 100
OPTION_TEXT_CHARS = 75
# Our own caps: a file name is the one unbounded thing that goes into private_metadata and texts.
FILE_NAME_CHARS = 200
ERROR_ECHO_CHARS = 60
# What an option says when there is no file to pick (its value is no file id, so choosing it and
# submitting is refused like any other non-file).
NO_FILE_VALUE = "none"
SLACK_FILE_ID = re.compile(r"F[A-Z0-9]{2,63}")


@dataclass(frozen=True)
class SlackFileRef:
    id: str
    name: str
    size: int | None
    filetype: str | None


@dataclass(frozen=True)
class CreateForm:
    command: CreateCommand  # training_file/validation_file "" when a Slack file is used
    training_upload: SlackFileRef | None  # the Slack file, when the training data is uploaded
    validation_upload: SlackFileRef | None
    channel_id: str  # from private_metadata: where it was opened


# ---------------------------------------------------------------------------------------------- view


def _plain(text: str, *, emoji: bool = False) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": "plain_text", "text": text}
    if emoji:
        obj["emoji"] = True
    return obj


def _option(text: str, value: str, description: str | None = None) -> dict[str, Any]:
    option: dict[str, Any] = {"text": _plain(_cut(text, OPTION_TEXT_CHARS)), "value": value}
    if description:
        option["description"] = _plain(_cut(description, OPTION_TEXT_CHARS))
    return option


def _input(
    block_id: str,
    label: str,
    element: dict[str, Any],
    *,
    optional: bool = True,
    hint: str | None = None,
) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "input",
        "block_id": block_id,
        "label": _plain(label),
        "element": element,
        "optional": optional,
    }
    if hint:
        block["hint"] = _plain(hint)
    return block


def _text_input(placeholder: str, *, max_length: int | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": VALUE_ACTION,
        "placeholder": _plain(placeholder),
    }
    if max_length is not None:
        element["max_length"] = max_length
    return element


def _file_input() -> dict[str, Any]:
    # `filetypes` is enforced by Slack's client only: parse_submission checks the name again.
    return {"type": "file_input", "action_id": FILE_ACTION, "filetypes": ["jsonl"], "max_files": 1}


def _openai_file_select(placeholder: str) -> dict[str, Any]:
    return {
        "type": "external_select",
        "action_id": OPENAI_FILE_ACTION,
        "placeholder": _plain(placeholder),
        # 0: the newest files are listed as soon as the menu opens (Slack's default waits for 3 letters).
        "min_query_length": 0,
    }


def create_view(
    *,
    channel_id: str,
    default_model: str,
    models: Sequence[str],
    preselected_upload: SlackFileRef | None = None,
) -> dict[str, Any]:
    """The modal for `views.open`. The training data is either a `.jsonl` uploaded here or a file
    already in OpenAI (exactly one, checked on submit); with `preselected_upload` (the message
    shortcut) that file is the training data and the form only names it."""
    metadata: dict[str, Any] = {"channel_id": channel_id}
    supervised = _option("Supervised", "supervised", "Example conversations to imitate")
    blocks: list[dict[str, Any]] = []
    if preselected_upload is not None:
        upload = _bounded_ref(preselected_upload)
        metadata["upload"] = {
            "id": upload.id,
            "name": upload.name,
            "size": upload.size,
            "filetype": upload.filetype,
        }
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f":page_facing_up: *Training data:* {_file_label_mrkdwn(upload)}, from the "
                    "message. It is checked line by line (format, tokens, cost) before anything is uploaded "
                    "to OpenAI.",
                },
            }
        )
    else:
        blocks += [
            _input(
                TRAINING_UPLOAD,
                "Training data: upload a .jsonl",
                _file_input(),
                hint="Checked line by line (format, tokens, cost) before anything goes to OpenAI. Up to "
                "10 MB here; for a bigger file, share it in the channel and use the message shortcut "
                "“Fine-tune on this file”. Or pick a file already in OpenAI below.",
            ),
            _input(
                TRAINING_OPENAI,
                "…or a training file already in OpenAI",
                _openai_file_select("Type to filter by file name"),
            ),
        ]
    blocks += [
        _input(VALIDATION_UPLOAD, "Validation data (optional): upload a .jsonl", _file_input()),
        _input(
            VALIDATION_OPENAI,
            "…or a validation file already in OpenAI",
            _openai_file_select("Type to filter by file name"),
        ),
        _model_select(default_model, models),
        _input(
            MODEL_OTHER,
            "Other model",
            _text_input("ft:gpt-4o-mini-2024-07-18:acme:support:abc123", max_length=128)
            | _initial(default_model if default_model not in models else None),
            hint="A fine-tuned model to train further (or any model name); overrides the model above.",
        ),
        _input(
            METHOD,
            "Method",
            {
                "type": "radio_buttons",
                "action_id": VALUE_ACTION,
                "options": [
                    supervised,
                    _option("DPO", "dpo", "Preferred vs. non-preferred answers"),
                ],
                "initial_option": supervised,
            },
            optional=False,
        ),
        _input(
            SUFFIX,
            "Suffix",
            _text_input("e.g. support-v2", max_length=MAX_SUFFIX),
            hint=f"Becomes part of the model name: up to {MAX_SUFFIX} letters, digits, . _ or -.",
        ),
        _input(EPOCHS, "Epochs", _text_input("1 to 50, or auto (the default)")),
        _input(BATCH_SIZE, "Batch size", _text_input("1 to 256, or auto (the default)")),
        _input(LEARNING_RATE, "Learning-rate multiplier", _text_input("A number above 0, e.g. 0.5, or auto")),
        _input(BETA, "Beta (DPO only)", _text_input("Above 0 and at most 2, or auto")),
        _input(
            SEED,
            "Seed",
            {
                "type": "number_input",
                "action_id": VALUE_ACTION,
                "is_decimal_allowed": False,
                "min_value": "0",
                "max_value": str(MAX_SEED),
                "placeholder": _plain(f"0 to {MAX_SEED}, for a run you can repeat"),
            },
        ),
    ]
    return {
        "type": "modal",
        "callback_id": CREATE_VIEW_CALLBACK,
        "title": _plain("New fine-tuning job"),
        "submit": _plain("Check & start"),
        "close": _plain("Cancel"),
        "private_metadata": json.dumps(metadata, separators=(",", ":")),
        "blocks": blocks,
    }


def _initial(value: str | None) -> dict[str, Any]:
    return {"initial_value": value} if value else {}


def _model_select(default_model: str, models: Sequence[str]) -> dict[str, Any]:
    options = [_option(model, model) for model in models[:MAX_OPTIONS]]
    element: dict[str, Any] = {
        "type": "static_select",
        "action_id": VALUE_ACTION,
        "placeholder": _plain("Choose a base model"),
        "options": options,
    }
    for option in options:
        if option["value"] == default_model:
            element["initial_option"] = option
    return _input(MODEL, "Model", element, hint="Fine-tunable base models.")


def _bounded_ref(ref: SlackFileRef) -> SlackFileRef:
    """What the view may carry of a file: private_metadata holds at most 3000 characters."""
    return SlackFileRef(
        id=ref.id,
        name=_cut(ref.name, FILE_NAME_CHARS),
        size=ref.size,
        filetype=(ref.filetype or None) and str(ref.filetype)[:40],
    )


def _file_label_mrkdwn(ref: SlackFileRef) -> str:
    name = escape(" ".join(ref.name.split()).replace("`", "'")) or "a file"
    size = f" ({size_words(ref.size)})" if ref.size is not None else ""
    return f"`{name}`{size}"


# ---------------------------------------------------------------------------------------------- submission


def parse_submission(view: Mapping[str, Any], *, default_model: str) -> CreateForm | dict[str, str]:
    """The form as a command, or every problem at once, keyed by the input block it belongs to
    (each a friendly sentence; Slack shows it under that field)."""
    values: Mapping[str, Any] = (view.get("state") or {}).get("values") or {}
    metadata = _metadata(view.get("private_metadata"))
    errors: dict[str, str] = {}

    preselected = _ref_from_metadata(metadata.get("upload"))
    training_upload: SlackFileRef | None
    if preselected is not None:
        training_upload, training_file = preselected, ""
    else:
        training = _file_choice(values, TRAINING_UPLOAD, TRAINING_OPENAI, errors, required=True)
        training_upload, training_file = training if training is not None else (None, "")
    validation = _file_choice(values, VALIDATION_UPLOAD, VALIDATION_OPENAI, errors, required=False)
    validation_upload, validation_file = validation if validation is not None else (None, None)
    if validation_upload is not None and training_upload is None and training_file:
        # An uploaded file is checked and sent with the training file it goes with; a training
        # file already in OpenAI has nothing to be checked with.
        errors[VALIDATION_UPLOAD] = (
            "Pick the validation file from OpenAI too, or upload both files here."
        )

    other = _text(values, MODEL_OTHER)
    chosen = other or _selected(values, MODEL) or default_model
    model = check_model(chosen, default_model)
    if isinstance(model, ParseError):
        errors[MODEL_OTHER if other else MODEL] = _friendly(model)

    method = check_method(_selected(values, METHOD) or "supervised")
    if isinstance(method, ParseError):  # only a forged payload: the radio offers two values
        errors[METHOD] = _friendly(method)
        method = "supervised"

    suffix = _text(values, SUFFIX) or None
    if suffix is not None:
        checked_suffix = check_suffix(suffix)
        if isinstance(checked_suffix, ParseError):
            errors[SUFFIX] = _friendly(checked_suffix)

    seed: int | None = None
    raw_seed = _text(values, SEED)
    if raw_seed:
        checked_seed = check_seed(raw_seed)
        if isinstance(checked_seed, ParseError):
            errors[SEED] = _friendly(checked_seed)
        else:
            seed = checked_seed

    hyperparameters: dict[str, int | float | str] = {}
    for key, block_id in zip(HYPERPARAMETERS, (EPOCHS, BATCH_SIZE, LEARNING_RATE, BETA), strict=True):
        raw = _text(values, block_id)
        if not raw:
            continue
        checked = check_hyperparameter(key, raw, method)
        if isinstance(checked, ParseError):
            errors[block_id] = (
                "Beta only applies to the DPO method: leave it empty, or choose DPO."
                if key == "beta" and method != "dpo"
                else _friendly(checked)
            )
        else:
            hyperparameters[checked[0]] = checked[1]

    if errors:
        return errors
    assert isinstance(model, str)
    command = CreateCommand(
        training_file=training_file,
        model=model,
        validation_file=validation_file,
        suffix=suffix,
        seed=seed,
        method=method,
        hyperparameters=hyperparameters,
    )
    channel_id = metadata.get("channel_id")
    return CreateForm(
        command=command,
        training_upload=training_upload,
        validation_upload=validation_upload,
        channel_id=channel_id if isinstance(channel_id, str) else "",
    )


def first_input_block(view: Mapping[str, Any]) -> str:
    """An input block of this view, to hang an error on that concerns the whole form (Slack shows
    errors only under input blocks, and refuses ones keyed by a block the view does not have)."""
    for block in view.get("blocks") or ():
        if isinstance(block, Mapping) and block.get("type") == "input" and block.get("block_id"):
            return str(block["block_id"])
    return MODEL


def _file_choice(
    values: Mapping[str, Any], upload_block: str, openai_block: str, errors: dict[str, str], *, required: bool
) -> tuple[SlackFileRef | None, str] | None:
    """(the uploaded file, "") or (None, the OpenAI file id); None when neither was given."""
    files = [f for f in _state(values, upload_block).get("files") or () if isinstance(f, Mapping)]
    picked = _selected(values, openai_block)
    what = "training" if required else "validation"
    if files and picked:
        errors[openai_block] = (
            f"Choose one {what} file: the one uploaded above or this one from OpenAI, not both."
        )
        return None
    if len(files) > 1:
        errors[upload_block] = f"Upload one {what} file (a single .jsonl), not {len(files)}."
        return None
    if files:
        ref = file_ref(files[0])
        if ref is None:
            errors[upload_block] = "Slack didn't say which file this is: upload it again."
            return None
        if not is_jsonl(ref.name):
            errors[upload_block] = (
                f"{_echo(ref.name)} is not a .jsonl file: fine-tuning takes JSON Lines, one example "
                "per line. Export it as .jsonl, or pick a file already in OpenAI."
            )
            return None
        return ref, ""
    if picked:
        if picked == NO_FILE_VALUE or not ids.is_file_id(picked):
            errors[openai_block] = "Pick a file from the list (type part of its name to find it)."
            return None
        return None, picked
    if required:
        errors[upload_block] = "Upload a .jsonl file here, or pick a training file already in OpenAI below."
    return None


def _state(values: Mapping[str, Any], block_id: str) -> Mapping[str, Any]:
    """The one element's state in a block (each of our input blocks holds one element)."""
    block = values.get(block_id)
    if not isinstance(block, Mapping):
        return {}
    for state in block.values():
        if isinstance(state, Mapping):
            return state
    return {}


def _text(values: Mapping[str, Any], block_id: str) -> str:
    value = _state(values, block_id).get("value")
    return value.strip() if isinstance(value, str) else ""


def _selected(values: Mapping[str, Any], block_id: str) -> str:
    option = _state(values, block_id).get("selected_option")
    value = option.get("value") if isinstance(option, Mapping) else None
    return value if isinstance(value, str) else ""


def _metadata(raw: Any) -> dict[str, Any]:
    try:
        data = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _ref_from_metadata(raw: Any) -> SlackFileRef | None:
    return file_ref(raw) if isinstance(raw, Mapping) else None


def _friendly(error: ParseError) -> str:
    """The command's message as the form shows it: errors are plain text, so no code spans."""
    return error.message.replace("`", "")


def _echo(value: str) -> str:
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in value)
    return _cut(cleaned, ERROR_ECHO_CHARS)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------- Slack files


def file_ref(obj: Mapping[str, Any]) -> SlackFileRef | None:
    """A Slack file object (a file_input's state, a message's `files`) as what the form needs;
    None without an id that looks like Slack's."""
    file_id = obj.get("id")
    if not isinstance(file_id, str) or SLACK_FILE_ID.fullmatch(file_id) is None:
        return None
    name = obj.get("name") or obj.get("title") or ""
    size = obj.get("size")
    filetype = obj.get("filetype")
    return SlackFileRef(
        id=file_id,
        name=str(name),
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        filetype=str(filetype) if isinstance(filetype, str) and filetype else None,
    )


def is_jsonl(name: str) -> bool:
    return name.strip().lower().endswith(".jsonl")


def jsonl_files(message: Mapping[str, Any]) -> tuple[list[SlackFileRef], list[str]]:
    """A message's `.jsonl` files, and the names of its other files (for the explanation when
    there is not exactly one)."""
    found: list[SlackFileRef] = []
    others: list[str] = []
    for obj in message.get("files") or ():
        if not isinstance(obj, Mapping):
            continue
        ref = file_ref(obj)
        if ref is not None and is_jsonl(ref.name):
            found.append(ref)
        else:
            others.append(str(obj.get("name") or obj.get("title") or "a file"))
    return found, others


# ---------------------------------------------------------------------------------------------- options


def channel_of(view: Mapping[str, Any] | None) -> str:
    """The channel the form was opened from (its private_metadata), "" when unknown."""
    channel = _metadata((view or {}).get("private_metadata")).get("channel_id")
    return channel if isinstance(channel, str) else ""


def file_options(files: Sequence[OpenAIFile], query: str) -> list[dict[str, Any]]:
    """External-select options for OpenAI's fine-tune files (given newest first): those whose
    name contains what was typed (any case), at most Slack's 100, each `name · size · created`."""
    wanted = query.strip().casefold()
    options = []
    for file in files:
        if not ids.is_file_id(file.id) or (wanted and wanted not in file.filename.casefold()):
            continue
        parts = [" ".join(file.filename.split()) or file.id]
        if file.bytes is not None:
            parts.append(size_words(file.bytes))
        if file.created_at is not None:
            parts.append(datetime.fromtimestamp(file.created_at, UTC).strftime("%Y-%m-%d"))
        # The name is cut first, so size and date always show.
        tail = " · " + " · ".join(parts[1:]) if len(parts) > 1 else ""
        text = _cut(parts[0], OPTION_TEXT_CHARS - len(tail)) + tail
        options.append(_option(text, file.id))
        if len(options) == MAX_OPTIONS:
            break
    return options


def unavailable_options(reason: str) -> list[dict[str, Any]]:
    """One option that only says why there are none (Slack has no disabled options; its value is
    no file id, so picking it is refused on submit)."""
    return [_option(f"⚠ {reason}", NO_FILE_VALUE)]
