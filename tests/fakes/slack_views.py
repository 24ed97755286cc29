"""Modal views for the fake Slack, pure: Slack's checks on a view (views.open/update/push), the view
as Slack hands it back (ids, hash, generated block ids), and the ``state.values`` a submission
carries. No I/O and no fake state here; FakeSlack wires these to its methods and payload builders.

Limits are FACTS-interactive §4/§5 (modal-views reference, slack_sdk's View validators). Error
texts mimic Slack's ``[ERROR] <problem> [json-pointer:/view/...]`` lines.
"""

from __future__ import annotations

import copy
import json
import secrets
import string
from collections.abc import Callable, Mapping
from typing import Any

MAX_TITLE = 24  # title, submit and close
MAX_VIEW_BLOCKS = 100
MAX_PRIVATE_METADATA = 3000
MAX_CALLBACK_ID = 255
MAX_EXTERNAL_ID = 255
MAX_VIEW_BYTES = 250 * 1000  # "view_too_large" above 250 kB
MAX_LABEL = 2000
MAX_HINT = 2000
MAX_PLACEHOLDER = 150
MAX_OPTIONS = 100
MAX_OPTION_TEXT = 75
MAX_OPTION_VALUE = 150
MAX_ACTION_ID = 255
MAX_BLOCK_ID = 255
MAX_TEXT_INPUT_LENGTH = 3000

# The state entry each input element produces, and the key its value sits under.
_VALUE_KEYS: dict[str, str] = {
    "plain_text_input": "value",
    "number_input": "value",
    "email_text_input": "value",
    "url_text_input": "value",
    "static_select": "selected_option",
    "external_select": "selected_option",
    "radio_buttons": "selected_option",
    "multi_static_select": "selected_options",
    "multi_external_select": "selected_options",
    "checkboxes": "selected_options",
    "file_input": "files",
    "datepicker": "selected_date",
    "timepicker": "selected_time",
    "users_select": "selected_user",
    "conversations_select": "selected_conversation",
    "channels_select": "selected_channel",
}
INPUT_ELEMENT_TYPES = frozenset(_VALUE_KEYS)
_SINGLE_OPTION = frozenset({"static_select", "external_select", "radio_buttons"})
_OPTION_LISTS = frozenset({"static_select", "multi_static_select", "radio_buttons", "checkboxes"})
_MULTI_OPTION = frozenset({"multi_static_select", "multi_external_select", "checkboxes"})

BlockChecker = Callable[[list[Any], str], list[str]]


def view_errors(view: Any, *, other_blocks: BlockChecker | None = None) -> tuple[str, list[str]]:
    """Slack's refusal of ``view`` as ``(error, messages)``; ``("", [])`` when it would be accepted.

    ``other_blocks(blocks, pointer_prefix)`` checks the non-input blocks (sections, actions...) the
    way messages are checked; input blocks are checked here.
    """
    if not isinstance(view, dict):
        return "invalid_arguments", ["[ERROR] view must be an object [json-pointer:/view]"]
    if len(json.dumps(view)) > MAX_VIEW_BYTES:
        return "view_too_large", [f"[ERROR] the view is over {MAX_VIEW_BYTES} bytes"]
    errors: list[str] = []
    if view.get("type") != "modal":
        errors.append("must be 'modal' [json-pointer:/view/type]")
    if view.get("title") is None:
        errors.append("missing required field: title [json-pointer:/view]")
    for name in ("title", "submit", "close"):
        if view.get(name) is not None:
            errors += _plain_text_errors(view[name], f"/view/{name}", MAX_TITLE)
    for name, limit in (
        ("private_metadata", MAX_PRIVATE_METADATA),
        ("callback_id", MAX_CALLBACK_ID),
        ("external_id", MAX_EXTERNAL_ID),
    ):
        value = view.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            errors.append(f"must be a string of at most {limit} characters [json-pointer:/view/{name}]")
    blocks = view.get("blocks")
    if not isinstance(blocks, list):
        errors.append("missing required field: blocks [json-pointer:/view]")
        blocks = []
    if len(blocks) > MAX_VIEW_BLOCKS:
        errors.append(f"no more than {MAX_VIEW_BLOCKS} items allowed [json-pointer:/view/blocks]")
    seen_block_ids: set[str] = set()
    has_input = False
    for i, block in enumerate(blocks):
        ptr = f"/view/blocks/{i}"
        if not isinstance(block, dict):
            continue  # reported by other_blocks (missing type)
        block_id = block.get("block_id")
        if block_id is not None:
            if not isinstance(block_id, str) or not block_id or len(block_id) > MAX_BLOCK_ID:
                errors.append(f"must be 1 to {MAX_BLOCK_ID} characters [json-pointer:{ptr}/block_id]")
            elif block_id in seen_block_ids:
                errors.append(f"duplicate block_id '{block_id}' [json-pointer:{ptr}/block_id]")
            else:
                seen_block_ids.add(block_id)
        if block.get("type") == "input":
            has_input = True
            errors += input_block_errors(block, ptr)
    if has_input and view.get("submit") is None and view.get("type") == "modal":
        errors.append("a view with input blocks requires submit [json-pointer:/view/submit]")
    if other_blocks is not None:
        rest = [b for b in blocks if not (isinstance(b, dict) and b.get("type") == "input")]
        # Pointers of the other checker count only the blocks it saw; good enough to find the block.
        errors += other_blocks(rest, "/view/blocks")
    if errors:
        return "invalid_arguments", [f"[ERROR] {e}" for e in errors]
    return "", []


