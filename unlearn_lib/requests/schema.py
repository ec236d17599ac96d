"""The deletion-request contract (versioned) and batches of requests handled by one pipeline run.

A request names what to delete (record IDs, data owners, labels, a caption pattern), from
which registered model, on what legal or policy basis, and by when. Validation names the
field that is wrong; a malformed request is refused before anything runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.selection import ForgetTargets
from ..errors import UnlearnError

SCHEMA_VERSION = 1
BASES = ("gdpr-art17", "ccpa", "copyright", "safety", "contract", "other")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TARGET_KEYS = ("record_ids", "subject_ids", "labels", "caption_pattern")


class RequestError(UnlearnError):
    """A deletion request is malformed."""


@dataclass(frozen=True)
class DeletionRequest:
    request_id: str
    received_at: str
    basis: str
    model: str
    targets: ForgetTargets
    deadline: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = {k: v for k, v in self.targets.to_dict().items() if v}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _timestamp(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{where}: {name} must be an ISO-8601 date or timestamp string")
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise RequestError(f"{where}: {name} {value!r} is not an ISO-8601 date or timestamp") from None
    return value


def _str_list(value: Any, name: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RequestError(f"{where}: targets.{name} must be a list of non-empty strings")
    return value


def parse_request(data: Any, where: str = "request") -> DeletionRequest:
    if not isinstance(data, dict):
        raise RequestError(f"{where}: a deletion request must be a JSON object")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RequestError(f"{where}: unknown schema_version {version!r} (this version reads {SCHEMA_VERSION})")
    required = ("request_id", "received_at", "basis", "model", "targets")
    missing = [k for k in required if k not in data]
    if missing:
        raise RequestError(f"{where}: missing field(s) {', '.join(missing)}")
    extra = sorted(set(data) - {*required, "deadline", "schema_version"})
    if extra:
        raise RequestError(f"{where}: unexpected field(s) {', '.join(extra)}")
    rid = data["request_id"]
    if not isinstance(rid, str) or not _ID.match(rid):
        raise RequestError(f"{where}: request_id must be 1-128 letters, digits, '.', '_' or '-', got {rid!r}")
    if data["basis"] not in BASES:
        raise RequestError(f"{where}: basis must be one of {', '.join(BASES)}, got {data['basis']!r}")
    if not isinstance(data["model"], str) or not data["model"]:
        raise RequestError(f"{where}: model must name a registered model")
    t = data["targets"]
    if not isinstance(t, dict):
        raise RequestError(f"{where}: targets must be an object with any of {', '.join(_TARGET_KEYS)}")
    bad = sorted(set(t) - set(_TARGET_KEYS))
    if bad:
        raise RequestError(f"{where}: unknown target(s) {', '.join(bad)} (known: {', '.join(_TARGET_KEYS)})")
    labels = t.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise RequestError(f"{where}: targets.labels must be a list of integers")
    pattern = t.get("caption_pattern")
    if pattern is not None and (not isinstance(pattern, str) or not pattern):
        raise RequestError(f"{where}: targets.caption_pattern must be a non-empty string")
    targets = ForgetTargets.build(
        record_ids=_str_list(t.get("record_ids", []), "record_ids", where),
        subject_ids=_str_list(t.get("subject_ids", []), "subject_ids", where),
        labels=labels,
        caption_pattern=pattern,
    )
    if targets.is_empty():
        raise RequestError(f"{where}: targets name nothing to delete")
    deadline = data.get("deadline")
    return DeletionRequest(
        request_id=rid,
        received_at=_timestamp(data["received_at"], "received_at", where),
        basis=data["basis"],
        model=data["model"],
        targets=targets,
        deadline=_timestamp(deadline, "deadline", where) if deadline is not None else None,
    )


def load_request(path: str | os.PathLike[str]) -> DeletionRequest:
    p = Path(path)
    if not p.is_file():
        raise RequestError(f"request file {p} does not exist")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise RequestError(f"{p}: not valid JSON ({err.msg} at line {err.lineno})") from None
    return parse_request(data, where=str(p))


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
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise RequestError(f"batch: not valid JSON ({err.msg})") from None
        if not isinstance(data, dict) or not isinstance(data.get("requests"), list):
            raise RequestError("batch: expected an object with a list of requests")
        return cls(tuple(parse_request(r, where=f"batch request {i}") for i, r in enumerate(data["requests"])))
