"""Typed views of OpenAI's fine-tuning objects.

Each type keeps the raw JSON it came from (`raw`) and reads only the fields we use, so a field the
spec adds later is carried along untouched, and a status the spec's enum does not list yet (OpenAI
already returns `paused`) is kept as the plain string it is rather than rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class JobError:
    code: str | None
    message: str | None
    param: str | None

    @classmethod
    def from_api(cls, data: Any) -> JobError | None:
        """A succeeded job may carry `{"code": null, "message": null, ...}`: that is no error."""
        if not isinstance(data, dict):
            return None
        error = cls(
            code=_str_or_none(data.get("code")),
            message=_str_or_none(data.get("message")),
            param=_str_or_none(data.get("param")),
        )
        return error if (error.code or error.message) else None


@dataclass(frozen=True)
class FineTuningJob:
    id: str
    status: str
    model: str
    created_at: int | None
    training_file: str | None = None
    validation_file: str | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    estimated_finish: int | None = None
    trained_tokens: int | None = None
    error: JobError | None = None
    method_type: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    result_files: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> FineTuningJob:
        raw_method = data.get("method")
        method: dict[str, Any] = raw_method if isinstance(raw_method, dict) else {}
        method_type = _str_or_none(method.get("type"))
        hyperparameters: dict[str, Any] = {}
        # `method.<type>.hyperparameters` is current; top-level `hyperparameters` is the deprecated
        # form that older jobs (and supervised jobs) still report.
        if method_type and isinstance(method.get(method_type), dict):
            inner = method[method_type].get("hyperparameters")
            if isinstance(inner, dict):
                hyperparameters = dict(inner)
        if not hyperparameters and isinstance(data.get("hyperparameters"), dict):
            hyperparameters = dict(data["hyperparameters"])
        metadata = data.get("metadata")
        return cls(
            id=str(data.get("id", "")),
            status=str(data.get("status") or "unknown"),
            model=str(data.get("model") or ""),
            created_at=_int_or_none(data.get("created_at")),
            training_file=_str_or_none(data.get("training_file")),
            validation_file=_str_or_none(data.get("validation_file")),
            fine_tuned_model=_str_or_none(data.get("fine_tuned_model")),
            finished_at=_int_or_none(data.get("finished_at")),
            estimated_finish=_int_or_none(data.get("estimated_finish")),
            trained_tokens=_int_or_none(data.get("trained_tokens")),
            error=JobError.from_api(data.get("error")),
            method_type=method_type,
            hyperparameters=hyperparameters,
            seed=_int_or_none(data.get("seed")),
            metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {},
            result_files=tuple(f for f in data.get("result_files") or () if isinstance(f, str)),
            raw=data,
        )


@dataclass(frozen=True)
class JobEvent:
    id: str
    created_at: int | None
    level: str
    message: str
    type: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> JobEvent:
        return cls(
            id=str(data.get("id", "")),
            created_at=_int_or_none(data.get("created_at")),
            level=str(data.get("level") or "info"),
            message=str(data.get("message") or ""),
            type=_str_or_none(data.get("type")),
            data=dict(data["data"]) if isinstance(data.get("data"), dict) else {},
            raw=data,
        )


@dataclass(frozen=True)
class Checkpoint:
    id: str
    created_at: int | None
    fine_tuned_model_checkpoint: str
    step_number: int | None
    metrics: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(
            id=str(data.get("id", "")),
            created_at=_int_or_none(data.get("created_at")),
            fine_tuned_model_checkpoint=str(data.get("fine_tuned_model_checkpoint") or ""),
            step_number=_int_or_none(data.get("step_number")),
            metrics=dict(data["metrics"]) if isinstance(data.get("metrics"), dict) else {},
            raw=data,
        )


@dataclass(frozen=True)
class OpenAIFile:
    id: str
    filename: str
    purpose: str
    bytes: int | None
    created_at: int | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> OpenAIFile:
        return cls(
            id=str(data.get("id", "")),
            filename=str(data.get("filename") or ""),
            purpose=str(data.get("purpose") or ""),
            bytes=_int_or_none(data.get("bytes")),
            created_at=_int_or_none(data.get("created_at")),
            raw=data,
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list endpoint. Pages come newest first; `after` = last id walks older."""

    data: list[T]
    has_more: bool

    @property
    def last_id(self) -> str | None:
        if not self.data:
            return None
        return getattr(self.data[-1], "id", None)