def input_block_errors(block: dict[str, Any], ptr: str) -> list[str]:
    errors = _plain_text_errors(block.get("label"), f"{ptr}/label", MAX_LABEL, required=True)
    if block.get("hint") is not None:
        errors += _plain_text_errors(block["hint"], f"{ptr}/hint", MAX_HINT)
    element = block.get("element")
    if not isinstance(element, dict):
        return [*errors, f"missing required field: element [json-pointer:{ptr}]"]
    return errors + element_errors(element, f"{ptr}/element")


def element_errors(element: dict[str, Any], ptr: str) -> list[str]:
    kind = element.get("type")
    if kind not in INPUT_ELEMENT_TYPES:
        return [f"unsupported input element type {kind!r} [json-pointer:{ptr}/type]"]
    errors: list[str] = []
    action_id = element.get("action_id")
    if action_id is not None and (not isinstance(action_id, str) or not 0 < len(action_id) <= MAX_ACTION_ID):
        errors.append(f"must be 1 to {MAX_ACTION_ID} characters [json-pointer:{ptr}/action_id]")
    if element.get("placeholder") is not None:
        errors += _plain_text_errors(element["placeholder"], f"{ptr}/placeholder", MAX_PLACEHOLDER)
    if kind in _OPTION_LISTS:
        errors += _options_errors(element, ptr, kind)
    elif kind == "file_input":
        if not _int_between(element.get("max_files", 10), 1, 10):
            errors.append(f"must be between 1 and 10 [json-pointer:{ptr}/max_files]")
        filetypes = element.get("filetypes")
        if filetypes is not None and (
            not isinstance(filetypes, list) or not all(isinstance(t, str) and t for t in filetypes)
        ):
            errors.append(f"must be a list of file extensions [json-pointer:{ptr}/filetypes]")
    elif kind == "number_input":
        if not isinstance(element.get("is_decimal_allowed"), bool):
            errors.append(f"missing required field: is_decimal_allowed [json-pointer:{ptr}]")
    elif kind == "plain_text_input":
        for name in ("min_length", "max_length"):
            value = element.get(name)
            if value is not None and not _int_between(value, 0, MAX_TEXT_INPUT_LENGTH):
                errors.append(f"must be between 0 and {MAX_TEXT_INPUT_LENGTH} [json-pointer:{ptr}/{name}]")
    elif kind in ("external_select", "multi_external_select"):
        min_query = element.get("min_query_length")
        if min_query is not None and not _int_between(min_query, 0, MAX_TEXT_INPUT_LENGTH):
            errors.append(f"must be a non-negative integer [json-pointer:{ptr}/min_query_length]")
        if element.get("initial_option") is not None:
            errors += _option_errors(element["initial_option"], f"{ptr}/initial_option")
    return errors


