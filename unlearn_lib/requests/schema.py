"""The deletion-request contract (versioned) and batches of requests handled by one pipeline run.

A request names what to delete (record IDs, data owners, labels, a caption pattern), from
which registered model, on what legal or policy basis, and by when. Validation (pydantic) names
the field that is wrong in one line; a malformed request is refused before anything runs.

Requests arrive from outside, so the raw bytes are bounded before they are parsed: at most
1 MiB of UTF-8 JSON nested at most 32 levels deep, without duplicate keys, and every string
field free of control characters.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import stat
from array import array
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ModelWrapValidatorHandler,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from ..data.selection import ForgetTargets
from ..errors import UnlearnError

SCHEMA_VERSION = 1
BASES = ("gdpr-art17", "ccpa", "copyright", "safety", "contract", "other")
MAX_REQUEST_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
MAX_TARGET_ENTRIES = 100_000
MAX_ID_CHARS = 256
MAX_LABEL = 100_000
MAX_PATTERN_CHARS = 1_000
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TARGET_KEYS = ("record_ids", "subject_ids", "labels", "caption_pattern")
_UTF8_BOM = b"\xef\xbb\xbf"


class RequestError(UnlearnError):
    """A deletion request is malformed."""


class _Invalid(RequestError):
    """A validation failure; parse_request puts its own ``where`` in front of ``detail``."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"request: {detail}")
        self.detail = detail


# --- field types -------------------------------------------------------------------------------
# Custom errors carry a phrase that follows the field's path ("request_id must be ..."), so the
# one-line message names the field however deeply it is nested.


def _no_control(value: str) -> str:
    m = _CONTROL.search(value)
    if m:
        raise PydanticCustomError(
            "control_character",
            "contains a control character (U+{code}) at position {pos}",
            {"code": f"{ord(m.group()):04X}", "pos": m.start()},
        )
    return value


def _request_id(value: str) -> str:
    # fullmatch: re.match with "$" would let a trailing newline through.
    if not _ID.fullmatch(value):
        raise PydanticCustomError(
            "request_id",
            "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, got {got}",
            {"got": _show(value)},
        )
    return value


def _basis(value: str) -> str:
    if value not in BASES:
        raise PydanticCustomError(
            "basis", "must be one of {bases}, got {got}", {"bases": ", ".join(BASES), "got": _show(value)}
        )
    return value


def _when(value: str, end_of_day: bool) -> dt.datetime:
    """The UTC instant an ISO-8601 date or timestamp names (a bare date: its start, or its end)."""
    text = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value  # Python 3.10 reads no "Z"
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        day = None
    if day is not None:
        clock = dt.time(23, 59, 59) if end_of_day else dt.time(0, 0)
        return dt.datetime.combine(day, clock, tzinfo=dt.timezone.utc)
    stamp = dt.datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        return stamp.replace(tzinfo=dt.timezone.utc)
    return stamp.astimezone(dt.timezone.utc)


def _timestamp(value: str) -> str:
    try:
        _when(value, end_of_day=True)
        _when(value, end_of_day=False)
    except ValueError:
        raise PydanticCustomError(
            "iso8601", "{got} is not an ISO-8601 date or timestamp", {"got": _show(value)}
        ) from None
    except OverflowError:  # e.g. year 1 at +01:00 has no UTC instant
        raise PydanticCustomError("iso8601", "{got} is out of range", {"got": _show(value)}) from None
    return value


def _pattern(value: str) -> str:
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as err:
        raise PydanticCustomError(
            "regex", "is not a valid regular expression ({reason})", {"reason": str(err).splitlines()[0]}
        ) from None
    return value


# Length limits come before the validators so pydantic reports them as string limits.
_Text = Annotated[StrictStr, AfterValidator(_no_control)]
_Ident = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_no_control)]
_Label = Annotated[StrictInt, Field(ge=0, le=MAX_LABEL)]
_Timestamp = Annotated[StrictStr, AfterValidator(_no_control), AfterValidator(_timestamp)]
_Pattern = Annotated[
    StrictStr, Field(min_length=1, max_length=MAX_PATTERN_CHARS), AfterValidator(_no_control), AfterValidator(_pattern)
]


