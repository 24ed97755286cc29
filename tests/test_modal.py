"""The create form (bot/modal.py): the view within Slack's limits, and submissions read back with
exactly the checks `/finetune create` makes. Plain values in, plain values out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from slack_sdk.models.views import View

from bot import modal
from bot.commands import CreateCommand, ParseError, parse_command
from bot.modal import CreateForm, SlackFileRef
from bot.models import OpenAIFile

MODEL = "gpt-4o-mini-2024-07-18"
TRAIN = {"id": "F0TRAIN1", "name": "train.jsonl", "size": 2_400_000, "filetype": "text"}
VALID = {"id": "F0VALID1", "name": "valid.jsonl", "size": 1200, "filetype": "text"}


def view(**kwargs: Any) -> dict[str, Any]:
    return modal.create_view(
        channel_id=kwargs.pop("channel_id", "C123"),
        default_model=kwargs.pop("default_model", MODEL),
        models=kwargs.pop("models", modal.BASE_MODELS),
        **kwargs,
    )


def submitted(form_view: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """The view as Slack sends it back on submit: `state.values[block_id][action_id]`. Fields named
    like the blocks; uploads are lists of file objects, selects and radios their chosen value."""
    form_view = form_view if form_view is not None else view()
    values: dict[str, dict[str, Any]] = {}
    for block in form_view["blocks"]:
        if block["type"] != "input":
            continue
        block_id, element = block["block_id"], block["element"]
        value = fields.get(block_id)
        kind = element["type"]
        if kind == "file_input":
            state: dict[str, Any] = {"type": kind, "files": list(value or [])}
        elif kind in ("external_select", "static_select", "radio_buttons"):
            if value is None and "initial_option" in element:
                chosen = element["initial_option"]
            else:
                chosen = (
                    {"text": {"type": "plain_text", "text": str(value)}, "value": value} if value else None
                )
            state = {"type": kind, "selected_option": chosen}
        else:
            state = {"type": kind, "value": value}
        values[block_id] = {element["action_id"]: state}
    return {**form_view, "id": "V0FORM", "state": {"values": values}}


def parse(form_view: dict[str, Any]) -> CreateForm | dict[str, str]:
    return modal.parse_submission(form_view, default_model=MODEL)


# ---------------------------------------------------------------------------------------------- the view


def assert_within_slack_limits(form_view: dict[str, Any]) -> None:
    # slack_sdk's own model checks the rest (element fields, text lengths) and must not drop anything.
    model = View(**form_view)
    model.validate_json()
    assert model.to_dict() == form_view
    for key in ("title", "submit", "close"):
        assert form_view[key]["type"] == "plain_text" and 0 < len(form_view[key]["text"]) <= modal.TITLE_CHARS
    assert len(form_view["blocks"]) <= modal.MAX_VIEW_BLOCKS
    assert len(form_view["private_metadata"]) <= modal.PRIVATE_METADATA_CHARS
    assert form_view["callback_id"] == modal.CREATE_VIEW_CALLBACK
    block_ids = [b["block_id"] for b in form_view["blocks"] if "block_id" in b]
    assert len(block_ids) == len(set(block_ids))
    assert len(json.dumps(form_view)) < 250_000  # views.open's view_too_large


def test_the_form_fits_slack_and_offers_every_field() -> None:
    form_view = view()
    assert_within_slack_limits(form_view)
    assert form_view["title"]["text"] == "New fine-tuning job"
    inputs = {b["block_id"]: b for b in form_view["blocks"] if b["type"] == "input"}
    assert list(inputs) == [
        modal.TRAINING_UPLOAD,
        modal.TRAINING_OPENAI,
        modal.VALIDATION_UPLOAD,
        modal.VALIDATION_OPENAI,
        modal.MODEL,
        modal.MODEL_OTHER,
        modal.METHOD,
        modal.SUFFIX,
        modal.EPOCHS,
        modal.BATCH_SIZE,
        modal.LEARNING_RATE,
        modal.BETA,
        modal.SEED,
    ]
    for block_id in (modal.TRAINING_UPLOAD, modal.VALIDATION_UPLOAD):
        element = inputs[block_id]["element"]
        assert element["type"] == "file_input"
        assert element["filetypes"] == ["jsonl"] and element["max_files"] == 1
    for block_id in (modal.TRAINING_OPENAI, modal.VALIDATION_OPENAI):
        element = inputs[block_id]["element"]
        assert element["type"] == "external_select" and element["action_id"] == modal.OPENAI_FILE_ACTION
        assert element["min_query_length"] == 0  # the newest files show before anything is typed
    # Exactly one of the two is needed, which Slack cannot express: both optional, checked on submit.
    assert all(b["optional"] for b in inputs.values() if b["block_id"] != modal.METHOD)
    models = inputs[modal.MODEL]["element"]
    assert [o["value"] for o in models["options"]] == list(modal.BASE_MODELS)
    assert models["initial_option"]["value"] == MODEL
    assert inputs[modal.METHOD]["element"]["initial_option"]["value"] == "supervised"
    # The API's ranges as hints (FACTS-interactive §11).
    assert "1 to 50" in inputs[modal.EPOCHS]["element"]["placeholder"]["text"]
    assert "1 to 256" in inputs[modal.BATCH_SIZE]["element"]["placeholder"]["text"]
    seed = inputs[modal.SEED]["element"]
    assert (seed["type"], seed["min_value"], seed["max_value"]) == ("number_input", "0", "2147483647")
    assert json.loads(form_view["private_metadata"]) == {"channel_id": "C123"}


def test_a_default_model_not_in_the_list_is_filled_in_as_the_other_model() -> None:
    fine_tuned = "ft:gpt-4o-mini-2024-07-18:acme:support:abc123"
    form_view = view(default_model=fine_tuned)
    assert_within_slack_limits(form_view)
    inputs = {b["block_id"]: b for b in form_view["blocks"] if b["type"] == "input"}
    assert "initial_option" not in inputs[modal.MODEL]["element"]
    assert inputs[modal.MODEL_OTHER]["element"]["initial_value"] == fine_tuned
    form = modal.parse_submission(submitted(form_view, training_openai="file-abc"), default_model=fine_tuned)
    assert isinstance(form, CreateForm) and form.command.model == fine_tuned


def test_a_preselected_file_is_named_not_asked_for_and_hostile_names_stay_inert() -> None:
    hostile = SlackFileRef(
        id="F0ABC", name="<!channel> `x` &" + "n" * 5000 + ".jsonl", size=3_500_000, filetype=None
    )
    form_view = view(preselected_upload=hostile)
    assert_within_slack_limits(form_view)
    block_ids = [b.get("block_id") for b in form_view["blocks"]]
    assert modal.TRAINING_UPLOAD not in block_ids and modal.TRAINING_OPENAI not in block_ids
    section = form_view["blocks"][0]["text"]["text"]
    assert "<!channel>" not in section and "&lt;!channel&gt;" in section
    assert "3.5 MB" in section
    metadata = json.loads(form_view["private_metadata"])
    assert metadata["channel_id"] == "C123" and metadata["upload"]["id"] == "F0ABC"
    # An error about the whole form goes on a field the form has.
    assert modal.first_input_block(form_view) == modal.VALIDATION_UPLOAD


# ---------------------------------------------------------------------------------------------- submissions


def test_an_openai_file_and_every_option_make_the_same_command_as_typing_it() -> None:
    form = parse(
        submitted(
            training_openai="file-abc123",
            validation_openai="file-val",
            model="gpt-4.1-mini-2025-04-14",
            suffix="support.v2",
            epochs="3",
            batch_size="auto",
            learning_rate_multiplier="0.5",
            seed="42",
        )
    )
    typed = parse_command(
        "create file-abc123 model=gpt-4.1-mini-2025-04-14 validation_file=file-val suffix=support.v2 "
        "epochs=3 batch_size=auto learning_rate_multiplier=0.5 seed=42",
        default_model=MODEL,
    )
    assert form == CreateForm(command=typed, training_upload=None, validation_upload=None, channel_id="C123")


def test_dpo_with_beta_and_a_fine_tuned_model() -> None:
    form = parse(
        submitted(
            training_openai="file-abc",
            model_other=" ft:gpt-4o-mini-2024-07-18:acme:x:1 ",
            method="dpo",
            beta="0.1",
            epochs="AUTO",
        )
    )
    assert isinstance(form, CreateForm)
    assert form.command == parse_command(
        "create file-abc model=ft:gpt-4o-mini-2024-07-18:acme:x:1 method=dpo beta=0.1 epochs=auto",
        default_model=MODEL,
    )


def test_an_untouched_form_with_a_file_is_the_commands_defaults() -> None:
    form = parse(submitted(training_openai="file-abc"))
    assert isinstance(form, CreateForm)
    assert form.command == CreateCommand(training_file="file-abc", model=MODEL)


def test_uploaded_files_are_carried_as_slack_files() -> None:
    form = parse(submitted(training_upload=[TRAIN], validation_upload=[VALID], epochs="2"))
    assert isinstance(form, CreateForm)
    assert form.training_upload == SlackFileRef("F0TRAIN1", "train.jsonl", 2_400_000, "text")
    assert form.validation_upload == SlackFileRef("F0VALID1", "valid.jsonl", 1200, "text")
    assert form.command.training_file == "" and form.command.validation_file == ""
    assert form.command.hyperparameters == {"n_epochs": 2}


def test_an_uploaded_training_file_with_a_validation_file_from_openai() -> None:
    form = parse(submitted(training_upload=[TRAIN], validation_openai="file-val"))
    assert isinstance(form, CreateForm)
    assert form.training_upload is not None and form.validation_upload is None
    assert (form.command.training_file, form.command.validation_file) == ("", "file-val")


def test_a_preselected_file_needs_no_training_field() -> None:
    ref = SlackFileRef(id="F0ABC", name="train.jsonl", size=10, filetype="text")
    form = parse(submitted(view(preselected_upload=ref), suffix="x"))
    assert isinstance(form, CreateForm)
    assert form.training_upload == ref and form.command.training_file == "" and form.command.suffix == "x"


@pytest.mark.parametrize(
    ("fields", "block_id", "fragment"),
    [
        ({}, modal.TRAINING_UPLOAD, "Upload a .jsonl file here, or pick"),
        ({"training_upload": [TRAIN], "training_openai": "file-abc"}, modal.TRAINING_OPENAI, "not both"),
        ({"training_upload": [TRAIN, VALID]}, modal.TRAINING_UPLOAD, "not 2"),
        (
            {"training_upload": [{**TRAIN, "name": "train.csv"}]},
            modal.TRAINING_UPLOAD,
            "train.csv is not a .jsonl file",
        ),
        ({"training_upload": [{"name": "x.jsonl"}]}, modal.TRAINING_UPLOAD, "upload it again"),
        ({"training_openai": modal.NO_FILE_VALUE}, modal.TRAINING_OPENAI, "Pick a file from the list"),
        ({"training_openai": "../../etc"}, modal.TRAINING_OPENAI, "Pick a file from the list"),
        (
            {"training_openai": "file-a", "validation_upload": [VALID], "validation_openai": "file-b"},
            modal.VALIDATION_OPENAI,
            "Choose one validation file",
        ),
        (
            {"training_openai": "file-a", "validation_upload": [{**VALID, "name": "v.json"}]},
            modal.VALIDATION_UPLOAD,
            "v.json is not a .jsonl file",
        ),
        ({"training_openai": "file-a", "beta": "0.1"}, modal.BETA, "only applies to the DPO method"),
        (
            {"training_openai": "file-a", "validation_upload": [VALID]},
            modal.VALIDATION_UPLOAD,
            "Pick the validation file from OpenAI too",
        ),
    ],
)
def test_form_only_problems_are_shown_on_their_field(
    fields: dict[str, Any], block_id: str, fragment: str
) -> None:
    errors = parse(submitted(**fields))
    assert isinstance(errors, dict)
    assert fragment in errors[block_id], errors


# Each (field, value) and the typed option that means the same: the form must refuse exactly what
# the command refuses, with the command's words (without code spans: form errors are plain text).
SAME_CHECKS = [
    ("epochs", "0", "epochs=0"),
    ("epochs", "51", "epochs=51"),
    ("epochs", "three", "epochs=three"),
    ("batch_size", "257", "batch_size=257"),
    ("learning_rate_multiplier", "0", "learning_rate_multiplier=0"),
    ("learning_rate_multiplier", "-1", "learning_rate_multiplier=-1"),
    ("learning_rate_multiplier", "nan", "learning_rate_multiplier=nan"),
    ("learning_rate_multiplier", "inf", "learning_rate_multiplier=inf"),
    ("seed", "-1", "seed=-1"),
    ("seed", "2147483648", "seed=2147483648"),
    ("seed", "1.5", "seed=1.5"),
    ("suffix", "s" * 65, "suffix=" + "s" * 65),
    ("suffix", "<!channel>", "suffix=<!channel>"),
    ("suffix", "two words", None),  # a typed command cannot hold a space; the form refuses it alike
    ("model_other", "gpt/../../x", "model=gpt/../../x"),
]


@pytest.mark.parametrize(("field", "value", "typed"), SAME_CHECKS)
def test_fields_are_checked_exactly_as_the_command_checks_them(
    field: str, value: str, typed: str | None
) -> None:
    errors = parse(submitted(training_openai="file-abc", **{field: value}))
    assert isinstance(errors, dict) and list(errors) == [field], errors
    if typed is None:
        assert "suffix must be 1 to 64" in errors[field]
        return
    command = parse_command(f"create file-abc {typed}", default_model=MODEL)
    assert isinstance(command, ParseError)
    assert errors[field] == command.message.replace("`", "")


def test_dpo_beta_out_of_range_is_the_commands_message() -> None:
    errors = parse(submitted(training_openai="file-abc", method="dpo", beta="3"))
    command = parse_command("create file-abc method=dpo beta=3", default_model=MODEL)
    assert isinstance(errors, dict) and isinstance(command, ParseError)
    assert errors == {modal.BETA: command.message.replace("`", "")}


def test_every_problem_is_reported_at_once() -> None:
    errors = parse(submitted(epochs="0", seed="-1", suffix="<x>"))
    assert isinstance(errors, dict)
    assert set(errors) == {modal.TRAINING_UPLOAD, modal.EPOCHS, modal.SEED, modal.SUFFIX}
    assert all(errors.values())


@pytest.mark.parametrize(
    "broken",
    [
        {},
        {"state": None, "private_metadata": "{not json"},
        {"state": {"values": {"epochs": "x", "seed": {"value": {"value": 7}}}}, "private_metadata": "[]"},
    ],
)
def test_a_malformed_view_is_refused_kindly_not_crashed_on(broken: dict[str, Any]) -> None:
    errors = parse(broken)
    assert isinstance(errors, dict) and modal.TRAINING_UPLOAD in errors


# ---------------------------------------------------------------------------------------------- files


def openai_file(
    n: int, name: str, size: int | None = 1000, created: int | None = 1_750_000_000
) -> OpenAIFile:
    return OpenAIFile(id=f"file-{n}", filename=name, purpose="fine-tune", bytes=size, created_at=created)


def test_file_options_filter_by_name_keep_the_order_and_fit_slack() -> None:
    files = [
        openai_file(1, "Support-TRAIN.jsonl", 2_400_000, 1_750_000_000),
        openai_file(2, "other.jsonl"),
        openai_file(3, "support_valid.jsonl", None, None),
        OpenAIFile(id="not-a-file", filename="support.jsonl", purpose="fine-tune", bytes=1, created_at=1),
    ]
    options = modal.file_options(files, "  SUPPORT ")
    assert [o["value"] for o in options] == ["file-1", "file-3"]
    assert options[0]["text"]["text"] == "Support-TRAIN.jsonl · 2.4 MB · 2025-06-15"
    assert options[1]["text"]["text"] == "support_valid.jsonl"
    assert [o["value"] for o in modal.file_options(files, "")] == ["file-1", "file-2", "file-3"]


def test_file_options_cut_long_names_but_keep_size_and_date_and_stop_at_100() -> None:
    files = [openai_file(n, "x" * 300 + ".jsonl") for n in range(150)]
    options = modal.file_options(files, "")
    assert len(options) == modal.MAX_OPTIONS
    text = options[0]["text"]["text"]
    assert len(text) <= modal.OPTION_TEXT_CHARS and text.endswith(" · 1.0 kB · 2025-06-15")


def test_the_unavailable_option_cannot_be_submitted_as_a_file() -> None:
    [option] = modal.unavailable_options("OpenAI is slow to answer: type again to retry")
    assert option["text"]["text"].startswith("⚠ OpenAI is slow")
    errors = parse(submitted(training_openai=option["value"]))
    assert isinstance(errors, dict) and modal.TRAINING_OPENAI in errors


@pytest.mark.parametrize(
    ("files", "found", "others"),
    [
        ([TRAIN, {"id": "F0PNG", "name": "loss.png"}], ["F0TRAIN1"], ["loss.png"]),
        ([{"id": "F0UP", "name": "TRAIN.JSONL"}], ["F0UP"], []),
        ([TRAIN, VALID], ["F0TRAIN1", "F0VALID1"], []),
        ([{"id": "F0CSV", "name": "train.csv"}], [], ["train.csv"]),
        ([{"id": "../x", "name": "t.jsonl"}], [], ["t.jsonl"]),
        ([], [], []),
    ],
)
def test_a_messages_jsonl_files(files: list[dict[str, Any]], found: list[str], others: list[str]) -> None:
    refs, other_names = modal.jsonl_files({"type": "message", "files": files})
    assert [r.id for r in refs] == found and other_names == others


def test_the_channel_a_form_came_from() -> None:
    assert modal.channel_of(view(channel_id="C999")) == "C999"
    assert modal.channel_of({"private_metadata": "oops"}) == "" and modal.channel_of(None) == ""