def _options_errors(element: dict[str, Any], ptr: str, kind: str) -> list[str]:
    options, groups = element.get("options"), element.get("option_groups")
    if kind in ("radio_buttons", "checkboxes") or groups is None:
        if not isinstance(options, list) or not options or len(options) > MAX_OPTIONS:
            return [f"must contain between 1 and {MAX_OPTIONS} options [json-pointer:{ptr}/options]"]
        flat = options
    else:
        if not isinstance(groups, list) or not groups:
            return [f"must contain option groups [json-pointer:{ptr}/option_groups]"]
        flat = [o for g in groups if isinstance(g, dict) for o in g.get("options") or []]
    errors: list[str] = []
    for j, option in enumerate(flat):
        errors += _option_errors(option, f"{ptr}/options/{j}")
    values = [o.get("value") for o in flat if isinstance(o, dict)]
    initial = element.get("initial_option")
    if initial is not None and (not isinstance(initial, dict) or initial.get("value") not in values):
        # Slack refuses an initial option that is not one of the options.
        errors.append(f"initial_option must be one of the options [json-pointer:{ptr}/initial_option]")
    return errors


def _int_between(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _option_errors(option: Any, ptr: str) -> list[str]:
    if not isinstance(option, dict):
        return [f"must be an option object [json-pointer:{ptr}]"]
    errors = _text_errors(option.get("text"), f"{ptr}/text", MAX_OPTION_TEXT, required=True)
    value = option.get("value")
    if not isinstance(value, str) or not value or len(value) > MAX_OPTION_VALUE:
        errors.append(f"must be 1 to {MAX_OPTION_VALUE} characters [json-pointer:{ptr}/value]")
    return errors


def _plain_text_errors(obj: Any, ptr: str, limit: int, *, required: bool = False) -> list[str]:
    if obj is None and not required:
        return []
    if not isinstance(obj, dict) or obj.get("type") != "plain_text":
        return [f"must be a plain_text text object [json-pointer:{ptr}]"]
    return _text_errors(obj, ptr, limit, required=True)


def _text_errors(obj: Any, ptr: str, limit: int, *, required: bool = False) -> list[str]:
    if obj is None:
        return [f"missing required field [json-pointer:{ptr}]"] if required else []
    if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
        return [f"must be a text object [json-pointer:{ptr}]"]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return [f"must be at least 1 character [json-pointer:{ptr}/text]"]
    if len(text) > limit:
        return [f"must be less than {limit + 1} characters [json-pointer:{ptr}/text]"]
    return []


# -- the view as Slack holds it ---------------------------------------------------------------------


def random_id(prefix: str, length: int = 10) -> str:
    alphabet = string.ascii_uppercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def new_hash(now: float) -> str:
    return f"{int(now)}.{secrets.token_hex(4)}"


def stored_view(
    view: Mapping[str, Any],
    *,
    view_id: str,
    view_hash: str,
    team_id: str,
    app_id: str,
    bot_id: str,
    root_view_id: str | None = None,
    previous_view_id: str | None = None,
) -> dict[str, Any]:
    """The view as Slack returns and later sends it: every field present, a block_id on each block
    and an action_id on each input element (Slack makes up short random ones, so a bot can only
    find its inputs by ids it set itself), and empty state."""
    blocks = copy.deepcopy(list(view.get("blocks") or []))
    for block in blocks:
        if isinstance(block, dict):
            block.setdefault("block_id", secrets.token_urlsafe(3))
            element = block.get("element")
            if block.get("type") == "input" and isinstance(element, dict):
                element.setdefault("action_id", secrets.token_urlsafe(4))
    return {
        "id": view_id,
        "team_id": team_id,
        "type": view.get("type", "modal"),
        "blocks": blocks,
        "private_metadata": view.get("private_metadata", ""),
        "callback_id": view.get("callback_id", ""),
        "state": {"values": {}},
        "hash": view_hash,
        "title": copy.deepcopy(view.get("title")),
        "clear_on_close": bool(view.get("clear_on_close", False)),
        "notify_on_close": bool(view.get("notify_on_close", False)),
        "close": copy.deepcopy(view.get("close")),
        "submit": copy.deepcopy(view.get("submit")),
        "previous_view_id": previous_view_id,
        "root_view_id": root_view_id or view_id,
        "app_id": app_id,
        "external_id": view.get("external_id", ""),
        "app_installed_team_id": team_id,
        "bot_id": bot_id,
    }


def input_blocks(view: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Input blocks by block_id."""
    return {
        b["block_id"]: b
        for b in view.get("blocks") or []
        if isinstance(b, dict) and b.get("type") == "input" and isinstance(b.get("block_id"), str)
    }


def state_values(
    view: Mapping[str, Any], values: Mapping[str, Any], *, file_lookup: Callable[[str], dict[str, Any] | None]
) -> dict[str, dict[str, dict[str, Any]]]:
    """``view.state.values`` for a submission: every input block of ``view`` appears (empty ones
    with a null value, as Slack sends them), ``values`` fills some by block_id.

    A value is one of: None (left empty); the full state entry (a dict with the element's
    ``type``); for text and number inputs a str or number; for selects and radio buttons an option
    value (static options are looked up for their text; an external select's text is the value)
    or an option dict; for multi selects and checkboxes a list of those; for file_input a Slack
    file object, a file id known to the fake, or a list of them. Anything that could not come from
    this view raises ValueError: that is a mistake in the test, not an input to the bot.
    """
    blocks = input_blocks(view)
    unknown = sorted(set(values) - set(blocks))
    if unknown:
        raise ValueError(f"no input block {unknown} in the view; its input blocks: {sorted(blocks)}")
    state: dict[str, dict[str, dict[str, Any]]] = {}
    for block_id, block in blocks.items():
        element = block["element"]
        state[block_id] = {element["action_id"]: _state_entry(element, values.get(block_id), file_lookup)}
    return state


def _state_entry(
    element: dict[str, Any], raw: Any, file_lookup: Callable[[str], dict[str, Any] | None]
) -> dict[str, Any]:
    kind = element["type"]
    key = _VALUE_KEYS[kind]
    if isinstance(raw, dict) and raw.get("type") == kind:
        return copy.deepcopy(raw)
    if raw is None:
        empty: Any = [] if key in ("selected_options", "files") else None
        return {"type": kind, key: empty}
    if kind in _SINGLE_OPTION:
        return {"type": kind, key: _option_for(element, raw)}
    if kind in _MULTI_OPTION:
        items = raw if isinstance(raw, list) else [raw]
        return {"type": kind, key: [_option_for(element, item) for item in items]}
    if kind == "file_input":
        items = raw if isinstance(raw, list) else [raw]
        files = [_file_for(item, file_lookup) for item in items]
        if len(files) > element.get("max_files", 10):
            limit = element.get("max_files")
            raise ValueError(f"{len(files)} files but the file_input takes at most {limit}")
        return {"type": kind, key: files}
    if key == "value":
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ValueError(f"a {kind} value is text, not {raw!r}")
        return {"type": kind, key: str(raw)}
    return {"type": kind, key: raw}


def _option_for(element: dict[str, Any], raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return copy.deepcopy(raw)
    value = str(raw)
    if element["type"] in _OPTION_LISTS:
        options = element.get("options") or [
            o for g in element.get("option_groups") or [] for o in g.get("options") or []
        ]
        for option in options:
            if option.get("value") == value:
                return copy.deepcopy(option)
        known = [o.get("value") for o in options]
        raise ValueError(f"{value!r} is not an option of {element.get('action_id')}: {known}")
    return {"text": {"type": "plain_text", "text": value[:MAX_OPTION_TEXT], "emoji": True}, "value": value}


def _file_for(item: Any, file_lookup: Callable[[str], dict[str, Any] | None]) -> dict[str, Any]:
    if isinstance(item, dict):
        return copy.deepcopy(item)
    found = file_lookup(str(item))
    if found is None:
        raise ValueError(f"no file {item!r} in the fake; add it with add_file() first")
    return found