class _TargetsIn(BaseModel):
    """``targets`` as it is written in a request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record_ids: list[_Ident] = Field(default_factory=list, max_length=MAX_TARGET_ENTRIES)
    subject_ids: list[_Ident] = Field(default_factory=list, max_length=MAX_TARGET_ENTRIES)
    labels: list[_Label] = Field(default_factory=list, max_length=MAX_TARGET_ENTRIES)
    caption_pattern: _Pattern | None = None

    def build(self) -> ForgetTargets:
        return ForgetTargets.build(
            record_ids=self.record_ids,
            subject_ids=self.subject_ids,
            labels=self.labels,
            caption_pattern=self.caption_pattern,
        )


def _targets_as_written(value: Any) -> Any:
    # A ForgetTargets built in code goes through the same limits as one read from a file.
    return value.to_dict() if isinstance(value, ForgetTargets) else value


def _targets_written(targets: ForgetTargets) -> dict[str, Any]:
    return {k: v for k, v in targets.to_dict().items() if v}


class _TargetsField:
    """Declares ``targets`` as a ForgetTargets validated through :class:`_TargetsIn`."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        built = core_schema.no_info_after_validator_function(lambda t: t.build(), handler.generate_schema(_TargetsIn))
        return core_schema.no_info_before_validator_function(
            _targets_as_written,
            built,
            serialization=core_schema.plain_serializer_function_ser_schema(_targets_written),
        )


class DeletionRequest(BaseModel):
    """One validated deletion request; ``received_at`` and ``deadline`` keep the text as given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: Annotated[StrictStr, AfterValidator(_no_control), AfterValidator(_request_id)]
    received_at: _Timestamp
    basis: Annotated[StrictStr, AfterValidator(_basis)]
    model: Annotated[StrictStr, Field(min_length=1), AfterValidator(_no_control)]
    targets: Annotated[ForgetTargets, _TargetsField]
    deadline: _Timestamp | None = None
    schema_version: int = SCHEMA_VERSION

    @model_validator(mode="wrap")
    @classmethod
    def _in_one_line(cls, data: Any, handler: ModelWrapValidatorHandler[DeletionRequest]) -> DeletionRequest:
        # Requests built in code fail like requests read from a file: one line, not a pydantic dump.
        try:
            request = handler(data)
        except ValidationError as err:
            raise _Invalid(_one_line(err)) from None
        problem = request._inconsistency()
        if problem:
            raise _Invalid(problem)
        return request

    @field_validator("schema_version", mode="before")
    @classmethod
    def _known_version(cls, value: Any) -> int:
        if type(value) is not int or value != SCHEMA_VERSION:
            raise PydanticCustomError(
                "schema_version",
                "unknown schema_version {got} (this version reads {known})",
                {"got": _show(value), "known": SCHEMA_VERSION},
            )
        return value

    def _inconsistency(self) -> str | None:
        if self.targets.is_empty():
            return "targets name nothing to delete"
        deadline = self.deadline_dt
        if deadline is not None and deadline < self.received_dt:
            return f"deadline {_show(self.deadline)} is before received_at {_show(self.received_at)}"
        return None

    @property
    def received_dt(self) -> dt.datetime:
        """When the request was received, in UTC (a bare date: the start of that day)."""
        return _when(self.received_at, end_of_day=False)

    @property
    def deadline_dt(self) -> dt.datetime | None:
        """The deadline in UTC (a bare date: the end of that day, 23:59:59), or None."""
        return None if self.deadline is None else _when(self.deadline, end_of_day=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# --- one-line errors ---------------------------------------------------------------------------


def _show(value: Any, limit: int = 80) -> str:
    """``repr`` cut short: attacker-sized input must not make an attacker-sized error line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_KNOWN_TARGETS = ", ".join(_TARGET_KEYS)
