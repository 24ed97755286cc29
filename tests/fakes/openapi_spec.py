"""Load the OpenAI OpenAPI extract kept in tests/specs/ and turn its schemas into Draft 2020-12 validators.

The file says ``openapi: 3.1.0`` but still uses OpenAPI 3.0 idioms that JSON Schema 2020-12 does not
understand (``nullable: true``; boolean ``exclusiveMinimum`` next to ``minimum``). Fed to jsonschema
unchanged those keywords are silently ignored or rejected, so every schema goes through
``convert_schema`` first.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_FILENAME = "openai-fine-tuning.openapi.json"
SPEC_URI = "urn:finetune-bot:openai-openapi"
COMPONENT_PREFIX = "#/components/schemas/"

# Keywords whose value is a single sub-schema / a list of them / a name->schema map. Only these are
# recursed into: elsewhere a dict is data (``default``, ``enum`` members, ``properties`` names...).
_SCHEMA_KEYWORDS = {
    "items",
    "not",
    "additionalProperties",
    "propertyNames",
    "contains",
    "if",
    "then",
    "else",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
}
_SCHEMA_LIST_KEYWORDS = {"allOf", "anyOf", "oneOf", "prefixItems"}
_SCHEMA_MAP_KEYWORDS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
# OpenAPI-only annotations with no JSON Schema meaning (``deprecated`` is valid 2020-12 and kept).
_DROPPED_KEYWORDS = {"example", "nullable", "discriminator", "xml", "externalDocs"}

# Deliberate departures from the published spec, each because the real API (and the spec's own
# examples) disagree with the schema. Applied to components before conversion.
RELAXATIONS: dict[str, str] = {
    "FineTuningJob.status": (
        "enum dropped: the spec's own pause/resume examples return status 'paused', which the enum lacks"
    ),
    "ListFilesResponse.first_id/last_id": (
        "null allowed: an empty page has no first/last id (the checkpoints list already allows null)"
    ),
    "OpenAIFile.purpose": (
        "'evals' added: CreateFileRequest accepts purpose 'evals' but OpenAIFile's enum cannot echo it"
    ),
}


def default_specs_dir() -> Path:
    """``<repo>/tests/specs`` (a copy kept in the repository, see its README), overridable with
    ``FINETUNE_SPECS_DIR`` to try a newer extract before refreshing the copy."""
    override = os.environ.get("FINETUNE_SPECS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "specs"


def convert_schema(schema: Any) -> Any:
    """Return a Draft 2020-12 equivalent of an OpenAPI (3.0-flavoured) schema.

    - ``nullable: true`` -> ``null`` added to ``type`` (and to ``enum``), or ``anyOf [.., null]``
      when there is no ``type`` to extend;
    - boolean ``exclusiveMinimum``/``exclusiveMaximum`` -> the numeric 2020-12 form;
    - ``x-*`` extensions and OpenAPI-only annotations (``example``...) dropped;
    - ``#/components/schemas/X`` refs rewritten to the absolute ``SPEC_URI`` so a converted
      fragment resolves against the registry no matter where it is validated from.
    """
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, Mapping):
        raise TypeError(f"not a schema: {schema!r}")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-") or key in _DROPPED_KEYWORDS:
            continue
        if key == "$ref":
            out[key] = SPEC_URI + value if isinstance(value, str) and value.startswith("#/") else value
        elif key in _SCHEMA_KEYWORDS:
            out[key] = convert_schema(value)
        elif key in _SCHEMA_LIST_KEYWORDS:
            out[key] = [convert_schema(item) for item in value]
        elif key in _SCHEMA_MAP_KEYWORDS:
            out[key] = {name: convert_schema(sub) for name, sub in value.items()}
        else:
            out[key] = copy.deepcopy(value)

    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        flag = out.get(exclusive)
        if isinstance(flag, bool):
            # OpenAPI 3.0: a flag modifying minimum/maximum. 2020-12: the bound itself.
            del out[exclusive]
            if flag and bound in out:
                out[exclusive] = out.pop(bound)

    if schema.get("nullable") is True:
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        typ = out.get("type")
        if isinstance(typ, str):
            out["type"] = [typ, "null"] if typ != "null" else typ
        elif isinstance(typ, list):
            out["type"] = typ if "null" in typ else [*typ, "null"]
        else:
            return {"anyOf": [out, {"type": "null"}]}
    return out


@dataclass(frozen=True)
class QueryParam:
    name: str
    schema: dict[str, Any]  # converted
    required: bool
    style: str | None

    @property
    def deep_object(self) -> bool:
        return self.style == "deepObject"


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str  # upper-case
    path: str  # template as in the spec, e.g. /fine_tuning/jobs/{fine_tuning_job_id}
    path_regex: re.Pattern[str]
    query_params: dict[str, QueryParam]
    request_schema: dict[str, Any] | None  # converted, JSON bodies only
    request_content_type: str | None
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)  # status -> converted schema


class OpenAPISpec:
    """Parsed spec: converted components in a referencing registry, and the operation table."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        components = copy.deepcopy(raw["components"]["schemas"])
        _apply_relaxations(components)
        self.components: dict[str, Any] = {name: convert_schema(s) for name, s in components.items()}
        root = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": {"schemas": self.components},
        }
        self.registry: Registry[Any] = Registry().with_resource(
            SPEC_URI, Resource.from_contents(root, default_specification=DRAFT202012)
        )
        self.operations: list[Operation] = list(self._operations())
        self.webhooks: dict[str, Any] = raw.get("webhooks", {})
        self._validators: dict[str, Draft202012Validator] = {}

    @classmethod
    def load(cls, specs_dir: Path | None = None) -> OpenAPISpec:
        path = (specs_dir or default_specs_dir()) / SPEC_FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"OpenAPI spec not found at {path} (set FINETUNE_SPECS_DIR to override)")
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        """A cached validator for an already-converted schema fragment."""
        key = json.dumps(schema, sort_keys=True)
        found = self._validators.get(key)
        if found is None:
            found = Draft202012Validator(schema, registry=self.registry)
            self._validators[key] = found
        return found

    def component_validator(self, name: str) -> Draft202012Validator:
        if name not in self.components:
            raise KeyError(f"no component schema {name!r}")
        return self.validator({"$ref": SPEC_URI + COMPONENT_PREFIX + name})

    def errors(self, schema: dict[str, Any], instance: Any) -> list[ValidationError]:
        return sorted(self.validator(schema).iter_errors(instance), key=lambda e: list(e.path))

    def component_errors(self, name: str, instance: Any) -> list[str]:
        """Human-readable violations of a component schema ([] when valid)."""
        return [_format_error(e) for e in self.component_validator(name).iter_errors(instance)]

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Follow a top-level component ``$ref`` (used to list a request body's known fields)."""
        ref = schema.get("$ref")
        prefix = SPEC_URI + COMPONENT_PREFIX
        if isinstance(ref, str) and ref.startswith(prefix):
            return self.resolve(self.components[ref[len(prefix) :]])
        return schema

    def best_error(self, schema: dict[str, Any], instance: Any) -> ValidationError | None:
        return best_match(self.validator(schema).iter_errors(instance))

    def match(self, method: str, path: str) -> tuple[Operation | None, dict[str, str], bool]:
        """Return (operation, path params, path_known). path_known is True if only the method is wrong."""
        path_known = False
        for op in self.operations:
            m = op.path_regex.fullmatch(path)
            if m is None:
                continue
            path_known = True
            if op.method == method.upper():
                return op, m.groupdict(), True
        return None, {}, path_known

    def _operations(self) -> Iterator[Operation]:
        for path, item in self.raw["paths"].items():
            shared = item.get("parameters", [])
            for method, op in item.items():
                if method not in {"get", "post", "put", "patch", "delete"}:
                    continue
                query: dict[str, QueryParam] = {}
                for param in [*shared, *op.get("parameters", [])]:
                    if param.get("in") == "query":
                        query[param["name"]] = QueryParam(
                            name=param["name"],
                            schema=convert_schema(param.get("schema", {})),
                            required=bool(param.get("required", False)),
                            style=param.get("style"),
                        )
                request_schema = None
                request_content_type = None
                content = op.get("requestBody", {}).get("content", {})
                if content:
                    request_content_type = next(iter(content))
                    request_schema = convert_schema(content[request_content_type].get("schema", {}))
                responses = {}
                for status, resp in op.get("responses", {}).items():
                    body = resp.get("content", {})
                    if body:
                        responses[status] = convert_schema(next(iter(body.values())).get("schema", {}))
                yield Operation(
                    operation_id=op["operationId"],
                    method=method.upper(),
                    path=path,
                    path_regex=_template_regex(path),
                    query_params=query,
                    request_schema=request_schema,
                    request_content_type=request_content_type,
                    responses=responses,
                )


@functools.cache
def load_spec(specs_dir: Path | None = None) -> OpenAPISpec:
    """Parse the spec once per process; starting a fake per test must stay cheap."""
    return OpenAPISpec.load(specs_dir)


def _apply_relaxations(components: dict[str, Any]) -> None:
    components["FineTuningJob"]["properties"]["status"].pop("enum", None)
    for key in ("first_id", "last_id"):
        prop = components["ListFilesResponse"]["properties"][key]
        components["ListFilesResponse"]["properties"][key] = {"anyOf": [prop, {"type": "null"}]}
    purpose = components["OpenAIFile"]["properties"]["purpose"]
    if "evals" not in purpose["enum"]:
        purpose["enum"] = [*purpose["enum"], "evals"]


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    pattern = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(pattern)


def json_path(error: ValidationError) -> str:
    """``method.supervised.hyperparameters.n_epochs`` / ``integrations[0].type`` style location."""
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _format_error(error: ValidationError) -> str:
    where = json_path(error) or "<root>"
    return f"{where}: {error.message}"