_CUSTOM_KINDS = {"control_character", "request_id", "basis", "iso8601", "regex"}
_TIMESTAMP_TYPE = "must be an ISO-8601 date or timestamp string"
# (field path without list indexes, pydantic error type) -> phrase following the path; "{}" is
# the path itself, for fields whose message reads better starting elsewhere.
_PHRASES: dict[tuple[str, str], str] = {
    ("targets", "model_type"): f"targets must be an object with any of {_KNOWN_TARGETS}",
    ("targets", "dict_type"): f"targets must be an object with any of {_KNOWN_TARGETS}",
    ("targets.labels", "list_type"): "targets.labels must be a list of integers",
    ("targets.labels[]", "int_type"): "targets.labels must be a list of integers",
    ("targets.record_ids", "list_type"): "targets.record_ids must be a list of non-empty strings",
    ("targets.subject_ids", "list_type"): "targets.subject_ids must be a list of non-empty strings",
    ("targets.record_ids[]", "string_type"): "targets.record_ids must be a list of non-empty strings",
    ("targets.subject_ids[]", "string_type"): "targets.subject_ids must be a list of non-empty strings",
    ("targets.caption_pattern", "string_type"): "targets.caption_pattern must be a non-empty string",
    ("model", "string_type"): "model must name a registered model",
    ("model", "string_too_short"): "model must name a registered model",
    ("received_at", "string_type"): f"received_at {_TIMESTAMP_TYPE}",
    ("deadline", "string_type"): f"deadline {_TIMESTAMP_TYPE}",
    ("request_id", "string_type"): "request_id must be a string, got {input}",
    ("basis", "string_type"): f"basis must be one of {', '.join(BASES)}, got {{input}}",
}


def _phrase(err: Any) -> str:
    loc = tuple(err["loc"])
    path = _path(loc)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    generic = re.sub(r"\[\d+\]", "[]", path)
    if (generic, kind) in _PHRASES:
        return _PHRASES[(generic, kind)].replace("{input}", _show(err.get("input")))
    if not loc:
        return err["msg"]  # model-level rules word the whole sentence themselves
    if isinstance(err["msg"], str) and kind in _CUSTOM_KINDS:
        return f"{path} {err['msg']}"
    if kind == "string_too_short":
        return f"{path} must be a non-empty string"
    if kind == "string_too_long":
        return f"{path} is {len(err['input'])} characters; at most {ctx.get('max_length')}"
    if kind == "too_long":
        return f"{path} has {ctx.get('actual_length')} entries; at most {ctx.get('max_length')}"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"{path} must be between 0 and {MAX_LABEL}, got {_show(err.get('input'))}"
    return f"{path}: {err['msg']}, got {_show(err.get('input'))}"


_REQUIRED = ("request_id", "received_at", "basis", "model", "targets")


def _one_line(err: ValidationError) -> str:
    """The first error of ``err`` as one line; missing and unexpected names are listed together."""
    errors = err.errors(include_url=False)

    def top(kind: str) -> list[str]:
        return [str(e["loc"][0]) for e in errors if e["type"] == kind and len(e["loc"]) == 1]

    version = [e for e in errors if e["type"] == "schema_version"]
    missing, extra = top("missing"), sorted(top("extra_forbidden"))
    if version:
        message = version[0]["msg"]
    elif missing:
        message = f"missing field(s) {', '.join(k for k in _REQUIRED if k in missing)}"
    elif extra:
        message = f"unexpected field(s) {', '.join(extra)}"
    else:
        first = errors[0]
        if first["type"] == "extra_forbidden" and tuple(first["loc"][:1]) == ("targets",):
            unknown = sorted(
                str(e["loc"][1]) for e in errors if e["type"] == "extra_forbidden" and e["loc"][:1] == ("targets",)
            )
            message = f"unknown target(s) {', '.join(unknown)} (known: {_KNOWN_TARGETS})"
        else:
            message = _phrase(first)
    # Every piece of input in the message went through repr, but a line is a line.
    return " ".join(message.splitlines())


def parse_request(data: Any, where: str = "request") -> DeletionRequest:
    """A validated request from decoded JSON; ``where`` starts each error line."""
    if not isinstance(data, dict):
        raise RequestError(f"{where}: a deletion request must be a JSON object")
    try:
        return DeletionRequest.model_validate(data)
    except _Invalid as err:
        raise RequestError(f"{where}: {err.detail}") from None


# --- bytes to JSON, bounded --------------------------------------------------------------------

# A string token always matches once opened (an unterminated one runs to the end), so the scan
# never backtracks into quadratic time on hostile input.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 once read as signed bytes


def _too_deep(raw: bytes, limit: int) -> bool:
    """Whether JSON nests deeper than ``limit``: a linear scan in C, never recursion over the input."""
    steps = _STRING.sub(b"", raw).translate(_DEPTH_STEP, _NOT_BRACKETS)
    return max(accumulate(array("b", steps)), default=0) > limit


def _size_error(where: str, size: int) -> RequestError:
    shown = f"{size / MAX_REQUEST_BYTES:.1f} MiB"
    if shown == "1.0 MiB":
        shown = f"{size} bytes"
    return RequestError(f"{where} is {shown}; a request may be at most 1 MiB")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Parsers disagree on which duplicate wins; a request must mean one thing.
            raise ValueError(f"duplicate key {_show(key)}")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(raw: bytes, where: str, max_bytes: int | None = MAX_REQUEST_BYTES) -> Any:
    if max_bytes is not None and len(raw) > max_bytes:
        raise _size_error(where, len(raw))
    offset = 0
    if raw.startswith(_UTF8_BOM):
        raw, offset = raw[len(_UTF8_BOM) :], len(_UTF8_BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(
            f"{where} is not UTF-8 text (invalid byte 0x{raw[err.start]:02x} at offset {err.start + offset})"
        ) from None
    if _too_deep(raw, MAX_JSON_DEPTH):
        raise RequestError(f"{where}: not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels)")
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        at = "" if err.msg.endswith(" at") else " at"  # "Unterminated string starting at"
        raise RequestError(f"{where}: not valid JSON ({err.msg}{at} line {err.lineno}, column {err.colno})") from None
    except (ValueError, RecursionError) as err:
        raise RequestError(f"{where}: not valid JSON ({err})") from None


def parse_request_bytes(raw: bytes, where: str) -> DeletionRequest:
    """A validated request from untrusted bytes: at most 1 MiB of UTF-8 JSON, 32 levels deep."""
    return parse_request(_loads(raw, where), where=where)


def load_request(path: str | os.PathLike[str]) -> DeletionRequest:
    """The request in a JSON file; every failure (missing, unreadable, malformed) is one line."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise RequestError(f"request file {p} is not a regular file")
            if info.st_size > MAX_REQUEST_BYTES:
                raise _size_error(str(p), info.st_size)
            raw = f.read(MAX_REQUEST_BYTES + 1)  # bounded even if the file grows meanwhile
    except FileNotFoundError:
        raise RequestError(f"request file {p} does not exist") from None
    except IsADirectoryError:
        raise RequestError(f"request file {p} is a directory") from None
    except OSError as err:
        raise RequestError(f"request file {p} cannot be read ({err.strerror or type(err).__name__})") from None
    return parse_request_bytes(raw, str(p))


@dataclass(frozen=True)
class DeletionBatch:
    """Requests against one model handled by one pipeline run; the forget set is their union."""

    requests: tuple[DeletionRequest, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.requests:
            raise RequestError("a batch needs at least one request")
        models = {r.model for r in self.requests}
        if len(models) > 1:
            raise RequestError(f"a batch must target one model, got {', '.join(sorted(models))}")
        ids = [r.request_id for r in self.requests]
        if len(set(ids)) != len(ids):
            raise RequestError("a batch holds the same request twice")
        scopes = {r.targets.scope for r in self.requests}
        if "class" in scopes and len(scopes) > 1:
            raise RequestError("class erasures and record deletions run as separate batches (their defaults differ)")

    @property
    def model(self) -> str:
        return self.requests[0].model

    @property
    def request_ids(self) -> list[str]:
        return sorted(r.request_id for r in self.requests)

    @property
    def batch_id(self) -> str:
        if len(self.requests) == 1:
            return self.requests[0].request_id
        return "batch-" + hashlib.sha256(",".join(self.request_ids).encode()).hexdigest()[:12]

    @property
    def targets(self) -> ForgetTargets:
        patterns = [r.targets.caption_pattern for r in self.requests if r.targets.caption_pattern]
        return ForgetTargets.build(
            record_ids=[x for r in self.requests for x in r.targets.record_ids],
            subject_ids=[x for r in self.requests for x in r.targets.subject_ids],
            labels=[x for r in self.requests for x in r.targets.labels],
            caption_pattern="|".join(f"(?:{p})" for p in patterns) or None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "requests": [r.to_dict() for r in self.requests]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DeletionBatch:
        # A batch travels between pipeline steps: no size cap (many requests), the depth cap still holds.
        data = _loads(text.encode("utf-8", "surrogatepass"), "batch", max_bytes=None)
        if not isinstance(data, dict) or not isinstance(data.get("requests"), list):
            raise RequestError("batch: expected an object with a list of requests")
        return cls(tuple(parse_request(r, where=f"batch request {i}") for i, r in enumerate(data["requests"])))
